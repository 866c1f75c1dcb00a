"""TextVQA: LLaVA-1.5 prompts (with and without OCR tokens), VQA accuracy by hand, subsets, bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdkit import BuildContext
from kdkit.evaluation.files import BenchmarkFileError
from kdkit.testing import check_plugin
from kdkit_plugins.benchmarks import textvqa
from kdkit_plugins.fixtures.benchmarks_vqa import TEXTVQA_RECORDS, textvqa_record, write_textvqa

INSTRUCTION = "\nAnswer the question using a single word or phrase."


def build(tmp_path: Path, **config) -> textvqa.TextVQA:
    return textvqa.build(textvqa.TextVQAConfig(**config), BuildContext(name="eval", data_root=tmp_path))


def test_contract(tmp_path: Path) -> None:
    check_plugin("benchmark", "textvqa", textvqa.kdkit_benchmarks()["textvqa"], tmp_path)


def test_questions_prompts_and_images(tmp_path: Path) -> None:
    root = write_textvqa(tmp_path / "textvqa")
    questions = build(tmp_path, ocr_tokens=False).questions()  # default root "textvqa" under the data root
    assert [q.id for q in questions] == ["34602", "34603", "34604", "34605"]
    assert questions[0].prompt == "What is the brand of this camera?" + INSTRUCTION
    assert questions[0].image == root / "train_images" / "003a8ae2ef43b901.jpg"
    assert questions[1].image == questions[0].image
    assert all(q.max_new_tokens == 16 for q in questions)
    assert all(Path(q.image).is_file() for q in questions)


def test_ocr_prompt_matches_llava_file_format(tmp_path: Path) -> None:
    write_textvqa(tmp_path / "textvqa")
    questions = build(tmp_path, ocr_tokens=True, max_new_tokens=8).questions()
    assert questions[0].prompt == ("What is the brand of this camera?\n"
                                   "Reference OCR token: DAKOTA, DIGITAL, Single-Use, Camera" + INSTRUCTION)
    # no OCR tokens: the line stays, empty (as in LLaVA-1.5's llava_textvqa_val_v051_ocr.jsonl)
    assert questions[2].prompt == "How many bottles are there?\nReference OCR token: " + INSTRUCTION
    assert questions[0].max_new_tokens == 8


def test_question_is_capitalized_like_llava() -> None:
    assert textvqa.prompt("what does SKOAL say?") == "What does skoal say?" + INSTRUCTION


def test_accuracy_by_hand(tmp_path: Path) -> None:
    write_textvqa(tmp_path / "textvqa")
    bench = build(tmp_path)
    scores = bench.score({
        "34602": "Dakota.",  # "dakota": 6 of 10 answers -> every answer sees >= 3 matches -> 1.0
        "34603": "Copenhagen",  # "copenhagen", "Copenhagen.", "the copenhagen": 3 matches -> (3*2/3 + 7)/10 = 0.9
        "34604": "Two bottles",  # "2 bottles" matches only "two bottles": 9 * (1/3) / 10 = 0.3
        "34605": "1,000",  # "1000" = "1,000" x2 + "1000" ("one thousand" is "1 thousand"): 3 matches -> 0.9
    })
    # (1.0 + 0.9 + 0.3 + 0.9) / 4 = 0.775
    assert scores.metrics == {"accuracy": pytest.approx(77.5)}
    assert scores.units == pytest.approx({"34602": 100.0, "34603": 90.0, "34604": 30.0, "34605": 90.0})
    assert scores.details == {"count": 4}
    assert bench.metrics == ("accuracy",) and bench.primary == "accuracy"
    assert bench.published == {"LLaVA-1.5 7B (paper)": 58.2, "HAWAII 7B (paper)": 58.7}


def test_subset_and_empty_predictions(tmp_path: Path) -> None:
    write_textvqa(tmp_path / "textvqa")
    bench = build(tmp_path)
    scores = bench.score({"34603": "copenhagen"})
    assert scores.metrics == {"accuracy": pytest.approx(90.0)} and scores.details == {"count": 1}
    assert bench.score({}).metrics == {}
    # all-empty answers: "" matches no answer
    assert bench.score({q.id: "" for q in bench.questions()}).metrics == {"accuracy": 0.0}


def test_unknown_prediction_id_is_refused(tmp_path: Path) -> None:
    write_textvqa(tmp_path / "textvqa")
    with pytest.raises(BenchmarkFileError, match="textvqa: prediction for question id '99999'"):
        build(tmp_path).score({"34602": "dakota", "99999": "x"})


def test_missing_files_are_named(tmp_path: Path) -> None:
    missing = r"textvqa: annotations file .*TextVQA_0\.5\.1_val\.json does not exist"
    with pytest.raises(BenchmarkFileError, match=missing):
        build(tmp_path)
    root = write_textvqa(tmp_path / "textvqa")
    for image in (root / "train_images").iterdir():
        image.unlink()
    assert len(build(tmp_path).questions()) == 4  # image files are not opened at build
    (root / "train_images").rmdir()
    with pytest.raises(BenchmarkFileError, match="textvqa: image folder .*train_images does not exist"):
        build(tmp_path)


def test_other_benchmark_file_is_refused(tmp_path: Path) -> None:
    root = write_textvqa(tmp_path / "textvqa")
    (root / "TextVQA_0.5.1_val.json").write_text(json.dumps([{"image": "x.jpg", "question": "q"}]))  # VizWiz-like
    with pytest.raises(BenchmarkFileError, match=r"textvqa: .*TextVQA_0\.5\.1_val\.json holds a JSON list, "
                                                 "expected an object of dataset fields with 'data'"):
        build(tmp_path)
    (root / "TextVQA_0.5.1_val.json").write_text(json.dumps({"questions": []}))
    with pytest.raises(BenchmarkFileError, match="top level has no field 'data'"):
        build(tmp_path)


def test_malformed_records_name_record_and_field(tmp_path: Path) -> None:
    good = TEXTVQA_RECORDS[0]
    cases = [
        ([good, {k: v for k, v in good.items() if k != "answers"}], "data\\[1\\] has no field 'answers'"),
        ([{**good, "answers": "dakota"}],
         "data\\[0\\] \\(question_id 34602\\): field 'answers' is a string, expected a list of strings"),
        ([{**good, "answers": []}], "field 'answers' is a list, expected a list of strings \\(at least one\\)"),
        ([{**good, "question": ""}], "field 'question' is an empty string, expected a non-empty string"),
        ([{**good, "question_id": None}], "data\\[0\\]: field 'question_id' is null, expected a question id"),
        ([good, {**good, "question": "other?"}], "has two records with question_id '34602'"),
        (["not a record"], "data\\[0\\] is a string, expected an object"),
        ([], "holds no questions"),
    ]
    for records, message in cases:
        write_textvqa(tmp_path / "textvqa", records)
        with pytest.raises(BenchmarkFileError, match=message):
            build(tmp_path)


def test_ocr_tokens_required_only_when_asked(tmp_path: Path) -> None:
    record = {k: v for k, v in textvqa_record(1, "img", "what?", ["a"] * 10).items() if k != "ocr_tokens"}
    write_textvqa(tmp_path / "textvqa", [record])
    assert build(tmp_path, ocr_tokens=False).questions()[0].prompt == "What?" + INSTRUCTION
    with pytest.raises(BenchmarkFileError, match="data\\[0\\] has no field 'ocr_tokens'"):
        build(tmp_path)  # LLaVA-1.5's prompt, with OCR tokens, is the default

"""VizWiz: LLaVA-1.5 prompt, VQA accuracy overall / answerable / unanswerable by hand, subsets, bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdkit import BuildContext
from kdkit.evaluation.files import BenchmarkFileError
from kdkit.testing import check_plugin
from kdkit_plugins.benchmarks import vizwiz
from kdkit_plugins.fixtures.benchmarks_vqa import VIZWIZ_RECORDS, write_vizwiz

SUFFIX = ("\nWhen the provided information is insufficient, respond with 'Unanswerable'."
          "\nAnswer the question using a single word or phrase.")
IDS = [f"VizWiz_val_0000000{i}.jpg" for i in range(4)]


def build(tmp_path: Path, **config) -> vizwiz.VizWiz:
    return vizwiz.build(vizwiz.VizWizConfig(**config), BuildContext(name="eval", data_root=tmp_path))


def test_contract(tmp_path: Path) -> None:
    check_plugin("benchmark", "vizwiz", vizwiz.kdkit_benchmarks()["vizwiz"], tmp_path)


def test_questions_prompts_and_images(tmp_path: Path) -> None:
    root = write_vizwiz(tmp_path / "vizwiz")
    questions = build(tmp_path).questions()
    assert [q.id for q in questions] == IDS
    assert questions[0].prompt == "What is this? and what color is it?" + SUFFIX
    assert questions[0].image == root / "val" / "VizWiz_val_00000000.jpg"
    assert all(q.max_new_tokens == 16 and Path(q.image).is_file() for q in questions)


def test_accuracy_answerable_unanswerable_by_hand(tmp_path: Path) -> None:
    write_vizwiz(tmp_path / "vizwiz")
    bench = build(tmp_path)
    scores = bench.score({
        IDS[0]: "Black tea.",  # 5 of 10 say "black tea" -> 1.0
        IDS[1]: "No",  # 2 say "no": 2 answers see 1 (1/3), 8 see 2 (2/3) -> 18/30 = 0.6
        IDS[2]: "Unanswerable",  # 8 say it -> 1.0 (the unanswerable question)
        IDS[3]: "three",  # "3": 2 of 10 -> 0.6 ("two"/"2" are 8 others)
    })
    assert scores.metrics == pytest.approx({
        "accuracy": 80.0,  # (1 + 0.6 + 1 + 0.6) / 4
        "answerable": 100 * 2.2 / 3,  # (1 + 0.6 + 0.6) / 3
        "unanswerable": 100.0,
    })
    assert scores.units == pytest.approx(dict(zip(IDS, [100.0, 60.0, 100.0, 60.0])))
    assert scores.details["count"] == 4
    assert (scores.details["answerable_count"], scores.details["unanswerable_count"]) == (3, 1)
    assert scores.details["per_answer_type"] == {
        "number": {"accuracy": pytest.approx(60.0), "count": 1}, "other": {"accuracy": 100.0, "count": 1},
        "unanswerable": {"accuracy": 100.0, "count": 1}, "yes/no": {"accuracy": pytest.approx(60.0), "count": 1}}
    assert bench.metrics == ("accuracy", "answerable", "unanswerable") and bench.primary == "accuracy"
    assert bench.published == {"LLaVA-1.5 7B (paper)": 50.0, "HAWAII 7B (paper)": 53.9}


def test_subset_without_unanswerable_leaves_that_metric_out(tmp_path: Path) -> None:
    write_vizwiz(tmp_path / "vizwiz")
    bench = build(tmp_path)
    scores = bench.score({IDS[0]: "tea", IDS[1]: "yes"})  # "tea": 4 -> 1.0; "yes": 7 -> 1.0
    assert scores.metrics == {"accuracy": 100.0, "answerable": 100.0}
    assert scores.details["unanswerable_count"] == 0
    empty = bench.score({q.id: "" for q in bench.questions()})
    assert empty.metrics == {"accuracy": 0.0, "answerable": 0.0, "unanswerable": 0.0}
    with pytest.raises(BenchmarkFileError, match="vizwiz: prediction for question id 'VizWiz_val_00000009.jpg'"):
        bench.score({"VizWiz_val_00000009.jpg": "x"})


def test_other_benchmark_file_and_missing_folder(tmp_path: Path) -> None:
    root = write_vizwiz(tmp_path / "vizwiz")
    (root / "val.json").write_text(json.dumps({"data": []}))  # TextVQA-like
    with pytest.raises(BenchmarkFileError, match=r"vizwiz: .*val\.json holds a JSON dict, expected a list of VizWiz "
                                                 "question records"):
        build(tmp_path)
    with pytest.raises(BenchmarkFileError, match=r"vizwiz: annotations file .*test\.json does not exist"):
        build(tmp_path, annotations="test.json")
    write_vizwiz(tmp_path / "vizwiz")
    with pytest.raises(BenchmarkFileError, match="vizwiz: image folder .*train does not exist"):
        build(tmp_path, images="train")


def test_malformed_records_name_record_and_field(tmp_path: Path) -> None:
    good = VIZWIZ_RECORDS[0]
    where = "record 0 \\(image VizWiz_val_00000000.jpg\\)"
    cases = [
        ([{k: v for k, v in good.items() if k != "answerable"}], "record 0 has no field 'answerable'"),
        ([{**good, "answers": ["tea"] * 10}], f"{where} answers\\[0\\] is a string, expected an object"),
        ([{**good, "answers": [{"answer_confidence": "yes"}]}], f"{where} answers\\[0\\] has no field 'answer'"),
        ([{**good, "answers": []}], f"{where}: field 'answers' is a list, expected a list of"),
        ([{**good, "answerable": "yes"}], f"{where}: field 'answerable' is a string, expected 0 or 1"),
        ([{**good, "answer_type": 3}], f"{where}: field 'answer_type' is a number, expected a non-empty string"),
        ([good, good], "has two records with image 'VizWiz_val_00000000.jpg'"),
    ]
    for records, message in cases:
        write_vizwiz(tmp_path / "vizwiz", records)
        with pytest.raises(BenchmarkFileError, match=message):
            build(tmp_path)

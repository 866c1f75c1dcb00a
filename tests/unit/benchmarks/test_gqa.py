"""GQA: LLaVA-1.5 prompt, exact match after LLaVA's answer clean-up, per-type tables by hand, bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdkit import BuildContext
from kdkit.evaluation.files import BenchmarkFileError
from kdkit.testing import check_plugin
from kdkit_plugins.benchmarks import gqa
from kdkit_plugins.fixtures.benchmarks_vqa import GQA_RECORDS, gqa_record, write_gqa

INSTRUCTION = "\nAnswer the question using a single word or phrase."
IDS = ["20968157", "20968158", "201640614", "201640615", "201640616"]


def build(tmp_path: Path, **config) -> gqa.GQA:
    return gqa.build(gqa.GQAConfig(**config), BuildContext(name="eval", data_root=tmp_path))


def test_contract(tmp_path: Path) -> None:
    check_plugin("benchmark", "gqa", gqa.kdkit_benchmarks()["gqa"], tmp_path)


def test_questions_prompts_and_images(tmp_path: Path) -> None:
    root = write_gqa(tmp_path / "gqa")
    questions = build(tmp_path).questions()
    assert [q.id for q in questions] == IDS
    assert questions[0].prompt == "Is the sky dark?" + INSTRUCTION
    assert questions[4].prompt == "Is the table to the left or to the right of the chair?" + INSTRUCTION
    assert questions[2].image == root / "images" / "n161313.jpg"
    assert all(q.max_new_tokens == 16 and Path(q.image).is_file() for q in questions)


@pytest.mark.parametrize(("raw", "expected"), [
    (" Yes.\n", "yes"),  # stripped, trailing period gone, lower-cased
    ("Left...", "left"),  # every trailing period
    ("yes .", "yes "),  # only the ends are stripped, before the periods go (as LLaVA does)
    ("The girl", "the girl"),  # no article removal
    ("3.5", "3.5"),
])
def test_prediction_clean_up(raw: str, expected: str) -> None:
    assert gqa.normalize_prediction(raw) == expected


def test_accuracy_and_type_tables_by_hand(tmp_path: Path) -> None:
    write_gqa(tmp_path / "gqa")
    bench = build(tmp_path)
    scores = bench.score({
        "20968157": "Yes.",  # verify/attr: "yes" == "yes"
        "20968158": "White",  # query/attr: "white"
        "201640614": "The girl",  # query/rel: "the girl" != "girl"
        "201640615": "no",  # logical/obj: "no"
        "201640616": "right",  # choose/rel: gold "left"
    })
    assert scores.metrics == {"accuracy": pytest.approx(60.0)}  # 3 of 5
    assert scores.units == dict(zip(IDS, [100.0, 100.0, 0.0, 100.0, 0.0]))
    assert scores.details["count"] == 5
    assert scores.details["per_structural_type"] == {
        "choose": {"accuracy": 0.0, "count": 1}, "logical": {"accuracy": 100.0, "count": 1},
        "query": {"accuracy": 50.0, "count": 2}, "verify": {"accuracy": 100.0, "count": 1}}
    # open = the two "query" questions (1 of 2); binary = verify, logical, choose (2 of 3)
    assert scores.details["per_answer_kind"] == {"binary": {"accuracy": pytest.approx(200 / 3), "count": 3},
                                                 "open": {"accuracy": 50.0, "count": 2}}
    assert scores.details["per_semantic_type"] == {"attr": {"accuracy": 100.0, "count": 2},
                                                   "obj": {"accuracy": 100.0, "count": 1},
                                                   "rel": {"accuracy": 0.0, "count": 2}}
    assert bench.metrics == ("accuracy",) and bench.primary == "accuracy"
    assert bench.published == {"LLaVA-1.5 7B (paper)": 62.0, "HAWAII 7B (paper)": 62.8}


def test_subset_empty_and_unknown_ids(tmp_path: Path) -> None:
    write_gqa(tmp_path / "gqa")
    bench = build(tmp_path)
    scores = bench.score({"201640614": "girl"})
    assert scores.metrics == {"accuracy": 100.0}
    assert scores.details["per_structural_type"] == {"query": {"accuracy": 100.0, "count": 1}}
    assert bench.score({}).metrics == {}
    assert bench.score({q: "" for q in IDS}).metrics == {"accuracy": 0.0}
    with pytest.raises(BenchmarkFileError, match="gqa: prediction for question id '123'"):
        bench.score({"123": "yes"})


def test_unbalanced_questions_are_not_asked_and_types_are_optional(tmp_path: Path) -> None:
    plain = {k: v for k, v in gqa_record("n1", "Is it red?", "yes", "verify", "attr").items() if k != "types"}
    write_gqa(tmp_path / "gqa", {"1": plain, "2": gqa_record("n1", "Is it blue?", "no", "verify", "attr",
                                                             balanced=False)})
    bench = build(tmp_path)
    assert [q.id for q in bench.questions()] == ["1"]
    scores = bench.score({"1": "yes"})
    assert scores.metrics == {"accuracy": 100.0} and scores.details == {"count": 1}
    with pytest.raises(BenchmarkFileError, match="question id '2'"):
        bench.score({"2": "no"})


def test_other_benchmark_file_and_malformed_records(tmp_path: Path) -> None:
    root = write_gqa(tmp_path / "gqa")
    (root / "testdev_balanced_questions.json").write_text(json.dumps([{"image": "x.jpg"}]))  # VizWiz-like
    with pytest.raises(BenchmarkFileError, match=r"gqa: .*testdev_balanced_questions\.json holds a JSON list, "
                                                 "expected an object of question records by question id"):
        build(tmp_path)
    good = GQA_RECORDS["20968157"]
    cases = [
        ({"7": {k: v for k, v in good.items() if k != "imageId"}}, "question '7' has no field 'imageId'"),
        ({"7": {**good, "answer": ["yes"]}}, "question '7': field 'answer' is a list, expected a string"),
        ({"7": {**good, "types": {"structural": 1}}}, "field 'types.structural' is a number, expected a string"),
        ({"7": {**good, "isBalanced": "yes"}}, "field 'isBalanced' is a string, expected true or false"),
        ({"7": "Is the sky dark?"}, "question '7' is a string, expected an object"),
        ({}, "holds no questions"),
    ]
    for records, message in cases:
        write_gqa(tmp_path / "gqa", records)
        with pytest.raises(BenchmarkFileError, match=message):
            build(tmp_path)
    with pytest.raises(BenchmarkFileError, match=r"gqa: questions file .*testdev_all_questions\.json does not exist"):
        build(tmp_path, questions="testdev_all_questions.json")

"""SEED-Bench (image): video questions left out, the prompt, accuracy overall and per question type, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdkit import BuildContext
from kdkit.evaluation.files import BenchmarkFileError
from kdkit.testing import check_plugin
from kdkit_plugins.benchmarks import seedbench
from kdkit_plugins.benchmarks.seedbench import SeedBenchConfig, build
from kdkit_plugins.fixtures.benchmarks_choice import SEED_FILE, SEED_VIDEO_QUESTION_ID, write_seedbench

INSTRUCTION = "Answer with the option's letter from the given choices directly."


def _bench(tmp_path: Path):
    root = write_seedbench(tmp_path)
    return build(SeedBenchConfig(root=root.name), BuildContext(data_root=tmp_path)), root


def test_contract(tmp_path: Path) -> None:
    check_plugin("benchmark", "seedbench", seedbench.kdkit_benchmarks()["seedbench"], tmp_path)


def test_image_questions_and_prompt(tmp_path: Path) -> None:
    bench, root = _bench(tmp_path)
    questions = bench.questions()
    assert [q.id for q in questions] == ["101", "102", "103", "104"]  # the video question is left out
    assert SEED_VIDEO_QUESTION_ID not in {q.id for q in questions}
    assert questions[0].prompt == (f"What is the main colour of the scene?\nA. red\nB. green\nC. blue\nD. yellow\n"
                                   f"{INSTRUCTION}")
    assert questions[3].image == root / "SEED-Bench-image" / "image_104.jpg" and questions[3].image.is_file()
    assert questions[0].max_new_tokens == 16
    assert bench.published == {"LLaVA-1.5 7B (paper)": 66.1, "HAWAII 7B (paper)": 67.5}


def test_score_by_hand(tmp_path: Path) -> None:
    bench, _ = _bench(tmp_path)
    # answers: 101 A, 102 B, 103 C, 104 D
    scores = bench.score({"101": "A",  # right
                          "102": "b",  # right (a lone lowercase letter)
                          "103": "The answer is D",  # wrong
                          "104": "Four"})  # right (the option's text)
    # 3 right of 4 -> 75 %
    assert scores.metrics == {"accuracy": 75.0}
    assert scores.units == {"101": 100.0, "102": 100.0, "103": 0.0, "104": 100.0}
    # Scene Understanding: 101, 102 (2/2); Instance Identity: 103 (0/1); Instances Counting: 104 (1/1)
    assert scores.details["by_question_type"] == {"Instance Identity": {"accuracy": 0.0, "count": 1},
                                                  "Instances Counting": {"accuracy": 100.0, "count": 1},
                                                  "Scene Understanding": {"accuracy": 100.0, "count": 2}}
    # a subset: 103 unreadable (wrong), 104 right -> 50 %
    assert bench.score({"103": "hmm", "104": "D."}).metrics == {"accuracy": 50.0}
    with pytest.raises(BenchmarkFileError, match=r"seedbench: prediction for question id '9001'"):
        bench.score({SEED_VIDEO_QUESTION_ID: "A"})


def _edit(root: Path, change) -> None:
    path = root / SEED_FILE
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("change, message", [
    (lambda d: d["questions"][1].update(answer="E"), r"question #1 \(question_id 102\): answer 'E' is not one of "
                                                     r"the option letters A, B, C, D"),
    (lambda d: d["questions"][2].pop("choice_d"), r"question #2 has no field 'choice_d'"),
    (lambda d: d["questions"][3].update(question_id="101"), r"question #3 \(question_id 101\): question_id repeated"),
    (lambda d: d.pop("question_type"), r"top level has no field 'question_type'"),
    (lambda d: d["questions"][0].pop("data_type"), r"question #0 has no field 'data_type'"),
    (lambda d: d.update(questions={"101": {}}), r"holds a JSON dict, expected a list of questions"),
])
def test_file_errors(tmp_path: Path, change, message: str) -> None:
    root = write_seedbench(tmp_path)
    _edit(root, change)
    with pytest.raises(BenchmarkFileError, match=message) as info:
        build(SeedBenchConfig(root=root.name), BuildContext(data_root=tmp_path))
    assert SEED_FILE in str(info.value) and "\n" not in str(info.value)


def test_missing_or_foreign_file(tmp_path: Path) -> None:
    context = BuildContext(data_root=tmp_path)
    root = write_seedbench(tmp_path)
    with pytest.raises(BenchmarkFileError, match=r"seedbench: annotation file .*SEED-Bench-2.json does not exist"):
        build(SeedBenchConfig(root=root.name, annotations="SEED-Bench-2.json"), context)
    # ScienceQA's problems.json in its place: an object without "questions"
    (root / SEED_FILE).write_text(json.dumps({"1": {"question": "q", "choices": ["a", "b"]}}))
    with pytest.raises(BenchmarkFileError, match=r"SEED-Bench.json top level has no field 'questions', "
                                                 r"'question_type'"):
        build(SeedBenchConfig(root=root.name), context)
    _edit(root, lambda d: d.update(questions=[{"data_type": "video"}], question_type={}))
    with pytest.raises(BenchmarkFileError, match=r"has no question with data_type 'image'"):
        build(SeedBenchConfig(root=root.name), context)

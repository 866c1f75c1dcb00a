"""ScienceQA-IMG: image-subset filtering, LLaVA-1.5's prompt, letter scoring and file errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdkit import BuildContext
from kdkit.evaluation.files import BenchmarkFileError
from kdkit.testing import check_plugin
from kdkit_plugins.benchmarks import scienceqa_img
from kdkit_plugins.benchmarks.scienceqa_img import ScienceQAImgConfig, build
from kdkit_plugins.fixtures.benchmarks_choice import (SCIENCEQA_IMAGE_PIDS, SCIENCEQA_TEXT_ONLY_PID,
                                                      SCIENCEQA_TRAIN_PID, write_scienceqa)

INSTRUCTION = "Answer with the option's letter from the given choices directly."


def _bench(tmp_path: Path, **fields: str):
    root = write_scienceqa(tmp_path)
    return build(ScienceQAImgConfig(root=root.name, **fields), BuildContext(data_root=tmp_path)), root


def test_contract(tmp_path: Path) -> None:
    check_plugin("benchmark", "scienceqa_img", scienceqa_img.kdkit_benchmarks()["scienceqa_img"], tmp_path)


def test_only_test_questions_with_an_image_are_asked(tmp_path: Path) -> None:
    bench, root = _bench(tmp_path)
    ids = [q.id for q in bench.questions()]
    assert ids == list(SCIENCEQA_IMAGE_PIDS) == ["1", "2", "4", "6"]
    assert SCIENCEQA_TEXT_ONLY_PID not in ids and SCIENCEQA_TRAIN_PID not in ids
    first = bench.questions()[0]
    assert first.image == root / "images" / "test" / "1" / "image.png" and first.image.is_file()
    assert first.max_new_tokens == 16
    assert bench.metrics == ("accuracy",) and bench.primary == "accuracy"
    assert bench.published == {"LLaVA-1.5 7B (paper)": 66.8, "HAWAII 7B (paper)": 70.5}


def test_prompts_are_llava_cqm_a(tmp_path: Path) -> None:
    bench, _ = _bench(tmp_path)
    prompts = {q.id: q.prompt for q in bench.questions()}
    # empty hint: no context line at all
    assert prompts["1"] == f"Which color is the picture?\nA. red\nB. green\nC. blue\n{INSTRUCTION}"
    assert prompts["2"] == ("Context: Look at the picture.\nWhat is shown?\nA. a green square\nB. a red square\n"
                            f"{INSTRUCTION}")
    # a hint of two lines is kept as is
    assert prompts["4"] == ("Context: A short passage.\nWith two lines.\nWhich color is it?\n"
                            f"A. yellow\nB. red\nC. green\nD. blue\n{INSTRUCTION}")
    assert prompts["6"].splitlines()[-2] == "E. purple"


def test_score_by_hand(tmp_path: Path) -> None:
    bench, _ = _bench(tmp_path)
    # answers: 1 -> A (red), 2 -> A (a green square), 4 -> D (blue), 6 -> E (purple)
    scores = bench.score({"1": "A",  # right
                          "2": "(B)",  # wrong letter
                          "4": "The answer is D.",  # right
                          "6": "purple"})  # right: the option's text
    # 3 right of 4 -> 75 %
    assert scores.metrics == {"accuracy": 75.0}
    assert scores.units == {"1": 100.0, "2": 0.0, "4": 100.0, "6": 100.0}
    # natural science: pids 1, 6 (2/2); social: 2 (0/1); language: 4 (1/1)
    assert scores.details["by_subject"] == {"language science": {"accuracy": 100.0, "count": 1},
                                            "natural science": {"accuracy": 100.0, "count": 2},
                                            "social science": {"accuracy": 0.0, "count": 1}}
    # grades 3, 5 -> 1-6 (2/2); grades 8, 10 -> 7-12 (1/2)
    assert scores.details["by_grade"] == {"1-6": {"accuracy": 100.0, "count": 2},
                                          "7-12": {"accuracy": 50.0, "count": 2}}
    assert scores.details["scored"] == 4 and scores.details["questions"] == 4


def test_no_letter_is_wrong_and_subsets_score(tmp_path: Path) -> None:
    bench, _ = _bench(tmp_path)
    # 1: no letter (wrong); 2: right -> 1 of 2 = 50 %
    scores = bench.score({"1": "I cannot tell", "2": "a"})
    assert scores.metrics == {"accuracy": 50.0} and set(scores.units) == {"1", "2"}


def test_text_only_question_id_is_refused(tmp_path: Path) -> None:
    bench, _ = _bench(tmp_path)
    with pytest.raises(BenchmarkFileError, match=r"scienceqa_img: prediction for question id '3'"):
        bench.score({"1": "A", SCIENCEQA_TEXT_ONLY_PID: "A"})


def test_other_split(tmp_path: Path) -> None:
    bench, root = _bench(tmp_path, split="train", images="images/train")
    assert [q.id for q in bench.questions()] == [SCIENCEQA_TRAIN_PID]
    assert bench.questions()[0].image == root / "images" / "train" / "5" / "image.png"


def _edit(root: Path, pid: str, **changes: object) -> None:
    path = root / "problems.json"
    problems = json.loads(path.read_text())
    problems[pid].update(changes)
    for key, value in changes.items():
        if value is KeyError:
            del problems[pid][key]
    path.write_text(json.dumps(problems))


def test_file_errors(tmp_path: Path) -> None:
    context = BuildContext(data_root=tmp_path)
    with pytest.raises(BenchmarkFileError, match=r"scienceqa_img: release folder .*nowhere does not exist"):
        build(ScienceQAImgConfig(root="nowhere"), context)
    root = write_scienceqa(tmp_path)
    config = ScienceQAImgConfig(root=root.name)
    with pytest.raises(BenchmarkFileError, match=r"pid_splits.json has no split 'dev' \(splits: train, val, test"):
        build(ScienceQAImgConfig(root=root.name, split="dev"), context)
    with pytest.raises(BenchmarkFileError, match=r"split 'minival' of .*pid_splits.json has no question with an image"):
        build(ScienceQAImgConfig(root=root.name, split="minival"), context)

    _edit(root, "4", choices=KeyError)
    with pytest.raises(BenchmarkFileError, match=r"problems.json problem '4' has no field 'choices'"):
        build(config, context)
    root = write_scienceqa(tmp_path)
    _edit(root, "4", answer=7)
    with pytest.raises(BenchmarkFileError, match=r"problems.json problem '4': field 'answer' is 7, expected an "
                                                 r"option index 0-3"):
        build(config, context)
    root = write_scienceqa(tmp_path)
    _edit(root, "2", choices="a red square")
    with pytest.raises(BenchmarkFileError, match=r"problem '2': field 'choices' is 'a red square'"):
        build(config, context)

    # another benchmark's file in place of problems.json (SEED-Bench-like list of questions)
    root = write_scienceqa(tmp_path)
    (root / "problems.json").write_text(json.dumps([{"question_id": "1"}]))
    with pytest.raises(BenchmarkFileError, match=r"problems.json holds a JSON list, expected an object of problems"):
        build(config, context)
    (root / "problems.json").write_text("{not json")
    with pytest.raises(BenchmarkFileError, match=r"problems file .*problems.json is not JSON \(line 1"):
        build(config, context)
    (root / "problems.json").write_text(json.dumps({"1": {"question": "q", "choices": ["x", "y"], "answer": 0,
                                                          "hint": "", "image": "image.png"}}))
    with pytest.raises(BenchmarkFileError, match=r"lists pid '2' in split 'test', which .*problems.json does not "
                                                 "hold"):
        build(config, context)

"""MMBench: circular passes (from the file, or rotated here), LLaVA-1.5's prompt, circular scoring, errors."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from kdkit import BuildContext
from kdkit.evaluation.files import BenchmarkFileError
from kdkit.testing import check_plugin
from kdkit_plugins.benchmarks import mmbench
from kdkit_plugins.benchmarks.mmbench import MMBenchConfig, build
from kdkit_plugins.fixtures.benchmarks_choice import MMBENCH_FILE, image_bytes, write_mmbench

INSTRUCTION = "Answer with the option's letter from the given choices directly."
FILE_IDS = ["0", "1000000", "2000000", "3000000", "1", "1000001", "2000001", "2", "1000002"]
ROTATED_IDS = ["0/r0", "0/r1", "0/r2", "0/r3", "1/r0", "1/r1", "1/r2", "2/r0", "2/r1"]
# Every pass answered right except the 4th pass of question 0 (its answer there is B: "red").
ANSWERS = ["A", "D", "C", "A",  # question 0: 3 of 4 passes right -> counts 0
           "B", "(A)", "square",  # question 1: B, A, C (the option's text) -> right
           "A", "B."]  # question 2: right


def _bench(tmp_path: Path, circular: bool = True):
    root = write_mmbench(tmp_path, circular)
    return build(MMBenchConfig(root=root.name), BuildContext(data_root=tmp_path))


def test_contract(tmp_path: Path) -> None:
    check_plugin("benchmark", "mmbench", mmbench.kdkit_benchmarks()["mmbench"], tmp_path)


def test_passes_from_the_file_are_grouped(tmp_path: Path) -> None:
    bench = _bench(tmp_path)
    questions = bench.questions()
    # the file lists the originals first, then the copies; passes of one question are kept together
    assert [q.id for q in questions] == FILE_IDS
    assert all(q.image == image_bytes(int(q.id) % 1_000_000) for q in questions)
    assert all(q.max_new_tokens == 16 for q in questions)
    prompts = {q.id: q.prompt for q in questions}
    assert prompts["0"] == f"What color is the image?\nA. red\nB. green\nC. blue\nD. yellow\n{INSTRUCTION}"
    # hint on its own line; a 3-option question stops at the empty column D
    assert prompts["1000001"] == ("The image shows one shape.\nWhich shape is it?\nA. square\nB. triangle\n"
                                  f"C. circle\n{INSTRUCTION}")
    assert prompts["1000002"] == f"Is the image bright?\nA. no\nB. yes\n{INSTRUCTION}"
    assert bench.published == {"LLaVA-1.5 7B (paper)": 64.3, "HAWAII 7B (paper)": 66.9}


def test_circular_score_by_hand(tmp_path: Path) -> None:
    bench = _bench(tmp_path)
    scores = bench.score(dict(zip(FILE_IDS, ANSWERS, strict=True)))
    # question 0 right in 3 of 4 passes -> 0; questions 1 and 2 right in every pass -> 2 of 3 = 66.67 %
    assert scores.metrics == {"accuracy": pytest.approx(200 / 3)}
    assert scores.units == {"0": 0.0, "1": 100.0, "2": 100.0}
    assert scores.details["by_category"] == {"color_recognition": {"accuracy": 0.0, "count": 1},
                                             "image_quality": {"accuracy": 100.0, "count": 1},
                                             "shape_recognition": {"accuracy": 100.0, "count": 1}}
    # Coarse Perception: questions 0 (wrong), 1 (right) -> 50 %; Fine-grained: question 2 -> 100 %
    assert scores.details["by_l2_category"] == {"Coarse Perception": {"accuracy": 50.0, "count": 2},
                                                "Fine-grained Perception": {"accuracy": 100.0, "count": 1}}
    assert scores.details["passes"] == 9 and scores.details["questions"] == 3
    # the same answers, with question 0's last pass right too -> 3 of 3
    fixed = dict(zip(FILE_IDS, ANSWERS, strict=True), **{"3000000": "B"})
    assert bench.score(fixed).metrics == {"accuracy": 100.0}


def test_incomplete_questions_are_left_out(tmp_path: Path) -> None:
    bench = _bench(tmp_path)
    answers = dict(zip(FILE_IDS, ANSWERS, strict=True))
    # question 0 only half answered (left out), question 1 not asked, question 2 complete and right
    subset = {qid: answers[qid] for qid in ("0", "1000000", "2", "1000002")}
    scores = bench.score(subset)
    assert scores.metrics == {"accuracy": 100.0} and scores.units == {"2": 100.0}
    assert scores.details["incomplete"] == 1 and scores.details["scored"] == 1
    # the first 4 questions (an engine --limit) hold question 0 whole: 0 of 1 right
    first = {q.id: answers[q.id] for q in bench.questions()[:4]}
    assert bench.score(first).units == {"0": 0.0}
    with pytest.raises(BenchmarkFileError, match=r"mmbench: prediction for question id '4000000'"):
        bench.score({"4000000": "A"})


def test_rotated_here_when_the_file_has_no_passes(tmp_path: Path) -> None:
    from_file = _bench(tmp_path / "a")
    rotated = _bench(tmp_path / "b", circular=False)
    assert [q.id for q in rotated.questions()] == ROTATED_IDS
    # the k-th rotation is the file's k-th copy: same prompt, same answer letter
    assert [q.prompt for q in rotated.questions()] == [q.prompt for q in from_file.questions()]
    scores = rotated.score(dict(zip(ROTATED_IDS, ANSWERS, strict=True)))
    assert scores.units == {"0": 0.0, "1": 100.0, "2": 100.0}
    assert scores.details["circular_passes"] == "rotated here"


def test_forced_rotation_and_g_index_groups(tmp_path: Path) -> None:
    root = write_mmbench(tmp_path)
    context = BuildContext(data_root=tmp_path)
    rotated = build(MMBenchConfig(root=root.name, circular="rotate"), context)
    # every row of the file rotated: 3 rows x 4 options + 3 x 3 + 2 x 2 = 29 passes of 9 questions
    assert len(rotated.questions()) == 29 and len(rotated.groups) == 9
    assert rotated.groups["1000000"].passes == ("1000000/r0", "1000000/r1", "1000000/r2", "1000000/r3")

    def renumber(rows, columns):  # consecutive indexes, the question named by a g_index column
        columns.append("g_index")
        for number, row in enumerate(rows):
            row["g_index"] = str(int(row["index"]) % 1_000_000)
            row["index"] = str(number)
    _rewrite(root, renumber)
    grouped = build(MMBenchConfig(root=root.name), context)
    # rows: 0, 1, 2 the originals, then the copies question by question: 3-5 of 0, 6-7 of 1, 8 of 2
    assert {k: g.passes for k, g in grouped.groups.items()} == {"0": ("0", "3", "4", "5"), "1": ("1", "6", "7"),
                                                                "2": ("2", "8")}
    answers = dict(zip(["0", "3", "4", "5", "1", "6", "7", "2", "8"], ANSWERS, strict=True))
    assert grouped.score(answers).units == {"0": 0.0, "1": 100.0, "2": 100.0}


def _rewrite(root: Path, change) -> None:
    path = root / MMBENCH_FILE
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    columns = list(rows[0])
    change(rows, columns)  # edits rows and columns in place
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def test_image_given_as_another_rows_index(tmp_path: Path) -> None:
    root = write_mmbench(tmp_path)

    def refer(rows, columns):
        rows[-1]["image"] = "2"  # pass 1 of question 2 points at row index 2's image
    _rewrite(root, refer)
    bench = build(MMBenchConfig(root=root.name), BuildContext(data_root=tmp_path))
    assert {q.id: q.image for q in bench.questions()}["1000002"] == image_bytes(2)


@pytest.mark.parametrize("change, message", [
    (lambda rows, cols: [r.update(answer="D") for r in rows if r["index"] == "2"],
     r"row 3 \(index 2\): answer 'D' is not one of the option letters A, B"),
    (lambda rows, cols: rows[0].update(image="not base64!"),
     r"row of index 0: image field is not base64"),
    (lambda rows, cols: rows[1].update(index="0"), r"row 2 \(index 0\): index repeated"),
    (lambda rows, cols: rows[0].update(index="zero"), r"row 1: field 'index' is 'zero', expected an integer"),
    (lambda rows, cols: rows[0].update(B=""), r"row 1 \(index 0\): fewer than two options"),
    (lambda rows, cols: cols.remove("answer") or [r.pop("answer") for r in rows],
     r"has no column 'answer' \(columns: index, question, hint, A, B, C, D, category"),
])
def test_file_errors(tmp_path: Path, change, message: str) -> None:
    root = write_mmbench(tmp_path)
    _rewrite(root, change)
    with pytest.raises(BenchmarkFileError, match=message) as info:
        build(MMBenchConfig(root=root.name), BuildContext(data_root=tmp_path))
    assert MMBENCH_FILE in str(info.value) and "\n" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    root = write_mmbench(tmp_path)
    with pytest.raises(BenchmarkFileError, match=r"mmbench: question file .*mmbench_test.tsv does not exist"):
        build(MMBenchConfig(root=root.name, annotations="mmbench_test.tsv"), BuildContext(data_root=tmp_path))

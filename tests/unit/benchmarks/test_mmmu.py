"""MMMU: parquet release, first image, lmms-eval's prompt, MMMU's multiple-choice and open-answer rules."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from kdkit import BuildContext
from kdkit.evaluation.files import BenchmarkFileError
from kdkit.testing import check_plugin
from kdkit_plugins.benchmarks import mmmu
from kdkit_plugins.benchmarks.mmmu import (MMMUConfig, build, eval_open, extract_numbers, gold_answer, normalize,
                                           parse_multi_choice, parse_open)
from kdkit_plugins.fixtures.benchmarks_choice import MMMU_FILE, image_bytes, write_mmmu

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

MC = "Answer with the option's letter from the given choices directly."
OPEN = "Answer the question using a single word or phrase."
IDS = ["validation_Accounting_1", "validation_Accounting_2", "validation_Math_1", "validation_Math_2"]
OPTIONS = ["red", "green", "blue", "black"]


def _bench(tmp_path: Path, **fields):
    root = write_mmmu(tmp_path)
    return build(MMMUConfig(root=root.name, **fields), BuildContext(data_root=tmp_path))


def test_contract(tmp_path: Path) -> None:
    check_plugin("benchmark", "mmmu", mmmu.kdkit_benchmarks()["mmmu"], tmp_path)


def test_questions_prompts_and_first_image(tmp_path: Path) -> None:
    bench = _bench(tmp_path)
    questions = {q.id: q for q in bench.questions()}
    assert list(questions) == IDS
    assert questions["validation_Accounting_1"].prompt == (
        f"<image 1> Which colour dominates?\nA. red\nB. green\nC. blue\nD. black\n\n{MC}")
    assert questions["validation_Accounting_2"].prompt == f"How many dollars does <image 1> show?\n\n{OPEN}"
    assert questions["validation_Math_1"].prompt == (
        f"Which option matches <image 2>?\nA. $x^2$\nB. $x^3$\nC. <image 1>\n\n{MC}")
    assert questions["validation_Accounting_1"].image == image_bytes(0)
    assert questions["validation_Math_1"].image == image_bytes(2)  # image_1 empty: image_2 is the first
    assert questions["validation_Math_2"].image == image_bytes(3)  # image_1 of two images
    assert all(q.max_new_tokens == 16 for q in questions.values())
    assert bench.published == {"LLaVA-1.5 7B (paper)": 34.7, "HAWAII 7B (paper)": 36.6}
    only_math = _bench(tmp_path / "m", subjects=["Math"])
    assert [q.id for q in only_math.questions()] == IDS[2:]


@pytest.mark.parametrize("response, letter", [
    ("B", "B"),
    ("(B)", "B"),
    ("B.", "B"),  # trailing period stripped, then " B " found
    ("  C\n", "C"),
    ("The answer is (C).", "C"),
    ("A or B?", "B"),  # both between spaces: the last one mentioned
    ("(A) is wrong and (B) is right", "B"),  # bracketed letters first; the last one
    ("I believe the colour is clearly blue here", "C"),  # more than 5 words: the option text
    ("red and then green surely is the answer", "B"),  # two option texts: the last one mentioned
])
def test_parse_multi_choice(response: str, letter: str) -> None:
    assert parse_multi_choice(response, OPTIONS) == letter


@pytest.mark.parametrize("response", ["", "blue", "b", "The answer is B:C", "E"])
def test_parse_multi_choice_unreadable(response: str) -> None:
    # no bracketed/spaced capital letter of A-D and at most 5 words: MMMU would guess
    assert parse_multi_choice(response, OPTIONS) is None


def test_unreadable_answers_are_seeded_guesses_or_wrong(tmp_path: Path) -> None:
    guessing, strict = _bench(tmp_path / "g"), _bench(tmp_path / "s", guess_unparsed=False)
    answers = {"validation_Accounting_1": "no idea", "validation_Math_1": "no idea"}
    first, again = guessing.score(answers), guessing.score(answers)
    assert first.units == again.units and first.details["unparsed"] == 2
    expected = {qid: 100.0 if random.Random(f"mmmu:{qid}").choice(letters) == gold else 0.0
                for qid, letters, gold in (("validation_Accounting_1", "ABCD", "B"),
                                           ("validation_Math_1", "ABC", "A"))}
    assert first.units == expected
    assert strict.score(answers).units == {"validation_Accounting_1": 0.0, "validation_Math_1": 0.0}
    assert strict.score(answers).details["unparsed_scored_as"] == "wrong"


@pytest.mark.parametrize("response, right", [
    ("1234", True),
    ("1,234", True),  # thousands comma removed
    ("The total is 1234 dollars.", True),  # tail after "is", its number
    ("$1,234.00", True),  # the comma-grouped number in it
    ("1234.004", True),  # rounded to 2 decimals: 1234.0
    ("1235", False),
    ("12340", False),
    ("", False),
])
def test_open_numbers_gold_1234(response: str, right: bool) -> None:
    assert eval_open("1234", parse_open(response)) is right


@pytest.mark.parametrize("response, right", [
    ("x = 2.50", True),  # "=" in the last sentence; 2.50 -> 2.5
    ("2.499", True),  # round(2.499, 2) == 2.5
    ("2.51", False),
    ("5/2", False),  # the numbers 5 and 2
    # lower-cased before the split into sentences (which needs a capital): one sentence, whose
    # shortest tail after a marker is "3"
    ("So x is 2.5. Then y is 3", False),
])
def test_open_numbers_gold_2_5(response: str, right: bool) -> None:
    assert eval_open("2.5", parse_open(response)) is right


def test_open_text_and_gold_lists() -> None:
    assert eval_open("Paris", parse_open("The capital is paris."))
    assert not eval_open("Paris", parse_open("London"))
    assert gold_answer("['6', 'six']") == ["6", "six"]
    assert gold_answer("[1, 2]") == "[1, 2]"  # not a list of texts: kept as the text
    assert eval_open(gold_answer("['6', 'six']"), parse_open("six"))
    assert normalize("A") == [" a", "a "]  # one character only matches as a word
    assert normalize(" 3,000.456 ") == [3000.46]
    # MMMU's three patterns run separately: comma-grouped, scientific, then plain numbers, whose
    # pattern also picks pieces of the first two ("-1" and "3" of -1.5e3, "000" of 2,000)
    assert extract_numbers("-1.5e3 and 2,000 and .5") == ["2,000", "-1.5e3", "-1", "3", "000", ".5"]


def test_score_by_hand(tmp_path: Path) -> None:
    bench = _bench(tmp_path)
    scores = bench.score({"validation_Accounting_1": "(B)",  # right (answer B)
                          "validation_Accounting_2": "1,234",  # right (answer 1234)
                          "validation_Math_1": "B",  # wrong (answer A)
                          "validation_Math_2": "2.51"})  # wrong (answer 2.5)
    # 2 right of 4 -> 50 %
    assert scores.metrics == {"accuracy": 50.0}
    assert scores.units == dict(zip(IDS, (100.0, 100.0, 0.0, 0.0), strict=True))
    assert scores.details["by_subject"] == {"Accounting": {"accuracy": 100.0, "count": 2},
                                            "Math": {"accuracy": 0.0, "count": 2}}
    assert scores.details["by_discipline"] == {"Business": {"accuracy": 100.0, "count": 2},
                                               "Science": {"accuracy": 0.0, "count": 2}}
    # multiple-choice: Accounting_1 right, Math_1 wrong; open: Accounting_2 right, Math_2 wrong
    assert scores.details["by_question_type"] == {"multiple-choice": {"accuracy": 50.0, "count": 2},
                                                  "open": {"accuracy": 50.0, "count": 2}}
    assert scores.details["unparsed"] == 0
    assert bench.score({"validation_Math_2": "x = 2.5"}).metrics == {"accuracy": 100.0}
    with pytest.raises(BenchmarkFileError, match=r"mmmu: prediction for question id 'validation_Art_1'"):
        bench.score({"validation_Art_1": "A"})


def _rewrite(path: Path, **columns) -> None:
    table = pq.read_table(path)
    for name, values in columns.items():
        if values is None:
            table = table.drop_columns([name])
        else:
            table = table.set_column(table.column_names.index(name), name, pa.array(values, pa.string()))
    pq.write_table(table, path)


@pytest.mark.parametrize("columns, message", [
    ({"question_type": None}, r"Accounting/validation-00000-of-00001.parquet has no column 'question_type'"),
    ({"options": ["['a', 'b']", "not a list"]}, r"row 1 \(id 'validation_Accounting_2'\): field 'options' is "
                                                r"'not a list', expected the text of a list of strings"),
    ({"options": ["[]", "[]"]}, r"row 0 \(id 'validation_Accounting_1'\): field 'options' is empty for a "
                                r"multiple-choice question"),
    ({"question_type": ["multiple-choice", "short"]}, r"field 'question_type' is 'short', expected one of "
                                                      r"multiple-choice, open"),
    ({"id": ["validation_Accounting_1", "validation_Accounting_1"]},
     r"row 1: id 'validation_Accounting_1' repeated"),
])
def test_file_errors(tmp_path: Path, columns, message: str) -> None:
    root = write_mmmu(tmp_path)
    _rewrite(root / "Accounting" / MMMU_FILE, **columns)
    with pytest.raises(BenchmarkFileError, match=message) as info:
        build(MMMUConfig(root=root.name), BuildContext(data_root=tmp_path))
    assert "Accounting" in str(info.value) and "\n" not in str(info.value)


def test_missing_files(tmp_path: Path) -> None:
    context = BuildContext(data_root=tmp_path)
    root = write_mmmu(tmp_path)
    with pytest.raises(BenchmarkFileError, match=r"subject 'Physics' file .*Physics/validation-00000-of-00001."
                                                 r"parquet does not exist"):
        build(MMMUConfig(root=root.name, subjects=["Physics"]), context)
    with pytest.raises(BenchmarkFileError, match=r"no <Subject>/dev-00000-of-00001.parquet under .*MMMU"):
        build(MMMUConfig(root=root.name, file="dev-00000-of-00001.parquet"), context)
    (root / "Accounting" / MMMU_FILE).write_text("not parquet")
    with pytest.raises(BenchmarkFileError, match=r"Accounting/validation-00000-of-00001.parquet is not a readable "
                                                 r"parquet file"):
        build(MMMUConfig(root=root.name), context)

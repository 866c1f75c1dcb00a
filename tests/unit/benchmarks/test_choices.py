"""Lettered multiple-choice prompts and answer parsing shared by ScienceQA, MMBench, SEED-Bench, MMMU."""

from __future__ import annotations

import pytest

from kdkit.evaluation.files import BenchmarkFileError
from kdkit.interfaces import Question
from kdkit_plugins.benchmarks.choices import (ChoiceBenchmark, ChoiceItem, Outcome, accuracy_scores, choice_prompt,
                                              format_options, letter_of, option_letters, parse_choice)

OPTIONS = ["West Virginia", "Louisiana", "Arizona", "Oklahoma"]


def test_prompt_layout() -> None:
    assert format_options(["x", "y"]) == "A. x\nB. y"
    assert choice_prompt("Which?", ["x", "y"]) == (
        "Which?\nA. x\nB. y\nAnswer with the option's letter from the given choices directly.")
    assert choice_prompt("Which?", ["x", "y"], preamble="Hint.") == (
        "Hint.\nWhich?\nA. x\nB. y\nAnswer with the option's letter from the given choices directly.")
    assert choice_prompt("Q", ["x"], instruction="Go.", gap="\n\n") == "Q\nA. x\n\nGo."


def test_option_letters() -> None:
    assert option_letters(5) == ("A", "B", "C", "D", "E")
    with pytest.raises(ValueError, match="27"):
        option_letters(27)


@pytest.mark.parametrize("answer, letter", [
    ("B", "B"),
    ("(B)", "B"),
    ("B.", "B"),
    (" B\n", "B"),
    ("b", "B"),  # a lone lowercase letter
    ("(c).", "C"),
    ("The answer is B", "B"),
    ("The answer is B.", "B"),
    ("the answer is (C)", "C"),
    ("Answer: D", "D"),
    ("B. Louisiana", "B"),
    ("I choose C", "C"),  # "I" is no option letter of a 4-option question
    ("louisiana", "B"),  # the option's text instead of its letter
    ("Arizona.", "C"),
    ("It must be Oklahoma, in my view", "D"),  # one option text inside the answer
    ("A. West Virginia, not B", "A"),  # two standing letters; the one option text named decides
])
def test_parse_choice_reads_the_letter(answer: str, letter: str) -> None:
    assert parse_choice(answer, OPTIONS) == letter


@pytest.mark.parametrize("answer", [
    "",  # nothing
    "   ",
    "I do not know",  # no letter, no option text
    "E",  # not a letter of a 4-option question
    "A or B",  # two letters, no option text
    "Louisiana or Arizona",  # two option texts
    "the answer is a state",  # lowercase "a" is an article, not a letter
])
def test_parse_choice_without_letter_is_none(answer: str) -> None:
    assert parse_choice(answer, OPTIONS) is None


def test_parse_choice_prefers_the_whole_option_text() -> None:
    options = ["a green square", "a red square"]
    # "A" is the article here; the answer IS option B's text
    assert parse_choice("A red square.", options) == "B"
    # of two contained options, the one contained in the other does not count
    assert parse_choice("It is dark red", ["red", "dark red", "blue"]) == "B"
    # options are found as whole words: "3" is in "3 cats", not in "13"
    assert parse_choice("I count 3 cats", ["1", "3", "13"]) == "B"
    assert parse_choice("I count 13 cats", ["1", "3", "13"]) == "C"
    assert parse_choice("I count 2 cats", ["1", "3", "13"]) is None


def test_stated_answer_beats_other_capitals() -> None:
    # two standing letters (A, B), but the stated answer is B
    assert parse_choice("A is tempting. The answer is B.", OPTIONS) == "B"


def test_letter_of_checks_the_released_answer() -> None:
    assert letter_of("x", "f row 1", " C ", 3) == "C"
    with pytest.raises(BenchmarkFileError, match=r"x: f row 1: answer 'D' is not one of the option letters A, B, C"):
        letter_of("x", "f row 1", "D", 3)


def test_accuracy_scores_tables() -> None:
    outcomes = [Outcome("1", True, {"kind": "a"}), Outcome("2", False, {"kind": "a"}),
                Outcome("3", True, {"kind": "b"})]
    scores = accuracy_scores(outcomes, {"extra": 1})
    # 2 right of 3 -> 66.67 %; kind a: 1 of 2 -> 50 %, kind b: 1 of 1 -> 100 %
    assert scores.metrics == {"accuracy": pytest.approx(200 / 3)}
    assert scores.units == {"1": 100.0, "2": 0.0, "3": 100.0}
    assert sum(scores.units.values()) / 3 == pytest.approx(scores.metrics["accuracy"])
    assert scores.details["by_kind"] == {"a": {"accuracy": 50.0, "count": 2}, "b": {"accuracy": 100.0, "count": 1}}
    assert scores.details["extra"] == 1 and scores.details["scored"] == 3 and scores.details["correct"] == 2
    assert accuracy_scores([]).metrics == {"accuracy": 0.0}


def test_choice_benchmark_scores_a_subset_and_refuses_unknown_ids() -> None:
    items = [ChoiceItem(Question(id=str(i), prompt="p"), ("x", "y"), "A") for i in range(3)]
    bench = ChoiceBenchmark("toy", items, {})
    scores = bench.score({"0": "A", "1": "B"})  # 1 right of the 2 answered -> 50 %
    assert scores.metrics["accuracy"] == 50.0 and set(scores.units) == {"0", "1"}
    with pytest.raises(BenchmarkFileError, match=r"toy: prediction for question id '7'"):
        bench.score({"7": "A"})

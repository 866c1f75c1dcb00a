"""VQA answer normalization and accuracy, worked out by hand; equality with lmms-eval's EvalAI processor."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest

from kdkit.evaluation.files import BenchmarkFileError
from kdkit_plugins.benchmarks.vqa_answers import (CONTRACTIONS, NUMBER_WORDS, check_prediction_ids, group_table,
                                                  normalize_answer, percent, soft_accuracy, strip_punctuation,
                                                  vqa_accuracy)

CASES = [
    ("Two dogs!", "2 dogs"),  # "!" touches no space -> a space; "two" -> "2"
    ("isnt", "isn't"),  # contraction restored
    ("dont", "don't"),
    ("1,000", "1000"),  # the comma between digits goes, the number stays one word
    ("3.5", "3.5"),  # a period before a digit stays
    (".5", ".5"),
    ("3.", "3"),  # a period not before a digit goes
    ("the cat.", "cat"),  # article dropped, final period gone
    ("An apple\tand\nten pears", "apple and 10 pears"),  # tab/newline are spaces; "an" dropped; "ten" -> "10"
    ("None", "0"),
    ("Yes.", "yes"),
    ("U.S.A.", "usa"),
    ("Is it?", "is it"),  # "?" deleted before the punctuation rules
    ("red,blue", "redblue"),  # every comma is deleted outright
    ("well - known", "well known"),  # "-" touches a space -> deleted
    ("a-b", "b"),  # "-" touches no space -> a space; then "a" is an article
    ("(left)", "left"),
    ("what's", "what 's"),  # "'s" split off before the contraction map
    ("whats", "what's"),
    ("somebody'd", "somebodyd"),  # the reference table maps this one backwards
    ("  THE  End ", "end"),
    ("", ""),
]


@pytest.mark.parametrize(("raw", "expected"), CASES)
def test_normalize_answer_by_hand(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


def test_at_most_32_periods_are_removed_like_the_reference() -> None:
    # the reference passes re.UNICODE (= 32) as the count of re.sub: "a." x 40 keeps its last 8 periods
    assert normalize_answer("a." * 40) == "a" * 32 + "a." * 8


def test_strip_punctuation_digit_comma_rule_deletes_every_mark() -> None:
    # a comma between digits: every listed mark is deleted (none becomes a space)
    assert strip_punctuation("1,000 (approx)") == "1000 approx"
    # no digit comma: "," and ")" touch no space -> spaces; "(" follows a space -> deleted
    assert strip_punctuation("a,b (c)") == "a b c "


@pytest.mark.parametrize(("matches", "expected"), [
    (0, 0.0),
    (1, 0.3),  # the matching answer sees 0 others -> 0; the 9 others see 1 -> 1/3 each: 9 * (1/3) / 10
    (2, 0.6),  # 2 answers see 1 -> 1/3; 8 see 2 -> 2/3: (2/3 + 16/3) / 10
    (3, 0.9),  # 3 answers see 2 -> 2/3; 7 see 3 -> 1: (2 + 7) / 10
    (4, 1.0),  # every answer sees at least 3
    (10, 1.0),
])
def test_soft_accuracy_by_hand(matches: int, expected: float) -> None:
    answers = ["cat"] * matches + ["dog"] * (10 - matches)
    assert soft_accuracy("cat", answers) == pytest.approx(expected)


def test_vqa_accuracy_normalizes_prediction_and_answers() -> None:
    # "two" and "2" and "Two." all normalize to "2": three matches -> 0.9
    answers = ["2", "two", "Two."] + ["3"] * 7
    assert vqa_accuracy("TWO", answers) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="at least one human answer"):
        soft_accuracy("x", [])


def test_check_prediction_ids_names_the_unknown_id() -> None:
    check_prediction_ids("textvqa", {"1": "a"}, ["1", "2"])
    with pytest.raises(BenchmarkFileError, match="textvqa: prediction for question id 'nope'"):
        check_prediction_ids("textvqa", {"1": "a", "nope": "b"}, ["1", "2"])


def test_percent_and_group_table() -> None:
    assert percent([1.0, 0.5, 0.0, 0.5]) == 50.0
    # a: (1 + 0) / 2 = 50%; b: 0.25 = 25%; c has no scored question and "z" no group: both left out
    table = group_table({"q1": 1.0, "q2": 0.0, "q3": 0.25, "z": 1.0}, {"q1": "a", "q2": "a", "q3": "b", "q9": "c"})
    assert table == {"a": {"accuracy": 50.0, "count": 2}, "b": {"accuracy": 25.0, "count": 1}}


def _reference_processor():
    """lmms-eval's EvalAIAnswerProcessor, loaded from its file (its package import pulls in the whole
    harness); None when lmms-eval is not installed."""
    spec = importlib.util.find_spec("lmms_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    file = Path(next(iter(spec.submodule_search_locations))) / "tasks" / "_task_utils" / "vqa_eval_metric.py"
    if not file.is_file():
        return None
    module_spec = importlib.util.spec_from_file_location("lmms_eval_vqa_eval_metric", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.EvalAIAnswerProcessor()


def test_normalization_equals_lmms_eval_evalai_processor() -> None:
    reference = _reference_processor()
    if reference is None:
        pytest.skip("lmms-eval is not installed (optional extra): no reference EvalAIAnswerProcessor to compare to")
    texts = [raw for raw, _ in CASES] + ["a." * 40] + list(CONTRACTIONS) + list(NUMBER_WORDS)
    pieces = list("ab1 2.,?!-;/()[]{}=+_<>@`\"'\\\n\t") + ["s", "the ", "one ", "isnt ", "'s", "An ", "3.5", "1,0"]
    rng = random.Random(0)
    texts += ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 16))) for _ in range(20000)]
    different = [(t, reference(t), normalize_answer(t)) for t in texts if reference(t) != normalize_answer(t)]
    assert not different[:5]

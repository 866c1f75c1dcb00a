"""Comparisons against a baseline: mean ± std over seeds, paired bootstrap intervals, verdicts."""

from __future__ import annotations

import statistics

import pytest

from kdkit.errors import KdkitError
from kdkit.evaluation.compare import bootstrap_mean_interval, compare
from kdkit.evaluation.report import comparison_markdown


def test_constant_differences_give_a_point_interval() -> None:
    assert bootstrap_mean_interval([2.0, 2.0, 2.0]) == (2.0, 2.0)


def test_interval_of_a_known_sample_brackets_its_mean() -> None:
    low, high = bootstrap_mean_interval([0.0, 1.0, 2.0, 3.0, 4.0])
    # The bootstrap mean of {0..4} has mean 2 and sd sqrt(2/5) ~ 0.632: the 95% range is about 2 ± 1.24.
    assert 0.6 < low < 1.0 and 3.0 < high < 3.4


def test_pairs_by_seed_when_both_sides_have_seeds() -> None:
    base = [(50.0, {}), (60.0, {}), (70.0, {})]
    better = [(51.0, {}), (61.5, {}), (72.0, {})]  # paired differences 1, 1.5, 2 although the spread is 10
    table = compare({"base": base, "kd": better}, "base", "toy", "accuracy")
    row = table.rows[1]
    assert row.paired_over == "seeds" and row.delta == pytest.approx(1.5)
    assert 1.0 <= row.low <= row.high <= 2.0 and row.verdict == "better"
    assert row.mean == pytest.approx(61.5) and row.std == pytest.approx(statistics.stdev([51, 61.5, 72]))


def test_unpaired_spread_does_not_fake_a_difference() -> None:
    base = [(50.0, {}), (60.0, {})]
    other = [(61.0, {}), (49.0, {})]  # differences +11 and -11
    row = compare({"base": base, "x": other}, "base", "toy", "accuracy").rows[1]
    assert row.low == pytest.approx(-11.0) and row.high == pytest.approx(11.0) and row.verdict == "no difference"


def test_single_runs_pair_over_items() -> None:
    base = [(50.0, {"a": 100.0, "b": 0.0, "c": 100.0, "d": 0.0})]
    kd = [(25.0, {"a": 0.0, "b": 0.0, "c": 100.0, "d": 0.0})]
    row = compare({"base": base, "kd": kd}, "base", "toy", "accuracy").rows[1]
    # item differences -100, 0, 0, 0: resampled means lie in [-100, 0], the interval touches 0.
    assert row.paired_over == "items" and row.delta == -25.0 and row.high == 0.0 and row.verdict == "no difference"


def test_unknown_baseline_is_named() -> None:
    with pytest.raises(KdkitError, match=r"--baseline 'llava' is not one of the students' labels \(a, b\)"):
        compare({"a": [(1.0, {})], "b": [(2.0, {})]}, "llava", "toy", "accuracy")


def test_table_marks_the_baseline_and_the_verdict() -> None:
    table = comparison_markdown([compare({"base": [(1.0, {}), (2.0, {})], "kd": [(3.0, {}), (4.0, {})]},
                                         "base", "pope", "f1")])
    assert "| pope (f1) | base | 2 | 1.50 ± 0.71 | baseline | baseline | baseline |" in table
    assert "| pope (f1) | kd | 2 | 3.50 ± 0.71 | +2.00 | [+2.00, +2.00] (seeds) | better |" in table

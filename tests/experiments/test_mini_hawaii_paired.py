"""The demo report's paired differences: kdkit's bootstrap over seeds, and the words that say which are real."""

from __future__ import annotations

import math

import pytest

from experiments.mini_hawaii.paired import PAIRS, difference, differences, sentences


def test_constant_positive_differences_are_a_real_gain() -> None:
    found = difference([0.60, 0.55, 0.70, 0.52, 0.65], [0.50, 0.45, 0.60, 0.42, 0.55], "hawaii", "baseline", "overall")
    assert found.seeds == 5
    assert found.delta == pytest.approx(10.0)
    assert found.low == pytest.approx(10.0) and found.high == pytest.approx(10.0)
    assert found.low > 0 and found.real and found.word == "real gain"
    assert found.cell() == "**+10.0 [+10.0, +10.0]**"


def test_constant_negative_differences_are_a_real_loss() -> None:
    found = difference([0.40, 0.50], [0.45, 0.55], "fgkd", "baseline", "count")
    assert found.high == pytest.approx(-5.0) and found.word == "real loss"


def test_mixed_differences_are_not_real() -> None:
    found = difference([0.55, 0.45, 0.53, 0.46, 0.51], [0.50, 0.50, 0.50, 0.50, 0.50], "fgkd", "baseline", "shape")
    assert found.delta == pytest.approx(0.0)
    assert found.low < 0 < found.high
    assert not found.real and found.word == "not distinguishable from zero"
    assert found.cell() == f"+0.0 [{found.low:+.1f}, {found.high:+.1f}]"


def test_one_seed_has_no_interval() -> None:
    found = difference([0.6], [0.5], "hawaii", "baseline", "overall")
    assert math.isnan(found.low) and found.word == "no interval (one seed)" and found.cell() == "+10.0"


def test_every_pair_on_every_column_and_the_sentences() -> None:
    table = {"baseline": {"overall": [0.5, 0.5, 0.5], "count": [0.4, 0.4, 0.4]},
             "fgkd": {"overall": [0.5, 0.6, 0.4], "count": [0.5, 0.5, 0.5]},
             "fgkd_scoring": {"overall": [0.6, 0.6, 0.6], "count": [0.4, 0.4, 0.4]},
             "hawaii": {"overall": [0.7, 0.7, 0.7], "count": [0.6, 0.6, 0.6]}}
    found = differences(table, ["count", "overall"])
    assert [(d.row, d.against, d.column) for d in found] == [(r, a, c) for r, a in PAIRS for c in ("count", "overall")]
    lines = sentences(found, {"baseline": "Base", "fgkd": "FGKD", "fgkd_scoring": "Scoring", "hawaii": "HAWAII"})
    assert lines[0] == "- **FGKD** vs **Base**: overall +0.0 [-10.0, +10.0], not distinguishable from zero; real on count (+10.0)."
    assert lines[2] == "- **HAWAII** vs **Base**: overall +20.0 [+20.0, +20.0], real gain; real on count (+20.0)."
    assert lines[3] == ("- **Scoring** vs **FGKD**: overall +10.0 [+0.0, +20.0], not distinguishable from zero; "
                        "real on count (-10.0).")
    assert len(lines) == len(PAIRS)

"""Paired comparisons of the demo's rows, with a 95% bootstrap interval over seeds and a verdict.

Seed ``s`` of every row starts from the same student files and reads the data in the same order, so
the rows are compared seed by seed: the difference per seed, its mean, and the 95% percentile
interval of that mean under resampling the seeds (kdkit's own paired bootstrap,
:func:`kdkit.evaluation.compare.compare`). A difference is called real only when its interval
excludes zero.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kdkit.evaluation.compare import compare

#: What is compared, ``(row, against)``: every KD row against the baseline, then each component against the row
#: without it (the paper's ordering: scoring over plain FGKD, CGKD over FGKD with scoring, HAWAII over FGKD).
PAIRS: tuple[tuple[str, str], ...] = (
    ("fgkd", "baseline"), ("fgkd_scoring", "baseline"), ("hawaii", "baseline"),
    ("fgkd_scoring", "fgkd"), ("hawaii", "fgkd_scoring"), ("hawaii", "fgkd"),
)

#: The report's words for :attr:`kdkit.evaluation.compare.Row.verdict`.
WORDS: dict[str, str] = {
    "better": "real gain",
    "worse": "real loss",
    "no difference": "not distinguishable from zero",
    "not comparable": "no interval (one seed)",
}


@dataclass(frozen=True)
class Difference:
    """``row`` minus ``against`` on one column, in accuracy points.

    Attributes:
        row, against: Row names (``VARIANTS`` keys).
        column: Question type or ``overall``.
        seeds: Seeds paired.
        delta: Mean paired difference.
        low, high: Its 95% paired bootstrap interval (NaN with one seed).
        verdict: ``better`` / ``worse`` / ``no difference`` / ``not comparable`` (kdkit's words).
    """

    row: str
    against: str
    column: str
    seeds: int
    delta: float
    low: float
    high: float
    verdict: str

    @property
    def real(self) -> bool:
        """The interval excludes zero."""
        return self.verdict in ("better", "worse")

    @property
    def word(self) -> str:
        """The report's word for the verdict."""
        return WORDS[self.verdict]

    def cell(self) -> str:
        """``+7.0 [+3.5, +10.5]``, bold when real; ``+7.0`` alone without an interval."""
        if self.verdict == "not comparable":
            return f"{self.delta:+.1f}"
        text = f"{self.delta:+.1f} [{self.low:+.1f}, {self.high:+.1f}]"
        return f"**{text}**" if self.real else text


def difference(values: Sequence[float], against: Sequence[float], row: str, other: str, column: str,
               seed: int = 0) -> Difference:
    """Paired difference of two rows' per-seed accuracies (fractions, seed order) in points.

    Args:
        values: ``row``'s accuracy per seed.
        against: ``other``'s accuracy per seed (the same seeds, in the same order).
        row, other, column: What is compared (carried into the result).
        seed: Seed of the bootstrap.
    """
    results = {other: [(100 * v, {}) for v in against], row: [(100 * v, {}) for v in values]}
    found = compare(results, baseline=other, benchmark="mini_hawaii", metric=column, seed=seed).rows[1]
    return Difference(row, other, column, min(len(values), len(against)), found.delta, found.low, found.high,
                      found.verdict)


def differences(table: Mapping[str, Mapping[str, Sequence[float]]], columns: Sequence[str],
                pairs: Sequence[tuple[str, str]] = PAIRS) -> list[Difference]:
    """Every pair on every column of ``table`` (``{row: {column: [accuracy per seed]}}``); absent rows are skipped."""
    return [difference(table[row][column], table[other][column], row, other, column)
            for row, other in pairs if row in table and other in table for column in columns]


def sentences(found: Sequence[Difference], labels: Mapping[str, str]) -> list[str]:
    """One plain sentence per pair: the overall verdict, then the question types whose difference is real."""
    lines = []
    for row, other in dict.fromkeys((d.row, d.against) for d in found):
        mine = [d for d in found if (d.row, d.against) == (row, other)]
        overall = next((d for d in mine if d.column == "overall"), None)
        real = [d for d in mine if d.column != "overall" and d.real]
        text = f"- **{labels.get(row, row)}** vs **{labels.get(other, other)}**:"
        if overall is not None:
            text += f" overall {overall.cell().replace('**', '')}, {overall.word}"
        if real:
            text += "; real on " + ", ".join(f"{d.column} ({d.delta:+.1f})" for d in real)
        elif overall is not None and overall.verdict != "not comparable":
            text += "; no question type differs beyond its interval"
        lines.append(text + ".")
    return lines

"""Deciding "helps" from "no difference": configurations over seeds against a named baseline.

Each configuration has one result per seed. The difference to the baseline is paired:

- over **seeds** when both sides have at least two results: seed ``k`` of a configuration is paired with
  seed ``k`` of the baseline (same data order and initialisation), and the mean of the paired differences
  is bootstrapped over seeds;
- over **items** when either side has a single result and the benchmark gives per-item units (the
  question, the circular group): the mean paired difference over common units is bootstrapped over units.

The interval is the 2.5-97.5 percentile range of the bootstrap means; a difference counts as real only
when that interval excludes zero.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from kdkit.errors import KdkitError

#: Bootstrap resamples.
RESAMPLES = 10_000


@dataclass(frozen=True)
class Row:
    """One configuration against the baseline on one metric.

    Attributes:
        label: The configuration.
        seeds: How many results (seeds) it has.
        mean, std: Over its seeds (std 0 with one seed).
        delta: Mean paired difference to the baseline.
        low, high: The 95% paired bootstrap interval of ``delta``.
        paired_over: ``"seeds"`` or ``"items"`` (or ``"-"`` for the baseline / when impossible).
    """

    label: str
    seeds: int
    mean: float
    std: float
    delta: float = 0.0
    low: float = float("nan")
    high: float = float("nan")
    paired_over: str = "-"

    @property
    def verdict(self) -> str:
        """``better`` / ``worse`` when the interval excludes zero, else ``no difference``."""
        if self.paired_over == "-" or self.low != self.low:
            return "not comparable"
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "no difference"


@dataclass(frozen=True)
class Comparison:
    """Every configuration on one benchmark metric, the baseline first."""

    benchmark: str
    metric: str
    baseline: str
    rows: list[Row]


def bootstrap_mean_interval(differences: Sequence[float], seed: int = 0, resamples: int = RESAMPLES) -> tuple[float, float]:
    """95% percentile interval of the mean of ``differences`` under resampling with replacement."""
    diffs = np.asarray(differences, dtype=np.float64)
    if diffs.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, diffs.size, size=(resamples, diffs.size))
    means = diffs[picks].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def compare(results: Mapping[str, Sequence[tuple[float, Mapping[str, float]]]], baseline: str, benchmark: str,
            metric: str, seed: int = 0) -> Comparison:
    """Rows of every configuration against ``baseline``.

    Args:
        results: ``{label: [(metric value, per-item units), ...one per seed, in seed order]}``.
        baseline: The label every other configuration is compared with.
        benchmark, metric: What is compared (for the table).
        seed: Seed of the bootstrap.

    Raises:
        KdkitError: ``baseline`` is not one of the labels.
    """
    if baseline not in results:
        raise KdkitError(f"--baseline {baseline!r} is not one of the students' labels ({', '.join(results)})")
    base = results[baseline]
    rows = [_summary(baseline, base)]
    for label, runs in results.items():
        if label == baseline:
            continue
        row = _summary(label, runs)
        values, base_values = [v for v, _ in runs], [v for v, _ in base]
        if len(runs) >= 2 and len(base) >= 2:
            n = min(len(runs), len(base))
            diffs = [values[k] - base_values[k] for k in range(n)]
            low, high = bootstrap_mean_interval(diffs, seed)
            row = Row(label, row.seeds, row.mean, row.std, statistics.fmean(diffs), low, high, "seeds")
        else:
            common = sorted(set(runs[0][1]) & set(base[0][1]))
            if common:
                diffs = [_mean([u[k] for _, u in runs]) - _mean([u[k] for _, u in base]) for k in common]
                low, high = bootstrap_mean_interval(diffs, seed)
                row = Row(label, row.seeds, row.mean, row.std, row.mean - rows[0].mean, low, high, "items")
            else:
                row = Row(label, row.seeds, row.mean, row.std, row.mean - rows[0].mean)
        rows.append(row)
    return Comparison(benchmark, metric, baseline, rows)


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values)


def _summary(label: str, runs: Sequence[tuple[float, Mapping[str, float]]]) -> Row:
    values = [v for v, _ in runs]
    return Row(label, len(values), statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)

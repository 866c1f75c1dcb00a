"""Markdown tables of evaluation results, with published reference numbers clearly labelled."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kdkit.evaluation.compare import Comparison
    from kdkit.evaluation.runner import Result


def fmt(value: float) -> str:
    """A metric for a table: one decimal (MME-style point sums included)."""
    return f"{value:.1f}"


def result_markdown(result: Result, student: str, limit: int | None = None) -> str:
    """One student on one benchmark: every metric, then the published values of the primary metric."""
    lines = [f"# {result.benchmark}: {student}", ""]
    if limit is not None:
        lines += [f"Only the first {limit} questions were evaluated: not comparable to published numbers.", ""]
    lines += ["| metric | value |", "|---|---|"]
    lines += [f"| {name}{' (primary)' if name == result.primary else ''} | {fmt(value)} |"
              for name, value in result.scores.metrics.items()]
    if result.published:
        lines += ["", f"Published values of `{result.primary}` (from the papers, not measured here):", "",
                  "| source | value |", "|---|---|"]
        lines += [f"| {label} | {fmt(value)} |" for label, value in result.published.items()]
    return "\n".join(lines) + "\n"


def summary_markdown(rows: Mapping[str, Mapping[str, Result]], benchmarks: Sequence[str]) -> str:
    """Students x benchmarks table of primary metrics, then the published rows labelled as the papers'.

    Args:
        rows: ``{student label: {benchmark: result}}``.
        benchmarks: Column order.
    """
    header = ["student"] + [_column(rows, b) for b in benchmarks]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, results in rows.items():
        cells = [fmt(results[b].value) if b in results else "" for b in benchmarks]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    published: dict[str, dict[str, float]] = {}
    for results in rows.values():
        for b, result in results.items():
            for source, value in result.published.items():
                published.setdefault(source, {})[b] = value
    for source, values in published.items():
        cells = [fmt(values[b]) if b in values else "" for b in benchmarks]
        lines.append("| " + " | ".join([f"*{source}*", *cells]) + " |")
    return "\n".join(lines) + "\n"


def _column(rows: Mapping[str, Mapping[str, Result]], benchmark: str) -> str:
    for results in rows.values():
        if benchmark in results:
            return f"{benchmark} ({results[benchmark].primary})"
    return benchmark


def comparison_markdown(comparisons: Sequence[Comparison]) -> str:
    """Configurations x benchmark: mean ± std over seeds, and the paired 95% interval against the baseline."""
    lines = ["| benchmark | configuration | seeds | mean ± std | Δ vs baseline | 95% CI (paired bootstrap) | verdict |",
             "|---|---|---|---|---|---|---|"]
    for c in comparisons:
        for row in c.rows:
            if row.label == c.baseline:
                delta = ci = verdict = "baseline"
            else:
                delta = f"{row.delta:+.2f}"
                ci = f"[{row.low:+.2f}, {row.high:+.2f}] ({row.paired_over})"
                verdict = row.verdict
            lines.append(f"| {c.benchmark} ({c.metric}) | {row.label} | {row.seeds} | {row.mean:.2f} ± {row.std:.2f} "
                         f"| {delta} | {ci} | {verdict} |")
    return "\n".join(lines) + "\n"

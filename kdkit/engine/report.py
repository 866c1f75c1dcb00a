"""The end-of-run report: ``report.md`` with PNG plots of the losses, expert usage and throughput.

Built from the run directory alone (``metrics.jsonl``, ``environment.json``, ``recipe.yaml``),
so ``write_report`` also works on a finished or interrupted run after the fact.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdkit.engine.monitor import read_evaluations, read_metrics


def _figure(width: float = 7.0, height: float = 4.0) -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def plot_losses(records: Sequence[dict[str, Any]], path: Path) -> None:
    """Every unweighted term and the weighted total over optimizer steps."""
    fig, ax = _figure()
    steps = [r["step"] for r in records]
    names = sorted({n for r in records for n in r.get("losses", {})})
    for name in names:
        ax.plot(steps, [r["losses"].get(name, float("nan")) for r in records], label=name)
    ax.plot(steps, [r["loss"] for r in records], label="total (weighted)", color="black", linewidth=2)
    values = [v for r in records for v in list(r.get("losses", {}).values()) + [r["loss"]]]
    if values and min(values) > 0:
        ax.set_yscale("log")
    for boundary in [b["step"] for a, b in zip(records, records[1:]) if a["stage"] != b["stage"]]:
        ax.axvline(boundary, color="grey", linestyle=":")
    ax.set(xlabel="optimizer step", ylabel="loss", title="Loss terms (unweighted) and total")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def mean_usage(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """``{group: {block: mean fraction per expert}}`` over the records that logged routing."""
    sums: dict[str, dict[str, list[float]]] = {}
    counts: dict[str, dict[str, int]] = {}
    for record in records:
        for group, blocks in record.get("routing", {}).items():
            for block, fractions in blocks.items():
                total = sums.setdefault(group, {}).setdefault(block, [0.0] * len(fractions))
                sums[group][block] = [a + b for a, b in zip(total, fractions)]
                counts.setdefault(group, {})[block] = counts.get(group, {}).get(block, 0) + 1
    return {g: {b: [v / counts[g][b] for v in vals] for b, vals in blocks.items()} for g, blocks in sums.items()}


def plot_usage(group: str, usage: dict[str, list[float]], path: Path) -> None:
    """Heatmap of the fraction of tokens each expert of ``group`` received, block by block."""
    blocks = list(usage)
    fig, ax = _figure(width=max(4.0, 1.0 + 0.6 * len(usage[blocks[0]])), height=max(2.5, 0.8 + 0.35 * len(blocks)))
    image = ax.imshow([usage[b] for b in blocks], aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_yticks(range(len(blocks)), blocks, fontsize="small")
    ax.set_xticks(range(len(usage[blocks[0]])))
    ax.set(xlabel="expert", title=f"Expert usage ({group} router)")
    fig.colorbar(image, ax=ax, label="fraction of tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_throughput(records: Sequence[dict[str, Any]], path: Path) -> None:
    """Samples per second and the split of step time into model and engine overhead."""
    fig, ax = _figure()
    steps = [r["step"] for r in records]
    ax.plot(steps, [r["samples_per_s"] for r in records], label="samples/s")
    ax.set(xlabel="optimizer step", ylabel="samples / s", title="Throughput")
    twin = ax.twinx()
    twin.plot(steps, [1000 * r["time_overhead"] for r in records], color="tab:red", linestyle="--", label="overhead (ms/step)")
    twin.set_ylabel("engine overhead (ms / step)")
    fig.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def evaluation_lines(run_dir: Path) -> list[str]:
    """The ``## Evaluation`` section: every evaluation during training and the best checkpoint (none: empty)."""
    from kdkit.engine.best import read_best

    records = read_evaluations(run_dir)
    if not records:
        return []
    names = list(dict.fromkeys(n for r in records for n in r["eval"]))
    rows = [[r["step"], r["stage"], *(f"{r['eval'].get(n, float('nan')):.4g}" for n in names)] for r in records]
    lines = ["## Evaluation", "", f"Benchmark `{records[-1]['benchmark']}`, evaluated during training.", ""]
    lines += _table(["step", "stage", *names], rows)
    best = read_best(run_dir / "checkpoints")
    if best is not None:
        lines += ["", f"Best checkpoint (`checkpoints/best`): step {best['step']} ({best['stage']}), "
                  f"{best['metric']} = {best['value']:.4g} ({best['mode']})."]
    return lines + [""]


def write_report(run_dir: Path) -> Path:
    """Write ``report.md`` and its plots into ``run_dir``; returns the report's path."""
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    env_file = run_dir / "environment.json"
    env = json.loads(env_file.read_text(encoding="utf-8")) if env_file.is_file() else {}
    lines = [f"# Run report: {run_dir.name}", "", "Resolved recipe: [recipe.yaml](recipe.yaml). "
             "Per-step metrics: `metrics.jsonl` (TensorBoard: `tensorboard --logdir tensorboard`).", ""]
    if not records:
        lines.append("No step was logged.")
    else:
        stages = list(dict.fromkeys(r["stage"] for r in records))
        rows = []
        for stage in stages:
            mine = [r for r in records if r["stage"] == stage]
            rows.append([stage, mine[-1]["stage_step"], f"{mine[0]['loss']:.4g}", f"{mine[-1]['loss']:.4g}",
                         f"{sum(r['samples_per_s'] for r in mine) / len(mine):.1f}", mine[-1]["skipped"]])
        lines += ["## Stages", ""] + _table(["stage", "steps", "first loss", "last loss", "samples/s", "skipped steps"], rows)
        last = records[-1]
        lines += ["", "## Final loss terms (unweighted)", ""]
        lines += _table(["term", "value"], [[n, f"{v:.5g}"] for n, v in last["losses"].items()] + [["total (weighted)", f"{last['loss']:.5g}"]])
        plot_losses(records, run_dir / "losses.png")
        plot_throughput(records, run_dir / "throughput.png")
        overhead = sum(r["time_overhead"] for r in records) / len(records)
        step_time = sum(r["time_step"] for r in records) / len(records)
        lines += ["", "## Plots", "", "![loss terms](losses.png)", "", "![throughput](throughput.png)", "",
                  f"Mean step time {1000 * step_time:.1f} ms, of which engine overhead (data, guards, optimizer, "
                  f"logging) {1000 * overhead:.1f} ms.", ""]
        usage = mean_usage([r for r in records if r["stage"] == stages[-1]])
        for group, blocks in usage.items():
            plot_usage(group, blocks, run_dir / f"routing_{group}.png")
            lines += [f"![expert usage, {group} router](routing_{group}.png)", ""]
        plt.close("all")
    lines += evaluation_lines(run_dir)
    if env:
        lines += ["## Environment", ""] + _table(["", ""], [[k, v] for k, v in env.items() if k != "plugins"])
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path

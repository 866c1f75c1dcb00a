"""``report.md`` and ``digits.png`` of the digits experiment: accuracy table and bars, loss curves."""

from __future__ import annotations

import platform
import statistics
from pathlib import Path
from typing import Any

import torch

from experiments.digits.experiment import TEACHERS, Results

PLOT = "digits.png"


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def split_of(results: Results) -> str:
    """The split the results were scored on (``test`` for results written before the val split existed)."""
    return str(results.settings.get("split", "test"))


def paired_difference(results: Results) -> str:
    """One line: distilled minus alone (points), mean of the per-seed paired differences and its 95% bootstrap interval."""
    from kdkit.evaluation.compare import compare

    runs = {label: [(100 * r["accuracy"], {}) for r in group]
            for label, group in (("alone", results.alone), ("distilled", results.distilled))}
    if len(runs["alone"]) < 2 or len(runs["distilled"]) < 2:
        return "Paired difference: needs at least 2 seeds of each student."
    row = compare(runs, "alone", "classification", "top1").rows[1]
    return (f"Distilled minus alone ({split_of(results)}, paired over {min(row.seeds, len(runs['alone']))} seeds): "
            f"{row.delta:+.2f} points, 95% bootstrap interval [{row.low:+.2f}, {row.high:+.2f}]: {row.verdict}.")


def table(results: Results) -> list[str]:
    """Markdown rows: each teacher, the student alone and distilled (mean ± std over seeds), wall time."""
    rows = [f"| model | {split_of(results)} accuracy (%) | runs | wall time per run (s) |", "|---|---|---|---|"]
    for name in TEACHERS:
        if name in results.teachers:
            found = results.teachers[name]
            rows.append(f"| teacher `{name}` | {100 * found['accuracy']:.2f} | 1 | {found['wall_s']:.1f} |")
    recipe = str(results.settings.get("distill_recipe", "digits_3teachers.yaml")).removesuffix(".yaml")
    distilled = "student distilled (3 teachers)" if recipe == "digits_3teachers" else f"student distilled (`{recipe}`)"
    for label, runs in (("student alone", results.alone), (distilled, results.distilled)):
        if runs:
            mean, std = mean_std([100 * r["accuracy"] for r in runs])
            wall = statistics.fmean(r["wall_s"] for r in runs)
            rows.append(f"| {label} | {mean:.2f} ± {std:.2f} | {len(runs)} | {wall:.1f} |")
    return rows


def curves(run_dir: Path, term: str) -> tuple[list[int], list[float]]:
    """Steps and values of one logged loss term (``loss`` for the weighted total) of a run."""
    from kdkit.engine.monitor import read_metrics

    pairs = [(r["step"], r["loss"] if term == "loss" else r["losses"].get(term)) for r in read_metrics(run_dir)]
    kept = [(step, value) for step, value in pairs if value is not None]
    return [step for step, _ in kept], [value for _, value in kept]


def plot(results: Results, runs: Path, path: Path) -> None:
    """Accuracy bars (mean ± std over seeds) and the loss curves of seed 0."""
    source = results.settings.get("teachers_from")
    alone_runs = Path(source) / "runs" if source else runs  # reused baselines live with the reused teachers
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars, losses) = plt.subplots(1, 2, figsize=(11, 4))
    labels, heights, errors = [], [], []
    for name in TEACHERS:
        if name in results.teachers:
            labels.append(f"teacher\n{name}")
            heights.append(100 * results.teachers[name]["accuracy"])
            errors.append(float("nan"))  # one run: no error bar
    for label, group in (("student\nalone", results.alone), ("student\ndistilled", results.distilled)):
        if group:
            mean, std = mean_std([100 * r["accuracy"] for r in group])
            labels.append(label)
            heights.append(mean)
            errors.append(std)
    bars.bar(labels, heights, yerr=errors, capsize=4, color=["#9bb"] * len(results.teachers) + ["#c96", "#69c"])
    low = min(heights) if heights else 0.0
    bars.set_ylim(max(0.0, low - 10), 100)
    bars.set_ylabel(f"{split_of(results)} accuracy (%)")
    bars.set_title(f"digits {split_of(results)} split, mean ± std over {len(results.alone)} seeds")
    for where, run, term in ((alone_runs, "alone_seed0", "task"), (runs, "distilled_seed0", "task"),
                             (runs, "distilled_seed0", "fine"), (runs, "distilled_seed0", "coarse")):
        steps, values = curves(where / run, term)
        if values:
            losses.plot(steps, values, label=f"{run.split('_')[0]}: {term}")
    losses.set_xlabel("optimizer step")
    losses.set_ylabel("loss (unweighted)")
    losses.set_yscale("log")
    losses.set_title("training losses, seed 0")
    losses.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results: Results, output_dir: Path, notes: str = "") -> Path:
    """Write ``report.md`` and the plot into ``output_dir``; returns the report's path."""
    output_dir = Path(output_dir)
    plot(results, output_dir / "runs", output_dir / PLOT)
    lines = [
        "# Three teachers distilled into a small ViT: scikit-learn digits",
        "",
        "Test split: 450 of the 1,797 scans (25 % of each class, split seed 0); val split: 20 % of each class of",
        "the rest, carved from train (every run trains without it); upsampled to 32x32. This report is on the",
        f"**{split_of(results)}** split (choose settings on val; read test once per reported configuration).",
        "Teachers: trained once on the train split (`recipes/vision/digits_teachers/`), exported in timm's",
        "format. Students: the same ViT alone (`digits_student_alone.yaml`) and distilled",
        f"(`{results.settings.get('distill_recipe', 'digits_3teachers.yaml')}`), same data, schedule and steps, "
        "one run per seed.",
        "",
        *table(results),
        "",
        paired_difference(results),
        "",
        f"Whole experiment: {results.wall_s:.0f} s wall time on {torch.get_num_threads()} CPU threads "
        f"({platform.processor() or platform.machine()}, torch {torch.__version__}).",
        f"Settings: `{results.settings}`.",
        "",
        f"![accuracy and losses]({PLOT})",
        "",
    ]
    if notes:
        lines += [notes, ""]
    path = output_dir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def summary(results: Results) -> dict[str, Any]:
    """Means and standard deviations, for logs and tests."""
    out: dict[str, Any] = {f"teacher_{n}": r["accuracy"] for n, r in results.teachers.items()}
    for role in ("alone", "distilled"):
        runs = getattr(results, role)
        if runs:
            out[role] = mean_std([r["accuracy"] for r in runs])
    return out

"""The demo's report: ``report.md`` + PNGs + ``results.json``, every number computed from this run's files.

The table is the paper's ablation table (Table 2) in miniature; loss curves and expert usage reuse
the engine's own plots (:mod:`kdkit.engine.report`) on each run's ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdkit.engine.monitor import read_metrics
from kdkit.engine.report import mean_usage, plot_losses, plot_usage

from experiments.mini_hawaii.paired import PAIRS, differences, sentences
from experiments.mini_hawaii.pipeline import Phase, Profile
from experiments.mini_hawaii.variants import VARIANTS
from experiments.mini_hawaii.world import ASPECTS, QUESTIONS, WorldFiles, read_jsonl

COLUMNS: tuple[str, ...] = (*QUESTIONS, "overall")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def table(summaries: Sequence[dict[str, Any]], split: str = "test") -> dict[str, dict[str, list[float]]]:
    """``{variant: {column: [accuracy per seed]}}`` on the held-out ``split``, in seed order."""
    found: dict[str, dict[str, list[float]]] = {v: {c: [] for c in COLUMNS} for v in VARIANTS}
    for s in sorted(summaries, key=lambda s: s["seed"]):
        for column in COLUMNS:
            found[s["variant"]][column].append(s["accuracy"][split][column])
    return found


def chance(files: WorldFiles, split: str = "test") -> dict[str, float]:
    """Accuracy of always giving each type's most frequent answer of ``split`` (and overall)."""
    question_file, answer_file = files.qa(split)
    questions = {q["question_id"]: q["category"] for q in read_jsonl(question_file)}
    by_type: dict[str, dict[str, int]] = {}
    for a in read_jsonl(answer_file):
        counts = by_type.setdefault(questions[a["question_id"]], {})
        counts[a["answer"]] = counts.get(a["answer"], 0) + 1
    best = {t: max(c.values()) / sum(c.values()) for t, c in by_type.items()}
    best["overall"] = sum(max(c.values()) for c in by_type.values()) / sum(sum(c.values()) for c in by_type.values())
    return best


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _pool_words(pool: str, experts: Sequence[dict[str, Any]]) -> str:
    sizes = {e.get("images") for e in experts}
    size = f"{sizes.pop()} " if len(sizes) == 1 and None not in sizes else ""
    return f"their own pool of {size}images (aspect labels only)" if pool == "expert" else \
        "the student's training images"


def accuracy_rows(results: dict[str, dict[str, list[float]]], floor: dict[str, float]) -> list[list[str]]:
    """The accuracy table's rows: the majority answer, then each variant's mean ± std per column."""
    rows = [["majority answer", *(_pct(floor[c]) for c in COLUMNS)]]
    for variant, label in VARIANTS.items():
        cells = []
        for column in COLUMNS:
            mean, std = mean_std(results[variant][column])
            cells.append(f"{_pct(mean)} ± {_pct(std)}")
        rows.append([label, *cells])
    return rows


def difference_lines(results: dict[str, dict[str, list[float]]], seeds: int) -> list[str]:
    """The paired-difference table (points, 95% bootstrap interval over seeds) and its sentences."""
    found = differences(results, COLUMNS)
    short = {"baseline": "baseline", "fgkd": "+ FGKD", "fgkd_scoring": "+ token scoring", "hawaii": "HAWAII"}
    rows = []
    for row, other in PAIRS:
        cells = {d.column: d.cell() for d in found if (d.row, d.against) == (row, other)}
        rows.append([f"{short[row]} − {short[other]}", *(cells[c] for c in COLUMNS)])
    lines = _md_table(["difference (points)", *COLUMNS], rows)
    lines += ["", f"Each cell: the mean over {seeds} seed(s) of the per-seed difference (seed s of every row starts from "
              "the same student and reads the data in the same order), and its 95% paired bootstrap interval over "
              "seeds; **bold** when the interval excludes zero, which is what this report calls a real difference.",
              ""]
    if seeds < 5:
        lines += [f"With {seeds} seed(s) these intervals are indicative only: a bootstrap over {seeds} values cannot "
                  "reach past their range (with two seeds the interval is the span of the two differences). "
                  "`--full` runs five seeds.", ""]
    return lines + sentences(found, VARIANTS)


def plot_world(files: WorldFiles, path: Path, count: int = 8, split: str = "test") -> None:
    """The first ``count`` images of ``split``, each titled with its four answers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from experiments.mini_hawaii.world import read_scenes

    scenes = read_scenes(files, split)[:count]
    fig, axes = plt.subplots(2, (len(scenes) + 1) // 2, figsize=(2.0 * ((len(scenes) + 1) // 2), 5.4))
    for ax, scene in zip(axes.flat, scenes):
        ax.imshow(Image.open(files.path("images") / scene["image"]), interpolation="nearest")
        ax.set_title("\n".join(f"{a}: {scene[a]}" for a in ASPECTS), fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def learned(results: dict[str, dict[str, list[float]]], floor: dict[str, float], margin: float = 0.05) -> list[str]:
    """Per question type, the rows whose mean beats the majority answer by more than ``margin``, as sentences."""
    lines = []
    for column in QUESTIONS:
        above = [VARIANTS[v] for v in VARIANTS if mean_std(results[v][column])[0] > floor[column] + margin]
        if above:
            lines.append(f"- **{column}**: above the majority answer (by more than {100 * margin:.0f} points) in: "
                         + "; ".join(above) + ".")
        else:
            lines.append(f"- **{column}**: NO row beats always giving the majority answer by more than "
                         f"{100 * margin:.0f} points: the student did not learn it in this budget, with or without "
                         "teachers.")
    return lines


def _plots(output: Path, summaries: Sequence[dict[str, Any]]) -> list[str]:
    """Loss curves per variant (seed 0) and expert usage of the HAWAII run; returns markdown lines."""
    import matplotlib.pyplot as plt

    lines: list[str] = ["## Loss curves (seed 0, every term unweighted, both stages)", ""]
    first = {s["variant"]: s for s in summaries if s["seed"] == 0}
    for variant, label in VARIANTS.items():
        records = read_metrics(Path(first[variant]["run_dir"]))
        if records:
            plot_losses(records, output / f"losses_{variant}.png")
            lines += [f"**{label}** (`{variant}`)", "", f"![losses {variant}](losses_{variant}.png)", ""]
    hawaii = read_metrics(Path(first["hawaii"]["run_dir"]))
    stages = list(dict.fromkeys(r["stage"] for r in hawaii))
    usage = mean_usage([r for r in hawaii if r["stage"] == stages[-1]]) if stages else {}
    lines += ["## Expert usage per block (HAWAII, seed 0, last stage, training batches)", ""]
    for group, blocks in usage.items():
        plot_usage(group, blocks, output / f"routing_{group}.png")
        lines += [f"![expert usage, {group} router](routing_{group}.png)", ""]
    names = ", ".join(f"{k} = {name}" for k, name in enumerate(first["hawaii"]["routing"]["teachers"])) \
        if first["hawaii"].get("routing") else ""
    if names:
        lines += [f"Teacher experts in recipe order: {names}. A balance loss near 1 keeps routers near uniform.", ""]
    plt.close("all")
    return lines


def _routing_lines(summaries: Sequence[dict[str, Any]]) -> list[str]:
    """Teacher-router choices by image content for the HAWAII runs (mean over seeds)."""
    runs = [s["routing"] for s in summaries if s["variant"] == "hawaii" and s.get("routing")]
    if not runs:
        return []
    teachers = runs[0]["teachers"]
    lines = ["## Which teacher expert the images route to", "",
             "The teacher router decides per IMAGE TOKEN inside the vision tower, which never sees the question, "
             "so routing reflects image content only. In this world every held-out image is asked all four question "
             "types, so each question type's images route identically; the table therefore groups the validation "
             "images by their content (fraction of image tokens, all blocks, sent to each teacher's expert; "
             "HAWAII runs, mean over seeds).", ""]
    rows = []
    for aspect in ASPECTS:
        for value in runs[0]["by_value"].get(aspect, {}):
            fractions = [statistics.fmean(r["by_value"][aspect][value][k] for r in runs) for k in range(len(teachers))]
            top = teachers[max(range(len(teachers)), key=lambda k: fractions[k])]
            rows.append([aspect, value, *(_pct(f) for f in fractions), top])
    return lines + _md_table(["aspect", "image content", *(f"{t} %" for t in teachers), "most used"], rows) + [""]


def write_report(output: Path, profile: Profile, files: WorldFiles, experts: Sequence[dict[str, Any]],
                 summaries: Sequence[dict[str, Any]], phases: Sequence[Phase]) -> Path:
    """Write ``report.md``, its PNGs and ``results.json`` into ``output``; returns the report's path."""
    splits = [split for split in ("test", "val") if split in summaries[0]["accuracy"]]
    headline = splits[0]
    results = {split: table(summaries, split) for split in splits}
    floors = {split: chance(files, split) for split in splits}
    plot_world(files, output / "world.png", split=headline)
    n_seeds = profile.seeds
    questions = {split: len(read_jsonl(files.qa(split)[0])) for split in splits}
    pool = experts[0].get("pool", "train") if experts else "train"
    lines = ["# Mini-HAWAII: distilling three expert teachers into a tiny LLaVA", "",
             f"Profile `{profile.name}`: the student sees {profile.train_images} labelled training images "
             f"({4 * profile.train_images} question-answer turns, {profile.train_images} captions); the experts were "
             f"trained on {_pool_words(pool, experts)}; {profile.val_images} validation images "
             f"({questions.get('val', 0)} questions) and {profile.test_images} test images "
             f"({questions.get('test', 0)} questions) are held out; {n_seeds} seed(s) per row, the same budget for "
             f"every row: stage 1 {profile.pretrain_steps} steps, stage 2 {profile.finetune_steps} steps of "
             f"{profile.batch} conversations.", "",
             "Every setting of this demo (world, data sizes, step budgets, loss weights) was chosen on the VALIDATION "
             "split; the test split is read once per configuration, for the table below (the design log is on the "
             "documentation's Tour page).", "",
             "The student starts from NOTHING pretrained: a random-init CLIP tower (a deliberately weak tower) and a "
             "random-init Llama. The teachers were trained here, each on one aspect of the world, on their own pool "
             "of images (as real teachers were pretrained on far more data than a VLM's instruction set). KD losses "
             "use RADIO-style student heads onto the fixed teacher tokens (`guard: student_heads`), because the "
             "paper's learned teacher-side projection can collapse (both sides drift to a constant).", "",
             "## The world", "", f"{headline.capitalize()} images with their answers (32 x 32 pixels, shown enlarged):",
             "", "![held-out images](world.png)", "", "## The experts (validation accuracy on their own aspect)", ""]
    rows = [[e["name"], e["kind"], ", ".join(e["aspects"]), ", ".join(f"{a} {_pct(e['accuracy'][a])}" for a in e["aspects"]),
             ", ".join(_pct(e["chance"][a]) for a in e["aspects"]), e.get("images", "-"), e["steps"],
             f"{e['seconds']:.0f}", f"{e['parameters']:,}"] for e in experts]
    lines += _md_table(["teacher", "library", "aspect", "accuracy %", "majority class %", "trained on images", "steps",
                        "seconds", "parameters"], rows)
    lines += ["", f"## {headline.capitalize()} accuracy (exact match, %, mean ± std over {n_seeds} seed(s))", ""]
    lines += _md_table(["", *COLUMNS], accuracy_rows(results[headline], floors[headline]))
    lines += ["", f"## Paired differences on the {headline} split", "",
              *difference_lines(results[headline], n_seeds), "", "Where the accuracy comes from:", "",
              *learned(results[headline], floors[headline]), ""]
    if "val" in results and headline != "val":
        lines += [f"## Validation accuracy (the split the settings were chosen on; mean ± std over {n_seeds} seed(s))",
                  "", *_md_table(["", *COLUMNS], accuracy_rows(results["val"], floors["val"])), ""]
    lines += _plots(output, summaries)
    lines += _routing_lines(summaries)
    lines += ["## Time and memory", ""]
    rows = [[p.name, f"{p.seconds:.1f}", f"{p.cpu_seconds:.1f}", p.processes, f"{p.peak_rss_mib:.0f}", p.reused,
             "; ".join(p.notes)] for p in phases]
    total = sum(p.seconds for p in phases)
    projected = sum(p.cpu_seconds / p.processes for p in phases)
    lines += _md_table(["phase", "wall s", "CPU s (all processes)", "worker processes", "peak RSS of one process (MiB)",
                        "reused", "notes"], rows)
    lines += ["", f"Total wall time {total:.1f} s. Every worker runs one thread, so on a machine whose cores are free "
              f"a phase takes about its CPU seconds divided by its worker processes: {projected:.0f} s in all "
              "(a projection from the CPU time measured here, not a measurement; the wall times above include "
              "waiting for cores other programs held). Start-up and import time of each worker process are "
              "included in both.", "", "Per run (seconds):", ""]
    rows = [[s["variant"], s["seed"], f"{s['train_seconds']:.1f}", f"{s['eval_seconds']:.1f}", f"{s['cpu_seconds']:.1f}",
             f"{s['peak_rss_mib']:.0f}"] for s in summaries]
    lines += _md_table(["variant", "seed", "train (wall)", "export + eval (wall)", "CPU (whole job)", "peak RSS MiB"],
                       rows) + [""]
    report = output / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    payload = {"profile": profile.name, "table": results, "chance": floors,
               "differences": {split: [asdict(d) for d in differences(results[split], COLUMNS)] for split in splits},
               "experts": list(experts),
               "runs": list(summaries), "phases": [p.__dict__ for p in phases]}
    (output / "results.json").write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    return report

"""What ``kdkit eval`` does: students x benchmarks, results beside each student, one summary table,
and a comparison against a baseline when students are labelled by configuration."""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kdkit.errors import KdkitError


@dataclass(frozen=True)
class StudentArg:
    """One ``STUDENT`` argument: ``[LABEL=]PATH``; students sharing a label are seeds of one configuration."""

    label: str
    path: Path

    @classmethod
    def parse(cls, text: str) -> StudentArg:
        label, sep, path = text.partition("=")
        if sep and label and re.fullmatch(r"[A-Za-z0-9_.+-]+", label):
            return cls(label, Path(path))
        return cls(Path(text).name or text, Path(text))


def benchmark_blocks(names: Sequence[str], sets: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{name: block}`` for each ``--benchmark``, with ``--set [NAME.]KEY=VALUE`` applied (values parsed as YAML).

    Raises:
        KdkitError: a ``--set`` without ``=``, or one naming a benchmark that is not evaluated.
    """
    blocks: dict[str, dict[str, Any]] = {name: {"kind": name} for name in names}
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise KdkitError(f"--set {item!r}: expected KEY=VALUE (e.g. root=data/pope or pope.splits=[random])")
        value = yaml.safe_load(raw) if raw else ""
        target, dot, field = key.partition(".")
        if dot and target in blocks:
            blocks[target][field] = value
        elif dot and len(blocks) > 1:
            raise KdkitError(f"--set {item!r}: {target!r} is not one of the benchmarks evaluated ({', '.join(blocks)})")
        else:
            for block in blocks.values():
                block[key] = value
    return blocks


def results_dir(student: StudentArg, benchmark: str, checkpoint: str, output: Path | None, index: int) -> Path:
    """Where one student's results on one benchmark go: beside the student, or under ``--output``."""
    from kdkit.evaluation.subject import is_run

    tail = Path(benchmark)
    if is_run(student.path):
        tail = Path(Path(checkpoint).name) / benchmark
    if output is None:
        return student.path / "eval" / tail
    return output / f"{student.label}" / f"{index:02d}-{student.path.name}" / benchmark


def run_eval(args: Any) -> int:
    """Evaluate every student on every benchmark; print the summary (and comparison) tables."""
    from kdkit.evaluation.compare import compare
    from kdkit.evaluation.report import comparison_markdown, summary_markdown
    from kdkit.evaluation.runner import Result, build_benchmark, check_metric, evaluate
    from kdkit.evaluation.subject import load_subject
    from kdkit.plugins import get_registry

    registry = get_registry()
    students = [StudentArg.parse(s) for s in args.students]
    blocks = benchmark_blocks(args.benchmark, args.set)
    built = {name: build_benchmark(block, args.data_root, registry) for name, block in blocks.items()}
    if args.metric:
        for name, bench in built.items():
            check_metric(name, bench, args.metric, "--metric")
    per_label: dict[str, list[dict[str, Result]]] = {}
    rows: dict[str, dict[str, Result]] = {}
    counts: dict[str, int] = {}
    for index, student in enumerate(students):
        subject = load_subject(student.path, args.checkpoint, args.device, registry=registry)
        results: dict[str, Result] = {}
        for name, bench in built.items():
            directory = results_dir(student, name, str(subject.checkpoint or args.checkpoint), args.output, index)
            if args.fresh and directory.exists():
                shutil.rmtree(directory)
            result = evaluate(subject, bench, name, blocks[name], directory, args.batch_size, args.limit,
                              progress=not args.quiet)
            results[name] = result
            print(f"{student.label} [{student.path}] {name}: {result.primary} = {result.value:.2f}"
                  f"  ({result.answered} answered now, {result.seconds:.1f} s; {directory})", file=sys.stderr)
        if args.output is None and (student.path / "kdkit_student.yaml").is_file():
            from kdkit.model_card import write_model_card

            write_model_card(student.path)  # the export's card lists its eval/ results
        per_label.setdefault(student.label, []).append(results)
        counts[student.label] = counts.get(student.label, 0) + 1
        rows[f"{student.label} #{counts[student.label]}" if _repeated(students, student.label) else student.label] = results
    print(summary_markdown(rows, list(built)))
    if args.baseline:
        comparisons = []
        for name, bench in built.items():
            metric = args.metric or bench.primary
            data = {label: [(r[name].scores.metrics[metric], r[name].scores.units if metric == bench.primary else {})
                            for r in runs] for label, runs in per_label.items()}
            comparisons.append(compare(data, args.baseline, name, metric))
        print(comparison_markdown(comparisons))
    return 0


def _repeated(students: Sequence[StudentArg], label: str) -> bool:
    return sum(s.label == label for s in students) > 1

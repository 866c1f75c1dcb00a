"""Test accuracy of a digits run through kdkit's evaluation layer (the ``classification`` benchmark).

``kdkit eval RUN_DIR --benchmark classification --set data={kind: digits, split: test, image_size: 32}``
gives the same number.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdkit.evaluation import build_benchmark, evaluate, load_subject


def held_out_benchmark(data: dict[str, Any]) -> Any:
    """The ``classification`` benchmark of a data block (e.g. ``{"kind": "digits", "split": "test"}``)."""
    return build_benchmark({"kind": "classification", "data": dict(data), "batch_size": 256})


def evaluate_run(run_dir: Path, benchmark: Any, export_dir: Path | None = None) -> float:
    """Top-1 accuracy (a fraction) of ``run_dir``'s student on ``benchmark``; with ``export_dir``, also
    write the student there in its library's format (adapters ejected)."""
    subject = load_subject(run_dir)
    result = evaluate(subject, benchmark, "classification", progress=False)
    if export_dir is not None:
        for handle in subject.adapters.values():
            handle.eject()
        subject.student.export(Path(export_dir))
    return result.scores.metrics["top1"] / 100

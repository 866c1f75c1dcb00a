"""Test accuracy of a trained student: a plain loop over a dataset, the student's logits, argmax.

:func:`trained_student` rebuilds a run's student (adapters injected) from its ``recipe.yaml`` and
loads the student tensors of its latest checkpoint; :func:`accuracy` evaluates any student plugin.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from kdkit.interfaces import BuildContext


def _registry(registry: Any) -> Any:
    if registry is not None:
        return registry
    from kdkit.plugins import get_registry

    return get_registry()


def trained_student(run_dir: Path, registry: Any = None) -> tuple[Any, dict[str, Any]]:
    """The student of ``run_dir`` (and its adapters, by name) with the weights of the run's latest checkpoint, in eval mode.

    Raises:
        CheckpointError: no recipe or checkpoint, or checkpoint tensors the student does not have.
    """
    from kdkit.export import trained_student as load_run_student

    student, adapters, _, _ = load_run_student(run_dir, registry=_registry(registry))
    student.model.eval()
    return student, adapters


def accuracy(student: Any, dataset: Dataset, adapters: Sequence[Any] = (), batch_size: int = 256) -> float:
    """Fraction of ``dataset`` samples whose label is the argmax of ``student(batch).logits``.

    Args:
        student: A student plugin object (its ``model`` is put in eval mode).
        dataset: Samples with ``images`` and ``labels``.
        adapters: Adapter handles injected into the student; they route every token (``routed``).
        batch_size: Samples per forward.
    """
    from kdkit.engine.step import routing

    student.model.eval()
    correct = total = 0
    with torch.no_grad(), routing(adapters, "routed"):
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            logits = student({"images": batch["images"]}).logits
            correct += int((logits.argmax(-1) == batch["labels"]).sum())
            total += len(batch["labels"])
    return correct / total


def build_dataset(data: Mapping[str, Any], registry: Any = None) -> Dataset:
    """The dataset a data block names (e.g. ``{"kind": "digits", "split": "test"}``), built without a student."""
    return _registry(registry).build("data", dict(data), BuildContext(name="test"))


def evaluate_run(run_dir: Path, dataset: Dataset, export_dir: Path | None = None) -> float:
    """Test accuracy of ``run_dir``'s student; with ``export_dir``, also export it there (adapters ejected)."""
    student, adapters = trained_student(run_dir)
    score = accuracy(student, dataset, list(adapters.values()))
    if export_dir is not None:
        for handle in adapters.values():
            handle.eject()
        student.export(Path(export_dir))
    return score

"""The student under evaluation: from an export directory or from a run directory's checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kdkit.errors import CheckpointError
from kdkit.interfaces import EvalSubject

if TYPE_CHECKING:
    from kdkit.registry import Registry

#: Names ``--checkpoint`` accepts besides a checkpoint directory.
CHECKPOINT_CHOICES = ("last", "best")


def is_export(path: Path) -> bool:
    """Whether ``path`` is a ``kdkit export`` directory."""
    from kdkit.export import MANIFEST

    return (Path(path) / MANIFEST).is_file()


def is_run(path: Path) -> bool:
    """Whether ``path`` is a run directory (``recipe.yaml`` + ``checkpoints/``)."""
    return (Path(path) / "recipe.yaml").is_file()


def run_checkpoint(run_dir: Path, checkpoint: str | Path = "last") -> Path:
    """The checkpoint directory ``checkpoint`` names in ``run_dir``: ``last``, ``best``, or a path.

    Raises:
        CheckpointError: the run has no such checkpoint (``best`` needs an ``eval`` block in the recipe).
    """
    from kdkit.engine.checkpoint import BEST, latest_checkpoint

    directory = Path(run_dir) / "checkpoints"
    if checkpoint == "last":
        return latest_checkpoint(directory)
    if checkpoint == "best":
        best = directory / BEST
        if not best.is_dir():
            raise CheckpointError(f"{run_dir} has no best checkpoint ({best} does not exist); only runs whose recipe "
                                  "has an `eval` block keep one")
        return best
    path = Path(checkpoint)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


def load_subject(path: str | Path, checkpoint: str | Path = "last", device: str = "cpu",
                 data_root: str | Path | None = None, registry: Registry | None = None) -> EvalSubject:
    """The student of an export or run directory, in eval mode with its adapters routed.

    Args:
        path: A ``kdkit export`` directory or a run directory.
        checkpoint: For a run directory: ``last``, ``best`` or a checkpoint directory.
        device: Torch device to evaluate on.
        data_root: For a run directory: where the recipe's relative paths resolve (default: the recipe's).
        registry: Plugins to build with (default: every installed plugin).

    Raises:
        CheckpointError: ``path`` is neither, or its weights are missing or broken.
    """
    from kdkit.export import load_student, trained_student
    from kdkit.interfaces import Routable

    path = Path(path)
    if is_export(path):
        student = load_student(path, device=device, registry=registry)
        return EvalSubject(student=student, adapters=dict(student.kdkit_adapters), source=path, device=device)
    if is_run(path):
        source = run_checkpoint(path, checkpoint)
        student, adapters, recipe, used = trained_student(path, source, data_root, registry)
        for handle in adapters.values():
            if isinstance(handle, Routable):
                handle.set_routing("routed")
        student.model.to(device).eval()
        return EvalSubject(student=student, adapters=dict(adapters), source=path, recipe=recipe, checkpoint=used,
                           device=device)
    if not path.exists():
        raise CheckpointError(f"student {path} does not exist (give an export directory or a run directory)")
    raise CheckpointError(f"{path} is neither a kdkit export (no kdkit_student.yaml) nor a run directory "
                          "(no recipe.yaml)")

"""kdkit: composable, teacher-agnostic multi-teacher knowledge distillation for PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdkit.config import PluginConfig
from kdkit.errors import KdkitError, RecipeError
from kdkit.hookspecs import hookimpl
from kdkit.interfaces import BuildContext, Example, GridSpec, StepContext, TeacherOutput
from kdkit.registry import Factory

if TYPE_CHECKING:
    from kdkit.registry import Registry

__version__ = "0.1.0"


def load_student(out_dir: str | Path, device: str = "cpu", registry: Registry | None = None) -> Any:
    """The student exported by ``kdkit export`` in ``out_dir``: adapters loaded, eval mode, routed.

    See :func:`kdkit.export.load_student` (imported lazily: ``import kdkit`` stays free of torch).
    """
    from kdkit.export import load_student as load

    return load(out_dir, device=device, registry=registry)


__all__ = [
    "BuildContext",
    "Example",
    "Factory",
    "GridSpec",
    "KdkitError",
    "PluginConfig",
    "RecipeError",
    "StepContext",
    "TeacherOutput",
    "__version__",
    "hookimpl",
    "load_student",
]

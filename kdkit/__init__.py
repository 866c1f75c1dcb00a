"""kdkit: composable, teacher-agnostic multi-teacher knowledge distillation for PyTorch."""

from __future__ import annotations

from kdkit.config import PluginConfig
from kdkit.errors import KdkitError, RecipeError
from kdkit.hookspecs import hookimpl
from kdkit.interfaces import BuildContext, Example, GridSpec, StepContext, TeacherOutput
from kdkit.registry import Factory

__version__ = "0.1.0"

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
]

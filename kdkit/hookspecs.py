"""The hooks a kdkit plugin may implement: one per plugin kind.

Each hook takes no argument and returns ``{name: Factory}``. Hooks stay pure (no I/O, no heavy
imports) so listing plugins and validating recipes is fast.
"""

from __future__ import annotations

import pluggy

from kdkit.registry import Factory

PROJECT = "kdkit"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def kdkit_teachers() -> dict[str, Factory]:
    """Frozen feature extractors returning token grids ``(B, H, W, C)``."""


@hookspec
def kdkit_aligners() -> dict[str, Factory]:
    """Token-grid transforms that map a teacher grid onto the student's token grid."""


@hookspec
def kdkit_scorers() -> dict[str, Factory]:
    """Per-token weights ``(B, m)`` for one teacher's aligned tokens."""


@hookspec
def kdkit_adapters() -> dict[str, Factory]:
    """Trainable modules injected into named sub-modules of the student (LoRA, MoLA...)."""


@hookspec
def kdkit_losses() -> dict[str, Factory]:
    """Loss terms: each reads the step context and returns one unweighted scalar."""


@hookspec
def kdkit_students() -> dict[str, Factory]:
    """Student wrappers: the model, where adapters go, its features and its task loss."""


@hookspec
def kdkit_data() -> dict[str, Factory]:
    """Datasets yielding batches in a student's format."""


@hookspec
def kdkit_benchmarks() -> dict[str, Factory]:
    """Evaluation suites: questions + official scoring (generative), or model measurements."""


@hookspec
def kdkit_loggers() -> dict[str, Factory]:
    """Run loggers: where training and evaluation records go (JSONL, TensorBoard, W&B, MLflow...)."""


#: Plugin kind -> hook name. The single source of the list of kinds.
HOOKS: dict[str, str] = {
    "teacher": "kdkit_teachers",
    "aligner": "kdkit_aligners",
    "scorer": "kdkit_scorers",
    "adapter": "kdkit_adapters",
    "loss": "kdkit_losses",
    "student": "kdkit_students",
    "data": "kdkit_data",
    "benchmark": "kdkit_benchmarks",
    "logger": "kdkit_loggers",
}

"""Uniform token weights ``1/m``: FGKD without token scoring (HAWAII's ablation, arXiv 2506.19072)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from kdkit import BuildContext, Example, Factory, PluginConfig, StepContext, hookimpl
from kdkit.errors import KdkitError


class UniformConfig(PluginConfig):
    """Every token of every teacher weighs 1/m."""

    kind: Literal["uniform"] = "uniform"


class UniformScorer:
    """``(step, teacher) -> (B, m)`` weights equal to ``1/m``."""

    def __call__(self, step: StepContext, teacher: str) -> Tensor:
        """``(B, m)`` uniform weights for ``teacher``'s aligned tokens."""
        if teacher not in step.teacher_aligned:
            known = ", ".join(step.teacher_aligned) or "none"
            raise KdkitError(f"uniform scorer: no aligned tokens for teacher {teacher!r} (have: {known})")
        tokens = step.teacher_aligned[teacher]
        batch, m = tokens.shape[:2]
        return torch.full((batch, m), 1.0 / m, device=tokens.device)


def build(config: UniformConfig, context: BuildContext) -> UniformScorer:
    """The uniform scorer (stateless)."""
    return UniformScorer()


def example(tmp_dir: Path) -> Example:
    """Two tiny teachers."""
    from kdkit_plugins.losses._tiny_step import tiny_context, tiny_step

    context = tiny_context()
    return Example(config={"kind": "uniform"}, context=context, inputs=(tiny_step(context), "t1"))


@hookimpl
def kdkit_scorers() -> dict[str, Factory]:
    return {"uniform": Factory(config=UniformConfig, build=build, example=example)}

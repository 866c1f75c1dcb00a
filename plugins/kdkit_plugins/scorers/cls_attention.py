"""CLS-attention token weights, the MoVE-KD baseline (Cao et al., arXiv 2501.01709).

Weights are the softmax of the CLS token's similarity to every patch token of a reference teacher,
pooled onto the student's token grid (mass-preserving area pooling).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from pydantic import Field
from torch import Tensor

from kdkit import BuildContext, Example, Factory, PluginConfig, StepContext, hookimpl
from kdkit.errors import KdkitError
from kdkit_plugins.losses._precision import widen


class ClsAttentionConfig(PluginConfig):
    """Weight tokens by the CLS token's attention over a teacher's patch tokens (MoVE-KD)."""

    kind: Literal["cls_attention"] = "cls_attention"
    reference: str | None = Field(
        None, description="Teacher whose CLS token scores every teacher (MoVE-KD uses one); null: each teacher its own."
    )
    temperature: float = Field(1.0, gt=0, description="Softmax temperature on top of the 1/sqrt(C) scaling.")


class ClsAttentionScorer:
    """``(step, teacher) -> (B, m)``: ``softmax(cls · gridᵀ / (√C τ))`` pooled onto the student grid.

    Args:
        grid: The student's token grid ``(height, width)``.
        reference: Teacher whose CLS token and grid are used (None: the scored teacher).
        temperature: τ.
    """

    def __init__(self, grid: tuple[int, int], reference: str | None = None, temperature: float = 1.0) -> None:
        self.grid = grid
        self.reference = reference
        self.temperature = temperature

    def __call__(self, step: StepContext, teacher: str) -> Tensor:
        """``(B, m)`` weights (rows sum to 1)."""
        source = self.reference or teacher
        if source not in step.teacher_grids:
            known = ", ".join(step.teacher_grids) or "none"
            raise KdkitError(f"cls_attention scorer: no grid for teacher {source!r} (have: {known})")
        prefix = step.teacher_prefix.get(source)
        if prefix is None or prefix.shape[1] == 0:
            raise KdkitError(
                f"cls_attention scorer: teacher {source!r} has no CLS (prefix) token; set `reference` to a teacher "
                "that has one, or use the hawaii or uniform scorer"
            )
        grid = widen(step.teacher_grids[source])
        cls = widen(prefix[:, 0])
        logits = torch.einsum("bc,bhwc->bhw", cls, grid) / (math.sqrt(grid.shape[-1]) * self.temperature)
        weights = torch.softmax(rearrange(logits, "b h w -> b (h w)"), -1)
        weights = rearrange(weights, "b (h w) -> b 1 h w", h=grid.shape[1])
        pooled = F.interpolate(weights, size=self.grid, mode="area")  # keeps relative mass per region
        pooled = rearrange(pooled, "b 1 h w -> b (h w)")
        return (pooled / pooled.sum(-1, keepdim=True)).detach()


def build(config: ClsAttentionConfig, context: BuildContext) -> ClsAttentionScorer:
    """A CLS-attention scorer onto the student's grid."""
    if context.student_spec is None:
        raise KdkitError("cls_attention scorer: the build context has no student grid")
    if config.reference is not None and context.teacher_names and config.reference not in context.teacher_names:
        raise KdkitError(
            f"cls_attention scorer: reference teacher {config.reference!r} is not in the recipe "
            f"(teachers: {', '.join(context.teacher_names)})"
        )
    grid = (context.student_spec.height, context.student_spec.width)
    return ClsAttentionScorer(grid, config.reference, config.temperature)


def example(tmp_dir: Path) -> Example:
    """Two tiny teachers scored by t0's CLS token."""
    from kdkit_plugins.losses._tiny_step import tiny_context, tiny_step

    context = tiny_context()
    return Example(config={"kind": "cls_attention", "reference": "t0"}, context=context, inputs=(tiny_step(context), "t1"))


@hookimpl
def kdkit_scorers() -> dict[str, Factory]:
    return {"cls_attention": Factory(config=ClsAttentionConfig, build=build, example=example)}

"""Collapse guards for distillation targets that pass through learnable teacher-side projections.

``none``: the paper's form (projections trained against the student can collapse);
``standardize``: targets standardized per channel with their own batch statistics (scale-free);
``student_heads``: RADIO-style heads project the student onto each teacher's fixed tokens.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor

from kdkit import PluginConfig
from kdkit_plugins.losses._precision import widen

Guard = Literal["none", "standardize", "student_heads"]


class GuardedConfig(PluginConfig):
    """Fields shared by losses whose targets come out of learnable projections."""

    guard: Guard = Field(
        "none",
        description="Collapse guard. `none`: the paper's form (target = learned teacher-side projection). "
        "`standardize`: the projected target is standardized per channel over the batch's tokens, so "
        "shrinking it no longer lowers the loss. `student_heads`: a 2-layer GELU head per target maps the "
        "student to the FIXED teacher tokens (RADIO style); the teacher-side projection is not used.",
    )
    head_hidden: int | None = Field(None, gt=0, description="Hidden width of student heads / summarizers; null uses the output width.")
    eps: float = Field(1e-6, gt=0, description="Added to the variance when standardizing targets.")


def standardize_channels(target: Tensor, eps: float) -> Tensor:
    """``(B, m, C) -> (B, m, C)``: zero mean, unit variance per channel over all ``B * m`` tokens.

    Gradients flow through the statistics, so the result does not change when ``target`` is scaled.
    """
    flat = widen(target).flatten(0, -2)
    mean = flat.mean(0)
    var = flat.var(0, unbiased=False)
    return ((widen(target) - mean) / (var + eps).sqrt()).to(target.dtype)

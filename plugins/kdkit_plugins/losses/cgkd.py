"""Coarse-grained KD of HAWAII (arXiv 2506.19072):
``L_cg = MSE(I^S, f_cg(concat_c(I_1^T … I_Nt^T)))`` on the routed student output, f_cg a 2-layer GELU MLP.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from kdkit import BuildContext, Example, Factory, StepContext, hookimpl
from kdkit.errors import KdkitError
from kdkit_plugins.aligners.mlp import GeluMLP
from kdkit_plugins.losses._guard import GuardedConfig, standardize_channels
from kdkit_plugins.losses._precision import widen
from kdkit_plugins.losses._teachers import check_finite, need, same_shape, select_teachers


class CgkdConfig(GuardedConfig):
    """MSE between the routed student output and a learned summary of all teachers' tokens."""

    kind: Literal["cgkd"] = "cgkd"
    teachers: list[str] | None = Field(None, description="Teachers to summarize, concatenated in recipe order (null: all).")


class CoarseGrainedKD(nn.Module):
    """``step -> scalar``: MSE of ``I^S`` ``(B, m, D)`` against the summarized teachers.

    Args:
        term: The loss's name (for messages).
        teachers: Teachers whose tokens are concatenated, in this order.
        summarizer: f_cg, ``(B, m, Σ C_i) -> (B, m, D)`` (None with the ``student_heads`` guard).
        head: ``(B, m, D) -> (B, m, Σ C_i)`` student head (``student_heads`` guard only).
        guard: Collapse guard.
        eps: Variance epsilon of the ``standardize`` guard.
    """

    def __init__(
        self,
        term: str,
        teachers: tuple[str, ...],
        summarizer: nn.Module | None,
        head: nn.Module | None = None,
        guard: str = "none",
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.term = term
        self.teachers = teachers
        self.summarizer = summarizer
        self.head = head
        self.guard = guard
        self.eps = eps

    def forward(self, step: StepContext) -> Tensor:
        """Scalar ``L_cg`` (unweighted)."""
        if step.student_routed is None:
            raise KdkitError(f"loss {self.term!r} needs step.student_routed (the routed student features); it is None")
        tokens = torch.cat([need(step.teacher_tokens, t, "teacher_tokens", self.term) for t in self.teachers], -1)
        student = step.student_routed
        if self.guard == "student_heads":
            student, target = self.head(student), tokens.detach()
        else:
            target = self.summarizer(tokens)
            if self.guard == "standardize":
                target = standardize_channels(target, self.eps)
        same_shape(student, target, ", ".join(self.teachers), self.term, "check the teachers' token grids")
        loss = (widen(student) - widen(target)).pow(2).mean()
        return check_finite(loss, self.term, {"student_routed": step.student_routed, "concatenated teacher_tokens": tokens})


def build(config: CgkdConfig, context: BuildContext) -> CoarseGrainedKD:
    """CGKD with f_cg sized from ``teacher_token_specs`` (Σ C_i) and the student width D."""
    term = context.name or "cgkd"
    teachers = select_teachers(term, config.teachers, context.teacher_names)
    if not teachers:
        raise KdkitError(f"loss {term!r}: the recipe has no teachers to summarize")
    if context.student_spec is None:
        raise KdkitError(f"loss {term!r}: the build context has no student grid")
    missing = [t for t in teachers if t not in context.teacher_token_specs]
    if missing:
        raise KdkitError(f"loss {term!r}: no token grid known for teachers {missing}; build the aligner chains first")
    width = sum(context.teacher_token_specs[t].channels for t in teachers)
    d = context.student_spec.channels
    if config.guard == "student_heads":
        return CoarseGrainedKD(term, teachers, None, GeluMLP(d, width, config.head_hidden), config.guard, config.eps)
    return CoarseGrainedKD(term, teachers, GeluMLP(width, d, config.head_hidden), None, config.guard, config.eps)


def example(tmp_dir: Path) -> Example:
    """Two tiny teachers of different widths summarized onto the student width."""
    from kdkit_plugins.losses._tiny_step import tiny_context, tiny_step

    context = tiny_context(name="coarse", raw_widths=(2, 3))
    return Example(config={"kind": "cgkd", "head_hidden": 6}, context=context, inputs=(tiny_step(context),))


@hookimpl
def kdkit_losses() -> dict[str, Factory]:
    return {"cgkd": Factory(config=CgkdConfig, build=build, example=example)}

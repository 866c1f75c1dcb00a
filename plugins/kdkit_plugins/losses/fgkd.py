"""Fine-grained KD of HAWAII (arXiv 2506.19072):
``L_fg = (1/N_t) Σ_i Σ_k s_i[k] · mean_c (I_i^S[k] − Î_i^T[k])²`` on the forced per-teacher student outputs.
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
from kdkit_plugins.losses._teachers import check_finite, forced_sample, need, same_shape, sampled_mean, select_teachers


class FgkdConfig(GuardedConfig):
    """Per-teacher, token-weighted MSE between each forced student output and its teacher."""

    kind: Literal["fgkd"] = "fgkd"
    teachers: list[str] | None = Field(None, description="Teachers to distil (null: every teacher of the recipe).")
    scoring: Literal["scorer", "none"] = Field(
        "scorer",
        description="`scorer`: weight tokens by step.scores (uniform for a teacher without scores). "
        "`none`: uniform 1/m, the ablation 'FGKD without token scoring'.",
    )

    @property
    def needs_scorer(self) -> bool:
        """``scoring: scorer`` reads the recipe's scorer: recipe validation refuses a recipe without one."""
        return self.scoring == "scorer"


class FineGrainedKD(nn.Module):
    """``step -> scalar``: the mean over teachers of the score-weighted token MSE.

    Args:
        term: The loss's name (for messages).
        teachers: Teachers to distil.
        scoring: ``"scorer"`` or ``"none"``.
        guard: Collapse guard (``none``, ``standardize``, ``student_heads``).
        heads: Student heads per teacher (``student_heads`` guard only).
        eps: Variance epsilon of the ``standardize`` guard.
    """

    def __init__(
        self,
        term: str,
        teachers: tuple[str, ...],
        scoring: str = "scorer",
        guard: str = "none",
        heads: dict[str, nn.Module] | None = None,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.term = term
        self.teachers = teachers
        self.scoring = scoring
        self.guard = guard
        self.heads = nn.ModuleDict(heads or {})
        self.eps = eps

    def pair(self, step: StepContext, teacher: str) -> tuple[Tensor, Tensor]:
        """Student ``(B, m, C)`` and target ``(B, m, C)`` for one teacher, after the guard."""
        student = need(step.student_forced, teacher, "student_forced", self.term)
        if self.guard == "student_heads":
            target = need(step.teacher_tokens, teacher, "teacher_tokens", self.term).detach()
            return self.heads[teacher](student), target
        target = need(step.teacher_aligned, teacher, "teacher_aligned", self.term)
        if self.guard == "standardize":
            target = standardize_channels(target, self.eps)
        return student, target

    def weights(self, step: StepContext, teacher: str, error: Tensor) -> Tensor:
        """``(B, m)`` token weights: the teacher's scores, or uniform ``1/m``."""
        if self.scoring == "scorer" and teacher in step.scores:
            return step.scores[teacher]
        return torch.full_like(error, 1.0 / error.shape[1])

    def forward(self, step: StepContext) -> Tensor:
        """Scalar ``L_fg`` (unweighted)."""
        terms, inputs = {}, {}
        sample = forced_sample(step)  # runtime.forced_teachers: only a random k of the teachers ran
        for teacher in self.teachers:
            if sample is not None and teacher not in sample:
                continue
            student, target = self.pair(step, teacher)
            same_shape(student, target, teacher, self.term, "end the teacher's chain with an mlp or set guard: student_heads")
            error = (widen(student) - widen(target)).pow(2).mean(-1)
            weights = self.weights(step, teacher, error)
            terms[teacher] = (weights * error).sum(-1).mean()
            inputs |= {f"student_forced[{teacher!r}]": student, f"target of teacher {teacher!r}": target}
        like = step.student_routed if isinstance(step.student_routed, Tensor) else None
        return check_finite(sampled_mean(terms, self.teachers, sample, like), self.term, inputs)


def build(config: FgkdConfig, context: BuildContext) -> FineGrainedKD:
    """FGKD over the selected teachers; ``student_heads`` sizes each head from ``teacher_token_specs``."""
    term = context.name or "fgkd"
    teachers = select_teachers(term, config.teachers, context.teacher_names)
    if not teachers:
        raise KdkitError(f"loss {term!r}: the recipe has no teachers to distil")
    heads: dict[str, nn.Module] = {}
    if config.guard == "student_heads":
        if context.student_spec is None:
            raise KdkitError(f"loss {term!r}: student_heads needs the student grid in the build context")
        for teacher in teachers:
            spec = context.teacher_token_specs.get(teacher)
            if spec is None:
                raise KdkitError(f"loss {term!r}: no token grid known for teacher {teacher!r}; build the aligner chains first")
            heads[teacher] = GeluMLP(context.student_spec.channels, spec.channels, config.head_hidden)
    return FineGrainedKD(term, teachers, config.scoring, config.guard, heads, config.eps)


def example(tmp_dir: Path) -> Example:
    """Two tiny teachers with student heads (a stateful build)."""
    from kdkit_plugins.losses._tiny_step import tiny_context, tiny_step

    context = tiny_context(name="fine")
    return Example(config={"kind": "fgkd", "guard": "student_heads"}, context=context, inputs=(tiny_step(context),))


@hookimpl
def kdkit_losses() -> dict[str, Factory]:
    return {"fgkd": Factory(config=FgkdConfig, build=build, example=example)}

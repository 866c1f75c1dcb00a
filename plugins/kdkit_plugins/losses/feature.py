"""Generic feature distillation: MSE, cosine or smooth-L1 between a student feature and a teacher target,
averaged over the selected teachers (FitNets-style hints, Romero et al., arXiv 1412.6550).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdkit import BuildContext, Example, Factory, PluginConfig, StepContext, hookimpl
from kdkit.errors import KdkitError
from kdkit_plugins.losses._precision import widen
from kdkit_plugins.losses._teachers import check_finite, forced_sample, need, same_shape, sampled_mean, select_teachers


class FeatureConfig(PluginConfig):
    """Distance between student features and each teacher's aligned (or raw-token) features."""

    kind: Literal["feature"] = "feature"
    metric: Literal["mse", "cosine", "smooth_l1"] = Field(
        "mse", description="`mse`; `cosine`: mean over tokens of 1 - cos; `smooth_l1`: Huber with `beta`."
    )
    student: Literal["routed", "forced"] = Field(
        "routed", description="`routed`: I^S for every teacher; `forced`: I_i^S (teacher i's expert only)."
    )
    target: Literal["aligned", "tokens"] = Field(
        "aligned", description="`aligned`: Î_i^T (the chain's output); `tokens`: I_i^T (before the first projection)."
    )
    teachers: list[str] | None = Field(None, description="Teachers to distil (null: every teacher).")
    beta: float = Field(1.0, gt=0, description="Smooth-L1 threshold between the quadratic and linear parts.")
    detach_target: bool = Field(False, description="Stop gradients into the target (and the projections that made it).")
    token_weights: Literal["uniform", "scorer"] = Field(
        "uniform", description="`uniform`: every token counts 1/m; `scorer`: token k of teacher i counts "
        "`step.scores[i][k]` (the recipe's scorer, e.g. cls_attention for the MoVE-KD baseline).")


class FeatureLoss:
    """``step -> scalar``: mean over teachers of ``metric(student, target)``.

    Args:
        term: The loss's name (for messages).
        teachers: Teachers to distil.
        config: The metric and which features to compare.
    """

    def __init__(self, term: str, teachers: tuple[str, ...], config: FeatureConfig) -> None:
        self.term = term
        self.teachers = teachers
        self.config = config

    def distance(self, student: Tensor, target: Tensor) -> Tensor:
        """``(B, m, C)`` pair -> per-token distance ``(B, m)``."""
        student, target = widen(student), widen(target)
        if self.config.metric == "cosine":
            return 1 - F.cosine_similarity(student, target, dim=-1)
        if self.config.metric == "smooth_l1":
            return F.smooth_l1_loss(student, target, beta=self.config.beta, reduction="none").mean(-1)
        return F.mse_loss(student, target, reduction="none").mean(-1)

    def reduce(self, distance: Tensor, step: StepContext, teacher: str) -> Tensor:
        """Per-token ``(B, m)`` distance -> scalar: plain mean, or the score-weighted sum averaged over the batch."""
        if self.config.token_weights == "uniform":
            return distance.mean()
        scores = need(step.scores, teacher, "scores", self.term)
        return (scores.to(distance.dtype) * distance).sum(-1).mean()

    def __call__(self, step: StepContext) -> Tensor:
        """Scalar loss (unweighted)."""
        terms, inputs = {}, {}
        sample = forced_sample(step) if self.config.student == "forced" else None
        for teacher in self.teachers:
            if sample is not None and teacher not in sample:  # runtime.forced_teachers: not drawn this step
                continue
            if self.config.student == "forced":
                student = need(step.student_forced, teacher, "student_forced", self.term)
            elif step.student_routed is None:
                raise KdkitError(f"loss {self.term!r} needs step.student_routed; it is None")
            else:
                student = step.student_routed
            field = "teacher_aligned" if self.config.target == "aligned" else "teacher_tokens"
            target = need(getattr(step, field), teacher, field, self.term)
            target = target.detach() if self.config.detach_target else target
            same_shape(student, target, teacher, self.term, "end the teacher's chain with an mlp (target: aligned)")
            terms[teacher] = self.reduce(self.distance(student, target), step, teacher)
            inputs |= {f"student for {teacher!r}": student, f"step.{field}[{teacher!r}]": target}
        like = step.student_routed if isinstance(step.student_routed, Tensor) else None
        return check_finite(sampled_mean(terms, self.teachers, sample, like), self.term, inputs)


def build(config: FeatureConfig, context: BuildContext) -> FeatureLoss:
    """A feature loss over the selected teachers."""
    term = context.name or "feature"
    teachers = select_teachers(term, config.teachers, context.teacher_names)
    if not teachers:
        raise KdkitError(f"loss {term!r}: the recipe has no teachers to distil")
    return FeatureLoss(term, teachers, config)


def example(tmp_dir: Path) -> Example:
    """Cosine distance of the forced outputs to one of two teachers."""
    from kdkit_plugins.losses._tiny_step import tiny_context, tiny_step

    context = tiny_context(name="hint")
    config = {"kind": "feature", "metric": "cosine", "student": "forced", "teachers": ["t1"]}
    return Example(config=config, context=context, inputs=(tiny_step(context),))


@hookimpl
def kdkit_losses() -> dict[str, Factory]:
    return {"feature": Factory(config=FeatureConfig, build=build, example=example)}

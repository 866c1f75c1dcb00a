"""Logit losses: ``kl`` (Hinton et al., arXiv 1503.02531: ``T² · KL(p_teacher || p_student)`` at temperature T)
and ``ce`` (cross-entropy against labels: the task loss of classifiers and other non-VLM students).
"""

from __future__ import annotations

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
from kdkit_plugins.losses._teachers import check_finite, need, select_teachers


class KlConfig(PluginConfig):
    """Logit distillation: temperature-scaled KL divergence from each teacher's logits."""

    kind: Literal["kl"] = "kl"
    temperature: float = Field(1.0, gt=0, description="Softmax temperature T; the loss is scaled by T².")
    teachers: list[str] | None = Field(None, description="Teachers whose logits to distil (null: every teacher).")
    ignore_index: int = Field(-100, description="Positions whose label equals this are left out (sequence logits).")


class CeConfig(PluginConfig):
    """Cross-entropy of the student's logits against the batch labels."""

    kind: Literal["ce"] = "ce"
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing of the targets.")
    ignore_index: int = Field(-100, description="Label value that marks padding.")


def _student_logits(step: StepContext, term: str) -> Tensor:
    if step.logits is None:
        raise KdkitError(f"loss {term!r} needs step.logits, but the student returned no logits")
    return step.logits


class KlLoss:
    """``step -> scalar``: mean over teachers of ``T² · KL(p_t || p_s)``, averaged over (valid) positions."""

    def __init__(self, term: str, teachers: tuple[str, ...], config: KlConfig) -> None:
        self.term = term
        self.teachers = teachers
        self.config = config

    def __call__(self, step: StepContext) -> Tensor:
        """Scalar loss (unweighted)."""
        logits = _student_logits(step, self.term)
        t = self.config.temperature
        student = rearrange(widen(logits) / t, "... k -> (...) k").log_softmax(-1)
        keep = torch.ones(student.shape[0], dtype=torch.bool, device=student.device)
        if step.labels is not None and step.labels.shape == logits.shape[:-1]:
            keep = step.labels.flatten() != self.config.ignore_index
        terms, inputs = [], {"step.logits": logits}
        for teacher in self.teachers:
            target = need(step.teacher_logits, teacher, "teacher_logits", self.term)
            if target.shape != logits.shape:
                raise KdkitError(f"loss {self.term!r}: teacher {teacher!r} logits {tuple(target.shape)} != student {tuple(logits.shape)}")
            teacher_log = rearrange(widen(target.detach()) / t, "... k -> (...) k").log_softmax(-1)
            per_position = (teacher_log.exp() * (teacher_log - student)).sum(-1)
            terms.append(t * t * (per_position * keep).sum() / keep.sum().clamp_min(1))
            inputs[f"step.teacher_logits[{teacher!r}]"] = target
        return check_finite(torch.stack(terms).mean(), self.term, inputs)


class CeLoss:
    """``step -> scalar``: cross-entropy of ``(..., K)`` logits against ``(...)`` labels."""

    def __init__(self, term: str, config: CeConfig) -> None:
        self.term = term
        self.config = config

    def __call__(self, step: StepContext) -> Tensor:
        """Scalar loss (unweighted)."""
        logits = _student_logits(step, self.term)
        if step.labels is None:
            raise KdkitError(f"loss {self.term!r} needs step.labels, but the batch has no labels")
        if step.labels.shape != logits.shape[:-1]:
            raise KdkitError(f"loss {self.term!r}: labels {tuple(step.labels.shape)} do not match logits {tuple(logits.shape)}")
        loss = F.cross_entropy(
            rearrange(widen(logits), "... k -> (...) k"), step.labels.flatten().long(),
            ignore_index=self.config.ignore_index, label_smoothing=self.config.label_smoothing,
        )
        return check_finite(loss, self.term, {"step.logits": logits})


def build_kl(config: KlConfig, context: BuildContext) -> KlLoss:
    """The KL term over the selected teachers."""
    term = context.name or "kl"
    return KlLoss(term, select_teachers(term, config.teachers, context.teacher_names), config)


def build_ce(config: CeConfig, context: BuildContext) -> CeLoss:
    """The cross-entropy term."""
    return CeLoss(context.name or "ce", config)


def example_kl(tmp_dir: Path) -> Example:
    """Two teachers' logits at temperature 2."""
    from kdkit_plugins.losses._tiny_step import tiny_context, tiny_step

    context = tiny_context(name="kd")
    return Example(config={"kind": "kl", "temperature": 2.0}, context=context, inputs=(tiny_step(context),))


def example_ce(tmp_dir: Path) -> Example:
    """Class logits and labels."""
    from kdkit_plugins.losses._tiny_step import tiny_context, tiny_step

    context = tiny_context(name="cls")
    return Example(config={"kind": "ce", "label_smoothing": 0.1}, context=context, inputs=(tiny_step(context),))


@hookimpl
def kdkit_losses() -> dict[str, Factory]:
    return {
        "kl": Factory(config=KlConfig, build=build_kl, example=example_kl),
        "ce": Factory(config=CeConfig, build=build_ce, example=example_ce),
    }

"""Relational distillation: the student's token-similarity matrix imitates each teacher's.

Similarity matrices are m x m whatever the feature widths, so no projection is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kdkit import BuildContext, Example, Factory, PluginConfig, StepContext, hookimpl


class SimilarityLossConfig(PluginConfig):
    """Match the student's token-token cosine similarities to each teacher's."""

    kind: Literal["similarity"] = "similarity"
    teachers: list[str] | None = Field(None, description="Teachers to match (default: all).")


def similarity(tokens: Tensor) -> Tensor:
    """(B, m, C) tokens -> (B, m, m) cosine similarities."""
    unit = F.normalize(tokens.float(), dim=-1)
    return unit @ unit.transpose(1, 2)


class SimilarityLoss(nn.Module):
    """Mean over teachers of MSE between student and teacher similarity matrices."""

    def __init__(self, teachers: list[str]) -> None:
        super().__init__()
        self.teachers = teachers

    def forward(self, step: StepContext) -> Tensor:
        """Step context -> scalar loss."""
        student = similarity(step.student_routed)
        terms = [F.mse_loss(student, similarity(step.teacher_tokens[t])) for t in self.teachers]
        return torch.stack(terms).mean()


def build(config: SimilarityLossConfig, context: BuildContext) -> SimilarityLoss:
    teachers = config.teachers or list(context.teacher_names)
    missing = sorted(set(teachers) - set(context.teacher_names))
    if missing:
        raise ValueError(f"similarity loss names teachers {missing} that the recipe does not have")
    return SimilarityLoss(teachers)


def example(tmp_dir: Path) -> Example:
    """A tiny step with two teachers of different widths, for kdkit's contract tests."""
    step = StepContext(
        teacher_names=("a", "b"),
        student_routed=torch.randn(2, 16, 8),
        teacher_tokens={"a": torch.randn(2, 16, 4), "b": torch.randn(2, 16, 12)},
    )
    return Example(config={"kind": "similarity"}, context=BuildContext(teacher_names=("a", "b")), inputs=(step,))


@hookimpl
def kdkit_losses() -> dict[str, Factory]:
    return {"similarity": Factory(config=SimilarityLossConfig, build=build, example=example)}

"""HAWAII's text-aware token scores (arXiv 2506.19072, FGKD):
``s_i = mean_rows(softmax([Î_i ; T̂] Î_iᵀ / √D))``, a distribution over the m tokens of teacher i.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from kdkit import BuildContext, Example, Factory, PluginConfig, StepContext, hookimpl
from kdkit.errors import KdkitError
from kdkit_plugins.aligners.mlp import GeluMLP
from kdkit_plugins.losses._precision import widen


class HawaiiConfig(PluginConfig):
    """Score tokens by how much attention they get from the teacher's tokens and the instruction."""

    kind: Literal["hawaii"] = "hawaii"
    hidden: int | None = Field(None, gt=0, description="Hidden width of the projections; null uses D.")
    project_tokens: bool = Field(
        False,
        description="Give each teacher its own 2-layer GELU projection of Î_i inside the scorer. The "
        "paper's Î_i = P_i(I_i) is already the output of the teacher's mlp aligner, so this is off by "
        "default; turn it on when a chain does not end at the student width.",
    )
    use_text: bool = Field(True, description="Add the instruction-text rows T̂ (false: teacher self-similarity only).")
    detach: bool = Field(
        True, description="Return detached scores (FGKD could otherwise lower its loss by moving weight to easy tokens)."
    )


class HawaiiScorer(nn.Module):
    """``(step, teacher) -> (B, m)`` text-aware token scores.

    Args:
        width: D, the width scores are computed in (the student's width).
        text_dim: E, width of the instruction embeddings (None: no text projection).
        token_widths: Width of each teacher's ``teacher_aligned`` tokens; a projection per
            teacher is built when ``project_tokens``.
        hidden: Hidden width of the projections.
        project_tokens: Project Î_i inside the scorer.
        use_text: Use the instruction rows.
        detach: Detach the scores.
    """

    def __init__(
        self,
        width: int,
        text_dim: int | None,
        token_widths: dict[str, int],
        hidden: int | None = None,
        project_tokens: bool = False,
        use_text: bool = True,
        detach: bool = True,
    ) -> None:
        super().__init__()
        self.width = width
        self.text_dim = text_dim if use_text else None
        self.detach = detach
        self.text_projection = GeluMLP(text_dim, width, hidden) if self.text_dim else None
        self.token_projections = nn.ModuleDict(
            {t: GeluMLP(c, width, hidden) for t, c in token_widths.items()} if project_tokens else {}
        )

    def text_rows(self, step: StepContext) -> tuple[Tensor, Tensor] | None:
        """Projected instruction rows ``(B, T, D)`` and their mask ``(B, T)``, or None without text."""
        if self.text_projection is None or step.text is None or step.text.shape[1] == 0:
            return None
        text = step.text.detach()
        if text.shape[-1] != self.text_dim:
            raise KdkitError(f"hawaii scorer: text embeddings are {text.shape[-1]} wide, the scorer was built for {self.text_dim}")
        mask = step.text_mask if step.text_mask is not None else torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)
        return self.text_projection(text), mask

    def forward(self, step: StepContext, teacher: str) -> Tensor:
        """``(B, m)`` scores for ``teacher`` (rows sum to 1)."""
        if teacher not in step.teacher_aligned:
            known = ", ".join(step.teacher_aligned) or "none"
            raise KdkitError(f"hawaii scorer: no aligned tokens for teacher {teacher!r} (have: {known})")
        tokens = step.teacher_aligned[teacher]
        if teacher in self.token_projections:
            tokens = self.token_projections[teacher](tokens)
        if tokens.shape[-1] != self.width:
            raise KdkitError(
                f"hawaii scorer: teacher {teacher!r} tokens are {tokens.shape[-1]} wide, not the student width "
                f"{self.width}; end its aligner chain with an mlp or set project_tokens: true"
            )
        tokens = widen(tokens)
        queries, valid = tokens, tokens.new_ones(tokens.shape[:2])
        rows = self.text_rows(step)
        if rows is not None:  # padded rows are masked out below; all-padding leaves self-similarity
            text, mask = rows
            queries = torch.cat([tokens, widen(text)], 1)
            valid = torch.cat([valid, mask.to(valid)], 1)
        attention = torch.softmax(torch.einsum("bqd,bkd->bqk", queries, tokens) / math.sqrt(self.width), -1)
        scores = torch.einsum("bqk,bq->bk", attention, valid) / valid.sum(1, keepdim=True)
        return scores.detach() if self.detach else scores


def build(config: HawaiiConfig, context: BuildContext) -> HawaiiScorer:
    """A scorer in the student's width D with a text projection from ``context.text_dim``."""
    if context.student_spec is None:
        raise KdkitError("hawaii scorer: the build context has no student grid (its width D is the score space)")
    widths = {t: s.channels for t, s in context.teacher_specs.items()}
    missing = [t for t in context.teacher_names if t not in widths]
    if config.project_tokens and missing:
        raise KdkitError(f"hawaii scorer: no aligned grid known for teachers {missing}; build their aligners first")
    return HawaiiScorer(
        context.student_spec.channels, context.text_dim, widths, config.hidden,
        config.project_tokens, config.use_text, config.detach,
    )


def example(tmp_dir: Path) -> Example:
    """Two tiny teachers, text with padding, per-teacher projections on."""
    from kdkit_plugins.losses._tiny_step import tiny_context, tiny_step

    context = tiny_context()
    return Example(
        config={"kind": "hawaii", "project_tokens": True, "hidden": 5}, context=context, inputs=(tiny_step(context), "t0")
    )


@hookimpl
def kdkit_scorers() -> dict[str, Factory]:
    return {"hawaii": Factory(config=HawaiiConfig, build=build, example=example)}

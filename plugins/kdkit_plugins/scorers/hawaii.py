"""HAWAII's text-aware token scores (arXiv 2506.19072, FGKD):
``s_i = mean_rows(softmax([Î_i ; T̂] Î_iᵀ / √D))``, a distribution over the m tokens of teacher i.

Each row of the softmax is a distribution of its own, so the teacher rows and the text rows may be
products in different spaces. ``text_space: projector`` (default) takes the text rows where the
instruction embeddings live and where a trained map already sends the tokens: the student's own projector
``P_S`` (features D -> LLM embeddings E), ``softmax(T · P_S(Î_i)ᵀ / √E)``, no new parameters.
``text_space: paper`` is the literal form, ``T̂ = P_T(T)`` with a 2-layer MLP that nothing trains while
the scores are detached (its rows compare unrelated spaces).
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
    text_space: Literal["projector", "paper"] = Field(
        "projector",
        description="Where the text rows meet the teacher tokens. projector: in the LLM embedding space, the "
        "instruction embeddings against the tokens passed through the student's own trained projector (no new "
        "parameters; needs a student with a `projector`). paper: the paper-literal T̂ = P_T(text), a 2-layer "
        "GELU MLP into D that no loss trains while the scores are detached.",
    )
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
        projector: ``text_space: projector``: the student's map ``(..., D) -> (..., E)`` into the space of the
            instruction embeddings. It stays the student's (not a sub-module of the scorer); None builds the
            paper's ``P_T`` instead.
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
        projector: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.width = width
        self.text_dim = text_dim if use_text else None
        self.detach = detach
        object.__setattr__(self, "projector", projector if self.text_dim else None)  # the student's: not registered
        self.text_projection = GeluMLP(text_dim, width, hidden) if self.text_dim and projector is None else None
        self.token_projections = nn.ModuleDict(
            {t: GeluMLP(c, width, hidden) for t, c in token_widths.items()} if project_tokens else {}
        )

    def text_rows(self, step: StepContext, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
        """Text queries ``(B, T, W)``, the keys they meet ``(B, m, W)`` and the mask ``(B, T)``; None without text.

        ``W`` is E (the instruction embeddings against ``projector(tokens)``) or D (``P_T(text)`` against
        the tokens, the paper's form).
        """
        if self.text_dim is None or step.text is None or step.text.shape[1] == 0:
            return None
        text = step.text.detach()
        if text.shape[-1] != self.text_dim:
            raise KdkitError(f"hawaii scorer: text embeddings are {text.shape[-1]} wide, the scorer was built for {self.text_dim}")
        mask = step.text_mask if step.text_mask is not None else torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)
        if self.projector is None:
            return widen(self.text_projection(text)), tokens, mask
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.detach):
            keys = self.projector(tokens.to(next(self.projector.parameters()).dtype))
        if keys.shape[-1] != text.shape[-1]:
            raise KdkitError(f"hawaii scorer: the student's projector gives {keys.shape[-1]} wide tokens, the "
                             f"instruction embeddings are {text.shape[-1]} wide; set text_space: paper")
        return widen(text), widen(keys), mask

    def forward(self, step: StepContext, teacher: str) -> Tensor:
        """``(B, m)`` scores for ``teacher`` (rows sum to 1)."""
        if self.detach and torch.is_grad_enabled():  # no loss reaches detached scores: build no graph to keep
            with torch.no_grad():
                return self.forward(step, teacher)
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
        rows = self.text_rows(step, tokens)
        tokens = widen(tokens)
        attention = torch.softmax(torch.einsum("bqd,bkd->bqk", tokens, tokens) / math.sqrt(self.width), -1)
        total, count = attention.sum(1), tokens.new_full(tokens.shape[:1], tokens.shape[1])[:, None]
        if rows is not None:  # padded rows are masked out; all-padding leaves the text-free formula exactly
            text, keys, mask = rows
            text_attention = torch.softmax(torch.einsum("bqe,bke->bqk", text, keys) / math.sqrt(keys.shape[-1]), -1)
            valid = mask.to(text_attention)
            total = total + torch.einsum("bqk,bq->bk", text_attention, valid)
            count = count + valid.sum(1, keepdim=True)
        scores = total / count
        return scores.detach() if self.detach else scores


def build(config: HawaiiConfig, context: BuildContext) -> HawaiiScorer:
    """A scorer in the student's width D; its text rows through the student's projector or the paper's ``P_T``."""
    if context.student_spec is None:
        raise KdkitError("hawaii scorer: the build context has no student grid (its width D is the score space)")
    projector = None
    if config.text_space == "projector" and config.use_text and context.text_dim:
        projector = getattr(context.extras.get("student"), "projector", None)
        if not isinstance(projector, nn.Module):
            raise KdkitError("hawaii scorer: text_space: projector needs a student with a `projector` (its map from "
                             "features into the instruction embeddings); this student has none, set text_space: paper")
    widths = {t: s.channels for t, s in context.teacher_specs.items()}
    missing = [t for t in context.teacher_names if t not in widths]
    if config.project_tokens and missing:
        raise KdkitError(f"hawaii scorer: no aligned grid known for teachers {missing}; build their aligners first")
    return HawaiiScorer(
        context.student_spec.channels, context.text_dim, widths, config.hidden,
        config.project_tokens, config.use_text, config.detach, projector,
    )


def example(tmp_dir: Path) -> Example:
    """Two tiny teachers, text with padding, per-teacher projections on, the paper's text projection."""
    from kdkit_plugins.losses._tiny_step import tiny_context, tiny_step

    context = tiny_context()
    return Example(
        config={"kind": "hawaii", "project_tokens": True, "hidden": 5, "text_space": "paper"}, context=context,
        inputs=(tiny_step(context), "t0"),
    )


@hookimpl
def kdkit_scorers() -> dict[str, Factory]:
    return {"hawaii": Factory(config=HawaiiConfig, build=build, example=example)}

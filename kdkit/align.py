"""Aligner chains: each teacher's grid mapped onto the student's token grid, step by step.

A chain is built from a teacher's ``align`` blocks. Every step is built with ``context.in_spec``
set to the previous step's ``out_spec``, so no shape appears in a recipe. The chain returns both
the teacher's "tokens" ``I_i^T`` (the grid just before the first projecting aligner) and its
aligned output ``Î_i^T`` (the full chain), flattened to ``(B, m, C)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import pydantic
import torch
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from kdkit.errors import KdkitError
from kdkit.interfaces import BuildContext, GridSpec

if TYPE_CHECKING:
    from kdkit.registry import Registry

__all__ = ["AlignedTokens", "AlignerChain", "build_aligner_chain"]


class AlignedTokens(NamedTuple):
    """A teacher's tokens on the student grid: ``tokens`` ``(B, m, C)`` and ``aligned`` ``(B, m, D)``."""

    tokens: Tensor
    aligned: Tensor


class AlignerChain(nn.Module):
    """``(B, H, W, C)`` teacher grid -> :class:`AlignedTokens` on the student's ``m`` tokens.

    Args:
        teacher: The teacher's name (for messages).
        steps: Built aligners, in order (each an ``nn.Module`` with ``out_spec`` and ``projects``).
        in_spec: The teacher's grid.

    Attributes:
        out_spec: Grid of the chain's output (``Î_i^T``).
        token_spec: Grid just before the first projecting aligner (``I_i^T``).
        token_steps: Number of leading steps that produce the tokens.
    """

    def __init__(self, teacher: str, steps: Sequence[nn.Module], in_spec: GridSpec) -> None:
        super().__init__()
        self.teacher = teacher
        self.in_spec = in_spec
        self.steps = nn.ModuleList(steps)
        specs = [in_spec] + [step.out_spec for step in steps]
        projecting = [i for i, step in enumerate(steps) if step.projects]
        self.token_steps = projecting[0] if projecting else len(steps)
        self.token_spec = specs[self.token_steps]
        self.out_spec = specs[-1]

    #: Keep only the chain's outputs for the backward and run it again there (set by
    #: :meth:`kdkit.engine.step.Distiller.enable_checkpointing`).
    checkpointed: bool = False

    def forward(self, grid: Tensor) -> AlignedTokens:
        """``(B, H, W, C)`` -> tokens ``(B, m, C')`` and aligned ``(B, m, D)``."""
        if self.checkpointed and torch.is_grad_enabled():
            return AlignedTokens(*checkpoint(self._run, grid, use_reentrant=False))
        return self._run(grid)

    def _run(self, grid: Tensor) -> AlignedTokens:
        tokens = grid
        for i, step in enumerate(self.steps):
            if i == self.token_steps:
                tokens = grid
            grid = step(grid)
        if self.token_steps == len(self.steps):
            tokens = grid
        flat = "b h w c -> b (h w) c"
        return AlignedTokens(rearrange(tokens, flat), rearrange(grid, flat))


def _kind(block: Any) -> str:
    kind = block.get("kind") if isinstance(block, Mapping) else getattr(block, "kind", None)
    return str(kind) if kind is not None else "?"


def _grid(spec: GridSpec) -> str:
    return f"{spec.height}x{spec.width}"


def build_aligner_chain(
    registry: Registry,
    teacher: str,
    blocks: Sequence[Any],
    teacher_spec: GridSpec,
    context: BuildContext,
) -> AlignerChain:
    """Build ``teacher``'s aligner chain and check that it reaches the student's token grid.

    Args:
        registry: Where the aligner factories are looked up.
        teacher: The teacher's name (messages name it and the failing step).
        blocks: The teacher's ``align`` blocks (dicts or validated configs), in order.
        teacher_spec: The teacher's ``out_spec``.
        context: Build context with ``student_spec`` set; each step gets a copy with ``name`` set to
            the teacher and ``in_spec`` set to the previous step's ``out_spec``.

    Raises:
        KdkitError: a step fails to build or declares no grid; the chain ends off the student's
            grid; or a projecting step runs before the student grid is reached.
    """
    student = context.student_spec
    if student is None:
        raise KdkitError(f"aligner chain of teacher {teacher!r}: the build context has no student grid")
    steps: list[nn.Module] = []
    spec = teacher_spec
    for i, block in enumerate(blocks):
        where = f"teachers.{teacher}.align[{i}] ({_kind(block)})"
        step_context = dataclasses.replace(context, name=teacher, in_spec=spec)
        try:
            step = registry.build("aligner", block, step_context)
        except (KdkitError, pydantic.ValidationError) as exc:
            raise KdkitError(f"{where}: {exc}") from exc
        if not isinstance(step, nn.Module) or not isinstance(getattr(step, "out_spec", None), GridSpec):
            raise KdkitError(f"{where}: the aligner must be an nn.Module declaring out_spec (a GridSpec)")
        if not hasattr(step, "projects"):
            raise KdkitError(f"{where}: the aligner must declare `projects` (True for learned projections)")
        if step.projects and not any(s.projects for s in steps) and _grid(spec) != _grid(student):
            raise KdkitError(
                f"{where}: projects the {_grid(spec)} grid before it reaches the student grid {_grid(student)}; "
                "put the resample / pixel_unshuffle steps before the first projecting aligner"
            )
        steps.append(step)
        spec = step.out_spec
    if _grid(spec) != _grid(student):
        path = " -> ".join([str(teacher_spec)] + [f"{_kind(b)} -> {s.out_spec}" for b, s in zip(blocks, steps)])
        hints = [
            f"teachers.{teacher}.align[{i}] ({_kind(b)}): {hint}"
            for i, (b, s) in enumerate(zip(blocks, steps))
            if callable(getattr(s, "suggest", None)) and (hint := s.suggest(student))
        ]
        message = (
            f"aligner chain of teacher {teacher!r} ends on a {_grid(spec)} grid, but the student's token grid is "
            f"{_grid(student)} ({path})"
        )
        if hints:
            message += "; " + "; ".join(hints)
        elif not steps:
            message += "; add align steps (e.g. resample, pixel_unshuffle, mlp)"
        raise KdkitError(message)
    return AlignerChain(teacher, steps, teacher_spec)

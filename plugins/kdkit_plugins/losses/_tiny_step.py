"""Tiny, seeded build and step contexts for the examples of scorers and losses (and their tests)."""

from __future__ import annotations

import torch

from kdkit import BuildContext, GridSpec, StepContext
from kdkit.interfaces import RouterOutput


def tiny_context(
    teachers: tuple[str, ...] = ("t0", "t1"),
    grid: tuple[int, int] = (2, 3),
    width: int = 8,
    raw_widths: tuple[int, ...] | None = None,
    text_dim: int | None = 6,
    name: str = "term",
) -> BuildContext:
    """A build context for ``teachers`` on a ``grid`` student of width ``width``.

    Teacher i's raw grid is twice the student grid with ``raw_widths[i]`` channels (default 2 + i);
    its tokens (after a pixel unshuffle by 2) are 4x as wide; its aligned output has width ``width``.
    """
    raw_widths = raw_widths or tuple(2 + i for i in range(len(teachers)))
    h, w = grid
    return BuildContext(
        name=name,
        teacher_names=teachers,
        teacher_specs={t: GridSpec(h, w, width) for t in teachers},
        teacher_token_specs={t: GridSpec(h, w, 4 * c) for t, c in zip(teachers, raw_widths)},
        student_spec=GridSpec(h, w, width),
        text_dim=text_dim,
        extras={"raw_specs": {t: GridSpec(2 * h, 2 * w, c, 1) for t, c in zip(teachers, raw_widths)}},
    )


def tiny_step(context: BuildContext, batch: int = 2, text_len: int = 4, classes: int = 5, seed: int = 0) -> StepContext:
    """A random step context matching ``context`` (the second sample's text is half padding)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    student = context.student_spec
    assert student is not None
    m, d = student.tokens, student.channels
    raw = context.extras["raw_specs"]
    text_mask = torch.ones(batch, text_len, dtype=torch.bool)
    text_mask[1:, text_len // 2 :] = False
    routers = [
        RouterOutput(block, group, torch.softmax(randn(batch * m, experts), -1), torch.randint(experts, (batch * m,), generator=gen))
        for block in ("blocks.0.mlp", "blocks.1.mlp")
        for group, experts in (("teacher", len(context.teacher_names)), ("general", 3))
    ]
    return StepContext(
        teacher_names=context.teacher_names,
        teacher_grids={t: randn(batch, s.height, s.width, s.channels) for t, s in raw.items()},
        teacher_prefix={t: randn(batch, 1, s.channels) for t, s in raw.items()},
        teacher_tokens={t: randn(batch, m, s.channels) for t, s in context.teacher_token_specs.items()},
        teacher_aligned={t: randn(batch, m, s.channels) for t, s in context.teacher_specs.items()},
        student_routed=randn(batch, m, d),
        student_forced={t: randn(batch, m, d) for t in context.teacher_names},
        routers=routers,
        text=randn(batch, text_len, context.text_dim) if context.text_dim else None,
        text_mask=text_mask if context.text_dim else None,
        logits=randn(batch, classes),
        teacher_logits={t: randn(batch, classes) for t in context.teacher_names},
        labels=torch.randint(classes, (batch,), generator=gen),
        task_loss=randn(()).abs(),
        scores={t: torch.softmax(randn(batch, m), -1) for t in context.teacher_names},
    )

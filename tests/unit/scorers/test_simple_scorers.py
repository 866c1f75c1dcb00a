"""uniform and cls_attention scorers: exact weights, pooling onto the student grid, clear errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdkit.errors import KdkitError
from kdkit_plugins.losses._tiny_step import tiny_context, tiny_step
from kdkit_plugins.scorers import cls_attention, uniform


def test_uniform_is_one_over_m() -> None:
    context = tiny_context()
    scores = uniform.build(uniform.UniformConfig(), context)(tiny_step(context), "t0")
    assert torch.equal(scores, torch.full((2, 6), 1 / 6))


def test_cls_attention_matches_formula_pooled_onto_student_grid() -> None:
    context = tiny_context()  # raw grids are 4x6, the student grid 2x3: each student token pools 2x2
    step = tiny_step(context)
    step.teacher_grids = {t: g.double() for t, g in step.teacher_grids.items()}
    step.teacher_prefix = {t: p.double() for t, p in step.teacher_prefix.items()}
    scorer = cls_attention.build(cls_attention.ClsAttentionConfig(temperature=0.5), context)
    grid, cls = step.teacher_grids["t1"], step.teacher_prefix["t1"][:, 0]
    b, h, w, c = grid.shape
    logits = (grid.reshape(b, h * w, c) @ cls[:, :, None])[..., 0] / (math.sqrt(c) * 0.5)
    weights = torch.softmax(logits, -1).reshape(b, h, w)
    pooled = weights.reshape(b, 2, 2, 3, 2).sum((2, 4)).reshape(b, 6)  # mass of each 2x2 block
    assert torch.allclose(scorer(step, "t1"), pooled, atol=1e-6)


def test_cls_attention_reference_teacher_scores_every_teacher() -> None:
    context = tiny_context()
    step = tiny_step(context)
    scorer = cls_attention.build(cls_attention.ClsAttentionConfig(reference="t0"), context)
    assert torch.equal(scorer(step, "t1"), scorer(step, "t0"))


def test_cls_attention_without_prefix_or_unknown_reference_fails_clearly() -> None:
    context = tiny_context()
    step = tiny_step(context)
    del step.teacher_prefix["t1"]
    scorer = cls_attention.build(cls_attention.ClsAttentionConfig(), context)
    with pytest.raises(KdkitError, match="teacher 't1' has no CLS \\(prefix\\) token; set `reference`"):
        scorer(step, "t1")
    with pytest.raises(KdkitError, match="reference teacher 'clip' is not in the recipe \\(teachers: t0, t1\\)"):
        cls_attention.build(cls_attention.ClsAttentionConfig(reference="clip"), context)


def test_cls_attention_upsamples_small_grids_and_stays_a_distribution() -> None:
    context = tiny_context(grid=(4, 6))
    step = tiny_step(context)
    step.teacher_grids["t0"] = F.avg_pool2d(step.teacher_grids["t0"].permute(0, 3, 1, 2), 4).permute(0, 2, 3, 1)
    scores = cls_attention.build(cls_attention.ClsAttentionConfig(), context)(step, "t0")
    assert scores.shape == (2, 24) and torch.allclose(scores.sum(-1), torch.ones(2)) and (scores >= 0).all()

"""Optimizer groups (no decay on norms and biases) and learning-rate schedules."""

from __future__ import annotations

import pytest
from torch import nn

from kdkit.engine.optim import lr_factor, make_optimizer
from kdkit.recipe.schema import Optimizer, Schedule


def test_no_weight_decay_on_norms_and_biases() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    model[2].requires_grad_(False)
    opt = make_optimizer(model, Optimizer(lr=1e-3, weight_decay=0.1))
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and [p.shape for p in decayed["params"]] == [model[0].weight.shape]
    assert plain["weight_decay"] == 0.0 and len(plain["params"]) == 3  # bias, norm weight, norm bias


def test_cosine_with_warmup() -> None:
    schedule = Schedule(name="cosine", warmup_ratio=0.2, min_lr_ratio=0.1)
    factors = [lr_factor(s, 10, schedule) for s in range(10)]
    assert factors[:2] == pytest.approx([1 / 3, 2 / 3])
    assert factors[2] == pytest.approx(1.0)
    assert factors[6] == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the decay
    assert all(a >= b for a, b in zip(factors[2:], factors[3:]))


def test_linear_and_constant() -> None:
    assert lr_factor(5, 10, Schedule(name="linear", warmup_ratio=0.0)) == pytest.approx(0.5)
    assert lr_factor(9, 10, Schedule(name="constant", warmup_ratio=0.0)) == 1.0

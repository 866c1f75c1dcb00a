"""A stage's optimizer (AdamW or SGD; no weight decay on norms and biases) and its schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from kdkit.recipe.schema import Optimizer, Schedule


def decays(name: str, param: torch.Tensor) -> bool:
    """Whether weight decay applies: matrices and stacked experts, never norms, biases or scalars."""
    return param.ndim >= 2 and not name.endswith("bias") and "norm" not in name.lower()


def make_optimizer(model: nn.Module, config: Optimizer) -> torch.optim.Optimizer:
    """The optimizer over ``model``'s parameters that require grad, in two decay groups."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in params if decays(n, p)], "weight_decay": config.weight_decay},
        {"params": [p for n, p in params if not decays(n, p)], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if config.name == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)


def lr_factor(step: int, total: int, config: Schedule) -> float:
    """Multiplier of the peak learning rate after ``step`` of ``total`` optimizer steps.

    Linear warmup over ``warmup_ratio * total`` steps (at least one when the ratio is positive),
    then cosine, linear or constant decay to ``min_lr_ratio``.
    """
    warmup = math.ceil(config.warmup_ratio * total) if config.warmup_ratio > 0 else 0
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if config.name == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    low = config.min_lr_ratio
    if config.name == "linear":
        return low + (1.0 - low) * (1.0 - progress)
    return low + (1.0 - low) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, config: Schedule, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A :class:`~torch.optim.lr_scheduler.LambdaLR` following :func:`lr_factor`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, config))

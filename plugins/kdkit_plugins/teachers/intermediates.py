"""Layer taking through ``forward_intermediates`` (timm models and open_clip towers share the API)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from kdkit.teacher import pick_layer


def accepts(function: Callable[..., Any], argument: str) -> bool:
    """Whether ``function`` takes a keyword ``argument``."""
    return argument in inspect.signature(function).parameters


def count_layers(forward_intermediates: Callable[..., Any], size: tuple[int, int], dtype: torch.dtype) -> int:
    """How many layers ``forward_intermediates`` can return, traced with fake tensors (no compute)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True):
        out = forward_intermediates(torch.empty(1, 3, *size, dtype=dtype), indices=None, intermediates_only=True)
    return len(out["image_intermediates"] if isinstance(out, dict) else out)


def take_layer(forward_intermediates: Callable[..., Any], size: tuple[int, int], dtype: torch.dtype,
               layer: int, teacher: str) -> int:
    """Non-negative index of ``layer`` after checking it against the model's depth."""
    return pick_layer(layer, count_layers(forward_intermediates, size, dtype), teacher, what="layers")


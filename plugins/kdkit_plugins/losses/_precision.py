"""Loss and score arithmetic runs in at least float32 (bf16/fp16 inputs are widened, float64 kept)."""

from __future__ import annotations

import torch
from torch import Tensor


def widen(x: Tensor) -> Tensor:
    """``x`` as float32, or unchanged when it is already float32 or float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))

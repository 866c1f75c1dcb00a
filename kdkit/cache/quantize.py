"""Storage dtypes of cached teacher outputs: fp32 (exact), bf16, fp16, and int8 with per-channel scales.

int8 stores ``round(x / s)`` with one scale ``s = max|x| / 127`` per sample and channel (the
channel's largest magnitude over the sample's tokens), so each channel keeps its own range.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Storage dtype names -> torch dtypes.
STORAGE: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
                                    "int8": torch.int8}


def encode(values: Tensor, dtype: str) -> dict[str, Tensor]:
    """``(N, ..., C)`` float values -> ``{"values": stored, "scale": (N, C) float32}`` (scale only for int8)."""
    values = values.detach().cpu()
    if dtype != "int8":
        return {"values": values.to(STORAGE[dtype]).contiguous()}
    wide = values.float()
    dims = tuple(range(1, wide.dim() - 1))
    peak = wide.abs().amax(dim=dims) if dims else wide.abs()
    scale = (peak / 127.0).clamp_min(torch.finfo(torch.float32).tiny)
    shape = (wide.shape[0],) + (1,) * len(dims) + (wide.shape[-1],)
    stored = torch.round(wide / scale.reshape(shape)).clamp(-127, 127).to(torch.int8)
    return {"values": stored.contiguous(), "scale": scale.contiguous()}


def decode(stored: Tensor, scale: Tensor | None, dtype: torch.dtype) -> Tensor:
    """Inverse of :func:`encode`, in ``dtype`` (the teacher's own output dtype)."""
    if scale is None:
        return stored.to(dtype)
    shape = (stored.shape[0],) + (1,) * (stored.dim() - 2) + (stored.shape[-1],)
    return (stored.float() * scale.reshape(shape)).to(dtype)


def relative_error(values: Tensor, dtype: str) -> float:
    """``||x - decode(encode(x))|| / ||x||`` over ``values`` (0 for fp32)."""
    wide = values.detach().cpu().float()
    coded = encode(wide, dtype)
    back = decode(coded["values"], coded.get("scale"), torch.float32)
    norm = torch.linalg.vector_norm(wide)
    return float(torch.linalg.vector_norm(wide - back) / norm) if norm > 0 else 0.0

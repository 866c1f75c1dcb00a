"""Tiny teachers of every built-in kind (their recipe fields) and seeded raw views."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kdkit import BuildContext
from kdkit_plugins.teachers import tiny

#: name -> (writer of the tiny checkpoint, extra recipe fields)
TINY: dict[str, tuple[Callable[[Path], dict[str, Any]], dict[str, Any]]] = {
    "open_clip_vit": (lambda d: tiny.write_tiny_open_clip(d, "vit"), {}),
    "open_clip_convnext": (lambda d: tiny.write_tiny_open_clip(d, "convnext"), {"layer": -1}),
    "hf_clip": (tiny.write_tiny_hf_clip, {}),
    "timm_eva02": (tiny.write_tiny_timm, {}),
    "timm_convnext": (lambda d: tiny.write_tiny_timm(d, *tiny.TINY_CONVNEXT), {"resolution": 64, "layer": -2}),
    "sam_neck": (tiny.write_tiny_sam, {}),
    "sam_blocks": (tiny.write_tiny_sam, {"output": "blocks", "layer": 0}),
    "pix2struct": (tiny.write_tiny_pix2struct, {}),
    "module": (tiny.write_tiny_module, {}),
}


def build_teacher(registry: Any, config: dict[str, Any], name: str = "t") -> Any:
    """Build a teacher through the registry, as the engine does."""
    return registry.build("teacher", config, BuildContext(name=name))


def images(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Seeded raw views in [0, 1]."""
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))

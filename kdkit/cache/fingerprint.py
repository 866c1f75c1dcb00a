"""What makes a cache entry valid: a fingerprint of the teacher and a digest of each sample's image.

A teacher's fingerprint is its plugin kind and config (every field, defaults included: model,
layer, resolution, normalisation, dtype...), the digest of every file or folder its config names
(the checkpoint), its declared output grid, and the kdkit plugins' version. A sample's digest is
a BLAKE2b hash of its raw view ``(3, H, W)`` as the data plugin produced it (image bytes, padding
and resizing included).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kdkit.interfaces import BuildContext, GridSpec

#: Bytes of a sample digest.
DIGEST_BYTES = 16


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}", item, out)
    else:
        out[prefix] = json.dumps(value, sort_keys=True)


def path_digest(path: Path) -> str:
    """BLAKE2b of a file's bytes, or of every file of a folder (relative names and bytes, sorted)."""
    digest = hashlib.blake2b(digest_size=16)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with open(file, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def teacher_fingerprint(config: Mapping[str, Any], context: BuildContext, spec: GridSpec | None) -> dict[str, str]:
    """``{field: value}`` identifying one teacher's outputs (``config.<name>``, ``checkpoint.<name>``, ``grid``...).

    Args:
        config: The teacher's plugin config (``model_dump(mode="json")``), ``kind`` included.
        context: Resolves the config's relative paths.
        spec: The teacher's declared raw output grid (None: not recorded).
    """
    import kdkit

    fields: dict[str, str] = {"version": kdkit.__version__}
    _flatten("config", dict(config), fields)
    for key, value in config.items():
        if isinstance(value, str) and value:
            path = context.resolve(value)
            if path.exists():
                fields[f"checkpoint.{key}"] = path_digest(path)
    if spec is not None:
        fields["grid"] = f"{spec.height}x{spec.width}x{spec.channels}+{spec.prefix_tokens}"
    return fields


def differing(stored: Mapping[str, str], live: Mapping[str, str]) -> list[str]:
    """Names of the fields that differ (or exist on one side only), sorted."""
    return sorted(k for k in set(stored) | set(live) if stored.get(k) != live.get(k))


def sample_digests(images: Tensor) -> np.ndarray:
    """``(B, 3, H, W)`` raw views -> ``(B, 16)`` uint8 BLAKE2b digests of their float32 bytes."""
    views = images.detach().to("cpu", torch.float32).contiguous().numpy()
    return np.stack([np.frombuffer(hashlib.blake2b(view.tobytes(), digest_size=DIGEST_BYTES).digest(), dtype=np.uint8)
                     for view in views]) if len(views) else np.zeros((0, DIGEST_BYTES), dtype=np.uint8)

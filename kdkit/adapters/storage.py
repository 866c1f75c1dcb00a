"""Adapter weights on disk: one safetensors file plus a JSON file with the config they fit.

Layout of an adapter directory::

    adapter.safetensors   the adapter's own tensors (LoRA A/B, routers), nothing of the base
    adapter.json          {"format", "kind", "config", "teacher_names", "shapes"}
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from kdkit.errors import CheckpointError

FORMAT = 1
WEIGHTS = "adapter.safetensors"
CONFIG = "adapter.json"


def save_adapter(
    path: str | Path,
    tensors: Mapping[str, torch.Tensor],
    *,
    kind: str,
    config: Mapping[str, Any],
    teacher_names: Sequence[str],
) -> Path:
    """Write ``tensors`` and their description into the directory ``path``; returns it."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    meta = {
        "format": FORMAT,
        "kind": kind,
        "config": dict(config),
        "teacher_names": list(teacher_names),
        "shapes": {name: list(t.shape) for name, t in state.items()},
    }
    save_file(state, str(directory / WEIGHTS), metadata={"kind": kind})
    (directory / CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def read_adapter_config(path: str | Path) -> dict[str, Any]:
    """The JSON description saved with an adapter (``kind``, ``config``, ``teacher_names``...).

    Raises:
        CheckpointError: the directory or its files are missing or unreadable.
    """
    file = Path(path) / CONFIG
    if not file.is_file() or not (Path(path) / WEIGHTS).is_file():
        raise CheckpointError(f"{path} is not an adapter directory: it needs {WEIGHTS} and {CONFIG}")
    try:
        meta = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{file} is not valid JSON: {exc}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{file} has adapter format {meta.get('format')!r}; this kdkit reads format {FORMAT}")
    return meta


def load_adapter(
    path: str | Path,
    expected: Mapping[str, torch.Tensor],
    *,
    kind: str,
    teacher_names: Sequence[str],
) -> dict[str, torch.Tensor]:
    """Read adapter tensors saved by :func:`save_adapter` and check they fit ``expected``.

    Args:
        path: The adapter directory.
        expected: The live adapter's tensors by name (only names and shapes are used).
        kind: The live adapter's plugin kind.
        teacher_names: The live adapter's teacher experts, in order.

    Raises:
        CheckpointError: another adapter kind, another teacher set or order, missing or
            unexpected tensors, or a shape mismatch; each named in the message.
    """
    meta = read_adapter_config(path)
    if meta["kind"] != kind:
        raise CheckpointError(f"{path} holds a {meta['kind']!r} adapter; this model has a {kind!r} adapter")
    saved_teachers = tuple(meta.get("teacher_names", ()))
    if saved_teachers != tuple(teacher_names):
        raise CheckpointError(
            f"{path} was saved for teachers {list(saved_teachers)} but this adapter has teachers "
            f"{list(teacher_names)}; build the adapter with the same teachers, in the same order"
        )
    tensors = load_file(str(Path(path) / WEIGHTS))
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit this adapter: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''} "
            "(were the weights saved for another model or other target patterns?)"
        )
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(
                f"{path}: tensor {name!r} has shape {tuple(tensor.shape)} but this adapter needs "
                f"{tuple(expected[name].shape)} (another rank, expert count or model width?)"
            )
    return tensors

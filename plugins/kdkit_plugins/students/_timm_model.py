"""timm model plumbing for the ``timm`` student: creation, input size, layer shapes, export."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdkit.errors import KdkitError

#: File names of timm's own on-disk format (as ``save_for_hf`` writes it).
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def create(name: str, kwargs: Mapping[str, Any]) -> nn.Module:
    """``timm.create_model(name, **kwargs)`` without pretrained weights; it must offer ``forward_intermediates``."""
    import timm

    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise KdkitError(f"student: timm cannot create {name!r} with student.model_kwargs {dict(kwargs)}: {exc}") from None
    missing = [m for m in ("forward_intermediates", "forward_head", "feature_info") if not hasattr(model, m)]
    if missing:
        raise KdkitError(f"student: timm model {name!r} has no {', '.join(missing)}; choose a timm classifier "
                         "that supports forward_intermediates (ViT, ResNet, ConvNeXt, EVA, Swin...)")
    return model


def input_size(model: nn.Module, image_size: int | None, kwargs: Mapping[str, Any]) -> tuple[int, int]:
    """The student's input ``(height, width)``: the recipe's, else the size the model was built for."""
    if image_size is not None:
        return (image_size, image_size)
    size = kwargs.get("img_size")
    if size is None:  # a model with a fixed patch grid knows its size; a CNN falls back to its pretrained config
        patch_embed = getattr(model, "patch_embed", None)
        size = getattr(patch_embed, "img_size", None) or model.pretrained_cfg["input_size"][1:]
    if isinstance(size, int):
        return (size, size)
    height, width = size
    return (int(height), int(width))


def layer_shapes(model: nn.Module, size: tuple[int, int]) -> list[tuple[int, int, int]]:
    """``(channels, height, width)`` of every ``forward_intermediates`` output at ``size``.

    Traced with fake tensors in eval mode (no compute; batch-norm statistics untouched).

    Raises:
        KdkitError: the model cannot take ``size``.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True):
            outputs = model.forward_intermediates(torch.empty(1, 3, *size), indices=None, output_fmt="NCHW",
                                                 intermediates_only=True)
            shapes = [tuple(int(n) for n in out.shape[1:]) for out in outputs]
    except (RuntimeError, ValueError, AssertionError, IndexError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise KdkitError(f"student: the model cannot take {size[0]}x{size[1]} inputs ({reason}); set "
                         "student.image_size (or student.model_kwargs.img_size) to a size it supports") from None
    finally:
        model.train(was_training)
    return shapes  # type: ignore[return-value]


def export_weights(model: nn.Module, directory: Path) -> str:
    """Write ``model`` as timm does (``model.safetensors`` + ``config.json``); returns the weights file name.

    The directory then loads with ``timm.create_model("local-dir:<directory>", pretrained=True)``
    as well as through ``load_state_dict``.
    """
    from timm.models import save_for_hf

    directory.mkdir(parents=True, exist_ok=True)
    save_for_hf(model, str(directory), safe_serialization=True)
    return WEIGHTS_FILE

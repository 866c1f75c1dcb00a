"""Frozen teachers: the shared wrapper every teacher plugin builds on.

A :class:`FrozenTeacher` owns a model that never trains (eval mode for life, no gradients, kept
out of optimizers), does its own batched preprocessing of the one shared raw view, runs in its
own dtype, and returns a :class:`~kdkit.interfaces.TeacherOutput` whose grid shape is known at
build time (:attr:`FrozenTeacher.out_spec`).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F

from kdkit.config import PluginConfig
from kdkit.errors import KdkitError
from kdkit.interfaces import GridSpec, TeacherOutput

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "DTYPES",
    "FrozenTeacher",
    "Preprocess",
    "TeacherConfig",
    "frozen_prefixes",
    "is_frozen_teacher",
    "pick_layer",
    "size_pair",
    "without_frozen",
]

#: Recipe dtype names -> torch dtypes.
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}


class TeacherConfig(PluginConfig):
    """Options every teacher shares: input size, dtype and preprocessing overrides."""

    resolution: int | tuple[int, int] | None = Field(
        None, description="Input size the shared view is resized to (one int for square, or [height, width]); "
        "default: the model's own input size.")
    dtype: Literal["fp32", "bf16"] = Field("fp32", description="Dtype the teacher's weights and forward run in.")
    mean: tuple[float, float, float] | None = Field(
        None, description="Per-channel normalisation mean on [0, 1] pixels; default: from the model's own config.")
    std: tuple[float, float, float] | None = Field(
        None, description="Per-channel normalisation std on [0, 1] pixels; default: from the model's own config.")
    interpolation: Literal["bicubic", "bilinear", "nearest"] = Field(
        "bicubic", description="How the shared view is resized to the teacher's resolution (antialiased).")


def size_pair(size: int | Sequence[int]) -> tuple[int, int]:
    """``224`` or ``(224, 224)`` -> ``(224, 224)``."""
    if isinstance(size, int):
        return (size, size)
    height, width = size
    return (int(height), int(width))


def pick_layer(layer: int, depth: int, teacher: str, what: str = "blocks") -> int:
    """Non-negative index of ``layer`` (negative counts from the end) among ``depth`` layers.

    Raises:
        KdkitError: the index is out of range (the valid range is given).
    """
    if not -depth <= layer < depth:
        raise KdkitError(f"teacher {teacher!r}: layer {layer} is out of range; the model has {depth} {what}, "
                         f"so use an index in [{-depth}, {depth - 1}] (negative counts from the last)")
    return layer % depth


class Preprocess(nn.Module):
    """``(B, 3, H, W)`` in [0, 1] -> ``(B, 3, h, w)`` resized to the teacher's size and normalised.

    Args:
        size: Target ``(height, width)``.
        mean: Per-channel mean on [0, 1] pixels.
        std: Per-channel std on [0, 1] pixels.
        interpolation: ``bicubic``, ``bilinear`` or ``nearest``.
    """

    def __init__(self, size: tuple[int, int], mean: Sequence[float], std: Sequence[float],
                 interpolation: str = "bicubic") -> None:
        super().__init__()
        self.size = size
        self.interpolation = interpolation
        # Buffers, so they follow the teacher across devices; persistent like the weights they belong to.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(3, 1, 1))

    def forward(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B, 3, h, w)`` float32."""
        images = images.float()
        if tuple(images.shape[-2:]) != self.size:
            smooth = self.interpolation != "nearest"
            images = F.interpolate(images, size=self.size, mode=self.interpolation, antialias=smooth,
                                   align_corners=False if smooth else None).clamp_(0.0, 1.0)
        return (images - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"size={self.size}, interpolation={self.interpolation!r}"


class FrozenTeacher(nn.Module, abc.ABC):
    """A frozen feature extractor: ``(B, 3, H, W)`` raw view in [0, 1] -> :class:`TeacherOutput`.

    Subclasses implement :meth:`encode` (normalised pixels at the teacher's size -> grid and
    prefix). This class freezes the model, keeps it in eval mode even after ``.train()``, runs
    ``encode`` under ``no_grad`` with autocast off (the teacher's own dtype governs), and infers
    :attr:`out_spec` by tracing ``encode`` with fake tensors (no data, no compute); build
    functions read it once so that a resolution the model cannot take fails at build time.

    Its ``state_dict`` keeps the teacher's weights (so ``.to()``, ``load_state_dict`` and
    inspection behave as for any module); :func:`without_frozen` removes them from a training
    checkpoint, and since no parameter requires grad, an optimizer built from trainable parameters
    never sees them.

    Args:
        model: The teacher network (moved to ``dtype`` and frozen here).
        preprocess: Resize + normalise for this teacher.
        name: The teacher's name in the recipe (for messages).
        dtype: Dtype of the weights and the forward pass.
        out_spec: The grid shape, when the plugin derives it analytically; else inferred.
    """

    #: Marks modules the engine must keep out of optimizers and training checkpoints.
    frozen_teacher: ClassVar[bool] = True

    def __init__(self, model: nn.Module, preprocess: Preprocess, name: str = "",
                 dtype: torch.dtype = torch.float32, out_spec: GridSpec | None = None) -> None:
        super().__init__()
        self.model = model.to(dtype).eval().requires_grad_(False)
        self.preprocess = preprocess
        self.name = name
        self.dtype = dtype
        super().train(False)
        self._out_spec = out_spec

    @property
    def out_spec(self) -> GridSpec:
        """Grid shape of :meth:`forward`'s output, traced once (without data) on first access."""
        if self._out_spec is None:
            self._out_spec = self.infer_spec()
        return self._out_spec

    @abc.abstractmethod
    def encode(self, pixels: Tensor) -> TeacherOutput:
        """``(B, 3, h, w)`` normalised pixels in the teacher's dtype -> grid ``(B, H, W, C)``, prefix, logits.

        The one method a teacher subclass writes.
        """

    def train(self, mode: bool = True) -> FrozenTeacher:
        """Stay in eval mode whatever ``mode`` says (dropout/drop-path would make targets random)."""
        return super().train(False)

    def forward(self, images: Tensor) -> TeacherOutput:
        """``(B, 3, H, W)`` in [0, 1] -> float32 grid ``(B, H_t, W_t, C_t)``, prefix ``(B, P, C_t)`` and logits ``(B, K)`` (or None)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise KdkitError(f"teacher {self.name!r} takes (B, 3, H, W) images in [0, 1], got {tuple(images.shape)}")
        with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
            pixels = self.preprocess(images).to(self.dtype)
            out = self.encode(pixels)
        return TeacherOutput(*(None if t is None else t.float() for t in out))

    def infer_spec(self) -> GridSpec:
        """The grid shape of :meth:`encode` at this teacher's size, traced with fake tensors."""
        from torch._subclasses.fake_tensor import FakeTensorMode

        height, width = self.preprocess.size
        try:
            with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True):
                pixels = torch.empty(1, 3, height, width, dtype=self.dtype)
                grid, prefix = self.encode(pixels)[:2]
        except (RuntimeError, ValueError, AssertionError, IndexError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise KdkitError(f"teacher {self.name!r}: the model cannot take {height}x{width} inputs ({reason}); "
                             "set `resolution` to a size it supports (default: its own)") from None
        if grid.ndim != 4 or grid.shape[0] != 1:
            raise KdkitError(f"teacher {self.name!r}: encode() must return a (B, H, W, C) grid, got {tuple(grid.shape)}")
        _, rows, cols, channels = grid.shape
        return GridSpec(int(rows), int(cols), int(channels), 0 if prefix is None else int(prefix.shape[1]))

    def extra_repr(self) -> str:
        return f"name={self.name!r}, out_spec={self.out_spec}, dtype={self.dtype}"


def is_frozen_teacher(module: nn.Module) -> bool:
    """Whether ``module`` is a frozen teacher (built on :class:`FrozenTeacher` or flagged alike)."""
    return bool(getattr(module, "frozen_teacher", False))


def frozen_prefixes(model: nn.Module) -> list[str]:
    """State-dict prefixes (``"teachers.clip."``) of every frozen teacher inside ``model``."""
    prefixes: list[str] = []
    for name, module in model.named_modules():
        if is_frozen_teacher(module) and not any(name.startswith(p) for p in prefixes):
            prefixes.append(f"{name}." if name else "")
    return prefixes


def without_frozen(state: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """``state`` (of ``model``) without the entries of its frozen teachers: what a training checkpoint keeps."""
    prefixes: Iterable[str] = frozen_prefixes(model)
    return {k: v for k, v in state.items() if not any(k.startswith(p) for p in prefixes)}

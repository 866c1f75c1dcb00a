"""Resample a token grid to a target grid (bilinear, bicubic, area or nearest).

HAWAII (arXiv 2506.19072) resamples each teacher's grid to ``(24 r)^2`` before a pixel unshuffle by r.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch.nn.functional as F
from einops import rearrange
from pydantic import Field
from torch import Tensor, nn

from kdkit import BuildContext, Example, Factory, GridSpec, PluginConfig, hookimpl
from kdkit.errors import KdkitError


class ResampleConfig(PluginConfig):
    """Resample the grid to a target height x width; the target defaults to the student's grid."""

    kind: Literal["resample"] = "resample"
    size: tuple[int, int] | None = Field(
        None, description="Target (height, width); null takes the student's grid times `scale`."
    )
    scale: int = Field(
        1, ge=1, description="With `size: null`, resample to the student's grid times this factor "
        "(pair it with a pixel_unshuffle of the same factor).",
    )
    mode: Literal["bilinear", "bicubic", "area", "nearest"] = Field(
        "bilinear", description="Interpolation; `area` averages (adaptive average pooling) when shrinking."
    )
    antialias: bool = Field(False, description="Anti-alias when shrinking (bilinear and bicubic only).")


class Resample(nn.Module):
    """``(B, H, W, C) -> (B, H', W', C)`` by interpolation; an identity when the sizes agree.

    Args:
        in_spec: Input grid.
        size: Target ``(H', W')``.
        mode: Interpolation mode of :func:`torch.nn.functional.interpolate`.
        antialias: Anti-alias when shrinking.
    """

    projects = False

    def __init__(self, in_spec: GridSpec, size: tuple[int, int], mode: str = "bilinear", antialias: bool = False) -> None:
        super().__init__()
        self.in_spec = in_spec
        self.out_spec = GridSpec(size[0], size[1], in_spec.channels, in_spec.prefix_tokens)
        self.mode = mode
        self.antialias = antialias and mode in ("bilinear", "bicubic")

    def forward(self, grid: Tensor) -> Tensor:
        """``(B, H, W, C) -> (B, H', W', C)``."""
        size = (self.out_spec.height, self.out_spec.width)
        if tuple(grid.shape[1:3]) == size:
            return grid
        images = rearrange(grid, "b h w c -> b c h w")
        corners = False if self.mode in ("bilinear", "bicubic") else None
        images = F.interpolate(images, size=size, mode=self.mode, align_corners=corners, antialias=self.antialias)
        return rearrange(images, "b c h w -> b h w c")


def build(config: ResampleConfig, context: BuildContext) -> Resample:
    """A resampler from ``context.in_spec`` to ``size`` (or the student's grid times ``scale``)."""
    if context.in_spec is None:
        raise KdkitError(f"resample aligner of {context.name!r}: the build context has no in_spec")
    size = config.size
    if size is None:
        if context.student_spec is None:
            raise KdkitError(
                f"resample aligner of {context.name!r}: size is null and there is no student grid to "
                "resample to; set size: [height, width]"
            )
        size = (context.student_spec.height * config.scale, context.student_spec.width * config.scale)
    if min(size) < 1:
        raise KdkitError(f"resample aligner of {context.name!r}: size must be positive, got {list(size)}")
    return Resample(context.in_spec, tuple(size), config.mode, config.antialias)


def example(tmp_dir: Path) -> Example:
    """A 6x6x5 grid resampled to twice the 2x2 student grid (4x4)."""
    context = BuildContext(name="t0", in_spec=GridSpec(6, 6, 5), student_spec=GridSpec(2, 2, 8))
    return Example(config={"kind": "resample", "scale": 2}, context=context)


@hookimpl
def kdkit_aligners() -> dict[str, Factory]:
    return {"resample": Factory(config=ResampleConfig, build=build, example=example)}

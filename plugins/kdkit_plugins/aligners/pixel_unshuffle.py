"""Pixel unshuffle of a token grid: ``(H r) x (W r) x C -> H x W x (C r^2)`` (HAWAII, arXiv 2506.19072).

Channels are ordered as :func:`torch.nn.functional.pixel_unshuffle` orders them: ``c * r^2 + i * r + j``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from einops import rearrange
from pydantic import Field
from torch import Tensor, nn

from kdkit import BuildContext, Example, Factory, GridSpec, PluginConfig, hookimpl
from kdkit.errors import KdkitError


class PixelUnshuffleConfig(PluginConfig):
    """Fold r x r neighbourhoods of the grid into channels (fewer tokens, r^2 times wider)."""

    kind: Literal["pixel_unshuffle"] = "pixel_unshuffle"
    factor: int | None = Field(
        None, ge=1, description="Unshuffle factor r; null derives it as (input grid) / (student grid)."
    )


def divisors(n: int) -> list[int]:
    """Divisors of ``n`` greater than 1, ascending."""
    return [d for d in range(2, n + 1) if n % d == 0]


def factor_onto(grid: GridSpec, target: GridSpec) -> int | None:
    """The factor r with ``grid == target * r`` in both directions, or None when there is none."""
    if grid.height % target.height or grid.width % target.width:
        return None
    r = grid.height // target.height
    return r if r == grid.width // target.width else None


class PixelUnshuffle(nn.Module):
    """``(B, H r, W r, C) -> (B, H, W, C r^2)``, equal to ``F.pixel_unshuffle`` in channels-last layout.

    Args:
        in_spec: Input grid (height and width divisible by ``factor``).
        factor: r.
    """

    projects = False

    def __init__(self, in_spec: GridSpec, factor: int) -> None:
        super().__init__()
        self.in_spec = in_spec
        self.factor = factor
        self.out_spec = GridSpec(
            in_spec.height // factor, in_spec.width // factor, in_spec.channels * factor**2, in_spec.prefix_tokens
        )

    def forward(self, grid: Tensor) -> Tensor:
        """``(B, H r, W r, C) -> (B, H, W, C r^2)``."""
        r = self.factor
        return rearrange(grid, "b (h i) (w j) c -> b h w (c i j)", i=r, j=r)

    def suggest(self, target: GridSpec) -> str | None:
        """A hint for reaching ``target``'s grid from this step's input (used in chain errors)."""
        r = factor_onto(self.in_spec, target)
        if r is not None:
            return f"factor {r} would map {self.in_spec.height}x{self.in_spec.width} onto {target.height}x{target.width}"
        return (
            f"no factor maps {self.in_spec.height}x{self.in_spec.width} onto {target.height}x{target.width}; "
            f"resample to a multiple first (e.g. {2 * target.height}x{2 * target.width} with factor 2)"
        )


def build(config: PixelUnshuffleConfig, context: BuildContext) -> PixelUnshuffle:
    """A pixel unshuffle of ``context.in_spec`` by ``factor`` (or the factor onto the student grid)."""
    spec = context.in_spec
    where = f"pixel_unshuffle aligner of {context.name!r}"
    if spec is None:
        raise KdkitError(f"{where}: the build context has no in_spec")
    factor = config.factor
    if factor is None:
        if context.student_spec is None:
            raise KdkitError(f"{where}: factor is null and there is no student grid to derive it from; set factor")
        factor = factor_onto(spec, context.student_spec)
        if factor is None:
            student = context.student_spec
            raise KdkitError(
                f"{where}: no factor maps the {spec.height}x{spec.width} grid onto the student's "
                f"{student.height}x{student.width}; put a resample before it (e.g. resample with scale: 2, "
                "then pixel_unshuffle with factor: 2)"
            )
    if spec.height % factor or spec.width % factor:
        common = sorted(set(divisors(spec.height)) & set(divisors(spec.width)))
        hint = f"factors that divide it: {', '.join(map(str, common))}" if common else "no factor > 1 divides it"
        if context.student_spec is not None and (r := factor_onto(spec, context.student_spec)) is not None:
            hint += f"; factor {r} reaches the student grid"
        raise KdkitError(
            f"{where}: the {spec.height}x{spec.width} grid cannot be unshuffled by factor {factor} ({hint}); "
            "resample it to a multiple of the factor first"
        )
    return PixelUnshuffle(spec, factor)


def example(tmp_dir: Path) -> Example:
    """A 4x6x3 grid unshuffled by 2 onto a 2x3 student grid."""
    context = BuildContext(name="t0", in_spec=GridSpec(4, 6, 3), student_spec=GridSpec(2, 3, 8))
    return Example(config={"kind": "pixel_unshuffle"}, context=context)


@hookimpl
def kdkit_aligners() -> dict[str, Factory]:
    return {"pixel_unshuffle": Factory(config=PixelUnshuffleConfig, build=build, example=example)}

"""Learned projection of a token grid: a 2-layer GELU MLP (HAWAII's ``P_i``, arXiv 2506.19072).

Its output width defaults to the student's width D, so recipes carry no derivable numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from torch import Tensor, nn

from kdkit import BuildContext, Example, Factory, GridSpec, PluginConfig, hookimpl
from kdkit.errors import KdkitError


class MlpConfig(PluginConfig):
    """Project every token with a 2-layer GELU MLP (a learned aligner)."""

    kind: Literal["mlp"] = "mlp"
    out_channels: int | None = Field(
        None, gt=0, description="Output width; null takes the student's feature width D from the build context."
    )
    hidden: int | None = Field(None, gt=0, description="Hidden width; null uses the output width.")


class GeluMLP(nn.Module):
    """``(..., C_in) -> (..., C_out)``: Linear, GELU, Linear.

    Args:
        in_features: Input width.
        out_features: Output width.
        hidden: Hidden width (defaults to ``out_features``).
    """

    def __init__(self, in_features: int, out_features: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or out_features
        self.fc1 = nn.Linear(in_features, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out_features)

    def forward(self, x: Tensor) -> Tensor:
        """``(..., C_in) -> (..., C_out)``."""
        return self.fc2(self.act(self.fc1(x)))


class MlpAligner(nn.Module):
    """``(B, H, W, C) -> (B, H, W, C')``: a per-token 2-layer GELU MLP; ``projects`` is True.

    Args:
        in_spec: Input grid.
        out_channels: Output width C'.
        hidden: Hidden width (defaults to C').
    """

    projects = True

    def __init__(self, in_spec: GridSpec, out_channels: int, hidden: int | None = None) -> None:
        super().__init__()
        self.in_spec = in_spec
        self.out_spec = GridSpec(in_spec.height, in_spec.width, out_channels, in_spec.prefix_tokens)
        self.mlp = GeluMLP(in_spec.channels, out_channels, hidden)

    def forward(self, grid: Tensor) -> Tensor:
        """``(B, H, W, C) -> (B, H, W, C')``."""
        return self.mlp(grid)


def build(config: MlpConfig, context: BuildContext) -> MlpAligner:
    """An MLP aligner from ``context.in_spec`` to ``out_channels`` (default: the student's width)."""
    if context.in_spec is None:
        raise KdkitError(f"mlp aligner of {context.name!r}: the build context has no in_spec")
    width = config.out_channels
    if width is None:
        if context.student_spec is None:
            raise KdkitError(
                f"mlp aligner of {context.name!r}: out_channels is null and the build context has no student "
                "grid to take the width from; set out_channels"
            )
        width = context.student_spec.channels
    return MlpAligner(context.in_spec, width, config.hidden)


def example(tmp_dir: Path) -> Example:
    """A 3x3x6 grid projected to the student's width 10."""
    context = BuildContext(name="t0", in_spec=GridSpec(3, 3, 6), student_spec=GridSpec(3, 3, 10))
    return Example(config={"kind": "mlp", "hidden": 7}, context=context)


@hookimpl
def kdkit_aligners() -> dict[str, Factory]:
    return {"mlp": Factory(config=MlpConfig, build=build, example=example)}

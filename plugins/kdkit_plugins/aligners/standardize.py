"""Feature standardization from running statistics: per channel, or PHI-S (Ranzinger et al., arXiv 2410.01680).

Balances teachers whose features have wildly different scales. Statistics are cumulative over every
token seen in train mode (teachers are frozen, so they converge) and frozen in eval mode.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import torch
from einops import rearrange
from pydantic import Field
from torch import Tensor, nn

from kdkit import BuildContext, Example, Factory, GridSpec, PluginConfig, hookimpl
from kdkit.errors import KdkitError


class StandardizeConfig(PluginConfig):
    """Standardize the grid with running statistics (per channel, or PHI-S rotation + one scale)."""

    kind: Literal["standardize"] = "standardize"
    method: Literal["channel", "phi_s"] = Field(
        "channel",
        description="`channel`: (x - mean) / std per channel. `phi_s`: PCA rotation, then a Hadamard "
        "rotation and one scalar so every channel has unit variance (keeps the feature geometry; "
        "C x C statistics, so place it before pixel_unshuffle for wide grids).",
    )
    eps: float = Field(1e-6, gt=0, description="Added to variances before the square root.")
    freeze_after: int | None = Field(
        None, ge=1, description="Stop updating the statistics after this many tokens (null: never stop)."
    )


def hadamard_like(n: int) -> Tensor:
    """``(n, n)`` orthogonal matrix that spreads variance evenly across outputs (float64).

    A normalized Sylvester-Hadamard matrix when ``n`` is a power of two (every entry ``±1/sqrt(n)``,
    so each output gets exactly the mean variance); otherwise the orthonormal DCT-II basis, whose
    first column (fed the leading principal component) is constant.
    """
    if n & (n - 1) == 0:
        matrix = torch.ones(1, 1, dtype=torch.float64)
        while matrix.shape[0] < n:
            matrix = torch.cat([torch.cat([matrix, matrix], 1), torch.cat([matrix, -matrix], 1)], 0)
        return matrix / math.sqrt(n)
    j = torch.arange(n, dtype=torch.float64)[:, None]
    k = torch.arange(n, dtype=torch.float64)[None, :]
    matrix = torch.cos(math.pi * (j + 0.5) * k / n) * math.sqrt(2.0 / n)
    matrix[:, 0] = 1.0 / math.sqrt(n)
    return matrix


class Standardize(nn.Module):
    """``(B, H, W, C) -> (B, H, W, C)`` standardized with running statistics.

    Args:
        in_spec: Input grid.
        method: ``"channel"`` or ``"phi_s"``.
        eps: Added to variances.
        freeze_after: Stop updating after this many tokens (None: never).
    """

    projects = False

    def __init__(self, in_spec: GridSpec, method: str = "channel", eps: float = 1e-6, freeze_after: int | None = None):
        super().__init__()
        channels = in_spec.channels
        self.in_spec = in_spec
        self.out_spec = in_spec
        self.method = method
        self.eps = eps
        self.freeze_after = freeze_after
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self.register_buffer("mean", torch.zeros(channels))
        if method == "phi_s":
            self.register_buffer("covariance", torch.eye(channels))
            self.register_buffer("transform", torch.eye(channels))
        else:
            self.register_buffer("variance", torch.ones(channels))

    @torch.no_grad()
    def update(self, grid: Tensor) -> None:
        """Merge the statistics of ``(B, H, W, C)`` ``grid`` into the running ones (Chan et al.)."""
        tokens = rearrange(grid, "b h w c -> (b h w) c").to(self.mean.dtype)
        n_new = tokens.shape[0]
        n_old = int(self.count)
        if n_new == 0 or (self.freeze_after is not None and n_old >= self.freeze_after):
            return
        total = n_old + n_new
        w_old, w_new = n_old / total, n_new / total
        mean_new = tokens.mean(0)
        mean = w_old * self.mean + w_new * mean_new
        d_old, d_new = self.mean - mean, mean_new - mean
        centered = tokens - mean_new
        if self.method == "phi_s":
            cov_new = centered.T @ centered / n_new
            self.covariance.copy_(
                w_old * (self.covariance + torch.outer(d_old, d_old)) + w_new * (cov_new + torch.outer(d_new, d_new))
            )
            self.transform.copy_(self._phi_s_transform())
        else:
            var_new = centered.pow(2).mean(0)
            self.variance.copy_(w_old * (self.variance + d_old**2) + w_new * (var_new + d_new**2))
        self.mean.copy_(mean)
        self.count.fill_(total)

    def _phi_s_transform(self) -> Tensor:
        """``(C, C)`` matrix M with ``(x - mean) @ M`` isotropic: PCA, Hadamard rotation, one scale."""
        cov = self.covariance.double()
        eigenvalues, eigenvectors = torch.linalg.eigh((cov + cov.T) / 2)
        eigenvalues, eigenvectors = eigenvalues.flip(0).clamp_min(0), eigenvectors.flip(1)
        scale = math.sqrt(float(eigenvalues.mean()) + self.eps)
        rotation = hadamard_like(cov.shape[0]).to(cov.device)
        return (eigenvectors @ rotation.T / scale).to(self.transform.dtype)

    def forward(self, grid: Tensor) -> Tensor:
        """``(B, H, W, C) -> (B, H, W, C)``; updates the statistics first in train mode."""
        if self.training:
            self.update(grid)
        centered = grid.to(self.mean.dtype) - self.mean
        if self.method == "phi_s":
            out = centered @ self.transform
        else:
            out = centered / torch.sqrt(self.variance + self.eps)
        return out.to(grid.dtype)


def build(config: StandardizeConfig, context: BuildContext) -> Standardize:
    """A standardizer for ``context.in_spec``."""
    if context.in_spec is None:
        raise KdkitError(f"standardize aligner of {context.name!r}: the build context has no in_spec")
    return Standardize(context.in_spec, config.method, config.eps, config.freeze_after)


def example(tmp_dir: Path) -> Example:
    """PHI-S on a 3x3x4 grid, frozen after the first batch of two (so later probes are repeatable)."""
    context = BuildContext(name="t0", in_spec=GridSpec(3, 3, 4), student_spec=GridSpec(3, 3, 8))
    return Example(config={"kind": "standardize", "method": "phi_s", "freeze_after": 18}, context=context)


@hookimpl
def kdkit_aligners() -> dict[str, Factory]:
    return {"standardize": Factory(config=StandardizeConfig, build=build, example=example)}

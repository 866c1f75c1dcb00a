"""standardize aligner: running statistics equal the statistics of everything seen; PHI-S is isotropic."""

from __future__ import annotations

import pytest
import torch

from kdkit import BuildContext, GridSpec
from kdkit_plugins.aligners.standardize import Standardize, StandardizeConfig, build, hadamard_like


def make(channels: int, **fields) -> Standardize:
    spec = GridSpec(3, 4, channels)
    return build(StandardizeConfig(**fields), BuildContext(name="sam", in_spec=spec))


def scaled_batches(channels: int, n: int = 3) -> list[torch.Tensor]:
    scales = torch.logspace(-2, 3, channels)  # wildly different channel scales
    mixing = torch.randn(channels, channels)
    return [(torch.randn(4, 3, 4, channels) @ mixing) * scales + 7.0 for _ in range(n)]


def test_channel_statistics_equal_those_of_all_batches_seen() -> None:
    aligner = make(5, eps=1e-12).double()
    batches = [b.double() for b in scaled_batches(5)]
    for batch in batches:
        aligner(batch)
    tokens = torch.cat([b.reshape(-1, 5) for b in batches])
    assert int(aligner.count) == tokens.shape[0]
    assert torch.allclose(aligner.mean, tokens.mean(0), rtol=1e-9)
    assert torch.allclose(aligner.variance, tokens.var(0, unbiased=False), rtol=1e-9)
    aligner.eval()
    out = aligner(torch.cat(batches)).reshape(-1, 5)
    assert torch.allclose(out.mean(0), torch.zeros(5, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(out.var(0, unbiased=False), torch.ones(5, dtype=torch.float64), atol=1e-5)


@pytest.mark.parametrize("channels", [8, 6])
def test_phi_s_output_has_unit_variance_and_keeps_geometry(channels: int) -> None:
    aligner = make(channels, method="phi_s").double()
    data = torch.cat([b.double() for b in scaled_batches(channels)])
    aligner(data)
    aligner.eval()
    out = aligner(data).reshape(-1, channels)
    cov = torch.cov(out.T, correction=0)
    assert torch.allclose(cov.diagonal().mean(), torch.tensor(1.0, dtype=torch.float64), atol=1e-6)
    if channels == 8:  # a true Hadamard rotation: every channel gets exactly the mean variance
        assert torch.allclose(cov.diagonal(), torch.ones(channels, dtype=torch.float64), atol=1e-6)
    # one scalar scale after rotations: distances between tokens are preserved up to that scale
    x = data.reshape(-1, channels)
    ratio = torch.cdist(out[:10], out[10:20]) / torch.cdist(x[:10], x[10:20])
    assert torch.allclose(ratio, ratio.mean().expand_as(ratio), rtol=1e-6)


def test_hadamard_like_is_orthogonal() -> None:
    for n in (1, 4, 16, 6, 12):
        h = hadamard_like(n)
        assert torch.allclose(h @ h.T, torch.eye(n, dtype=torch.float64), atol=1e-12)


def test_eval_mode_and_freeze_after_stop_updates() -> None:
    aligner = make(3, freeze_after=12)
    first, second = torch.randn(1, 3, 4, 3), torch.randn(1, 3, 4, 3) + 5
    aligner(first)
    mean = aligner.mean.clone()
    aligner(second)  # frozen after 12 tokens
    assert torch.equal(aligner.mean, mean)
    fresh = make(3).eval()
    fresh(second)
    assert int(fresh.count) == 0 and torch.equal(fresh.mean, torch.zeros(3))


def test_output_is_differentiable_only_through_its_input_and_keeps_dtype() -> None:
    aligner = make(4)
    grid = torch.randn(2, 3, 4, 4, dtype=torch.bfloat16)
    assert aligner(grid).dtype == torch.bfloat16
    assert not any(True for _ in aligner.parameters())

"""Fixtures: each library's tiny vision tower, and a fixed batch of images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from adapter_towers import BUILDERS, Tower
from torch import Tensor


@pytest.fixture(params=sorted(BUILDERS))
def tower(request: pytest.FixtureRequest, tmp_path: Path) -> Tower:
    """Each library's tiny tower in turn."""
    return BUILDERS[request.param](tmp_path)


@pytest.fixture
def images() -> Tensor:
    """(2, 3, 16, 16) images in [0, 1]."""
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))



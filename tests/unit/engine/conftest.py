"""Fixtures of the engine tests: a fast variant of the tiny recipe (its files come from ``tiny_root``)."""

from __future__ import annotations

from pathlib import Path

import pytest

RECIPE = Path(__file__).parents[3] / "recipes" / "tiny" / "timm_two_teachers.yaml"

#: The tiny recipe made faster: 16 samples, global batch 4 of 2 per device, 2 + 2 steps.
FAST = [
    "stages.pretrain.max_steps=2", "stages.finetune.max_steps=2",
    "stages.pretrain.batch.global_size=4", "stages.pretrain.batch.per_device=2",
    "stages.finetune.batch.global_size=4", "stages.finetune.batch.per_device=2",
    "stages.pretrain.data.size=16", "stages.finetune.data.size=16",
    "runtime.checkpoint_every=1", "runtime.keep_last=10",
]


@pytest.fixture(scope="session")
def fast_into(tiny_root: Path):
    """``fast_into(run_dir)``: overrides for the fast recipe reading ``tiny_root``, writing into ``run_dir``."""
    return lambda run_dir: FAST + [f"runtime.data_root={tiny_root}", f"runtime.output_dir={run_dir}"]


@pytest.fixture
def fast(fast_into, tmp_path: Path) -> list[str]:
    """Overrides: the fast recipe writing into ``tmp_path/run``."""
    return fast_into(tmp_path / "run")


@pytest.fixture(scope="session")
def tiny_recipe() -> Path:
    """The tiny two-teacher recipe file."""
    return RECIPE

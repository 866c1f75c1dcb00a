"""Shared fixtures: a registry of kdkit's own plugins only, and quiet, reproducible torch."""

from __future__ import annotations

import pytest
import torch

from pathlib import Path

from kdkit.plugins import LoadedPlugins, load_plugins

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def builtin_plugins() -> LoadedPlugins:
    """Plugins of the ``kdkit`` distribution only: installed third-party packages cannot interfere."""
    return load_plugins(distributions={"kdkit"})


@pytest.fixture(scope="session")
def registry(builtin_plugins: LoadedPlugins):
    """Registry of the built-in plugins."""
    return builtin_plugins.registry


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding the teacher files of ``recipes/tiny/timm_two_teachers.yaml``."""
    from kdkit_plugins.fixtures.timm_two_teachers import write_tiny_timm_two_teachers

    return write_tiny_timm_two_teachers(tmp_path_factory.mktemp("tiny_data"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)

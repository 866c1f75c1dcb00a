"""Shared fixtures: a registry of kdkit's own plugins only, and quiet, reproducible torch."""

from __future__ import annotations

import pytest
import torch

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


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)

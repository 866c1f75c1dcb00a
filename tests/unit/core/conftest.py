"""Fixtures of the core tests."""

from __future__ import annotations

import pytest
from fakes import GOOD_RECIPE, FakePlugin

from kdkit.plugins import load_plugins


@pytest.fixture()
def fake_registry():
    return load_plugins(entry_points=False, extra=[("fake", FakePlugin())]).registry


@pytest.fixture()
def good_recipe(tmp_path):
    path = tmp_path / "good.yaml"
    path.write_text(GOOD_RECIPE)
    return path

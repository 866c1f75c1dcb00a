"""Every registered built-in plugin passes the contract kit (timm's test_models.py pattern)."""

from __future__ import annotations

import pytest

from kdkit.plugins import load_plugins
from kdkit.testing import check_plugin

_ENTRIES = load_plugins(distributions={"kdkit"}).registry.entries()


def test_builtin_plugins_all_import(builtin_plugins) -> None:
    broken = {p.name: p.error for p in builtin_plugins.plugins if p.error}
    assert not broken, f"built-in plugins failed to import: {broken}"


@pytest.mark.parametrize("entry", _ENTRIES, ids=[f"{e.kind}:{e.name}" for e in _ENTRIES])
def test_contract(entry, tmp_path) -> None:
    if entry.factory.missing:
        pytest.skip(f"{entry.kind} {entry.name} needs {', '.join(entry.factory.missing)} ({entry.factory.install_hint})")
    check_plugin(entry.kind, entry.name, entry.factory, tmp_path)

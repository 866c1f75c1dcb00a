"""The architecture page's plugin-kind table lists every kind and every built-in plugin (no drift)."""

from __future__ import annotations

import re
from pathlib import Path

from kdkit.hookspecs import HOOKS

PAGE = Path(__file__).resolve().parents[2] / "docs" / "concepts" / "index.md"


def plugin_table() -> dict[str, tuple[str, set[str]]]:
    """kind -> (hook, built-in names) from the "Plugin kinds" table."""
    text = PAGE.read_text(encoding="utf-8").split("## Plugin kinds", 1)[1].split("\n\n", 2)[1]
    rows = {}
    for line in text.splitlines()[2:]:
        kind, hook, _, names = (cell.strip() for cell in line.strip("|").split("|"))
        rows[kind] = (hook.strip("`"), set(re.findall(r"`([^`]+)`", names)))
    return rows


def test_the_plugin_kind_table_is_current(registry) -> None:
    rows = plugin_table()
    assert {kind: hook for kind, (hook, _) in rows.items()} == HOOKS
    assert {kind: names for kind, (_, names) in rows.items()} == {
        kind: {e.name for e in registry.entries(kind)} for kind in HOOKS}

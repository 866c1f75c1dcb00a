"""The documentation site renders offline: mermaid is bundled, no script, stylesheet or font comes from a CDN."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MKDOCS = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")


def listed(key: str) -> list[str]:
    block = re.search(rf"^{key}:\n((?:  - .*\n)+)", MKDOCS, re.M)
    return [line.strip()[2:] for line in block.group(1).splitlines()] if block else []


def test_mermaid_is_bundled_so_material_fetches_none() -> None:
    scripts = listed("extra_javascript")
    assert "assets/javascripts/mermaid.min.js" in scripts
    bundled = (ROOT / "docs" / "assets" / "javascripts" / "mermaid.min.js").read_bytes()
    assert len(bundled) > 1_000_000 and b"mermaid" in bundled[:100_000]
    assert (ROOT / "docs" / "assets" / "javascripts" / "mermaid.LICENSE.txt").read_text().startswith("The MIT License")
    assert "```mermaid" in (ROOT / "docs" / "concepts" / "index.md").read_text(encoding="utf-8")


def test_nothing_is_loaded_from_the_network() -> None:
    assert not [s for s in listed("extra_javascript") + listed("extra_css") if re.match(r"(https?:)?//", s)]
    assert re.search(r"^  font: false$", MKDOCS, re.M)  # no Google Fonts

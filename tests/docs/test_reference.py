"""The recipe reference in docs/ is exactly what the code generates (no drift)."""

from __future__ import annotations

from pathlib import Path

from kdkit.schema_export import recipe_reference_markdown

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "reference" / "recipe.md"


def test_recipe_reference_is_generated_from_the_schema(registry) -> None:
    expected = recipe_reference_markdown(registry)
    assert REFERENCE.read_text(encoding="utf-8") == expected, (
        "docs/reference/recipe.md is out of date: run `make reference`"
    )


def test_reference_lists_every_registered_plugin(registry) -> None:
    text = REFERENCE.read_text(encoding="utf-8")
    for entry in registry.entries():
        assert f"#### `{entry.name}`" in text

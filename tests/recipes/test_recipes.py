"""Every recipe under recipes/ (found recursively) validates against the built-in plugins."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdkit.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[2] / "recipes"
#: Folders holding configs of other tools (torchdistill), not kdkit recipes.
FOREIGN = {"torchdistill"}
RECIPES = sorted(p for p in ROOT.rglob("*.yaml") if not FOREIGN & set(p.relative_to(ROOT).parts))


def test_recipes_are_found_recursively() -> None:
    assert RECIPES, "no recipe found under recipes/"
    assert len(RECIPES) == len([p for p in ROOT.rglob("*") if p.suffix == ".yaml" and not FOREIGN & set(p.relative_to(ROOT).parts)])


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(ROOT)) for p in RECIPES])
def test_recipe_validates(path, registry) -> None:
    recipe = load_recipe(path, registry=registry)
    assert recipe.stages
    first_line = path.read_text(encoding="utf-8").splitlines()[0]
    assert first_line.startswith("#"), f"{path.name} must open with a comment saying what it reproduces"

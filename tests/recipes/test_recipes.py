"""Every recipe under recipes/ (found recursively) validates against the built-in plugins."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdkit.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[2] / "recipes"
#: Folders holding configs of other tools (torchdistill), not kdkit recipes.
FOREIGN = {"torchdistill"}
ALL = sorted(p for p in ROOT.rglob("*.yaml") if not FOREIGN & set(p.relative_to(ROOT).parts))
#: Fragments (names starting with "_") only make sense inside a recipe that extends them.
FRAGMENTS = [p for p in ALL if p.name.startswith("_")]
RECIPES = [p for p in ALL if p not in FRAGMENTS]


def test_recipes_are_found_recursively() -> None:
    assert RECIPES, "no recipe found under recipes/"
    assert len(ALL) == len([p for p in ROOT.rglob("*") if p.suffix == ".yaml" and not FOREIGN & set(p.relative_to(ROOT).parts)])


@pytest.mark.parametrize("fragment", FRAGMENTS, ids=[str(p.relative_to(ROOT)) for p in FRAGMENTS])
def test_every_fragment_is_extended(fragment) -> None:
    users = [p for p in RECIPES + FRAGMENTS if p != fragment and fragment.name in p.read_text(encoding="utf-8")]
    assert users, f"{fragment.relative_to(ROOT)} is extended by no recipe"
    assert fragment.read_text(encoding="utf-8").startswith("#"), f"{fragment.name} must open with a comment"


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(ROOT)) for p in RECIPES])
def test_recipe_validates(path, registry) -> None:
    recipe = load_recipe(path, registry=registry)
    assert recipe.stages
    first_line = path.read_text(encoding="utf-8").splitlines()[0]
    assert first_line.startswith("#"), f"{path.name} must open with a comment saying what it reproduces"

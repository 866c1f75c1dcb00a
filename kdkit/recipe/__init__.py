"""Recipes: declarative YAML files that compose plugins into a distillation run."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from kdkit.recipe.loading import load_recipe_data
from kdkit.recipe.schema import Recipe
from kdkit.recipe.validation import validate_recipe
from kdkit.registry import Registry

__all__ = ["Recipe", "dump_recipe", "load_recipe", "recipe_dict", "validate_recipe"]


def load_recipe(path: str | Path, overrides: Iterable[str] = (), registry: Registry | None = None) -> Recipe:
    """Read, merge (``extends``), override (``--set``) and validate a recipe file.

    Raises:
        RecipeError: every problem found, each with its path.
    """
    if registry is None:
        from kdkit.plugins import get_registry

        registry = get_registry()
    data = load_recipe_data(path, overrides)
    return validate_recipe(data, registry, source=str(path))


def recipe_dict(recipe: Recipe) -> dict[str, Any]:
    """The fully resolved recipe (every default filled in) as plain data."""
    data = recipe.model_dump(mode="json")
    for kind, path, block in recipe.blocks():
        del kind
        node: Any = data
        parts = path.replace("[", ".").replace("]", "").split(".")
        for part in parts:
            node = node[int(part)] if isinstance(node, list) else node[part]
        resolved = block.config.model_dump(mode="json")
        node.update(resolved)
    if data.get("eval") is None:  # no section rather than `eval: null`: recipes of earlier runs stay identical
        data.pop("eval", None)
    if data.get("loggers") is None:  # likewise
        data.pop("loggers", None)
    return data


def dump_recipe(recipe: Recipe, path: str | Path) -> None:
    """Write the resolved recipe to ``path`` as YAML (saved with every run)."""
    Path(path).write_text(yaml.safe_dump(recipe_dict(recipe), sort_keys=False), encoding="utf-8")

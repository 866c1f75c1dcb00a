"""The recipes shipped with kdkit (package data ``kdkit/recipes/``): list them, find one by name,
copy one with the files its ``extends:`` chain needs, or resolved into a single file.

A shipped recipe's name is its path under ``recipes/`` without ``.yaml`` (``tiny/timm_two_teachers``);
files whose name starts with ``_`` are parts other recipes extend, not recipes of their own.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from kdkit.errors import KdkitError, closest

SUFFIX = ".yaml"


class RecipeNotFoundError(KdkitError):
    """A recipe argument that is neither a file nor the name of a shipped recipe."""


@dataclass(frozen=True)
class ShippedRecipe:
    """One shipped recipe: its name, file and the first line of its ``description``."""

    name: str
    path: Path
    description: str


def recipes_root() -> Path:
    """The directory of the shipped recipes (inside the installed package)."""
    return Path(str(resources.files("kdkit") / "recipes"))


def shipped_recipes() -> dict[str, ShippedRecipe]:
    """Every shipped recipe by name, sorted (parts starting with ``_`` left out)."""
    root = recipes_root()
    found = {}
    for path in sorted(root.rglob(f"*{SUFFIX}")):
        relative = path.relative_to(root)
        if any(part.startswith("_") for part in relative.parts):
            continue
        name = relative.with_suffix("").as_posix()
        found[name] = ShippedRecipe(name, path, _description(path))
    return found


def _description(path: Path) -> str:
    from kdkit.errors import RecipeError
    from kdkit.recipe.loading import load_with_extends

    try:
        text = load_with_extends(path).get("description", "")  # a twin may inherit its description
    except RecipeError:
        return ""
    return str(text).strip().splitlines()[0] if text else ""


def shipped_path(name: str) -> Path:
    """The file of the shipped recipe ``name`` (``recipes/`` prefix and ``.yaml`` suffix optional).

    Raises:
        RecipeNotFoundError: no shipped recipe has that name (the message lists close names).
    """
    key = name.removeprefix("recipes/").removesuffix(SUFFIX)
    recipes = shipped_recipes()
    if key not in recipes:
        hint = closest(key, recipes)
        raise RecipeNotFoundError(f"no shipped recipe is called {key!r}" + (f"; did you mean {hint!r}?" if hint else "")
                                  + f" (`kdkit recipes list` shows the {len(recipes)})")
    return recipes[key].path


def find_recipe(argument: str | Path) -> Path:
    """A recipe argument -> its file: an existing path as given, else the shipped recipe of that name.

    Raises:
        RecipeNotFoundError: neither a file nor a shipped recipe's name.
    """
    path = Path(argument)
    if path.exists():
        return path
    try:
        return shipped_path(str(argument))
    except RecipeNotFoundError as exc:
        raise RecipeNotFoundError(f"recipe file not found: {argument}, and {exc}") from None


def extends_chain(path: Path) -> list[Path]:
    """``path`` and every file its ``extends:`` names, recursively (resolved paths, each once, ``path`` first)."""
    from kdkit.recipe.loading import read_yaml

    order: list[Path] = []
    pending = [path.resolve()]
    while pending:
        current = pending.pop(0)
        if current in order:
            continue
        order.append(current)
        parents = read_yaml(current).get("extends") or []
        for parent in [parents] if isinstance(parents, str) else parents:
            pending.append((current.parent / str(parent)).resolve())
    return order


def copy_recipe(name: str, destination: str | Path, resolve: bool = False, force: bool = False) -> list[Path]:
    """Copy the shipped recipe ``name`` out of the package; returns the files written (the recipe first).

    Args:
        name: A shipped recipe's name (see :func:`shipped_recipes`).
        destination: A directory. Without ``resolve`` the recipe and its ``extends`` chain are copied
            into it keeping their relative layout (so the chain still resolves); with ``resolve`` one
            file ``<destination>/<basename>.yaml`` holds the merged recipe, without ``extends``.
        resolve: Write the merged recipe instead of the chain.
        force: Overwrite existing files.

    Raises:
        RecipeNotFoundError: no shipped recipe of that name.
        KdkitError: a file to write exists already (without ``force``).
    """
    from kdkit.recipe.loading import load_with_extends

    source = shipped_path(name)
    destination = Path(destination)
    root = recipes_root().resolve()
    if resolve:
        target = destination / source.name
        _refuse_existing([target], force)
        data = load_with_extends(source)
        opening = "".join(line for line in _leading_comment(source))
        header = (f"{opening}#\n# The shipped recipe {source.relative_to(recipes_root()).with_suffix('').as_posix()} "
                  "with its extends chain merged (`kdkit recipes copy --resolve`).\n")
        destination.mkdir(parents=True, exist_ok=True)
        target.write_text(header + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return [target]
    chain = extends_chain(source)
    targets = [destination / file.relative_to(root) for file in chain]
    _refuse_existing(targets, force)
    for file, target in zip(chain, targets):
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, target)
    return targets


def _leading_comment(path: Path) -> list[str]:
    """The comment lines a recipe file opens with (what it reproduces, how to run it)."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        if not line.startswith("#"):
            break
        lines.append(line)
    return lines


def _refuse_existing(targets: list[Path], force: bool) -> None:
    existing = [str(t) for t in targets if t.exists()]
    if existing and not force:
        raise KdkitError(f"{', '.join(existing)} exists already; choose another destination or pass --force")

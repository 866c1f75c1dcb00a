"""Read recipe files: YAML (``safe_load`` only), ``extends:`` chains and ``--set`` overrides."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from kdkit.errors import Problem, RecipeError, unknown_name_message


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping holding the same key twice (YAML says keys are
    unique; PyYAML silently keeps the last one, so a second teacher of the same name would vanish)."""

    source = "<recipe>"

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise RecipeError(Problem("", f"duplicate key {key!r} in {self.source}: line {seen[key]} and line "
                                              f"{line} (YAML keeps only the last; rename or remove one)"))
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load`` of ``text`` that refuses duplicate keys (both lines named)."""
    loader = _UniqueKeyLoader(text)
    loader.source = source
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse one YAML recipe file into a mapping.

    Raises:
        RecipeError: missing or empty file, YAML syntax error (with line and column), a key given
            twice in one mapping (both lines), or not a mapping.
    """
    if path.is_dir():
        raise RecipeError(Problem("", f"recipe {path} is a directory; give a .yaml file"))
    if not path.is_file():
        raise RecipeError(Problem("", f"recipe file not found: {path}"))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(Problem("", f"cannot read recipe {path}: {getattr(exc, 'strerror', None) or exc}")) from None
    try:
        data = parse_yaml(text, str(path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        reason = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(Problem("", f"YAML syntax error at {where}: {reason}")) from None
    if data is None:
        raise RecipeError(Problem("", f"recipe file {path} is empty (no recipe keys, only comments or blank lines)"))
    if not isinstance(data, dict):
        raise RecipeError(Problem("", f"{path} must hold a mapping of recipe keys, got {type(data).__name__}"))
    return data


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` merged into ``base``: mappings merge key by key, anything else replaces;
    a ``null`` value in ``override`` deletes the key (e.g. ``teachers: {sam: null}``)."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_with_extends(path: Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read ``path`` and, recursively, the files its ``extends:`` names (relative to it).

    ``extends`` may be one path or a list (merged left to right, then this file on top).
    """
    path = path.resolve()
    if path in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path))
        raise RecipeError(Problem("extends", f"recipes extend each other in a cycle: {cycle}"))
    data = read_yaml(path)
    parents = data.pop("extends", None)
    if parents is None:
        return data
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise RecipeError(Problem("extends", f"in {path}: must be a path or a list of paths"))
    merged: dict[str, Any] = {}
    for parent in parents:
        parent_path = (path.parent / parent).resolve()
        if not parent_path.is_file():
            raise RecipeError(Problem("extends", f"{path} extends {parent!r}, which does not exist ({parent_path})"))
        merged = deep_merge(merged, load_with_extends(parent_path, (*_chain, path)))
    return deep_merge(merged, data)


_INDEX = re.compile(r"\[(\d+)\]")


def split_path(dotted: str) -> list[str]:
    """``"teachers.eva02.align[1].hidden"`` -> ``["teachers", "eva02", "align", "1", "hidden"]``."""
    return [part for part in _INDEX.sub(r".\1", dotted).split(".") if part]


def _without_none(annotation: Any) -> Any:
    """``X | None`` -> ``X`` (an optional section such as ``eval``); anything else unchanged."""
    import types
    import typing

    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def envelope_section(parts: list[str]) -> Any:
    """The settings model that ``parts`` names in the recipe envelope (e.g. ``runtime.distributed``
    or ``stages.<name>.schedule``), or None (plugin blocks and plain values are not sections)."""
    from pydantic import BaseModel

    from kdkit.recipe.schema import Block, Recipe

    model: Any = Recipe
    for part in parts:
        if isinstance(model, type) and issubclass(model, BaseModel) and not issubclass(model, Block):
            field = model.model_fields.get(part)
            if field is None:
                return None
            model = _without_none(field.annotation)
        elif getattr(model, "__origin__", None) is dict:
            model = model.__args__[1]
        else:
            return None
    is_section = isinstance(model, type) and issubclass(model, BaseModel) and not issubclass(model, Block)
    return model if is_section else None


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``dotted.path=value`` override in place (value parsed as YAML).

    Every step of the path but the last must exist (or be an envelope section the recipe left to
    its defaults, such as ``runtime.distributed``), so a typo fails here with the known keys; a
    new last key is allowed (validation then checks it against the schema).
    """
    if "=" not in assignment:
        raise RecipeError(Problem("--set", f"{assignment!r} is not of the form path.to.key=value"))
    dotted, raw = assignment.split("=", 1)
    parts = split_path(dotted.strip())
    if not parts:
        raise RecipeError(Problem("--set", f"{assignment!r} has an empty path"))
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise RecipeError(Problem(f"--set {dotted}", f"value {raw!r} is not valid YAML: {exc}")) from None
    node: Any = data
    for depth, part in enumerate(parts[:-1]):
        here = ".".join(parts[: depth + 1])
        if isinstance(node, dict):
            parent = envelope_section(parts[:depth])
            if part not in node and parent is not None and part in parent.model_fields \
                    and envelope_section(parts[: depth + 1]) is not None:
                node[part] = {}  # a section the recipe left to its defaults, e.g. runtime.distributed
            if part not in node or not isinstance(node[part], (dict, list)):
                section = envelope_section(parts[:depth])
                known = [k for k in node if isinstance(node[k], (dict, list))]
                known += [k for k in (section.model_fields if section is not None else ()) if k not in known]
                reason = (
                    unknown_name_message("key", part, known) if part not in node else f"{here} is a value, not a section"
                )
                raise RecipeError(Problem(f"--set {dotted}", f"path does not exist: {reason}"))
            node = node[part]
        elif isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(Problem(f"--set {dotted}", f"path does not exist: {here} (list of {len(node)})"))
            node = node[int(part)]
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise RecipeError(Problem(f"--set {dotted}", f"path does not exist: index {last} of a list of {len(node)}"))
        node[int(last)] = value
    else:
        node[last] = value


def load_recipe_data(path: str | Path, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """The recipe mapping after ``extends`` and overrides, before validation; ``name`` defaults
    to the file name."""
    path = Path(path)
    data = load_with_extends(path)
    data.setdefault("name", path.stem)
    for assignment in overrides:
        apply_override(data, assignment)
    return data

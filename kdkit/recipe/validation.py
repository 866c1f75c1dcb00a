"""Two-stage recipe validation that reports every problem at once, each with its path.

Stage 1 checks the envelope (:mod:`kdkit.recipe.schema`); stage 2 checks each plugin block
against the config class of the plugin its ``kind`` names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pydantic

from kdkit.errors import Problem, RecipeError, UnknownPluginError, closest
from kdkit.recipe.schema import Block, LossBlock, Recipe, TeacherBlock
from kdkit.registry import Registry


#: Envelope model of each plugin kind's blocks (its non-``kind`` fields are not the plugin's).
BLOCK_TYPES: dict[str, type[Block]] = {
    "student": Block, "teacher": TeacherBlock, "aligner": Block, "scorer": Block,
    "adapter": Block, "loss": LossBlock, "data": Block, "benchmark": Block, "logger": Block,
}


def loc_to_path(prefix: str, loc: tuple[Any, ...]) -> str:
    """``("align", 1, "hidden")`` under ``teachers.eva02`` -> ``teachers.eva02.align[1].hidden``."""
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part == "[key]":
            path += " (key)"
        else:
            path = f"{path}.{part}" if path else str(part)
    return path


def _model_at(model: Any, loc: tuple[Any, ...]) -> Any:
    """The pydantic model that ``loc`` (a pydantic error location) lands in, walking fields,
    ``dict`` values, list items and optional sections from ``model``; None when it lands elsewhere."""
    import types
    import typing

    for part in loc:
        if isinstance(model, type) and issubclass(model, pydantic.BaseModel):
            field = model.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return None
            model = field.annotation
        elif typing.get_origin(model) in (dict, list):
            model = typing.get_args(model)[-1]
        else:
            return None
        if typing.get_origin(model) in (typing.Union, types.UnionType):  # `X | None`
            args = [a for a in typing.get_args(model) if a is not type(None)]
            model = args[0] if len(args) == 1 else None
    return model if isinstance(model, type) and issubclass(model, pydantic.BaseModel) else None


def pydantic_problems(prefix: str, error: pydantic.ValidationError, model: Any = None,
                      also: tuple[str, ...] = ()) -> list[Problem]:
    """One :class:`Problem` per pydantic error, with ``prefix`` prepended to its location.

    An unknown key gets a "did you mean" from the keys of ``model`` (the validated class) at its place
    (plus ``also``, the envelope keys of a plugin block such as a loss's ``weight``).
    """
    problems = []
    for item in error.errors(include_url=False):
        message = item["msg"]
        if item["type"] == "missing":
            message = "required key is missing"
        elif item["type"] == "extra_forbidden" and model is not None and item["loc"]:
            owner = _model_at(model, tuple(item["loc"][:-1]))
            if owner is not None:
                known = [k for k in owner.model_fields if k != "kind"]
                known += [k for k in (also if len(item["loc"]) == 1 else ()) if k not in known]
                hint = closest(str(item["loc"][-1]), known)
                listed = f"known: {', '.join(known)}" if known else "this block takes no other key"
                message = f"unknown key ({listed})" + (f"; did you mean {hint!r}?" if hint else "")
        problems.append(Problem(loc_to_path(prefix, item["loc"]), message))
    return problems


def _cross_checks(recipe: Recipe) -> list[Problem]:
    problems = []
    for stage_name, stage in recipe.stages.items():
        for i, loss in enumerate(stage.losses or []):
            if loss not in recipe.losses:
                problems.append(
                    Problem(f"stages.{stage_name}.losses[{i}]", f"{loss!r} is not a loss of this recipe (losses: {', '.join(recipe.losses)})")
                )
    for i, stage_name in enumerate((recipe.eval.stages or []) if recipe.eval is not None else []):
        if stage_name not in recipe.stages:
            problems.append(Problem(f"eval.stages[{i}]", f"{stage_name!r} is not a stage of this recipe "
                                    f"(stages: {', '.join(recipe.stages)})"))
    return problems


def _teacher_references(recipe: Recipe, configs: Mapping[str, Any]) -> list[Problem]:
    """A plugin setting named ``teachers`` (a list) or ``teacher`` (one name) must name teachers of
    this recipe: the build would refuse it, so validation does too. A plugin config whose
    ``needs_scorer`` is True needs the recipe's ``scorer``."""
    problems = []
    known = list(recipe.teachers)
    for path, config in configs.items():
        if recipe.scorer is None and getattr(config, "needs_scorer", False) is True:
            problems.append(Problem(path, f"the {config.kind!r} loss weights tokens by the recipe's scorer, but the "
                                          "recipe has no scorer; add one (e.g. scorer: {kind: uniform}) or turn "
                                          "the loss's scoring off"))
        for field in ("teachers", "teacher"):
            value = getattr(config, field, None)
            names = [value] if isinstance(value, str) else value if isinstance(value, list) else []
            for i, name in enumerate(names):
                if isinstance(name, str) and name not in known:
                    where = f"{path}.{field}" + (f"[{i}]" if isinstance(value, list) else "")
                    problems.append(Problem(where, f"{name!r} is not a teacher of this recipe "
                                                   f"(teachers: {', '.join(known) or 'none'})"))
    return problems


def raw_blocks(data: Mapping[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """Every plugin block found in raw recipe data as ``(plugin kind, path, block)``.

    Walks the raw mapping defensively so plugin blocks are checked even when the envelope
    around them is broken (every problem is reported in one pass).
    """
    def mapping(value: Any) -> dict[str, Any]:
        return value if isinstance(value, dict) else {}

    found: list[tuple[str, str, dict[str, Any]]] = []

    def add(kind: str, path: str, block: Any) -> None:
        if isinstance(block, dict) and isinstance(block.get("kind"), str):
            envelope = BLOCK_TYPES[kind].model_fields.keys() - {"kind"}
            found.append((kind, path, {k: v for k, v in block.items() if k not in envelope}))

    add("student", "student", data.get("student"))
    for name, teacher in mapping(data.get("teachers")).items():
        add("teacher", f"teachers.{name}", teacher)
        chain = mapping(teacher).get("align")
        for i, aligner in enumerate(chain if isinstance(chain, list) else []):
            add("aligner", f"teachers.{name}.align[{i}]", aligner)
    add("scorer", "scorer", data.get("scorer"))
    for name, adapter in mapping(data.get("adapters")).items():
        add("adapter", f"adapters.{name}", adapter)
    for name, loss in mapping(data.get("losses")).items():
        add("loss", f"losses.{name}", loss)
    for name, stage in mapping(data.get("stages")).items():
        add("data", f"stages.{name}.data", mapping(stage).get("data"))
    add("benchmark", "eval.benchmark", mapping(data.get("eval")).get("benchmark"))
    for name, logger in mapping(data.get("loggers")).items():
        add("logger", f"loggers.{name}", logger)
    return found


def validate_recipe(data: Mapping[str, Any], registry: Registry, source: str | None = None) -> Recipe:
    """Validate a recipe mapping; attach each block's validated plugin config.

    Raises:
        RecipeError: listing every problem found (envelope and plugin blocks), each with its path.
    """
    problems: list[Problem] = []
    configs: dict[str, Any] = {}
    for kind, path, block in raw_blocks(data):
        try:
            factory = registry.factory(kind, block["kind"])
        except UnknownPluginError as exc:
            problems.append(Problem(f"{path}.kind", str(exc)))
            continue
        try:
            configs[path] = factory.config.model_validate(block)
        except pydantic.ValidationError as exc:
            problems += pydantic_problems(path, exc, factory.config, tuple(BLOCK_TYPES[kind].model_fields.keys() - {"kind"}))
    try:
        recipe = Recipe.model_validate(dict(data))
    except pydantic.ValidationError as exc:
        raise RecipeError(sorted(pydantic_problems("", exc, Recipe) + problems, key=_order(data)), source) from None
    problems += _cross_checks(recipe) + _teacher_references(recipe, configs)
    if problems:
        raise RecipeError(sorted(problems, key=_order(data)), source)
    for _kind, path, block in recipe.blocks():
        block._config = configs[path]
    return recipe


def _order(data: Mapping[str, Any]):
    """Sort key: problems in the order of the recipe's top-level sections."""
    sections = list(data)

    def key(problem: Problem) -> int:
        head = problem.path.split(".")[0].split("[")[0]
        return sections.index(head) if head in sections else len(sections)

    return key

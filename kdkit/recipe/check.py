"""What ``kdkit validate`` checks: recipe files found in directories, fragments, and a dry build.

A *fragment* (a file whose name starts with ``_``, such as ``_base.yaml``) is only complete inside
a recipe that extends it: alone it is checked for what it holds (YAML, known top-level keys,
known plugin kinds and keys). A YAML file found in a directory that holds no recipe key at all is
another tool's configuration and is skipped (named on the output); given by name, it is an error.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pydantic

from kdkit.errors import KdkitError, Problem, RecipeError, UnknownPluginError
from kdkit.registry import Registry

#: File names of recipe files found inside a directory argument.
PATTERNS = ("*.yaml", "*.yml")


@dataclasses.dataclass(frozen=True)
class RecipeFile:
    """A file to validate and whether the user named it (rather than a directory holding it)."""

    path: Path
    named: bool


def recipe_files(arguments: Iterable[Path]) -> list[RecipeFile]:
    """Every file to validate: files as given, directories searched recursively (sorted)."""
    found: list[RecipeFile] = []
    for argument in arguments:
        if argument.is_dir():
            files = sorted({p for pattern in PATTERNS for p in argument.rglob(pattern) if p.is_file()})
            if not files:
                raise RecipeError(Problem("", f"directory {argument} holds no .yaml recipe file"))
            found += [RecipeFile(p, named=False) for p in files]
        else:
            found.append(RecipeFile(argument, named=True))
    return found


def is_fragment(path: Path) -> bool:
    """Whether ``path`` is a recipe fragment (its name starts with ``_``)."""
    return path.name.startswith("_")


def recipe_keys() -> set[str]:
    """Top-level keys a recipe file may hold (``extends`` included)."""
    from kdkit.recipe.schema import Recipe

    return set(Recipe.model_fields) | {"extends"}


def is_foreign(path: Path) -> bool:
    """Whether ``path`` holds a mapping without a single recipe key (another tool's configuration)."""
    from kdkit.recipe.loading import read_yaml

    try:
        data = read_yaml(path)
    except RecipeError:
        return False  # broken YAML is reported by the recipe check itself
    return not (set(data) & recipe_keys())


def check_fragment(path: Path, registry: Registry) -> str:
    """Check a fragment for what it holds; returns a summary of its top-level keys.

    Raises:
        RecipeError: YAML errors, a duplicate or unknown key, an unknown plugin kind.
    """
    from kdkit.errors import unknown_name_message
    from kdkit.recipe.loading import read_yaml
    from kdkit.recipe.validation import BLOCK_TYPES, pydantic_problems, raw_blocks

    data = read_yaml(path)
    data.pop("extends", None)
    known = recipe_keys()
    problems = [Problem(key, unknown_name_message("recipe key", key, known)) for key in data if key not in known]
    for kind, where, block in raw_blocks(data):
        try:
            factory = registry.factory(kind, block["kind"])
        except UnknownPluginError as exc:
            problems.append(Problem(f"{where}.kind", str(exc)))
            continue
        try:
            factory.config.model_validate(block)
        except pydantic.ValidationError as exc:  # a fragment may leave required keys to its recipe
            envelope = tuple(BLOCK_TYPES[kind].model_fields.keys() - {"kind"})
            problems += [p for p in pydantic_problems(where, exc, factory.config, envelope)
                         if p.message != "required key is missing"]
    if problems:
        raise RecipeError(problems, str(path))
    return ", ".join(data) or "nothing"


def dry_build(recipe: Any, registry: Registry) -> None:
    """Everything ``kdkit run`` checks before its first step, without training: every component built
    on the CPU (teacher checkpoints are read), aligner chains against the student grid, each stage's
    trainable list resolved and each stage's data opened with the student (label counts checked).

    Raises:
        KdkitError: the first problem the build meets.
    """
    import torch

    from kdkit.engine import build

    distiller = build.build_distiller(recipe, registry, torch.device("cpu"))
    groups = build.parameter_groups(distiller)
    with tempfile.TemporaryDirectory(prefix="kdkit-validate-") as scratch:
        for name, stage in recipe.stages.items():
            build.resolve_trainable(name, stage.trainable, distiller, groups)
            context = dataclasses.replace(build.base_context(recipe, torch.device("cpu")), name=name,
                                          extras={"student": distiller.plugin, "run_dir": Path(scratch)})
            registry.build("data", stage.data.config, context)
    if not recipe.stages:
        raise KdkitError("the recipe has no stage")


@dataclasses.dataclass(frozen=True)
class TrainableScope:
    """What :func:`check_trainable` could check: ``skipped`` entries (left to ``--build``), or why nothing."""

    skipped: tuple[str, ...] = ()
    not_checked: str | None = None

    def note(self) -> str:
        """The words ``kdkit validate`` prints after ``ok``."""
        if self.not_checked is not None:
            return (f"trainable lists not checked: {self.not_checked}; run `kdkit validate --build` where the "
                    "student's files are")
        if self.skipped:
            entries = ", ".join(repr(e) for e in self.skipped)
            return (f"trainable lists checked except {entries} (KD heads are built from the teachers: "
                    "`kdkit validate --build`)")
        return "trainable lists checked"


def check_trainable(recipe: Any, registry: Registry) -> TrainableScope:
    """Resolve every stage's trainable list as ``kdkit run`` does, against the student's *skeleton*.

    The student (its factory's ``skeleton``: config files only, parameters on the meta device, no
    weight file read) gets its adapters injected on the meta device; teachers are not built, so
    neither are the KD heads (their sizes come from the teachers' output grids): the ``kd_heads``
    group and a regex that could match a KD head's name are skipped. Every other entry resolves
    through :func:`kdkit.engine.build.resolve_trainable` and fails with its message.

    A student whose files are absent, or a student or adapter plugin that fails on the meta device
    with anything but a :class:`KdkitError`, leaves the lists unchecked, with the reason.

    Raises:
        KdkitError: an entry that ``kdkit run`` refuses, or a student or adapter that cannot be built.
    """
    import torch

    from kdkit.engine import build
    from kdkit.engine.step import Distiller
    from kdkit.errors import FilesNotFound

    kind = recipe.student.kind
    skeleton = registry.factory("student", kind).skeleton
    if skeleton is None:
        return TrainableScope(not_checked=f"the {kind!r} student plugin offers no skeleton (a build without "
                                          "its weights)")
    context = build.base_context(recipe, torch.device("meta"))
    try:
        with torch.device("meta"):
            student = skeleton(recipe.student.config, dataclasses.replace(context, name="student"))
            adapters = {name: registry.build("adapter", block.config,
                                             dataclasses.replace(context, name=name, model=student.adapter_target))
                        for name, block in recipe.adapters.items()}
    except FilesNotFound as exc:
        return TrainableScope(not_checked=str(exc))
    except KdkitError:
        raise  # a recipe problem run would meet as well
    except Exception as exc:  # noqa: BLE001 -- a plugin that cannot build on the meta device: --build still can
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return TrainableScope(not_checked=f"the student could not be built on the meta device "
                                          f"({type(exc).__name__}{': ' + reason if reason else ''})")
    distiller = Distiller(student, adapters, {}, {}, None, {})
    groups = build.parameter_groups(distiller)
    unbuilt = (*(f"heads.aligners.{t}." for t in recipe.teachers), "heads.scorer.",
               *(f"heads.losses.{name}." for name in recipe.losses))
    skipped: list[str] = []
    for name, stage in recipe.stages.items():
        chosen = build.resolve_trainable(name, stage.trainable, distiller, groups, unbuilt)
        skipped += [e for e in stage.trainable if e not in chosen and e not in skipped]
    return TrainableScope(skipped=tuple(skipped))

"""Recipe -> components: the student with adapters injected, frozen teachers, aligner chains, the
scorer and the loss terms, assembled into one :class:`~kdkit.engine.step.Distiller`.

Every shape a plugin needs comes from the build context (the student's grid, each teacher's
aligned grid), never from recipe numbers. Nothing here knows a model or a teacher by name.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdkit.align import build_aligner_chain
from kdkit.engine.capabilities import capabilities_of
from kdkit.engine.step import Distiller
from kdkit.engine.teacher_pass import OnlineTeachers
from kdkit.errors import KdkitError
from kdkit.interfaces import BuildContext, Teacher, TeacherSource
from kdkit.recipe.schema import Recipe
from kdkit.registry import Registry


def base_context(recipe: Recipe, device: torch.device) -> BuildContext:
    """The context every block starts from: teacher names, data root and device."""
    return BuildContext(teacher_names=tuple(recipe.teachers), data_root=Path(recipe.runtime.data_root).expanduser(),
                        device=str(device))


def build_teacher(registry: Registry, name: str, block: Any, context: BuildContext, device: torch.device,
                  seed: int | None = None) -> nn.Module:
    """One frozen teacher on ``device``; refuses a teacher that could train.

    With ``seed``, the teacher is built under its own random state seeded with it, and the
    caller's random state is left as it was: whatever a teacher's construction draws (random
    init before its checkpoint loads) neither depends on nor changes what is built around it, so
    a run that reads a teacher from a cache initialises everything else exactly as one that builds it.
    """
    if seed is None:
        teacher = registry.build("teacher", block.config, dataclasses.replace(context, name=name))
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            teacher = registry.build("teacher", block.config, dataclasses.replace(context, name=name))
    if not isinstance(teacher, nn.Module) or not isinstance(teacher, Teacher):
        raise KdkitError(f"teachers.{name}: the teacher plugin {block.kind!r} must build an nn.Module with out_spec")
    if any(p.requires_grad for p in teacher.parameters()):
        raise KdkitError(f"teachers.{name}: the {block.kind!r} teacher has parameters that require grad; "
                         "teachers must be frozen (build them on kdkit.teacher.FrozenTeacher)")
    return teacher.to(device).eval()


def build_student(recipe: Recipe, registry: Registry, device: torch.device) -> tuple[Any, dict[str, Any]]:
    """The student plugin object and its adapters (by name), injected; no teacher is built.

    Adapters see the recipe's teacher names (MoLA sizes its teacher experts from them). The
    caller seeds and places the modules.
    """
    context = base_context(recipe, device)
    student = registry.build("student", recipe.student.config, dataclasses.replace(context, name="student"))
    adapters = {
        name: registry.build("adapter", block.config, dataclasses.replace(context, name=name, model=student.adapter_target))
        for name, block in recipe.adapters.items()
    }
    return student, adapters


def build_distiller(recipe: Recipe, registry: Registry, device: torch.device) -> Distiller:
    """Build every component of ``recipe`` (seeded with ``runtime.seed``) on ``device``."""
    torch.manual_seed(recipe.runtime.seed)
    context = base_context(recipe, device)
    student, adapters = build_student(recipe, registry, device)
    source = teacher_source(recipe, registry, context, device)
    specs = source.specs
    with_student = dataclasses.replace(context, student_spec=student.feature_spec, text_dim=student.text_dim)
    chains = {
        name: build_aligner_chain(registry, name, [b.config for b in block.align], specs[name], with_student)
        for name, block in recipe.teachers.items()
    }
    full = dataclasses.replace(
        with_student,
        teacher_specs={n: c.out_spec for n, c in chains.items()},
        teacher_token_specs={n: c.token_spec for n, c in chains.items()},
        extras={"student": student},
    )
    scorer = None
    if recipe.scorer is not None:
        scorer = registry.build("scorer", recipe.scorer.config, dataclasses.replace(full, name="scorer"))
    losses = {name: registry.build("loss", block.config, dataclasses.replace(full, name=name))
              for name, block in recipe.losses.items()}
    distiller = Distiller(student, adapters, source.teachers, chains, scorer, losses, source=source,
                          capabilities=capabilities_of(student, adapters)).to(device)
    k = recipe.runtime.forced_teachers
    if k is not None and k > len(recipe.teachers):
        raise KdkitError(f"runtime.forced_teachers: {k} teachers per step, but the recipe has {len(recipe.teachers)}")
    distiller.forced_teachers = k
    return distiller


def teacher_source(recipe: Recipe, registry: Registry, context: BuildContext, device: torch.device) -> TeacherSource:
    """The run's teacher source: every teacher online, or the ``runtime.teacher_cache`` (cached / hybrid).

    Each teacher is built under its own random state seeded with ``runtime.seed``
    (see :func:`build_teacher`); a teacher the cache serves entirely is never built.
    """
    runtime = recipe.runtime
    builders = {name: functools.partial(build_teacher, registry, name, block, context, device, runtime.seed)
                for name, block in recipe.teachers.items()}
    if runtime.teacher_cache is None or runtime.teacher_cache_mode == "online":
        return OnlineTeachers({name: build() for name, build in builders.items()})
    from kdkit.cache.source import open_cache

    return open_cache(context.resolve(runtime.teacher_cache), recipe.teachers, context, builders,
                      runtime.teacher_cache_mode, runtime.teacher_cache_append)


def module_prefix(root: nn.Module, target: nn.Module) -> str:
    """``"blocks.0."``-style prefix of ``target`` inside ``root`` (``""`` for the root itself)."""
    for name, module in root.named_modules():
        if module is target:
            return f"{name}." if name else ""
    raise KdkitError(f"{type(target).__name__} is not a sub-module of {type(root).__name__}")


#: The group of the KD heads' parameters (aligner chains, scorer, losses with parameters).
HEADS_GROUP = "kd_heads"


def parameter_groups(distiller: Distiller) -> dict[str, list[str]]:
    """Named groups of ``distiller`` parameter names: the student's own, ``adapters``, ``routers``, ``kd_heads``.

    The student's groups lose the injected adapter parameters, so ``vision_base`` means the base
    weights only.
    """
    groups: dict[str, list[str]] = {}
    for handle in distiller.adapters.values():
        prefix = "student." + module_prefix(distiller.student, handle.model)
        for group, params in handle.parameter_groups().items():
            groups.setdefault(group, []).extend(prefix + name for name in params)
    injected = {n for names in groups.values() for n in names}
    for group, names in distiller.plugin.parameter_groups().items():
        groups.setdefault(group, []).extend(n for n in ("student." + m for m in names) if n not in injected)
    groups[HEADS_GROUP] = [n for n, _ in distiller.heads.named_parameters(prefix="heads")]
    return groups


def resolve_trainable(stage: str, wanted: list[str], distiller: nn.Module, groups: dict[str, list[str]],
                      unbuilt: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """``{group or pattern: parameter names}`` for a stage's ``trainable`` list.

    Each entry is a group name, else a regular expression matched (``re.fullmatch``) against
    parameter names such as ``student.blocks.0.attn.qkv.weight``.

    Args:
        unbuilt: Name prefixes of parameters ``distiller`` lacks because they were not built (``kdkit
            validate`` builds no KD heads: ``("heads.aligners.clip.", ...)``). The ``kd_heads`` group and a
            regex that could match a name under one of them are left out of the result, not refused.

    Raises:
        KdkitError: an entry that matches nothing (the groups and example names are listed).
    """
    names = [n for n, _ in distiller.named_parameters()]
    chosen: dict[str, list[str]] = {}
    for i, entry in enumerate(wanted):
        if entry in groups:
            if unbuilt and entry == HEADS_GROUP:
                continue
            matched = groups[entry]
        else:
            try:
                pattern = re.compile(entry)
            except re.error as exc:
                raise KdkitError(f"stages.{stage}.trainable[{i}] {entry!r} is neither a group nor a valid regex: {exc}") from None
            matched = [n for n in names if pattern.fullmatch(n)]
            if not matched and any(may_match_under(entry, prefix) for prefix in unbuilt):
                continue
        if not matched:
            empty = " (an empty group in this recipe)" if entry in groups else ""
            raise KdkitError(
                f"stages.{stage}.trainable[{i}] {entry!r} matches no parameter{empty}; groups: {', '.join(groups)}; "
                f"or a regular expression on names such as {', '.join(names[:3])}")
        chosen[entry] = matched
    return chosen


def may_match_under(pattern: str, prefix: str) -> bool:
    """Whether regex ``pattern`` could fully match some name that starts with ``prefix``.

    Decided with the ``regex`` package's partial matching; True when that cannot be decided (its
    syntax differs from ``re``'s on ``pattern``).
    """
    import regex

    try:
        return regex.fullmatch(pattern, prefix, partial=True) is not None
    except (regex.error, TypeError, ValueError):
        return True


def set_trainable(distiller: nn.Module, chosen: dict[str, list[str]]) -> None:
    """``requires_grad`` True exactly on the chosen parameters (teachers are not in ``distiller``)."""
    selected = {n for names in chosen.values() for n in names}
    for name, param in distiller.named_parameters():
        param.requires_grad_(name in selected)


def trainable_table(distiller: nn.Module, chosen: dict[str, list[str]]) -> list[tuple[str, int]]:
    """``[(group or pattern, trainable parameter count)]`` plus a ``total`` row (each parameter counted once)."""
    params = dict(distiller.named_parameters())
    rows, seen = [], set()
    for entry, names in chosen.items():
        rows.append((entry, sum(params[n].numel() for n in names)))
        seen.update(names)
    rows.append(("total", sum(params[n].numel() for n in seen)))
    return rows

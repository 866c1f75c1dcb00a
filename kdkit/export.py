"""Export a trained student for inference, and load it back.

An export directory holds only what inference needs (no teacher, aligner, scorer or KD head)::

    student/              the student model in its library's own format (``student.export``)
    adapters/<name>/      each adapter's weights and config (``adapter.safetensors``, ``adapter.json``)
    kdkit_student.yaml    how to rebuild: the student block, the adapter blocks, the teacher names

Adapters whose experts are chosen per input (MoLA) stay separate modules with their routers;
:func:`load_student` injects them again and routes every forward (``routing: routed``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import yaml

from kdkit.errors import CheckpointError, KdkitError
from kdkit.interfaces import BuildContext, Exports, HasProcessor, Routable, SavesPeft

if TYPE_CHECKING:
    from kdkit.registry import Registry

MANIFEST = "kdkit_student.yaml"
STUDENT_DIR = "student"
#: The run's resolved recipe, copied into the export (not ``recipe.yaml``: that names a run directory).
RECIPE_COPY = "kdkit_recipe.yaml"
ADAPTERS_DIR = "adapters"
FORMAT = 1
#: Prefix of the student's tensors in a training checkpoint (the Distiller's ``student`` sub-module).
STUDENT_PREFIX = "student."


@dataclass(frozen=True)
class ParameterCount:
    """Parameters of the student at inference: the base model and what the adapters add.

    Attributes:
        base: Parameters of the model without adapters.
        groups: Parameters each adapter group adds (``adapters``, ``routers``), summed over adapters.
    """

    base: int
    groups: dict[str, int]

    @property
    def added(self) -> int:
        """Parameters the adapters add, all groups."""
        return sum(self.groups.values())

    @property
    def total(self) -> int:
        """Parameters at inference with the adapters."""
        return self.base + self.added

    @property
    def percent(self) -> float:
        """What the adapters add, in percent of the base model."""
        return 100.0 * self.added / self.base if self.base else 0.0

    def lines(self) -> list[str]:
        """A small table for the console."""
        rows = [f"base model            {self.base:>15,}"]
        rows += [f"+ {group:<19} {count:>15,}" for group, count in self.groups.items()]
        rows.append(f"with adapters         {self.total:>15,}  (+{self.percent:.3f}%)")
        return rows


def count_parameters(model: torch.nn.Module, adapters: dict[str, Any]) -> ParameterCount:
    """Count ``model`` (adapters injected) split into base and adapter groups (each tensor counted once)."""
    groups: dict[str, int] = {}
    seen: set[int] = set()
    for handle in adapters.values():
        for group, params in handle.parameter_groups().items():
            fresh = [p for p in params.values() if id(p) not in seen]
            seen.update(id(p) for p in fresh)
            groups[group] = groups.get(group, 0) + sum(p.numel() for p in fresh)
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return ParameterCount(base=total - sum(groups.values()), groups=groups)


def student_state(path: Path) -> dict[str, torch.Tensor]:
    """The student's tensors of the checkpoint directory ``path`` (names relative to the student model)."""
    from kdkit.engine.checkpoint import read_weights

    tensors = read_weights(path)
    return {k.removeprefix(STUDENT_PREFIX): v for k, v in tensors.items() if k.startswith(STUDENT_PREFIX)}


def load_trained(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> int:
    """Copy the trained tensors of a checkpoint into ``model``; returns how many were loaded.

    A checkpoint may hold only the parameters training changed: the others keep their built values.

    Raises:
        CheckpointError: a tensor the model does not have, or of another shape.
    """
    from kdkit.engine.checkpoint import check_model_state

    live = model.state_dict()
    check_model_state(source, {STUDENT_PREFIX + k: tuple(v.shape) for k, v in state.items()},
                      {STUDENT_PREFIX + k: tuple(v.shape) for k, v in live.items()})
    model.load_state_dict(state, strict=False)
    return len(state)


class TrainedStudent(NamedTuple):
    """What :func:`trained_student` returns: the student plugin object (eval mode), its adapter
    handles by name, the run's recipe and the checkpoint directory the weights came from."""

    student: Any
    adapters: dict[str, Any]
    recipe: Any
    checkpoint: Path


def trained_student(run_dir: str | Path, checkpoint: str | Path | None = None, data_root: str | Path | None = None,
                    registry: Registry | None = None) -> TrainedStudent:
    """The student of a training run, adapters injected, with the trained tensors of a checkpoint.

    Args:
        run_dir: A run directory (holds ``recipe.yaml`` and ``checkpoints/``).
        checkpoint: A checkpoint directory (default: the run's latest).
        data_root: Directory the recipe's relative paths resolve against (default: the recipe's).
        registry: Plugins to build from (default: every installed plugin).

    Returns:
        The student (eval mode: it is rebuilt to be evaluated or exported), its adapters, the recipe and
        the checkpoint used.

    Raises:
        CheckpointError: no recipe or checkpoint, a broken checkpoint, or one that does not fit.
    """
    from kdkit.engine.build import build_student
    from kdkit.engine.checkpoint import latest_checkpoint, list_checkpoints
    from kdkit.recipe import load_recipe

    run_dir = Path(run_dir)
    if registry is None:
        from kdkit.plugins import get_registry

        registry = get_registry()
    recipe_file = run_dir / "recipe.yaml"
    if not recipe_file.is_file():
        raise CheckpointError(f"{recipe_file} does not exist: {run_dir} is not a kdkit run directory")
    overrides = [f"runtime.data_root={data_root}"] if data_root is not None else []
    recipe = load_recipe(recipe_file, overrides, registry=registry)
    if checkpoint is None and not list_checkpoints(run_dir / "checkpoints"):
        raise CheckpointError(f"run {run_dir} has no checkpoint: it stopped before writing its first one "
                              "(runtime.checkpoint_every steps, or the end of its first stage)")
    source = Path(checkpoint) if checkpoint is not None else latest_checkpoint(run_dir / "checkpoints")
    state = student_state(source)
    torch.manual_seed(recipe.runtime.seed)  # as training built it: fresh parts (a new projector) come out the same
    student, adapters = build_student(recipe, registry, torch.device("cpu"))
    load_trained(student.model, state, source)
    student.model.eval()
    return TrainedStudent(student, adapters, recipe, source)


def export_run(run_dir: str | Path, out_dir: str | Path, checkpoint: str | Path | None = None,
               data_root: str | Path | None = None, registry: Registry | None = None,
               merge: bool = False) -> ParameterCount:
    """Export the student of a training run (its latest or a given checkpoint) to ``out_dir``.

    Args:
        run_dir: A run directory (holds ``recipe.yaml`` and ``checkpoints/``).
        out_dir: Where the export goes (created; must not hold an export yet).
        checkpoint: A checkpoint directory (default: the run's latest).
        data_root: Directory the recipe's relative paths resolve against (default: the recipe's).
        registry: Plugins to build from (default: every installed plugin).
        merge: Fold every adapter into the base weights (exact for plain LoRA only) and write the student
            at the top of ``out_dir``, a plain model of its library (e.g. ``LlavaForConditionalGeneration``).

    Besides the student and its adapters, ``out_dir`` receives the run's recipe (``kdkit_recipe.yaml``), a model card
    (``README.md``), the student's processor when it has one (``AutoProcessor.from_pretrained(out_dir)``)
    and each plain LoRA also in peft's format (``adapters/<name>/peft/``).

    Returns:
        The parameter count at inference, base model vs with adapters.

    Raises:
        CheckpointError: no recipe or checkpoint, a broken checkpoint, or one that does not fit.
        KdkitError: ``out_dir`` already holds an export; a student without ``export``; ``merge`` with an
            adapter that cannot be merged exactly (MoLA: its experts are weighted per input).
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise KdkitError(f"cannot export into {out_dir}: it is a file; choose a new or empty directory")
    if (out_dir / MANIFEST).exists():
        raise KdkitError(f"{out_dir} already holds an export ({MANIFEST}); choose another output directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        shown = ", ".join(sorted(p.name for p in out_dir.iterdir())[:5])
        raise KdkitError(f"cannot export into {out_dir}: it is not empty ({shown}) and is not an earlier export; "
                         "choose a new or empty directory")
    student, adapters, recipe, source = trained_student(run_dir, checkpoint, data_root, registry)
    if not isinstance(student, Exports):
        raise KdkitError(f"the {recipe.student.kind!r} student cannot be exported (it has no export method)")
    count = count_parameters(student.model, adapters)
    if merge:
        fixed = [f"{name} ({handle.config.kind})" for name, handle in adapters.items() if not handle.mergeable]
        if fixed:
            raise KdkitError(f"--merge: adapter {', '.join(fixed)} cannot be merged exactly (its experts are weighted "
                             "per input by its routers); export without --merge and load with kdkit.load_student")
        count = ParameterCount(base=count.total, groups={})

    from kdkit.model_card import provenance, write_model_card

    out_dir.mkdir(parents=True, exist_ok=True)
    blocks = {}
    for name, handle in adapters.items():
        if merge:
            handle.merge()
            continue
        handle.save(out_dir / ADAPTERS_DIR / name)
        blocks[name] = {"path": f"{ADAPTERS_DIR}/{name}", **handle.config.model_dump(mode="json")}
        if isinstance(handle, SavesPeft):
            handle.save_peft(student.model, out_dir / ADAPTERS_DIR / name / "peft")
    for handle in adapters.values():
        handle.eject()
    student_dir = "." if merge else STUDENT_DIR
    overrides_found = student.export(out_dir / student_dir)
    if student_dir != "." and isinstance(student, HasProcessor):
        student.processor().save_pretrained(out_dir)  # AutoProcessor.from_pretrained(out_dir); no config.json here
    (out_dir / RECIPE_COPY).write_bytes((run_dir / "recipe.yaml").read_bytes())
    manifest = {
        "format": FORMAT,
        "student_dir": student_dir,
        "student": {**recipe.student.config.model_dump(mode="json"), **overrides_found},
        "adapters": blocks,
        "teacher_names": list(recipe.teachers),
        "source": {"recipe": recipe.name, "checkpoint": source.name},
        "parameters": {"base": count.base, **count.groups, "total": count.total, "added_percent": round(count.percent, 4)},
        "provenance": provenance(recipe, source),
    }
    if merge:
        manifest["merged"] = list(adapters)
    (out_dir / MANIFEST).write_text(yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")
    write_model_card(out_dir)
    return count


def read_manifest(out_dir: Path) -> dict[str, Any]:
    """The ``kdkit_student.yaml`` of an export directory.

    Raises:
        CheckpointError: the directory or the file is missing, unreadable or of another format.
    """
    file = out_dir / MANIFEST
    if not out_dir.is_dir():
        raise CheckpointError(f"export directory {out_dir} does not exist; write one with `kdkit export RUN_DIR OUT_DIR`")
    if not file.is_file():
        raise CheckpointError(f"{file} is missing: {out_dir} is not a kdkit export (write one with `kdkit export`)")
    try:
        manifest = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{file} is corrupt ({exc}); export the run again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("student"), dict):
        raise CheckpointError(f"{file} is not a kdkit export manifest of format {FORMAT}; export the run again")
    return manifest


def load_student(out_dir: str | Path, device: str | torch.device = "cpu", registry: Registry | None = None) -> Any:
    """The exported student plugin object: adapters injected and loaded, eval mode, routing ``routed``.

    The adapter handles are kept on the returned object as ``kdkit_adapters`` (by name).

    Raises:
        CheckpointError: a missing or corrupt export (the file is named).
    """
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    if registry is None:
        from kdkit.plugins import get_registry

        registry = get_registry()
    context = BuildContext(name="student", teacher_names=tuple(manifest.get("teacher_names", ())),
                           data_root=out_dir / manifest.get("student_dir", STUDENT_DIR), device=str(device))
    student = registry.build("student", manifest["student"], context)
    adapters = {}
    for name, block in (manifest.get("adapters") or {}).items():
        block = dict(block)
        path = out_dir / block.pop("path")
        handle = registry.build("adapter", block, dataclasses.replace(context, name=name, model=student.adapter_target))
        try:
            handle.load(path)
        except CheckpointError:
            raise
        except Exception as exc:  # safetensors raises its own type on a truncated file
            raise CheckpointError(f"adapter {name!r}: {path} is corrupt ({exc}); export the run again") from None
        if isinstance(handle, Routable):
            handle.set_routing("routed")
        adapters[name] = handle
    student.model.to(device).eval()
    student.kdkit_adapters = adapters
    return student

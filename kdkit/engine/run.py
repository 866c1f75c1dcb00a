"""``kdkit run RECIPE``: one run from a recipe file, in one process or under ``torchrun``.

The run directory receives the resolved recipe (``recipe.yaml``), the environment
(``environment.json``), ``metrics.jsonl``, TensorBoard events, ``checkpoints/`` and, at the end,
the report (``report.md`` + PNG plots).
"""

from __future__ import annotations

import contextlib
import json
import platform
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdkit.engine.build import build_distiller
from kdkit.engine import lock
from kdkit.engine.checkpoint import (Checkpoint, check_model_state, latest_checkpoint, list_checkpoints, load_checkpoint,
                                     recipe_differences)
from kdkit.engine.distributed import World, close_world, init_world
from kdkit.engine.monitor import Monitor, console, truncate_metrics
from kdkit.loggers import build_loggers
from kdkit.engine.trainer import Trainer
from kdkit.engine.validation import prepare_validation
from kdkit.errors import CheckpointError, KdkitError, StorageError, storage_error
from kdkit.recipe import Recipe, dump_recipe, load_recipe, recipe_dict
from kdkit.registry import Registry

RECIPE_FILE = "recipe.yaml"
ENVIRONMENT_FILE = "environment.json"


def run_dir_of(recipe: Recipe) -> Path:
    """``runtime.output_dir`` with ``{name}`` replaced by the recipe's name."""
    return Path(recipe.runtime.output_dir.replace("{name}", recipe.name)).expanduser()


def environment(world: World) -> dict[str, Any]:
    """Versions and devices of this run (saved as ``environment.json``)."""
    import kdkit
    from kdkit.plugins import default_plugins

    devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    plugins = {p.name: p.version or "" for p in default_plugins().plugins if not p.error}
    return {
        "kdkit": kdkit.__version__, "python": platform.python_version(), "torch": torch.__version__,
        "platform": platform.platform(), "device": str(world.device), "cuda_devices": devices,
        "world_size": world.size, "strategy": world.strategy, "threads": torch.get_num_threads(), "plugins": plugins,
    }


def make_run_dir(run_dir: Path) -> None:
    """Create ``run_dir`` (and its parents).

    Raises:
        StorageError: the path (or a parent) is a file, or the location is not writable.
    """
    for parent in (run_dir, *run_dir.parents):
        if parent.exists() and not parent.is_dir():
            raise StorageError(f"cannot use {run_dir} as the run directory: {parent} is a file; "
                               "choose another runtime.output_dir (--output-dir)")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".kdkit-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise storage_error("write the run directory", run_dir, exc) from None


def check_run_dir(run_dir: Path, resume: bool, main: bool = True) -> bool:
    """Refuse to start a fresh run in a directory that holds another run (never overwrite one).

    A run that stopped before its first checkpoint has nothing to lose: it starts again, with or
    without ``--resume``. Returns whether the run starts from step 0.

    Raises:
        KdkitError: ``run_dir`` holds a run with a checkpoint and ``resume`` is False.
        CheckpointError: ``resume`` of a directory that never held a run.
    """
    if not list_checkpoints(run_dir / "checkpoints"):
        if (run_dir / RECIPE_FILE).exists():
            console(f"{run_dir} holds a run that stopped before its first checkpoint: starting it again from step 0", main)
        elif resume:
            raise CheckpointError(f"nothing to resume: {run_dir} holds no run; start it without --resume")
        return True
    if resume:
        return False
    held = [p.name for p in (run_dir / RECIPE_FILE, run_dir / "checkpoints", run_dir / "metrics.jsonl") if p.exists()]
    if held:
        raise KdkitError(f"output directory {run_dir} already holds a run ({', '.join(held)}); pass --resume to "
                         "continue it, or choose another runtime.output_dir (--output-dir)")
    return True


def find_resume(run_dir: Path, recipe_data: dict[str, Any]) -> Checkpoint:
    """The run directory's latest checkpoint, checked against this recipe.

    Raises:
        CheckpointError: no checkpoint, a broken one, or one of another recipe (the differences are listed).
    """
    checkpoint = load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))
    differences = recipe_differences(checkpoint.state.get("recipe", {}), recipe_data)
    if differences:
        shown = "; ".join(differences[:10]) + (f" (+{len(differences) - 10} more)" if len(differences) > 10 else "")
        raise CheckpointError(f"cannot resume from {checkpoint.path}: it was written by a different recipe; "
                              f"these parts differ (checkpoint -> now): {shown}")
    return checkpoint


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_recipe(recipe_path: str | Path, overrides: Iterable[str] = (), resume: bool = False,
               registry: Registry | None = None, tensorboard: bool = True, progress: bool = True,
               report: bool = True, break_lock: bool = False) -> Path:
    """Train the recipe at ``recipe_path`` (with ``--set`` overrides); returns the run directory.

    Args:
        recipe_path: The recipe file.
        overrides: ``key=value`` overrides.
        resume: Continue from the run directory's latest checkpoint.
        registry: Plugins to build from (default: every installed plugin).
        tensorboard: Use the default TensorBoard logger when the recipe names no ``loggers``.
        progress: Show a progress bar.
        report: Write the end-of-run report.
        break_lock: Take over the run directory's lock even when its owner on another host still beats
            (``kdkit run --break-lock``: the user checked that run is gone); a live run on this host is still refused.
    """
    if registry is None:
        from kdkit.plugins import get_registry

        registry = get_registry()
    recipe = load_recipe(recipe_path, overrides, registry=registry)
    recipe_data = recipe_dict(recipe)
    validation = prepare_validation(recipe, registry, str(recipe_path))  # the benchmark's files are read now
    world = init_world(recipe.runtime)
    held, monitor = None, None
    try:
        run_dir = run_dir_of(recipe)
        if world.main:  # one live run per directory: taken before anything is read or written
            make_run_dir(run_dir)
            held = lock.acquire(run_dir, recipe.runtime.lock_timeout, break_lock=break_lock)
        fresh = check_run_dir(run_dir, resume, world.main)
        checkpoint = find_resume(run_dir, recipe_data) if not fresh else None
        world.barrier()  # every rank checked the directory before rank 0 writes into it
        if world.main:
            try:
                dump_recipe(recipe, run_dir / RECIPE_FILE)
                (run_dir / ENVIRONMENT_FILE).write_text(json.dumps(environment(world), indent=2) + "\n", encoding="utf-8")
                truncate_metrics(run_dir, checkpoint.state["global_step"] if checkpoint is not None else 0)
            except OSError as exc:
                raise storage_error("write the run directory", run_dir, exc) from None
        seed_everything(recipe.runtime.seed)
        distiller = build_distiller(recipe, registry, world.device)
        if checkpoint is not None:  # fail now, not after wrapping; the trainer loads the tensors
            live = {k: tuple(v.shape) for k, v in distiller.state_dict().items()}
            check_model_state(checkpoint.path, checkpoint.shapes, live, checkpoint.state.get("trained", []))
            console(f"resuming from {checkpoint.path} (global step {checkpoint.state['global_step']})", world.main)
        loggers = build_loggers(recipe, registry, run_dir, tensorboard) if world.main else {}
        monitor = Monitor(run_dir, world.main, progress=progress, loggers=loggers, hyperparameters=recipe_data,
                          resumed=checkpoint is not None)
        Trainer(recipe, distiller, registry, world, run_dir, monitor, recipe_data, validation).fit(checkpoint)
        if world.main and report:
            from kdkit.engine.report import write_report

            write_report(run_dir)
            console(f"run finished: {run_dir / 'report.md'}", world.main)
        world.barrier()
        return run_dir
    finally:
        if monitor is not None:  # a failed run still flushes its events and lets go of its files
            with contextlib.suppress(OSError):
                monitor.close()
        lock.release(held)
        close_world(world)

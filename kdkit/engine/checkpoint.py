"""Training checkpoints that lose nothing, written atomically, the last K kept.

A checkpoint is a directory ``checkpoints/step-00000120/``. It holds exactly what the run has
changed: every parameter trained so far (adapters, routers, aligners, scorer and loss projections,
unfrozen student weights) and the persistent buffers, never a teacher and never a frozen base
weight (``--resume`` rebuilds those from the recipe, and a digest of them in ``state.json``
proves the rebuild gave the same values). Two layouts:

- ``safetensors`` (one process, DDP): ``model.safetensors``, ``optimizer.safetensors`` (tensors by
  parameter name) and ``optimizer.json``, written by rank 0;
- ``dcp`` (FSDP2): a ``dcp/`` directory written by every rank through
  ``torch.distributed.checkpoint`` (each rank its own shards; no rank gathers the model).

``state.json`` (step, stage, data position, scheduler, per-rank RNG states, the resolved recipe)
is written last. Everything goes into a temporary directory that is renamed into place, so a kill
during the write leaves the previous checkpoint intact; an existing checkpoint is never replaced.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from kdkit.errors import CheckpointError

FORMAT = 1
PREFIX = "step-"
#: Directory name of the best checkpoint by the recipe's ``eval.select`` metric, beside the last K.
BEST = "best"
TMP = ".tmp-"
SHARDED = "dcp"


@dataclass
class Checkpoint:
    """A checkpoint read back: everything but the tensors in ``state``.

    Attributes:
        path: The checkpoint directory.
        model: Model tensors by name (``safetensors`` layout; None for ``dcp``, read into the
            sharded model by :mod:`kdkit.engine.sharded`).
        optimizer: Name-keyed optimizer state dict (likewise).
        state: The contents of ``state.json``.
        shapes: Shape of every saved model tensor, by name (both layouts).
    """

    path: Path
    model: dict[str, Tensor] | None
    optimizer: dict[str, Any] | None
    state: dict[str, Any]
    shapes: dict[str, tuple[int, ...]]

    @property
    def sharded(self) -> bool:
        """True for the ``dcp`` layout (written under FSDP2)."""
        return self.state.get("layout") == SHARDED


def rng_state() -> dict[str, Any]:
    """Every random generator's state as JSON-able data (Python, NumPy, torch CPU and CUDA)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    return {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
        "cuda": [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def flatten_optimizer(optim: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """A name-keyed optimizer state dict -> (tensors ``state/<param>/<key>``, JSON-able rest)."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param, entries in optim.get("state", {}).items():
        for key, value in entries.items():
            if isinstance(value, Tensor):
                tensors[f"state/{param}/{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(param, {})[key] = value
    return tensors, {"param_groups": optim.get("param_groups", []), "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten_optimizer`."""
    state: dict[str, dict[str, Any]] = {p: dict(v) for p, v in rest.get("scalars", {}).items()}
    for key, value in tensors.items():
        _, body = key.split("/", 1)
        param, name = body.rsplit("/", 1)
        state.setdefault(param, {})[name] = value
    return {"state": state, "param_groups": rest["param_groups"]}


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
        handle.flush()
        os.fsync(handle.fileno())


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints in ``directory``, oldest first (temporary directories are ignored)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def save_checkpoint(directory: Path, step: int, model: dict[str, Tensor], optimizer: dict[str, Any],
                    state: dict[str, Any], keep_last: int) -> Path:
    """Write a checkpoint for global ``step`` atomically; remove all but the last ``keep_last``.

    Raises:
        CheckpointError: a checkpoint for this step already exists (it is never overwritten).
        StorageError: the filesystem refused the write (disk full, read-only...); the temporary
            directory is removed and every complete checkpoint is left as it was.
    """
    final = checkpoint_path(directory, step)
    tmp = prepare(directory, final, f"-{os.getpid()}")
    try:
        tmp.mkdir()
        optim_tensors, optim_rest = flatten_optimizer(optimizer)
        save_file({k: v.detach().cpu().contiguous() for k, v in model.items()}, str(tmp / "model.safetensors"))
        save_file(optim_tensors, str(tmp / "optimizer.safetensors"))
        _write_json(tmp / "optimizer.json", optim_rest)
        publish(tmp, final, {"layout": "safetensors", **state}, keep_last)
    except OSError as exc:
        raise write_failed(tmp, final, exc) from None
    except Exception as exc:  # safetensors reports I/O errors as its own type: "...: <reason> (os error N) at path ..."
        found = re.search(r"I/O error: (.*?) \(os error (\d+)\)", str(exc))
        if found is None:
            raise
        raise write_failed(tmp, final, OSError(int(found[2]), found[1])) from None
    return final


def write_failed(tmp: Path, final: Path, exc: OSError) -> Exception:
    """The error for a checkpoint write the filesystem refused, after removing its temporary directory."""
    from kdkit.errors import storage_error

    shutil.rmtree(tmp, ignore_errors=True)
    error = storage_error("write checkpoint", final, exc)
    file = f" (writing {Path(exc.filename).name})" if exc.filename else ""
    return type(error)(f"{error}{file}; no complete checkpoint was touched: free space or fix the location, "
                       "then continue with --resume")


def checkpoint_path(directory: Path, step: int) -> Path:
    """Where the checkpoint of global ``step`` lives."""
    return directory / f"{PREFIX}{step:08d}"


def prepare(directory: Path, final: Path, suffix: str = "") -> Path:
    """Refuse an existing ``final``, clear debris of killed writes; returns the temporary directory to fill.

    Raises:
        CheckpointError: ``final`` exists (a checkpoint is never overwritten).
    """
    if final.exists():
        raise CheckpointError(f"checkpoint {final} already exists; kdkit never overwrites a checkpoint")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from kdkit.errors import storage_error

        raise storage_error("create the checkpoint directory", directory, exc) from None
    for stale in directory.glob(f"{TMP}*"):  # left by a run killed while writing
        shutil.rmtree(stale, ignore_errors=True)
    return directory / f"{TMP}{final.name}{suffix}"


def publish(tmp: Path, final: Path, state: dict[str, Any], keep_last: int) -> None:
    """Write ``state.json`` last, rename ``tmp`` to ``final`` atomically, keep the last ``keep_last``."""
    _write_json(tmp / "state.json", {"format": FORMAT, **state})
    fsync_dir(tmp)
    os.rename(tmp, final)  # atomic: the checkpoint appears whole or not at all
    fsync_dir(final.parent)
    for old in list_checkpoints(final.parent)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def _read(path: Path, what: str) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path.parent} is incomplete: {path.name} ({what}) is missing; "
                              "resume from an earlier checkpoint (delete this directory)")
    try:
        if path.suffix == ".json":
            return json.loads(path.read_text(encoding="utf-8"))
        return load_file(str(path))
    except Exception as exc:  # safetensors and json raise their own types on truncation
        raise CheckpointError(f"checkpoint file {path} ({what}) is corrupt or truncated ({exc}); "
                              "resume from an earlier checkpoint (delete this directory)") from None


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint directory written by :func:`save_checkpoint`.

    Raises:
        CheckpointError: missing directory or file, truncated or corrupt file, unknown format.
    """
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist")
    state = _read(path / "state.json", "step, data position, RNG")
    if state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {state.get('format')!r}; this kdkit reads {FORMAT}")
    if state.get("layout") == SHARDED:
        from kdkit.engine.sharded import sharded_shapes

        return Checkpoint(path, None, None, state, sharded_shapes(path / SHARDED))
    model = _read(path / "model.safetensors", "model weights")
    optimizer = unflatten_optimizer(_read(path / "optimizer.safetensors", "optimizer tensors"),
                                    _read(path / "optimizer.json", "optimizer settings"))
    return Checkpoint(path, model, optimizer, state, {k: tuple(v.shape) for k, v in model.items()})


def read_weights(path: Path) -> dict[str, Tensor]:
    """Every model tensor of the checkpoint directory ``path``, full (unsharded), on the CPU, by name.

    Works on both layouts, in a single process (no process group needed): the way to take trained
    adapters, heads or student weights out of a run.
    """
    checkpoint = load_checkpoint(path)
    if checkpoint.model is not None:
        return checkpoint.model
    from kdkit.engine.sharded import read_sharded_weights

    return read_sharded_weights(path / SHARDED)


def latest_checkpoint(directory: Path) -> Path:
    """The newest checkpoint in ``directory``.

    Raises:
        CheckpointError: there is none.
    """
    found = list_checkpoints(directory)
    if not found:
        raise CheckpointError(f"nothing to resume: {directory} holds no checkpoint; start the run without --resume")
    return found[-1]


#: Settings that may change between a run and its resumption.
VOLATILE = ("runtime.output_dir", "runtime.data_root", "runtime.log_every", "runtime.checkpoint_every",
            "runtime.keep_last", "runtime.num_workers", "runtime.device", "runtime.lock_timeout", "description",
            "eval.every", "eval.batch_size")


def flat_items(data: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as ``{"a.b.c": value}`` (lists and scalars are leaves)."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flat_items(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def recipe_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``path: saved -> current`` for every recipe value that differs (volatile runtime keys ignored)."""
    old, new = flat_items(saved), flat_items(current)
    keys = sorted(k for k in old.keys() | new.keys() if not k.startswith(VOLATILE))
    absent = "<absent>"
    return [f"{k}: {old.get(k, absent)!r} -> {new.get(k, absent)!r}" for k in keys if old.get(k, absent) != new.get(k, absent)]


def check_model_state(path: Path, saved: dict[str, tuple[int, ...]], live: dict[str, tuple[int, ...]],
                      trained: Sequence[str] = ()) -> None:
    """Raise when the checkpoint's tensor shapes do not fit the live model's, or a ``trained`` tensor is absent.

    Names every mismatch, up to 8.
    """
    problems = [f"{k}: trained in this run but absent from the checkpoint" for k in trained if k not in saved]
    problems += [f"{k}: not in this model" for k in saved if k not in live]
    problems += [f"{k}: checkpoint {tuple(v)} vs model {tuple(live[k])}"
                 for k, v in saved.items() if k in live and tuple(v) != tuple(live[k])]
    if problems:
        more = f" (+{len(problems) - 8} more)" if len(problems) > 8 else ""
        raise CheckpointError(f"checkpoint {path} does not fit this recipe's model: " + "; ".join(problems[:8]) + more)

"""Sharded checkpoints for FSDP2 through ``torch.distributed.checkpoint`` (DCP).

Every rank writes its own shards of the model and optimizer state into ``dcp/`` of the
temporary checkpoint directory; no rank gathers the full model. Rank 0 then writes
``state.json`` and renames the directory into place after a barrier, so the checkpoint appears
whole or not at all, exactly like the single-writer ``safetensors`` layout. DCP reshards on load:
a run saved on 8 processes resumes on 4, or in one.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from kdkit.engine.checkpoint import SHARDED, TMP, checkpoint_path, prepare, publish
from kdkit.engine.distributed import World
from kdkit.errors import CheckpointError


def _single() -> bool:
    return not (dist.is_available() and dist.is_initialized())


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence DCP's notice that it runs in a single process (reading a checkpoint without torchrun is normal)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield


def save_sharded(directory: Path, step: int, model: dict[str, Any], optimizer: dict[str, Any], state: dict[str, Any],
                 keep_last: int, world: World) -> Path:
    """Write a checkpoint for global ``step`` from every rank's shards; every rank must call it.

    Args:
        directory: The run's ``checkpoints/`` directory (on a file system every rank sees).
        step: Global optimizer step.
        model: This rank's model state dict (DTensor shards under FSDP2), already filtered.
        optimizer: This rank's name-keyed optimizer state dict.
        state: JSON-able rest, written by rank 0.
        keep_last: How many checkpoints to keep.
        world: The processes of the run.

    Raises:
        CheckpointError: a checkpoint for this step already exists (checked on every rank).
    """
    import torch.distributed.checkpoint as dcp

    final = checkpoint_path(directory, step)
    tmp = directory / f"{TMP}{final.name}"
    if world.main:
        prepare(directory, final).mkdir()
    elif final.exists():  # every rank looks, so all raise together instead of one waiting in a collective
        raise CheckpointError(f"checkpoint {final} already exists; kdkit never overwrites a checkpoint")
    world.barrier()
    with _quiet():
        dcp.save({"model": model, "optimizer": optimizer}, checkpoint_id=tmp / SHARDED, no_dist=_single())
    world.barrier()  # every shard and the metadata are on disk
    if world.main:
        publish(tmp, final, {"layout": SHARDED, **state}, keep_last)
    world.barrier()
    return final


def _metadata(path: Path) -> Any:
    from torch.distributed.checkpoint import FileSystemReader

    if not (path / ".metadata").is_file():
        raise CheckpointError(f"checkpoint {path.parent} is incomplete: {SHARDED}/.metadata (the index of the "
                              "shards) is missing; resume from an earlier checkpoint (delete this directory)")
    try:
        return FileSystemReader(str(path)).read_metadata()
    except Exception as exc:  # pickle and stream errors on a truncated index
        raise CheckpointError(f"checkpoint file {path / '.metadata'} is corrupt or truncated ({exc}); "
                              "resume from an earlier checkpoint (delete this directory)") from None


def sharded_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Shape of every model tensor in the ``dcp/`` directory ``path``, by parameter name."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    entries = _metadata(path).state_dict_metadata
    return {key.removeprefix("model."): tuple(entry.size) for key, entry in entries.items()
            if key.startswith("model.") and isinstance(entry, TensorStorageMetadata)}


def load_sharded(path: Path, model: dict[str, Any] | None = None, optimizer: dict[str, Any] | None = None) -> None:
    """Fill ``model`` and/or ``optimizer`` (state dicts of this rank, sharded or not) in place from ``path``.

    Raises:
        CheckpointError: a shard file is missing, truncated or corrupt.
    """
    import torch.distributed.checkpoint as dcp

    wanted: dict[str, Any] = {}
    if model is not None:
        wanted["model"] = model
    if optimizer is not None:
        wanted["optimizer"] = optimizer
    _metadata(path)
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        with _quiet():
            dcp.load(wanted, checkpoint_id=path, no_dist=_single())
    except (Exception, CheckpointException) as exc:  # DCP's exception is a BaseException holding each rank's
        failures = exc.failures if isinstance(exc, CheckpointException) else {0: exc}
        causes = "; ".join(f"rank {r}: {type(e).__name__} {str(e).strip()[:120]}".strip() for r, e in failures.items())
        raise CheckpointError(f"checkpoint {path.parent} could not be read ({causes}); a shard is missing or "
                              "truncated: resume from an earlier checkpoint (delete this directory)") from None


def read_sharded_weights(path: Path) -> dict[str, Tensor]:
    """Every model tensor of the ``dcp/`` directory ``path``, full, on the CPU, in a single process."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    entries = _metadata(path).state_dict_metadata
    model = {key.removeprefix("model."): torch.empty(tuple(entry.size), dtype=entry.properties.dtype)
             for key, entry in entries.items() if key.startswith("model.") and isinstance(entry, TensorStorageMetadata)}
    load_sharded(path, model=model)
    return model

"""Processes started by ``torchrun``: the process group, DDP / FSDP2 wrapping, data sharding.

One code path serves a single CPU process and a multi-node GPU job: without ``torchrun`` the
world has one process and nothing is wrapped. gloo is the backend on CPU, NCCL on GPU; only
rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from kdkit.errors import KdkitError
from kdkit.recipe.schema import Runtime


@dataclass
class World:
    """This process's place among the processes of the run.

    Attributes:
        rank: Global rank.
        size: Number of processes.
        local_rank: Rank on this machine (picks the GPU).
        device: Device this process computes on.
        strategy: ``none``, ``ddp`` or ``fsdp2``.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    strategy: str = "none"

    @property
    def main(self) -> bool:
        """True on the process that logs and writes files (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group spans several processes."""
        return self.size > 1

    def barrier(self) -> None:
        """Wait for every process (no-op in a single process)."""
        if self.distributed:
            dist.barrier()

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """``tensor`` reduced over processes in place (``sum``, ``mean``, ``min``); returned."""
        if self.distributed:
            reduce_op = {"sum": dist.ReduceOp.SUM, "mean": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN}[op]
            dist.all_reduce(tensor, op=reduce_op)
            if op == "mean":
                tensor /= self.size
        return tensor

    def gather_objects(self, obj: Any) -> list[Any]:
        """``obj`` of every process, in rank order (``[obj]`` in a single process)."""
        if not self.distributed:
            return [obj]
        gathered: list[Any] = [None] * self.size
        dist.all_gather_object(gathered, obj)
        return gathered


def pick_device(runtime: Runtime, local_rank: int) -> torch.device:
    """The device of this process: ``cuda:<local rank>`` or ``cpu``."""
    wanted = runtime.device
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    if wanted == "cuda":
        if not torch.cuda.is_available():
            raise KdkitError("runtime.device is cuda but no CUDA device is visible; set runtime.device: cpu")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_world(runtime: Runtime) -> World:
    """Read the ``torchrun`` environment and join the process group when there are several processes.

    Raises:
        KdkitError: several processes with ``strategy: none``.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(runtime, local_rank)
    strategy = runtime.distributed.strategy
    if size > 1 and strategy == "none":
        raise KdkitError(f"torchrun started {size} processes but runtime.distributed.strategy is 'none'; "
                         "set it to ddp or fsdp2 (or run a single process)")
    if size > 1 and not dist.is_initialized():
        backend = runtime.distributed.backend
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" else "gloo"
        extra = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend, rank=rank, world_size=size, timeout=timedelta(minutes=30), **extra)
    return World(rank, size, local_rank, device, strategy if size > 1 else "none")


def close_world(world: World) -> None:
    """Leave the process group (when this process joined one)."""
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def shard(model: nn.Module, units: list[nn.Module], world: World) -> None:
    """Apply FSDP2 ``fully_shard`` to each unit, then to ``model`` (the root), in place."""
    from torch.distributed.fsdp import fully_shard

    for unit in units:
        fully_shard(unit)
    fully_shard(model)
    # top-1 routing may leave an expert unused on one rank only: reduce zeros for it everywhere
    model.set_reduce_scatter_unused_params(True)  # type: ignore[operator]


def wrap(model: nn.Module, world: World, units: list[nn.Module]) -> nn.Module:
    """``model`` ready for the stage's trainable set: DDP-wrapped, FSDP2-sharded, or as is.

    DDP registers hooks on the parameters that require grad when it is built, so call this at
    every stage start after setting ``requires_grad``. FSDP2 shards once and follows later
    ``requires_grad`` changes by itself.
    """
    if world.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [world.device.index] if world.device.type == "cuda" else None
        # unused parameters are normal here: a stage's losses may leave aligners or experts idle
        return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)
    if world.strategy == "fsdp2":
        from torch.distributed.fsdp import FSDPModule

        if not isinstance(model, FSDPModule):
            shard(model, units, world)
    return model


@contextlib.contextmanager
def gradient_sync(model: nn.Module, world: World, sync: bool) -> Iterator[None]:
    """Skip the gradient all-reduce / reduce-scatter on accumulation micro-batches (``sync=False``)."""
    if world.strategy == "ddp" and not sync:
        with model.no_sync():  # type: ignore[operator]
            yield
        return
    if world.strategy == "fsdp2":
        model.set_requires_gradient_sync(sync)  # type: ignore[operator]
    yield


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (FSDP2 modules are their own)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model

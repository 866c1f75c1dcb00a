"""A stage's data plan: gradient accumulation, steps, and a batch stream that can start anywhere.

Sample order depends only on the seed and the epoch (``DistributedSampler``), and optimizer step
``s`` reads micro-batches ``s * accumulation ...`` of this process's shard, so a resumed run
reads exactly the batches the uninterrupted run would have read.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from kdkit.engine.capabilities import data_capabilities
from kdkit.engine.distributed import World
from kdkit.errors import KdkitError
from kdkit.recipe.schema import Stage


@dataclass(frozen=True)
class Plan:
    """Sizes of one stage.

    Attributes:
        accumulation: Micro-batches per optimizer step on each process.
        batches_per_epoch: Micro-batches per epoch on each process.
        steps: Optimizer steps of the stage.
    """

    accumulation: int
    batches_per_epoch: int
    steps: int


def plan_stage(name: str, stage: Stage, dataset_size: int, world: World) -> Plan:
    """Accumulation = global / (world x per device), and the stage's step count.

    Raises:
        KdkitError: the global batch is not divisible, or the dataset is smaller than one batch.
    """
    batch = stage.batch
    per_step = world.size * batch.per_device
    if batch.global_size % per_step:
        raise KdkitError(
            f"stages.{name}.batch: global_size {batch.global_size} is not divisible by world size {world.size} x "
            f"per_device {batch.per_device} = {per_step}; choose a global_size that is a multiple of {per_step}")
    accumulation = batch.global_size // per_step
    batches = (dataset_size // world.size) // batch.per_device
    if batches == 0:
        raise KdkitError(f"stages.{name}: the dataset has {dataset_size} samples, fewer than one batch of "
                         f"{batch.per_device} per process on {world.size} processes")
    steps = stage.max_steps or max(1, math.floor((stage.epochs or 1.0) * batches / accumulation))
    return Plan(accumulation, batches, steps)


def batch_stream(dataset: Dataset, stage: Stage, plan: Plan, world: World, seed: int, start: int,
                 num_workers: int) -> Iterator[Any]:
    """Micro-batches of this process from global micro-batch index ``start`` on, epoch after epoch.

    A dataset with a ``group_order(indices, group, seed) -> indices`` method
    (:class:`~kdkit.interfaces.GroupsBatches`, e.g. length-grouped
    batching) reorders this process's indices of each epoch before they are cut into batches of
    ``group`` = ``per_device``; its seed depends only on ``seed`` and the epoch, so a resumed run
    still reads the same batches.
    """
    sampler = DistributedSampler(dataset, num_replicas=world.size, rank=world.rank, shuffle=True, seed=seed, drop_last=True)
    epoch, offset = divmod(start, plan.batches_per_epoch)
    per_device = stage.batch.per_device
    capabilities = data_capabilities(dataset)
    group_order = capabilities.group_order
    current = EpochIndices()
    # one loader for every epoch, so its workers persist (no process start per epoch); batches go to
    # pinned memory when they are bound for a GPU, so to_device's non-blocking copies overlap compute
    loader = DataLoader(dataset, batch_size=per_device, sampler=current, drop_last=True, num_workers=num_workers,
                        collate_fn=capabilities.collate, **loader_options(world.device, num_workers),
                        generator=torch.Generator())  # its own generator: never draws from the global RNG
    while True:
        sampler.set_epoch(epoch)
        order = list(sampler)
        if group_order is not None:
            order = list(group_order(order, per_device, seed * 1_000_003 + epoch))
        current.indices = order[offset * per_device: plan.batches_per_epoch * per_device]
        yield from loader
        epoch, offset = epoch + 1, 0


class EpochIndices(Sampler[int]):
    """The sample indices of the current epoch, replaced before each pass of one long-lived loader."""

    def __init__(self) -> None:
        self.indices: list[int] = []

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def loader_options(device: torch.device, num_workers: int) -> dict[str, Any]:
    """DataLoader settings for ``device``: pinned batches for CUDA, persistent workers when there are any."""
    return {"pin_memory": device.type == "cuda", "persistent_workers": num_workers > 0}


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor moved to ``device`` (dicts, lists and tuples walked)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch

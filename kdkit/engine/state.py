"""The trainer's running state: metric accumulation between logs, checkpoint save and restore.

Model and optimizer states are gathered with ``torch.distributed.checkpoint.state_dict`` (full,
name-keyed tensors on rank 0 whatever the wrapping: none, DDP or FSDP2), so a checkpoint can be
resumed on another number of processes; RNG states are kept per rank.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from kdkit.engine.checkpoint import Checkpoint, rng_state, save_checkpoint, set_rng_state
from kdkit.engine.distributed import World

if TYPE_CHECKING:
    from kdkit.engine.loader import Plan
    from kdkit.engine.step import Distiller
    from kdkit.engine.trainer import Trainer


def _options(world: World, saving: bool) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    if not world.distributed:
        return None
    return StateDictOptions(full_state_dict=True, cpu_offload=saving)


def save(trainer: Trainer, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, index: int,
         stage: str, stage_step: int, plan: Plan) -> None:
    """Write a checkpoint after ``stage_step`` of ``stage`` (every process takes part; rank 0 writes)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    world = trainer.world
    weights = get_model_state_dict(model, options=_options(world, True))
    optim = get_optimizer_state_dict(model, optimizer, options=_options(world, True))
    rngs = world.gather_objects(rng_state())
    if world.main:
        params = {n for n, _ in trainer.distiller.named_parameters()}
        # what training changed (every stage's trainable set) and every persistent buffer
        kept = {k: v for k, v in weights.items() if k in trainer.trained or k not in params}
        micro = stage_step * plan.accumulation
        meta = {
            "stage_index": index, "stage": stage, "stage_step": stage_step, "stage_steps": plan.steps,
            "stage_done": stage_step == plan.steps, "global_step": trainer.global_step,
            "trained": sorted(trainer.trained), "skipped": trainer.meter.skipped, "scheduler": scheduler.state_dict(),
            "scaler": trainer.scaler.state_dict() if trainer.scaler else None, "rng": rngs,
            "data": {"micro_batches": micro, "epoch": micro // plan.batches_per_epoch,
                     "offset": micro % plan.batches_per_epoch, "world_size": world.size,
                     "accumulation": plan.accumulation},
            "recipe": trainer.recipe_data,
        }
        save_checkpoint(trainer.run_dir / "checkpoints", trainer.global_step, kept, optim, meta, trainer.runtime.keep_last)
    world.barrier()


def restore(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any, resume: Checkpoint,
            world: World) -> int:
    """Load optimizer, scheduler, scaler and this rank's RNG from ``resume``; returns the stage step to start at."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, resume.optimizer, options=_options(world, False))
    scheduler.load_state_dict(resume.state["scheduler"])
    if scaler is not None and resume.state.get("scaler"):
        scaler.load_state_dict(resume.state["scaler"])
    rngs = resume.state["rng"]
    set_rng_state(rngs[min(world.rank, len(rngs) - 1)])
    return int(resume.state["stage_step"])


class Meter:
    """Sums of losses and timings between two logged steps, reduced over processes when logged."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.skipped = 0
        self.shown: tuple[float | None, float, float] = (None, 0.0, 0.0)
        self.reset()

    def reset(self) -> None:
        """Start a new logging interval."""
        self.sums: dict[str, Tensor] = {}
        self.total = torch.zeros((), device=self.world.device)
        self.grad_norm = torch.zeros((), device=self.world.device)
        self.micro = self.steps = self.samples = 0
        self.step_time = self.model_time = 0.0

    def add(self, losses: dict[str, Tensor], total: Tensor) -> None:
        """One micro-batch's unweighted terms and weighted total (no host sync)."""
        for name, loss in losses.items():
            value = loss.detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.total = self.total + total.detach().float()
        self.micro += 1

    def time(self, samples: int, step_time: float, model_time: float, grad_norm: Tensor) -> None:
        """One optimizer step: global samples, wall time, forward+backward time, gradient norm."""
        self.steps += 1
        self.samples += samples
        self.step_time += step_time
        self.model_time += model_time
        self.grad_norm = self.grad_norm + grad_norm.detach().float()

    def last(self, scheduler: Any) -> tuple[float | None, float, float]:
        """Loss, learning rate and samples/s of the last logged interval (for the progress bar)."""
        loss, _, rate = self.shown
        return loss, float(scheduler.get_last_lr()[0]), rate

    def record(self, step: int, stage: str, stage_step: int, scheduler: Any, distiller: Distiller) -> dict[str, Any]:
        """The interval's record (means over micro-batches and processes), then reset."""
        names = list(self.sums)
        values = torch.stack([self.sums[n] for n in names] + [self.total, self.grad_norm * self.micro / max(1, self.steps)])
        values = self.world.all_reduce(values / max(1, self.micro), "mean").tolist()
        rate = self.samples / max(self.step_time, 1e-9)
        record: dict[str, Any] = {
            "step": step, "stage": stage, "stage_step": stage_step, "lr": float(scheduler.get_last_lr()[0]),
            "loss": values[-2], "losses": dict(zip(names, values[:-2])), "grad_norm": values[-1],
            "samples_per_s": rate, "time_step": self.step_time / max(1, self.steps),
            "time_model": self.model_time / max(1, self.steps),
            "time_overhead": (self.step_time - self.model_time) / max(1, self.steps), "skipped": self.skipped,
            "routing": self.routing(distiller),
        }
        self.shown = (record["loss"], record["lr"], rate)
        self.reset()
        return record

    def routing(self, distiller: Distiller) -> dict[str, dict[str, list[float]]]:
        """``{group: {block: fraction of tokens per expert}}`` since the last record, over all processes."""
        found: dict[str, dict[str, list[float]]] = {}
        for handle in distiller.adapters.values():
            usage = handle.usage(reset=True) if hasattr(handle, "usage") else {}
            for block, groups in usage.items():
                for group, counts in groups.items():
                    counts = self.world.all_reduce(counts.detach().float().clone())
                    found.setdefault(group, {})[block] = (counts / counts.sum().clamp_min(1)).tolist()
        return found

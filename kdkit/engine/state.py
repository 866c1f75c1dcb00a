"""The trainer's running state: metric accumulation between logs, checkpoint save and restore.

A checkpoint keeps what the run changed: the parameters of every stage's trainable set so far
(``Trainer.trained``) and the persistent buffers (small, and a frozen module in training mode,
such as a BatchNorm, still updates its running statistics). Frozen weights are rebuilt by
``--resume`` from the recipe and seed; a float64 digest of each (sum and norm) is stored and
compared, so a changed base checkpoint file or build is an error instead of a silent drift.
Without FSDP2 the tensors are taken from the unwrapped model (no copy of the frozen rest) and
rank 0 writes ``safetensors``; with FSDP2 every rank writes its shards with
``torch.distributed.checkpoint``. RNG states are kept per rank.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from kdkit.engine.checkpoint import Checkpoint, rng_state, save_checkpoint, set_rng_state
from kdkit.engine.distributed import World, unwrap
from kdkit.errors import CheckpointError

if TYPE_CHECKING:
    from kdkit.engine.loader import Plan
    from kdkit.engine.step import Distiller
    from kdkit.engine.trainer import Trainer


def _options(world: World, saving: bool) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    if not world.distributed:
        return None
    return StateDictOptions(full_state_dict=True, cpu_offload=saving)


def kept_names(model: nn.Module, trained: set[str]) -> set[str]:
    """State-dict names a checkpoint holds: ``trained`` parameters and every persistent buffer."""
    module = unwrap(model)
    params = {n for n, _ in module.named_parameters()}
    return {k for k in module.state_dict() if k in trained or k not in params}


def frozen_digest(model: nn.Module, trained: set[str], world: World) -> dict[str, list[float]]:
    """``{name: [sum, 2-norm]}`` in float64 of every parameter NOT in ``trained`` (all ranks call it).

    Under FSDP2 each rank sums its shards and the sums are reduced (one collective).
    """
    frozen = [(n, p) for n, p in unwrap(model).named_parameters() if n not in trained]
    if not frozen:
        return {}
    rows = []
    for _, param in frozen:
        local = param.detach()
        local = local.to_local() if isinstance(local, DTensor) else local
        rows.append(torch.stack([local.sum(dtype=torch.float64), torch.linalg.vector_norm(local, dtype=torch.float64) ** 2]))
    values = torch.stack(rows)
    if world.strategy == "fsdp2":
        values = world.all_reduce(values)
    values[:, 1] = values[:, 1].sqrt()
    return {name: row for (name, _), row in zip(frozen, values.tolist(), strict=True)}


def check_frozen(path: Any, saved: dict[str, list[float]], live: dict[str, list[float]]) -> None:
    """Raise when the rebuilt frozen weights differ from those the run trained against (up to 8 named)."""
    changed = [n for n, (total, norm) in saved.items()
               if n not in live or not (math.isclose(live[n][0], total, rel_tol=1e-6, abs_tol=1e-6)
                                        and math.isclose(live[n][1], norm, rel_tol=1e-6, abs_tol=1e-6))]
    if changed:
        more = f" (+{len(changed) - 8} more)" if len(changed) > 8 else ""
        raise CheckpointError(
            f"cannot resume from {path}: the frozen weights rebuilt from the recipe differ from the ones the run "
            f"trained against ({', '.join(changed[:8])}{more}); a base checkpoint file or a plugin's build changed "
            "since the run started: restore them, or start a new run")


def save(trainer: Trainer, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, index: int,
         stage: str, stage_step: int, plan: Plan) -> None:
    """Write a checkpoint after ``stage_step`` of ``stage`` (every process takes part)."""
    world = trainer.world
    kept = kept_names(model, trainer.trained)
    key = frozenset(trainer.trained)
    if trainer.digest[0] != key:  # frozen weights never change: one digest per trainable set
        trainer.digest = (key, frozen_digest(model, trainer.trained, world))
    micro = stage_step * plan.accumulation
    meta = {
        "stage_index": index, "stage": stage, "stage_step": stage_step, "stage_steps": plan.steps,
        "stage_done": stage_step == plan.steps, "global_step": trainer.global_step,
        "trained": sorted(trainer.trained), "frozen": trainer.digest[1], "skipped": trainer.meter.skipped,
        "scheduler": scheduler.state_dict(), "scaler": trainer.scaler.state_dict() if trainer.scaler else None,
        "rng": world.gather_objects(rng_state()),
        "data": {"micro_batches": micro, "epoch": micro // plan.batches_per_epoch,
                 "offset": micro % plan.batches_per_epoch, "world_size": world.size,
                 "accumulation": plan.accumulation},
        "recipe": trainer.recipe_data,
    }
    if trainer.validation is not None:  # a resumed run must not replace a better best with a worse one
        meta["best"] = trainer.validation.best
    directory = trainer.run_dir / "checkpoints"
    if world.strategy == "fsdp2":
        from torch.distributed.checkpoint.state_dict import get_state_dict

        from kdkit.engine.sharded import save_sharded

        weights, optim = get_state_dict(model, optimizer)  # this rank's shards: nothing is gathered
        weights = {k: v for k, v in weights.items() if k in kept}
        save_sharded(directory, trainer.global_step, weights, optim, meta, trainer.runtime.keep_last, world)
        return
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    optim = get_optimizer_state_dict(model, optimizer, options=_options(world, True))
    if world.main:
        weights = {k: v for k, v in unwrap(model).state_dict().items() if k in kept}
        save_checkpoint(directory, trainer.global_step, weights, optim, meta, trainer.runtime.keep_last)
    world.barrier()


def load_weights(model: nn.Module, resume: Checkpoint, world: World) -> None:
    """Check the rebuilt frozen weights against ``resume``'s digest, then load its tensors into ``model``.

    ``model`` is wrapped for the world already (FSDP2 loads its own shards from a ``dcp`` checkpoint).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict

    check_frozen(resume.path, resume.state.get("frozen", {}), frozen_digest(model, set(resume.state["trained"]), world))
    if resume.model is not None and world.strategy != "fsdp2":
        unwrap(model).load_state_dict(resume.model, strict=False)
        return
    if resume.model is not None:  # full tensors into FSDP2 shards
        set_model_state_dict(model, resume.model, options=StateDictOptions(full_state_dict=True, strict=False))
        return
    from kdkit.engine.checkpoint import SHARDED
    from kdkit.engine.sharded import load_sharded

    weights = {k: v for k, v in get_model_state_dict(model).items() if k in resume.shapes}
    load_sharded(resume.path / SHARDED, model=weights)
    set_model_state_dict(model, weights, options=StateDictOptions(strict=False))


def restore(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any, resume: Checkpoint,
            world: World) -> int:
    """Load optimizer, scheduler, scaler and this rank's RNG from ``resume``; returns the stage step to start at."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    if resume.optimizer is not None:
        set_optimizer_state_dict(model, optimizer, resume.optimizer, options=_options(world, False))
    else:
        from kdkit.engine.checkpoint import SHARDED
        from kdkit.engine.sharded import load_sharded

        optim = get_optimizer_state_dict(model, optimizer)  # the layout to fill, shards under FSDP2
        load_sharded(resume.path / SHARDED, optimizer=optim)
        set_optimizer_state_dict(model, optimizer, optim)
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
        for handle in distiller.capabilities.routers:
            usage = handle.usage(reset=True)
            for block, groups in usage.items():
                for group, counts in groups.items():
                    counts = self.world.all_reduce(counts.detach().float().clone())
                    found.setdefault(group, {})[block] = (counts / counts.sum().clamp_min(1)).tolist()
        return found

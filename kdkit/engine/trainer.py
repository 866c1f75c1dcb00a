"""Stages, optimizer steps with gradient accumulation and autocast, guards, logging, checkpoints.

Each stage builds its data, resolves its trainable set, wraps the model for the world (DDP /
FSDP2), and runs its optimizer steps; the next stage starts from the result. A resumed run
continues inside the stage, at the step, data position and RNG state of its checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from kdkit.engine import build, state
from kdkit.engine.capabilities import data_capabilities
from kdkit.engine.checkpoint import Checkpoint, set_rng_state
from kdkit.engine.distributed import World, gradient_sync, wrap
from kdkit.engine.loader import Plan, batch_stream, plan_stage, to_device
from kdkit.engine.monitor import Monitor, console
from kdkit.engine.optim import make_optimizer, make_scheduler
from kdkit.engine.step import Distiller, weighted_total
from kdkit.errors import KdkitError
from kdkit.recipe.schema import Recipe, Runtime, Stage
from kdkit.registry import Registry

if TYPE_CHECKING:
    from kdkit.engine.validation import Validation

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLoss(KdkitError):
    """A loss term (or the gradient norm) went NaN or infinite; the message names step, term and batch ids."""


def autocast(device: torch.device, precision: str) -> Any:
    """bf16/fp16 autocast of the student on ``device`` (fp32: none)."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def out_of_memory_message(name: str, stage_step: int, stage: Stage, runtime: Runtime, device: torch.device) -> str:
    """Where a step ran out of memory, and what to change: only the savings that are still off.

    Args:
        name: The stage's name.
        stage_step: The 0-based step of the stage that ran out of memory.
        stage: The stage's settings.
        runtime: The run's settings.
        device: The device that ran out of memory.
    """
    fixes: list[str] = []
    if stage.batch.per_device > 1:
        fixes.append(f"lower stages.{name}.batch.per_device (accumulation keeps the global batch)")
    off: list[str] = []  # memory savings not in use yet
    on: list[str] = []  # those already in use (named so that nobody recommends them again)
    if runtime.gradient_checkpointing:
        on.append("runtime.gradient_checkpointing: true")
        if runtime.checkpoint_forced_passes is False:
            off.append("runtime.checkpoint_forced_passes: true")
    else:
        off.append("runtime.gradient_checkpointing: true")
    if runtime.precision == "fp32":
        off.append("runtime.precision: bf16")
    else:
        on.append(f"runtime.precision: {runtime.precision}")
    if runtime.distributed.strategy == "fsdp2":
        on.append("runtime.distributed.strategy: fsdp2")
    else:
        off.append("runtime.distributed.strategy: fsdp2 (shards weights, gradients and optimizer state over the GPUs)")
    if off:
        fixes.append("set " + " / ".join(off))
    if not fixes:
        fixes.append(f"train fewer parameters (stages.{name}.trainable) or use a device with more memory")
    message = (f"out of memory in stage {name!r} step {stage_step + 1} with batch.per_device={stage.batch.per_device} "
               f"on {device}: " + ", or ".join(fixes))
    return message + (f"; already on: {', '.join(on)}" if on else "")


class Trainer:
    """Runs a recipe's stages on a built :class:`Distiller`.

    Args:
        recipe: The validated recipe.
        distiller: The built student + KD heads (unwrapped; checkpoint weights already loaded).
        registry: Where data plugins are found.
        world: This process's place in the run.
        run_dir: The run directory (checkpoints go to ``run_dir/checkpoints``).
        monitor: Progress bar and metric writers.
        recipe_data: The resolved recipe (stored in every checkpoint).
        validation: The recipe's ``eval`` block with its benchmark built, or None.
    """

    def __init__(self, recipe: Recipe, distiller: Distiller, registry: Registry, world: World, run_dir: Path,
                 monitor: Monitor, recipe_data: dict[str, Any], validation: Validation | None = None) -> None:
        self.recipe, self.distiller, self.registry, self.world = recipe, distiller, registry, world
        self.run_dir, self.monitor, self.recipe_data = run_dir, monitor, recipe_data
        self.validation = validation
        if validation is not None:
            validation.attach(world, distiller.plugin)
        self.runtime = recipe.runtime
        self.weights = {name: block.weight for name, block in recipe.losses.items()}
        self.global_step = 0
        self.trained: set[str] = set()
        self.digest: tuple[frozenset[str] | None, dict[str, list[float]]] = (None, {})
        self.pending: Checkpoint | None = None  # weights to load once the first stage has wrapped the model
        self.datasets: dict[str, Any] = {}
        self.meter = state.Meter(world)
        self.scaler = torch.amp.GradScaler(world.device.type) if self.runtime.precision == "fp16" else None
        if recipe.runtime.gradient_checkpointing:
            if distiller.capabilities.checkpointing is None:
                raise KdkitError(f"runtime.gradient_checkpointing: the {recipe.student.kind!r} student does not "
                                 "support it (it has no enable_gradient_checkpointing)")
            distiller.enable_checkpointing(forced_passes=recipe.runtime.checkpoint_forced_passes is not False)

    # stages ----------------------------------------------------------------------------------
    def fit(self, resume: Checkpoint | None = None) -> None:
        """Run every stage in order (from the checkpoint's position when resuming)."""
        if resume is not None:
            self.global_step = resume.state["global_step"]
            self.trained = set(resume.state["trained"])
            self.meter.skipped = resume.state.get("skipped", 0)
            self.pending = resume
            if self.validation is not None:
                self.validation.resume(resume.state.get("best"), self.run_dir / "checkpoints", self.world.main)
        # every stage's data is opened before the first step: a bad path or file fails now, not hours in
        self.datasets = {name: self.build_data(name, stage) for name, stage in self.recipe.stages.items()}
        groups = build.parameter_groups(self.distiller)  # likewise every stage's trainable list
        for name, stage in self.recipe.stages.items():
            build.resolve_trainable(name, stage.trainable, self.distiller, groups)
        for index, (name, stage) in enumerate(self.recipe.stages.items()):
            if resume is not None and index < resume.state["stage_index"]:
                continue
            here = resume if resume is not None and index == resume.state["stage_index"] else None
            if resume is not None and here is None and index == resume.state["stage_index"] + 1 and resume.state["stage_done"]:
                set_rng_state(resume.state["rng"][self.world.rank])
            self.run_stage(index, name, stage, here)
        self.distiller.source.flush()  # a hybrid cache publishes the rows it appended
        self.distiller.eval()  # training is over: whatever uses the model next evaluates it
        self.monitor.close()

    def build_data(self, name: str, stage: Stage) -> Any:
        """The stage's dataset; its plugin sees the student (tokenizer, image tokens) and the run directory."""
        context = dataclasses.replace(build.base_context(self.recipe, self.world.device), name=name,
                                      extras={"student": self.distiller.plugin, "run_dir": self.run_dir})
        dataset = self.registry.build("data", stage.data.config, context)
        runtime = self.recipe.runtime
        if runtime.teacher_cache is not None and runtime.teacher_cache_mode != "online" and data_capabilities(dataset).augments:
            raise KdkitError(f"stages.{name}.data: the {stage.data.kind!r} data augments its images at random, so its "
                             f"teacher outputs change from one reading to the next and runtime.teacher_cache cannot serve "
                             "them; turn its augmentation off, or set runtime.teacher_cache_mode: online")
        return dataset

    def run_stage(self, index: int, name: str, stage: Stage, resume: Checkpoint | None) -> None:
        """Set up one stage (data, trainable set, wrapping, optimizer) and run its steps."""
        if resume is not None and resume.state["stage_done"]:
            return
        dataset = self.datasets[name] if name in self.datasets else self.build_data(name, stage)
        plan = plan_stage(name, stage, len(dataset), self.world)
        chosen = build.resolve_trainable(name, stage.trainable, self.distiller, build.parameter_groups(self.distiller))
        build.set_trainable(self.distiller, chosen)  # before wrapping: DDP hooks what requires grad
        sharding = self.distiller.capabilities.shard_units
        units = sharding.shard_units() if sharding is not None else []
        model = wrap(self.distiller, self.world, units)
        if self.pending is not None:  # after wrapping: FSDP2 reads its own shards
            state.load_weights(model, self.pending, self.world)
            self.pending = None
        self.trained |= {n for names in chosen.values() for n in names}
        self.distiller.active = tuple(stage.losses or self.recipe.losses)
        rows = "\n".join(f"  {group:<24} {count:>14,}" for group, count in build.trainable_table(self.distiller, chosen))
        console(f"stage {name!r}: {plan.steps} steps, accumulation {plan.accumulation}, "
                f"losses {', '.join(self.distiller.active)}; trainable parameters:\n{rows}", self.world.main)
        optimizer = make_optimizer(model, stage.optimizer)
        scheduler = make_scheduler(optimizer, stage.schedule, plan.steps)
        start = 0
        if resume is not None:
            start = state.restore(model, optimizer, scheduler, self.scaler, resume, self.world)
        stream = batch_stream(dataset, stage, plan, self.world, self.runtime.seed, start * plan.accumulation,
                              self.runtime.num_workers)
        self.monitor.stage_start(name, plan.steps, start)
        meter = self.meter
        for stage_step in range(start, plan.steps):
            self.optimizer_step(model, optimizer, scheduler, stream, plan, stage, name, stage_step, meter)
            self.global_step += 1
            last = stage_step + 1 == plan.steps
            if self.global_step % self.runtime.log_every == 0 or last:
                self.monitor.log(meter.record(self.global_step, name, stage_step + 1, scheduler, self.distiller))
            self.monitor.advance(*meter.last(scheduler))
            best = self.validation is not None and self.validation.due(self.global_step, name, last) \
                and self.validation.run(self, model, name, stage_step + 1)
            if best or self.global_step % self.runtime.checkpoint_every == 0 or last:  # a new best gets its checkpoint
                state.save(self, model, optimizer, scheduler, index, name, stage_step + 1, plan)
            if best and self.validation is not None:
                self.validation.publish(self.run_dir / "checkpoints", self.world)
        self.monitor.close_bar()

    # one optimizer step ----------------------------------------------------------------------
    def optimizer_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, stream: Iterator[Any],
                       plan: Plan, stage: Stage, name: str, stage_step: int, meter: state.Meter) -> None:
        """Accumulate ``plan.accumulation`` micro-batches, check every term is finite, clip, update.

        The one place training switches the model to train mode (see :meth:`Distiller.train`):
        before every step, so an evaluation in between may leave it in eval mode.
        """
        model.train()
        started = time.perf_counter()
        model_time = 0.0
        finite: list[Tensor] = []
        batches: list[Any] = []
        for micro in range(plan.accumulation):
            batch = to_device(next(stream), self.world.device)
            tick = time.perf_counter()
            try:
                with gradient_sync(model, self.world, sync=micro == plan.accumulation - 1):
                    with autocast(self.world.device, self.runtime.precision):
                        losses, step = model(batch)
                        total = weighted_total(losses, self.weights)
                    scaled = total / plan.accumulation
                    if scaled.requires_grad:  # else every term reported itself non-finite: the guard below names them
                        (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            except torch.OutOfMemoryError:
                raise KdkitError(out_of_memory_message(name, stage_step, stage, self.runtime, self.world.device)) from None
            model_time += time.perf_counter() - tick
            values = torch.stack([loss.detach().float() for loss in losses.values()])
            finite.append(torch.isfinite(values))
            batches.append((batch.get("ids"), step.extras.get("nonfinite", {})))
            meter.add(losses, total)
        if self.scaler:
            self.scaler.unscale_(optimizer)
        grad_norm = self.clip(model, stage.optimizer.grad_clip)
        ok = torch.stack(finite).all()
        if self.scaler is None:  # with fp16 an overflowing gradient is the scaler's to skip (it lowers its scale)
            ok = ok & torch.isfinite(grad_norm)
        skipped = not bool(self.world.all_reduce(ok.to(torch.int32), "min"))
        if skipped:
            self.nonfinite(name, stage_step, list(losses), finite, batches, grad_norm, optimizer)
            meter.skipped += 1
        elif self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        with warnings.catch_warnings():
            if skipped or self.scaler:  # the schedule moves on over a skipped step, on purpose
                warnings.simplefilter("ignore", UserWarning)
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        meter.time(stage.batch.global_size, time.perf_counter() - started, model_time, grad_norm)

    def clip(self, model: nn.Module, max_norm: float | None) -> Tensor:
        """Clip the global gradient norm to ``max_norm`` (None: measure only); returns the norm."""
        params = [p for p in model.parameters() if p.grad is not None]
        if not params:
            return torch.zeros((), device=self.world.device)
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm is not None else math.inf)
        from torch.distributed.tensor import DTensor

        return norm.full_tensor() if isinstance(norm, DTensor) else norm

    def nonfinite(self, name: str, stage_step: int, terms: list[str], finite: list[Tensor], batches: list[Any],
                  grad_norm: Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Stop (with step, term and batch ids) or skip the step, per ``runtime.on_nonfinite``."""
        found = []
        for flags, (ids, notes) in zip(finite, batches, strict=True):
            for term, good in zip(terms, flags.tolist(), strict=True):
                if not good:
                    ids_text = ids.tolist() if isinstance(ids, Tensor) else ids
                    found.append(f"term {term!r} on batch ids {ids_text}" + (f" ({notes[term]})" if term in notes else ""))
        if not found and not bool(torch.isfinite(grad_norm)):
            found.append(f"the gradient norm ({grad_norm.item()})")
        where = f"stage {name!r} step {stage_step + 1} (global step {self.global_step + 1})"
        found_all = [f"rank {r}: {text}" for r, texts in enumerate(self.world.gather_objects(found)) for text in texts]
        message = f"non-finite loss at {where}: " + "; ".join(found_all or ["on another rank"])
        if self.runtime.on_nonfinite == "stop":
            raise NonFiniteLoss(message + "; set runtime.on_nonfinite: skip to skip such steps")
        console(message + "; step skipped", self.world.main)
        optimizer.zero_grad(set_to_none=True)

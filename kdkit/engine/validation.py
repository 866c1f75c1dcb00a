"""Validation during training: the recipe's ``eval`` benchmark scored on the live student.

At every evaluation point (every ``eval.every`` optimizer steps and at the end of each evaluated
stage) the student is put in eval mode with its adapters routed and handed to the evaluation
runner as it is in memory (nothing goes through the disk). Its training mode, routing, router
statistics and every random generator are restored afterwards, so a run with an ``eval`` block
trains exactly like the same run without it. The metrics go to ``metrics.jsonl`` and TensorBoard
(``eval/<metric>``); when the ``eval.select`` metric improves, the checkpoint of that step becomes
``checkpoints/best`` (:mod:`kdkit.engine.best`) and the best value is kept in every later
checkpoint, so a resumed run never replaces a better best with a worse one.

Processes: with ``strategy: none`` or DDP only rank 0 evaluates (on the unwrapped module) while
the others wait on a gloo group whose timeout outlasts any evaluation; under FSDP2 every rank
runs the same forwards (sharded parameters are gathered collectively) and rank 0 logs and
writes. Rank 0's metrics are broadcast, so every rank takes the same checkpoint decisions.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule

from kdkit.engine.best import publish_best, read_best
from kdkit.engine.checkpoint import checkpoint_path
from kdkit.engine.distributed import World
from kdkit.engine.monitor import console
from kdkit.errors import DataError, Problem, RecipeError
from kdkit.evaluation.runner import EvaluationError, build_benchmark, check_metric, evaluate
from kdkit.interfaces import AnswersQuestions, Benchmark, EvalSubject, GenerativeBenchmark

if TYPE_CHECKING:
    from kdkit.engine.step import Distiller
    from kdkit.engine.trainer import Trainer
    from kdkit.recipe.schema import Eval, Recipe
    from kdkit.registry import Registry

#: How long the ranks that do not evaluate wait for rank 0's metrics (any evaluation is shorter).
WAIT = timedelta(hours=24)


def prepare_validation(recipe: Recipe, registry: Registry, source: str | None = None) -> Validation | None:
    """Build the recipe's benchmark (reading its files now) and check ``eval.select``; None without an ``eval`` block.

    Raises:
        RecipeError: ``eval.select`` names a metric the benchmark does not produce (the ones it does are listed).
        DataError: a benchmark file is missing or malformed (the message names it).
        EvaluationError: the benchmark block does not fit, or the benchmark declares no usable metrics.
    """
    if recipe.eval is None:
        return None
    block = recipe.eval.benchmark.plugin_fields()
    name = str(block["kind"])
    try:
        benchmark = build_benchmark(block, recipe.runtime.data_root, registry)
    except (DataError, EvaluationError) as exc:  # the benchmark names the file; say where it was asked for
        raise (DataError if isinstance(exc, DataError) else EvaluationError)(f"eval.benchmark: {exc}") from None
    select = recipe.eval.select or benchmark.primary
    try:
        check_metric(name, benchmark, select, "eval.select")
    except EvaluationError as exc:
        raise RecipeError(Problem("", str(exc)), source) from None
    return Validation(recipe.eval, benchmark, name, block)


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Inside: random generators may be used freely; after: Python, NumPy, torch CPU and CUDA are back as before."""
    python, numpy_state, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy_state)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


@contextlib.contextmanager
def evaluation_mode(distiller: Distiller, model: nn.Module, world: World) -> Iterator[None]:
    """Inside: no gradients, the student in eval mode with every adapter routed; after: exactly as before.

    Restored: every module's training flag (student, KD heads, teachers, any wrapper), every
    adapter's route, its router log (last outputs and usage counts) and the random generators.
    Under FSDP2 the root's own parameters are gathered for the duration (every rank must enter).
    """
    from kdkit.engine.step import routing

    roots = [model, distiller, *(t for t in distiller.teachers.values() if isinstance(t, nn.Module))]
    modules = {id(m): m for root in roots for m in root.modules()}
    flags = [(m, m.training) for m in modules.values()]
    adapters = list(distiller.capabilities.routed)
    sharded = world.strategy == "fsdp2" and isinstance(model, FSDPModule)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(preserved_rng())
            for handle in distiller.capabilities.preserves:
                stack.enter_context(handle.preserved_routers())
            stack.enter_context(torch.no_grad())
            stack.enter_context(routing(adapters, "routed"))
            if sharded:
                model.unshard()  # type: ignore[operator]
                stack.callback(model.reshard)  # type: ignore[arg-type]
            distiller.plugin.model.eval()
            yield
    finally:
        for module, flag in flags:
            module.training = flag


class Validation:
    """The recipe's ``eval`` block at work: when to evaluate, the evaluation, and the best checkpoint.

    Args:
        config: The recipe's ``eval`` block.
        benchmark: The benchmark it names, built.
        name: The benchmark's registered name.
        block: The benchmark block (``kind`` and its fields).
    """

    def __init__(self, config: Eval, benchmark: Benchmark, name: str, block: dict[str, Any]) -> None:
        self.config, self.benchmark, self.name, self.block = config, benchmark, name, block
        self.select = config.select or benchmark.primary
        #: The best evaluation so far (``step``, ``stage``, ``metric``, ``value``...), or None.
        self.best: dict[str, Any] | None = None
        self.group: Any = None

    # set-up ------------------------------------------------------------------------------------
    def attach(self, world: World, student: Any) -> None:
        """Check the student can take the benchmark and open the waiting group (every rank, before step 1).

        Raises:
            EvaluationError: a question-answering benchmark on a student that does not generate answers.
        """
        if isinstance(self.benchmark, GenerativeBenchmark) and not isinstance(student, AnswersQuestions):
            raise EvaluationError(f"eval.benchmark: {self.name!r} asks questions, but the {type(student).__name__} "
                                  "student does not answer them (it has no generate/load_image); choose a model "
                                  "benchmark such as classification")
        if world.distributed:
            import torch.distributed as dist

            self.group = dist.new_group(backend="gloo", timeout=WAIT)

    def resume(self, saved: dict[str, Any] | None, directory: Path, main: bool) -> None:
        """Take the best of a resumed checkpoint; republish it when the run died before publishing it."""
        self.best = dict(saved) if saved else None
        if not main or self.best is None:
            return
        published = read_best(directory)
        source = checkpoint_path(directory, int(self.best["step"]))
        if (published is None or published.get("step") != self.best["step"]) and source.is_dir():
            publish_best(directory, source, self.best)

    # during training ----------------------------------------------------------------------------
    def due(self, global_step: int, stage: str, last: bool) -> bool:
        """Whether to evaluate after ``global_step`` (the ``last`` step of ``stage``, or not)."""
        if self.config.stages is not None and stage not in self.config.stages:
            return False
        return last or (self.config.every is not None and global_step % self.config.every == 0)

    def better(self, value: float) -> bool:
        """Whether ``value`` of the selected metric beats the best so far (NaN never does)."""
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        return value > self.best["value"] if self.config.mode == "max" else value < self.best["value"]

    def run(self, trainer: Trainer, model: nn.Module, stage: str, stage_step: int) -> bool:
        """Evaluate now (every rank calls it), log the metrics; True when the selected metric improved.

        On True the caller writes the step's checkpoint (holding the new best) and calls :meth:`publish`.
        """
        world, step = trainer.world, trainer.global_step
        outcome: dict[str, Any] = {}
        if world.main or world.strategy == "fsdp2":
            started = time.perf_counter()
            try:
                metrics = self.measure(trainer, model, stage)
                outcome = {"metrics": metrics, "seconds": time.perf_counter() - started}
            except Exception as exc:  # every rank must learn that rank 0 failed, or they wait forever
                if not world.distributed:
                    raise
                outcome = {"error": f"{type(exc).__name__}: {exc}"}
                self.share(outcome, world)
                raise
        outcome = self.share(outcome, world)
        if "error" in outcome:
            raise EvaluationError(f"evaluation at step {step} failed on rank 0: {outcome['error']}")
        metrics = outcome["metrics"]
        value = float(metrics.get(self.select, math.nan))
        improved = self.better(value)
        if improved:
            self.best = {"step": step, "stage": stage, "stage_step": stage_step, "metric": self.select, "value": value,
                         "mode": self.config.mode, "benchmark": self.name, "metrics": metrics}
        trainer.monitor.log_eval({"step": step, "stage": stage, "stage_step": stage_step, "benchmark": self.name,
                                  "eval": metrics, "time_eval": outcome["seconds"]})
        best = self.best
        shown = ("best so far" if improved else
                 f"best {best['value']:.4g} at step {best['step']}" if best else "no best yet")
        console(f"eval at step {step} ({stage}): {self.select} = {value:.4g} ({shown}; {outcome['seconds']:.1f} s)",
                world.main)
        return improved

    def measure(self, trainer: Trainer, model: nn.Module, stage: str) -> dict[str, float]:
        """Score the live student on the benchmark; every metric by name."""
        from kdkit.engine.trainer import autocast

        distiller, world = trainer.distiller, trainer.world
        subject = EvalSubject(student=distiller.plugin, adapters=dict(distiller.adapters), source=trainer.run_dir,
                              recipe=trainer.recipe, device=str(world.device),
                              extras={"distiller": distiller, "step": trainer.global_step, "stage": stage})
        with evaluation_mode(distiller, model, world), autocast(world.device, trainer.runtime.precision):
            result = evaluate(subject, self.benchmark, self.name, self.block, directory=None,
                              batch_size=self.config.batch_size, limit=self.config.limit, progress=False)
        return {name: float(value) for name, value in result.scores.metrics.items()}

    def share(self, outcome: dict[str, Any], world: World) -> dict[str, Any]:
        """Rank 0's ``outcome``, on every rank (broadcast on the long-waiting gloo group)."""
        if not world.distributed:
            return outcome
        import torch.distributed as dist

        box = [outcome]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def publish(self, directory: Path, world: World) -> None:
        """Make the checkpoint of the best step ``checkpoints/best`` (rank 0; the checkpoint is written)."""
        if world.main and self.best is not None:
            publish_best(directory, checkpoint_path(directory, int(self.best["step"])), self.best)

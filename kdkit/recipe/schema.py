"""The recipe envelope: everything a recipe holds besides the plugins' own fields.

Plugin blocks (``student``, ``teachers.*``, ``*.align[i]``, ``scorer``, ``adapters.*``,
``losses.*``, ``stages.*.data``, ``eval.benchmark``) are only checked for a ``kind`` here; the
second validation stage checks each against the config class of the plugin its ``kind`` names.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, StringConstraints, model_validator

#: Names used as keys of teachers, adapters, losses and stages: they become module and log keys.
IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*$"
Key = Annotated[str, StringConstraints(pattern=IDENTIFIER)]


class Strict(BaseModel):
    """Envelope section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class Block(BaseModel):
    """A plugin block: ``kind`` names the plugin; its other keys belong to that plugin's config."""

    model_config = ConfigDict(extra="allow")

    kind: str = Field(description="Registered name of the plugin that builds this block (`kdkit plugins` lists them).")
    _config: Any = PrivateAttr(default=None)

    @property
    def config(self) -> Any:
        """The plugin's validated config model (set by recipe validation)."""
        if self._config is None:
            raise RuntimeError(f"block of kind {self.kind!r} was not validated against its plugin")
        return self._config

    def plugin_fields(self) -> dict[str, Any]:
        """``kind`` plus the plugin's own keys (envelope keys removed)."""
        return {"kind": self.kind, **(self.model_extra or {})}


class TeacherBlock(Block):
    """A teacher plugin block plus its aligner chain."""

    align: list[Block] = Field(
        default_factory=list,
        description="Aligner chain applied to this teacher's grid, in order; its output must reach "
        "the student's token grid (e.g. resample -> pixel_unshuffle -> mlp).",
    )


class LossBlock(Block):
    """A loss plugin block plus its weight in the total loss."""

    weight: float = Field(1.0, ge=0.0, description="Weight of this term in the total loss (0 logs it without training on it).")


class Optimizer(Strict):
    """Optimizer of one stage."""

    name: Literal["adamw", "sgd"] = Field("adamw", description="Optimizer.")
    lr: float = Field(description="Peak learning rate.", gt=0)
    weight_decay: float = Field(0.0, ge=0, description="Weight decay (never applied to norms and biases).")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    momentum: float = Field(0.9, ge=0, description="SGD momentum.")
    grad_clip: float | None = Field(1.0, description="Clip the global gradient norm to this value (null: no clipping).")


class Schedule(Strict):
    """Learning-rate schedule of one stage."""

    name: Literal["cosine", "linear", "constant"] = Field("cosine", description="Decay after warmup.")
    warmup_ratio: float = Field(0.03, ge=0, le=1, description="Fraction of the stage's steps spent in linear warmup.")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Final learning rate as a fraction of the peak.")


class Batch(Strict):
    """Batch sizes of one stage; gradient accumulation = global / (world size x per device)."""

    global_size: int = Field(description="Samples per optimizer step, over all processes.", gt=0)
    per_device: int = Field(description="Samples per forward on one device.", gt=0)

    @model_validator(mode="after")
    def _divides(self) -> Batch:
        if self.global_size % self.per_device:
            raise ValueError(
                f"global_size {self.global_size} is not a multiple of per_device {self.per_device}"
            )
        return self


class Stage(Strict):
    """One training stage (HAWAII has two: pretrain and finetune)."""

    data: Block = Field(description="Data plugin block for this stage.")
    trainable: list[str] = Field(
        description="Parameter groups to train (e.g. projector, adapters, routers, kd_heads, vision_base, llm) "
        "or regular expressions on parameter names; everything else is frozen. Teachers are never trainable."
    )
    optimizer: Optimizer = Field(description="Optimizer settings.")
    schedule: Schedule = Field(default_factory=Schedule, description="Learning-rate schedule.")
    batch: Batch = Field(description="Batch sizes.")
    epochs: float | None = Field(1.0, gt=0, description="Passes over the data (ignored when max_steps is set).")
    max_steps: int | None = Field(None, gt=0, description="Optimizer steps; overrides epochs.")
    losses: list[str] | None = Field(None, description="Names of the loss terms active in this stage (default: all).")


class Distributed(Strict):
    """How the run is spread over processes started by ``torchrun``."""

    strategy: Literal["none", "ddp", "fsdp2"] = Field("none", description="Data parallelism: none, DDP, or FSDP2 (fully_shard).")
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="Process-group backend (auto: nccl on GPU, gloo on CPU).")


class Runtime(Strict):
    """Where and how the run executes."""

    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="Autocast precision of the student (teachers use their own dtype).")
    seed: int = Field(0, description="Seed of every random generator.")
    output_dir: str = Field("runs/{name}", description="Run directory; `{name}` is the recipe name.")
    lock_timeout: float = Field(
        600.0, gt=0, description="Seconds without a heartbeat after which the lock of a run on another host is "
        "stale and taken over (the owner refreshes it every lock_timeout / 4 s, at most every minute); a run on "
        "this host is checked by its pid instead.")
    data_root: str = Field(".", description="Directory that relative checkpoint and data paths are resolved against.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Device (auto: cuda when available).")
    distributed: Distributed = Field(default_factory=Distributed, description="Multi-process settings.")
    gradient_checkpointing: bool = Field(False, description="Recompute student activations in the backward pass.")
    checkpoint_forced_passes: bool | None = Field(
        None,
        description="With gradient_checkpointing: keep only the output of each teacher's forced student pass "
        "(I_i^S) and run the pass once more in the backward, one teacher at a time, instead of keeping its tower "
        "layers' inputs (saves N_t - 1 passes' layer inputs at the peak for one more tower forward per teacher "
        "per step; `python -m benchmarks.scale` measures both). null: on whenever gradient_checkpointing is; "
        "true without gradient_checkpointing is refused.")
    forced_teachers: int | None = Field(
        None, gt=0,
        description="Run the forced student passes (I_i^S) for a random k of the N_t teachers each step, drawn "
        "uniformly; losses over them weight each drawn teacher by N_t / k, an unbiased estimate of the full "
        "term (null: every teacher).")
    log_every: int = Field(10, gt=0, description="Log every N optimizer steps.")
    checkpoint_every: int = Field(500, gt=0, description="Write a checkpoint every N optimizer steps (and at the end of each stage).")
    keep_last: int = Field(2, gt=0, description="Checkpoints kept on disk.")
    on_nonfinite: Literal["stop", "skip"] = Field("stop", description="What a non-finite loss does: stop the run, or skip the step.")
    num_workers: int = Field(0, ge=0, description="Data-loader worker processes.")
    teacher_cache: str | None = Field(
        None, description="Teacher-feature cache directory written by `kdkit cache` (relative to the data root); "
        "null: teachers run at every step.")
    teacher_cache_mode: Literal["online", "cached", "hybrid"] = Field(
        "cached", description="With `teacher_cache`: `cached` reads every teacher output from it (a missing sample is "
        "an error; fully cached teachers are never loaded); `hybrid` reads what is cached and computes the rest; "
        "`online` ignores the cache.")
    teacher_cache_append: bool = Field(
        False, description="In hybrid mode, write the outputs computed for missing samples into the cache as new shards.")

    @model_validator(mode="after")
    def _forced_checkpointing_needs_checkpointing(self) -> Runtime:
        if self.checkpoint_forced_passes and not self.gradient_checkpointing:
            raise ValueError("checkpoint_forced_passes: true needs gradient_checkpointing: true (a forced pass "
                             "recomputed whole, without layer checkpointing, would hold all its layers at once)")
        return self


class Eval(Strict):
    """Validation during training: a benchmark scored on the live student, the best checkpoint kept."""

    benchmark: Block = Field(
        description="Benchmark plugin block: `kind` plus that benchmark's own fields (`kdkit plugins` lists them). "
        "It is built once, at run start: a missing or broken benchmark file fails before step 1."
    )
    every: int | None = Field(
        None, gt=0, description="Evaluate every N optimizer steps (counted over the whole run, like "
        "`runtime.checkpoint_every`), and at the end of every evaluated stage (null: only at stage ends)."
    )
    stages: list[str] | None = Field(None, description="Names of the stages that evaluate (default: all).")
    select: str | None = Field(
        None, description="Metric that selects the best checkpoint (default: the benchmark's primary metric); "
        "it must be one the benchmark produces."
    )
    mode: Literal["max", "min"] = Field(
        "max", description="Whether a higher (max) or lower (min) `select` value is better."
    )
    limit: int | None = Field(
        None, gt=0, description="Score only the first N questions of a question-answering benchmark (default: all). "
        "A quick signal, not comparable to a full evaluation."
    )
    batch_size: int = Field(16, gt=0, description="Questions per generate call of a question-answering benchmark.")


class Recipe(Strict):
    """A whole distillation recipe."""

    name: str = Field("recipe", description="Name of the run (defaults to the file name).")
    description: str = Field("", description="What this recipe reproduces.")
    student: Block = Field(description="Student plugin block.")
    teachers: dict[Key, TeacherBlock] = Field(default_factory=dict, description="Teachers by name (the names key losses and logs).")
    scorer: Block | None = Field(None, description="Token scorer applied to every teacher (null: uniform weights).")
    adapters: dict[Key, Block] = Field(default_factory=dict, description="Adapters injected into the student, by name.")
    losses: dict[Key, LossBlock] = Field(description="Loss terms by name; the total loss is their weighted sum.")
    stages: dict[Key, Stage] = Field(description="Training stages, run in order; each starts from the previous one's result.")
    eval: Eval | None = Field(
        None, description="Validation during training and best-checkpoint selection (null: none)."
    )
    runtime: Runtime = Field(default_factory=Runtime, description="Execution settings.")
    loggers: dict[Key, Block] | None = Field(
        None, description="Run loggers by name, on top of metrics.jsonl (always written), e.g. "
        "`{tb: {kind: tensorboard}, wandb: {kind: wandb, project: my-kd}}`. null: TensorBoard only."
    )

    def blocks(self) -> list[tuple[str, str, Block]]:
        """Every plugin block as ``(plugin kind, path, block)``, in recipe order."""
        found: list[tuple[str, str, Block]] = [("student", "student", self.student)]
        for name, teacher in self.teachers.items():
            found.append(("teacher", f"teachers.{name}", teacher))
            found += [("aligner", f"teachers.{name}.align[{i}]", a) for i, a in enumerate(teacher.align)]
        if self.scorer is not None:
            found.append(("scorer", "scorer", self.scorer))
        found += [("adapter", f"adapters.{n}", a) for n, a in self.adapters.items()]
        found += [("loss", f"losses.{n}", a) for n, a in self.losses.items()]
        found += [("data", f"stages.{n}.data", s.data) for n, s in self.stages.items()]
        if self.eval is not None:
            found.append(("benchmark", "eval.benchmark", self.eval.benchmark))
        found += [("logger", f"loggers.{n}", b) for n, b in (self.loggers or {}).items()]
        return found

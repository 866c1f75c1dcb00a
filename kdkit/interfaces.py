"""What plugins of each kind receive and return.

Plugin kinds are :class:`typing.Protocol` s, so a plugin never has to inherit from kdkit. Shapes
that can be derived (a teacher's grid, the student's width) travel in :class:`GridSpec` objects
through the :class:`BuildContext`, never through recipe numbers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

if TYPE_CHECKING:  # torch is only needed for type checking here: schemas stay importable without it
    import torch
    from torch import Tensor, nn


@dataclass(frozen=True)
class GridSpec:
    """Shape of a token grid ``(B, height, width, channels)`` plus its prefix tokens (CLS, registers)."""

    height: int
    width: int
    channels: int
    prefix_tokens: int = 0

    @property
    def tokens(self) -> int:
        """Number of grid (patch) tokens, ``height * width``."""
        return self.height * self.width

    def __str__(self) -> str:
        return f"{self.height}x{self.width}x{self.channels}"


@dataclass
class BuildContext:
    """Everything a factory may need besides its own config.

    Attributes:
        name: Name of the block being built (the teacher's key, the loss's key...).
        teacher_names: Names of all teachers in the recipe, in recipe order.
        teacher_specs: Grid of each teacher's aligned output, once aligners are built.
        teacher_token_specs: Grid of each teacher's "tokens" ``I_i^T``: its aligner chain's grid
            just before the first projecting aligner (what :attr:`StepContext.teacher_tokens`
            holds), once aligners are built. Losses with learnable parts size themselves from it.
        in_spec: Input grid of the aligner being built (output of the previous step).
        student_spec: The student's feature grid (its ``m`` tokens as ``height x width``, width D).
        text_dim: Width of the student's instruction-text embeddings, when it has any.
        model: The module an adapter is injected into.
        data_root: Directory that relative paths in the recipe are resolved against.
        device: Device the built module will run on.
        extras: Anything else a student or engine wants to pass along (by name).
    """

    name: str = ""
    teacher_names: tuple[str, ...] = ()
    teacher_specs: dict[str, GridSpec] = field(default_factory=dict)
    teacher_token_specs: dict[str, GridSpec] = field(default_factory=dict)
    in_spec: GridSpec | None = None
    student_spec: GridSpec | None = None
    text_dim: int | None = None
    model: nn.Module | None = None
    data_root: Path = Path(".")
    device: str = "cpu"
    extras: dict[str, Any] = field(default_factory=dict)

    def resolve(self, path: str | Path) -> Path:
        """``path`` if absolute, else relative to :attr:`data_root`."""
        path = Path(path).expanduser()
        return path if path.is_absolute() else self.data_root / path


@dataclass
class Example:
    """A tiny, self-contained way to build and probe a plugin (used by the contract kit).

    Attributes:
        config: The recipe block (``kind`` included) to build from.
        context: The build context, with tiny shapes.
        inputs: Positional arguments of one forward call of the built object, or None when the
            contract kit's default probe for the kind applies.
    """

    config: dict[str, Any]
    context: BuildContext = field(default_factory=BuildContext)
    inputs: tuple[Any, ...] | None = None


class TeacherOutput(NamedTuple):
    """A teacher's outputs: ``grid`` ``(B, H, W, C)``, ``prefix`` ``(B, P, C)`` or None, and
    ``logits`` ``(B, K)`` or None (a classifier teacher's predictions, for logit distillation)."""

    grid: Tensor
    prefix: Tensor | None = None
    logits: Tensor | None = None


@runtime_checkable
class Teacher(Protocol):
    """A frozen feature extractor.

    ``out_spec`` is known at build time. ``forward`` takes the shared raw view ``(B, 3, H, W)``
    with values in ``[0, 1]`` and does its own resizing and normalisation.
    """

    out_spec: GridSpec

    def __call__(self, images: Tensor) -> TeacherOutput: ...


@runtime_checkable
class Aligner(Protocol):
    """``(B, H, W, C)`` grid -> ``(B, H', W', C')`` grid; ``out_spec`` is known at build time.

    ``projects`` is True when the aligner is a learned projection (an MLP): the step context
    keeps the grid seen just before the first projecting aligner as the teacher's "tokens".
    """

    out_spec: GridSpec
    projects: bool

    def __call__(self, grid: Tensor) -> Tensor: ...


@runtime_checkable
class Scorer(Protocol):
    """Per-token weights ``(B, m)`` (each row sums to 1) for one teacher, from the step context."""

    def __call__(self, step: StepContext, teacher: str) -> Tensor: ...


@runtime_checkable
class Loss(Protocol):
    """One loss term: reads the step context, returns an UNWEIGHTED scalar tensor."""

    def __call__(self, step: StepContext) -> Tensor: ...


@dataclass
class RouterOutput:
    """One router's decision in one block.

    Attributes:
        block: Name of the module the router belongs to.
        group: Expert group (``"teacher"`` or ``"general"``).
        probs: ``(N, E)`` router probabilities over the group's E experts, one row per token.
        choice: ``(N,)`` chosen expert per token (top-1).
    """

    block: str
    group: str
    probs: Tensor
    choice: Tensor


@dataclass
class StepContext:
    """Everything the loss terms of one training step may read.

    Tensor shapes: B batch, m student tokens, D student width, C_i teacher i's width.

    Attributes:
        batch: The batch as the data plugin produced it.
        teacher_names: Names of the teachers, in recipe order.
        teacher_grids: Raw teacher outputs ``(B, H_i, W_i, C_i)``.
        teacher_tokens: ``I_i^T``: each teacher's grid on the student grid, before its first
            projecting aligner, flattened ``(B, m, C_i')``.
        teacher_aligned: ``Î_i^T``: full aligner-chain output, flattened ``(B, m, D_i)``.
        teacher_prefix: Prefix tokens (CLS...) of each teacher ``(B, P, C_i)``, when any.
        student_routed: ``I^S``: the student features with routed adapters ``(B, m, D)``.
        student_forced: ``I_i^S``: the student features with only teacher ``i``'s expert ``(B, m, D)``.
        routers: Router outputs of the routed pass, one per router and block.
        text: Instruction-text embeddings ``(B, T, E)`` (detached), or None.
        text_mask: ``(B, T)`` bool, True on real instruction tokens.
        logits: Student logits, when the student has any.
        teacher_logits: Teacher logits (same shape as :attr:`logits`), by teacher, for logit
            distillation; empty when no teacher produces logits.
        labels: Task labels, when the data has any.
        task_loss: The student's own task loss (language modelling, cross-entropy...).
        scores: Per-teacher token weights ``(B, m)`` filled in by the scorer.
        rows: ``(B_kd,)`` indices of the batch samples that are distilled, or None when all are.
            Samples without an image (``batch["has_image"]`` False) get no teacher work: every
            teacher and student tensor above that a distillation term reads (``teacher_*``,
            ``student_routed``, ``student_forced``, ``text``, ``text_mask``, ``scores``) holds
            only these rows, while ``batch``, ``labels``, ``logits`` and ``task_loss`` cover the
            whole batch. On a batch with no distilled sample, a term that reads teacher outputs
            counts 0.
        extras: Anything else, by name.
    """

    batch: Mapping[str, Any] = field(default_factory=dict)
    teacher_names: tuple[str, ...] = ()
    teacher_grids: dict[str, Tensor] = field(default_factory=dict)
    teacher_tokens: dict[str, Tensor] = field(default_factory=dict)
    teacher_aligned: dict[str, Tensor] = field(default_factory=dict)
    teacher_prefix: dict[str, Tensor] = field(default_factory=dict)
    student_routed: Tensor | None = None
    student_forced: dict[str, Tensor] = field(default_factory=dict)
    routers: list[RouterOutput] = field(default_factory=list)
    text: Tensor | None = None
    text_mask: Tensor | None = None
    logits: Tensor | None = None
    teacher_logits: dict[str, Tensor] = field(default_factory=dict)
    labels: Tensor | None = None
    task_loss: Tensor | None = None
    scores: dict[str, Tensor] = field(default_factory=dict)
    rows: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)


def device_of(module: nn.Module) -> torch.device:
    """Device of a module's first parameter or buffer (CPU when it has none)."""
    import torch

    for tensor in list(module.parameters()) + list(module.buffers()):
        return tensor.device
    return torch.device("cpu")


class StudentOutput(NamedTuple):
    """What one student forward returns.

    Attributes:
        features: ``I^S`` ``(B, m, D)``: the features distillation acts on.
        task_loss: The student's own task loss (scalar), or None when the batch has no labels.
        logits: Task logits, or None.
        text: Instruction-text embeddings ``(B, T, E)`` for text-aware scorers, or None.
        text_mask: ``(B, T)`` bool mask of real instruction tokens, or None.
    """

    features: Tensor
    task_loss: Tensor | None = None
    logits: Tensor | None = None
    text: Tensor | None = None
    text_mask: Tensor | None = None


@runtime_checkable
class Student(Protocol):
    """A model being distilled into.

    Attributes:
        model: The whole trainable model (what the optimizer and checkpoints see).
        adapter_target: The sub-module adapters are injected into (e.g. a vision tower).
        feature_spec: Grid of :meth:`encode`'s output (``m`` tokens as ``height x width``, width D).
        text_dim: Width of instruction-text embeddings, or None.
    """

    model: nn.Module
    adapter_target: nn.Module
    feature_spec: GridSpec
    text_dim: int | None

    def parameter_groups(self) -> dict[str, list[str]]:
        """Named groups of ``model.named_parameters()`` names (``projector``, ``vision_base``...)."""
        ...

    def encode(self, images: Tensor) -> Tensor:
        """Raw shared view ``(B, 3, H, W)`` in ``[0, 1]`` -> student features ``(B, m, D)``."""
        ...

    def __call__(self, batch: Mapping[str, Any]) -> StudentOutput: ...


# ---------------------------------------------------------------------------------------------
# Evaluation: benchmark plugins (hook ``kdkit_benchmarks``)


@dataclass(frozen=True)
class Question:
    """One benchmark question as the student is asked it.

    Attributes:
        id: Unique, stable id within the benchmark (predictions are keyed and resumed by it).
        prompt: The whole text prompt, the benchmark's answer instruction included (e.g. LLaVA-1.5's
            "Answer the question using a single word or phrase."), without any image placeholder.
        image: The image: a file path, the encoded file bytes (images embedded in TSV/parquet
            releases), or None for a text-only question.
        max_new_tokens: Longest answer to generate, in tokens.
    """

    id: str
    prompt: str
    image: Path | bytes | None = None
    max_new_tokens: int = 16


@dataclass
class Scores:
    """What scoring one student on one benchmark produced.

    Attributes:
        metrics: Every metric by name (percentages 0-100, or the benchmark's own points, e.g. MME).
        units: Per-unit values of the primary metric (question, circular group...) whose mean IS the
            primary metric; used for paired bootstrap intervals over items. Empty when the primary
            metric is not a mean over units (e.g. MME's summed scores).
        details: Anything else worth keeping in the result JSON (per-category tables, counts).
    """

    metrics: dict[str, float]
    units: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Benchmark(Protocol):
    """What every benchmark declares.

    Attributes:
        metrics: Names of every metric its scores hold (``eval.select`` is checked against them).
        primary: The headline metric (one of ``metrics``): what tables show and validation selects by default.
        published: Published values of the primary metric by label (e.g. ``{"LLaVA-1.5 7B (paper)": 58.2}``),
            shown beside measured ones and clearly labelled; empty when none apply.
    """

    metrics: tuple[str, ...]
    primary: str
    published: Mapping[str, float]


@runtime_checkable
class GenerativeBenchmark(Benchmark, Protocol):
    """A benchmark of questions answered by greedy generation (VQA, multiple choice, yes/no).

    The engine generates an answer for every :class:`Question` (batched, resumable) and hands the
    raw answers to :meth:`score`, which parses and scores them by the benchmark's official rules.
    """

    def questions(self) -> Sequence[Question]:
        """Every question, in a stable order (ids unique)."""
        ...

    def score(self, predictions: Mapping[str, str]) -> Scores:
        """Raw generated answers by question id (exactly the ids of :meth:`questions`) -> scores."""
        ...


@runtime_checkable
class ModelBenchmark(Benchmark, Protocol):
    """A benchmark that measures the model itself (classification accuracy, kNN / linear probes,
    feature fidelity to the teachers)."""

    def evaluate(self, subject: EvalSubject) -> Scores:
        """Score ``subject``'s student (eval mode, adapters routed)."""
        ...


@dataclass
class EvalSubject:
    """The student being evaluated, as a :class:`ModelBenchmark` receives it.

    Attributes:
        student: The student plugin object (eval mode, adapters injected and routed).
        adapters: Its adapter handles by name.
        source: The export or run directory it was loaded from.
        recipe: The run's recipe, when loaded from a run directory (None for an export).
        checkpoint: The checkpoint directory of a run, when loaded from one.
        device: Device the student is on.
        extras: Anything else an engine passes along (e.g. a ``distiller`` with the run's
            teachers and KD heads, for fidelity measurements).
    """

    student: Any
    adapters: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None
    recipe: Any = None
    checkpoint: Path | None = None
    device: str = "cpu"
    extras: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class LoadsImages(Protocol):
    """A student that turns an image file into its own raw view (padding and size as in training)."""

    def load_image(self, source: str | Path | bytes) -> Tensor:
        """An image file path or encoded file bytes -> the student's raw view ``(1, 3, S, S)`` in [0, 1]."""
        ...


@runtime_checkable
class AnswersQuestions(LoadsImages, Protocol):
    """A student that answers questions about images (what generative benchmarks need)."""

    def generate(self, images: Tensor, prompts: list[str], max_new_tokens: int = 32) -> list[str]:
        """Raw views ``(B, 3, S, S)`` + B questions -> B greedy answers."""
        ...


@runtime_checkable
class Routable(Protocol):
    """An adapter whose experts are chosen per input: its routing mode can be set for good
    (``routed`` for inference), besides the per-forward :meth:`kdkit.adapters.handle.Adapter.routing`."""

    def set_routing(self, spec: Any) -> None:
        """Every later forward follows ``spec`` (e.g. ``"routed"``)."""
        ...


# ---------------------------------------------------------------------------------------------
# Optional capabilities. The engine checks each once, when it builds a run
# (:class:`kdkit.engine.capabilities.Capabilities`), and keeps the result; a plugin offers a
# capability by having the method, never by inheriting from kdkit.


@runtime_checkable
class ShardsUnits(Protocol):
    """A student that names its FSDP2 sharding units (e.g. transformer layers)."""

    def shard_units(self) -> list[nn.Module]:
        """Sub-modules of ``model`` that ``fully_shard`` wraps one by one, innermost first."""
        ...


@runtime_checkable
class ChecksActivations(Protocol):
    """A student that can recompute its activations in the backward pass (gradient checkpointing)."""

    def enable_gradient_checkpointing(self, context_fn: Any = None) -> None:
        """Turn activation checkpointing on; ``context_fn`` (or None) replays adapter routes on recomputation."""
        ...


@runtime_checkable
class Exports(Protocol):
    """A student that writes itself as a stand-alone model (``kdkit export``)."""

    def export(self, directory: Path) -> dict[str, Any]:
        """Write the model into ``directory``; returns config fields the export manifest overrides."""
        ...


@runtime_checkable
class HasProcessor(Protocol):
    """A student whose export also carries a Hugging Face processor (image processor + tokenizer)."""

    def processor(self) -> Any:
        """The processor, saved beside the exported model (``save_pretrained``)."""
        ...


@runtime_checkable
class SavesPeft(Protocol):
    """An adapter that can also write itself in peft's on-disk format."""

    def save_peft(self, model: nn.Module, directory: Path) -> None:
        """Write the adapter of ``model`` as a peft adapter into ``directory``."""
        ...


@runtime_checkable
class RoutingControl(Protocol):
    """An adapter whose route can be set for the forwards inside a context (``routed``, a teacher, ``off``,
    or a per-sample ``(B,)`` expert index)."""

    def routing(self, spec: Any) -> contextlib.AbstractContextManager[Any]:
        """Context manager: forwards inside it follow ``spec``."""
        ...


@runtime_checkable
class TeacherExperts(Protocol):
    """An adapter with one expert per teacher (MoLA): the forced passes run through them.

    ``teacher_names`` may be empty (a plain adapter): then it has no expert to force.
    """

    teacher_names: tuple[str, ...]


@runtime_checkable
class ReplaysRoutes(Protocol):
    """An adapter whose route must be replayed when activation checkpointing recomputes a forward."""

    def checkpoint_context(self) -> tuple[contextlib.AbstractContextManager[Any], contextlib.AbstractContextManager[Any]]:
        """``(forward context, recomputation context)`` for ``torch.utils.checkpoint``'s ``context_fn``."""
        ...


@runtime_checkable
class ReportsRouters(Protocol):
    """An adapter with routers: what they decided in the last routed forward, and how often each expert was chosen."""

    def router_outputs(self) -> list[RouterOutput]:
        """Router outputs of the last routed forward, one per block and group."""
        ...

    def usage(self, reset: bool = False) -> dict[str, dict[str, Tensor]]:
        """``{block: {group: (E,) token counts per expert}}`` since the last reset."""
        ...


@runtime_checkable
class PreservesRouters(Protocol):
    """An adapter whose router log (last outputs, usage counts) can be put back after an evaluation."""

    def preserved_routers(self) -> contextlib.AbstractContextManager[None]:
        """Inside: forwards may route freely; after: the router log is as it was before."""
        ...


@runtime_checkable
class Collates(Protocol):
    """A dataset with its own batch collation (padding variable-length samples)."""

    def collate(self, samples: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
        """Samples (each as ``__getitem__`` returns it) -> one batch."""
        ...


@runtime_checkable
class GroupsBatches(Protocol):
    """A dataset that reorders each epoch's indices into batches (length grouping)."""

    def group_order(self, indices: list[int], group: int, seed: int) -> list[int]:
        """``indices`` reordered into batches of ``group``; depends only on the arguments."""
        ...


@runtime_checkable
class Augments(Protocol):
    """A dataset whose samples change from one reading to the next (random augmentation).

    Its teacher outputs are not a function of the sample id, so a teacher cache refuses it
    (``runtime.teacher_cache`` with mode ``cached`` or ``hybrid``) unless ``augments`` is False.
    """

    augments: bool


# ---------------------------------------------------------------------------------------------
# Teacher sources: where the teacher pass gets each teacher's output.
#
# Sample ids. Every data plugin yields ``ids``: one int64 per sample, stable for the sample's
# content, i.e. the same id for the same record whatever the split, seed, epoch, process or worker
# (the record's index in its source file, an image's index in the sorted folder listing...).
# Two samples of one dataset whose images may differ never share an id, except repeated views of
# one image under random augmentation (see :class:`Augments`). A teacher cache is keyed by these ids
# and checks each entry against a digest of the sample's image, so an id reused for another image
# is refused, never silently served.


@runtime_checkable
class TeacherSource(Protocol):
    """Each teacher's output for a batch: computed (online), read from a cache, or both (hybrid).

    Attributes:
        specs: Grid of each teacher's raw output, by teacher, in recipe order (known without
            running a teacher: the aligner chains are sized from it).
        teachers: The teachers that are loaded (a fully cached teacher is not), by name.
    """

    specs: dict[str, GridSpec]
    teachers: dict[str, nn.Module]

    def outputs(self, images: Tensor, ids: Tensor | None) -> dict[str, TeacherOutput]:
        """Raw views ``(B, 3, H, W)`` and their sample ids ``(B,)`` -> every teacher's output for them."""
        ...

    def flush(self) -> None:
        """Publish anything the source wrote on the way (a hybrid cache's appended rows)."""
        ...

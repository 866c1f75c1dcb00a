"""Feature fidelity: how closely the student's per-teacher outputs reproduce each teacher's tokens.

On held-out images, for every teacher ``i``: the cosine, per token, between the student forced
through teacher ``i``'s expert (``I_i^S``, the forced pass of :class:`~kdkit.engine.step.Distiller`)
and the teacher's aligned target ``Î_i^T``, averaged over tokens and images. When a loss term
exposes ``pair(step, teacher) -> (student, target)`` (``fgkd`` does) for a teacher, that pair is
compared instead: the recipe's student-side heads and collapse guard apply, as in training
(with ``guard: standardize`` the target is standardized over each evaluation batch). A run
whose adapters have no teacher experts compares its routed features with every teacher.

Teachers and KD heads are not exported, so this needs a RUN directory: the engine passes the
run's :class:`~kdkit.engine.step.Distiller` (built by :func:`build_distiller`) in
``subject.extras["distiller"]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from kdkit import BuildContext, Example, Factory, PluginConfig, hookimpl
from kdkit.errors import CheckpointError, DataError, KdkitError
from kdkit.interfaces import EvalSubject, Scores, StepContext
from kdkit_plugins.benchmarks.model_eval import build_data

if TYPE_CHECKING:
    from kdkit.engine.step import Distiller
    from kdkit.registry import Registry

NAME = "feature_fidelity"
#: The message for a subject loaded from an export directory.
NEEDS_RUN = "feature fidelity needs a run directory: teachers are not exported"


class FidelityConfig(PluginConfig):
    """Per-teacher cosine between the student's forced outputs and the teachers' aligned tokens."""

    kind: Literal["feature_fidelity"] = "feature_fidelity"
    data: dict[str, Any] = Field(description="Held-out images (a data block; labels unused), e.g. {kind: digits, "
                                 "split: test}; relative paths resolve against the data root.")
    batch_size: int = Field(32, gt=0, description="Images per teacher and student pass.")
    max_images: int | None = Field(None, gt=0, description="Score only the first N images (null: all).")
    teachers: list[str] | None = Field(None, description="Teachers to compare with, declaring the metrics "
                                       "'cosine/<teacher>' up front (null: the teachers the engine names in the "
                                       "build context, else every teacher of the run).")


def metric_names(teachers: tuple[str, ...]) -> tuple[str, ...]:
    """``("cosine/<teacher>", ..., "cosine_mean")``."""
    return (*(f"cosine/{t}" for t in teachers), "cosine_mean")


def compared_pair(distiller: Distiller, step: StepContext, teacher: str) -> tuple[Tensor, Tensor, str]:
    """``(student (B, m, C), target (B, m, C), what was compared)`` for one teacher.

    The first loss term (recipe order) distilling ``teacher`` with a ``pair`` method gives the pair
    (its student heads / guard applied); otherwise ``step.student_forced[teacher]`` vs
    ``step.teacher_aligned[teacher]``.
    """
    for name, loss in distiller.losses.items():
        if callable(getattr(loss, "pair", None)) and teacher in getattr(loss, "teachers", ()):
            student, target = loss.pair(step, teacher)
            return student, target, f"loss {name!r} (guard {getattr(loss, 'guard', 'none')})"
    return step.student_forced[teacher], step.teacher_aligned[teacher], "forced output vs aligned tokens"


def student_outputs(distiller: Distiller, images: Tensor) -> tuple[dict[str, Tensor], str]:
    """``{teacher: (B, m, D)}``: the forced pass, or the routed features for every teacher when no
    adapter has teacher experts; and which of the two it is."""
    from kdkit.engine.step import routing

    if any(getattr(h, "teacher_names", ()) for h in distiller.adapters.values()):
        return distiller.forced_pass(images), "forced"
    with routing(list(distiller.adapters.values()), "routed"):
        features = distiller.plugin.encode(images)
    return {name: features for name in distiller.teachers}, "routed"


class FeatureFidelity:
    """A :class:`~kdkit.interfaces.ModelBenchmark`: ``evaluate(subject)`` -> per-teacher cosines.

    Args:
        dataset: Samples with ``images`` ``(3, H, W)`` in [0, 1].
        batch_size: Images per pass.
        max_images: Score only the first N images (None: all).
        teachers: Teachers to compare with (empty: every teacher of the run, and the per-teacher
            metrics are declared once :meth:`evaluate` has seen them).
    """

    primary = "cosine_mean"

    def __init__(self, dataset: Dataset, batch_size: int = 32, max_images: int | None = None,
                 teachers: tuple[str, ...] = ()) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.max_images = max_images
        self.teachers = tuple(teachers)
        self.published: dict[str, float] = {}
        self.metrics: tuple[str, ...] = metric_names(self.teachers)

    def distiller_of(self, subject: EvalSubject) -> Distiller:
        """The run's Distiller, or a clear error for an export or a subject without one."""
        if subject.recipe is None:
            source = f" ({subject.source} is an export)" if subject.source is not None else ""
            raise KdkitError(f"{NAME}: {NEEDS_RUN}{source}")
        distiller = subject.extras.get("distiller")
        if distiller is None and subject.source is not None:  # a run directory: build its teachers and heads once
            distiller = build_distiller(subject.source, subject.checkpoint, device=subject.device)
            subject.extras["distiller"] = distiller
        if distiller is None:
            raise KdkitError(f"{NAME}: the subject carries no distiller (extras['distiller']); build it with "
                             "kdkit_plugins.benchmarks.feature_fidelity.build_distiller(run_dir, checkpoint, registry)")
        if not distiller.teachers:
            raise KdkitError(f"{NAME}: the run has no teachers to compare with")
        return distiller

    def images(self, device: str) -> list[Tensor]:
        """The held-out images in batches ``(B, 3, H, W)`` on ``device`` (the first ``max_images``)."""
        loader = DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False,
                            collate_fn=getattr(self.dataset, "collate", None))
        left = self.max_images if self.max_images is not None else len(self.dataset)
        batches = []
        for batch in loader:
            if left <= 0:
                break
            if "images" not in batch:
                raise DataError(f"{NAME}: the data yields batches without 'images' (holds: {', '.join(batch)})")
            batches.append(batch["images"][:left].to(device))
            left -= len(batches[-1])
        return batches

    def evaluate(self, subject: EvalSubject) -> Scores:
        """``cosine/<teacher>`` (mean over tokens and images) and ``cosine_mean`` (over teachers).

        Units: per image, the mean over teachers of its token-mean cosine (their mean is ``cosine_mean``).

        Raises:
            KdkitError: an export subject, no distiller, or a student output of another shape than its target.
        """
        distiller = self.distiller_of(subject)
        teachers = self.teachers or tuple(distiller.teachers)
        unknown = [t for t in teachers if t not in distiller.teachers]
        if unknown:
            raise KdkitError(f"{NAME}: teacher {', '.join(map(repr, unknown))} is not in the run "
                             f"(teachers: {', '.join(distiller.teachers)})")
        per_image: dict[str, list[Tensor]] = {t: [] for t in teachers}
        compared: dict[str, str] = {}
        mode = "forced"
        distiller.eval()
        with torch.no_grad():
            for images in self.images(subject.device):
                step = StepContext(batch={"images": images}, teacher_names=teachers)
                distiller.teacher_pass(images, step)
                step.student_forced, mode = student_outputs(distiller, images)
                for teacher in teachers:
                    student, target, compared[teacher] = compared_pair(distiller, step, teacher)
                    if student.shape != target.shape:
                        raise KdkitError(f"{NAME}: teacher {teacher!r}: the student output {tuple(student.shape)} and "
                                         f"the target {tuple(target.shape)} differ in shape; end the teacher's align "
                                         "chain with an mlp or use fgkd with guard: student_heads")
                    cosine = F.cosine_similarity(student.float(), target.float(), dim=-1)  # (B, m)
                    per_image[teacher].append(cosine.double().mean(1).cpu())
        values = {t: torch.cat(v) for t, v in per_image.items()}
        metrics = {f"cosine/{t}": float(v.double().mean()) for t, v in values.items()}
        metrics["cosine_mean"] = sum(metrics.values()) / len(teachers)
        self.metrics = metric_names(teachers)
        mean_over_teachers = torch.stack(list(values.values())).double().mean(0)
        units = {str(i): v for i, v in enumerate(mean_over_teachers.tolist())}
        details = {"images": len(mean_over_teachers), "teachers": list(teachers), "student": mode, "compared": compared}
        return Scores(metrics=metrics, units=units, details=details)


def build(config: FidelityConfig, context: BuildContext) -> FeatureFidelity:
    """Build the data block now (a bad block fails before any model runs)."""
    dataset = build_data(NAME, "data", config.data, context)
    teachers = tuple(config.teachers) if config.teachers is not None else tuple(context.teacher_names)
    return FeatureFidelity(dataset, config.batch_size, config.max_images, teachers)


def build_distiller(run_dir: str | Path, checkpoint: str | Path | None = None, registry: Registry | None = None,
                    data_root: str | Path | None = None, device: str = "cpu") -> Distiller:
    """The :class:`~kdkit.engine.step.Distiller` of a training run with a checkpoint's tensors, in eval mode.

    Built from the run's ``recipe.yaml`` as training built it (seeded with ``runtime.seed``, teachers
    loaded from their files), then every tensor of the checkpoint (student, adapters, aligner
    chains, scorer and loss heads) is loaded; the rest keep their built values, as on resume. Its
    ``plugin`` is the trained student and ``adapters`` its adapter handles.

    Args:
        run_dir: A run directory (``recipe.yaml`` and ``checkpoints/``).
        checkpoint: A checkpoint directory (default: the run's latest).
        registry: Plugins to build from (default: every installed plugin).
        data_root: Directory the recipe's relative paths (teacher files) resolve against (default: the recipe's).
        device: Device to build on.

    Raises:
        KdkitError: ``run_dir`` is an export directory.
        CheckpointError: no recipe or checkpoint, or checkpoint tensors that do not fit the recipe's modules.
    """
    return _load_run(run_dir, checkpoint, registry, data_root, device)[0]


def subject_from_run(run_dir: str | Path, checkpoint: str | Path | None = None, registry: Registry | None = None,
                     data_root: str | Path | None = None, device: str = "cpu") -> EvalSubject:
    """An :class:`~kdkit.interfaces.EvalSubject` of a run: its trained student (eval mode, adapters
    routed by :mod:`~kdkit_plugins.benchmarks.model_eval`), recipe, checkpoint and the Distiller in
    ``extras["distiller"]``. Same arguments and errors as :func:`build_distiller`."""
    distiller, recipe, source = _load_run(run_dir, checkpoint, registry, data_root, device)
    return EvalSubject(student=distiller.plugin, adapters=dict(distiller.adapters), source=Path(run_dir), recipe=recipe,
                       checkpoint=source, device=device, extras={"distiller": distiller})


def _load_run(run_dir: str | Path, checkpoint: str | Path | None, registry: Registry | None,
              data_root: str | Path | None, device: str) -> tuple[Distiller, Any, Path]:
    from kdkit.engine.build import build_distiller as build_from_recipe
    from kdkit.engine.checkpoint import check_model_state, latest_checkpoint, load_checkpoint, read_weights
    from kdkit.export import MANIFEST
    from kdkit.recipe import load_recipe

    run_dir = Path(run_dir)
    if (run_dir / MANIFEST).is_file():
        raise KdkitError(f"{NAME}: {NEEDS_RUN} ({run_dir} is an export)")
    recipe_file = run_dir / "recipe.yaml"
    if not recipe_file.is_file():
        raise CheckpointError(f"{recipe_file} does not exist: {run_dir} is not a kdkit run directory")
    if registry is None:
        from kdkit.plugins import get_registry

        registry = get_registry()
    overrides = [f"runtime.data_root={data_root}"] if data_root is not None else []
    recipe = load_recipe(recipe_file, overrides, registry=registry)
    source = Path(checkpoint) if checkpoint is not None else latest_checkpoint(run_dir / "checkpoints")
    saved = load_checkpoint(source)
    tensors = saved.model if saved.model is not None else read_weights(source)
    distiller = build_from_recipe(recipe, registry, torch.device(device))
    live = {k: tuple(v.shape) for k, v in distiller.state_dict().items()}
    check_model_state(source, saved.shapes, live, saved.state.get("trained", []))
    distiller.load_state_dict(tensors, strict=False)
    return distiller.eval(), recipe, source


def example(tmp_dir: Path) -> Example:
    """A tiny run (two tiny teachers, MoLA, FGKD) written under ``tmp_dir``, scored on 8 synthetic images."""
    from kdkit_plugins.fixtures.benchmarks_model import write_tiny_run

    run_dir = write_tiny_run(tmp_dir)
    config = {"kind": NAME, "data": {"kind": "synthetic", "size": 8, "image_size": 32}, "batch_size": 4}
    return Example(config=config, context=BuildContext(name="eval", data_root=tmp_dir),
                   inputs=(subject_from_run(run_dir),))


@hookimpl
def kdkit_benchmarks() -> dict[str, Factory]:
    return {NAME: Factory(config=FidelityConfig, build=build, example=example)}

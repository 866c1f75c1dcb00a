"""Teacher-utility probe: how much task information each teacher's features hold that the student's do not.

For every teacher of a recipe, on labelled samples of one stage's data: a linear probe (the
``linear_probe`` benchmark's logistic regression, :func:`kdkit_plugins.benchmarks.probes.linear_probe_classify`)
is fitted on frozen, pooled features of part of the samples and scored on the rest; the same is done
for the student's own features (``student.encode``: what distillation changes). A teacher's *gain*
is its probe accuracy minus the student's (the stage's data may be the teachers' own training data:
the accuracies are then optimistic, and teachers that fit it perfectly tie). Next to it, its cost per image: GFLOPs (PyTorch's
flop counter, one image) and milliseconds (median of timed batches; noisy on a busy machine, which is
why the budget is in GFLOPs). Teachers are ranked by gain, ties broken by the lower GFLOPs;
the recommended set for a budget takes them in that order, skipping any without a positive gain
or that would exceed the budget.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from kdkit.errors import DataError, KdkitError

#: The row label of the student's own features.
STUDENT = "student (own features)"


@dataclass(frozen=True)
class ProbeRow:
    """One feature source on the probe.

    Attributes:
        name: Teacher name (or :data:`STUDENT`).
        accuracy: Linear-probe top-1 accuracy (percent) on the held-out samples.
        gain: ``accuracy`` minus the student's (percentage points; 0 for the student).
        gflops: Forward GFLOPs per image (nan when not counted).
        ms: Forward milliseconds per image (median over repeats).
        feature_dim: Width of the pooled feature vector.
    """

    name: str
    accuracy: float
    gain: float
    gflops: float
    ms: float
    feature_dim: int


def pool_tokens(tokens: Tensor) -> Tensor:
    """``(B, N, C)`` tokens -> ``(B, 2C)``: mean and max over tokens (the max keeps small objects visible)."""
    return torch.cat([tokens.mean(1), tokens.amax(1)], dim=-1)


def labelled_images(dataset: Dataset, label_key: str, batch_size: int, limit: int | None) -> tuple[Tensor, Tensor]:
    """``(N, 3, H, W)`` images and ``(N,)`` labels of the first ``limit`` samples (all when None).

    Raises:
        DataError: a batch without ``images`` or ``label_key``, or labels that are not one class per image.
    """
    images, labels, seen = [], [], 0
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=getattr(dataset, "collate", None))
    for batch in loader:
        if "images" not in batch or label_key not in batch:
            raise DataError(f"probe: the data gives {sorted(batch)}; it needs 'images' and {label_key!r} "
                            "(one class per image: pass --data with a labelled block, or --label-key)")
        found = torch.as_tensor(batch[label_key])
        if found.dim() != 1:
            raise DataError(f"probe: {label_key!r} has shape {tuple(found.shape)}, not one class per image")
        images.append(batch["images"])
        labels.append(found.long())
        seen += len(found)
        if limit is not None and seen >= limit:
            break
    if not images:
        raise DataError("probe: the data holds no sample")
    end = limit if limit is not None else seen
    return torch.cat(images)[:end], torch.cat(labels)[:end]


@torch.no_grad()
def pooled_features(encode: Callable[[Tensor], Tensor], images: Tensor, batch_size: int) -> Tensor:
    """``(N, 3, H, W)`` images -> ``(N, 2C)`` pooled features of ``encode``'s ``(B, N_tokens, C)`` output."""
    return torch.cat([pool_tokens(encode(images[i:i + batch_size]).float()) for i in range(0, len(images), batch_size)])


@torch.no_grad()
def cost_per_image(encode: Callable[[Tensor], Tensor], images: Tensor, repeats: int = 3) -> tuple[float, float]:
    """GFLOPs of one image's forward and the median milliseconds per image over ``repeats`` timed batches
    (after one untimed warm-up batch)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        encode(images[:1])
    encode(images)  # warm-up: first-call allocations are not the model's cost
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        encode(images)
        times.append((time.perf_counter() - started) / len(images))
    return counter.get_total_flops() / 1e9, 1000 * statistics.median(times)


def probe_accuracy(features: Tensor, labels: Tensor, held_fraction: float, seed: int) -> float:
    """Linear-probe top-1 (percent): fitted on a stratified part of ``(N, F)`` features, scored on the rest."""
    from kdkit_plugins.benchmarks.probes import holdout_split, linear_probe_classify

    fit, held = holdout_split(labels, held_fraction, seed)
    if len(held) == 0:
        raise DataError(f"probe: no sample is left to score with held fraction {held_fraction} ({len(labels)} samples)")
    classes = int(labels.max()) + 1
    predicted, _ = linear_probe_classify(features[fit], labels[fit], features[held], classes,
                                         [1e-4, 1e-3, 1e-2, 1e-1], 0.2, 300, seed)
    return 100.0 * float((predicted == labels[held]).double().mean())


def probe_sources(sources: Mapping[str, Callable[[Tensor], Tensor]], student: str, images: Tensor, labels: Tensor,
                  held_fraction: float = 0.3, batch_size: int = 64, seed: int = 0, timing_batch: int = 16
                  ) -> list[ProbeRow]:
    """Probe every feature source; rows ranked by gain, ties by GFLOPs (the student first).

    Args:
        sources: ``{name: images (B, 3, H, W) -> tokens (B, N, C)}``, the student's among them.
        student: The key of the student's source.
        images: ``(N, 3, H, W)`` probe images; labels: ``(N,)`` their classes.
        held_fraction: Fraction of each class the probe is scored on (never fitted on).
        batch_size: Images per forward.
        seed: Seed of the split and of the probe's weight-decay choice.
        timing_batch: Images per timed forward.
    """
    accuracy, costs, widths = {}, {}, {}
    for name, encode in sources.items():
        features = pooled_features(encode, images, batch_size)
        accuracy[name] = probe_accuracy(features, labels, held_fraction, seed)
        costs[name] = cost_per_image(encode, images[:timing_batch])
        widths[name] = features.shape[1]
    base = accuracy[student]
    rows = [ProbeRow(n, accuracy[n], accuracy[n] - base, *costs[n], widths[n]) for n in sources]
    return sorted(rows, key=lambda r: (r.name != student, -r.gain, r.gflops))  # ties: the cheaper first


def recommend(rows: Sequence[ProbeRow], budget_gflops: float | None, student: str = STUDENT) -> list[str]:
    """Teachers in gain order with a positive gain whose summed GFLOPs stay within the budget (None: no limit)."""
    chosen, spent = [], 0.0
    for row in rows:
        if row.name == student or row.gain <= 0:
            continue
        if budget_gflops is not None and spent + row.gflops > budget_gflops:
            continue
        chosen.append(row.name)
        spent += row.gflops
    return chosen


def table(rows: Sequence[ProbeRow], budget_gflops: float | None) -> list[str]:
    """Markdown rows of the ranked table and the recommendation line."""
    lines = ["| rank | features | probe top-1 (%) | gain (points) | GFLOPs/image | ms/image |", "|---|---|---|---|---|---|"]
    rank = 0
    for row in rows:
        label = "-" if row.name == STUDENT else str(rank := rank + 1)
        lines.append(f"| {label} | {row.name} | {row.accuracy:.2f} | {row.gain:+.2f} | {row.gflops:.4f} | {row.ms:.3f} |")
    budget = "no budget" if budget_gflops is None else f"a budget of {budget_gflops:g} GFLOPs/image"
    picked = recommend(rows, budget_gflops)
    lines += ["", f"Recommended teachers for {budget}: {', '.join(picked) if picked else 'none (no teacher adds to the student)'}"]
    return lines


def probe_recipe(recipe_path: str | Path, stage: str | None = None, overrides: Iterable[str] = (),
                 data: Mapping[str, Any] | None = None, label_key: str = "labels", limit: int | None = 1000,
                 held_fraction: float = 0.3, seed: int = 0, registry: Any = None) -> list[ProbeRow]:
    """Build a recipe's student (as the recipe builds it, before distillation) and teachers; probe them.

    Args:
        recipe_path: The recipe file (or a shipped recipe's name).
        stage: Whose data to probe on (default: the first stage).
        overrides: ``--set`` overrides.
        data: A labelled data block to use instead of the stage's (e.g. for a VLM stage without class labels).
        label_key: The batch key holding one class per image.
        limit: Samples read (the first ones; None: all).
        held_fraction: Fraction of each class scored on.
        seed: Seed of the split and of the models' build.
        registry: Plugin registry (default: every installed plugin).
    """
    from kdkit.catalog import find_recipe
    from kdkit.engine.build import base_context, build_student, build_teacher
    from kdkit.recipe import load_recipe

    if registry is None:
        from kdkit.plugins import get_registry

        registry = get_registry()
    recipe = load_recipe(find_recipe(recipe_path), list(overrides), registry=registry)
    stage = stage or next(iter(recipe.stages))
    if stage not in recipe.stages:
        raise KdkitError(f"--stage {stage!r} is not a stage of {recipe.name} (stages: {', '.join(recipe.stages)})")
    if not recipe.teachers:
        raise KdkitError(f"{recipe.name} has no teachers to probe")
    device = torch.device("cpu")
    torch.manual_seed(recipe.runtime.seed)
    context = base_context(recipe, device)
    student, _ = build_student(recipe, registry, device)
    block = dict(data) if data is not None else recipe.stages[stage].data.config
    data_context = dataclasses.replace(context, name=stage, extras={"student": student})
    dataset = registry.build("data", block, data_context)
    images, labels = labelled_images(dataset, label_key, 64, limit)
    student.model.eval()
    sources: dict[str, Callable[[Tensor], Tensor]] = {STUDENT: student.encode}
    for name, teacher_block in recipe.teachers.items():
        teacher = build_teacher(registry, name, teacher_block, context, device, recipe.runtime.seed)
        sources[name] = lambda x, t=teacher: rearrange(t(x).grid, "b h w c -> b (h w) c")
    return probe_sources(sources, STUDENT, images, labels, held_fraction, seed=seed)

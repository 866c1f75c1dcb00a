"""Top-k accuracy of a classifier student on a labelled data block (e.g. the digits test split).

Every sample is scored by ``subject.student({"images": ...}).logits`` under ``no_grad`` with the
adapters routed; a sample is top-k correct when its label is among the k largest logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch.utils.data import Dataset

from kdkit import BuildContext, Example, Factory, PluginConfig, hookimpl
from kdkit.errors import DataError
from kdkit.interfaces import EvalSubject, Scores
from kdkit_plugins.benchmarks.model_eval import build_data, labelled_batches, logits_of, routed

NAME = "classification"


class ClassificationConfig(PluginConfig):
    """Top-k accuracy (percent) of the student's logits on a labelled data block."""

    kind: Literal["classification"] = "classification"
    data: dict[str, Any] = Field(description="The labelled data block to score, as in a recipe stage, e.g. "
                                 "{kind: digits, split: test}; relative paths resolve against the data root.")
    batch_size: int = Field(256, gt=0, description="Images per forward pass.")
    top_k: list[int] = Field(default_factory=lambda: [1, 5], description="The k of each top-k metric ('top1', "
                             "'top5'...); must include 1 (the primary metric). A k above the class count is "
                             "capped at it (noted in the details).")

    @field_validator("top_k")
    @classmethod
    def _valid_ks(cls, value: list[int]) -> list[int]:
        if 1 not in value:
            raise ValueError("top_k must include 1: top1 is the primary metric")
        if any(k < 1 for k in value) or len(set(value)) != len(value):
            raise ValueError(f"top_k must be distinct positive integers, got {value}")
        return value


class Classification:
    """A :class:`~kdkit.interfaces.ModelBenchmark`: ``evaluate(subject)`` -> top-k accuracies.

    Args:
        dataset: Samples with ``images`` ``(3, H, W)`` in [0, 1] and ``labels``.
        batch_size: Images per forward pass.
        top_k: The k of each metric (1 included).
    """

    def __init__(self, dataset: Dataset, batch_size: int = 256, top_k: tuple[int, ...] = (1, 5)) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.top_k = tuple(top_k)
        self.metrics: tuple[str, ...] = tuple(f"top{k}" for k in self.top_k)
        self.primary = "top1"
        self.published: dict[str, float] = {}

    def evaluate(self, subject: EvalSubject) -> Scores:
        """Top-k accuracies in percent; units: per-sample top-1 correctness (1.0 / 0.0) by sample index.

        Raises:
            KdkitError: the student has no logits.
            DataError: a label outside the classifier's outputs.
        """
        hits = {k: [] for k in self.top_k}
        classes = None
        with routed(subject):
            for images, labels in labelled_batches(NAME, self.dataset, self.batch_size, subject.device):
                logits = logits_of(NAME, subject, images).cpu()
                classes = logits.shape[1]
                if int(labels.min()) < 0 or int(labels.max()) >= classes:
                    raise DataError(f"{NAME}: the data holds label {int(labels.max())} but the student's classifier "
                                    f"has {classes} outputs (labels must be in [0, {classes - 1}])")
                ranked = logits.topk(min(max(self.top_k), classes), dim=1).indices
                for k in self.top_k:
                    hits[k].append((ranked[:, :k] == labels[:, None]).any(1).float())
        assert classes is not None  # build refuses an empty dataset
        correct = {k: torch.cat(v) for k, v in hits.items()}
        metrics = {f"top{k}": 100.0 * float(correct[k].double().mean()) for k in self.top_k}
        details: dict[str, Any] = {"samples": len(correct[1]), "classes": classes}
        capped = {f"top{k}": classes for k in self.top_k if k > classes}
        if capped:
            details["capped_k"] = capped
            details["note"] = (f"the student has {classes} classes: " + ", ".join(capped)
                               + f" counted as top{classes} (every sample is correct)")
        units = {str(i): float(v) for i, v in enumerate(correct[1].tolist())}
        return Scores(metrics=metrics, units=units, details=details)


def build(config: ClassificationConfig, context: BuildContext) -> Classification:
    """Build the data block now (a bad block fails before any model runs)."""
    dataset = build_data(NAME, "data", config.data, context)
    return Classification(dataset, config.batch_size, tuple(config.top_k))


def example(tmp_dir: Path) -> Example:
    """The digits test split at 16x16, scored on a tiny timm ViT with 10 classes."""
    from kdkit_plugins.fixtures.benchmarks_model import DIGITS_TEST, tiny_timm_subject

    del tmp_dir
    return Example(config={"kind": NAME, "data": dict(DIGITS_TEST), "batch_size": 128},
                   context=BuildContext(name="eval"), inputs=(tiny_timm_subject(),))


@hookimpl
def kdkit_benchmarks() -> dict[str, Factory]:
    return {NAME: Factory(config=ClassificationConfig, build=build, example=example)}

"""Frozen-feature probes of a student's backbone: a weighted kNN classifier and a linear probe.

Features are ``subject.student.encode(images)`` (adapters routed, no gradients) pooled to one
vector per image; the classifier is fitted on the ``train`` block's features only and scored on
the ``test`` block's.

- ``knn_probe``: the weighted k-nearest-neighbour vote of DINO (Caron et al., arXiv 2104.14294;
  Wu et al., arXiv 1805.01978): cosine similarity to every train feature, the k most similar vote
  for their label with weight ``exp(similarity / T)``.
- ``linear_probe``: multinomial logistic regression on features standardized with the train
  statistics, fitted full-batch with L-BFGS; its L2 weight decay is chosen on a held-out slice of
  the TRAIN features (never on test), then the probe is refitted on every train feature.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor
from torch.utils.data import Dataset

from kdkit import BuildContext, Example, Factory, PluginConfig, hookimpl
from kdkit.errors import KdkitError
from kdkit.interfaces import EvalSubject, Scores
from kdkit_plugins.benchmarks.model_eval import Pool, build_data, features_of


class ProbeConfig(PluginConfig):
    """Fields every probe shares: the train and test blocks and how features are pooled."""

    train: dict[str, Any] = Field(description="Labelled data block the probe is fitted on, e.g. {kind: digits, "
                                  "split: train}; relative paths resolve against the data root.")
    test: dict[str, Any] = Field(description="Labelled data block the probe is scored on, e.g. {kind: digits, split: test}.")
    batch_size: int = Field(256, gt=0, description="Images per encode pass.")
    pool: Pool = Field("mean", description="Tokens (B, m, D) -> one vector per image. `mean`: mean over the grid "
                       "tokens; `cls`: the CLS token (only for a student whose features hold prefix tokens); "
                       "`none`: every token concatenated (B, m*D).")


class KnnConfig(ProbeConfig):
    """Weighted kNN top-1 accuracy (percent) on frozen, L2-normalised features (DINO's protocol)."""

    kind: Literal["knn_probe"] = "knn_probe"
    k: int = Field(20, gt=0, description="Nearest train features that vote (capped at the train set size).")
    temperature: float = Field(0.07, gt=0, description="T of the vote weights exp(cosine / T).")


class LinearConfig(ProbeConfig):
    """Linear-probe top-1 accuracy (percent): logistic regression on standardized frozen features."""

    kind: Literal["linear_probe"] = "linear_probe"
    weight_decays: list[float] = Field(
        default_factory=lambda: [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1],
        description="Candidate L2 penalties (the loss is mean cross-entropy + wd/2 * ||W||^2): the one with the "
        "best accuracy on the held-out train slice is used (ties: the larger).")
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="Fraction of each class of the TRAIN features "
                                "held out to choose the weight decay.")
    max_iter: int = Field(500, gt=0, description="L-BFGS iterations of each fit (full batch).")
    seed: int = Field(0, description="Seed of the held-out slice; the fit itself is deterministic (zero init).")

    @field_validator("weight_decays")
    @classmethod
    def _valid_decays(cls, value: list[float]) -> list[float]:
        if not value or any(v < 0 for v in value):
            raise ValueError(f"weight_decays must be a non-empty list of non-negative numbers, got {value}")
        return value


def knn_classify(train: Tensor, train_labels: Tensor, test: Tensor, classes: int, k: int, temperature: float,
                 chunk: int = 1024) -> Tensor:
    """Weighted kNN predictions ``(N_test,)``.

    Args:
        train: ``(N, D)`` train features (normalised here).
        train_labels: ``(N,)`` their labels in ``[0, classes)``.
        test: ``(M, D)`` test features (normalised here).
        classes: Number of classes.
        k: Neighbours that vote (at most ``N``).
        temperature: Vote weight ``exp(cosine / temperature)``.
        chunk: Test rows compared at once (bounds memory).

    Returns:
        The class with the largest summed vote per test row (the lowest class index on a tie).
        Computed in float32, also inside a caller's autocast.
    """
    train, test = F.normalize(train.float(), dim=1), F.normalize(test.float(), dim=1)
    predictions = []
    with torch.autocast(train.device.type, enabled=False):
        for start in range(0, len(test), chunk):
            similarity = test[start:start + chunk] @ train.T
            nearest, index = similarity.topk(k, dim=1)
            votes = torch.zeros(len(nearest), classes, dtype=similarity.dtype, device=similarity.device)
            votes.scatter_add_(1, train_labels[index], (nearest / temperature).exp())
            predictions.append(votes.argmax(1))
    return torch.cat(predictions)


def standardize(train: Tensor, *others: Tensor) -> list[Tensor]:
    """``train`` and ``others`` standardized per feature with the train mean and std (a constant feature: std 1)."""
    mean = train.mean(0)
    std = train.std(0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return [(x - mean) / std for x in (train, *others)]


def fit_logistic(features: Tensor, labels: Tensor, classes: int, weight_decay: float, max_iter: int) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression by full-batch L-BFGS from zero weights.

    Minimises ``mean cross-entropy(features @ W.T + b) + weight_decay / 2 * ||W||^2``.

    Returns:
        ``W`` ``(classes, D)`` and ``b`` ``(classes,)``.
    """
    weight = torch.zeros(classes, features.shape[1], dtype=features.dtype, device=features.device, requires_grad=True)
    bias = torch.zeros(classes, dtype=features.dtype, device=features.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(features @ weight.T + bias, labels) + 0.5 * weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def holdout_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Stratified ``(fit, held-out)`` indices: ``round(fraction * n_c)`` of each class held out, at least one kept to fit."""
    gen = torch.Generator().manual_seed(seed)
    fit, held = [], []
    for label in labels.unique(sorted=True).tolist():
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        cut = min(round(fraction * len(members)), len(members) - 1)
        held.append(members[:cut])
        fit.append(members[cut:])
    return torch.cat(fit).sort().values, torch.cat(held).sort().values


def linear_probe_classify(train: Tensor, train_labels: Tensor, test: Tensor, classes: int, weight_decays: list[float],
                          val_fraction: float, max_iter: int, seed: int) -> tuple[Tensor, dict[str, Any]]:
    """Predictions ``(N_test,)`` of a logistic-regression probe, and how its weight decay was chosen.

    With several candidate weight decays, each is fitted on the train features minus a stratified
    held-out slice and scored on that slice; the best (ties: the larger) is refitted on all train
    features. Test features are only ever predicted. Computed in float32, also inside a caller's
    autocast (in-training validation runs under the recipe's precision).
    """
    with torch.autocast(train.device.type, enabled=False):
        return _linear_probe(train.float(), train_labels, test.float(), classes, weight_decays, val_fraction, max_iter,
                             seed)


def _linear_probe(train: Tensor, train_labels: Tensor, test: Tensor, classes: int, weight_decays: list[float],
                  val_fraction: float, max_iter: int, seed: int) -> tuple[Tensor, dict[str, Any]]:
    details: dict[str, Any] = {}
    chosen = weight_decays[0]
    if len(weight_decays) > 1:
        fit_index, held_index = (i.to(train.device) for i in holdout_split(train_labels.cpu(), val_fraction, seed))
        if len(held_index) == 0:
            raise KdkitError(f"linear_probe: no train sample is left to hold out with val_fraction {val_fraction} "
                             f"({len(train_labels)} train samples); raise val_fraction, use more train data, or "
                             "give a single weight decay")
        fit_x, held_x = standardize(train[fit_index], train[held_index])
        accuracy = {}
        for decay in weight_decays:
            weight, bias = fit_logistic(fit_x, train_labels[fit_index], classes, decay, max_iter)
            predicted = (held_x @ weight.T + bias).argmax(1)
            accuracy[decay] = 100.0 * float((predicted == train_labels[held_index]).double().mean())
        best = max(accuracy.values())
        chosen = max(d for d, a in accuracy.items() if a == best)
        details["heldout_samples"] = len(held_index)
        details["heldout_top1"] = {str(d): a for d, a in accuracy.items()}
    train_x, test_x = standardize(train, test)
    weight, bias = fit_logistic(train_x, train_labels, classes, chosen, max_iter)
    details["weight_decay"] = chosen
    return (test_x @ weight.T + bias).argmax(1), details


class Probe(abc.ABC):
    """A :class:`~kdkit.interfaces.ModelBenchmark` fitting a classifier on frozen train features.

    Args:
        name: The benchmark's name (for messages).
        train: Labelled samples the probe is fitted on.
        test: Labelled samples it is scored on.
        batch_size: Images per encode pass.
        pool: How tokens become one vector per image.
    """

    metrics: tuple[str, ...] = ("top1",)
    primary = "top1"

    def __init__(self, name: str, train: Dataset, test: Dataset, batch_size: int, pool: Pool) -> None:
        self.name = name
        self.train, self.test = train, test
        self.batch_size, self.pool = batch_size, pool
        self.published: dict[str, float] = {}

    @abc.abstractmethod
    def classify(self, train: Tensor, train_labels: Tensor, test: Tensor, classes: int) -> tuple[Tensor, dict[str, Any]]:
        """Predicted test classes ``(M,)`` and details; subclasses implement the probe."""

    def evaluate(self, subject: EvalSubject) -> Scores:
        """Top-1 accuracy (percent) on the test features; units: per-test-sample correctness by index."""
        train, train_labels = features_of(self.name, subject, self.train, self.batch_size, self.pool)
        test, test_labels = features_of(self.name, subject, self.test, self.batch_size, self.pool)
        device = subject.device
        return self.score(train.to(device), train_labels.to(device), test.to(device), test_labels)

    def score(self, train: Tensor, train_labels: Tensor, test: Tensor, test_labels: Tensor) -> Scores:
        """Fit on ``(train, train_labels)`` ``(N, D)``, ``(N,)``; score on ``(test, test_labels)`` (on ``train``'s device)."""
        if train.shape[1] != test.shape[1]:
            raise KdkitError(f"{self.name}: train features have width {train.shape[1]} but test features "
                             f"{test.shape[1]}; use the same image size in both data blocks or pool 'mean'")
        test_labels = test_labels.cpu()
        classes = max(int(train_labels.max()), int(test_labels.max())) + 1
        predicted, details = self.classify(train.float(), train_labels, test.float(), classes)
        correct = (predicted.cpu() == test_labels).float()
        details = {"train_samples": len(train_labels), "test_samples": len(test_labels), "feature_dim": train.shape[1],
                   "classes": classes, "pool": self.pool, **details}
        units = {str(i): v for i, v in enumerate(correct.tolist())}
        return Scores(metrics={"top1": 100.0 * float(correct.double().mean())}, units=units, details=details)


class KnnProbe(Probe):
    """Weighted kNN on L2-normalised frozen features (DINO's protocol)."""

    def __init__(self, train: Dataset, test: Dataset, batch_size: int = 256, pool: Pool = "mean", k: int = 20,
                 temperature: float = 0.07) -> None:
        super().__init__("knn_probe", train, test, batch_size, pool)
        self.k, self.temperature = k, temperature

    def classify(self, train: Tensor, train_labels: Tensor, test: Tensor, classes: int) -> tuple[Tensor, dict[str, Any]]:
        k = min(self.k, len(train))
        details: dict[str, Any] = {"k": k, "temperature": self.temperature}
        if k < self.k:
            details["note"] = f"k capped at the {len(train)} train samples"
        return knn_classify(train, train_labels, test, classes, k, self.temperature), details


class LinearProbe(Probe):
    """Logistic regression on standardized frozen features, weight decay chosen on held-out train features."""

    def __init__(self, train: Dataset, test: Dataset, batch_size: int = 256, pool: Pool = "mean",
                 weight_decays: tuple[float, ...] = (1e-4,), val_fraction: float = 0.2, max_iter: int = 500,
                 seed: int = 0) -> None:
        super().__init__("linear_probe", train, test, batch_size, pool)
        self.weight_decays = list(weight_decays)
        self.val_fraction, self.max_iter, self.seed = val_fraction, max_iter, seed

    def classify(self, train: Tensor, train_labels: Tensor, test: Tensor, classes: int) -> tuple[Tensor, dict[str, Any]]:
        return linear_probe_classify(train, train_labels, test, classes, self.weight_decays, self.val_fraction,
                                     self.max_iter, self.seed)


def build_knn(config: KnnConfig, context: BuildContext) -> KnnProbe:
    """Build both data blocks now (a bad block fails before any model runs)."""
    train = build_data("knn_probe", "train", config.train, context)
    test = build_data("knn_probe", "test", config.test, context)
    return KnnProbe(train, test, config.batch_size, config.pool, config.k, config.temperature)


def build_linear(config: LinearConfig, context: BuildContext) -> LinearProbe:
    """Build both data blocks now (a bad block fails before any model runs)."""
    train = build_data("linear_probe", "train", config.train, context)
    test = build_data("linear_probe", "test", config.test, context)
    return LinearProbe(train, test, config.batch_size, config.pool, tuple(config.weight_decays), config.val_fraction,
                       config.max_iter, config.seed)


def _example(kind: str, extra: dict[str, Any]) -> Example:
    from kdkit_plugins.fixtures.benchmarks_model import DIGITS_TEST, DIGITS_TRAIN, tiny_timm_subject

    config = {"kind": kind, "train": dict(DIGITS_TRAIN), "test": dict(DIGITS_TEST), **extra}
    return Example(config=config, context=BuildContext(name="eval"), inputs=(tiny_timm_subject(),))


def example_knn(tmp_dir: Path) -> Example:
    """Digits train/test at 16x16 on a tiny timm ViT."""
    del tmp_dir
    return _example("knn_probe", {"k": 10})


def example_linear(tmp_dir: Path) -> Example:
    """Digits train/test at 16x16 on a tiny timm ViT, two candidate weight decays."""
    del tmp_dir
    return _example("linear_probe", {"weight_decays": [1e-4, 1e-2], "max_iter": 50})


@hookimpl
def kdkit_benchmarks() -> dict[str, Factory]:
    return {
        "knn_probe": Factory(config=KnnConfig, build=build_knn, example=example_knn),
        "linear_probe": Factory(config=LinearConfig, build=build_linear, example=example_linear),
    }

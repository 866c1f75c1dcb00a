"""kNN and linear probes: hand-computed weighted votes, pooling, a separable problem solved exactly,
invariance to feature scale, a weight decay chosen without the test set, and a real tiny student."""

from __future__ import annotations

import math

import pytest
import torch

from kdkit.errors import KdkitError
from kdkit.interfaces import BuildContext, EvalSubject, GridSpec
from kdkit.testing import check_plugin
from kdkit_plugins.benchmarks.model_eval import features_of, pool_tokens
from kdkit_plugins.benchmarks.probes import KnnProbe, LinearProbe, holdout_split, knn_classify, linear_probe_classify
from kdkit_plugins.fixtures.benchmarks_model import (
    DIGITS_TEST,
    DIGITS_TRAIN,
    IndexedImages,
    TableStudent,
    tiny_timm_subject,
)

#: Train features: a = (1, 0) of class 0; b = (0.8, 0.6) and c = (0.8, -0.6) of class 1 (all unit norm).
TRAIN = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.8, -0.6]])
TRAIN_LABELS = torch.tensor([0, 1, 1])
#: One test feature (1, 0): cosines 1.0, 0.8, 0.8 to a, b, c.
TEST = torch.tensor([[1.0, 0.0]])


@pytest.mark.parametrize(("k", "temperature", "expected"), [
    # votes: class 0 exp(1/0.07) = e^14.29; class 1 2 exp(0.8/0.07) = 2 e^11.43: class 0 (ratio e^2.86 = 17 > 2)
    (3, 0.07, 0),
    # votes: class 0 e^1 = 2.72; class 1 2 e^0.8 = 4.45: class 1
    (3, 1.0, 1),
    # only a votes
    (1, 1.0, 0),
    # a and b: e^1 = 2.72 vs e^0.8 = 2.23: class 0
    (2, 1.0, 0),
])
def test_knn_weighted_vote_by_hand(k, temperature, expected) -> None:
    assert math.exp(1 / 0.07) > 2 * math.exp(0.8 / 0.07) and math.exp(1) < 2 * math.exp(0.8)  # the arithmetic above
    assert knn_classify(TRAIN, TRAIN_LABELS, TEST, classes=2, k=k, temperature=temperature).tolist() == [expected]


def test_knn_uses_cosine_not_distance() -> None:
    """Scaling any feature's length changes no cosine, so no prediction."""
    scaled = TRAIN * torch.tensor([[0.01], [50.0], [3.0]])
    assert knn_classify(scaled, TRAIN_LABELS, 7 * TEST, 2, 3, 1.0).tolist() == [1]


def table_subject(train: torch.Tensor, test: torch.Tensor, spec: GridSpec | None = None) -> EvalSubject:
    """A student whose encode gives ``train`` rows for samples 0..N-1 and ``test`` rows for N..N+M-1."""
    return EvalSubject(student=TableStudent(features=torch.cat([train, test]), feature_spec=spec))


class Shifted(IndexedImages):
    """Samples ``offset + i`` of a :class:`TableStudent`'s table (the test rows after the train rows)."""

    def __init__(self, labels, offset: int) -> None:
        super().__init__(labels)
        self.offset = offset

    def __getitem__(self, index: int):
        item = super().__getitem__(index)
        return {"images": item["images"] + self.offset, "labels": item["labels"]}


def test_knn_probe_pools_tokens_and_scores_by_hand() -> None:
    # tokens (2v, 0) of each image mean-pool to the vectors v above
    tokens = lambda x: torch.stack([2 * x, torch.zeros_like(x)], dim=1)  # noqa: E731
    subject = table_subject(tokens(TRAIN), tokens(torch.cat([TEST, -TEST])))
    train, test = IndexedImages([0, 1, 1]), Shifted([0, 1], offset=3)
    # test 0: class 0 (first case above); test 1 = (-1, 0): cosines -1, -0.8, -0.8, class 1 wins at T=0.07
    scores = KnnProbe(train, test, batch_size=2, k=20, temperature=0.07).evaluate(subject)
    assert scores.metrics == {"top1": 100.0}
    assert scores.units == {"0": 1.0, "1": 1.0}
    assert scores.details["k"] == 3 and scores.details["note"] == "k capped at the 3 train samples"
    scores = KnnProbe(train, test, k=3, temperature=1.0).evaluate(subject)
    assert scores.metrics == {"top1": 50.0} and scores.units == {"0": 0.0, "1": 1.0}


def test_pooling_by_hand() -> None:
    tokens = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])  # (1, 3, 2)
    assert pool_tokens("p", tokens, "mean").tolist() == [[3.0, 4.0]]
    assert pool_tokens("p", tokens, "none").tolist() == [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]]
    # one CLS token before a grid of 2: cls is token 0, mean leaves it out
    assert pool_tokens("p", tokens, "cls", prefix_tokens=1, grid_tokens=2).tolist() == [[1.0, 2.0]]
    assert pool_tokens("p", tokens, "mean", prefix_tokens=1, grid_tokens=2).tolist() == [[4.0, 5.0]]
    assert pool_tokens("p", tokens[:, 0], "mean").tolist() == [[1.0, 2.0]]  # already one vector per image
    with pytest.raises(KdkitError, match=r"p: pool 'cls' needs a CLS token, but the student's encode returns 3 tokens "
                                         r"and declares 0 prefix tokens over a grid of 3; use pool 'mean'"):
        pool_tokens("p", tokens, "cls", prefix_tokens=0, grid_tokens=3)


def test_cls_pooling_from_the_students_declared_grid() -> None:
    features = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)
    subject = EvalSubject(student=TableStudent(features=features, feature_spec=GridSpec(1, 2, 2, prefix_tokens=1)))
    pooled, labels = features_of("p", subject, IndexedImages([1, 0]), batch_size=4, pool="cls")
    assert pooled.tolist() == [[0.0, 1.0], [6.0, 7.0]] and labels.tolist() == [1, 0]


def separable(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes in 5-D: cluster c around 10 * e_c (std 1), so a linear classifier separates them."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(3).repeat_interleave(n_per_class)
    features = torch.randn(len(labels), 5, generator=gen) + 10 * torch.eye(5)[labels]
    return features, labels


def linear_probe(**kwargs) -> LinearProbe:
    options = {"weight_decays": (1e-4, 1e-2), "max_iter": 100, "seed": 0, **kwargs}
    return LinearProbe(IndexedImages([]), IndexedImages([]), **options)


def test_linear_probe_solves_a_separable_problem() -> None:
    train, train_labels = separable(40, seed=1)
    test, test_labels = separable(20, seed=2)
    scores = linear_probe().score(train, train_labels, test, test_labels)
    assert scores.metrics == {"top1": 100.0} and len(scores.units) == 60
    assert scores.details["heldout_samples"] == 24  # round(0.2 * 40) of each of 3 classes
    assert scores.details["weight_decay"] in (1e-4, 1e-2)


def test_linear_probe_is_invariant_to_feature_scale_and_offset() -> None:
    train, train_labels = separable(30, seed=3)
    test, test_labels = separable(30, seed=4)
    test = test + 4 * torch.randn(test.shape, generator=torch.Generator().manual_seed(5))  # some errors on test
    probe = linear_probe()
    base = probe.score(train, train_labels, test, test_labels)
    scale = torch.tensor([1e3, 1e-2, 7.0, 1.0, 250.0])
    shift = torch.tensor([5.0, -3.0, 0.0, 100.0, 1.0])
    moved = probe.score(train * scale + shift, train_labels, test * scale + shift, test_labels)
    assert 50.0 < base.metrics["top1"] < 100.0
    assert moved.metrics == base.metrics and moved.units == base.units
    assert moved.details["weight_decay"] == base.details["weight_decay"]


def test_the_weight_decay_is_chosen_without_the_test_labels() -> None:
    train, train_labels = separable(30, seed=6)
    train = train + 6 * torch.randn(train.shape, generator=torch.Generator().manual_seed(7))  # overlapping classes
    test, test_labels = separable(10, seed=8)
    probe = linear_probe(weight_decays=(1e-5, 1e-1, 10.0))
    first = probe.score(train, train_labels, test, test_labels)
    shuffled = probe.score(train, train_labels, test, test_labels.roll(1))
    assert set(first.details["heldout_top1"]) == {"1e-05", "0.1", "10.0"}
    assert shuffled.details["heldout_top1"] == first.details["heldout_top1"]
    assert shuffled.details["weight_decay"] == first.details["weight_decay"]
    best = max(first.details["heldout_top1"].values())
    assert first.details["heldout_top1"][str(first.details["weight_decay"])] == best
    again = probe.score(train, train_labels, test, test_labels)
    assert again.units == first.units and again.details == first.details  # deterministic


def test_holdout_split_is_stratified_disjoint_and_seeded() -> None:
    labels = torch.tensor([0] * 10 + [1] * 5 + [2])
    fit, held = holdout_split(labels, 0.2, seed=0)
    # round(0.2 * 10) = 2, round(0.2 * 5) = 1, round(0.2 * 1) = 0 held out
    assert labels[held].tolist() == [0, 0, 1]
    assert sorted(fit.tolist() + held.tolist()) == list(range(16))
    assert holdout_split(labels, 0.2, seed=0)[1].tolist() == held.tolist()
    assert holdout_split(labels, 0.2, seed=1)[1].tolist() != held.tolist()


def test_too_little_train_data_to_hold_out_is_refused() -> None:
    with pytest.raises(KdkitError, match=r"linear_probe: no train sample is left to hold out with val_fraction 0.2 "
                                         r"\(2 train samples\)"):
        linear_probe().score(torch.eye(2), torch.tensor([0, 1]), torch.eye(2), torch.tensor([0, 1]))


def test_features_of_another_width_are_refused() -> None:
    with pytest.raises(KdkitError, match=r"knn_probe: train features have width 2 but test features 3"):
        KnnProbe(IndexedImages([]), IndexedImages([])).score(TRAIN, TRAIN_LABELS, torch.ones(1, 3), torch.tensor([0]))


@pytest.mark.parametrize("kind", ["knn_probe", "linear_probe"])
def test_digits_probes_on_a_tiny_student(kind, registry) -> None:
    block = {"kind": kind, "train": DIGITS_TRAIN, "test": DIGITS_TEST, "batch_size": 512}
    bench = registry.build("benchmark", block, BuildContext(name="eval", extras={"registry": registry}))
    subject = tiny_timm_subject(registry)
    scores = bench.evaluate(subject)
    # the pooled features are the mean of encode's 16 tokens
    images = torch.stack([bench.test[i]["images"] for i in range(3)])
    with torch.no_grad():
        direct = subject.student.encode(images).mean(1)
    pooled, _ = features_of(kind, subject, bench.test, 2, "mean")
    torch.testing.assert_close(pooled[:3], direct)
    assert scores.details["train_samples"] == 1347 and scores.details["test_samples"] == 450
    assert scores.details["feature_dim"] == 16 and len(scores.units) == 450
    assert 10.0 < scores.metrics["top1"] <= 100.0  # above chance on digits even with random features
    assert bench.metrics == ("top1",) and bench.primary == "top1"


@pytest.mark.parametrize("kind", ["knn_probe", "linear_probe"])
def test_contract(kind, registry, tmp_path) -> None:
    check_plugin("benchmark", kind, registry.factory("benchmark", kind), tmp_path)


def test_the_knn_vote_stays_float32_inside_a_callers_autocast() -> None:
    """In-training validation runs under the recipe's autocast. Cosines 0.9992 (class 0) and 0.9996
    (class 1) to the test feature: float32 ranks class 1 first; bfloat16 rounds both to 1.0 (a tie: class 0)."""
    x = [math.sqrt(1 / c**2 - 1) for c in (0.9992, 0.9996)]  # (1, x) has cosine c to (1, 0)
    train = torch.tensor([[1.0, x[0]], [1.0, x[1]]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert knn_classify(train, torch.tensor([0, 1]), TEST, 2, 2, 0.07).tolist() == [1]


def test_the_linear_probe_fits_in_float32_inside_a_callers_autocast(monkeypatch) -> None:
    import kdkit_plugins.benchmarks.probes as probes

    seen = []
    fit = probes.fit_logistic
    monkeypatch.setattr(probes, "fit_logistic", lambda *a: seen.append(torch.is_autocast_enabled("cpu")) or fit(*a))
    train, train_labels = separable(10, seed=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        linear_probe_classify(train, train_labels, train, 3, [1e-4, 1e-2], 0.2, 20, 0)
    assert seen == [False, False, False]  # two candidates on the held-out split, then the final fit

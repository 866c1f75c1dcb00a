"""The classification benchmark: top-k accuracies of hand-set logits, capped k, routed no-grad
passes, errors, and agreement with the digits experiment's accuracy loop on a real tiny student."""

from __future__ import annotations

import contextlib

import pydantic
import pytest
import torch

from kdkit.errors import DataError, KdkitError
from kdkit.interfaces import BuildContext, EvalSubject, ModelBenchmark, StudentOutput
from kdkit.testing import check_plugin
from kdkit_plugins.benchmarks.classification import Classification, ClassificationConfig
from kdkit_plugins.fixtures.benchmarks_model import DIGITS_TEST, IndexedImages, TableStudent, tiny_timm_subject

#: Five samples over six classes; the rank of the label among the logits is written beside each row.
LOGITS = torch.tensor([
    [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # label 0: rank 1
    [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # label 1: rank 2
    [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],  # label 0: rank 6
    [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],  # label 5: rank 1
    [1.0, 0.0, 0.5, 2.0, 3.0, 4.0],  # label 0: rank 4 (4 > 3 > 2 > 1 > 0.5 > 0)
])
LABELS = [0, 1, 0, 5, 0]


def test_topk_of_hand_set_logits() -> None:
    bench = Classification(IndexedImages(LABELS), batch_size=2, top_k=(1, 2, 5))  # batches of 2, 2, 1
    scores = bench.evaluate(EvalSubject(student=TableStudent(logits=LOGITS)))
    # ranks 1, 2, 6, 1, 4: top1 2/5, top2 3/5, top5 4/5
    assert scores.metrics == pytest.approx({"top1": 40.0, "top2": 60.0, "top5": 80.0})
    assert scores.units == {"0": 1.0, "1": 0.0, "2": 0.0, "3": 1.0, "4": 0.0}
    assert sum(scores.units.values()) / len(scores.units) * 100 == pytest.approx(scores.metrics["top1"])
    assert scores.details == {"samples": 5, "classes": 6}
    assert bench.metrics == ("top1", "top2", "top5") and bench.primary == "top1" and bench.published == {}
    assert isinstance(bench, ModelBenchmark)


def test_top5_with_three_classes_is_capped_and_said() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    scores = Classification(IndexedImages([0, 0, 2])).evaluate(EvalSubject(student=TableStudent(logits=logits)))
    # argmax 2, 0, 1 vs labels 0, 0, 2: top1 1/3; top5 = top3 with 3 classes: every sample
    assert scores.metrics["top1"] == pytest.approx(100 / 3)
    assert scores.metrics["top5"] == 100.0
    assert scores.details["capped_k"] == {"top5": 3}
    assert scores.details["note"] == "the student has 3 classes: top5 counted as top3 (every sample is correct)"


class RoutedCheck:
    """An adapter handle that records the routing asked for, and a student that records what it saw."""

    def __init__(self) -> None:
        self.teacher_names = ("t",)
        self.active: list[object] = []
        self.seen: list[tuple[list[object], bool]] = []

    @contextlib.contextmanager
    def routing(self, spec: object):
        self.active.append(spec)
        yield
        self.active.pop()

    def __call__(self, batch):
        self.seen.append((list(self.active), torch.is_grad_enabled()))
        n = len(batch["images"])
        return StudentOutput(features=torch.zeros(n, 1, 1), logits=torch.ones(n, 2, requires_grad=True))


def test_the_student_runs_routed_without_gradients() -> None:
    handle = RoutedCheck()
    subject = EvalSubject(student=handle, adapters={"mola": handle})
    Classification(IndexedImages([0, 1, 1]), batch_size=2).evaluate(subject)
    assert handle.seen == [(["routed"], False), (["routed"], False)]
    assert handle.active == []


def test_a_student_without_logits_is_refused() -> None:
    bench = Classification(IndexedImages([0, 1]))
    with pytest.raises(KdkitError, match=r"classification: the TableStudent student returns no logits; classification "
                                         r"needs a classifier student"):
        bench.evaluate(EvalSubject(student=TableStudent(features=torch.zeros(2, 1, 4))))


def test_a_label_beyond_the_classifier_is_refused() -> None:
    bench = Classification(IndexedImages([0, 3]))
    with pytest.raises(DataError, match=r"holds label 3 but the student's classifier has 2 outputs"):
        bench.evaluate(EvalSubject(student=TableStudent(logits=torch.zeros(2, 2))))


@pytest.mark.parametrize("top_k", [[5], [1, 1], [0, 1]])
def test_top_k_must_hold_distinct_positive_ks_with_1(top_k) -> None:
    with pytest.raises(pydantic.ValidationError, match="top_k"):
        ClassificationConfig(data={"kind": "digits"}, top_k=top_k)


def test_digits_through_the_registry_matches_a_plain_loop(registry) -> None:
    from torch.utils.data import DataLoader

    bench = registry.build("benchmark", {"kind": "classification", "data": DIGITS_TEST, "batch_size": 100},
                           BuildContext(name="eval", extras={"registry": registry}))
    subject = tiny_timm_subject(registry)
    scores = bench.evaluate(subject)
    dataset = registry.build("data", dict(DIGITS_TEST), BuildContext(name="test"))
    hits = 0
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=64):
            hits += int((subject.student({"images": batch["images"]}).logits.argmax(-1) == batch["labels"]).sum())
    assert scores.metrics["top1"] == pytest.approx(100 * hits / len(dataset))
    assert len(scores.units) == 450 and scores.details == {"samples": 450, "classes": 10}
    assert scores.metrics["top1"] <= scores.metrics["top5"] <= 100.0


def test_a_bad_data_block_fails_at_build(registry) -> None:
    from kdkit.errors import UnknownPluginError

    with pytest.raises(UnknownPluginError, match="no_such_data"):
        registry.build("benchmark", {"kind": "classification", "data": {"kind": "no_such_data"}}, BuildContext())


def test_contract(registry, tmp_path) -> None:
    check_plugin("benchmark", "classification", registry.factory("benchmark", "classification"), tmp_path)

"""The digits data: a fixed, stratified, disjoint split of the 1,797 real scans; seeded augmentation."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from kdkit import BuildContext
from kdkit.errors import DataError
from kdkit.errors import KdkitError
from kdkit_plugins.data.digits import carve_indices, load_scans, split_indices


def build(registry, name: str = "train", student=None, **fields):
    extras = {"student": student} if student is not None else {}
    return registry.build("data", {"kind": "digits", **fields}, BuildContext(name=name, extras=extras))


def test_split_is_disjoint_complete_and_stratified() -> None:
    _, labels = load_scans()
    train, test = split_indices(labels, 0.25, seed=0)
    assert len(labels) == 1797
    assert not set(train.tolist()) & set(test.tolist())
    assert sorted(train.tolist() + test.tolist()) == list(range(1797))
    for label in range(10):
        members = int((labels == label).sum())
        assert int((labels[test] == label).sum()) == round(0.25 * members)


def test_split_is_fixed_by_its_seed(registry) -> None:
    _, labels = load_scans()
    first, again = split_indices(labels, 0.25, 0), split_indices(labels, 0.25, 0)
    other = split_indices(labels, 0.25, 1)
    assert torch.equal(first[1], again[1]) and not torch.equal(first[1], other[1])
    test = build(registry, split="test")
    assert torch.equal(test.ids, first[1]) and len(build(registry)) == 1797 - len(first[1])


def test_val_is_carved_from_train_and_leaves_test_alone(registry) -> None:
    _, labels = load_scans()
    train, test = split_indices(labels, 0.25, 0)
    parts = carve_indices(labels, 0.25, 0.2, 0)
    assert torch.equal(parts["test"], test)
    assert not set(parts["train"].tolist()) & set(parts["val"].tolist())
    assert sorted(parts["train"].tolist() + parts["val"].tolist()) == train.tolist()
    for label in range(10):
        assert int((labels[parts["val"]] == label).sum()) == round(0.2 * int((labels[train] == label).sum()))
    val = build(registry, split="val", val_fraction=0.2, augment=True)
    assert torch.equal(val.ids, parts["val"]) and not val.augment
    assert torch.equal(build(registry, val_fraction=0.2).ids, parts["train"])
    assert torch.equal(build(registry, split="test", val_fraction=0.2).ids, test)
    assert torch.equal(carve_indices(labels, 0.25, 0.2, 0)["val"], parts["val"])  # deterministic


def test_empty_val_split_is_refused(registry) -> None:
    with pytest.raises(KdkitError, match="split 'val' is empty with val_fraction 0"):
        build(registry, split="val")


def test_samples_are_the_upsampled_scans(registry) -> None:
    scans, labels = load_scans()
    data = build(registry, split="test", image_size=16, interpolation="nearest")
    sample = data[3]
    scan = scans[int(sample["ids"])]
    assert sample["images"].shape == (3, 16, 16) and sample["labels"] == labels[int(sample["ids"])]
    torch.testing.assert_close(sample["images"][1], scan.repeat_interleave(2, 0).repeat_interleave(2, 1))
    assert torch.equal(sample["images"][0], sample["images"][2])
    assert data.num_classes == 10


def test_augmentation_is_seeded_per_sample_and_train_only(registry) -> None:
    plain = build(registry)
    augmented = build(registry, augment=True, repeats=2, max_shift=0.2)
    assert len(augmented) == 2 * len(plain)
    first = augmented[5]["images"]
    assert torch.equal(first, build(registry, augment=True, repeats=2, max_shift=0.2)[5]["images"])  # same seed, same pixels
    assert not torch.equal(first, plain[5]["images"])
    assert not torch.equal(first, augmented[5 + len(plain)]["images"])  # the second copy draws its own
    assert augmented[5 + len(plain)]["ids"] == plain[5]["ids"]
    assert 0.0 <= float(first.min()) and float(first.max()) <= 1.0
    test = build(registry, split="test", augment=True, repeats=3)
    assert torch.equal(test[0]["images"], build(registry, split="test")[0]["images"]) and len(test) == 450


def test_class_count_mismatch_names_both_fields(registry) -> None:
    with pytest.raises(DataError, match=r"^stages.finetune.data: the digits data has 10 classes but the student's "
                                        r"classifier has 4 outputs; set student.model_kwargs.num_classes: 10$"):
        build(registry, name="finetune", student=SimpleNamespace(num_classes=4))
    assert len(build(registry, student=SimpleNamespace(num_classes=10))) == 1347

"""scikit-learn's bundled handwritten digits (Alpaydin & Kaynak, UCI "Optical Recognition of
Handwritten Digits", 1998): 1,797 real 8x8 scans of 10 classes, no download, upsampled.

A fixed stratified train/test split by ``split_seed``; with ``val_fraction`` a validation split is carved,
stratified, from the train side (the test side never changes); optional light augmentation, seeded per sample.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import torch
from einops import repeat
from pydantic import Field
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import Dataset

from kdkit import BuildContext, Example, Factory, PluginConfig, hookimpl
from kdkit.errors import KdkitError
from kdkit_plugins.data._classes import check_class_count

#: Classes of the digits data (0-9).
NUM_CLASSES = 10


class DigitsConfig(PluginConfig):
    """Handwritten digits 0-9 (1,797 scans) upsampled to ``(3, S, S)`` in [0, 1]; a fixed stratified split."""

    kind: Literal["digits"] = "digits"
    split: Literal["train", "val", "test"] = Field(
        "train", description="Which side of the fixed split to read (val needs val_fraction > 0).")
    test_fraction: float = Field(0.25, gt=0.0, lt=1.0, description="Fraction of each class held out for the test split.")
    val_fraction: float = Field(
        0.0, ge=0.0, lt=1.0, description="Fraction of each class of the train side carved out as the val split "
        "(removed from train). Make every choice on val and read test once per reported configuration; "
        "0 keeps the whole train side for training.")
    split_seed: int = Field(0, description="Seed of the split (independent of the run's seed): keep it fixed to "
                            "compare runs on the same test set.")
    image_size: int = Field(32, ge=8, description="Height and width the 8x8 scans are upsampled to.")
    interpolation: Literal["bilinear", "nearest"] = Field("bilinear", description="Upsampling mode.")
    augment: bool = Field(False, description="Random shift and rotation of each sample (train split only; seeded "
                          "by seed and sample index, so a resumed run reads the same pixels).")
    max_shift: float = Field(0.1, ge=0.0, le=0.5, description="Largest shift, as a fraction of the image size.")
    max_rotation: float = Field(10.0, ge=0.0, le=45.0, description="Largest rotation in degrees.")
    repeats: int = Field(1, ge=1, description="Times each training image appears per epoch; with augment, each copy "
                         "has its own seeded augmentation.")
    seed: int = Field(0, description="Seed of the augmentation.")


def split_indices(labels: Tensor, test_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """``(N,)`` labels -> sorted train and test indices: ``round(test_fraction * n_c)`` of each class to test."""
    gen = torch.Generator().manual_seed(seed)
    train, test = [], []
    for label in labels.unique(sorted=True).tolist():
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        cut = round(test_fraction * len(members))
        test.append(members[:cut])
        train.append(members[cut:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def carve_indices(labels: Tensor, test_fraction: float, val_fraction: float, seed: int) -> dict[str, Tensor]:
    """``(N,)`` labels -> sorted ``train``, ``val`` and ``test`` indices.

    ``test`` is exactly :func:`split_indices`'s; ``val`` takes ``round(val_fraction * n_c)`` of each class of
    the train side (drawn with a generator of its own, so the test side does not depend on ``val_fraction``).
    """
    train, test = split_indices(labels, test_fraction, seed)
    if val_fraction == 0.0:
        return {"train": train, "val": train[:0], "test": test}
    keep, val = split_indices(labels[train], val_fraction, seed + 1)
    return {"train": train[keep], "val": train[val], "test": test}


def load_scans() -> tuple[Tensor, Tensor]:
    """All 1,797 scans ``(N, 8, 8)`` in [0, 1] (ink = 1) and their labels ``(N,)``."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return torch.as_tensor(bunch.images, dtype=torch.float32) / 16.0, torch.as_tensor(bunch.target, dtype=torch.long)


class Digits(Dataset):
    """Sample ``i`` -> ``{"images": (3, S, S) in [0, 1], "labels": () long, "ids": () long}``.

    ``ids`` is the scan's index in the full bundled set (stable across splits and seeds).

    Args:
        scans: ``(N, 8, 8)`` scans of this split, in [0, 1].
        labels: ``(N,)`` labels.
        ids: ``(N,)`` indices in the full set.
        image_size: Output height and width.
        interpolation: Upsampling mode.
        augment: Whether to shift and rotate.
        max_shift: Largest shift (fraction of the size).
        max_rotation: Largest rotation (degrees).
        repeats: Copies of each image per epoch.
        seed: Augmentation seed.
    """

    num_classes = NUM_CLASSES

    def __init__(self, scans: Tensor, labels: Tensor, ids: Tensor, image_size: int, interpolation: str,
                 augment: bool = False, max_shift: float = 0.1, max_rotation: float = 10.0, repeats: int = 1,
                 seed: int = 0) -> None:
        smooth = interpolation != "nearest"
        upsampled = F.interpolate(scans[:, None], size=(image_size, image_size), mode=interpolation,
                                  align_corners=False if smooth else None)
        self.images = upsampled.clamp(0.0, 1.0)  # (N, 1, S, S)
        self.labels, self.ids = labels, ids
        self.augment, self.max_shift, self.max_rotation = augment, max_shift, max_rotation
        self.repeats, self.seed = repeats, seed

    def __len__(self) -> int:
        return len(self.labels) * self.repeats

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} is out of range for a dataset of {len(self)}")
        item = index % len(self.labels)
        image = self.images[item]
        if self.augment:
            image = self.jitter(image, torch.Generator().manual_seed(self.seed * 1_000_003 + index))
        return {"images": repeat(image, "1 h w -> c h w", c=3), "labels": self.labels[item], "ids": self.ids[item]}

    def jitter(self, image: Tensor, gen: torch.Generator) -> Tensor:
        """``(1, S, S)`` -> the same image shifted and rotated by amounts drawn from ``gen`` (zeros outside)."""
        shift = (torch.rand(2, generator=gen) * 2 - 1) * self.max_shift * 2  # affine_grid spans [-1, 1]
        angle = math.radians(float(torch.rand((), generator=gen) * 2 - 1) * self.max_rotation)
        cos, sin = math.cos(angle), math.sin(angle)
        theta = torch.tensor([[cos, -sin, float(shift[0])], [sin, cos, float(shift[1])]])
        grid = F.affine_grid(theta[None], [1, *image.shape], align_corners=False)
        return F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0].clamp(0, 1)


def build(config: DigitsConfig, context: BuildContext) -> Digits:
    """One side of the fixed split (checked against the student's class count when the context has it)."""
    check_class_count(NUM_CLASSES, context, "the digits data")
    scans, labels = load_scans()
    if config.split == "val" and config.val_fraction == 0.0:
        raise KdkitError("digits data: split 'val' is empty with val_fraction 0; set val_fraction (e.g. 0.2), "
                         "the same value in every recipe that trains on the train split")
    chosen = carve_indices(labels, config.test_fraction, config.val_fraction, config.split_seed)[config.split]
    augment = config.augment and config.split == "train"
    repeats = config.repeats if config.split == "train" else 1
    return Digits(scans[chosen], labels[chosen], chosen, config.image_size, config.interpolation, augment,
                  config.max_shift, config.max_rotation, repeats, config.seed)


def example(tmp_dir: Path) -> Example:
    """The test split at 16x16."""
    del tmp_dir
    return Example(config={"kind": "digits", "split": "test", "image_size": 16})


@hookimpl
def kdkit_data() -> dict[str, Factory]:
    return {"digits": Factory(config=DigitsConfig, build=build, example=example, requires=("sklearn",), extra="digits")}

"""A deterministic synthetic image-classification dataset for demos, tests and benchmarks.

Class ``c`` lights colour channel ``c % 3`` inside quadrant ``(c // 3) % 4`` of a noisy image, so
a student can learn it and teachers see spatial structure. Sample ``i`` depends only on
``(seed, i)``: any process, worker or resumed run sees the same images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch.utils.data import Dataset

from kdkit import BuildContext, Example, Factory, PluginConfig, hookimpl
from kdkit_plugins.data._classes import check_class_count


class SyntheticConfig(PluginConfig):
    """Seeded synthetic images ``(3, H, W)`` in [0, 1] with a label encoded in their colour and layout."""

    kind: Literal["synthetic"] = "synthetic"
    size: int = Field(64, gt=0, description="Number of samples.")
    image_size: int = Field(32, ge=8, description="Height and width of the shared raw view.")
    num_classes: int = Field(4, ge=2, le=12, description="Number of classes (channel x quadrant: at most 12).")
    noise: float = Field(0.1, ge=0.0, le=0.5, description="Standard deviation of the Gaussian pixel noise.")
    seed: int = Field(0, description="Seed of the dataset (independent of the run's seed).")


class SyntheticImages(Dataset):
    """Sample ``i`` -> ``{"images": (3, H, W) in [0, 1], "labels": () long, "ids": () long}``.

    Args:
        size: Number of samples.
        image_size: Height and width.
        num_classes: Number of classes.
        noise: Pixel noise standard deviation.
        seed: Dataset seed.
    """

    def __init__(self, size: int, image_size: int, num_classes: int, noise: float, seed: int) -> None:
        self.size, self.image_size, self.num_classes = size, image_size, num_classes
        self.noise, self.seed = noise, seed
        gen = torch.Generator().manual_seed(seed)
        #: Balanced labels in a seeded order.
        self.labels = torch.randperm(size, generator=gen) % num_classes

    def __len__(self) -> int:
        return self.size

    def label(self, index: int) -> int:
        """The class of sample ``index`` (balanced, shuffled by the seed)."""
        return int(self.labels[index])

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.size:
            raise IndexError(f"sample {index} is out of range for a dataset of {self.size}")
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        label = self.label(index)
        side = self.image_size
        half = side // 2
        images = 0.35 + 0.1 * torch.rand(3, 1, 1, generator=gen) + self.noise * torch.randn(3, side, side, generator=gen)
        row, col = divmod((label // 3) % 4, 2)
        shift = torch.randint(0, max(1, half // 4), (2,), generator=gen).tolist()
        top, left = row * half + shift[0], col * half + shift[1]
        images[label % 3, top:top + half - half // 4, left:left + half - half // 4] += 0.5
        return {"images": images.clamp(0.0, 1.0), "labels": torch.tensor(label), "ids": torch.tensor(index)}


def build(config: SyntheticConfig, context: BuildContext) -> SyntheticImages:
    """The dataset (nothing is generated until a sample is read); its class count must fit the student's head."""
    check_class_count(config.num_classes, context, "the synthetic data (num_classes)")
    return SyntheticImages(config.size, config.image_size, config.num_classes, config.noise, config.seed)


def example(tmp_dir: Path) -> Example:
    """Eight 16x16 samples."""
    del tmp_dir
    return Example(config={"kind": "synthetic", "size": 8, "image_size": 16})


@hookimpl
def kdkit_data() -> dict[str, Factory]:
    return {"synthetic": Factory(config=SyntheticConfig, build=build, example=example)}

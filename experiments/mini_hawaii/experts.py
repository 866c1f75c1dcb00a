"""Expert teachers that really know something: each tiny teacher is trained on ONE aspect of the world.

A random-init model is first written in its library's real format, loaded by the teacher plugin,
trained briefly (its backbone + a throwaway linear head on the plugin's own output grid), then
written again in the same format, so the engine's runs load exactly the features that learnt the
aspect. Each expert's held-out accuracy is measured through a fresh load of the saved files.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import reduce
from torch import Tensor, nn
from torch.nn import functional as F

from experiments.mini_hawaii.world import ASPECTS, WorldFiles, read_scenes

#: The aspect(s) of the world each teacher of the demo recipes becomes an expert on.
EXPERTISE: dict[str, tuple[str, ...]] = {"clip": ("color",), "convnext": ("shape",), "eva02": ("count", "position")}

#: open_clip model config of the CLIP expert (a ViT on 4-pixel patches of the 32-pixel view).
OPEN_CLIP_CONFIG: dict[str, Any] = {
    "model_cfg": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 3, "width": 48, "head_width": 16, "patch_size": 4},
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
    },
    "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
}


def write_open_clip(directory: Path, block: Mapping[str, Any], visual: nn.Module | None = None) -> None:
    """An open_clip model directory (config + whole-CLIP safetensors); ``visual`` replaces the random tower."""
    import open_clip
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "open_clip_config.json").write_text(json.dumps(OPEN_CLIP_CONFIG, indent=2), encoding="utf-8")
    logging.disable(logging.WARNING)  # open_clip warns that the (deliberately) fresh model has no weights
    try:
        model = open_clip.create_model(f"local-dir:{directory}", load_weights=False, pretrained_text=False)
    finally:
        logging.disable(logging.NOTSET)
    if visual is not None:
        model.visual.load_state_dict(visual.state_dict())
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
              str(directory / "open_clip_model.safetensors"))


def write_timm(directory: Path, block: Mapping[str, Any], net: nn.Module | None = None) -> None:
    """timm weights (``model.safetensors``) of the block's ``model`` and ``model_args``."""
    from kdkit_plugins.teachers.tiny import write_tiny_timm

    write_tiny_timm(directory, block["model"], dict(block.get("model_args", {})), net=net)


#: How to write a teacher's files, by teacher plugin kind (the library's own on-disk format).
WRITERS: dict[str, Callable[..., None]] = {"open_clip": write_open_clip, "timm": write_timm}


@dataclass
class ExpertResult:
    """One expert after training: held-out (validation) accuracy per aspect, chance level, time, its pool."""

    name: str
    kind: str
    aspects: tuple[str, ...]
    accuracy: dict[str, float]
    chance: dict[str, float]
    seconds: float
    steps: int
    parameters: int
    pool: str = "train"
    images: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return dict(self.__dict__, aspects=list(self.aspects))


def load_split(files: WorldFiles, split: str) -> tuple[Tensor, dict[str, Tensor]]:
    """``(N, 3, S, S)`` images in [0, 1] and ``{aspect: (N,) class index}`` of one split."""
    from PIL import Image

    scenes = read_scenes(files, split)
    images = np.stack([np.asarray(Image.open(files.path("images") / s["image"]).convert("RGB")) for s in scenes])
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    labels = {a: torch.tensor([values.index(s[a]) for s in scenes]) for a, values in ASPECTS.items()}
    return tensor, labels


def checkpoint_dir(name: str) -> str:
    """Where teacher ``name``'s files live, relative to the data root (the demo recipes say the same)."""
    return f"teachers/{name}"


def build_teacher(name: str, block: Mapping[str, Any], data_root: Path) -> nn.Module:
    """The teacher plugin's build of ``block`` (its checkpoint resolved against ``data_root``)."""
    from kdkit.interfaces import BuildContext
    from kdkit.plugins import get_registry

    return get_registry().build("teacher", dict(block), BuildContext(name=name, data_root=data_root))


class Head(nn.Module):
    """``(B, H, W, C)`` grid -> ``(B, K)`` logits: mean and max over tokens, LayerNorm, Linear.

    The max keeps small objects visible (a mean over a mostly-background grid washes them out).
    """

    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(2 * channels)
        self.linear = nn.Linear(2 * channels, classes)

    def forward(self, grid: Tensor) -> Tensor:
        """``(B, H, W, C)`` -> ``(B, K)``."""
        pooled = torch.cat([reduce(grid, "b h w c -> b c", "mean"), reduce(grid, "b h w c -> b c", "max")], dim=-1)
        return self.linear(self.norm(pooled))


def _split_logits(logits: Tensor, aspects: tuple[str, ...]) -> dict[str, Tensor]:
    sizes = [len(ASPECTS[a]) for a in aspects]
    return dict(zip(aspects, torch.split(logits, sizes, dim=-1), strict=True))


def train_expert(name: str, block: Mapping[str, Any], data_root: Path, train: tuple[Tensor, dict[str, Tensor]],
                 test: tuple[Tensor, dict[str, Tensor]], steps: int, batch: int = 32, lr: float = 2e-3,
                 seed: int = 0) -> ExpertResult:
    """Train teacher ``name`` on its aspects, save it in its library's format, measure it held-out.

    Args:
        name: Teacher key in the recipes (its aspects come from :data:`EXPERTISE`).
        block: The teacher's recipe block (``kind``, ``checkpoint`` relative to ``data_root``...).
        data_root: The demo's data root.
        train: Training images and labels (:func:`load_split`).
        test: Held-out images and labels.
        steps: Optimizer steps.
        batch: Images per step.
        lr: AdamW learning rate.
        seed: Seed of the random init and the batch order.
    """
    started = time.perf_counter()
    aspects = EXPERTISE[name]
    writer = WRITERS[block["kind"]]
    directory = data_root / checkpoint_dir(name)
    torch.manual_seed(seed)
    writer(directory, block)  # random init, in the library's format
    teacher = build_teacher(name, block, data_root)
    backbone = teacher.model.requires_grad_(True)  # trained here, frozen again by every later load
    head = Head(teacher.out_spec.channels, sum(len(ASPECTS[a]) for a in aspects))
    params = [*backbone.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    images, labels = train
    order = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        pick = torch.randint(0, len(images), (batch,), generator=order)
        grid = teacher.encode(teacher.preprocess(images[pick])).grid
        logits = _split_logits(head(grid), aspects)
        loss = sum(F.cross_entropy(logits[a], labels[a][pick]) for a in aspects)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    writer(directory, block, backbone)
    reloaded = build_teacher(name, block, data_root)  # what every run will load
    accuracy = measure(reloaded, head, aspects, test)
    return ExpertResult(name=name, kind=block["kind"], aspects=aspects, accuracy=accuracy,
                        chance={a: chance_level(test[1][a]) for a in aspects}, seconds=time.perf_counter() - started,
                        steps=steps, parameters=sum(p.numel() for p in backbone.parameters()), images=len(images))


@torch.no_grad()
def measure(teacher: nn.Module, head: nn.Module, aspects: tuple[str, ...], data: tuple[Tensor, dict[str, Tensor]],
            batch: int = 256) -> dict[str, float]:
    """Accuracy per aspect of a (frozen, reloaded) teacher + its head on ``data``."""
    images, labels = data
    hits = {a: 0 for a in aspects}
    for start in range(0, len(images), batch):
        logits = _split_logits(head(teacher(images[start:start + batch]).grid), aspects)
        for a in aspects:
            hits[a] += int((logits[a].argmax(-1) == labels[a][start:start + batch]).sum())
    return {a: hits[a] / len(images) for a in aspects}


def chance_level(labels: Tensor) -> float:
    """Accuracy of always answering the most frequent class."""
    return float(torch.bincount(labels).max()) / len(labels)

"""What the 2-process tests share: the tiny recipe, its short settings, a free TCP port for torchrun."""

from __future__ import annotations

import socket
from pathlib import Path

RECIPE = Path(__file__).parents[2] / "recipes" / "tiny" / "timm_two_teachers.yaml"
#: Two steps per stage, global batch 4 of 2 per device, task + fine + coarse.
SETTINGS = [
    "stages.pretrain.max_steps=2", "stages.finetune.max_steps=2",
    "stages.pretrain.batch.global_size=4", "stages.pretrain.batch.per_device=2",
    "stages.finetune.batch.global_size=4", "stages.finetune.batch.per_device=2",
    "stages.pretrain.data.size=16", "stages.finetune.data.size=16",
    "stages.pretrain.losses=[task, fine, coarse]", "stages.finetune.losses=[task, fine, coarse]",
]


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

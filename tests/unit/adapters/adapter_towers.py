"""Tiny random-init vision towers of the three libraries adapters must inject into."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

TEACHERS = ("clip", "convnext", "eva")


class Tower(nn.Module):
    """A vision tower whose forward returns one tensor, whatever the library returns."""

    def __init__(self, model: nn.Module, output: Callable[[object], Tensor]) -> None:
        super().__init__()
        self.model = model
        self.output = output

    def forward(self, images: Tensor) -> Tensor:
        return self.output(self.model(images))


def hf_clip(tmp_path: Path) -> Tower:
    """transformers CLIPVisionModel (2 layers, width 16), saved and loaded in its own format."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                              image_size=16, patch_size=8)
    CLIPVisionModel(config).save_pretrained(tmp_path / "clip")
    model = CLIPVisionModel.from_pretrained(tmp_path / "clip").eval()
    return Tower(model, lambda out: out.last_hidden_state)


def timm_vit(tmp_path: Path) -> Tower:
    """timm VisionTransformer (2 blocks, width 16), unpooled tokens."""
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=2, mlp_ratio=2.0, num_classes=0)
    return Tower(model.eval(), lambda out: out)


def open_clip_vit(tmp_path: Path) -> Tower:
    """open_clip VisionTransformer (2 resblocks, width 16), pooled and projected output."""
    from open_clip.transformer import VisionTransformer

    model = VisionTransformer(image_size=16, patch_size=8, width=16, layers=2, heads=2, mlp_ratio=2.0, output_dim=8)
    return Tower(model.eval(), lambda out: out)


BUILDERS = {"hf_clip": hf_clip, "timm": timm_vit, "open_clip": open_clip_vit}



def randomize_adapters(handle: object, seed: int = 0, std: float = 0.1) -> None:
    """Give every adapter and router parameter random values (zero-init B hides bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for params in handle.parameter_groups().values():
            for param in params.values():
                param.copy_(std * torch.randn(param.shape, generator=gen) + (0.3 * std if param.ndim == 1 else 0.0))

"""transformers CLIP vision towers as frozen teachers (a ``CLIPVisionModel`` or a full ``CLIPModel`` folder).

CLIP: Radford et al., ICML 2021. LLaVA-1.5 and HAWAII (arXiv 2506.19072) feed the projector from
layer -2 of CLIP ViT-L/14-336.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from einops import rearrange
from pydantic import Field
from torch import Tensor, nn

from kdkit import BuildContext, Example, Factory, GridSpec, TeacherOutput, hookimpl
from kdkit.errors import KdkitError
from kdkit.teacher import DTYPES, FrozenTeacher, Preprocess, TeacherConfig, pick_layer, size_pair
from kdkit.weights import resolve_checkpoint
from kdkit_plugins.teachers.hf_loading import load_vision_model, processor_settings


class HfClipConfig(TeacherConfig):
    """A transformers CLIP vision tower from a local ``save_pretrained`` directory."""

    kind: Literal["hf_clip"] = "hf_clip"
    checkpoint: str = Field("", description="Local directory written by save_pretrained: a CLIPVisionModel or a "
                            "full CLIPModel; relative paths are resolved against the data root.")
    layer: int = Field(-2, description="Encoder layer whose output is taken (LLaVA uses -2); negative counts "
                       "from the last.")


class HfClipTeacher(FrozenTeacher):
    """``(B, 3, H, W)`` -> CLIP encoder layer as a ``(B, H/p, W/p, C)`` grid and its CLS token."""

    def __init__(self, model: nn.Module, layer: int, patch: int, preprocess: Preprocess, name: str,
                 dtype: Any, native: int) -> None:
        height, width = preprocess.size
        if height % patch or width % patch:
            raise KdkitError(f"teacher {name!r}: resolution {height}x{width} is not a multiple of the patch size "
                             f"{patch}; pick a multiple of {patch}")
        spec = GridSpec(height // patch, width // patch, model.config.hidden_size, prefix_tokens=1)
        super().__init__(model, preprocess, name=name, dtype=dtype, out_spec=spec)
        self.layer = layer
        self.interpolate = (height, width) != (native, native)

    def encode(self, pixels: Tensor) -> TeacherOutput:
        """``(B, 3, h, w)`` -> grid ``(B, H, W, C)`` and CLS ``(B, 1, C)``."""
        out = self.model(pixel_values=pixels, output_hidden_states=True, interpolate_pos_encoding=self.interpolate)
        tokens = out.hidden_states[1:][self.layer]  # hidden_states[0] is the embedding output
        prefix = self.out_spec.prefix_tokens
        grid = rearrange(tokens[:, prefix:], "b (h w) c -> b h w c", h=self.out_spec.height)
        return TeacherOutput(grid, tokens[:, :prefix])


def build(config: HfClipConfig, context: BuildContext) -> HfClipTeacher:
    """Load the tower from its directory (strictly), pick the layer, read mean/std from the processor config."""
    from transformers import CLIPImageProcessor, CLIPVisionModel

    directory = resolve_checkpoint(config.checkpoint, context)
    model = load_vision_model(CLIPVisionModel, directory, context.name)
    vision = model.config
    layer = pick_layer(config.layer, vision.num_hidden_layers, context.name, what="encoder layers")
    settings = processor_settings(directory, context.name)
    mean = config.mean or settings.get("image_mean", CLIPImageProcessor.image_mean)
    std = config.std or settings.get("image_std", CLIPImageProcessor.image_std)
    size = size_pair(config.resolution or vision.image_size)
    preprocess = Preprocess(size, mean, std, config.interpolation)
    return HfClipTeacher(model, layer, vision.patch_size, preprocess, context.name, DTYPES[config.dtype],
                         native=vision.image_size)


def example(tmp_dir: Path) -> Example:
    """A tiny CLIPVisionModel directory."""
    from kdkit_plugins.teachers.tiny import write_tiny_hf_clip

    return Example(config=write_tiny_hf_clip(tmp_dir / "hf_clip"), context=BuildContext(name="clip"))


@hookimpl
def kdkit_teachers() -> dict[str, Factory]:
    return {"hf_clip": Factory(config=HfClipConfig, build=build, example=example)}

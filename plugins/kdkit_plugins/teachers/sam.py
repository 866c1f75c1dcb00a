"""segment-anything image encoder as a frozen teacher, features taken channels-last.

SAM: Kirillov et al., ICCV 2023 (arXiv 2304.02643). HAWAII‡ (arXiv 2506.19072) adds it as a
fourth teacher. The neck returns ``(B, C, H, W)``; flattening it without moving channels last
would scramble space and channels, so every output goes through one named rearrange.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Literal

from einops import rearrange
from pydantic import Field
from torch import Tensor, nn

from kdkit import BuildContext, Example, Factory, TeacherOutput, hookimpl
from kdkit.errors import KdkitError
from kdkit.teacher import DTYPES, FrozenTeacher, Preprocess, TeacherConfig, pick_layer, size_pair
from kdkit.weights import load_into, read_state_dict, resolve_checkpoint, strip_prefix
from kdkit_plugins.teachers.catalog import require_known

#: Scalar types an ``ImageEncoderViT`` keyword may take in a recipe.
EncoderArg = int | float | bool | list[int]


class SamConfig(TeacherConfig):
    """The image encoder of a segment-anything checkpoint (the official ``.pth`` holds the whole SAM)."""

    kind: Literal["sam"] = "sam"
    checkpoint: str = Field("", description="SAM checkpoint file (the official sam_vit_*.pth, or safetensors); "
                            "only its image_encoder.* weights are used; relative paths are resolved against the "
                            "data root.")
    model: str = Field("vit_h", description="segment-anything registry name of the architecture "
                       "(vit_b, vit_l, vit_h); ignored when `encoder_args` is given.")
    encoder_args: dict[str, EncoderArg] | None = Field(None, description="ImageEncoderViT keyword arguments for "
                                                       "a custom size, instead of a registry `model`.")
    output: Literal["neck", "blocks"] = Field("neck", description="`neck`: the encoder's final (neck) features; "
                                              "`blocks`: the output of transformer block `layer`, before the neck.")
    layer: int = Field(-1, description="Transformer block whose output is taken when `output` is `blocks`; "
                       "negative counts from the last.")


class SamTeacher(FrozenTeacher):
    """``(B, 3, H, W)`` -> SAM encoder features as a channels-last ``(B, H/16, W/16, C)`` grid."""

    def __init__(self, encoder: nn.Module, output: str, layer: int, preprocess: Preprocess, name: str,
                 dtype: Any) -> None:
        super().__init__(encoder, preprocess, name=name, dtype=dtype)
        self.output = output
        self.layer = layer

    def encode(self, pixels: Tensor) -> TeacherOutput:
        """``(B, 3, h, w)`` -> grid ``(B, H, W, C)``; no prefix tokens."""
        if self.output == "neck":
            return TeacherOutput(rearrange(self.model(pixels), "b c h w -> b h w c"), None)
        grid = self.model.patch_embed(pixels)  # SAM's blocks work on channels-last (B, H, W, C) maps
        if self.model.pos_embed is not None:
            grid = grid + self.model.pos_embed
        for block in self.model.blocks[: self.layer + 1]:
            grid = block(grid)
        return TeacherOutput(grid, None)


def _encoder(config: SamConfig, teacher: str) -> tuple[nn.Module, str]:
    """A randomly initialised ``ImageEncoderViT`` of the configured size, and how it was specified."""
    from segment_anything import sam_model_registry
    from segment_anything.modeling import ImageEncoderViT

    if config.encoder_args is not None:
        return ImageEncoderViT(**config.encoder_args), f"encoder_args={config.encoder_args}"
    require_known(teacher, "segment-anything", config.model, sam_model_registry)
    return sam_model_registry[config.model]().image_encoder, f"model={config.model!r}"


def build(config: SamConfig, context: BuildContext) -> SamTeacher:
    """Build the encoder, load ``image_encoder.*`` safely, normalise with SAM's own pixel mean/std."""
    from segment_anything.modeling import Sam

    path = resolve_checkpoint(config.checkpoint, context)
    state = read_state_dict(path, context.name)
    encoder, spec = _encoder(config, context.name)
    if any(k.startswith("image_encoder.") for k in state):  # a whole SAM; else an encoder-only file
        state = strip_prefix(state, "image_encoder.")
    load_into(encoder, state, context.name, path, hint=spec)
    native = size_pair(encoder.img_size)
    size = size_pair(config.resolution or native)
    if size != native:
        raise KdkitError(f"teacher {context.name!r}: SAM's encoder takes {native[0]}x{native[1]} inputs only "
                         f"(fixed position embeddings), not {size[0]}x{size[1]}; drop `resolution`")
    layer = pick_layer(config.layer, len(encoder.blocks), context.name)
    defaults = inspect.signature(Sam.__init__).parameters  # SAM normalises 0-255 pixels
    mean = config.mean or [v / 255 for v in defaults["pixel_mean"].default]
    std = config.std or [v / 255 for v in defaults["pixel_std"].default]
    preprocess = Preprocess(size, mean, std, config.interpolation)
    teacher = SamTeacher(encoder, config.output, layer, preprocess, context.name, DTYPES[config.dtype])
    teacher.out_spec  # noqa: B018 -- traces once, at build time
    return teacher


def example(tmp_dir: Path) -> Example:
    """A tiny SAM checkpoint in the official layout."""
    from kdkit_plugins.teachers.tiny import write_tiny_sam

    return Example(config=write_tiny_sam(tmp_dir / "sam"), context=BuildContext(name="sam"))


@hookimpl
def kdkit_teachers() -> dict[str, Factory]:
    return {"sam": Factory(config=SamConfig, build=build, example=example)}

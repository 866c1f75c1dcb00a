"""transformers Pix2Struct vision encoder as a frozen teacher, its patch tokens mapped back to a 2-D grid.

Pix2Struct: Lee et al., ICML 2023 (arXiv 2210.03347). HAWAII† (arXiv 2506.19072) adds it as a
fourth teacher.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import torch
from einops import rearrange, repeat
from pydantic import Field
from torch import Tensor, nn

from kdkit import BuildContext, Example, Factory, GridSpec, TeacherOutput, hookimpl
from kdkit.errors import KdkitError
from kdkit.teacher import DTYPES, FrozenTeacher, Preprocess, TeacherConfig, pick_layer, size_pair
from kdkit.weights import resolve_checkpoint
from kdkit_plugins.teachers.hf_loading import load_vision_model, processor_settings


class Pix2StructConfig(TeacherConfig):
    """A transformers Pix2Struct vision encoder from a local ``save_pretrained`` directory."""

    kind: Literal["pix2struct"] = "pix2struct"
    checkpoint: str = Field("", description="Local directory written by save_pretrained: a Pix2StructVisionModel "
                            "or a full Pix2Struct image-to-text model; relative paths are resolved against the "
                            "data root.")
    layer: int = Field(-1, description="Encoder layer whose output is taken; negative counts from the last.")
    standardize: bool = Field(True, description="Standardise each image by its own mean and std, as Pix2Struct's "
                              "processor does (applied after `mean`/`std`).")


class Pix2StructTeacher(FrozenTeacher):
    """``(B, 3, H, W)`` -> Pix2Struct encoder layer as a ``(B, H/p, W/p, C)`` grid (rows x columns of patches).

    Pix2Struct takes variable-resolution patch sequences tagged with 1-based row and column ids;
    here the grid is fixed by ``resolution`` (pick its aspect to match the shared view), and the
    output tokens are put back in place through those same ids.
    """

    def __init__(self, model: nn.Module, layer: int, patch: int, standardize: bool, preprocess: Preprocess,
                 name: str, dtype: Any) -> None:
        height, width = preprocess.size
        rows, cols = height // patch, width // patch
        limit = model.config.seq_len - 1  # row/column embeddings are indexed by 1-based ids
        if height % patch or width % patch or max(rows, cols) > limit:
            raise KdkitError(f"teacher {name!r}: resolution {height}x{width} must be a multiple of the patch size "
                             f"{patch} with at most {limit} rows and columns of patches")
        super().__init__(model, preprocess, name=name, dtype=dtype,
                         out_spec=GridSpec(rows, cols, model.config.hidden_size))
        self.layer = layer
        self.patch = patch
        self.standardize = standardize

    def encode(self, pixels: Tensor) -> TeacherOutput:
        """``(B, 3, h, w)`` -> grid ``(B, h/p, w/p, C)``; no prefix tokens."""
        batch = pixels.shape[0]
        rows, cols = self.out_spec.height, self.out_spec.width
        if self.standardize:
            pixels = (pixels - pixels.mean((1, 2, 3), keepdim=True)) / pixels.std((1, 2, 3), keepdim=True).clamp(
                min=pixels[0].numel() ** -0.5)
        patches = rearrange(pixels, "b c (r ph) (q pw) -> b (r q) (ph pw c)", ph=self.patch, pw=self.patch)
        row_ids = repeat(torch.arange(rows, device=pixels.device), "r -> b (r q) 1", b=batch, q=cols) + 1
        col_ids = repeat(torch.arange(cols, device=pixels.device), "q -> b (r q) 1", b=batch, r=rows) + 1
        flattened = torch.cat([row_ids.to(pixels.dtype), col_ids.to(pixels.dtype), patches], dim=-1)
        mask = torch.ones(batch, rows * cols, dtype=pixels.dtype, device=pixels.device)
        out = self.model(flattened_patches=flattened, attention_mask=mask, output_hidden_states=True)
        tokens = out.hidden_states[1:][self.layer]  # hidden_states[0] is the embedding output
        slots = ((row_ids - 1) * cols + (col_ids - 1)).expand(-1, -1, tokens.shape[-1])
        grid = torch.zeros_like(tokens).scatter(1, slots, tokens)  # each token to its (row, column)
        return TeacherOutput(rearrange(grid, "b (h w) c -> b h w c", h=rows), None)


def build(config: Pix2StructConfig, context: BuildContext) -> Pix2StructTeacher:
    """Load the encoder strictly; the default size is the largest square grid within the processor's max_patches."""
    from transformers import Pix2StructImageProcessor, Pix2StructVisionModel

    directory = resolve_checkpoint(config.checkpoint, context)
    model = load_vision_model(Pix2StructVisionModel, directory, context.name)
    vision = model.config
    layer = pick_layer(config.layer, vision.num_hidden_layers, context.name, what="encoder layers")
    patch = math.isqrt(vision.patch_embed_hidden_size // 3)
    max_patches = processor_settings(directory, context.name).get("max_patches", Pix2StructImageProcessor.max_patches)
    size = size_pair(config.resolution or math.isqrt(max_patches) * patch)
    preprocess = Preprocess(size, config.mean or (0.0, 0.0, 0.0), config.std or (1.0, 1.0, 1.0),
                            config.interpolation)
    return Pix2StructTeacher(model, layer, patch, config.standardize, preprocess, context.name, DTYPES[config.dtype])


def example(tmp_dir: Path) -> Example:
    """A tiny Pix2StructVisionModel directory with a non-square grid."""
    from kdkit_plugins.teachers.tiny import write_tiny_pix2struct

    return Example(config=write_tiny_pix2struct(tmp_dir / "pix2struct"), context=BuildContext(name="pix2struct"))


@hookimpl
def kdkit_teachers() -> dict[str, Factory]:
    return {"pix2struct": Factory(config=Pix2StructConfig, build=build, example=example)}

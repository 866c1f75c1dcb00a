"""open_clip vision towers (ViT or timm trunks such as ConvNeXt) as frozen teachers.

CLIP: Radford et al., ICML 2021; open_clip: Cherti et al., CVPR 2023. HAWAII (arXiv 2506.19072)
distils CLIP ViT-L/14-336 and ConvNeXt-XXL towers.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from einops import rearrange
from pydantic import Field
from torch import Tensor, nn

from kdkit import BuildContext, Example, Factory, TeacherOutput, hookimpl
from kdkit.errors import KdkitError
from kdkit.teacher import DTYPES, FrozenTeacher, Preprocess, TeacherConfig, size_pair
from kdkit.weights import checkpoint_error, find_checkpoint, load_into, read_state_dict, resolve_checkpoint, strip_prefix
from kdkit_plugins.teachers.catalog import require_known
from kdkit_plugins.teachers.intermediates import accepts, take_layer

#: The configuration file of an open_clip model directory (open_clip's `local-dir:` layout).
CONFIG_FILE = "open_clip_config.json"


class OpenClipConfig(TeacherConfig):
    """Vision tower of an open_clip model, loaded from a local checkpoint file or model directory."""

    kind: Literal["open_clip"] = "open_clip"
    checkpoint: str = Field("", description="open_clip weights file (.safetensors, .bin, .pt) used with `model`, or "
                            "a local model directory holding open_clip_config.json and its weights; relative "
                            "paths are resolved against the data root.")
    model: str | None = Field(None, description="Built-in open_clip model name (e.g. ViT-L-14-336, "
                              "convnext_xxlarge); not needed when `checkpoint` is a model directory.")
    layer: int = Field(-2, description="Tower layer whose output is taken (transformer block of a ViT, stage of a "
                       "ConvNeXt); negative counts from the last.")
    norm: bool = Field(False, description="Apply the tower's final norm to the taken layer.")


class OpenClipTeacher(FrozenTeacher):
    """``(B, 3, H, W)`` -> open_clip tower layer as a ``(B, H/p, W/p, C)`` grid (+ CLS for a ViT)."""

    def __init__(self, visual: nn.Module, layer: int, norm: bool, preprocess: Preprocess, name: str,
                 dtype: Any) -> None:
        super().__init__(visual, preprocess, name=name, dtype=dtype)
        self.layer = layer
        self.norm = norm
        # A ViT tower returns its CLS token beside the grid; a timm trunk only when it has prefix tokens.
        trunk = getattr(visual, "trunk", None)
        self.with_prefix = trunk is None or accepts(trunk.forward_intermediates, "return_prefix_tokens")

    def encode(self, pixels: Tensor) -> TeacherOutput:
        """``(B, 3, h, w)`` -> grid ``(B, H, W, C)`` and prefix ``(B, P, C)`` or None."""
        out = self.model.forward_intermediates(pixels, indices=[self.layer], stop_early=True, intermediates_only=True,
                                               normalize_intermediates=self.norm, output_fmt="NCHW",
                                               output_extra_tokens=self.with_prefix)
        grid = rearrange(out["image_intermediates"][0], "b c h w -> b h w c")
        prefix = out.get("image_intermediates_prefix", [None])[0]
        return TeacherOutput(grid, prefix)


def _create(config: OpenClipConfig, context: BuildContext) -> tuple[nn.Module, Path, str]:
    """The open_clip model (random init), the weights file and the model identifier."""
    import open_clip

    path = resolve_checkpoint(config.checkpoint, context)
    if path.is_dir():
        check_config_file(path, context.name)
        identifier, weights = f"local-dir:{path}", find_checkpoint(path, context.name)
    else:
        if not config.model:
            raise KdkitError(f"teacher {context.name!r}: `checkpoint` is a file, so `model` must name its "
                             "open_clip architecture (e.g. ViT-L-14-336)")
        require_known(context.name, "open_clip", config.model, open_clip.list_models())
        identifier, weights = config.model, path
    size = None if config.resolution is None else size_pair(config.resolution)
    logging.disable(logging.WARNING)  # open_clip warns "initialized randomly": the weights are loaded below
    try:
        model = open_clip.create_model(identifier, pretrained=None, load_weights=False, pretrained_image=False,
                                       pretrained_text=False, force_image_size=size)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:  # open_clip's own failures, translated
        raise checkpoint_error(context.name, path, f"open_clip cannot build {identifier!r}: {exc}") from None
    finally:
        logging.disable(logging.NOTSET)
    return model, weights, identifier


def check_config_file(directory: Path, teacher: str) -> None:
    """An open_clip model directory must hold a readable ``open_clip_config.json`` beside its weights."""
    import json

    config = directory / CONFIG_FILE
    if not config.is_file():
        raise checkpoint_error(teacher, directory, f"has no {CONFIG_FILE}; an open_clip model directory holds "
                               f"{CONFIG_FILE} + the weights (or point checkpoint at the weights file and set model)")
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise checkpoint_error(teacher, config, f"is not valid JSON ({exc})") from None


def build(config: OpenClipConfig, context: BuildContext) -> OpenClipTeacher:
    """Build the tower, load its weights safely and check layer and resolution."""
    from open_clip.model import resize_pos_embed

    model, weights, identifier = _create(config, context)
    state = read_state_dict(weights, context.name)
    if any(k.startswith("visual.") for k in state):  # a whole CLIP checkpoint; else a tower-only file
        resize_pos_embed(state, model)  # checkpoint grid -> the requested resolution
        state = strip_prefix(state, "visual.")
    visual = model.visual
    load_into(visual, state, context.name, weights, hint=f"model={identifier!r}")
    cfg = visual.preprocess_cfg
    size = size_pair(cfg["size"])
    preprocess = Preprocess(size, config.mean or cfg["mean"], config.std or cfg["std"], config.interpolation)
    dtype = DTYPES[config.dtype]
    layer = take_layer(visual.forward_intermediates, size, dtype, config.layer, context.name)
    teacher = OpenClipTeacher(visual, layer, config.norm, preprocess, context.name, dtype)
    teacher.out_spec  # noqa: B018 -- traces once: a size the tower cannot take fails at build time
    return teacher


def example(tmp_dir: Path) -> Example:
    """A tiny open_clip ViT model directory."""
    from kdkit_plugins.teachers.tiny import write_tiny_open_clip

    return Example(config=write_tiny_open_clip(tmp_dir / "open_clip"), context=BuildContext(name="clip"))


@hookimpl
def kdkit_teachers() -> dict[str, Factory]:
    return {"open_clip": Factory(config=OpenClipConfig, build=build, example=example)}

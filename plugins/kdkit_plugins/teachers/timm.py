"""Any timm model as a frozen teacher (EVA-02, ConvNeXt, ViT...), features from one layer.

EVA-02: Fang et al., 2023 (arXiv 2303.11331); ConvNeXt: Liu et al., CVPR 2022. HAWAII
(arXiv 2506.19072) distils EVA-02-L/14-448.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

from einops import rearrange
from pydantic import Field
from torch import Tensor, nn

from kdkit import BuildContext, Example, Factory, TeacherOutput, hookimpl
from kdkit.teacher import DTYPES, FrozenTeacher, Preprocess, TeacherConfig, size_pair
from kdkit.errors import KdkitError
from kdkit.weights import load_into, read_state_dict, resolve_checkpoint
from kdkit_plugins.teachers.catalog import require_known
from kdkit_plugins.teachers.intermediates import accepts, take_layer

#: Scalar types a timm constructor keyword may take in a recipe.
ModelArg = int | float | bool | str | list[int] | list[float]


class TimmConfig(TeacherConfig):
    """A timm model loaded from a local weights file, features from one layer."""

    kind: Literal["timm"] = "timm"
    model: str = Field("test_convnext", description="timm model name (e.g. eva02_large_patch14_448, "
                       "convnext_xxlarge); the pretrained tag after a dot is ignored, weights come from `checkpoint`.")
    checkpoint: str = Field("", description="Local weights file (.safetensors, .pth, .bin) in timm's or the "
                            "original release's key layout; relative paths are resolved against the data root.")
    model_args: dict[str, ModelArg] = Field(default_factory=dict, description="Extra keyword arguments for "
                                            "timm.create_model (e.g. img_size); the checkpoint must fit them.")
    layer: int = Field(-1, description="Layer whose output is taken, as timm's forward_intermediates counts "
                       "them (blocks of a ViT, stages of a ConvNeXt); negative counts from the last.")
    norm: bool = Field(False, description="Apply the model's final norm to the taken layer.")
    logits: bool = Field(False, description="Also return the classifier's logits (B, K) for logit distillation "
                         "(the `kl` loss); the model needs a head (model_args.num_classes > 0).")


class TimmTeacher(FrozenTeacher):
    """``(B, 3, H, W)`` -> a timm layer as a ``(B, H', W', C)`` grid (+ prefix tokens when the model has any)."""

    def __init__(self, model: nn.Module, layer: int, norm: bool, preprocess: Preprocess, name: str,
                 dtype: Any, logits: bool = False) -> None:
        super().__init__(model, preprocess, name=name, dtype=dtype)
        self.layer = layer
        self.norm = norm
        self.logits = logits
        self.with_prefix = accepts(model.forward_intermediates, "return_prefix_tokens") and bool(
            getattr(model, "num_prefix_tokens", 0))

    def encode(self, pixels: Tensor) -> TeacherOutput:
        """``(B, 3, h, w)`` -> grid ``(B, H, W, C)``, prefix ``(B, P, C)`` or None, logits ``(B, K)`` or None."""
        extra = {"return_prefix_tokens": True} if self.with_prefix else {}
        if self.logits:  # the whole network runs: the head needs the final features
            final, (taken,) = self.model.forward_intermediates(pixels, indices=[self.layer], norm=self.norm,
                                                               output_fmt="NCHW", **extra)
            logits = self.model.forward_head(final)
        else:
            (taken,) = self.model.forward_intermediates(pixels, indices=[self.layer], norm=self.norm, stop_early=True,
                                                        output_fmt="NCHW", intermediates_only=True, **extra)
            logits = None
        grid, prefix = taken if self.with_prefix else (taken, None)
        return TeacherOutput(rearrange(grid, "b c h w -> b h w c"), prefix, logits)


def _load(model: nn.Module, path: Path, config: TimmConfig, teacher: str) -> None:
    """Load a local weights file, converted by the model family's own ``checkpoint_filter_fn``."""
    state = read_state_dict(path, teacher)
    # timm's convention: each model module converts original releases (and resizes position
    # embeddings) with a function of this name.
    convert = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if convert is not None:
        try:
            state = convert(state, model)
        except (KeyError, RuntimeError, ValueError):
            pass  # not convertible: the strict load below reports the mismatching keys
    load_into(model, state, teacher, path, hint=f"model={config.model!r}, model_args={config.model_args}")


def build(config: TimmConfig, context: BuildContext) -> TimmTeacher:
    """Create the model without pretrained weights, load the local file safely, pick the layer."""
    import timm

    architecture = config.model.split(".")[0]
    require_known(context.name, "timm", architecture, timm.list_models())
    # eval from the start: tracing the layers in train mode would run batch-norm statistics on a batch of one
    try:
        model = timm.create_model(architecture, pretrained=False, **config.model_args).eval()
    except (TypeError, ValueError, RuntimeError, KeyError, AssertionError) as exc:  # timm's own failures, translated
        raise KdkitError(f"teacher {context.name!r}: timm cannot create {architecture!r} with model_args "
                         f"{config.model_args}: {exc}") from None
    if not hasattr(model, "forward_intermediates"):
        raise KdkitError(f"teacher {context.name!r}: timm model {architecture!r} has no forward_intermediates; "
                        "use the `module` teacher with a module path instead")
    _load(model, resolve_checkpoint(config.checkpoint, context), config, context.name)
    data = model.pretrained_cfg
    size = size_pair(config.resolution or config.model_args.get("img_size") or tuple(data["input_size"][1:]))
    if config.resolution is not None and hasattr(model, "set_input_size"):
        model.set_input_size(img_size=size)  # resamples position embeddings to the new grid
    preprocess = Preprocess(size, config.mean or data["mean"], config.std or data["std"], config.interpolation)
    dtype = DTYPES[config.dtype]
    layer = take_layer(model.forward_intermediates, size, dtype, config.layer, context.name)
    if config.logits and not getattr(model, "num_classes", 0):
        raise KdkitError(f"teachers.{context.name}.logits: timm model {architecture!r} was built without a classifier "
                         f"(num_classes 0); set teachers.{context.name}.model_args.num_classes to its head's size, or logits: false")
    teacher = TimmTeacher(model, layer, config.norm, preprocess, context.name, dtype, config.logits)
    teacher.out_spec  # noqa: B018 -- traces once: a size the model cannot take fails at build time
    return teacher


def example(tmp_dir: Path) -> Example:
    """A tiny EVA-02 (the HAWAII teacher family) saved as timm weights."""
    from kdkit_plugins.teachers.tiny import TINY_EVA02, write_tiny_timm

    return Example(config=write_tiny_timm(tmp_dir / "timm", *TINY_EVA02), context=BuildContext(name="eva02"))


@hookimpl
def kdkit_teachers() -> dict[str, Factory]:
    return {"timm": Factory(config=TimmConfig, build=build, example=example)}

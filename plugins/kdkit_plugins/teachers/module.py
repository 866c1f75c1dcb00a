"""Any ``nn.Module`` as a frozen teacher, features taken at a module path by a forward hook.

The teacher-agnostic escape hatch: recipes name a torchvision constructor (no code, no dotted
import paths); Python code may wrap any module with :class:`ModuleTeacher`. Hooks come from
torchdistill's ``ForwardHookManager`` (Matsubara, 2021, arXiv 2011.12913).
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any, Literal

import torch
from einops import rearrange
from pydantic import Field
from torch import Tensor, nn

from kdkit import BuildContext, Example, Factory, TeacherOutput, hookimpl
from kdkit.errors import KdkitError
from kdkit.teacher import DTYPES, FrozenTeacher, Preprocess, TeacherConfig, size_pair
from kdkit.weights import load_into, read_state_dict, resolve_checkpoint
from kdkit_plugins.teachers.catalog import require_known

Layout = Literal["bchw", "bhwc", "blc"]
#: Scalar types a constructor keyword may take in a recipe.
ModelArg = int | float | bool | str | list[int] | list[float]


class ModuleConfig(TeacherConfig):
    """A torchvision model, built by name and loaded from a local state dict, features at a module path."""

    kind: Literal["module"] = "module"
    model: str = Field("resnet50", description="torchvision model name, built with torchvision.models.get_model.")
    model_args: dict[str, ModelArg] = Field(default_factory=dict, description="Keyword arguments of the "
                                            "constructor (e.g. width_mult); the checkpoint must fit them.")
    checkpoint: str = Field("", description="Local state-dict file (.pth, .safetensors) of the model; relative "
                            "paths are resolved against the data root.")
    layer: str = Field("layer4", description="Dotted path of the module whose output is taken (as in "
                       "model.named_modules(), e.g. layer3 or features.6).")
    layout: Layout = Field("bchw", description="Layout of that output: bchw (convolutional maps), bhwc, or blc "
                           "(tokens, with `prefix_tokens` leading non-grid tokens).")
    prefix_tokens: int = Field(0, description="Leading non-grid tokens (CLS, registers) of a blc output.")


class ModuleTeacher(FrozenTeacher):
    """``(B, 3, H, W)`` -> output of the module at ``layer`` as a ``(B, H', W', C)`` grid.

    Args:
        model: Any module taking ``(B, 3, h, w)`` normalised images.
        layer: Dotted module path inside ``model``.
        preprocess: Resize + normalise for this model.
        layout: ``bchw``, ``bhwc`` or ``blc``.
        prefix_tokens: Leading non-grid tokens of a ``blc`` output.
        name: The teacher's name (for messages).
        dtype: Dtype of the weights and the forward pass.
    """

    def __init__(self, model: nn.Module, layer: str, preprocess: Preprocess, layout: Layout = "bchw",
                 prefix_tokens: int = 0, name: str = "", dtype: torch.dtype = torch.float32) -> None:
        from torchdistill.core.forward_hook import ForwardHookManager

        names = [n for n, _ in model.named_modules() if n]
        if layer not in names:
            close = difflib.get_close_matches(layer, names, n=5, cutoff=0.4)
            raise KdkitError(f"teacher {name!r}: no module {layer!r} in {type(model).__name__}"
                             + (f"; closest: {', '.join(close)}" if close else f"; it has {len(names)} modules"))
        super().__init__(model, preprocess, name=name, dtype=dtype)
        self.layer = layer
        self.layout = layout
        self.prefix_tokens = prefix_tokens
        self.hooks = ForwardHookManager("cpu")
        self.hooks.add_hook(self.model, layer, requires_input=False, requires_output=True)

    def encode(self, pixels: Tensor) -> TeacherOutput:
        """``(B, 3, h, w)`` -> grid ``(B, H, W, C)`` and prefix ``(B, P, C)`` or None."""
        self.hooks.change_target_device(pixels.device)
        self.model(pixels)
        taken = self.hooks.pop_io_dict()[self.layer]["output"]
        taken = taken[0] if isinstance(taken, (tuple, list)) else taken
        if self.layout == "bchw":
            return TeacherOutput(rearrange(taken, "b c h w -> b h w c"), None)
        if self.layout == "bhwc":
            return TeacherOutput(taken, None)
        prefix, tokens = taken[:, : self.prefix_tokens], taken[:, self.prefix_tokens :]
        height, width = self.preprocess.size
        rows = round(math.sqrt(tokens.shape[1] * height / width))  # the grid keeps the input's aspect
        if rows * (tokens.shape[1] // max(rows, 1)) != tokens.shape[1]:
            raise KdkitError(f"teacher {self.name!r}: {tokens.shape[1]} tokens after {self.prefix_tokens} prefix "
                             f"tokens do not form a grid with the aspect of {height}x{width}; check prefix_tokens")
        grid = rearrange(tokens, "b (h w) c -> b h w c", h=rows)
        return TeacherOutput(grid, prefix if self.prefix_tokens else None)


def _preprocess(config: ModuleConfig, teacher: str) -> Preprocess:
    """Size, mean and std from the recipe, else from the model's default torchvision weights."""
    import torchvision

    try:
        transforms = torchvision.models.get_model_weights(config.model).DEFAULT.transforms()
        mean, std, size = transforms.mean, transforms.std, transforms.crop_size[0]
    except (ValueError, AttributeError, KeyError):  # no published weights to read them from
        if config.mean is None or config.std is None or config.resolution is None:
            raise KdkitError(f"teacher {teacher!r}: torchvision has no default weights for {config.model!r} to "
                             "read its preprocessing from; set `resolution`, `mean` and `std`") from None
        mean, std, size = config.mean, config.std, config.resolution
    return Preprocess(size_pair(config.resolution or size), config.mean or mean, config.std or std,
                      config.interpolation)


def build(config: ModuleConfig, context: BuildContext) -> ModuleTeacher:
    """Build the torchvision model by name, load its local state dict safely, hook ``layer``."""
    import torchvision

    require_known(context.name, "torchvision", config.model, torchvision.models.list_models())
    path = resolve_checkpoint(config.checkpoint, context)
    try:
        model = torchvision.models.get_model(config.model, weights=None, **config.model_args)
    except (TypeError, ValueError, RuntimeError, KeyError, AssertionError) as exc:  # torchvision's own, translated
        raise KdkitError(f"teacher {context.name!r}: torchvision cannot build {config.model!r} with model_args "
                         f"{config.model_args}: {exc}") from None
    load_into(model, read_state_dict(path, context.name), context.name, path, hint=f"model={config.model!r}")
    teacher = ModuleTeacher(model, config.layer, _preprocess(config, context.name), config.layout, config.prefix_tokens, context.name,
                            DTYPES[config.dtype])
    teacher.out_spec  # noqa: B018 -- traces once: a wrong layout or size fails at build time
    return teacher


def example(tmp_dir: Path) -> Example:
    """A tiny torchvision MobileNetV3, features of ``features.3``."""
    from kdkit_plugins.teachers.tiny import write_tiny_module

    return Example(config=write_tiny_module(tmp_dir / "module"), context=BuildContext(name="cnn"))


@hookimpl
def kdkit_teachers() -> dict[str, Factory]:
    return {"module": Factory(config=ModuleConfig, build=build, example=example)}

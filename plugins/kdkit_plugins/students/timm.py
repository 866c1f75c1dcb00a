"""Any timm classifier as the student (timm: Wightman, 2019): a ViT, a ResNet, a ConvNeXt...

Its distilled features are one layer of timm's ``forward_intermediates`` (a block's patch tokens,
or a stage's feature map flattened to tokens); its task loss is cross-entropy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

import torch
from einops import rearrange
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from kdkit import BuildContext, Example, Factory, GridSpec, PluginConfig, hookimpl
from kdkit.errors import CheckpointError, KdkitError
from kdkit.interfaces import StudentOutput
from kdkit_plugins.students._timm_model import create, export_weights, input_size, layer_shapes

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TimmStudentConfig(PluginConfig):
    """Any timm classifier (``model`` + ``model_kwargs``), optionally from local weights."""

    kind: Literal["timm"] = "timm"
    model: str = Field("vit_tiny_patch16_224", description="timm model name: any classifier with "
                       "forward_intermediates (a ViT, ResNet, ConvNeXt, EVA...).")
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments of timm.create_model (img_size, patch_size, embed_dim, depth, num_heads, "
        "num_classes...): tiny configurations for tests, or overrides of the named model.",
    )
    checkpoint: str | None = Field(
        None, description="Local weights (safetensors or a plain PyTorch state dict, e.g. written by `kdkit export`); "
        "relative paths resolve against runtime.data_root. Null: random initialisation from the seed.")
    feature_layer: int = Field(-1, description="Layer whose output is the distilled features, as timm's "
                               "forward_intermediates counts them (blocks of a ViT, stages of a CNN); negative counts "
                               "from the last.")
    image_size: int | None = Field(None, gt=0, description="Input size the shared view is resized to (default: "
                                   "model_kwargs.img_size, else the model's own input size).")
    mean: tuple[float, float, float] | None = Field(None, description="Normalisation mean on [0, 1] pixels (default: the model's own).")
    std: tuple[float, float, float] | None = Field(None, description="Normalisation std on [0, 1] pixels (default: the model's own).")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="Label smoothing of the cross-entropy task loss.")


class TimmStudent:
    """A timm classifier: ``(B, 3, H, W)`` raw view in [0, 1] -> tokens ``(B, m, D)`` + logits.

    Args:
        model: A timm model with ``forward_intermediates`` and ``forward_head``.
        feature_layer: Non-negative index of the intermediate that holds the features.
        size: Input ``(height, width)``.
        feature_spec: Grid of the features at ``size``.
        mean: Normalisation mean.
        std: Normalisation std.
        label_smoothing: Label smoothing of the task loss.
        fields: The recipe fields this student was built from (what :meth:`export` writes back).
    """

    text_dim: int | None = None

    def __init__(self, model: nn.Module, feature_layer: int, size: tuple[int, int], feature_spec: GridSpec,
                 mean: tuple[float, ...], std: tuple[float, ...], label_smoothing: float = 0.0,
                 fields: dict[str, Any] | None = None) -> None:
        self.model = model
        self.adapter_target = model
        self.feature_layer = feature_layer
        self.size = size
        self.feature_spec = feature_spec
        self.mean, self.std = mean, std
        self.label_smoothing = label_smoothing
        self.fields = dict(fields or {})
        self._labels_checked = False

    @property
    def num_classes(self) -> int:
        """Outputs of the classifier head (0 when the model has none)."""
        return int(getattr(self.model, "num_classes", 0))

    def pixels(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> ``(B, 3, h, w)`` normalised at the model's input size."""
        if tuple(images.shape[-2:]) != self.size:
            images = F.interpolate(images, size=self.size, mode="bilinear", antialias=True, align_corners=False)
        mean = images.new_tensor(self.mean).view(3, 1, 1)
        std = images.new_tensor(self.std).view(3, 1, 1)
        return (images - mean) / std

    def forward_both(self, images: Tensor, head: bool) -> tuple[Tensor, Tensor | None]:
        """``(B, 3, H, W)`` -> features ``(B, h*w, C)`` and logits ``(B, classes)`` (None unless ``head``)."""
        # NCHW is the one output format every timm family offers: a ViT's tokens come back as a
        # grid without prefix tokens, a CNN's stage as its feature map.
        final, (grid,) = self.model.forward_intermediates(
            self.pixels(images), indices=[self.feature_layer], output_fmt="NCHW", stop_early=not head)
        features = rearrange(grid, "b c h w -> b (h w) c")
        return features, (self.model.forward_head(final) if head else None)

    def encode(self, images: Tensor) -> Tensor:
        """Raw shared view ``(B, 3, H, W)`` in [0, 1] -> feature tokens ``(B, m, D)`` of the feature layer."""
        return self.forward_both(images, head=False)[0]

    def __call__(self, batch: Mapping[str, Any]) -> StudentOutput:
        """Batch with ``images`` ``(B, 3, H, W)`` (and ``labels`` ``(B,)``) -> features, logits, CE loss."""
        features, logits = self.forward_both(batch["images"], head=True)
        labels = batch.get("labels")
        loss = None
        if labels is not None:
            self.check_labels(labels, logits)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        return StudentOutput(features=features, task_loss=loss, logits=logits)

    def check_labels(self, labels: Tensor, logits: Tensor) -> None:
        """On the first labelled batch: every label must index a classifier output."""
        if self._labels_checked:
            return
        top = int(labels.max())
        if top >= logits.shape[-1] or int(labels.min()) < 0:
            raise KdkitError(f"student: the batch holds label {top} but the classifier has {logits.shape[-1]} "
                             f"outputs; set student.model_kwargs.num_classes to the data's class count")
        self._labels_checked = True

    def parameter_groups(self) -> dict[str, list[str]]:
        """``head`` (timm's classifier module(s) and the pooling norm) and ``vision_base`` (everything else)."""
        classifier = self.model.pretrained_cfg.get("classifier") or "head"
        names = classifier if isinstance(classifier, (list, tuple)) else [classifier]
        head_modules = {n.split(".")[0] for n in names} | {"fc_norm", "head_drop"}
        groups: dict[str, list[str]] = {"head": [], "vision_base": []}
        for name, _ in self.model.named_parameters():
            groups["head" if name.split(".")[0] in head_modules else "vision_base"].append(name)
        return groups

    def shard_units(self) -> list[nn.Module]:
        """Modules FSDP2 shards and checkpointing recomputes one by one: timm's feature layers with weights."""
        units = [self.model.get_submodule(info["module"]) for info in self.model.feature_info]
        return [unit for unit in units if any(True for _ in unit.parameters())]

    def enable_gradient_checkpointing(self, context_fn: Callable[[], Any] | None = None) -> None:
        """Recompute each feature layer (ViT block, CNN stage) in the backward pass; ``context_fn`` replays routing."""
        for unit in self.shard_units():
            forward = unit.forward

            def run(*args: Any, _forward: Callable[..., Tensor] = forward, **kwargs: Any) -> Tensor:
                if not torch.is_grad_enabled():
                    return _forward(*args, **kwargs)
                extra = {"context_fn": context_fn} if context_fn is not None else {}
                return checkpoint(_forward, *args, use_reentrant=False, **extra, **kwargs)

            unit.forward = run  # an instance attribute: parameter names stay unchanged

    def export(self, directory: Path) -> dict[str, Any]:
        """Write ``model`` in timm's format (``model.safetensors`` + ``config.json``) into ``directory``.

        Returns:
            The student recipe fields that build exactly this model from ``directory``
            (``checkpoint`` relative to it).
        """
        checkpoint_name = export_weights(self.model, Path(directory))
        return {**self.fields, "kind": "timm", "checkpoint": checkpoint_name}


def _read_weights(path: Path) -> dict[str, Tensor]:
    """A flat state dict from safetensors or a plain PyTorch file (``weights_only``)."""
    if not path.is_file():
        raise CheckpointError(f"student checkpoint {str(path)!r} does not exist; check student.checkpoint "
                              "(relative paths resolve against runtime.data_root)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, or a pickle that needs code
        raise CheckpointError(f"student checkpoint {str(path)!r} is not readable ({exc}); re-save it as "
                              "safetensors or torch.save(model.state_dict())") from None
    return state.get("state_dict", state) if isinstance(state, dict) else state


def build(config: TimmStudentConfig, context: BuildContext, weights: bool = True) -> TimmStudent:
    """Create the timm model (random init, or ``checkpoint`` loaded strictly) and trace its feature grid.

    ``weights`` False builds the skeleton instead: the model on the meta device, ``checkpoint`` not read.
    """
    with (nullcontext() if weights else torch.device("meta")):
        model = create(config.model, config.model_kwargs)
    if config.checkpoint is not None and weights:
        path = context.resolve(config.checkpoint)
        result = model.load_state_dict(_read_weights(path), strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise CheckpointError(
                f"student checkpoint {str(path)!r} does not fit {config.model!r}: missing "
                f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}; check student.model_kwargs "
                "(num_classes, sizes) against the run that wrote it")
    size = input_size(model, config.image_size, config.model_kwargs)
    shapes = layer_shapes(model, size)
    depth = len(shapes)
    if not -depth <= config.feature_layer < depth:
        raise KdkitError(f"student.feature_layer {config.feature_layer} is out of range: {config.model!r} has {depth} "
                         f"layers in forward_intermediates (use an index in [{-depth}, {depth - 1}])")
    layer = config.feature_layer % depth
    channels, height, width = shapes[layer]
    data_config = getattr(model, "pretrained_cfg", {}) or {}
    mean = config.mean or tuple(data_config.get("mean", IMAGENET_MEAN))
    std = config.std or tuple(data_config.get("std", IMAGENET_STD))
    fields = config.model_dump(mode="json", exclude={"checkpoint"})
    return TimmStudent(model, layer, size, GridSpec(height, width, channels), mean, std, config.label_smoothing, fields)


def skeleton(config: TimmStudentConfig, context: BuildContext) -> TimmStudent:
    """:func:`build` on the meta device, ``checkpoint`` not read (``kdkit validate`` reads its parameter names)."""
    return build(config, context, weights=False)


#: A ViT small enough for tests: 32x32 input, 8x8 patches (a 4x4 grid), width 16, 2 blocks.
TINY_KWARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 16, "depth": 2, "num_heads": 2, "num_classes": 4}


def example(tmp_dir: Path) -> Example:
    """A tiny ViT whose weights are written to ``tmp_dir`` as safetensors and loaded back."""
    import timm
    from safetensors.torch import save_file

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY_KWARGS)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_dir / "student.safetensors"))
    config = {"kind": "timm", "model_kwargs": dict(TINY_KWARGS), "checkpoint": "student.safetensors"}
    return Example(config=config, context=BuildContext(name="student", data_root=tmp_dir))


@hookimpl
def kdkit_students() -> dict[str, Factory]:
    return {"timm": Factory(config=TimmStudentConfig, build=build, example=example, skeleton=skeleton)}

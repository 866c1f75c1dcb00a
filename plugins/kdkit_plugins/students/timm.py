"""A timm Vision Transformer classifier as the student (Dosovitskiy et al., ICLR 2021; timm).

Its distilled features are the patch tokens of one chosen block; its task loss is cross-entropy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from kdkit import BuildContext, Example, Factory, GridSpec, PluginConfig, hookimpl
from kdkit.errors import CheckpointError, KdkitError
from kdkit.interfaces import StudentOutput

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TimmStudentConfig(PluginConfig):
    """Any timm ViT classifier (``model`` + ``model_kwargs``), optionally from local weights."""

    kind: Literal["timm"] = "timm"
    model: str = Field("vit_tiny_patch16_224", description="timm model name (a Vision Transformer with `.blocks`).")
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments of timm.create_model (img_size, patch_size, embed_dim, depth, num_heads, "
        "num_classes...): tiny configurations for tests, or overrides of the named model.",
    )
    checkpoint: str | None = Field(
        None, description="Local weights (safetensors or a plain PyTorch state dict); relative paths resolve "
        "against runtime.data_root. Null: random initialisation from the seed.")
    feature_layer: int = Field(-1, description="Block whose patch tokens are the distilled features (negative counts from the last).")
    mean: tuple[float, float, float] | None = Field(None, description="Normalisation mean on [0, 1] pixels (default: the model's own).")
    std: tuple[float, float, float] | None = Field(None, description="Normalisation std on [0, 1] pixels (default: the model's own).")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="Label smoothing of the cross-entropy task loss.")


class TimmStudent:
    """A timm ViT: ``(B, 3, H, W)`` raw view in [0, 1] -> patch tokens ``(B, m, D)`` + logits.

    Args:
        model: A timm Vision Transformer (has ``blocks``, ``patch_embed``, ``forward_intermediates``).
        feature_layer: Non-negative index of the block whose patch tokens are the features.
        mean: Normalisation mean.
        std: Normalisation std.
        label_smoothing: Label smoothing of the task loss.
    """

    text_dim: int | None = None

    def __init__(self, model: nn.Module, feature_layer: int, mean: tuple[float, ...], std: tuple[float, ...],
                 label_smoothing: float = 0.0) -> None:
        self.model = model
        self.adapter_target = model
        self.feature_layer = feature_layer
        self.mean, self.std = mean, std
        self.label_smoothing = label_smoothing
        self.size = tuple(model.patch_embed.img_size)
        height, width = model.patch_embed.grid_size
        self.feature_spec = GridSpec(int(height), int(width), int(model.embed_dim))

    def pixels(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> ``(B, 3, h, w)`` normalised at the model's input size."""
        if tuple(images.shape[-2:]) != self.size:
            images = F.interpolate(images, size=self.size, mode="bilinear", antialias=True, align_corners=False)
        mean = images.new_tensor(self.mean).view(3, 1, 1)
        std = images.new_tensor(self.std).view(3, 1, 1)
        return (images - mean) / std

    def forward_both(self, images: Tensor, head: bool) -> tuple[Tensor, Tensor | None]:
        """``(B, 3, H, W)`` -> features ``(B, m, D)`` and logits ``(B, classes)`` (None unless ``head``)."""
        final, (features,) = self.model.forward_intermediates(
            self.pixels(images), indices=[self.feature_layer], output_fmt="NLC", stop_early=not head)
        return features, (self.model.forward_head(final) if head else None)

    def encode(self, images: Tensor) -> Tensor:
        """Raw shared view ``(B, 3, H, W)`` in [0, 1] -> patch tokens ``(B, m, D)`` of the feature block."""
        return self.forward_both(images, head=False)[0]

    def __call__(self, batch: Mapping[str, Any]) -> StudentOutput:
        """Batch with ``images`` ``(B, 3, H, W)`` (and ``labels`` ``(B,)``) -> features, logits, CE loss."""
        features, logits = self.forward_both(batch["images"], head=True)
        labels = batch.get("labels")
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        return StudentOutput(features=features, task_loss=loss, logits=logits)

    def parameter_groups(self) -> dict[str, list[str]]:
        """``head`` (classifier and its norm) and ``vision_base`` (everything else)."""
        head_modules = [n for n, _ in self.model.named_children() if n in ("head", "fc_norm", "head_drop")]
        groups: dict[str, list[str]] = {"head": [], "vision_base": []}
        for name, _ in self.model.named_parameters():
            groups["head" if name.split(".")[0] in head_modules else "vision_base"].append(name)
        return groups

    def shard_units(self) -> list[nn.Module]:
        """Modules FSDP2 shards one by one (the transformer blocks)."""
        return list(self.model.blocks)

    def enable_gradient_checkpointing(self, context_fn: Callable[[], Any] | None = None) -> None:
        """Recompute each block in the backward pass; ``context_fn`` replays adapter routing."""
        for block in self.model.blocks:
            forward = block.forward

            def run(*args: Any, _forward: Callable[..., Tensor] = forward, **kwargs: Any) -> Tensor:
                if not torch.is_grad_enabled():
                    return _forward(*args, **kwargs)
                extra = {"context_fn": context_fn} if context_fn is not None else {}
                return checkpoint(_forward, *args, use_reentrant=False, **extra, **kwargs)

            block.forward = run  # an instance attribute: parameter names stay unchanged


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


def build(config: TimmStudentConfig, context: BuildContext) -> TimmStudent:
    """Create the timm model (random init, or ``checkpoint`` loaded strictly)."""
    import timm

    try:
        model = timm.create_model(config.model, pretrained=False, **config.model_kwargs)
    except RuntimeError as exc:
        raise KdkitError(f"student: timm cannot create {config.model!r}: {exc}") from None
    if not hasattr(model, "blocks") or not hasattr(model, "forward_intermediates"):
        raise KdkitError(f"student: timm model {config.model!r} is not a Vision Transformer with `.blocks`")
    if config.checkpoint is not None:
        path = context.resolve(config.checkpoint)
        result = model.load_state_dict(_read_weights(path), strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise CheckpointError(
                f"student checkpoint {str(path)!r} does not fit {config.model!r}: missing "
                f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")
    depth = len(model.blocks)
    if not -depth <= config.feature_layer < depth:
        raise KdkitError(f"student: feature_layer {config.feature_layer} is out of range for {depth} blocks "
                         f"(use an index in [{-depth}, {depth - 1}])")
    data_config = getattr(model, "pretrained_cfg", {}) or {}
    mean = config.mean or tuple(data_config.get("mean", IMAGENET_MEAN))
    std = config.std or tuple(data_config.get("std", IMAGENET_STD))
    return TimmStudent(model, config.feature_layer % depth, mean, std, config.label_smoothing)


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
    return {"timm": Factory(config=TimmStudentConfig, build=build, example=example)}

"""Tiny random-init teachers written in each library's real on-disk format (tests, demos, examples).

Each ``write_tiny_*`` function saves a model of a few thousand parameters into a directory exactly
as its library would (open_clip model directory, timm weights, ``save_pretrained``, the official
SAM ``.pth`` layout, a torchvision state dict) and returns the recipe fields that load it back.
Pass an in-memory model to save that one (tests compare the loaded teacher with it); by default a
fresh random one is made.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = [
    "TINY_CONVNEXT",
    "TINY_EVA02",
    "TINY_HF_CLIP",
    "TINY_OPEN_CLIP_VIT",
    "TINY_PIX2STRUCT",
    "TINY_SAM",
    "tiny_hf_clip_model",
    "tiny_pix2struct_model",
    "write_tiny_hf_clip",
    "write_tiny_module",
    "write_tiny_open_clip",
    "write_tiny_pix2struct",
    "write_tiny_sam",
    "write_tiny_timm",
]

#: open_clip ``model_cfg`` of a tiny ViT CLIP (4x4 grid of 8-pixel patches).
TINY_OPEN_CLIP_VIT: dict[str, Any] = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}
#: open_clip ``model_cfg`` of a tiny timm-ConvNeXt CLIP.
TINY_OPEN_CLIP_CONVNEXT: dict[str, Any] = {
    "embed_dim": 16,
    "vision_cfg": {"timm_model_name": "test_convnext", "timm_model_pretrained": False, "timm_pool": "",
                   "timm_proj": "linear", "image_size": 64},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}
#: timm model name and kwargs of a tiny EVA-02 (RoPE ViT, 4x4 grid of 14-pixel patches).
TINY_EVA02: tuple[str, dict[str, Any]] = ("eva02_tiny_patch14_224", {"embed_dim": 32, "depth": 2, "num_heads": 2,
                                                                      "img_size": 56})
#: timm's own test-sized ConvNeXt.
TINY_CONVNEXT: tuple[str, dict[str, Any]] = ("test_convnext", {})
#: transformers ``CLIPVisionConfig`` fields of a tiny CLIP tower.
TINY_HF_CLIP: dict[str, Any] = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
                                "num_attention_heads": 2, "image_size": 32, "patch_size": 8}
#: transformers ``Pix2StructVisionConfig`` fields of a tiny Pix2Struct encoder (8-pixel patches).
TINY_PIX2STRUCT: dict[str, Any] = {"hidden_size": 32, "d_ff": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                                   "d_kv": 16, "patch_embed_hidden_size": 8 * 8 * 3, "seq_len": 64}
#: segment-anything ``ImageEncoderViT`` keyword arguments of a tiny SAM image encoder.
TINY_SAM: dict[str, Any] = {"img_size": 64, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
                            "out_chans": 16, "use_rel_pos": True, "window_size": 4, "global_attn_indexes": [1]}


def _save_safetensors(state: dict[str, Any], path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(path))


def write_tiny_open_clip(directory: Path, tower: str = "vit", model: Any = None) -> dict[str, Any]:
    """A tiny open_clip model directory (``open_clip_config.json`` + weights); ``tower``: vit or convnext.

    ``model`` (optional) is the in-memory CLIP model to save, e.g. one made by a first call's directory.
    """
    import open_clip

    model_cfg = TINY_OPEN_CLIP_VIT if tower == "vit" else TINY_OPEN_CLIP_CONVNEXT
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": [0.48, 0.46, 0.41], "std": [0.27, 0.26, 0.28]}}
    (directory / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    if model is None:
        model = open_clip.create_model(f"local-dir:{directory}", load_weights=False, pretrained_text=False)
    _save_safetensors(model.state_dict(), directory / "open_clip_model.safetensors")
    return {"kind": "open_clip", "checkpoint": str(directory)}


def write_tiny_timm(directory: Path, model: str = TINY_EVA02[0], model_args: dict[str, Any] | None = None,
                    net: Any = None) -> dict[str, Any]:
    """Tiny timm weights (``model.safetensors``) for ``model``, shrunk through timm's own kwargs.

    ``model_args`` default to :data:`TINY_EVA02`'s when ``model`` is left at its default.
    """
    import timm

    shrink = dict(TINY_EVA02[1] if model_args is None and model == TINY_EVA02[0] else model_args or {})
    net = net if net is not None else timm.create_model(model, pretrained=False, **shrink)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _save_safetensors(net.state_dict(), directory / "model.safetensors")
    return {"kind": "timm", "model": model, "model_args": shrink, "checkpoint": str(directory / "model.safetensors")}


def tiny_hf_clip_model(full: bool = False) -> Any:
    """A tiny random transformers ``CLIPVisionModel``, or a full ``CLIPModel``."""
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel

    if not full:
        return CLIPVisionModel(CLIPVisionConfig(**TINY_HF_CLIP))
    text = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "vocab_size": 64, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
    return CLIPModel(CLIPConfig(vision_config=TINY_HF_CLIP, text_config=text, projection_dim=16))


def write_tiny_hf_clip(directory: Path, full: bool = False, model: Any = None) -> dict[str, Any]:
    """A tiny transformers CLIP directory (``save_pretrained``): the vision tower, or a full ``CLIPModel``."""
    (model if model is not None else tiny_hf_clip_model(full)).save_pretrained(directory)
    return {"kind": "hf_clip", "checkpoint": str(directory)}


def tiny_pix2struct_model(full: bool = False) -> Any:
    """A tiny random ``Pix2StructVisionModel``, or a full ``Pix2StructForConditionalGeneration``."""
    from transformers import (Pix2StructConfig, Pix2StructForConditionalGeneration, Pix2StructVisionConfig,
                              Pix2StructVisionModel)

    if not full:
        return Pix2StructVisionModel(Pix2StructVisionConfig(**TINY_PIX2STRUCT))
    text = {"hidden_size": 16, "d_ff": 32, "num_layers": 1, "num_heads": 2, "d_kv": 8, "vocab_size": 64}
    return Pix2StructForConditionalGeneration(Pix2StructConfig(vision_config=TINY_PIX2STRUCT, text_config=text))


def write_tiny_pix2struct(directory: Path, full: bool = False, model: Any = None) -> dict[str, Any]:
    """A tiny transformers Pix2Struct directory: the vision encoder, or a full image-to-text model (4x6 grid)."""
    (model if model is not None else tiny_pix2struct_model(full)).save_pretrained(directory)
    return {"kind": "pix2struct", "checkpoint": str(directory), "resolution": [32, 48]}


def write_tiny_sam(directory: Path, encoder: Any = None) -> dict[str, Any]:
    """A tiny SAM checkpoint laid out like the official ``.pth`` (``image_encoder.*`` + the other parts)."""
    import torch
    from segment_anything.modeling import ImageEncoderViT

    encoder = encoder if encoder is not None else ImageEncoderViT(**TINY_SAM)
    state = {f"image_encoder.{k}": v for k, v in encoder.state_dict().items()}
    state["mask_decoder.iou_token.weight"] = torch.zeros(1, 16)  # the official file holds the whole model
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(state, directory / "sam_tiny.pth")
    return {"kind": "sam", "checkpoint": str(directory / "sam_tiny.pth"), "encoder_args": dict(TINY_SAM)}


def write_tiny_module(directory: Path, model: Any = None) -> dict[str, Any]:
    """A tiny torchvision MobileNetV3 state dict, loaded by the ``module`` teacher by its torchvision name."""
    import torch
    import torchvision

    model_args = {"width_mult": 0.25}
    if model is None:
        model = torchvision.models.get_model("mobilenet_v3_small", weights=None, **model_args)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), directory / "mobilenet.pth")
    return {"kind": "module", "model": "mobilenet_v3_small", "model_args": model_args,
            "checkpoint": str(directory / "mobilenet.pth"), "layer": "features.3", "resolution": 64}

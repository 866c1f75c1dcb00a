"""Each teacher, loaded from its on-disk checkpoint, equals the in-memory model it was saved from.

References are computed from the in-memory model through a different path than the plugin's
(forward hooks on the named layer, or the library's own processor), so a wrong layer, a wrong
token order or a wrong normalisation shows up as a mismatch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from einops import rearrange
from torch import Tensor, nn

from kdkit_plugins.teachers import tiny
from teacher_builds import build_teacher, images


def hooked(model: nn.Module, path: str, run: Callable[[], Any]) -> Tensor:
    """Output of the module at ``path`` (first element when it returns a tuple) during ``run()``."""
    seen: list[Tensor] = []
    handle = model.get_submodule(path).register_forward_hook(
        lambda _m, _i, out: seen.append(out[0] if isinstance(out, tuple) else out))
    try:
        with torch.no_grad():
            run()
    finally:
        handle.remove()
    return seen[0]


def normalise(x: Tensor, mean: Any, std: Any) -> Tensor:
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def test_open_clip_vit_layer_and_cls(registry, tmp_path) -> None:
    import open_clip

    first = tiny.write_tiny_open_clip(tmp_path / "a")
    model = open_clip.create_model(f"local-dir:{first['checkpoint']}").eval()
    teacher = build_teacher(registry, {**first, "layer": 1})
    x = images(2, 32, 32)
    tokens = hooked(model.visual, "transformer.resblocks.1", lambda: model.visual(normalise(x, *_oc_stats())))
    out = teacher(x)
    torch.testing.assert_close(out.grid, rearrange(tokens[:, 1:], "b (h w) c -> b h w c", h=4))
    torch.testing.assert_close(out.prefix, tokens[:, :1])


def _oc_stats() -> tuple[list[float], list[float]]:
    return [0.48, 0.46, 0.41], [0.27, 0.26, 0.28]


def test_open_clip_named_model_with_checkpoint_file(registry, tmp_path) -> None:
    """The `model` + file path: a whole-CLIP file for a registered open_clip architecture."""
    import json

    import open_clip

    directory = tmp_path / "cfg"
    directory.mkdir()
    (directory / "kdkit-tiny-vit.json").write_text(json.dumps(tiny.TINY_OPEN_CLIP_VIT))
    open_clip.add_model_config(directory / "kdkit-tiny-vit.json")
    model = open_clip.create_model("kdkit-tiny-vit").eval()
    torch.save(model.state_dict(), tmp_path / "clip.pt")
    teacher = build_teacher(registry, {"kind": "open_clip", "model": "kdkit-tiny-vit", "checkpoint": str(tmp_path / "clip.pt")})
    x = images(2, 32, 32)
    mean, std = model.visual.preprocess_cfg["mean"], model.visual.preprocess_cfg["std"]
    tokens = hooked(model.visual, "transformer.resblocks.1", lambda: model.visual(normalise(x, mean, std)))
    torch.testing.assert_close(teacher(x).grid, rearrange(tokens[:, 1:], "b (h w) c -> b h w c", h=4))


def test_open_clip_convnext_stage(registry, tmp_path) -> None:
    import open_clip

    first = tiny.write_tiny_open_clip(tmp_path / "a", "convnext")
    model = open_clip.create_model(f"local-dir:{first['checkpoint']}").eval()
    teacher = build_teacher(registry, {**first, "layer": -1})
    x = images(2, 64, 64)
    maps = hooked(model.visual, "trunk.stages.3", lambda: model.visual(normalise(x, *_oc_stats())))
    torch.testing.assert_close(teacher(x).grid, rearrange(maps, "b c h w -> b h w c"))


@pytest.mark.parametrize("full", [False, True], ids=["vision_model", "full_clip_model"])
def test_hf_clip_layer_minus_two(registry, tmp_path, full) -> None:
    model = tiny.tiny_hf_clip_model(full).eval()
    config = tiny.write_tiny_hf_clip(tmp_path / "m", model=model)
    vision = model if not full else model.vision_model
    teacher = build_teacher(registry, config)
    x = images(2, 32, 32)
    from transformers import CLIPImageProcessor

    layers = [n for n, _ in vision.named_modules() if n.endswith("encoder.layers.1")]
    tokens = hooked(vision, layers[0], lambda: vision(pixel_values=normalise(
        x, CLIPImageProcessor.image_mean, CLIPImageProcessor.image_std)))
    out = teacher(x)
    torch.testing.assert_close(out.grid, rearrange(tokens[:, 1:], "b (h w) c -> b h w c", h=4))
    torch.testing.assert_close(out.prefix, tokens[:, :1])


def test_timm_eva02_block(registry, tmp_path) -> None:
    import timm

    name, args = tiny.TINY_EVA02
    net = timm.create_model(name, pretrained=False, **args).eval()
    config = tiny.write_tiny_timm(tmp_path / "m", name, args, net=net)
    teacher = build_teacher(registry, {**config, "layer": 0})
    x = images(2, 56, 56)
    tokens = hooked(net, "blocks.0", lambda: net(normalise(x, net.pretrained_cfg["mean"], net.pretrained_cfg["std"])))
    out = teacher(x)
    torch.testing.assert_close(out.grid, rearrange(tokens[:, 1:], "b (h w) c -> b h w c", h=4))
    torch.testing.assert_close(out.prefix, tokens[:, :1])


def test_timm_convnext_stage(registry, tmp_path) -> None:
    import timm

    name, args = tiny.TINY_CONVNEXT
    net = timm.create_model(name, pretrained=False).eval()
    config = tiny.write_tiny_timm(tmp_path / "m", name, args, net=net)
    teacher = build_teacher(registry, {**config, "layer": 2, "resolution": 64})
    x = images(2, 64, 64)
    maps = hooked(net, "stages.2", lambda: net(normalise(x, net.pretrained_cfg["mean"], net.pretrained_cfg["std"])))
    torch.testing.assert_close(teacher(x).grid, rearrange(maps, "b c h w -> b h w c"))


@pytest.mark.parametrize("output", ["neck", "blocks"])
def test_sam_neck_and_blocks_channels_last(registry, tmp_path, output) -> None:
    from segment_anything.modeling import ImageEncoderViT

    encoder = ImageEncoderViT(**tiny.TINY_SAM).eval()
    config = tiny.write_tiny_sam(tmp_path / "m", encoder=encoder)
    teacher = build_teacher(registry, {**config, "output": output, "layer": 0})
    x = images(2, 64, 64)
    pixels = normalise(x * 255, [123.675, 116.28, 103.53], [58.395, 57.12, 57.375])  # SAM's own 0-255 statistics
    if output == "neck":
        with torch.no_grad():
            expected = rearrange(encoder(pixels), "b c h w -> b h w c")
    else:
        expected = hooked(encoder, "blocks.0", lambda: encoder(pixels))
    torch.testing.assert_close(teacher(x).grid, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("full", [False, True], ids=["vision_model", "image_to_text_model"])
def test_pix2struct_equals_its_processor(registry, tmp_path, full) -> None:
    """The processor's flattened patches (row/column ids, per-image standardisation) -> same grid."""
    from transformers import Pix2StructImageProcessor

    model = tiny.tiny_pix2struct_model(full).eval()
    config = tiny.write_tiny_pix2struct(tmp_path / "m", model=model)
    vision = model.encoder if full else model
    teacher = build_teacher(registry, config)  # 32x48 -> 4x6 patches of 8 pixels
    pixels = (images(2, 32, 48) * 255).round()
    processor = Pix2StructImageProcessor(patch_size={"height": 8, "width": 8}, max_patches=24)
    inputs = processor(images=[p.to(torch.uint8).permute(1, 2, 0).numpy() for p in pixels], return_tensors="pt")
    with torch.no_grad():
        hidden = vision(**inputs, output_hidden_states=True).hidden_states[-1]
    expected = rearrange(hidden, "b (h w) c -> b h w c", h=4)
    torch.testing.assert_close(teacher(pixels / 255).grid, expected, rtol=1e-4, atol=1e-4)


def test_module_teacher_hooked_layer(registry, tmp_path) -> None:
    import torchvision

    model = torchvision.models.get_model("mobilenet_v3_small", weights=None, width_mult=0.25).eval()
    config = tiny.write_tiny_module(tmp_path / "m", model=model)
    teacher = build_teacher(registry, config)
    x = images(2, 64, 64)
    tr = torchvision.models.get_model_weights("mobilenet_v3_small").DEFAULT.transforms()
    maps = hooked(model, "features.3", lambda: model(normalise(x, tr.mean, tr.std)))
    torch.testing.assert_close(teacher(x).grid, rearrange(maps, "b c h w -> b h w c"))


def test_module_teacher_from_python_any_module() -> None:
    """From Python, any nn.Module: here a ViT-like module whose hooked output is (B, 1 + h*w, C) tokens."""
    from kdkit.teacher import Preprocess
    from kdkit_plugins.teachers.module import ModuleTeacher

    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Conv2d(3, 8, 4, stride=4)
            self.cls = nn.Parameter(torch.randn(1, 1, 8))
            self.mix = nn.Identity()

        def forward(self, x: Tensor) -> Tensor:
            tokens = rearrange(self.embed(x), "b c h w -> b (h w) c")
            return self.mix(torch.cat([self.cls.expand(len(x), -1, -1), tokens], 1))

    net = Tokens()
    teacher = ModuleTeacher(net, "mix", Preprocess((16, 32), (0, 0, 0), (1, 1, 1)), layout="blc", prefix_tokens=1)
    x = images(2, 16, 32)
    out = teacher(x)
    assert teacher.out_spec.height == 4 and teacher.out_spec.width == 8
    torch.testing.assert_close(out.grid, rearrange(net.embed(x), "b c h w -> b h w c").detach())
    torch.testing.assert_close(out.prefix, net.cls.expand(2, -1, -1).detach())

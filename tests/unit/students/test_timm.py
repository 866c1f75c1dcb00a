"""The timm student on ViTs and CNNs: features are the model's own layer output, flattened row by row."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange

from kdkit import BuildContext
from kdkit.errors import KdkitError

TINY_VIT = {"model": "vit_tiny_patch16_224",
            "model_kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 16, "depth": 2, "num_heads": 2, "num_classes": 4}}
TINY_RESNET = {"model": "resnet18", "image_size": 32,
               "model_kwargs": {"channels": [8, 8, 16, 16], "stem_width": 8, "num_classes": 4}}
TINY_CONVNEXT = {"model": "convnext_atto", "image_size": 32,
                 "model_kwargs": {"dims": [8, 16, 16, 16], "depths": [1, 1, 1, 1], "num_classes": 4}}


def build(registry, fields: dict, **extra):
    return registry.build("student", {"kind": "timm", **fields, **extra}, BuildContext(name="student"))


def hooked(module: torch.nn.Module, run) -> torch.Tensor:
    """Output of ``module`` while ``run()`` executes."""
    seen = []
    handle = module.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        run()
    finally:
        handle.remove()
    return seen[-1]


@pytest.mark.parametrize("fields,layer,module,grid", [
    (TINY_RESNET, 2, "layer2", (4, 4)),       # forward_intermediates counts the stem: layer2 is index 2
    (TINY_RESNET, 1, "layer1", (8, 8)),
    (TINY_CONVNEXT, 0, "stages.0", (8, 8)),
    (TINY_CONVNEXT, -1, "stages.3", (1, 1)),
])
def test_cnn_features_are_the_stage_map_flattened_row_by_row(registry, fields, layer, module, grid) -> None:
    student = build(registry, fields, feature_layer=layer)
    student.model.eval()
    images = torch.rand(2, 3, 32, 32)
    features = student.encode(images)
    reference = hooked(student.model.get_submodule(module), lambda: student.model(student.pixels(images)))
    batch, channels, height, width = reference.shape
    expected = reference.permute(0, 2, 3, 1).reshape(batch, height * width, channels)  # row-major: h, then w
    assert (height, width) == grid
    assert (student.feature_spec.height, student.feature_spec.width, student.feature_spec.channels) == (height, width, channels)
    torch.testing.assert_close(features, expected)


def test_vit_features_are_the_block_tokens_without_prefix(registry) -> None:
    student = build(registry, TINY_VIT, feature_layer=0)
    student.model.eval()
    images = torch.rand(2, 3, 32, 32)
    tokens = hooked(student.model.blocks[0], lambda: student.model(student.pixels(images)))
    torch.testing.assert_close(student.encode(images), tokens[:, student.model.num_prefix_tokens:])
    assert student.feature_spec.tokens == 16 and student.feature_spec.channels == 16


@pytest.mark.parametrize("corner", ["top_left", "top_right", "bottom_left", "bottom_right"])
def test_cnn_token_order_keeps_space(registry, corner) -> None:
    """A bright blob in one corner changes only tokens of that corner's quadrant, the corner's own included."""
    student = build(registry, TINY_RESNET, feature_layer=1)  # an 8x8 grid
    student.model.eval()
    blank = torch.zeros(1, 3, 32, 32)
    blob = blank.clone()
    top, left = corner.startswith("top"), corner.endswith("left")
    blob[..., slice(0, 6) if top else slice(26, 32), slice(0, 6) if left else slice(26, 32)] = 1.0
    with torch.no_grad():
        change = (student.encode(blob) - student.encode(blank)).norm(dim=-1)[0]
    changed = rearrange(change > 1e-6, "(h w) -> h w", h=8)
    rows, cols = slice(0, 4) if top else slice(4, 8), slice(0, 4) if left else slice(4, 8)
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[rows, cols] = True
    assert changed[0 if top else 7, 0 if left else 7]
    assert not (changed & ~inside).any()


def test_logits_and_task_loss(registry) -> None:
    student = build(registry, TINY_CONVNEXT)
    student.model.eval()
    images, labels = torch.rand(3, 3, 32, 32), torch.tensor([0, 3, 1])
    out = student({"images": images, "labels": labels})
    torch.testing.assert_close(out.logits, student.model(student.pixels(images)))
    torch.testing.assert_close(out.task_loss, torch.nn.functional.cross_entropy(out.logits, labels))
    assert out.features.shape == (3, 1, 16)


def test_parameter_groups_follow_timms_classifier(registry) -> None:
    resnet = build(registry, TINY_RESNET).parameter_groups()
    assert sorted(resnet["head"]) == ["fc.bias", "fc.weight"]
    convnext = build(registry, TINY_CONVNEXT).parameter_groups()
    assert sorted(convnext["head"]) == ["head.fc.bias", "head.fc.weight", "head.norm.bias", "head.norm.weight"]
    vit = build(registry, TINY_VIT).parameter_groups()
    assert sorted(vit["head"]) == ["head.bias", "head.weight"]
    assert not set(vit["head"]) & set(vit["vision_base"])


def test_shard_units_are_the_feature_layers_with_weights(registry) -> None:
    student = build(registry, TINY_RESNET)
    assert student.shard_units() == [student.model.get_submodule(f"layer{i}") for i in range(1, 5)]


def test_gradient_checkpointing_keeps_gradients(registry) -> None:
    batch = {"images": torch.rand(2, 3, 32, 32), "labels": torch.tensor([1, 2])}
    grads = []
    for checkpointed in (False, True):
        torch.manual_seed(0)
        student = build(registry, TINY_CONVNEXT)
        if checkpointed:
            student.enable_gradient_checkpointing()
        student(batch).task_loss.backward()
        grads.append(student.model.stem[0].weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_label_beyond_the_classifier_names_the_field(registry) -> None:
    student = build(registry, TINY_VIT)
    with pytest.raises(KdkitError, match=r"^student: the batch holds label 7 but the classifier has 4 outputs; "
                                         r"set student.model_kwargs.num_classes to the data's class count$"):
        student({"images": torch.rand(2, 3, 32, 32), "labels": torch.tensor([1, 7])})


def test_feature_layer_out_of_range(registry) -> None:
    with pytest.raises(KdkitError, match=r"^student.feature_layer 5 is out of range: 'resnet18' has 5 layers in "
                                         r"forward_intermediates \(use an index in \[-5, 4\]\)$"):
        build(registry, TINY_RESNET, feature_layer=5)


def test_mola_pattern_matching_no_block_names_the_recipe_field(registry) -> None:
    student = build(registry, TINY_RESNET)
    context = BuildContext(name="mola", teacher_names=("a", "b"), model=student.adapter_target)
    with pytest.raises(KdkitError, match=r"^adapters.mola.blocks: no module of ResNet matches the mola block patterns "
                                         r"\['\(\.\*\\\\\.\)\?\(layers\|blocks\|resblocks\)\\\\\.\\\\d\+\\\\\.mlp'\] "
                                         r"\(re.fullmatch on full names\); candidates: conv1, bn1"):
        registry.build("adapter", {"kind": "mola", "rank": 2}, context)


def test_mola_finds_the_convnext_mlps(registry) -> None:
    """ConvNeXt blocks (with conv_mlp off) carry Linear MLPs: the default MoLA pattern injects there, an identity at init."""
    fields = {**TINY_CONVNEXT, "model_kwargs": {**TINY_CONVNEXT["model_kwargs"], "conv_mlp": False}}
    student = build(registry, fields)
    student.model.eval()
    images = torch.rand(2, 3, 32, 32)
    before = student.encode(images)
    handle = registry.build("adapter", {"kind": "mola", "rank": 2, "general_experts": 1, "router_hidden": 4},
                            BuildContext(name="mola", teacher_names=("a",), model=student.adapter_target))
    assert sorted(handle.modules) == [f"stages.{i}.blocks.0.mlp" for i in range(4)]
    torch.testing.assert_close(student.encode(images), before)


def test_a_model_without_forward_intermediates_is_refused(registry) -> None:
    with pytest.raises(KdkitError, match=r"timm cannot create 'no_such_model'"):
        build(registry, {"model": "no_such_model"})


def test_mola_on_conv_mlps_names_the_recipe_field(registry) -> None:
    student = build(registry, TINY_CONVNEXT)  # convnext_atto's MLPs are 1x1 convolutions
    with pytest.raises(KdkitError, match=r"^adapters.experts.fc1/fc2: fc1 stages.0.blocks.0.mlp.fc1 is a Conv2d, not an nn.Linear"):
        registry.build("adapter", {"kind": "mola", "rank": 2}, BuildContext(name="experts", teacher_names=("a",),
                                                                             model=student.adapter_target))

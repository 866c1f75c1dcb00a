"""LoRA: equal to peft's LoRA for the same weights, identity at init, merge, persistence, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from adapter_towers import randomize_adapters, timm_vit
from torch import nn

from kdkit.adapters import freeze
from kdkit.errors import CheckpointError, KdkitError
from kdkit.interfaces import BuildContext
from kdkit_plugins.adapters import lora
from kdkit_plugins.adapters.lora import LoraLinear


def inject(model: nn.Module, **options):
    return lora.build(lora.LoraConfig(**{"rank": 4, **options}), BuildContext(model=model))


def test_identity_at_init_and_off(tower, images) -> None:
    original = copy.deepcopy(tower)
    freeze(original)
    handle = inject(tower)
    assert len(handle.modules) == 4  # fc1 and fc2 of 2 blocks, in every library
    with torch.no_grad():
        assert torch.equal(tower(images), original(images))
        randomize_adapters(handle)
        with handle.routing("off"):
            assert torch.equal(tower(images), original(images))


@pytest.mark.parametrize("alpha", [None, 16.0])
def test_equals_peft_lora_for_the_same_weights(tmp_path, images, alpha) -> None:
    from peft import LoraConfig as PeftLoraConfig
    from peft import inject_adapter_in_model

    tower = timm_vit(tmp_path)
    reference = copy.deepcopy(tower)
    handle = inject(tower, alpha=alpha, dropout=0.1)
    randomize_adapters(handle)
    peft_config = PeftLoraConfig(r=4, lora_alpha=alpha or 4, lora_dropout=0.1, target_modules=lora.FFN_LINEARS)
    reference = inject_adapter_in_model(peft_config, reference)
    with torch.no_grad():
        for name, module in handle.modules.items():
            peft_layer = reference.get_submodule(name)
            peft_layer.lora_A["default"].weight.copy_(module.lora_A)
            peft_layer.lora_B["default"].weight.copy_(module.lora_B.t())
    tower.eval(), reference.eval()
    torch.testing.assert_close(tower(images), reference(images), rtol=1e-5, atol=1e-6)
    with handle.routing("off"):  # the adapters really change the output
        assert not torch.allclose(tower(images), reference(images), atol=1e-3)


def test_merge_unmerge(tmp_path, images) -> None:
    tower = timm_vit(tmp_path)
    original = copy.deepcopy(tower)
    handle = inject(tower)
    randomize_adapters(handle)
    assert handle.mergeable
    expected = tower(images)
    handle.merge()
    torch.testing.assert_close(tower(images), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(KdkitError, match="already merged"):
        handle.merge()
    handle.unmerge()
    torch.testing.assert_close(tower(images), expected, rtol=1e-5, atol=1e-5)
    for name, module in handle.modules.items():
        torch.testing.assert_close(module.base_layer.weight, original.get_submodule(name).weight)


def test_only_adapters_are_trainable(tower) -> None:
    handle = inject(tower)
    trainable = {id(p) for p in tower.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in handle.parameters("adapters")} and handle.parameters("routers") == []


def test_save_load_round_trip(tmp_path, images) -> None:
    tower = timm_vit(tmp_path)
    fresh = copy.deepcopy(tower)
    handle = inject(tower)
    randomize_adapters(handle)
    handle.save(tmp_path / "lora")
    other = inject(fresh)
    other.load(tmp_path / "lora")
    assert torch.equal(fresh(images), tower(images))
    with pytest.raises(CheckpointError, match=r"has shape \(4, 16\) but this adapter needs \(8, 16\)"):
        inject(timm_vit(tmp_path), rank=8).load(tmp_path / "lora")


def test_bad_targets_and_ranks_are_named(tmp_path) -> None:
    with pytest.raises(KdkitError, match=r"no module of Tower matches the lora target patterns \['mlp'\].*model.blocks.N.mlp"):
        inject(timm_vit(tmp_path), targets=["mlp"])
    with pytest.raises(KdkitError, match=r"lora target 'model.blocks.0.mlp' is a Mlp, not an nn.Linear.*model.blocks.N.mlp.fc1"):
        inject(timm_vit(tmp_path), targets=[r".*blocks\.\d+\.mlp"])
    with pytest.raises(KdkitError, match=r"rank 17 does not fit 'model.blocks.0.mlp.fc1' \(16 -> 32\); use a rank between 1 and 16"):
        inject(timm_vit(tmp_path), rank=17)
    with pytest.raises(KdkitError, match=r"lora target pattern '\(' is not a valid regular expression"):
        inject(timm_vit(tmp_path), targets=["("])
    with pytest.raises(KdkitError, match=r"unknown routing 'clip'; use one of: routed, off"):
        inject(timm_vit(tmp_path)).set_routing("clip")
    with pytest.raises(Exception, match="greater than 0"):
        lora.LoraConfig(rank=0)


def test_wrapper_keeps_the_frozen_original(tmp_path) -> None:
    tower = timm_vit(tmp_path)
    linear = tower.model.blocks[0].mlp.fc1
    inject(tower)
    wrapper = tower.model.blocks[0].mlp.fc1
    assert isinstance(wrapper, LoraLinear) and wrapper.base_layer is linear and not linear.weight.requires_grad

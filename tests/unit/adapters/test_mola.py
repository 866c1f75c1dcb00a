"""MoLA: exactness of every route and gate, router gradients, batching, persistence, bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from kdkit.adapters import freeze
from kdkit.errors import CheckpointError, KdkitError
from kdkit.interfaces import BuildContext, RouterOutput
from kdkit_plugins.adapters import mola
from kdkit_plugins.adapters._mola_layer import MolaBlock, MolaLinear

from adapter_towers import TEACHERS, randomize_adapters, timm_vit
from mola_reference import block_output, delta, token_weights


def inject(model: nn.Module, teachers=TEACHERS, **options):
    config = mola.MolaConfig(rank=4, router_hidden=8, **options)
    return mola.build(config, BuildContext(teacher_names=teachers, model=model))


def forced_reference(original: nn.Module, handle, expert: int) -> nn.Module:
    """The original model with teacher expert ``expert`` folded into every adapted Linear."""
    reference = copy.deepcopy(original)
    for block_name, block in handle.modules.items():
        for child, module in block.base_layer.named_modules():
            if isinstance(module, MolaLinear):
                with torch.no_grad():
                    reference.get_submodule(f"{block_name}.{child}").weight += delta(module, [(expert, 1.0)])
    return reference


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy with frozen parameters (torch's MultiheadAttention takes another kernel when frozen)."""
    original = copy.deepcopy(model)
    freeze(original)
    return original


def test_injection_is_identity_at_init(tower, images) -> None:
    original = frozen_copy(tower)
    handle = inject(tower)
    assert len(handle.modules) == 2
    expected = original(images)
    for spec in ("routed", "general_only", "off", "eva", 0):
        # no_grad: torch's MultiheadAttention picks its kernel by whether inputs require grad
        with handle.routing(spec), torch.no_grad():
            assert torch.equal(tower(images), expected), spec


def test_forced_route_equals_base_plus_that_expert(tower, images) -> None:
    original = frozen_copy(tower)
    handle = inject(tower)
    randomize_adapters(handle)
    for expert, name in enumerate(TEACHERS):
        with handle.routing(name):
            out = tower(images)
        torch.testing.assert_close(out, forced_reference(original, handle, expert)(images), rtol=1e-5, atol=1e-5)
    with handle.routing("off"):
        assert torch.equal(tower(images), original(images))


def test_batched_forced_pass_equals_separate_passes(tower, images) -> None:
    handle = inject(tower)
    randomize_adapters(handle)
    with handle.routing(handle.forced_index(images.shape[0])):
        batched = tower(images.repeat(len(TEACHERS), 1, 1, 1))
    separate = []
    for name in TEACHERS:
        with handle.routing(name):
            separate.append(tower(images))
    torch.testing.assert_close(batched, torch.cat(separate), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(separate[0], separate[1])  # the experts really differ


@pytest.mark.parametrize("placement", ["both", "fc1", "fc2", "parallel"])
@pytest.mark.parametrize("gate", ["straight_through", "prob", "soft"])
def test_routed_block_equals_per_token_reference(tmp_path, placement, gate) -> None:
    """Straight-through is hard top-1 of both groups; prob scales by p; soft is the weighted sum."""
    tower = timm_vit(tmp_path)
    handle = inject(tower, placement=placement, gate=gate)
    randomize_adapters(handle)
    block = next(iter(handle.modules.values()))
    hidden = torch.randn(2, 3, 16)
    out = block(hidden).reshape(6, -1)
    expected = block_output(block, hidden.reshape(6, 16), token_weights(block, hidden.reshape(6, 16), gate))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def twin_handles(tmp_path, **options):
    """Two injections with identical weights: ``compute: grouped`` and ``compute: dense``."""
    handles = []
    for compute in ("grouped", "dense"):
        torch.manual_seed(0)
        tower = timm_vit(tmp_path)
        handle = inject(tower, compute=compute, **options)
        randomize_adapters(handle)
        handles.append((tower, handle))
    return handles


@pytest.mark.parametrize("placement", ["both", "parallel"])
@pytest.mark.parametrize(("spec", "options"), [("routed", {}), ("general_only", {}),
                                               ("routed", {"teacher_experts": False}), ("routed", {"gate": "prob"})])
def test_grouped_inference_equals_dense(tmp_path, images, placement, spec, options) -> None:
    (grouped, g_handle), (dense, d_handle) = twin_handles(tmp_path, placement=placement, **options)
    with torch.no_grad(), g_handle.routing(spec), d_handle.routing(spec):
        out, expected = grouped(images), dense(images)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    with torch.no_grad(), d_handle.routing("off"):
        assert not torch.allclose(dense(images), expected)  # the experts contribute


@pytest.mark.parametrize("placement", ["both", "parallel"])
def test_grouped_prob_gate_trains_exactly_like_dense(tmp_path, images, placement) -> None:
    """Under gate: prob only the chosen experts have a gradient: grouped gives dense's values and gradients."""
    twins = twin_handles(tmp_path, placement=placement, gate="prob")
    outs, grads = [], []
    for tower, handle in twins:
        out = tower(images)
        out.square().mean().backward()
        outs.append(out)
        grads.append({n: p.grad for g in handle.parameter_groups().values() for n, p in g.items()})
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_grouped_inference_runs_only_the_chosen_experts(tmp_path, images) -> None:
    """FLOPs of a routed forward: base + routers + one teacher and one general expert per token."""
    from torch.utils.flop_counter import FlopCounterMode

    def addmm_(_out, a, b, *args, **kwargs) -> int:  # in place: the counter does not know it
        return 2 * a[0] * a[1] * b[1]

    def flops(tower, spec) -> int:
        counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.addmm_: addmm_})
        with torch.no_grad(), handle.routing(spec), counter:
            tower(images)
        return counter.get_total_flops()

    tower = timm_vit(tmp_path)
    handle = inject(tower, placement="fc1")
    randomize_adapters(handle)
    tokens, dim, hidden, rank, mlp = 2 * 5, 16, 8, 4, 32
    routers = sum(2 * tokens * (dim * hidden + hidden * e) for e in (len(TEACHERS), 3))
    one_expert = 2 * tokens * rank * (dim + mlp)
    # 2 blocks; the dense layout would add 6 experts' worth per block instead of 2
    assert flops(tower, "routed") - flops(tower, "off") == 2 * (routers + 2 * one_expert)


def test_straight_through_training_stays_dense(tmp_path, images) -> None:
    """The straight-through gradient of an expert's gate needs that expert's output, chosen or not."""
    twins = twin_handles(tmp_path)
    grads = []
    for tower, handle in twins:
        tower(images).square().mean().backward()
        grads.append({n: p.grad for g in handle.parameter_groups().values() for n, p in g.items()})
    for name, grad in grads[0].items():
        assert torch.equal(grad, grads[1][name]), name  # the same kernels ran: the dense ones


def test_general_only_uses_only_the_general_router(tmp_path) -> None:
    tower = timm_vit(tmp_path)
    handle = inject(tower)
    randomize_adapters(handle)
    block = next(iter(handle.modules.values()))
    hidden = torch.randn(6, 16)
    weights = [[w for w in ws if w[0] >= len(TEACHERS)] for ws in token_weights(block, hidden, "straight_through")]
    with handle.routing("general_only"):
        out = block(hidden)
    torch.testing.assert_close(out, block_output(block, hidden, weights), rtol=1e-5, atol=1e-5)
    assert {o.group for o in handle.router_outputs()} == {"general"}


@pytest.mark.parametrize("gate", ["straight_through", "prob", "soft"])
def test_task_loss_gradients_reach_both_routers(tmp_path, images, gate) -> None:
    tower = timm_vit(tmp_path)
    handle = inject(tower, gate=gate)
    randomize_adapters(handle)
    tower(images).square().mean().backward()
    for name, param in handle.parameter_groups()["routers"].items():
        if name.endswith("fc2.weight"):
            assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_only_adapter_and_router_parameters_are_trainable(tower) -> None:
    handle = inject(tower)
    groups = handle.parameter_groups()
    trainable = {n for n, p in tower.named_parameters() if p.requires_grad}
    owned = {id(p) for g in groups.values() for p in g.values()}
    assert trainable and {id(p) for p in tower.parameters() if p.requires_grad} == owned
    assert all("lora_" in n for n in groups["adapters"]) and all("router_" in n for n in groups["routers"])
    handle.set_trainable("routers", False)
    assert all(not p.requires_grad for p in groups["routers"].values())


def test_router_outputs_and_usage(tmp_path, images) -> None:
    tower = timm_vit(tmp_path)
    handle = inject(tower)
    randomize_adapters(handle)
    tower(images)
    outputs = handle.router_outputs()
    tokens = images.shape[0] * 5  # 4 patches + CLS
    assert [(o.block, o.group) for o in outputs] == [
        (f"model.blocks.{i}.mlp", g) for i in range(2) for g in ("teacher", "general")
    ]
    for out in outputs:
        assert isinstance(out, RouterOutput) and out.probs.dtype == torch.float32
        experts = len(TEACHERS) if out.group == "teacher" else 3
        assert out.probs.shape == (tokens, experts) and out.choice.shape == (tokens,)
        assert torch.equal(out.choice, out.probs.argmax(-1)) and out.probs.requires_grad
    with handle.routing(handle.forced_index(2)):  # a forced pass keeps the routed outputs
        tower(images.repeat(3, 1, 1, 1))
    assert all(a.probs is b.probs for a, b in zip(outputs, handle.router_outputs(), strict=True))
    tower(images)
    usage = handle.usage(reset=True)
    assert usage["model.blocks.0.mlp"]["teacher"].sum() == 2 * tokens
    assert torch.equal(usage["model.blocks.1.mlp"]["general"], 2 * torch.bincount(outputs[3].choice, minlength=3))
    assert handle.usage() == {}


def test_router_runs_in_fp32_under_bf16_autocast(tmp_path, images) -> None:
    tower = timm_vit(tmp_path)
    handle = inject(tower)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tower(images)
    assert all(o.probs.dtype == torch.float32 for o in handle.router_outputs())


def test_checkpoint_context_replays_the_route(tmp_path, images) -> None:
    """Activation checkpointing recomputes under the route of the original forward."""
    from torch.utils.checkpoint import checkpoint

    def grads(use_checkpoint: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        tower = timm_vit(tmp_path)
        handle = inject(tower)
        randomize_adapters(handle)
        def run(x):
            if use_checkpoint:
                return checkpoint(tower, x, use_reentrant=False, context_fn=handle.checkpoint_context)
            return tower(x)
        routed = run(images)
        with handle.routing(handle.forced_index(2)):
            forced = run(images.repeat(3, 1, 1, 1))
        (routed.square().mean() + forced.square().mean()).backward()
        assert handle.usage()["model.blocks.0.mlp"]["teacher"].sum() == 10  # the replay is not counted
        return [p.grad for p in handle.parameters()]

    for a, b in zip(grads(False), grads(True), strict=True):
        torch.testing.assert_close(a, b)


def test_save_load_reproduces_outputs_on_a_fresh_student(tmp_path, images) -> None:
    tower = timm_vit(tmp_path)
    fresh = copy.deepcopy(tower)
    handle = inject(tower)
    randomize_adapters(handle)
    expected = tower(images)
    handle.save(tmp_path / "adapter")
    other = inject(fresh)
    assert not torch.allclose(fresh(images), expected)
    other.load(tmp_path / "adapter")
    torch.testing.assert_close(fresh(images), expected, rtol=0, atol=0)


def test_load_rejects_another_teacher_set_or_shape(tmp_path) -> None:
    handle = inject(timm_vit(tmp_path))
    handle.save(tmp_path / "adapter")
    with pytest.raises(CheckpointError, match=r"saved for teachers \['clip', 'convnext', 'eva'\] but this adapter has teachers \['clip', 'sam'\]"):
        inject(timm_vit(tmp_path), teachers=("clip", "sam")).load(tmp_path / "adapter")
    with pytest.raises(CheckpointError, match=r"'model.blocks.0.mlp.base_layer.fc1.lora_A' has shape \(6, 4, 16\) but this adapter needs \(6, 8, 16\)"):
        mola.build(mola.MolaConfig(rank=8, router_hidden=8), BuildContext(teacher_names=TEACHERS, model=timm_vit(tmp_path))).load(tmp_path / "adapter")
    with pytest.raises(CheckpointError, match="not an adapter directory"):
        handle.load(tmp_path / "nowhere")


def test_mola_is_not_mergeable(tmp_path) -> None:
    handle = inject(timm_vit(tmp_path))
    assert handle.mergeable is False
    with pytest.raises(KdkitError, match="cannot merge a 'mola' adapter"):
        handle.merge()


def test_bad_input_is_named(tmp_path) -> None:
    with pytest.raises(KdkitError, match="teacher_experts: true but the recipe has no teachers"):
        inject(timm_vit(tmp_path), teachers=())
    with pytest.raises(KdkitError, match=r"rank 64 does not fit 'model.blocks.0.mlp.fc1' \(16 -> 32\)"):
        mola.build(mola.MolaConfig(rank=64), BuildContext(teacher_names=TEACHERS, model=timm_vit(tmp_path)))
    with pytest.raises(KdkitError, match=r"no module of Tower matches the mola block patterns \['ffn'\].*candidates: model, model.patch_embed"):
        inject(timm_vit(tmp_path), blocks=["ffn"])
    with pytest.raises(KdkitError, match=r"fc1 patterns \['lin1'\] match nothing in block 'model.blocks.0.mlp'"):
        inject(timm_vit(tmp_path), fc1=["lin1"])
    with pytest.raises(KdkitError, match=r"fc2 model.blocks.0.mlp.act is a GELU, not an nn.Linear"):
        inject(timm_vit(tmp_path), fc2=["act"])
    with pytest.raises(KdkitError, match="clash with routing modes"):
        inject(timm_vit(tmp_path), teachers=("clip", "off"))
    handle = inject(timm_vit(tmp_path))
    with pytest.raises(KdkitError, match=r"values in \[0, 3\]; valid teacher experts are 0..2 \(clip, convnext, eva\)"):
        handle.set_routing(torch.tensor([0, 3]))
    with pytest.raises(KdkitError, match=r"unknown routing 'sam'; use one of: routed, off, general_only, teacher 'clip'"):
        handle.set_routing("sam")
    with pytest.raises(KdkitError, match="teacher expert 5 is out of range"):
        handle.set_routing(5)
    with pytest.raises(KdkitError, match="per-sample expert index has 4 entries but the adapted layer sees a batch of 2"):
        with handle.routing(torch.tensor([0, 1, 2, 0])):
            handle.model(torch.rand(2, 3, 16, 16))


def test_general_experts_only(tmp_path, images) -> None:
    """MoVE-KD style shared experts: no teacher group, no teacher routes."""
    tower = timm_vit(tmp_path)
    handle = inject(tower, teachers=TEACHERS, teacher_experts=False)
    tower(images)
    assert handle.teacher_names == () and {o.group for o in handle.router_outputs()} == {"general"}
    with pytest.raises(KdkitError, match="unknown routing 'clip'"):
        handle.set_routing("clip")


def test_blocks_are_wrapped_with_the_original_kept(tmp_path) -> None:
    tower = timm_vit(tmp_path)
    handle = inject(tower)
    block = tower.get_submodule("model.blocks.0.mlp")
    assert isinstance(block, MolaBlock) and isinstance(block.base_layer.fc1.base_layer, nn.Linear)
    assert block.base_layer.fc1.lora_A.shape == (6, 4, 16) and block.base_layer.fc1.lora_B.shape == (6, 4, 32)

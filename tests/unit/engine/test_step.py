"""One distillation step on the tiny recipe: named unweighted terms, the one batched forced pass,
trainable groups."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdkit.engine import build
from kdkit.engine.step import weighted_total
from kdkit.errors import KdkitError
from kdkit.recipe import load_recipe
from kdkit_plugins.data.synthetic import SyntheticImages


@pytest.fixture(scope="module")
def distiller(tiny_recipe, tiny_root, registry):
    recipe = load_recipe(tiny_recipe, [f"runtime.data_root={tiny_root}"], registry=registry)
    model = build.build_distiller(recipe, registry, torch.device("cpu"))
    with torch.no_grad():  # make every expert matter (lora_B starts at zero)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    return model


@pytest.fixture
def batch():
    data = SyntheticImages(4, 32, 4, 0.1, 0)
    return torch.utils.data.default_collate([data[i] for i in range(3)])


def test_step_returns_named_unweighted_terms(distiller, batch) -> None:
    losses, step = distiller(batch)
    assert list(losses) == ["task", "fine", "coarse", "balance"]
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    assert step.student_routed.shape == (3, 16, 16) and set(step.teacher_aligned) == {"clip", "eva02"}
    assert step.task_loss is losses["task"]
    assert len(step.routers) == 4  # 2 blocks x (teacher, general)
    total = weighted_total(losses, {"task": 1.0, "fine": 0.5, "coarse": 0.5, "balance": 0.05}).item()
    value = {k: v.item() for k, v in losses.items()}
    assert total == pytest.approx(value["task"] + 0.5 * value["fine"] + 0.5 * value["coarse"] + 0.05 * value["balance"])


@pytest.mark.parametrize(("batched", "passes"), [(True, [6]), (False, [3, 3])])
def test_forced_passes_equal_each_teacher_forced_alone(distiller, batch, monkeypatch, batched, passes) -> None:
    """Batched: once over N_t x B images; sequential (the choice on CPU): once per teacher."""
    import kdkit.engine.step as step_module

    monkeypatch.setattr(step_module, "forced_batching", lambda device: batched)
    calls = []
    encode = distiller.plugin.encode
    monkeypatch.setattr(distiller.plugin, "encode", lambda images: calls.append(images.shape[0]) or encode(images))
    _, step = distiller(batch)
    forced = dict(step.student_forced)
    forced_again = dict(step.student_forced)
    assert calls == passes
    handle = distiller.adapters["mola"]
    for teacher in ("clip", "eva02"):
        with handle.routing(teacher):
            alone = encode(batch["images"])
        torch.testing.assert_close(forced[teacher], alone, rtol=1e-5, atol=1e-6)
        assert forced_again[teacher] is forced[teacher]
    assert not torch.allclose(forced["clip"], forced["eva02"])


def test_no_forced_pass_when_no_active_loss_reads_it(distiller, batch, monkeypatch) -> None:
    monkeypatch.setattr(distiller, "active", ("task", "coarse"))
    monkeypatch.setattr(distiller, "forced_pass", lambda images: pytest.fail("forced pass ran"))
    losses, _ = distiller(batch)
    assert list(losses) == ["task", "coarse"]


def test_groups_split_base_adapters_routers_and_heads(distiller) -> None:
    groups = build.parameter_groups(distiller)
    assert set(groups) == {"adapters", "routers", "head", "vision_base", "kd_heads"}
    assert all(".lora_" in n for n in groups["adapters"]) and all("router" in n for n in groups["routers"])
    assert not set(groups["vision_base"]) & set(groups["adapters"] + groups["routers"])
    every = [n for names in groups.values() for n in names]
    assert sorted(every) == sorted(n for n, _ in distiller.named_parameters())  # each parameter in one group


def test_trainable_patterns_and_counts(distiller) -> None:
    groups = build.parameter_groups(distiller)
    chosen = build.resolve_trainable("s", ["routers", r"student\.blocks\.1\..*norm.*"], distiller, groups)
    build.set_trainable(distiller, chosen)
    trainable = {n for n, p in distiller.named_parameters() if p.requires_grad}
    assert trainable == set(groups["routers"]) | {n for n in chosen[r"student\.blocks\.1\..*norm.*"]}
    rows = dict(build.trainable_table(distiller, chosen))
    assert rows["total"] == sum(p.numel() for p in distiller.parameters() if p.requires_grad)
    assert not any(p.requires_grad for t in distiller.teachers.values() for p in t.parameters())


def test_trainable_entry_matching_nothing(distiller) -> None:
    groups = build.parameter_groups(distiller)
    listed = ", ".join(groups)
    with pytest.raises(KdkitError, match=rf"stages.s.trainable\[0\] 'llm' matches no parameter; groups: {listed}; or a "
                                         r"regular expression on names such as student\."):
        build.resolve_trainable("s", ["llm"], distiller, groups)
    with pytest.raises(KdkitError, match=r"neither a group nor a valid regex"):
        build.resolve_trainable("s", ["student.(("], distiller, groups)
    with pytest.raises(KdkitError, match=r"trainable\[0\] 'adapters' matches no parameter \(an empty group in this recipe\)"):
        build.resolve_trainable("s", ["adapters"], distiller, {**groups, "adapters": []})


def test_entries_that_could_name_unbuilt_parameters_are_left_out(distiller) -> None:
    """``kdkit validate`` builds no KD heads: kd_heads and a regex that could match under ``unbuilt`` are skipped."""
    groups = {**build.parameter_groups(distiller), "kd_heads": []}
    student_only = nn.ModuleDict({"student": distiller.student})  # as validate builds it: no heads
    unbuilt = ("heads.aligners.clip.", "heads.scorer.")
    wanted = ["kd_heads", r"heads\.aligners\..*", r".*\.nowhere", r"student\.cls_token"]
    chosen = build.resolve_trainable("s", wanted, student_only, groups, unbuilt)
    assert chosen == {r"student\.cls_token": ["student.cls_token"]}
    with pytest.raises(KdkitError, match=r"trainable\[0\] 'heads\\\\.aligners\\\\.sam\\\\..\*' matches no parameter"):
        build.resolve_trainable("s", [r"heads\.aligners\.sam\..*"], student_only, groups, unbuilt)
    with pytest.raises(KdkitError, match=r"trainable\[0\] 'kd_heads' matches no parameter \(an empty group"):
        build.resolve_trainable("s", ["kd_heads"], student_only, groups)  # built: an empty kd_heads is refused
    assert build.may_match_under(r"heads\.scorer\.proj\.weight", "heads.scorer.")
    assert build.may_match_under(r".*weight", "heads.aligners.clip.")
    assert not build.may_match_under(r"student\..*", "heads.aligners.clip.")
    assert not build.may_match_under(r"heads\.aligners\.clipper\..*", "heads.aligners.clip.")


def test_teachers_are_not_submodules(distiller) -> None:
    assert not any(n.startswith("teachers") for n, _ in distiller.named_parameters())
    assert all(not t.training for t in distiller.teachers.values())


def test_a_scorer_with_parameters_is_registered_once(tiny_recipe, tiny_root, registry) -> None:
    """Its weights appear only as heads.scorer.* (a second name would make safetensors refuse shared tensors)."""
    recipe = load_recipe(tiny_recipe, [f"runtime.data_root={tiny_root}", "scorer.project_tokens=true"], registry=registry)
    model = build.build_distiller(recipe, registry, torch.device("cpu"))
    names = list(model.state_dict())
    assert any(n.startswith("heads.scorer.") for n in names)
    assert not any(n.startswith("scorer.") for n in names)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_recipe, tiny_root, registry, batch) -> None:
    from kdkit.engine.step import checkpoint_context

    recipe = load_recipe(tiny_recipe, [f"runtime.data_root={tiny_root}"], registry=registry)
    grads = []
    for checkpointed in (False, True):
        model = build.build_distiller(recipe, registry, torch.device("cpu"))
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
        build.set_trainable(model, {"all": [n for n, _ in model.named_parameters()]})
        if checkpointed:
            model.plugin.enable_gradient_checkpointing(checkpoint_context(list(model.adapters.values())))
        losses, _ = model(batch)
        weighted_total(losses, {n: 1.0 for n in losses}).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")

"""Activation checkpointing in a LLaVA run through the engine (the tiny HAWAII 7B twin, one step per
stage): the student trains in train mode, so transformers really recomputes its layers; MoLA routes
replay; losses and gradients stay bit-identical; the router log keeps the routed pass."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from kdkit.engine import run as engine_run
from kdkit.engine import step as step_module
from kdkit.engine.monitor import read_metrics
from kdkit.engine.step import Distiller
from kdkit.engine.trainer import Trainer
from kdkit_plugins.fixtures.hawaii import ONE_STEP, write_tiny_hawaii

TWIN = Path(__file__).resolve().parents[3] / "recipes" / "tiny" / "hawaii" / "hawaii_7b.yaml"


@dataclasses.dataclass
class Observed:
    """What one run showed, step by step (one micro-batch per step, one step per stage).

    Attributes:
        calls: Forward calls per student layer (tower layers first, then decoder layers), counted
            on each layer's attention: transformers checkpoints a layer's ``forward``, so hooks on
            the layer itself fire once, and those on its children in the recomputation too.
        routes: Per step, ``(phase, block, mode, {router group: top-1 choices})`` of every MoLA
            block call; phase ``forward`` is the Distiller's forward, ``backward`` what ran after it.
        logs: Per step, the router log's outputs and usage counts after the forward and after backward.
        grads: Per step, every gradient before clipping.
        modes: Per step, ``(student modules all in train mode, teacher modules all in eval mode)``.
        tower_layers: How many of the layers are the vision tower's.
        final_training: Whether any Distiller module was in train mode after the run.
        losses: The logged losses of every step.
    """

    calls: Counter = dataclasses.field(default_factory=Counter)
    routes: list[list[tuple[str, str, str, dict[str, Tensor]]]] = dataclasses.field(default_factory=list)
    logs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    grads: list[dict[str, Tensor]] = dataclasses.field(default_factory=list)
    modes: list[tuple[bool, bool]] = dataclasses.field(default_factory=list)
    tower_layers: int = 0
    final_training: bool = True
    losses: list[dict[str, float]] = dataclasses.field(default_factory=list)


def usage_of(handle: Any) -> dict[tuple[str, str], list[int]]:
    """The adapter's expert-usage counts as plain lists, by ``(block, group)``."""
    return {(block, group): counts.tolist() for block, groups in handle.usage().items() for group, counts in groups.items()}


def instrument(distiller: Distiller, seen: Observed) -> None:
    """Hooks that fill ``seen`` while the engine trains ``distiller``."""
    handle = distiller.adapters["mola"]
    phase = {"now": "idle"}
    layers = distiller.plugin.shard_units()
    seen.tower_layers = distiller.plugin.model.config.vision_config.num_hidden_layers
    for index, layer in enumerate(layers):
        layer.self_attn.register_forward_hook(lambda *_, i=index: seen.calls.update([i]))

    def forward_starts(module: Distiller, args: Any) -> None:
        phase["now"] = "forward"
        seen.routes.append([])
        student = all(m.training for m in module.student.modules())
        teachers = not any(m.training for t in module.teachers.values() for m in t.modules())
        seen.modes.append((student, teachers))

    def forward_ends(module: Distiller, args: Any, output: Any) -> None:
        phase["now"] = "backward"
        seen.logs.append({"forward": list(handle.router_outputs()), "forward_usage": usage_of(handle)})

    distiller.register_forward_pre_hook(forward_starts)
    distiller.register_forward_hook(forward_ends)
    for name, block in handle.modules.items():
        def block_starts(module: Any, args: Any, name: str = name) -> None:
            seen.routes[-1].append((phase["now"], name, module.state.current.mode, {}))

        block.register_forward_pre_hook(block_starts)
        for group in ("teacher", "general"):
            router = getattr(block, f"router_{group}")

            def routed(module: Any, args: Any, probs: Tensor, group: str = group) -> None:
                seen.routes[-1][-1][3][group] = probs.detach().argmax(-1)

            router.register_forward_hook(routed)


@pytest.fixture(scope="module")
def hawaii_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_hawaii(tmp_path_factory.mktemp("tiny_hawaii"))


#: The three settings compared: no checkpointing, layer checkpointing only, and (the default with
#: checkpointing) layers + each forced pass kept as its output only.
SETTINGS: dict[str, list[str]] = {
    "off": ["runtime.gradient_checkpointing=false"],
    "layers": ["runtime.gradient_checkpointing=true", "runtime.checkpoint_forced_passes=false"],
    "forced": ["runtime.gradient_checkpointing=true"],
}


def observe(setting: str, root: Path, out: Path, registry: Any) -> Observed:
    """Run the twin (one step per stage) under one of :data:`SETTINGS`, watching the student."""
    seen = Observed()
    build = engine_run.build_distiller
    clip = Trainer.clip

    def instrumented(*args: Any, **kwargs: Any) -> Distiller:
        distiller = build(*args, **kwargs)
        instrument(distiller, seen)
        return distiller

    def clipping(trainer: Trainer, model: Any, max_norm: float | None) -> Tensor:
        handle = trainer.distiller.adapters["mola"]
        seen.logs[-1].update(backward=list(handle.router_outputs()), backward_usage=usage_of(handle))
        seen.grads.append({n: p.grad.clone() for n, p in trainer.distiller.named_parameters() if p.grad is not None})
        return clip(trainer, model, max_norm)

    def fitted(trainer: Trainer, resume: Any = None) -> None:
        fit(trainer, resume)
        seen.final_training = any(m.training for m in trainer.distiller.modules())

    fit = Trainer.fit
    with pytest.MonkeyPatch.context() as patch:
        # the forced passes as one batch, as on a GPU (a CPU runs one per teacher: the same features)
        patch.setattr(step_module, "forced_batching", lambda device: True)
        patch.setattr(engine_run, "build_distiller", instrumented)
        patch.setattr(Trainer, "clip", clipping)
        patch.setattr(Trainer, "fit", fitted)
        run_dir = engine_run.run_recipe(
            TWIN, [f"runtime.data_root={root}", f"runtime.output_dir={out}", *SETTINGS[setting], *ONE_STEP],
            registry=registry, tensorboard=False, progress=False, report=False)
    seen.losses = [dict(r["losses"]) for r in read_metrics(run_dir)]
    return seen


@pytest.fixture(scope="module")
def runs(hawaii_root: Path, tmp_path_factory: pytest.TempPathFactory, registry) -> dict[str, Observed]:
    out = tmp_path_factory.mktemp("checkpointing_runs")
    return {name: observe(name, hawaii_root, out / name, registry) for name in SETTINGS}


def test_the_student_trains_in_train_mode_and_the_teachers_stay_in_eval(runs) -> None:
    for seen in runs.values():
        assert seen.modes == [(True, True), (True, True)]
        assert not seen.final_training  # back in eval mode once training is over


def test_checkpointing_recomputes_the_student_layers(runs) -> None:
    """Each step runs the tower twice (routed, then the forced pass) and the LM once; with layer
    checkpointing the backward runs every layer again, except the top tower layer in the forced
    pass: only its routers reach the loss (load balance), and the forced pass routes nothing. With
    the forced pass checkpointed too, the backward first runs the whole forced pass again (its top
    layer included) and then recomputes its layers as before: one more tower forward per step."""
    plain, layers_only, forced = runs["off"].calls, runs["layers"].calls, runs["forced"].calls
    tower = runs["forced"].tower_layers
    layers = sorted(plain)
    assert layers == sorted(layers_only) == sorted(forced) and len(layers) == tower + 2  # 3 tower + 2 decoder layers
    steps = 2  # one per stage
    assert [plain[i] for i in layers] == [2 * steps] * tower + [steps] * 2
    expected = [2 * plain[i] for i in layers]
    expected[tower - 1] = plain[tower - 1] + steps  # the top tower layer: recomputed for the routed pass only
    assert [layers_only[i] for i in layers] == expected
    again = [steps] * tower + [0, 0]  # the forced pass's whole forward, once more per step
    assert [forced[i] for i in layers] == [e + a for e, a in zip(expected, again, strict=True)]


def split(routes: list[tuple[str, str, str, dict[str, Tensor]]], phase: str) -> Iterator[tuple[str, str, dict[str, Tensor]]]:
    """``(block, mode, choices)`` of the block calls of one ``phase``."""
    return ((block, mode, choices) for p, block, mode, choices in routes if p == phase)


@pytest.mark.parametrize(("setting", "forced_again"), [("layers", 2), ("forced", 5)])
def test_recomputation_replays_every_route(runs, setting: str, forced_again: int) -> None:
    """Every block recomputed in the backward follows the route and top-1 choices of its forward
    (a checkpointed forced pass runs its 3 blocks once more, then its 2 lower ones as layers)."""
    assert all(not list(split(step, "backward")) for step in runs["off"].routes)
    for step in runs[setting].routes:
        forward = {(block, mode): choices for block, mode, choices in split(step, "forward")}
        assert Counter(mode for _, mode in forward) == {"routed": 3, "index": 3}  # 3 blocks: routed and forced
        replayed = list(split(step, "backward"))
        assert Counter(mode for _, mode, _ in replayed) == {"routed": 3, "index": forced_again}
        for block, mode, choices in replayed:
            original = forward[(block, mode)]
            assert choices.keys() == original.keys() == ({"teacher", "general"} if mode == "routed" else set())
            assert all(torch.equal(choices[g], original[g]) for g in choices), (block, mode)


@pytest.mark.parametrize("setting", ["layers", "forced"])
def test_losses_and_gradients_are_bit_identical(runs, setting: str) -> None:
    plain, checkpointed = runs["off"], runs[setting]
    assert checkpointed.losses == plain.losses and len(plain.losses) == 2
    for grads, reference in zip(checkpointed.grads, plain.grads, strict=True):
        assert grads.keys() == reference.keys() and grads
        assert [n for n, g in grads.items() if not torch.equal(g, reference[n])] == []


def test_the_router_log_keeps_the_routed_pass_through_recomputation(runs) -> None:
    """After backward the log holds the very outputs of the routed forward (recomputation records
    nothing, and holds no second autograd graph), and the usage counts are unchanged."""
    for seen in runs.values():
        for log in seen.logs:
            assert len(log["backward"]) == len(log["forward"]) == 6  # 3 blocks x (teacher, general)
            assert all(a.probs is b.probs for a, b in zip(log["backward"], log["forward"], strict=True))
            assert log["backward_usage"] == log["forward_usage"]

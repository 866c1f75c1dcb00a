"""Core adapter machinery: routing specs, router logs, storage errors."""

from __future__ import annotations

import json

import pytest
import torch

from kdkit.adapters import RouterLog, Routing, RoutingState, load_adapter, resolve, save_adapter
from kdkit.errors import CheckpointError, KdkitError

TEACHERS = ("clip", "sam")
MODES = ("routed", "off", "general_only")


def test_resolve_every_spec() -> None:
    assert resolve("off", TEACHERS, MODES) == Routing("off")
    assert resolve("sam", TEACHERS, MODES) == Routing("teacher", expert=1)
    assert resolve(0, TEACHERS, MODES) == Routing("teacher", expert=0)
    index = resolve(torch.tensor([1, 0], dtype=torch.int32), TEACHERS, MODES)
    assert index.mode == "index" and index.index.dtype == torch.long


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("general", r"unknown routing 'general'; use one of: routed, off, general_only, teacher 'clip', teacher 'sam'"),
        (2, r"teacher expert 2 is out of range: this adapter has 2 teacher experts \(clip, sam\)"),
        (torch.tensor([0, -1]), r"values in \[-1, 0\]; valid teacher experts are 0..1"),
        (torch.zeros(2, 2, dtype=torch.long), r"must be a \(B,\) integer tensor, got torch.int64 \(2, 2\)"),
        (torch.zeros(2), r"must be a \(B,\) integer tensor, got torch.float32"),
        (1.5, "got float"),
    ],
)
def test_resolve_errors(spec, message) -> None:
    with pytest.raises(KdkitError, match=message):
        resolve(spec, TEACHERS, MODES)


def test_state_context_restores_and_checkpoint_context_replays() -> None:
    state = RoutingState(TEACHERS, MODES)
    with state.use("clip"):
        assert state.current.mode == "teacher"
        forward, recompute = state.checkpoint_context()
    assert state.current == Routing("routed")
    with forward:
        assert state.current == Routing("routed")
    with recompute:
        assert state.current == Routing("teacher", expert=0) and state.replaying
    assert state.current == Routing("routed") and not state.replaying


def test_router_log_keeps_last_outputs_and_counts() -> None:
    log = RouterLog()
    probs = torch.tensor([[0.7, 0.3], [0.2, 0.8], [0.9, 0.1]])
    log.record("b0", {"teacher": (probs, probs.argmax(-1))})
    log.record("b0", {"teacher": (probs, probs.argmax(-1))}, count=False)
    assert [(o.block, o.group) for o in log.outputs()] == [("b0", "teacher")]
    assert torch.equal(log.usage()["b0"]["teacher"], torch.tensor([2, 1]))


def test_storage_errors(tmp_path) -> None:
    tensors = {"a.lora_A": torch.ones(2, 3)}
    save_adapter(tmp_path / "x", tensors, kind="lora", config={"rank": 2}, teacher_names=())
    assert json.loads((tmp_path / "x" / "adapter.json").read_text())["shapes"] == {"a.lora_A": [2, 3]}
    assert torch.equal(load_adapter(tmp_path / "x", tensors, kind="lora", teacher_names=())["a.lora_A"], tensors["a.lora_A"])
    with pytest.raises(CheckpointError, match="holds a 'lora' adapter; this model has a 'mola' adapter"):
        load_adapter(tmp_path / "x", tensors, kind="mola", teacher_names=())
    with pytest.raises(CheckpointError, match=r"missing \['b.lora_A'\], unexpected \['a.lora_A'\]"):
        load_adapter(tmp_path / "x", {"b.lora_A": torch.ones(2, 3)}, kind="lora", teacher_names=())
    (tmp_path / "x" / "adapter.json").write_text("{")
    with pytest.raises(CheckpointError, match="is not valid JSON"):
        load_adapter(tmp_path / "x", tensors, kind="lora", teacher_names=())

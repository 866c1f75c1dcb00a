"""The FSDP2 checkpoint layout (``torch.distributed.checkpoint``), exercised in one process: round
trip, atomic publication, keep-last-K, missing and truncated shards."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from kdkit.engine import sharded
from kdkit.engine.checkpoint import SHARDED, latest_checkpoint, list_checkpoints, load_checkpoint, read_weights
from kdkit.engine.distributed import World
from kdkit.errors import CheckpointError


def trained(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 3)).sum().backward()
    optimizer.step()
    return model, optimizer


def write(directory: Path, step: int, keep_last: int = 3) -> tuple[Path, nn.Module, torch.optim.Optimizer]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model, optimizer = trained(step)
    weights, optim = get_state_dict(model, optimizer)
    path = sharded.save_sharded(directory, step, weights, optim, {"global_step": step}, keep_last, World())
    return path, model, optimizer


def test_round_trip_of_weights_and_optimizer(tmp_path: Path) -> None:
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    path, model, optimizer = write(tmp_path, 5)
    checkpoint = load_checkpoint(path)
    assert checkpoint.sharded and checkpoint.model is None and checkpoint.state["global_step"] == 5
    assert checkpoint.shapes == {"0.weight": (4, 3), "0.bias": (4,), "1.weight": (4,), "1.bias": (4,)}
    weights = read_weights(path)
    assert weights.keys() == model.state_dict().keys()
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    fresh, fresh_optimizer = trained(99)
    optim = get_optimizer_state_dict(fresh, fresh_optimizer)
    sharded.load_sharded(path / SHARDED, optimizer=optim)
    expected = get_optimizer_state_dict(model, optimizer)
    for name, entries in expected["state"].items():
        for key, value in entries.items():
            assert torch.equal(optim["state"][name][key], value), (name, key)


def test_keeps_the_last_k_and_never_overwrites(tmp_path: Path) -> None:
    for step in range(1, 5):
        write(tmp_path, step, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000003", "step-00000004"]
    with pytest.raises(CheckpointError, match="already exists; kdkit never overwrites"):
        write(tmp_path, 4)


def test_a_kill_during_the_write_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    import torch.distributed.checkpoint as dcp

    write(tmp_path, 1)
    real = dcp.save

    def killed(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt  # shards and index on disk, state.json not yet

    monkeypatch.setattr(dcp, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        write(tmp_path, 2)
    assert latest_checkpoint(tmp_path).name == "step-00000001"
    monkeypatch.setattr(dcp, "save", real)
    write(tmp_path, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000001", "step-00000002"]


def test_missing_index_and_truncated_shard(tmp_path: Path) -> None:
    path, _, _ = write(tmp_path, 1)
    shard = next((path / SHARDED).glob("*.distcp"))
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=r"could not be read .*a shard is missing or truncated"):
        read_weights(path)
    (path / SHARDED / ".metadata").unlink()
    with pytest.raises(CheckpointError, match=r"incomplete: dcp/.metadata \(the index of the shards\) is missing"):
        load_checkpoint(path)

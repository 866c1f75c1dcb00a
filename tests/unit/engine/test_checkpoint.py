"""Checkpoint files: atomic writes, keep-last-K, truncation, recipe differences, RNG round trip."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from kdkit.engine import checkpoint as ckpt
from kdkit.errors import CheckpointError


def write(directory: Path, step: int, keep_last: int = 3) -> Path:
    model = {"w": torch.full((2, 2), float(step))}
    optim = {"state": {"w": {"step": torch.tensor(float(step)), "exp_avg": torch.ones(2, 2)}},
             "param_groups": [{"lr": 0.1, "params": ["w"]}]}
    return ckpt.save_checkpoint(directory, step, model, optim, {"global_step": step}, keep_last)


def test_round_trip(tmp_path: Path) -> None:
    loaded = ckpt.load_checkpoint(write(tmp_path, 7))
    assert torch.equal(loaded.model["w"], torch.full((2, 2), 7.0))
    assert torch.equal(loaded.optimizer["state"]["w"]["exp_avg"], torch.ones(2, 2))
    assert loaded.optimizer["param_groups"] == [{"lr": 0.1, "params": ["w"]}]
    assert loaded.state["global_step"] == 7


def test_keeps_the_last_k(tmp_path: Path) -> None:
    for step in range(1, 6):
        write(tmp_path, step, keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000004", "step-00000005"]


def test_a_kill_during_the_write_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    write(tmp_path, 1)
    real = ckpt.save_file

    def killed(tensors, path, *args, **kwargs):
        real(tensors, path, *args, **kwargs)
        if path.endswith("optimizer.safetensors"):
            raise KeyboardInterrupt  # the process dies after writing part of the checkpoint

    monkeypatch.setattr(ckpt, "save_file", killed)
    with pytest.raises(KeyboardInterrupt):
        write(tmp_path, 2)
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000001"
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path)).state["global_step"] == 1
    monkeypatch.setattr(ckpt, "save_file", real)
    write(tmp_path, 2)  # the next save clears the debris
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000001", "step-00000002"]


def test_never_overwrites(tmp_path: Path) -> None:
    write(tmp_path, 3)
    with pytest.raises(CheckpointError, match="already exists; kdkit never overwrites"):
        write(tmp_path, 3)


def test_truncated_and_missing_files(tmp_path: Path) -> None:
    path = write(tmp_path, 1)
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model.safetensors \(model weights\) is corrupt or truncated"):
        ckpt.load_checkpoint(path)
    (path / "optimizer.json").unlink()
    (path / "model.safetensors").write_bytes(data)
    with pytest.raises(CheckpointError, match=r"incomplete: optimizer.json \(optimizer settings\) is missing"):
        ckpt.load_checkpoint(path)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        ckpt.latest_checkpoint(tmp_path / "elsewhere")


def test_recipe_differences_ignore_volatile_runtime_keys() -> None:
    saved = {"adapters": {"mola": {"rank": 4}}, "runtime": {"log_every": 1, "seed": 0}}
    now = {"adapters": {"mola": {"rank": 8}}, "runtime": {"log_every": 5, "seed": 0}, "scorer": None}
    assert ckpt.recipe_differences(saved, now) == ["adapters.mola.rank: 4 -> 8", "scorer: '<absent>' -> None"]


def test_model_state_mismatch_names_the_tensors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"b: not in this model; a: checkpoint \(2,\) vs model \(3,\)"):
        ckpt.check_model_state(tmp_path, {"a": (2,), "b": (1,)}, {"a": (3,)})
    with pytest.raises(CheckpointError, match=r"fit this recipe's model: c: trained in this run but absent"):
        ckpt.check_model_state(tmp_path, {"a": (3,)}, {"a": (3,), "c": (1,)}, trained=["a", "c"])


def test_rng_round_trip() -> None:
    import json

    state = json.loads(json.dumps(ckpt.rng_state()))
    expected = (random.random(), torch.rand(3), __import__("numpy").random.rand())
    ckpt.set_rng_state(state)
    assert random.random() == expected[0] and torch.equal(torch.rand(3), expected[1])
    assert __import__("numpy").random.rand() == expected[2]

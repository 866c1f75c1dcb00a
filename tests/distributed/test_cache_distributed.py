"""``kdkit cache`` under torchrun (2 gloo processes, each rank its shards) writes the cache one process
would, and a 2-process DDP run reading it matches the single-process online run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kdkit.cache.command import cache_stage
from kdkit.engine.monitor import read_metrics
from kdkit.engine.run import run_recipe
from twoproc import RECIPE, SETTINGS, free_port



def torchrun(*args: str) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               "-m", "kdkit", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_two_processes_cache_and_train_from_it(tiny_root: Path, tmp_path: Path, registry) -> None:
    sets = [a for s in SETTINGS for a in ("--set", s)]
    cache = tmp_path / "cache"
    for stage in ("pretrain", "finetune"):  # both stages read the same data: the second finds every shard done
        torchrun("cache", str(RECIPE), "--stage", stage, "--output", str(cache), "--data-root", str(tiny_root),
                 "--shard-size", "4", *sets)
    alone = tmp_path / "alone"
    summary = cache_stage(RECIPE, "pretrain", alone, overrides=[f"runtime.data_root={tiny_root}", *SETTINGS],
                          shard_size=4, registry=registry, echo=lambda *_: None)
    for teacher in ("clip", "eva02"):  # the same shards as one process writes (outputs up to thread-count rounding)
        two = sorted((cache / teacher).glob("*.safetensors"))
        one = sorted((alone / teacher).glob("*.safetensors"))
        assert [p.name for p in two] == [p.name for p in one] and len(one) == 4
        for a, b in zip(one, two, strict=True):
            first, second = load_file(a), load_file(b)
            assert torch.equal(first["ids"], second["ids"]) and torch.equal(first["digests"], second["digests"])
            torch.testing.assert_close(first["grid"], second["grid"], rtol=1e-5, atol=1e-6)
    assert summary["teachers"]["clip"]["rows"] == 16
    single = run_recipe(RECIPE, SETTINGS + [f"runtime.data_root={tiny_root}", f"runtime.output_dir={tmp_path / 'one'}"],
                        registry=registry, tensorboard=False, progress=False, report=False)
    torchrun("run", str(RECIPE), "--data-root", str(tiny_root), "--output-dir", str(tmp_path / "two"), *sets,
             "--set", "runtime.distributed.strategy=ddp", "--set", f"runtime.teacher_cache={cache}")
    one, two = read_metrics(single), read_metrics(tmp_path / "two")
    assert [r["step"] for r in two] == [1, 2, 3, 4]
    for a, b in zip(one, two, strict=True):
        for term, value in a["losses"].items():  # DDP vs one process: float summation order only
            assert b["losses"][term] == pytest.approx(value, rel=1e-4, abs=1e-6), (a["step"], term)

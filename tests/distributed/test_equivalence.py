"""Two CPU processes (gloo, started by torchrun) give the losses and weights of one process with the
same global batch, for DDP and for FSDP2.

The global batch of each optimizer step holds the same samples whatever the world size
(``DistributedSampler`` order), and every term compared here is a per-sample mean, so the runs
agree up to float summation order: tolerance rtol 1e-4 / atol 1e-6 on every logged loss, and
atol 2e-5 on the final weights (Adam divides by the root of the second moment, which turns
float-order noise in a near-zero gradient into an update of up to the learning rate). The
load-balance term is left out: it is not a per-sample mean, so its value depends on how the
global batch is cut into micro-batches, which changes with the world size by design.

FSDP2 writes sharded checkpoints (``torch.distributed.checkpoint``); a run killed after k steps
and resumed on 2 processes must end like the straight single-process run, within the same
tolerance.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdkit.engine.checkpoint import list_checkpoints, load_checkpoint, read_weights
from kdkit.engine.monitor import read_metrics
from kdkit.engine.run import run_recipe
from twoproc import RECIPE, SETTINGS, free_port



@pytest.fixture(scope="module")
def single(tiny_root, tmp_path_factory, registry) -> Path:
    out = tmp_path_factory.mktemp("single") / "run"
    return run_recipe(RECIPE, SETTINGS + [f"runtime.data_root={tiny_root}", f"runtime.output_dir={out}"],
                      registry=registry, tensorboard=False, progress=False, report=False)


def torchrun(strategy: str, tiny_root: Path, out: Path, *extra: str, killed_after: int | None = None) -> None:
    sets = [a for s in SETTINGS + [f"runtime.distributed.strategy={strategy}"] for a in ("--set", s)]
    target = ["-m", "kdkit"] if killed_after is None else [str(Path(__file__).with_name("killed.py")), str(killed_after)]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               *target, "run", str(RECIPE), "--data-root", str(tiny_root), "--output-dir", str(out), *sets, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    if killed_after is None:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    else:
        assert f"killed after {killed_after} steps" in done.stderr, done.stderr[-3000:]


def assert_matches(single: Path, run_dir: Path, label: str) -> None:
    """Same logged losses (rtol 1e-4) and final weights (atol 2e-5) as the single-process run."""
    one, two = read_metrics(single), read_metrics(run_dir)
    assert [r["step"] for r in two] == [1, 2, 3, 4]
    for a, b in zip(one, two, strict=True):
        assert b["losses"].keys() == a["losses"].keys()
        for term, value in a["losses"].items():
            assert b["losses"][term] == pytest.approx(value, rel=1e-4, abs=1e-6), (label, a["step"], term)
    first = read_weights(list_checkpoints(single / "checkpoints")[-1])
    second = read_weights(list_checkpoints(run_dir / "checkpoints")[-1])
    assert first.keys() == second.keys()
    for name, tensor in first.items():
        torch.testing.assert_close(second[name], tensor, rtol=1e-4, atol=2e-5, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_processes_match_one(strategy, single, tiny_root, tmp_path) -> None:
    torchrun(strategy, tiny_root, tmp_path / "run")
    assert_matches(single, tmp_path / "run", strategy)
    layout = load_checkpoint(list_checkpoints(tmp_path / "run" / "checkpoints")[-1]).state["layout"]
    assert layout == {"ddp": "safetensors", "fsdp2": "dcp"}[strategy]
    assert (tmp_path / "run" / "report.md").is_file()


def test_fsdp2_killed_and_resumed_matches_straight(single, tiny_root, tmp_path) -> None:
    """Killed after step 1 of stage 1, resumed on 2 processes (sharded weights, optimizer, and the digest of
    the frozen shards checked), on through the stage boundary: the same 4 steps as one process."""
    out = tmp_path / "run"
    torchrun("fsdp2", tiny_root, out, "--set", "runtime.checkpoint_every=1", killed_after=1)
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-00000001"]
    assert load_checkpoint(out / "checkpoints" / "step-00000001").state["frozen"]  # vision_base: rebuilt, checked
    assert [r["step"] for r in read_metrics(out)] == [1]
    torchrun("fsdp2", tiny_root, out, "--set", "runtime.checkpoint_every=1", "--resume")
    assert_matches(single, out, "fsdp2 resumed")

"""Validation during training on two CPU processes (gloo, torchrun): under DDP rank 0 evaluates while the other
waits; under FSDP2 both ranks run the same forwards on their shards. Either way the run logs the evaluations of
one process, keeps the same best checkpoint, and trains like one process (the tolerance of test_equivalence)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kdkit.engine.best import read_best
from kdkit.engine.checkpoint import BEST, load_checkpoint
from kdkit.engine.monitor import read_evaluations, read_metrics
from kdkit.engine.run import run_recipe
from twoproc import RECIPE, free_port
from twoproc import SETTINGS as BASE_SETTINGS

EVAL = {"benchmark": {"kind": "classification", "data": {"kind": "synthetic", "size": 16, "image_size": 32,
                                                          "num_classes": 4, "seed": 5}, "batch_size": 8}, "every": 1}
SETTINGS = [
    *BASE_SETTINGS,
    "runtime.checkpoint_every=10", "eval=" + json.dumps(EVAL),
]


@pytest.fixture(scope="module", autouse=True)
def _needs_classification(registry) -> None:
    if not registry.has("benchmark", "classification"):
        pytest.skip("the classification benchmark plugin is not installed")


@pytest.fixture(scope="module")
def single(tiny_root, tmp_path_factory, registry) -> Path:
    out = tmp_path_factory.mktemp("single") / "run"
    return run_recipe(RECIPE, SETTINGS + [f"runtime.data_root={tiny_root}", f"runtime.output_dir={out}"],
                      registry=registry, tensorboard=False, progress=False, report=False)


def torchrun(strategy: str, tiny_root: Path, out: Path) -> None:
    sets = [a for s in SETTINGS + [f"runtime.distributed.strategy={strategy}"] for a in ("--set", s)]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               "-m", "kdkit", "run", str(RECIPE), "--data-root", str(tiny_root), "--output-dir", str(out), *sets]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_processes_evaluate_like_one(strategy, single, tiny_root, tmp_path) -> None:
    out = tmp_path / "run"
    torchrun(strategy, tiny_root, out)
    ours, theirs = read_evaluations(out), read_evaluations(single)
    assert [r["step"] for r in ours] == [1, 2, 3, 4]
    for a, b in zip(theirs, ours, strict=True):
        assert b["eval"] == pytest.approx(a["eval"], abs=1e-6), (strategy, a["step"])
    for a, b in zip(read_metrics(single), read_metrics(out), strict=True):  # evaluating did not disturb training
        for term, value in a["losses"].items():
            assert b["losses"][term] == pytest.approx(value, rel=1e-4, abs=1e-6), (strategy, a["step"], term)
    best = read_best(out / "checkpoints")
    assert best is not None and best["step"] == read_best(single / "checkpoints")["step"]
    layout = load_checkpoint(out / "checkpoints" / BEST).state["layout"]
    assert layout == {"ddp": "safetensors", "fsdp2": "dcp"}[strategy]

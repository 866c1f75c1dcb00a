"""Engine throughput: the tiny two-teacher recipe on 1 CPU process vs 2 (``torchrun``, DDP, gloo),
and the engine's own overhead per optimizer step (step time minus forward + backward time).

    python -m benchmarks.engine [--steps 12] [--per-device 8]

Each process uses one thread (OMP_NUM_THREADS=1), so 2 processes use 2 cores against 1.
Throughput counts optimizer steps after the first two (warm-up). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from kdkit.engine.monitor import read_metrics
from kdkit.engine.tiny import prepare_tiny

RECIPE = Path(__file__).parents[1] / "recipes" / "tiny" / "timm_two_teachers.yaml"


def settings(steps: int, per_device: int) -> list[str]:
    """Overrides: one stage of ``steps`` steps, global batch 2 x ``per_device``, no mid-run checkpoints."""
    return [
        f"stages.pretrain.max_steps={steps}", "stages.finetune.max_steps=1",
        f"stages.pretrain.batch.global_size={2 * per_device}", f"stages.pretrain.batch.per_device={per_device}",
        f"stages.pretrain.data.size={4 * per_device * steps}", "runtime.checkpoint_every=100000",
    ]


def run(processes: int, root: Path, out: Path, overrides: list[str]) -> list[dict]:
    """One run; returns its metric records."""
    strategy = "ddp" if processes > 1 else "none"
    sets = [a for s in overrides + [f"runtime.distributed.strategy={strategy}"] for a in ("--set", s)]
    launcher = ["-m", "torch.distributed.run", f"--nproc_per_node={processes}"] if processes > 1 else []
    command = [sys.executable, *launcher, "-m", "kdkit", "run", str(RECIPE), "--data-root", str(root),
               "--output-dir", str(out), *sets]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(done.stderr[-4000:])
    return [r for r in read_metrics(out) if r["stage"] == "pretrain"]


def summary(records: list[dict], global_size: int) -> dict[str, float]:
    """Samples/s and per-step times over the records after the first two."""
    steady = records[2:] or records
    step = sum(r["time_step"] for r in steady) / len(steady)
    model = sum(r["time_model"] for r in steady) / len(steady)
    return {"samples_per_s": global_size / step, "step_ms": 1000 * step, "model_ms": 1000 * model,
            "overhead_ms": 1000 * (step - model)}


def main() -> None:
    """Run both configurations and print a table, then one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per run")
    parser.add_argument("--per-device", type=int, default=8, help="samples per forward on one process")
    args = parser.parse_args()
    overrides = settings(args.steps, args.per_device)
    with tempfile.TemporaryDirectory() as tmp:
        root = prepare_tiny(Path(tmp) / "data")
        one = summary(run(1, root, Path(tmp) / "one", overrides), 2 * args.per_device)
        two = summary(run(2, root, Path(tmp) / "two", overrides), 2 * args.per_device)
    print(f"{'processes':>10} {'samples/s':>10} {'step ms':>9} {'model ms':>9} {'overhead ms':>12}")
    for name, row in (("1", one), ("2 (ddp)", two)):
        print(f"{name:>10} {row['samples_per_s']:>10.1f} {row['step_ms']:>9.1f} {row['model_ms']:>9.1f} {row['overhead_ms']:>12.1f}")
    result = {
        "samples_per_s_1proc": round(one["samples_per_s"], 2), "samples_per_s_2proc": round(two["samples_per_s"], 2),
        "speedup_2proc": round(two["samples_per_s"] / one["samples_per_s"], 3),
        "overhead_ms_per_step_1proc": round(one["overhead_ms"], 2),
        "overhead_fraction_1proc": round(one["overhead_ms"] / one["step_ms"], 4),
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

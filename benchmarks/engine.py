"""Engine throughput on CPU: 2 processes (``torchrun``, DDP, gloo, 1 thread each) against both
one-process baselines, and the engine's own overhead per optimizer step.

    python -m benchmarks.engine [--repeats 3] [--steps 6] [--per-device 8] [--width 192] [--depth 4]

The tiny two-teacher recipe is widened (student width, depth and image size) so that the model,
not the per-step bookkeeping, takes the time, as it does in a real run; stage 1 trains adapters,
routers, KD heads and the head, as HAWAII's first stage does. Three configurations run in turn,
``--repeats`` times each (interleaved, so a burst of load on a shared machine hits them alike):

- ``1p x 1t``: one process, one thread (one core);
- ``1p x 2t``: one process, two threads (the whole 2-core machine to one process);
- ``2p x 1t``: two processes of one thread each.

Every run has the same global batch (2 x ``--per-device``: one process accumulates two micro-
batches). Per run, the median step time over the steps after the first two (warm-up) gives
samples/s; the table shows the median over repeats and the spread (min-max). Engine overhead
is step time minus forward + backward time (data, guards, clipping, optimizer, metrics). The
load average is printed: on a machine shared with other work, the numbers are only indicative.
The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kdkit.engine.monitor import read_metrics
from kdkit_plugins.fixtures.timm_two_teachers import write_tiny_timm_two_teachers

RECIPE = Path(__file__).parents[1] / "recipes" / "tiny" / "timm_two_teachers.yaml"
#: name: (processes, threads per process)
CONFIGS = {"1p x 1t": (1, 1), "1p x 2t": (1, 2), "2p x 1t": (2, 1)}
TARGET = 1.7


def settings(args: argparse.Namespace) -> list[str]:
    """Overrides: a wider student, one stage of ``args.steps`` steps, global batch 2 x per device."""
    student = (f"{{img_size: {args.image_size}, patch_size: 8, embed_dim: {args.width}, depth: {args.depth}, "
               f"num_heads: {args.width // 64}, num_classes: 4}}")
    return [
        f"student.model_kwargs={student}",
        f"stages.pretrain.max_steps={args.steps}", "stages.finetune.max_steps=1",
        f"stages.pretrain.batch.global_size={2 * args.per_device}", f"stages.pretrain.batch.per_device={args.per_device}",
        f"stages.pretrain.data.size={4 * args.per_device * args.steps}",
        f"stages.pretrain.data.image_size={args.image_size}", f"stages.finetune.data.image_size={args.image_size}",
        "runtime.checkpoint_every=100000", "runtime.log_every=1",
    ]


def run(processes: int, threads: int, root: Path, out: Path, overrides: list[str]) -> list[dict]:
    """One run in fresh processes; returns its stage-1 metric records (rank 0's timings)."""
    strategy = "ddp" if processes > 1 else "none"
    sets = [a for s in overrides + [f"runtime.distributed.strategy={strategy}"] for a in ("--set", s)]
    launcher = ["-m", "torch.distributed.run", f"--nproc_per_node={processes}"] if processes > 1 else []
    command = [sys.executable, *launcher, "-m", "kdkit", "run", str(RECIPE), "--data-root", str(root),
               "--output-dir", str(out), *sets]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(done.stderr[-4000:])
    return [r for r in read_metrics(out) if r["stage"] == "pretrain"]


def measure(records: list[dict], global_size: int) -> dict[str, float]:
    """Samples/s and per-step times (medians over the steps after the first two)."""
    steady = records[2:] or records
    step = statistics.median(r["time_step"] for r in steady)
    model = statistics.median(r["time_model"] for r in steady)
    overhead = statistics.median(r["time_overhead"] for r in steady)
    return {"samples_per_s": global_size / step, "step_ms": 1000 * step, "model_ms": 1000 * model,
            "overhead_ms": 1000 * overhead}


def summarize(runs: list[dict[str, float]]) -> dict[str, float]:
    """Median over repeats of every measure, and the min-max of samples/s."""
    rates = [r["samples_per_s"] for r in runs]
    summary = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    return {**summary, "samples_per_s_min": min(rates), "samples_per_s_max": max(rates), "repeats": len(runs)}


def main() -> None:
    """Run every configuration ``--repeats`` times, print a table, then one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each configuration")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per run (the first two are warm-up)")
    parser.add_argument("--per-device", type=int, default=8, help="samples per forward on one process")
    parser.add_argument("--width", type=int, default=192, help="student embedding width (a multiple of 64)")
    parser.add_argument("--depth", type=int, default=4, help="student blocks")
    parser.add_argument("--image-size", type=int, default=64, help="image side (patch 8: (side/8)^2 tokens)")
    args = parser.parse_args()
    overrides = settings(args)
    global_size = 2 * args.per_device
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    results: dict[str, list[dict[str, float]]] = {name: [] for name in CONFIGS}
    with tempfile.TemporaryDirectory() as tmp:
        root = write_tiny_timm_two_teachers(Path(tmp) / "data")
        for repeat in range(args.repeats):
            for name, (processes, threads) in CONFIGS.items():
                out = Path(tmp) / f"{name.replace(' ', '')}-{repeat}"
                results[name].append(measure(run(processes, threads, root, out, overrides), global_size))
    rows = {name: summarize(runs) for name, runs in results.items()}
    print(f"student width {args.width}, depth {args.depth}, {(args.image_size // 8) ** 2} tokens/image, "
          f"global batch {global_size}; {args.repeats} repeats; load average {load_before:.2f} -> "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; {time.perf_counter() - started:.0f} s")
    print(f"{'config':>8} {'samples/s':>10} {'(min-max)':>15} {'step ms':>9} {'model ms':>9} {'overhead ms':>12} {'overhead':>9}")
    for name, row in rows.items():
        spread = f"({row['samples_per_s_min']:.1f}-{row['samples_per_s_max']:.1f})"
        print(f"{name:>8} {row['samples_per_s']:>10.1f} {spread:>15} {row['step_ms']:>9.1f} {row['model_ms']:>9.1f} "
              f"{row['overhead_ms']:>12.1f} {row['overhead_ms'] / row['step_ms']:>9.1%}")
    two = rows["2p x 1t"]["samples_per_s"]
    speedups = {"vs_1p1t": two / rows["1p x 1t"]["samples_per_s"], "vs_1p2t": two / rows["1p x 2t"]["samples_per_s"]}
    for name, value in speedups.items():
        print(f"2 processes {name.replace('vs_', 'vs ')}: {value:.2f}x (target >= {TARGET}x: {'met' if value >= TARGET else 'not met'})")
    result = {
        "config": {**vars(args), "global_batch": global_size},
        "runs": {name: {k: round(v, 3) for k, v in row.items()} for name, row in rows.items()},
        "speedup_2proc_vs_1proc_1thread": round(speedups["vs_1p1t"], 3),
        "speedup_2proc_vs_1proc_2threads": round(speedups["vs_1p2t"], 3),
        "target": TARGET, "met_vs_1thread": speedups["vs_1p1t"] >= TARGET, "met_vs_2threads": speedups["vs_1p2t"] >= TARGET,
        "load_average_before": round(load_before, 2), "load_average_after": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

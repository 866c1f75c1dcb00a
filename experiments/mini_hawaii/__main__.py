"""``python -m experiments.mini_hawaii [--quick|--full] [--seeds N] [--output-dir DIR]``: the mini-HAWAII demo.

Writes the synthetic world, trains the three expert teachers (each on its own pool of images), trains
the four ablation rows in the two HAWAII stages through the engine, evaluates them on the held-out
validation and test questions and writes a report (test table, paired intervals over seeds).
Rerunning with the same options reuses finished phases and resumes a half-done run.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

from kdkit.errors import KdkitError

from experiments.mini_hawaii.pipeline import (PROFILES, experts_phase, prepare_output, remember, runs_phase,
                                              world_phase)
from experiments.mini_hawaii.progress import Progress

MAX_SEEDS = 10
MAX_JOBS = 8


def _bounded(name: str, low: int, high: int) -> type:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{name} must be in [{low}, {high}], got {value}")
        return value

    parse.__name__ = name
    return parse  # type: ignore[return-value]


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m experiments.mini_hawaii", description="The mini-HAWAII demo: a "
                                "synthetic visual-QA world, three expert teachers, four ablation rows, a report.")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a tiny smoke profile for tests (1 seed, a few steps)")
    size.add_argument("--full", action="store_true", help="more seeds (5) for tighter intervals")
    p.add_argument("--seeds", type=_bounded("--seeds", 1, MAX_SEEDS), help="seeds per row (default: the profile's)")
    p.add_argument("--train-images", type=_bounded("--train-images", 16, 20000),
                   help="training images of the world (default: the profile's)")
    p.add_argument("--test-images", type=_bounded("--test-images", 8, 5000),
                   help="held-out test images of the world (default: the profile's)")
    p.add_argument("--val-images", type=_bounded("--val-images", 8, 5000),
                   help="held-out validation images, the split settings are chosen on (default: the profile's)")
    p.add_argument("--expert-images", type=_bounded("--expert-images", 16, 50000),
                   help="images of the experts' own training pool (default: the profile's)")
    p.add_argument("--world-seed", type=_bounded("--world-seed", 0, 2**31 - 1), default=0,
                   help="seed of the synthetic world (default 0)")
    p.add_argument("--jobs", type=_bounded("--jobs", 1, MAX_JOBS), default=2,
                   help="worker processes, one thread each (default 2: one per core of a 2-core laptop)")
    p.add_argument("--output-dir", type=Path, default=Path("runs/mini_hawaii"),
                   help="where the data, runs and report go (default runs/mini_hawaii)")
    return p


def main(argv: list[str] | None = None) -> Path:
    """Run the demo; returns the report's path."""
    args = parser().parse_args(argv)
    profile = PROFILES["quick" if args.quick else "full" if args.full else "default"]
    changes = {k: v for k, v in {"seeds": args.seeds, "train_images": args.train_images,
                                 "test_images": args.test_images, "val_images": args.val_images,
                                 "expert_images": args.expert_images, "world_seed": args.world_seed}.items()
               if v is not None}
    profile = dataclasses.replace(profile, **changes)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    output = args.output_dir
    prepare_output(output, profile)
    data_root, runs_dir = (output / "data").resolve(), (output / "runs").resolve()
    progress = Progress()
    progress.line(f"mini-HAWAII ({profile.name}): output in {output}; phases: world, experts, student runs, report")
    files, world = world_phase(data_root, profile)
    progress.line(f"world: {'reused' if world.reused else 'written'} in {world.seconds:.1f} s")
    world = remember(output, world, 1)
    experts, expert_phase = experts_phase(data_root, profile, args.jobs, progress)
    progress.phase_done(expert_phase.seconds)
    expert_phase = remember(output, expert_phase, len(experts))
    summaries, runs = runs_phase(data_root, runs_dir, profile, args.jobs, progress)
    progress.phase_done(runs.seconds)
    runs = remember(output, runs, len(summaries))
    started = time.perf_counter()
    from experiments.mini_hawaii.report import write_report

    report = write_report(output, profile, files, experts, summaries, [world, expert_phase, runs])
    progress.line(f"report: written ({time.perf_counter() - started:.1f} s)")
    return report


def cli() -> None:
    """Entry point: user errors become one clear message and exit code 1."""
    try:
        report = main()
    except KdkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"report: {report}")


if __name__ == "__main__":
    cli()

"""Answers per second of ``kdkit eval``'s generation: batched (16 questions per call) against one
question at a time, on the exported tiny HAWAII student.

    python -m benchmarks.eval [--repeats 3] [--questions 64] [--batch 16] [--max-new-tokens 8]

The tiny HAWAII twin is trained for one step per stage and exported once; the same questions (each
on its own image, so image loading is counted) are then answered through the evaluation runner
(:func:`kdkit.evaluation.runner.answer`, the path ``kdkit eval`` takes) with batch 1 and with
``--batch``, alternating, ``--repeats`` times. The table gives the median and the range (min-max)
of answers per second and of the speed-up measured within each repeat; the load average is printed.
The last line is JSON with at least ``{"batched_speedup": ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from kdkit.evaluation.runner import answer
from kdkit.evaluation.subject import load_subject
from kdkit.interfaces import Question
from kdkit_plugins.fixtures.hawaii import export_tiny_hawaii

TARGET = 3.0


def questions(directory: Path, count: int, max_new_tokens: int) -> list[Question]:
    """``count`` questions, each about its own small random image."""
    rng = np.random.default_rng(0)
    asked = []
    for i in range(count):
        path = directory / f"q{i}.png"
        Image.fromarray(rng.integers(0, 255, size=(24, 32, 3), dtype=np.uint8)).save(path)
        asked.append(Question(str(i), f"what color is shape {i} ?", path, max_new_tokens))
    return asked


def rate(student, asked: list[Question], batch: int) -> float:
    """Answers per second answering ``asked`` ``batch`` at a time."""
    start = time.perf_counter()
    answer(student, asked, batch, lambda pairs: None)
    return len(asked) / (time.perf_counter() - start)


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.eval", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        student = load_subject(export_tiny_hawaii(tmp_path / "twin")).student
        (tmp_path / "images").mkdir()
        asked = questions(tmp_path / "images", args.questions, args.max_new_tokens)
        rate(student, asked[: args.batch], args.batch)  # warm-up
        single, batched, speedups = [], [], []
        for _ in range(args.repeats):
            one = rate(student, asked, 1)
            many = rate(student, asked, args.batch)
            single.append(one)
            batched.append(many)
            speedups.append(many / one)
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {args.questions} questions, "
          f"{args.max_new_tokens} new tokens, {args.threads} thread(s), {args.repeats} repeats")
    print(f"{'':<14}{'median':>10}{'min':>10}{'max':>10}")
    for label, values in ((f"batch 1 (q/s)", single), (f"batch {args.batch} (q/s)", batched), ("speed-up", speedups)):
        print(f"{label:<14}{statistics.median(values):>10.2f}{min(values):>10.2f}{max(values):>10.2f}")
    median = statistics.median(speedups)
    print(f"target: batched >= {TARGET}x one at a time: {'met' if median >= TARGET else 'NOT met'}")
    print(json.dumps({"batched_speedup": round(median, 3), "batched_speedup_min": round(min(speedups), 3),
                      "batched_speedup_max": round(max(speedups), 3), "single_qps": round(statistics.median(single), 2),
                      "batched_qps": round(statistics.median(batched), 2), "batch": args.batch,
                      "repeats": args.repeats, "loadavg_1m": round(load[0], 2)}))


if __name__ == "__main__":
    main()

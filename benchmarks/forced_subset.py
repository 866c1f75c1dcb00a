"""``runtime.forced_teachers`` on the tiny HAWAII twin: step cost and loss curves with the forced
passes of all N_t = 3 teachers per step against a random k = 2 or k = 1 of them.

    python -m benchmarks.forced_subset [--steps 12] [--repeats 3]

Each setting trains the first stage of ``recipes/tiny/hawaii/hawaii_7b.yaml`` for ``--steps``
optimizer steps from the same seed, ``--repeats`` times (the settings interleaved). Printed: the
median step time (``time_step`` of ``metrics.jsonl``, warm-up step excluded) and, per step, the
median over repeats of the logged total loss, ``task`` and ``fine`` (with k < N_t the logged
``fine`` is the unbiased one-step estimate, so its curve is noisier, not lower on average). The
last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

from kdkit.engine.monitor import read_metrics
from kdkit.engine.run import run_recipe
from kdkit_plugins.fixtures.hawaii import write_tiny_hawaii

TWIN = Path(__file__).resolve().parents[1] / "recipes" / "tiny" / "hawaii" / "hawaii_7b.yaml"
SETTINGS = {"all 3": "null", "k=2": "2", "k=1": "1"}


def train(root: Path, out: Path, k: str, steps: int) -> list[dict]:
    overrides = [f"runtime.data_root={root}", f"runtime.output_dir={out}", f"runtime.forced_teachers={k}",
                 f"stages.pretrain.max_steps={steps}", "stages.finetune.max_steps=1",
                 "runtime.checkpoint_every=100000", "runtime.log_every=1"]
    run_dir = run_recipe(TWIN, overrides, tensorboard=False, progress=False, report=False)
    return [r for r in read_metrics(run_dir) if r.get("stage") == "pretrain" and "losses" in r]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[list[dict]]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory(prefix="kdkit-forced-") as tmp:
        root = write_tiny_hawaii(Path(tmp) / "tiny")
        for repeat in range(args.repeats):
            for name, k in SETTINGS.items():
                runs[name].append(train(root, Path(tmp) / f"{name}-{repeat}".replace(" ", "_").replace("=", ""), k, args.steps))
    print(f"tiny HAWAII twin, stage pretrain, {args.steps} steps, {args.repeats} repeats per setting (interleaved), "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    times = {name: [r["time_step"] for rows in rs for r in rows[1:]] for name, rs in runs.items()}
    for name, t in times.items():
        print(f"{name:<6} step {1000 * statistics.median(t):7.1f} ms (min {1000 * min(t):.1f}, max {1000 * max(t):.1f})")
    curves = {}
    for name, rs in runs.items():
        curves[name] = {term: [round(statistics.median(rows[s]["losses" if term != "loss" else "loss"][term]
                                                      if term != "loss" else rows[s]["loss"] for rows in rs), 4)
                               for s in range(args.steps)] for term in ("loss", "task", "fine")}
    print(f"{'step':>4} " + " ".join(f"{name + ' ' + term:>14}" for name in runs for term in ("task", "fine")))
    for s in range(args.steps):
        print(f"{s + 1:>4} " + " ".join(f"{curves[name][term][s]:>14.4f}" for name in runs for term in ("task", "fine")))
    base = statistics.median(times["all 3"])
    print(json.dumps({
        "step_vs_all": {name: round(statistics.median(t) / base, 4) for name, t in times.items()},
        "final_task": {name: c["task"][-1] for name, c in curves.items()},
        "final_fine": {name: c["fine"][-1] for name, c in curves.items()},
        "curves": curves,
    }))


if __name__ == "__main__":
    main()

"""``python -m experiments.digits [--seeds 3] [--quick] [--output-dir DIR]``: the whole experiment and its report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kdkit.errors import KdkitError


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the experiment, write ``report.md``; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m experiments.digits", description=__doc__)
    parser.add_argument("--seeds", type=int, default=3, help="seeds of each student (default 3)")
    parser.add_argument("--quick", action="store_true", help="4 steps per run: checks the pipeline in about a minute")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/digits"), help="default runs/digits")
    parser.add_argument("--teachers-from", type=Path, help="reuse the teachers and student-alone runs of an earlier experiment's output dir")
    parser.add_argument("--distill-set", action="append", default=[], metavar="PATH=VALUE",
                        help="override a value of the distilled recipe only, e.g. losses.fine.weight=1.0 (repeatable)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 is faster on a busy machine)")
    parser.add_argument("--student-epochs", type=float,
                        help="epochs of every student run, alone and distilled (default: the recipes' own)")
    parser.add_argument("--split", choices=("val", "test"), default="val",
                        help="split every run is scored on: val to choose settings (default), test once per reported one")
    parser.add_argument("--distill-recipe", default="digits_3teachers.yaml",
                        help="the distilled recipe, a file in recipes/vision (default digits_3teachers.yaml)")
    parser.add_argument("--notes", default="", help="text appended to the report")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    from experiments.digits.experiment import FULL, QUICK, Budget, run_experiment
    from experiments.digits.report import write_report

    try:
        results = run_experiment(args.output_dir, args.seeds, QUICK if args.quick else (Budget(student_epochs=args.student_epochs) if args.student_epochs else FULL), args.distill_set,
                                 args.teachers_from, log=lambda line: print(line, file=sys.stderr),
                                 split=args.split, distill_recipe=args.distill_recipe)
    except KdkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report = write_report(results, args.output_dir, args.notes)
    print(report.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

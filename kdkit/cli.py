"""The ``kdkit`` command: list plugins, validate recipes, print the schema, run a recipe.

User errors (:class:`kdkit.errors.KdkitError`) print a message on stderr and exit with code 1,
without a traceback; ``--traceback`` shows it anyway.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from kdkit import __version__
from kdkit.errors import KdkitError

#: Filesystem refusals reported as one line (the path and the cause) wherever they escape a command.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR,
                  errno.EEXIST, errno.ENOENT}


def _registry():
    from kdkit.plugins import get_registry

    return get_registry()


def cmd_plugins(args: argparse.Namespace) -> int:
    """List every loaded plugin with the names it offers, by kind."""
    from kdkit.plugins import default_plugins

    loaded = default_plugins()
    registry = loaded.registry
    rows = []
    for info in loaded.plugins:
        offers = {e.kind: [] for e in registry.entries() if e.plugin == info.name}
        for entry in registry.entries():
            if entry.plugin == info.name:
                offers[entry.kind].append(entry.name)
        rows.append({
            "plugin": info.name,
            "module": info.module,
            "distribution": info.distribution,
            "version": info.version,
            "offers": offers,
            "status": "disabled" if info.blocked else ("broken" if info.error else "ok"),
            "error": info.error,
            "unavailable": {e.name: e.factory.install_hint for e in registry.entries()
                            if e.plugin == info.name and e.factory.missing},
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from kdkit.hookspecs import HOOKS

    for kind in registry.kinds:
        names = registry.entries(kind)
        print(f"{HOOKS[kind].removeprefix('kdkit_')} ({len(names)}):")
        for entry in names:
            dist = f"{entry.distribution} {entry.version}" if entry.distribution else "local"
            missing = entry.factory.missing
            note = f"  unavailable: needs {', '.join(missing)} ({entry.factory.install_hint})" if missing else ""
            print(f"  {entry.name:<18} {entry.factory.summary[:60]:<60}  [{entry.plugin}, {dist}]{note}")
    problems = [r for r in rows if r["status"] != "ok"]
    if problems:
        print("not loaded:")
        for row in problems:
            detail = f": {row['error']}" if row["error"] else ""
            print(f"  {row['plugin']} ({row['distribution'] or 'local'}) {row['status']}{detail}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Validate recipes (files, or directories searched recursively); report every problem of every file.

    Fragments (``_name.yaml``) are checked for what they hold. Each stage's trainable list is resolved
    against the student built from its configuration files (no weights read; the KD heads are left
    to ``--build``, and the ``ok`` line says what was not checked). ``--build`` also builds every
    component (teacher checkpoints are read), resolves each stage's trainable list and opens each
    stage's data, as ``kdkit run`` does before its first step.
    """
    from kdkit.recipe import load_recipe
    from kdkit.recipe.check import check_fragment, check_trainable, dry_build, is_foreign, is_fragment, recipe_files

    failed = 0
    for item in recipe_files(args.recipes):
        path = item.path
        try:
            if is_fragment(path):
                print(f"ok: {path} (fragment holding {check_fragment(path, _registry())}; "
                      "complete only in the recipes that extend it)")
                continue
            if not item.named and is_foreign(path):
                print(f"skipped: {path} (not a kdkit recipe: none of its keys is a recipe key)")
                continue
            recipe = load_recipe(path, args.set)
            if recipe.eval is not None:  # build the benchmark: eval.select must be one of its metrics
                from kdkit.engine.validation import prepare_validation

                prepare_validation(recipe, _registry(), str(path))
            if args.build:
                dry_build(recipe, _registry())
                scope = ", built"
            else:  # the student's skeleton (no weights read): what could be checked is named
                scope = f"; {check_trainable(recipe, _registry()).note()}"
        except KdkitError as exc:
            failed += 1
            print(f"error: {exc}" if str(exc).startswith("invalid recipe") else f"error: {path}: {exc}", file=sys.stderr)
            continue
        print(
            f"ok: {path} ({recipe.name}: {len(recipe.teachers)} teachers, "
            f"{len(recipe.losses)} losses, stages {', '.join(recipe.stages)}{scope})"
        )
    return 1 if failed else 0


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the recipe JSON schema (or the Markdown reference)."""
    from kdkit.schema_export import recipe_json_schema, recipe_reference_markdown

    if args.markdown:
        print(recipe_reference_markdown(_registry()), end="")
    else:
        print(json.dumps(recipe_json_schema(_registry()), indent=2))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Train a recipe (single process, or under torchrun)."""
    from kdkit.engine.run import run_recipe

    overrides = list(args.set)
    if args.output_dir:
        overrides.append(f"runtime.output_dir={args.output_dir}")
    if args.data_root:
        overrides.append(f"runtime.data_root={args.data_root}")
    from kdkit.catalog import find_recipe

    run_recipe(find_recipe(args.recipe), overrides, resume=args.resume, break_lock=args.break_lock)
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    """List the recipes shipped with kdkit, or copy one out (with its extends chain, or resolved)."""
    from kdkit.catalog import copy_recipe, recipes_root, shipped_recipes

    if args.action == "list":
        recipes = shipped_recipes()
        width = max((len(name) for name in recipes), default=0)
        for recipe in recipes.values():
            print(f"{recipe.name:<{width}}  {recipe.description}")
        print(f"({len(recipes)} recipes in {recipes_root()}; `kdkit recipes copy NAME DEST` copies one out, "
              "`kdkit run NAME` runs one)", file=sys.stderr)
        return 0
    if args.name is None or args.destination is None:
        raise KdkitError("kdkit recipes copy needs NAME and DEST (e.g. kdkit recipes copy tiny/timm_two_teachers my_recipes)")
    written = copy_recipe(args.name, args.destination, resolve=args.resolve, force=args.force)
    print(f"wrote {written[0]}" + (f" (+ {len(written) - 1} files it extends)" if len(written) > 1 else ""))
    for path in written[1:]:
        print(f"  {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write a run's student for inference (no teachers, no KD heads) and count its parameters."""
    from kdkit.export import export_run

    checkpoint = args.checkpoint
    if args.best:
        from kdkit.evaluation.subject import run_checkpoint

        if checkpoint is not None:
            raise KdkitError("give either --checkpoint or --best, not both")
        checkpoint = run_checkpoint(args.run_dir, "best")
    count = export_run(args.run_dir, args.out_dir, checkpoint=checkpoint, data_root=args.data_root, merge=args.merge)
    print(f"exported to {args.out_dir}")
    print("parameters at inference:")
    for line in count.lines():
        print(f"  {line}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """Answer a question about an image with an exported student."""
    from kdkit.export import load_student

    student = load_student(args.export_dir, device=args.device)
    from kdkit.interfaces import AnswersQuestions

    if not isinstance(student, AnswersQuestions):
        raise KdkitError(f"the student exported in {args.export_dir} does not generate text (no generate/load_image)")
    images = student.load_image(args.image).to(args.device)
    print(student.generate(images, [args.prompt], max_new_tokens=args.max_new_tokens)[0])
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    """Compute every teacher's output for every sample of a stage into a teacher cache (or size it)."""
    from kdkit.cache.command import cache_stage

    overrides = list(args.set)
    if args.data_root:
        overrides.append(f"runtime.data_root={args.data_root}")
    cache_stage(args.recipe, args.stage, args.output, dtype=args.dtype, overrides=overrides,
                shard_size=args.shard_size, batch_size=args.batch_size, estimate=args.estimate)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Score students on benchmarks: resumable predictions, metrics JSON and tables, comparison over seeds."""
    from kdkit.evaluation.command import run_eval

    return run_eval(args)


def cmd_probe(args: argparse.Namespace) -> int:
    """Rank a recipe's teachers by what a linear probe reads from their features beyond the student's, with costs."""
    import yaml

    from kdkit.probe import probe_recipe, table

    overrides = list(args.set)
    if args.data_root:
        overrides.append(f"runtime.data_root={args.data_root}")
    data = yaml.safe_load(args.data) if args.data else None
    if data is not None and not isinstance(data, dict):
        raise KdkitError(f"--data must be a data block such as '{{kind: digits, split: train}}', got {args.data!r}")
    rows = probe_recipe(args.recipe, args.stage, overrides, data, args.label_key, args.limit, args.held_fraction, args.seed)
    if args.json:
        print(json.dumps({"rows": [r.__dict__ for r in rows], "budget_gflops": args.budget_gflops}, indent=2))
    else:
        print("\n".join(table(rows, args.budget_gflops)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``kdkit`` command."""
    parser = argparse.ArgumentParser(prog="kdkit", description="Composable multi-teacher knowledge distillation.")
    parser.add_argument("--version", action="version", version=f"kdkit {__version__}")
    parser.add_argument("--disable", action="append", default=[], metavar="PLUGIN", help="disable a plugin by name (repeatable)")
    parser.add_argument("--traceback", action="store_true", help="show tracebacks of user errors too")
    parser.add_argument("--verbose", action="store_true",
                        help="let third-party libraries show their progress bars and log warnings")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("plugins", help="list loaded plugins and the names they offer", description=cmd_plugins.__doc__)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_plugins)

    overrides = argparse.ArgumentParser(add_help=False)
    overrides.add_argument("--set", action="append", default=[], metavar="PATH=VALUE", help="override a recipe value, e.g. losses.fine.weight=0.25 (repeatable)")

    p = sub.add_parser("validate", parents=[overrides], help="validate recipe files", description=cmd_validate.__doc__)
    p.add_argument("recipes", nargs="+", type=Path, metavar="RECIPE", help="recipe file or directory (searched recursively)")
    p.add_argument("--build", action="store_true", help="also build every component (reads the teacher checkpoints), "
                   "resolve each stage's trainable list and open its data, as `kdkit run` does before step 1")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("schema", help="print the recipe JSON schema", description=cmd_schema.__doc__)
    p.add_argument("--markdown", action="store_true", help="print the Markdown recipe reference instead")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("recipes", help="list or copy the recipes shipped with kdkit", description=cmd_recipes.__doc__)
    p.add_argument("action", choices=["list", "copy"], help="list: names and descriptions; copy: write one out")
    p.add_argument("name", nargs="?", metavar="NAME", help="shipped recipe to copy (as `kdkit recipes list` names it)")
    p.add_argument("destination", nargs="?", type=Path, metavar="DEST", help="directory to copy into")
    p.add_argument("--resolve", action="store_true", help="write one file with the extends chain merged")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.set_defaults(func=cmd_recipes)

    p = sub.add_parser("run", parents=[overrides], help="train a recipe", description=cmd_run.__doc__)
    p.add_argument("recipe", type=Path, metavar="RECIPE", help="recipe file, or a shipped recipe's name")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    p.add_argument("--output-dir", help="run directory (overrides runtime.output_dir)")
    p.add_argument("--data-root", help="directory relative paths resolve against (overrides runtime.data_root)")
    p.add_argument("--break-lock", action="store_true", help="take over the run directory's lock held by a run on "
                   "another host, however recent its heartbeat (check first that run is gone)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("export", help="write a run's student for inference", description=cmd_export.__doc__)
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    p.add_argument("--checkpoint", type=Path, help="checkpoint directory to export (default: the run's latest)")
    p.add_argument("--best", action="store_true", help="export the best checkpoint by the recipe's eval.select metric")
    p.add_argument("--merge", action="store_true", help="fold the adapters into the weights and write a plain model "
                   "(exact for plain LoRA; refused for MoLA)")
    p.add_argument("--data-root", help="directory the recipe's relative paths resolve against (default: the recipe's)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("eval", help="score students on benchmarks", description=cmd_eval.__doc__,
                       epilog="STUDENT is an export directory or a run directory, optionally LABEL=PATH: students "
                       "sharing a label are seeds of one configuration (compared with --baseline).")
    p.add_argument("students", nargs="+", metavar="STUDENT")
    p.add_argument("--benchmark", action="append", required=True, metavar="NAME",
                   help="benchmark plugin to run (repeatable; `kdkit plugins` lists them)")
    p.add_argument("--set", action="append", default=[], metavar="[NAME.]KEY=VALUE",
                   help="benchmark setting, e.g. root=data/pope or pope.splits=[random] (repeatable)")
    p.add_argument("--data-root", default=".", help="directory relative benchmark paths resolve against (default .)")
    p.add_argument("--checkpoint", default="last", help="for run directories: last, best, or a checkpoint directory")
    p.add_argument("--output", type=Path, help="results root (default: eval/ inside each student directory)")
    p.add_argument("--batch-size", type=int, default=16, help="questions per generate call (default 16)")
    p.add_argument("--limit", type=int, help="only the first N questions (a quick look, not comparable)")
    p.add_argument("--baseline", metavar="LABEL", help="compare every other label with this one")
    p.add_argument("--metric", help="metric to compare (default: each benchmark's primary)")
    p.add_argument("--fresh", action="store_true", help="discard earlier predictions instead of resuming")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("cache", parents=[overrides], help="precompute teacher outputs into a teacher cache",
                       description=cmd_cache.__doc__)
    p.add_argument("recipe", type=Path, metavar="RECIPE", help="recipe file, or a shipped recipe's name")
    p.add_argument("--stage", required=True, help="the stage whose data is cached")
    p.add_argument("--output", help="cache directory (default: runtime.teacher_cache)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16", "int8"],
                   help="storage dtype (default fp32: exact)")
    p.add_argument("--shard-size", type=int, default=256, help="samples per shard (default 256)")
    p.add_argument("--batch-size", type=int, default=16, help="samples per teacher forward (default 16)")
    p.add_argument("--estimate", action="store_true", help="print the disk size per teacher and dtype; write nothing")
    p.add_argument("--data-root", help="directory relative paths resolve against (overrides runtime.data_root)")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("probe", parents=[overrides], help="rank a recipe's teachers by linear-probe gain over the student",
                       description=cmd_probe.__doc__)
    p.add_argument("recipe", type=Path, metavar="RECIPE", help="recipe file, or a shipped recipe's name")
    p.add_argument("--stage", help="stage whose data is probed (default: the first)")
    p.add_argument("--data", help="labelled data block to probe on instead, e.g. '{kind: digits, split: train}'")
    p.add_argument("--label-key", default="labels", help="batch key with one class per image (default labels)")
    p.add_argument("--limit", type=int, default=1000, help="samples read (default 1000)")
    p.add_argument("--held-fraction", type=float, default=0.3, help="fraction of each class scored on (default 0.3)")
    p.add_argument("--budget-gflops", type=float, help="teacher GFLOPs per image the recommended set may spend")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the probe (default 0)")
    p.add_argument("--data-root", help="directory relative paths resolve against (overrides runtime.data_root)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("generate", help="answer a question about an image", description=cmd_generate.__doc__)
    p.add_argument("export_dir", type=Path, metavar="OUT_DIR")
    p.add_argument("--image", type=Path, required=True, help="image file")
    p.add_argument("--prompt", required=True, help="the question")
    p.add_argument("--max-new-tokens", type=int, default=64, help="longest answer in tokens (default 64)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.set_defaults(func=cmd_generate)
    return parser


def _close_progress_bars() -> None:
    """End any progress bar a failed command left open, so its error starts on a line of its own."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", None) or ()):
        bar.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kdkit`` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    from kdkit.third_party import quiet_third_party

    quiet_third_party(args.verbose)
    try:
        if args.disable:
            from kdkit import plugins

            plugins.check_disabled_names(args.disable)
            plugins.DISABLED_BY_FLAG.update(args.disable)
            os.environ[plugins.DISABLE_ENV] = ",".join(filter(None, [os.environ.get(plugins.DISABLE_ENV, ""), *args.disable]))
        return int(args.func(args) or 0)
    except KdkitError as exc:
        if args.traceback:
            raise
        _close_progress_bars()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `kdkit schema | head`: the reader has what it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail again
        return 0
    except OSError as exc:
        if args.traceback or exc.errno not in STORAGE_ERRNOS:
            raise
        from kdkit.errors import storage_error

        _close_progress_bars()
        print(f"error: {storage_error('use', exc.filename, exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

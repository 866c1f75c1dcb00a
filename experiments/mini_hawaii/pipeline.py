"""The demo's phases (world, experts, runs), each resumable: finished work leaves a marker and is reused.

Independent jobs (the three experts, the variant x seed runs) run in ``jobs`` fresh worker
processes with one thread each, so two cores do two jobs at once and each job's peak memory is
its own process's.
"""

from __future__ import annotations

import json
import multiprocessing
import resource
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kdkit.errors import KdkitError

from experiments.mini_hawaii.progress import Progress
from experiments.mini_hawaii.variants import VARIANTS, Job, cpu_seconds, run_job
from experiments.mini_hawaii.world import WorldFiles, read_scenes, vocabulary_words, write_world


@dataclass(frozen=True)
class Profile:
    """Sizes and budgets of one demo profile (every variant gets the same budget and seeds)."""

    name: str
    train_images: int
    test_images: int
    seeds: int
    expert_steps: dict[str, int]
    pretrain_steps: int
    finetune_steps: int
    batch: int
    world_seed: int = 0
    val_images: int = 0
    expert_images: int = 0
    eval_splits: tuple[str, ...] = ("val", "test")


#: The settings every profile shares, chosen on the validation split (design log: the docs' Tour page).
_CHOSEN: dict[str, Any] = dict(train_images=1000, val_images=200, test_images=200, expert_images=4000,
                               expert_steps={"clip": 200, "convnext": 600, "eva02": 600},
                               pretrain_steps=32, finetune_steps=600, batch=16)

PROFILES: dict[str, Profile] = {
    "quick": Profile("quick", train_images=96, val_images=24, test_images=24, expert_images=128, seeds=1,
                     expert_steps={"clip": 10, "convnext": 10, "eva02": 10}, pretrain_steps=3,
                     finetune_steps=6, batch=8),
    "default": Profile("default", seeds=2, **_CHOSEN),
    "full": Profile("full", seeds=5, **_CHOSEN),
}

SETTINGS = "demo.json"


@dataclass
class Phase:
    """Wall time and peak resident memory of one phase (the largest process that worked on it)."""

    name: str
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_rss_mib: float = 0.0
    processes: int = 1
    reused: int = 0
    notes: list[str] = field(default_factory=list)


def remember(output: Path, phase: Phase, total: int) -> Phase:
    """Keep the timing of a phase that did work; a phase that only reused work reports its earlier timing."""
    file = output / f"phase_{phase.name.replace(' ', '_')}.json"
    if phase.reused >= total and file.is_file():
        earlier = Phase(**json.loads(file.read_text(encoding="utf-8")))
        earlier.reused = phase.reused
        earlier.notes = [*earlier.notes, "timing of the invocation that did the work (reused now)"]
        return earlier
    if phase.reused:
        phase.notes.append(f"{phase.reused} of {total} reused from an earlier invocation")
    file.write_text(json.dumps(asdict(phase), indent=1) + "\n", encoding="utf-8")
    return phase


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prepare_output(output: Path, profile: Profile) -> None:
    """Create ``output`` (or reuse one written with the SAME settings) and record the settings.

    Raises:
        KdkitError: the directory cannot be written, or it holds a demo run with other settings.
    """
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / ".write-test"
        probe.write_text("", encoding="utf-8")
        probe.unlink()
    except OSError as exc:
        raise KdkitError(f"cannot write to the output directory {output} ({exc.strerror or exc}); "
                         "choose a writable one with --output-dir") from None
    settings = output / SETTINGS
    wanted = json.loads(json.dumps(asdict(profile)))  # tuples as JSON lists, as read back
    if settings.is_file():
        held = json.loads(settings.read_text(encoding="utf-8"))
        if held != wanted:
            differ = sorted(k for k in wanted if held.get(k) != wanted[k])
            raise KdkitError(f"{output} holds a demo run with other settings ({', '.join(differ)} differ); rerun "
                             "with the same options to resume it, or choose another --output-dir")
    elif any(p.name != ".write-test" for p in output.iterdir()):
        raise KdkitError(f"{output} is not empty and holds no demo run ({SETTINGS} is missing); choose another "
                         "--output-dir")
    settings.write_text(json.dumps(wanted, indent=1) + "\n", encoding="utf-8")


def world_phase(data_root: Path, profile: Profile) -> tuple[WorldFiles, Phase]:
    """Write the world once (a ``done`` marker makes a rerun reuse it)."""
    phase = Phase("world")
    started = time.perf_counter()
    marker = data_root / "world" / "done"
    files = WorldFiles(data_root)
    if marker.is_file():
        phase.reused = 1
    else:
        files = write_world(data_root, profile.world_seed, profile.train_images, profile.test_images,
                            val_images=profile.val_images, expert_images=profile.expert_images)
        marker.write_text("ok\n", encoding="utf-8")
    phase.seconds, phase.peak_rss_mib = time.perf_counter() - started, _rss_mib()
    phase.cpu_seconds = cpu_seconds()
    return files, phase


def _pool(jobs: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                               max_tasks_per_child=1)


def _expert_task(name: str, block: dict[str, Any], data_root: str, steps: int, threads: int) -> dict[str, Any]:
    """One expert in a worker process: train, save, measure; writes ``teachers/<name>/expert.json``."""
    import torch

    from experiments.mini_hawaii.experts import checkpoint_dir, load_split, train_expert

    torch.set_num_threads(threads)
    root = Path(data_root)
    files = WorldFiles(root)
    pool = "expert" if read_scenes(files, "expert") else "train"  # the experts' own pool when the world has one
    result = train_expert(name, block, root, load_split(files, pool), load_split(files, "val"), steps=steps)
    result.pool = pool
    record = {**result.as_dict(), "peak_rss_mib": _rss_mib(), "cpu_seconds": cpu_seconds()}
    (root / checkpoint_dir(name) / "expert.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record


def teacher_blocks() -> dict[str, dict[str, Any]]:
    """The demo's teacher blocks (plugin fields only) from ``recipes/demo/_teachers.yaml``."""
    import yaml

    from experiments.mini_hawaii.variants import RECIPES

    teachers = yaml.safe_load((RECIPES / "_teachers.yaml").read_text(encoding="utf-8"))["teachers"]
    return {name: {k: v for k, v in block.items() if k != "align"} for name, block in teachers.items()}


def _run_all(tasks: Iterable[tuple[Callable[..., dict[str, Any]], tuple[Any, ...]]], jobs: int,
             on_done: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Run the tasks in worker processes; ``on_done`` sees each result as it finishes; results in task order."""
    tasks = list(tasks)
    if not tasks:
        return []
    with _pool(jobs) as pool:
        futures = [pool.submit(fn, *args) for fn, args in tasks]
        for future in as_completed(futures):
            if on_done is not None:
                on_done(future.result())
        return [f.result() for f in futures]


def experts_phase(data_root: Path, profile: Profile, jobs: int,
                  progress: Progress | None = None) -> tuple[list[dict[str, Any]], Phase]:
    """Train the experts not trained yet (in parallel); returns every expert's record."""
    from experiments.mini_hawaii.experts import checkpoint_dir

    phase = Phase("experts", processes=jobs)
    started = time.perf_counter()
    blocks = teacher_blocks()
    threads = 1 if jobs > 1 else 2
    todo = [name for name in blocks if not (data_root / checkpoint_dir(name) / "expert.json").is_file()]
    phase.reused = len(blocks) - len(todo)
    if progress is not None:
        progress.phase("experts", len(blocks), phase.reused)
    done = (lambda r: progress.job_done(r["name"], r["seconds"])) if progress is not None else None
    _run_all(((_expert_task, (n, blocks[n], str(data_root), profile.expert_steps[n], threads)) for n in todo), jobs,
             done)
    records = [json.loads((data_root / checkpoint_dir(n) / "expert.json").read_text(encoding="utf-8")) for n in blocks]
    phase.seconds = time.perf_counter() - started
    phase.cpu_seconds = sum(r["cpu_seconds"] for r in records)
    phase.peak_rss_mib = max(r["peak_rss_mib"] for r in records)
    return records, phase


def runs_phase(data_root: Path, runs_dir: Path, profile: Profile, jobs: int,
               progress: Progress | None = None) -> tuple[list[dict[str, Any]], Phase]:
    """Train, export and evaluate every variant x seed (finished jobs are reused, half-done ones resume)."""
    phase = Phase("student runs", processes=jobs)
    started = time.perf_counter()
    words = vocabulary_words()
    threads = 1 if jobs > 1 else 2
    all_jobs = [Job(v, s, data_root, runs_dir, profile.pretrain_steps, profile.finetune_steps, profile.batch,
                    tuple(profile.eval_splits)) for s in range(profile.seeds) for v in VARIANTS]
    finished = {j.name for j in all_jobs if (j.run_dir / "job.json").is_file()}
    phase.reused = len(finished)
    if progress is not None:
        progress.phase("student runs", len(all_jobs), phase.reused, last=True)

    def done(summary: dict[str, Any]) -> None:
        name = f"{summary['variant']}-seed{summary['seed']}"
        if progress is not None and name not in finished:
            progress.job_done(name, summary["train_seconds"] + summary["eval_seconds"],
                              f"validation accuracy {100 * summary['accuracy']['val']['overall']:.1f}%")

    # the longest jobs first, so the two workers end together: a baseline trains no KD term and takes about half
    # as long as a KD row (a stable sort: seed order kept otherwise)
    todo = sorted((j for j in all_jobs if j.name not in finished), key=lambda j: j.variant == "baseline")
    ran = {j.name: summary for j, summary in zip(todo, _run_all(((run_job, (j, words, threads)) for j in todo), jobs, done),
                                                 strict=True)}
    summaries = [json.loads((j.run_dir / "job.json").read_text(encoding="utf-8")) if j.name in finished
                 else ran[j.name] for j in all_jobs]
    phase.seconds = time.perf_counter() - started
    phase.cpu_seconds = sum(s["cpu_seconds"] for s in summaries)
    phase.peak_rss_mib = max(s["peak_rss_mib"] for s in summaries)
    phase.notes = [f"{sum(not s.get('resumed') for s in summaries)} runs", f"{len(VARIANTS)} variants x {profile.seeds} seeds"]
    return summaries, phase

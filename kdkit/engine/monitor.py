"""What a user sees during a run: a progress bar, and the records the run loggers receive
(``metrics.jsonl`` always, TensorBoard by default, others named in the recipe's ``loggers``).

Only rank 0 writes. Each record is one logged optimizer step: the per-term UNWEIGHTED losses, the
weighted total, learning rate, gradient norm, throughput, timings, wall time since the process
started, peak memory and expert usage; or, with an ``eval`` block in the recipe, one evaluation
(its metrics under ``eval``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

METRICS = "metrics.jsonl"


def console(message: str, main: bool = True) -> None:
    """Print ``message`` on rank 0 without breaking the progress bar."""
    if not main:
        return
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def parse_metrics(path: Path, warn: bool = False) -> list[dict[str, Any]]:
    """Every record of a ``metrics.jsonl``; a torn last line (a crash or a full disk mid-write) is
    dropped, with a warning when ``warn``.

    Raises:
        DataError: a line other than the last is not JSON (the file was edited or damaged).
    """
    from kdkit.errors import DataError

    lines = [(n, line) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
    records = []
    for index, (number, line) in enumerate(lines):
        try:
            records.append(json.loads(line))
        except ValueError:
            if index + 1 < len(lines):
                raise DataError(f"{path} line {number} is not a JSON record; repair or remove that line") from None
            if warn:
                console(f"warning: dropped the torn last line {number} of {path} (a run stopped while writing it)")
    return records


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop records after global ``step`` (written by a run that died after its last checkpoint) and
    a torn last line; the file is replaced atomically."""
    path = run_dir / METRICS
    if not path.is_file():
        return
    kept = [record for record in parse_metrics(path, warn=True) if record.get("step", 0) <= step]
    tmp = path.with_name(f".{METRICS}.tmp")
    tmp.write_text("".join(json.dumps(record) + "\n" for record in kept), encoding="utf-8")
    os.replace(tmp, path)


def _records(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / METRICS
    if not path.is_file():
        return []
    return parse_metrics(path)


def append_record(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one JSON line to ``metrics.jsonl``.

    Raises:
        StorageError: the filesystem refused the write (the line may be torn; ``--resume`` drops it).
    """
    from kdkit.errors import storage_error

    try:
        with open(run_dir / METRICS, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
    except OSError as exc:
        raise storage_error("append to", run_dir / METRICS, exc) from None


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Every training record (one per logged optimizer step) of a run's ``metrics.jsonl``."""
    return [r for r in _records(run_dir) if "eval" not in r]


def read_evaluations(run_dir: Path) -> list[dict[str, Any]]:
    """Every evaluation record of a run's ``metrics.jsonl`` (``step``, ``stage``, ``benchmark``, ``eval``...)."""
    return [r for r in _records(run_dir) if "eval" in r]


class Monitor:
    """Progress bar + run loggers for one run (inactive off rank 0).

    Args:
        run_dir: The run directory.
        main: Whether this process writes (rank 0).
        progress: Whether to show a progress bar.
        loggers: The run loggers by name (built on rank 0 only; see :mod:`kdkit.loggers`).
        hyperparameters: The resolved recipe, given to every logger when the run starts.
        resumed: Whether the run continues from a checkpoint.
    """

    def __init__(self, run_dir: Path, main: bool, progress: bool = True, loggers: Mapping[str, Any] | None = None,
                 hyperparameters: Mapping[str, Any] | None = None, resumed: bool = False) -> None:
        self.run_dir = run_dir
        self.main = main
        self.progress = progress and main
        self.bar: Any = None
        self.started = time.monotonic()
        self.loggers = dict(loggers or {}) if main else {}
        for logger in self.loggers.values():
            logger.start(run_dir, dict(hyperparameters or {}), resumed)

    def stage_start(self, stage: str, total: int, start: int) -> None:
        """Open a progress bar for ``stage`` at ``start`` of ``total`` steps."""
        if not self.progress:
            return
        from tqdm import tqdm

        self.close_bar()
        self.bar = tqdm(total=total, initial=start, desc=stage, unit="step", dynamic_ncols=True, file=sys.stderr)

    def advance(self, loss: float | None = None, lr: float | None = None, samples_per_s: float | None = None) -> None:
        """One optimizer step done; refresh the bar's loss, learning rate and throughput when given."""
        if self.bar is None:
            return
        if loss is not None:
            self.bar.set_postfix(loss=f"{loss:.4g}", lr=f"{lr:.3g}", samples_s=f"{samples_per_s:.1f}", refresh=False)
        self.bar.update(1)

    def log(self, record: dict[str, Any]) -> None:
        """Add wall time and peak memory to one training record and hand it to every logger."""
        if not self.main:
            return
        record = {**record, "wall_time_s": time.monotonic() - self.started, "peak_memory_mb": peak_memory_mb()}
        for logger in self.loggers.values():
            logger.log(record)

    def log_eval(self, record: dict[str, Any]) -> None:
        """Hand one evaluation record to every logger (TensorBoard shows it as ``eval/<metric>``)."""
        if not self.main:
            return
        for logger in self.loggers.values():
            logger.log_eval(record)

    def close_bar(self) -> None:
        """Close the current progress bar."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        """Close the bar and every logger."""
        self.close_bar()
        loggers, self.loggers = self.loggers, {}
        for logger in loggers.values():
            logger.close()


def peak_memory_mb() -> float:
    """Peak memory of this process so far in MiB: CUDA memory allocated by torch when CUDA is in use,
    else the host's peak resident set size."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10

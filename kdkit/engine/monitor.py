"""What a user sees during a run: a progress bar, ``metrics.jsonl`` and TensorBoard events.

Only rank 0 writes. Each JSONL record is one logged optimizer step: the per-term UNWEIGHTED
losses, the weighted total, learning rate, gradient norm, throughput, timings and expert usage;
or, with an ``eval`` block in the recipe, one evaluation (its metrics under ``eval``).
"""

from __future__ import annotations

import json
import os
import sys
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
    """Progress bar + JSONL + TensorBoard for one run (inactive off rank 0).

    Args:
        run_dir: The run directory.
        main: Whether this process writes (rank 0).
        tensorboard: Whether to write TensorBoard events under ``run_dir/tensorboard``.
        progress: Whether to show a progress bar.
    """

    def __init__(self, run_dir: Path, main: bool, tensorboard: bool = True, progress: bool = True) -> None:
        self.run_dir = run_dir
        self.main = main
        self.progress = progress and main
        self.bar: Any = None
        self.writer: Any = None
        if main and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional at run time: JSONL still has everything
                console("tensorboard is not installed; logging to metrics.jsonl only")
            else:
                self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

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
        """Append one record to ``metrics.jsonl`` and mirror its numbers to TensorBoard."""
        if not self.main:
            return
        append_record(self.run_dir, record)
        if self.writer is None:
            return
        step = record["step"]
        for key, value in record.items():
            if isinstance(value, (int, float)) and key != "step":
                self.writer.add_scalar(key, value, step)
        for name, value in record.get("losses", {}).items():
            self.writer.add_scalar(f"loss/{name}", value, step)
        for group, blocks in record.get("routing", {}).items():
            for block, fractions in blocks.items():
                for expert, fraction in enumerate(fractions):
                    self.writer.add_scalar(f"routing/{group}/{block}/expert{expert}", fraction, step)

    def log_eval(self, record: dict[str, Any]) -> None:
        """Append one evaluation record to ``metrics.jsonl``; its metrics go to TensorBoard as ``eval/<metric>``."""
        if not self.main:
            return
        append_record(self.run_dir, record)
        if self.writer is None:
            return
        for name, value in record["eval"].items():
            self.writer.add_scalar(f"eval/{name}", value, record["step"])
        self.writer.flush()

    def close_bar(self) -> None:
        """Close the current progress bar."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        """Close the bar and flush TensorBoard."""
        self.close_bar()
        if self.writer is not None:
            self.writer.close()
            self.writer = None

"""The run's record of skipped LLaVA records: one JSON line per bad record in ``bad_records.jsonl``.

Build-time findings are the same on every process and are written by rank 0 only; an image found
corrupt while reading is written by the process (and worker) that read it, with its rank and pid.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from kdkit_plugins.data._records import BadRecord

logger = logging.getLogger(__name__)

FILE_NAME = "bad_records.jsonl"


def process_rank() -> int:
    """This process's rank: from ``torch.distributed`` when initialised, else the ``RANK`` variable, else 0."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


class BadRecordLog:
    """Appends bad records to ``<run_dir>/bad_records.jsonl`` (nothing is written without a run dir).

    Args:
        run_dir: The run directory, or None.
        source: The dataset file the records come from (named in every line).
    """

    def __init__(self, run_dir: Path | None, source: Path) -> None:
        self.path = None if run_dir is None else Path(run_dir) / FILE_NAME
        self.source = source

    def _append(self, lines: list[dict]) -> None:
        if self.path is None or not lines:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(line) + "\n" for line in lines)
        with open(self.path, "a", encoding="utf-8") as handle:  # one write per call: lines stay whole
            handle.write(text)

    def skipped(self, bad: Sequence[BadRecord], total: int) -> None:
        """Log a one-line summary of the records dropped at build time and (on rank 0) write them."""
        if not bad:
            return
        where = f"; ids and reasons in {self.path}" if self.path is not None else ""
        logger.warning("llava_json: skipped %d of %d records of %s (on_bad_record: skip)%s",
                       len(bad), total, self.source.name, where)
        if process_rank() == 0:
            self._append([{"file": self.source.name, "phase": "build", **b.as_json()} for b in bad])

    def unreadable(self, bad: BadRecord, substitute: int) -> None:
        """Log and write a record whose image failed to decode, and the record read in its place."""
        logger.warning("llava_json: record %d (id %r) of %s skipped: %s; record %d read instead",
                       bad.index, bad.id, self.source.name, bad.reason, substitute)
        self._append([{"file": self.source.name, "phase": "read", **bad.as_json(), "substitute": substitute,
                       "rank": process_rank(), "pid": os.getpid()}])

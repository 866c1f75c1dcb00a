"""Predictions written as JSON lines while they are generated, so an interrupted evaluation resumes.

One line per answered question: ``{"question_id": ..., "prediction": ...}``. Lines are appended
and flushed to disk batch by batch; on reopening, every complete line is kept and a torn last line
(the process died while writing it) is dropped with a warning.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path

from kdkit.errors import DataError


class PredictionStore:
    """Answers by question id, backed by an append-only JSONL file.

    Args:
        path: The JSONL file (created with its parent directory when missing).
        known_ids: Every question id of the benchmark: a line naming another id is an error (the file
            belongs to another benchmark or another version of its files).
        benchmark: The benchmark's name, for messages.

    Raises:
        DataError: a line that is not a prediction record, or a question id the benchmark does not have.
    """

    def __init__(self, path: Path, known_ids: Collection[str], benchmark: str) -> None:
        self.path = Path(path)
        self.benchmark = benchmark
        self.answers: dict[str, str] = {}
        if self.path.exists():
            self._read(set(known_ids))

    def _read(self, known: set[str]) -> None:
        text = self.path.read_text(encoding="utf-8")
        lines = text.split("\n")
        torn = lines[-1] if lines and lines[-1] else ""
        for number, line in enumerate(lines[:-1], 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                qid, answer = str(record["question_id"]), record["prediction"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DataError(f"{self.path} line {number} is not a prediction record "
                                '({"question_id": ..., "prediction": ...}); remove the file to start over') from None
            if qid not in known:
                raise DataError(f"{self.path} line {number}: question id {qid!r} is not a question of {self.benchmark} "
                                "(predictions of another benchmark or of other files?); remove the file or choose "
                                "another --output")
            self.answers[qid] = str(answer)
        if torn:
            warnings.warn(f"{self.path}: dropped a torn last line (an interrupted write); that question is asked again",
                          stacklevel=2)
            with open(self.path, "r+", encoding="utf-8") as handle:  # keep only complete lines
                handle.truncate(len(text.encode("utf-8")) - len(torn.encode("utf-8")))

    def __contains__(self, question_id: str) -> bool:
        return question_id in self.answers

    def __len__(self) -> int:
        return len(self.answers)

    def __iter__(self) -> Iterator[str]:
        return iter(self.answers)

    def append(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Write ``(question_id, prediction)`` pairs and make them durable before returning."""
        pairs = list(pairs)
        if not pairs:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            for qid, answer in pairs:
                handle.write(json.dumps({"question_id": qid, "prediction": answer}, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.answers.update(pairs)

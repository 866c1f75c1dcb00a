"""Reading a benchmark's released files with errors that name the file, record and field.

Benchmark plugins (built-in or third-party) read their official files through these helpers, so
a missing file, a file of another benchmark's format or a malformed record is reported the same
way everywhere: one line naming the benchmark, the file and what was expected.
"""

from __future__ import annotations

import base64
import binascii
import csv
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kdkit.errors import DataError


class BenchmarkFileError(DataError):
    """A benchmark file is missing, unreadable, or not in the benchmark's released format."""


def require_file(benchmark: str, path: Path, what: str) -> Path:
    """``path`` if it is a file; else an error naming the benchmark, ``what`` it should be, and the path."""
    path = Path(path)
    if not path.is_file():
        state = "is a directory" if path.is_dir() else "does not exist"
        raise BenchmarkFileError(f"{benchmark}: {what} {path} {state}")
    return path


def require_dir(benchmark: str, path: Path, what: str) -> Path:
    """``path`` if it is a directory; else an error naming the benchmark, ``what`` it should be, and the path."""
    path = Path(path)
    if not path.is_dir():
        state = "is a file" if path.exists() else "does not exist"
        raise BenchmarkFileError(f"{benchmark}: {what} {path} {state}")
    return path


def read_json(benchmark: str, path: Path, what: str) -> Any:
    """The JSON value of a file (its decoding error named with the line)."""
    require_file(benchmark, path, what)
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise BenchmarkFileError(f"{benchmark}: {what} {path} is not UTF-8 text ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise BenchmarkFileError(f"{benchmark}: {what} {path} is not JSON (line {exc.lineno}: {exc.msg})") from None


def read_jsonl(benchmark: str, path: Path, what: str) -> list[dict[str, Any]]:
    """Every record of a JSON-lines file (blank lines skipped); a bad line is named by number."""
    require_file(benchmark, path, what)
    records = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise BenchmarkFileError(f"{benchmark}: {what} {path} is not UTF-8 text ({exc.reason})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BenchmarkFileError(f"{benchmark}: {what} {path} line {number} is not JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise BenchmarkFileError(f"{benchmark}: {what} {path} line {number} is a {type(record).__name__}, "
                                     "expected a JSON object")
        records.append(record)
    return records


def read_tsv(benchmark: str, path: Path, what: str, required: Sequence[str] = ()) -> list[dict[str, str]]:
    """Rows of a tab-separated file with a header (large fields such as base64 images allowed)."""
    require_file(benchmark, path, what)
    csv.field_size_limit(sys.maxsize)
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t")
            header = reader.fieldnames or []
            missing = [c for c in required if c not in header]
            if missing:
                raise BenchmarkFileError(f"{benchmark}: {what} {path} has no column {', '.join(map(repr, missing))} "
                                         f"(columns: {', '.join(header) or 'none'})")
            return [dict(row) for row in reader]
    except UnicodeDecodeError as exc:
        raise BenchmarkFileError(f"{benchmark}: {what} {path} is not UTF-8 text ({exc.reason})") from None


def expect_list(benchmark: str, path: Path, value: Any, what: str) -> list[Any]:
    """``value`` if it is a JSON list; else an error saying what the file holds instead."""
    if not isinstance(value, list):
        raise BenchmarkFileError(f"{benchmark}: {path} holds a JSON {type(value).__name__}, expected a list of {what}")
    return value


def expect_mapping(benchmark: str, path: Path, value: Any, what: str) -> dict[str, Any]:
    """``value`` if it is a JSON object; else an error saying what the file holds instead."""
    if not isinstance(value, dict):
        raise BenchmarkFileError(f"{benchmark}: {path} holds a JSON {type(value).__name__}, expected an object of {what}")
    return value


def require_fields(benchmark: str, path: Path, record: Mapping[str, Any], fields: Iterable[str], where: str) -> None:
    """Every one of ``fields`` is in ``record``; else an error naming the record and the missing fields
    (the usual sign of a file of another benchmark's format)."""
    missing = [f for f in fields if f not in record]
    if missing:
        present = ", ".join(sorted(record)[:8]) or "none"
        raise BenchmarkFileError(f"{benchmark}: {path} {where} has no field {', '.join(map(repr, missing))} "
                                 f"(fields: {present}); is this the benchmark's released file?")


def decode_base64_image(benchmark: str, path: Path, value: str, where: str) -> bytes:
    """The bytes of a base64-encoded image field (MMBench's TSV release)."""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BenchmarkFileError(f"{benchmark}: {path} {where}: image field is not base64 ({exc})") from None

"""Field checks for the JSON records of the short-answer benchmarks (TextVQA, VizWiz, GQA).

Each helper returns the field's value when it has the released type, else raises
:class:`~kdkit.evaluation.files.BenchmarkFileError` with one line naming the benchmark, the file,
the record and the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kdkit.evaluation.files import BenchmarkFileError


def _kind(value: Any) -> str:
    """How a JSON value is described in error messages."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return "an empty string" if not value.strip() else "a string"
    return {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__)


def field_error(benchmark: str, path: Path, where: str, field: str, value: Any, expected: str) -> BenchmarkFileError:
    """The error for ``field`` of the record ``where`` holding ``value`` instead of ``expected``."""
    return BenchmarkFileError(f"{benchmark}: {path} {where}: field {field!r} is {_kind(value)}, expected {expected}")


def record_object(benchmark: str, path: Path, value: Any, where: str) -> dict[str, Any]:
    """``value`` if it is a JSON object (one record); else an error naming the record."""
    if not isinstance(value, dict):
        raise BenchmarkFileError(f"{benchmark}: {path} {where} is {_kind(value)}, expected an object")
    return value


def text(benchmark: str, path: Path, record: Mapping[str, Any], field: str, where: str) -> str:
    """A non-empty string field."""
    value = record[field]
    if not isinstance(value, str) or not value.strip():
        raise field_error(benchmark, path, where, field, value, "a non-empty string")
    return value


def identifier(benchmark: str, path: Path, record: Mapping[str, Any], field: str, where: str) -> str:
    """An id field (a JSON number or non-empty string) as a string."""
    value = record[field]
    if isinstance(value, bool) or not isinstance(value, (int, str)) or (isinstance(value, str) and not value.strip()):
        raise field_error(benchmark, path, where, field, value, "a question id (number or string)")
    return str(value)


def strings(benchmark: str, path: Path, record: Mapping[str, Any], field: str, where: str,
            allow_empty: bool = False) -> list[str]:
    """A list of strings (non-empty list unless ``allow_empty``)."""
    value = record[field]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or (not value and not allow_empty):
        expected = "a list of strings" + ("" if allow_empty else " (at least one)")
        raise field_error(benchmark, path, where, field, value, expected)
    return value


def flag(benchmark: str, path: Path, record: Mapping[str, Any], field: str, where: str) -> bool:
    """A 0/1 (or boolean) field."""
    value = record[field]
    if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
        return bool(value)
    raise field_error(benchmark, path, where, field, value, "0 or 1")


def duplicate(benchmark: str, path: Path, field: str, value: str) -> BenchmarkFileError:
    """The error for a second record with the same id ``value`` in ``field``."""
    return BenchmarkFileError(f"{benchmark}: {path} has two records with {field} {value!r}")


def require_questions(benchmark: str, path: Path, count: int) -> None:
    """The file holds at least one question."""
    if count == 0:
        raise BenchmarkFileError(f"{benchmark}: {path} holds no questions")

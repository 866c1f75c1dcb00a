"""Exceptions kdkit raises for user errors (bad recipes, unknown plugins, broken files).

The CLI prints a :class:`KdkitError` as a message on stderr with exit code 1 and no traceback;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


class KdkitError(Exception):
    """Base class of every error caused by user input rather than by a bug in kdkit."""


class PluginError(KdkitError):
    """A plugin is malformed: bad hook name, duplicate name, bad factory."""


class UnknownPluginError(KdkitError):
    """A recipe or call names a plugin that no loaded plugin offers."""


class CheckpointError(KdkitError):
    """A checkpoint is missing, corrupt, unsafe to read or does not fit the model."""


class FilesNotFound(CheckpointError):
    """A model file or directory the recipe names does not exist (here: it may exist where the run runs)."""


class NonFiniteError(KdkitError):
    """A loss term or the features it reads hold NaN or inf (the engine stops or skips the step)."""


class DataError(KdkitError):
    """A dataset file, record or image is missing or malformed."""


class StorageError(KdkitError):
    """The filesystem refused a read or write (disk full, read-only, a file where a directory belongs...)."""


def storage_error(what: str, path: object, exc: OSError) -> StorageError:
    """``cannot append to runs/x/metrics.jsonl: No space left on device (ENOSPC)`` from an ``OSError``
    (``path`` is named; the ``OSError``'s own file when ``path`` is None)."""
    import errno

    code = f" ({errno.errorcode[exc.errno]})" if exc.errno in errno.errorcode else ""
    culprit = path if path is not None else exc.filename
    return StorageError(f"cannot {what} {culprit}: {exc.strerror or exc}{code}")


@dataclass(frozen=True)
class Problem:
    """One validation problem: where it is (dotted path) and what is wrong."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class RecipeError(KdkitError):
    """A recipe is invalid. Holds EVERY problem found, each with its path."""

    def __init__(self, problems: Sequence[Problem] | Problem, source: str | None = None) -> None:
        self.problems: list[Problem] = [problems] if isinstance(problems, Problem) else list(problems)
        self.source = source
        super().__init__(self._render())

    def _render(self) -> str:
        head = f"invalid recipe {self.source}" if self.source else "invalid recipe"
        n = len(self.problems)
        if n == 1:  # one problem, one line
            return f"{head}: {self.problems[0]}"
        lines = [f"{head} ({n} problem{'s' if n != 1 else ''}):"]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name most similar to ``name`` (for "did you mean" hints), or None."""
    import difflib

    matches = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return matches[0] if matches else None


def unknown_name_message(what: str, name: str, known: Iterable[str]) -> str:
    """``unknown teacher 'open_clp' (known: a, b, c); did you mean 'open_clip'?``"""
    known = sorted(known)
    listed = ", ".join(known) if known else "none registered"
    msg = f"unknown {what} {name!r} (known: {listed})"
    hint = closest(name, known)
    return f"{msg}; did you mean {hint!r}?" if hint else msg

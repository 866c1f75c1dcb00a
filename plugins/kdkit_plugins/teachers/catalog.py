"""Model-name checks shared by the teacher plugins: unknown names list the closest known ones."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from kdkit.errors import KdkitError


def require_known(teacher: str, library: str, name: str, known: Iterable[str]) -> None:
    """Raise :class:`KdkitError` unless ``name`` is in ``known``, suggesting the closest names."""
    known = list(known)
    if name in known:
        return
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.4)
    hint = f"; closest: {', '.join(close)}" if close else f"; {len(known)} names are known"
    raise KdkitError(f"teacher {teacher!r}: unknown {library} model {name!r}{hint}")

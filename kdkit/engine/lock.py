"""The run directory's lock: one live run per directory, a dead run's lock taken over.

``run.lock`` holds the owner's host, pid and start time as JSON. It is created atomically
(``O_CREAT | O_EXCL``) by rank 0 before anything is written and removed when the run ends,
whether it finished or failed. A lock whose process no longer runs on this host is stale (the
run was killed) and is taken over with a warning; a lock held by a live process, or by another
host (whose processes cannot be checked from here), is refused.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from kdkit.errors import KdkitError

LOCK_FILE = "run.lock"


class RunLocked(KdkitError):
    """Another live run holds the run directory."""


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


def read_lock(run_dir: Path) -> dict[str, Any] | None:
    """The lock's owner (``host``, ``pid``, ``started``), ``{}`` for an unreadable lock, or None."""
    path = run_dir / LOCK_FILE
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):
        return {}  # torn by a kill during its write: nobody can own it


def lock_holder(run_dir: Path) -> str | None:
    """``"pid P on host H (since T)"`` of a live owner of ``run_dir``, or None when free or stale."""
    owner = read_lock(run_dir)
    if not owner:
        return None
    host, pid = owner.get("host"), owner.get("pid")
    since = f" since {owner['started']}" if owner.get("started") else ""
    if host != socket.gethostname():
        return f"pid {pid} on host {host}{since}"
    if isinstance(pid, int) and pid != os.getpid() and _alive(pid):
        return f"pid {pid} on this host ({host}){since}"
    return None


def acquire(run_dir: Path) -> Path:
    """Take ``run_dir``'s lock for this process (taking over a stale one); returns the lock file.

    Raises:
        RunLocked: a live process (or another host) holds it.
    """
    path = run_dir / LOCK_FILE
    holder = lock_holder(run_dir)
    if holder is not None:
        raise RunLocked(f"run directory {run_dir} is in use by another kdkit run ({holder}); wait for it to end or "
                        f"stop it (if that run is dead on another host, delete {path})")
    owner = read_lock(run_dir)
    if owner is not None:
        from kdkit.engine.monitor import console

        console(f"taking over the stale lock {path} (pid {owner.get('pid')} on {owner.get('host')} no longer runs)")
        path.unlink(missing_ok=True)
    record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:  # another process took it between our check and now
        raise RunLocked(f"run directory {run_dir} is in use by another kdkit run ({lock_holder(run_dir) or 'just started'})") from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(record, handle)
    return path


def release(path: Path | None) -> None:
    """Remove the lock at ``path`` if this process still owns it."""
    if path is None:
        return
    owner = read_lock(path.parent)
    if owner and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)

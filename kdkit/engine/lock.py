"""The run directory's lock: one live run per directory, a dead run's lock taken over.

``run.lock`` holds the owner's host, pid, start time and *heartbeat* (seconds since the epoch, on
the owner's clock) as JSON. It is created atomically (``O_CREAT | O_EXCL``) by rank 0 before
anything is written and removed when the run ends, whether it finished or failed. While the run
lives, a daemon thread rewrites the heartbeat every ``timeout / 4`` seconds (at most every
minute): a thread, not the step loop, because a run also spends long stretches outside its steps
(building teachers, validation, writing a checkpoint) and must not look dead meanwhile.

A lock is *stale*, and taken over with one warning line, when its process no longer runs on this
host, or when it belongs to another host (whose processes cannot be checked from here) and its
heartbeat is older than ``runtime.lock_timeout``. Any other lock is refused, naming its owner and
its heartbeat's age; ``kdkit run --break-lock`` takes over another host's lock at once (never one
whose process visibly runs on this host). Hosts are assumed to keep their clocks in step (NTP):
an offset counts against the timeout.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from kdkit.errors import KdkitError

LOCK_FILE = "run.lock"
#: Seconds without a heartbeat after which another host's lock is stale (``runtime.lock_timeout``'s default).
DEFAULT_TIMEOUT = 600.0


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
    """The lock's owner (``host``, ``pid``, ``started``, ``heartbeat``), ``{}`` for an unreadable lock, or None."""
    path = run_dir / LOCK_FILE
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):
        return {}  # torn by a kill during its write: nobody can own it


def heartbeat_age(owner: dict[str, Any], path: Path) -> float:
    """Seconds since the owner's last heartbeat (the file's modification time for a lock without one)."""
    beat = owner.get("heartbeat")
    if not isinstance(beat, (int, float)):
        try:
            beat = path.stat().st_mtime
        except OSError:
            return float("inf")
    return max(0.0, time.time() - float(beat))


def _ours(owner: dict[str, Any] | None) -> bool:
    return bool(owner) and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname()  # type: ignore[union-attr]


def _owner_words(owner: dict[str, Any], age: float | None = None) -> str:
    """``"pid P on host H since T, last heartbeat N s ago"``."""
    since = f" since {owner['started']}" if owner.get("started") else ""
    beat = f", last heartbeat {age:.0f} s ago" if age is not None else ""
    return f"pid {owner.get('pid')} on host {owner.get('host')}{since}{beat}"


def lock_holder(run_dir: Path, timeout: float = DEFAULT_TIMEOUT) -> str | None:
    """Words naming a live owner of ``run_dir`` (``"pid P on host H since T, last heartbeat N s ago"``), or
    None when the directory is free or its lock stale (see the module docstring)."""
    owner = read_lock(run_dir)
    if not owner or _ours(owner):
        return None
    host, pid = owner.get("host"), owner.get("pid")
    if host != socket.gethostname():
        age = heartbeat_age(owner, run_dir / LOCK_FILE)
        return _owner_words(owner, age) if age <= timeout else None
    if isinstance(pid, int) and _alive(pid):
        since = f" since {owner['started']}" if owner.get("started") else ""
        return f"pid {pid} on this host ({host}){since}"
    return None


def _refusal(run_dir: Path, owner: dict[str, Any], holder: str, timeout: float) -> RunLocked:
    prefix = f"run directory {run_dir} is in use by another kdkit run ({holder})"
    if owner.get("host") == socket.gethostname():
        return RunLocked(f"{prefix}; wait for it to end or stop it")
    return RunLocked(f"{prefix}; wait for it to end or stop it (if it died, its lock is taken over once its "
                     f"heartbeat is older than runtime.lock_timeout, {timeout:g} s; `kdkit run --break-lock` "
                     "takes it over now)")


def _takeover_words(path: Path, owner: dict[str, Any], timeout: float, broken: bool) -> str:
    """The one warning line of a takeover."""
    if not owner:
        return f"taking over the unreadable lock {path} (torn by a kill during its write)"
    if owner.get("host") == socket.gethostname():
        return f"taking over the stale lock {path} (pid {owner.get('pid')} on {owner.get('host')} no longer runs)"
    age = heartbeat_age(owner, path)
    if broken:
        return f"breaking the lock {path} of {_owner_words(owner, age)}, as --break-lock asks"
    return (f"taking over the stale lock {path} of {_owner_words(owner, age)} "
            f"(over runtime.lock_timeout, {timeout:g} s)")


def acquire(run_dir: Path, timeout: float = DEFAULT_TIMEOUT, break_lock: bool = False,
            heartbeat: bool = True) -> RunLock:
    """Take ``run_dir``'s lock for this process (taking over a stale one) and start its heartbeat.

    Args:
        timeout: ``runtime.lock_timeout``: seconds without a heartbeat after which another host's lock is stale.
        break_lock: Take over another host's lock whatever its heartbeat (``kdkit run --break-lock``).
        heartbeat: Start the thread that refreshes the heartbeat (off in tests that drive it by hand).

    Raises:
        RunLocked: a live process on this host holds it, or another host with a fresh heartbeat (unless ``break_lock``).
    """
    path = run_dir / LOCK_FILE
    owner = read_lock(run_dir)
    holder = lock_holder(run_dir, timeout)
    if holder is not None and owner and (not break_lock or owner.get("host") == socket.gethostname()):
        raise _refusal(run_dir, owner, holder, timeout)
    if owner is not None and not _ours(owner):
        from kdkit.engine.monitor import console

        console(_takeover_words(path, owner, timeout, broken=holder is not None))
        path.unlink(missing_ok=True)
    record = _record(time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:  # another process took it between our check and now
        raise RunLocked(f"run directory {run_dir} is in use by another kdkit run "
                        f"({lock_holder(run_dir, timeout) or 'just started'})") from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(record, handle)
    held = RunLock(path, record["started"], interval=min(60.0, timeout / 4))
    if heartbeat:
        held.start()
    return held


def _record(started: str) -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": started, "heartbeat": time.time()}


class RunLock:
    """A held lock and its heartbeat thread.

    Args:
        path: The lock file.
        started: Its ``started`` field (kept by every refresh).
        interval: Seconds between two heartbeats.
    """

    def __init__(self, path: Path, started: str, interval: float) -> None:
        self.path, self.started, self.interval = path, started, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = 0  # refreshes that failed (only the first one warns)
        self.lost = False  # another process took the lock over: no more heartbeats

    def start(self) -> None:
        """Refresh the heartbeat every ``interval`` seconds in a daemon thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._beat, name="kdkit-lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval) and not self.lost:
            self.refresh()

    def refresh(self) -> None:
        """Rewrite the lock with a new heartbeat (atomically). A filesystem error warns once and never
        raises: training goes on, and the lock stays valid while its last heartbeat is young enough."""
        from kdkit.engine.monitor import console

        owner = read_lock(self.path.parent)
        if owner is not None and owner != {} and not _ours(owner):
            self.lost = True
            console(f"warning: the lock {self.path} was taken over by {_owner_words(owner)}; this run no longer "
                    "holds its directory (two runs now write into it: stop one)")
            return
        temporary = self.path.with_name(f".{LOCK_FILE}.{os.getpid()}.tmp")
        try:
            temporary.write_text(json.dumps(_record(self.started)), encoding="utf-8")
            os.replace(temporary, self.path)
        except OSError as exc:
            self.failures += 1
            if self.failures == 1:
                console(f"warning: cannot refresh the heartbeat of {self.path} ({exc.strerror or exc}); training goes "
                        "on, and another host may take the directory over once the heartbeat is older than "
                        "runtime.lock_timeout")
            try:
                temporary.unlink(missing_ok=True)
            except OSError:
                pass

    def stop(self) -> None:
        """Stop the heartbeat thread (waits for a refresh in progress)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def release(held: RunLock | None) -> None:
    """Stop the heartbeat and remove the lock if this process still owns it."""
    if held is None:
        return
    held.stop()
    if _ours(read_lock(held.path.parent)):
        held.path.unlink(missing_ok=True)

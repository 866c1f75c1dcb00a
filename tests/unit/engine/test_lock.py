"""The run directory's lock: owners on this host checked by pid, owners on another host by their heartbeat."""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pydantic
import pytest

from kdkit.engine import lock
from kdkit.recipe.schema import Runtime

STARTED = "2026-01-01T00:00:00+0000"


def write_lock(run_dir: Path, host: str = "node7", pid: int = 4242, age: float | None = 0.0) -> Path:
    """A lock written as ``host`` would, its heartbeat ``age`` seconds ago (None: an older lock without one)."""
    record = {"host": host, "pid": pid, "started": STARTED}
    if age is not None:
        record["heartbeat"] = time.time() - age
    path = run_dir / lock.LOCK_FILE
    path.write_text(json.dumps(record), encoding="utf-8")
    return path


def owner(run_dir: Path) -> dict:
    return json.loads((run_dir / lock.LOCK_FILE).read_text(encoding="utf-8"))


def test_another_hosts_fresh_lock_is_refused_with_its_heartbeat(tmp_path: Path, capsys) -> None:
    write_lock(tmp_path, age=42)
    with pytest.raises(lock.RunLocked) as caught:
        lock.acquire(tmp_path, timeout=600, heartbeat=False)
    assert str(caught.value) == (
        f"run directory {tmp_path} is in use by another kdkit run (pid 4242 on host node7 since {STARTED}, last "
        "heartbeat 42 s ago); wait for it to end or stop it (if it died, its lock is taken over once its heartbeat is "
        "older than runtime.lock_timeout, 600 s; `kdkit run --break-lock` takes it over now)")
    assert owner(tmp_path)["host"] == "node7" and capsys.readouterr().err == ""


def test_another_hosts_stale_lock_is_taken_over_with_one_warning(tmp_path: Path, capsys) -> None:
    path = write_lock(tmp_path, age=700)
    held = lock.acquire(tmp_path, timeout=600, heartbeat=False)
    assert capsys.readouterr().err == (f"taking over the stale lock {path} of pid 4242 on host node7 since {STARTED}, "
                                       "last heartbeat 700 s ago (over runtime.lock_timeout, 600 s)\n")
    mine = owner(tmp_path)
    assert (mine["host"], mine["pid"]) == (socket.gethostname(), os.getpid())
    assert abs(mine["heartbeat"] - time.time()) < 5
    lock.release(held)
    assert not path.exists()


def test_the_timeout_decides(tmp_path: Path) -> None:
    write_lock(tmp_path, age=100)
    with pytest.raises(lock.RunLocked, match="last heartbeat 100 s ago"):
        lock.acquire(tmp_path, timeout=600, heartbeat=False)
    lock.release(lock.acquire(tmp_path, timeout=60, heartbeat=False))


def test_a_lock_without_a_heartbeat_is_aged_by_its_modification_time(tmp_path: Path) -> None:
    path = write_lock(tmp_path, age=None)
    with pytest.raises(lock.RunLocked, match=r"last heartbeat 0 s ago"):
        lock.acquire(tmp_path, timeout=600, heartbeat=False)
    old = time.time() - 3600
    os.utime(path, (old, old))
    lock.release(lock.acquire(tmp_path, timeout=600, heartbeat=False))


def test_break_lock_takes_a_beating_lock_of_another_host_but_never_a_live_one_here(tmp_path: Path, capsys) -> None:
    path = write_lock(tmp_path, age=1)
    held = lock.acquire(tmp_path, break_lock=True, heartbeat=False)
    assert capsys.readouterr().err == (f"breaking the lock {path} of pid 4242 on host node7 since {STARTED}, last "
                                       "heartbeat 1 s ago, as --break-lock asks\n")
    lock.release(held)
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as process:
        try:
            write_lock(tmp_path, host=socket.gethostname(), pid=process.pid, age=10_000)
            with pytest.raises(lock.RunLocked, match=rf"\(pid {process.pid} on this host \(.*\) since {re.escape(STARTED)}\); "
                                                     "wait for it to end or stop it$"):
                lock.acquire(tmp_path, break_lock=True, heartbeat=False)
        finally:
            process.kill()


def test_a_dead_process_on_this_host_is_taken_over(tmp_path: Path, capsys) -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    path = write_lock(tmp_path, host=socket.gethostname(), pid=process.pid, age=0)  # fresh heartbeat, dead pid
    lock.release(lock.acquire(tmp_path, heartbeat=False))
    assert capsys.readouterr().err == (f"taking over the stale lock {path} (pid {process.pid} on "
                                       f"{socket.gethostname()} no longer runs)\n")


def test_the_heartbeat_thread_refreshes_the_lock(tmp_path: Path) -> None:
    held = lock.acquire(tmp_path, timeout=0.2)  # a beat every 0.05 s
    assert held.interval == pytest.approx(0.05)
    first = owner(tmp_path)["heartbeat"]
    deadline = time.time() + 10
    while owner(tmp_path)["heartbeat"] == first and time.time() < deadline:
        time.sleep(0.02)
    assert owner(tmp_path)["heartbeat"] > first
    assert owner(tmp_path)["started"] == held.started
    lock.release(held)
    assert not (tmp_path / lock.LOCK_FILE).exists()
    assert held._thread is not None and not held._thread.is_alive()
    assert lock.acquire(tmp_path, timeout=6000, heartbeat=False).interval == 60.0  # at most a minute apart


def test_a_failed_refresh_warns_once_and_never_raises(tmp_path: Path, capsys, monkeypatch) -> None:
    held = lock.acquire(tmp_path, heartbeat=False)
    before = owner(tmp_path)

    def full(*_args: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(lock.os, "replace", full)
    held.refresh()
    held.refresh()
    err = capsys.readouterr().err
    assert err == (f"warning: cannot refresh the heartbeat of {held.path} (No space left on device); training goes on, "
                   "and another host may take the directory over once the heartbeat is older than runtime.lock_timeout\n")
    assert held.failures == 2 and owner(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [lock.LOCK_FILE]  # no temporary file left
    monkeypatch.undo()
    held.refresh()
    assert owner(tmp_path)["heartbeat"] > before["heartbeat"]
    lock.release(held)


def test_a_lock_taken_over_by_another_host_stops_the_heartbeat_and_is_left_alone(tmp_path: Path, capsys) -> None:
    held = lock.acquire(tmp_path, heartbeat=False)
    write_lock(tmp_path, host="node7", pid=99, age=0)
    held.refresh()
    assert held.lost
    assert capsys.readouterr().err == (f"warning: the lock {held.path} was taken over by pid 99 on host node7 since "
                                       f"{STARTED}; this run no longer holds its directory (two runs now write into "
                                       "it: stop one)\n")
    lock.release(held)
    assert owner(tmp_path)["host"] == "node7"


def test_lock_timeout_must_be_positive() -> None:
    assert Runtime().lock_timeout == 600.0
    with pytest.raises(pydantic.ValidationError, match="greater than 0"):
        Runtime(lock_timeout=0)

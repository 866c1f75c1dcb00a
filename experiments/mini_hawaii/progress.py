"""One line per phase and per finished job, with the demo's elapsed time and an ETA, so a newcomer
sees the ten-minute demo working.

The ETA of a phase is its measured wall time per finished job (parallel jobs included) times the
jobs left; jobs reused from an earlier invocation cost nothing and are not counted.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


def clock(seconds: float) -> str:
    """``75.4`` -> ``"1:15"``; an hour or more -> ``"1:02:05"``."""
    whole = int(round(max(seconds, 0.0)))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Prints progress lines to ``stream`` (stderr), each starting with the demo's elapsed time.

    Args:
        stream: Where the lines go.
        now: The clock (seconds); tests pass a fake one.
    """

    def __init__(self, stream: TextIO | None = None, now: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.now = now
        self.started = now()
        self.phase_name = ""
        self.phase_started = self.started
        self.total = self.finished = self.fresh = 0

    def line(self, text: str) -> None:
        """``[m:ss] text``."""
        print(f"[{clock(self.now() - self.started)}] {text}", file=self.stream, flush=True)

    def phase(self, name: str, total: int, reused: int = 0, last: bool = False) -> None:
        """A phase of ``total`` jobs starts, ``reused`` of them done by an earlier invocation.

        ``last``: the demo's last long phase, whose ETA is the demo's.
        """
        self.phase_name, self.phase_started, self.last = name, self.now(), last
        self.total, self.finished, self.fresh = total, reused, 0
        done = f", {reused} reused" if reused else ""
        self.line(f"{name}: {total} job{'s' if total != 1 else ''}{done}")

    def job_done(self, label: str, seconds: float | None = None, detail: str = "") -> None:
        """One job of the current phase finished (``seconds``: its own time, when it ran now)."""
        self.finished += 1
        took = ""
        if seconds is not None:
            self.fresh += 1
            took = f" in {clock(seconds)}"
        left = self.total - self.finished
        text = f"{self.phase_name} {self.finished}/{self.total}: {label} done{took}"
        if detail:
            text += f" ({detail})"
        if left and self.fresh:
            eta = (self.now() - self.phase_started) / self.fresh * left
            text += f"; ETA {clock(eta)}" + (" (demo)" if self.last else f" ({self.phase_name})")
        elif left:
            text += "; ETA after the first job"
        self.line(text)

    def phase_done(self, seconds: float) -> None:
        """The current phase finished after ``seconds``."""
        self.line(f"{self.phase_name}: done in {clock(seconds)}")

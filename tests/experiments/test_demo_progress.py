"""The demo's progress lines: one per phase and per finished job, elapsed time and ETA."""

from __future__ import annotations

import io

from experiments.mini_hawaii.progress import Progress, clock


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_clock_formats_minutes_and_hours() -> None:
    assert [clock(0), clock(59.6), clock(75.4), clock(3725)] == ["0:00", "1:00", "1:15", "1:02:05"]


def test_lines_show_elapsed_time_and_an_eta_from_the_jobs_that_ran() -> None:
    out, now = io.StringIO(), FakeClock()
    progress = Progress(out, now)
    now.t += 5
    progress.phase("experts", 3, reused=1)  # one expert trained by an earlier invocation
    now.t += 40
    progress.job_done("convnext", 39.0)  # 40 s of phase per fresh job x 1 left = ETA 0:40
    now.t += 20
    progress.job_done("eva02", 60.0)
    progress.phase_done(60)
    now.t += 1
    progress.phase("student runs", 4, last=True)
    now.t += 90
    progress.job_done("baseline-seed0", 88.0, "held-out accuracy 41.0%")  # 90 s x 3 left = 4:30
    progress.job_done("fgkd-seed0")  # a job without its own timing leaves the estimate to the fresh ones: 90 / 1 x 2
    assert out.getvalue().splitlines() == [
        "[0:05] experts: 3 jobs, 1 reused",
        "[0:45] experts 2/3: convnext done in 0:39; ETA 0:40 (experts)",
        "[1:05] experts 3/3: eva02 done in 1:00",
        "[1:05] experts: done in 1:00",
        "[1:06] student runs: 4 jobs",
        "[2:36] student runs 1/4: baseline-seed0 done in 1:28 (held-out accuracy 41.0%); ETA 4:30 (demo)",
        "[2:36] student runs 2/4: fgkd-seed0 done; ETA 3:00 (demo)",
    ]


def test_no_eta_before_a_job_has_run() -> None:
    out = io.StringIO()
    progress = Progress(out, FakeClock())
    progress.phase("experts", 2)
    progress.job_done("clip")
    assert out.getvalue().splitlines()[-1] == "[0:00] experts 1/2: clip done; ETA after the first job"

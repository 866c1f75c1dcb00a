"""``torchrun ... killed.py K ARGS``: ``kdkit ARGS`` on every rank, killed before optimizer step K + 1.

Every rank raises at the same step, as when a job hits its time limit, so the run directory is
left with the checkpoints of the first K steps.
"""

from __future__ import annotations

import sys

from kdkit.cli import main
from kdkit.engine import trainer

if __name__ == "__main__":
    limit, calls = int(sys.argv[1]), {"n": 0}
    original = trainer.Trainer.optimizer_step

    def dies(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if calls["n"] == limit:
            raise SystemExit(f"killed after {limit} steps")
        calls["n"] += 1
        return original(self, *args, **kwargs)

    trainer.Trainer.optimizer_step = dies  # type: ignore[method-assign]
    raise SystemExit(main(sys.argv[2:]))

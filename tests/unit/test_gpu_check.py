"""benchmarks/gpu_check.sh on a machine without a CUDA device: one clear line, exit 0, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.sh"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device: the script would run")
def test_without_cuda_it_says_so_and_exits_cleanly(tmp_path) -> None:
    done = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], capture_output=True, text=True, check=False,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "gpu_check: no CUDA device (torch.cuda.is_available() is False): nothing to check on this machine\n"
    assert not (tmp_path / "out").exists()

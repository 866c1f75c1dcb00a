"""Make the repository's top-level ``experiments`` package importable (it is run as ``python -m experiments.<name>``
from the repository root, and is not installed)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

"""Evaluation: benchmark plugins run on a student, results on disk, comparisons over seeds.

- :mod:`kdkit.evaluation.runner`: one student on one benchmark (batched greedy answers, resumable).
- :mod:`kdkit.evaluation.subject`: the student of an export or run directory.
- :mod:`kdkit.evaluation.compare`: mean ± std over seeds and paired bootstrap intervals.
- :mod:`kdkit.evaluation.files`: helpers for benchmark plugins reading their released files.
"""

from __future__ import annotations

from kdkit.evaluation.runner import EvaluationError, Result, build_benchmark, evaluate, read_result
from kdkit.evaluation.subject import load_subject

__all__ = ["EvaluationError", "Result", "build_benchmark", "evaluate", "load_subject", "read_result"]

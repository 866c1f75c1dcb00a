"""A fixture building every tiny teacher from its on-disk checkpoint, through the registry."""

from __future__ import annotations

from typing import Any

import pytest

from teacher_builds import TINY, build_teacher


@pytest.fixture(params=sorted(TINY), scope="module")
def tiny_teacher(request: pytest.FixtureRequest, registry: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Every tiny teacher, built from its on-disk checkpoint (once per test module)."""
    write, extra = TINY[request.param]
    config = {**write(tmp_path_factory.mktemp(request.param)), **extra}
    return build_teacher(registry, config, name=request.param)

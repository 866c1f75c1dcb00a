"""The installed package: built-ins importable as ``kdkit_plugins`` from anywhere, pinned torch."""

from __future__ import annotations

import importlib.metadata as md
import subprocess
import sys


def test_kdkit_plugins_imports_from_outside_the_repo(tmp_path) -> None:
    code = "import kdkit_plugins, kdkit; print(kdkit_plugins.__name__, kdkit.__version__)"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "kdkit_plugins"


def test_every_builtin_entry_point_lives_in_kdkit_plugins() -> None:
    eps = [ep for ep in md.entry_points(group="kdkit") if ep.dist and ep.dist.metadata["Name"] == "kdkit"]
    assert eps
    for ep in eps:
        kind, _, name = ep.name.partition(".")
        assert ep.value == f"kdkit_plugins.{kind}.{name}", ep


def test_torch_and_torchvision_are_pinned_as_a_pair() -> None:
    requires = md.requires("kdkit") or []
    pins = {r.split("==")[0]: r.split("==")[1] for r in requires if r.startswith(("torch==", "torchvision=="))}
    assert set(pins) == {"torch", "torchvision"}
    import torch
    import torchvision

    assert torch.__version__.split("+")[0] == pins["torch"]
    assert torchvision.__version__.split("+")[0] == pins["torchvision"]
    torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)  # the op that breaks on a mismatched pair

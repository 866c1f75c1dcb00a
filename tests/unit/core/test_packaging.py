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


def test_torch_and_torchvision_are_a_tested_range_and_a_pinned_pair() -> None:
    """pyproject states a range; constraints.txt (used by make) pins the installed, tested pair."""
    from pathlib import Path

    from packaging.requirements import Requirement

    import torch
    import torchvision

    requires = {r.name: r for r in map(Requirement, md.requires("kdkit") or []) if not r.marker}
    installed = {"torch": torch.__version__.split("+")[0], "torchvision": torchvision.__version__.split("+")[0]}
    for name, version in installed.items():
        assert requires[name].specifier.contains(version), (name, version, requires[name])
        assert "==" not in str(requires[name].specifier), f"{name} is pinned exactly in pyproject.toml"
    unbounded = [n for n, r in requires.items() if not any(s.operator in ("<", "==") for s in r.specifier)]
    assert not unbounded, f"no upper bound: {unbounded}"
    constraints = Path(__file__).resolve().parents[3] / "constraints.txt"
    pins = dict(line.split("==") for line in constraints.read_text().splitlines() if "==" in line and not line.startswith("#"))
    assert {name: pins[name] for name in installed} == installed
    torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)  # the op that breaks on a mismatched pair


def test_the_long_description_has_no_link_that_only_works_in_the_repository() -> None:
    """README.md is the wheel's long description: a relative link there points nowhere on a package index."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text(encoding="utf-8")
    relative = [target for target in re.findall(r"\]\(([^)]+)\)", readme) if not re.match(r"[a-z]+://|#", target)]
    assert not relative, f"README.md links to repository paths: {relative}"

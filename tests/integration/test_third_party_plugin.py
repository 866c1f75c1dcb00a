"""A plugin shipped as its own distribution is discovered, listed, validated and contract-tested.

The distribution is the one the "Writing a plugin" tutorial shows (docs/examples/), installed
into a temporary directory with pip: nothing inside ``kdkit_plugins`` is involved.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "kdkit-similarity-loss"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A directory holding the installed example distribution (its module + dist-info)."""
    work = tmp_path_factory.mktemp("third_party")
    source = work / "src"
    shutil.copytree(EXAMPLE, source)
    target = work / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(source)],
        check=True,
        capture_output=True,
    )
    assert (target / "kdkit_similarity_loss.py").is_file()
    return target


def kdkit(site: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-m", "kdkit", *args], capture_output=True, text=True, env=env, cwd=cwd)


def test_discovered_and_listed_with_its_distribution(site) -> None:
    result = kdkit(site, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["plugin"]: row for row in json.loads(result.stdout)}
    assert rows["similarity"]["distribution"] == "kdkit-similarity-loss"
    assert rows["similarity"]["version"] == "0.1.0"
    assert rows["similarity"]["offers"] == {"loss": ["similarity"]}
    assert rows["similarity"]["status"] == "ok"
    text = kdkit(site, "plugins").stdout
    assert "similarity" in text and "kdkit-similarity-loss 0.1.0" in text


def test_recipe_using_it_validates_and_typos_are_caught(site, tmp_path) -> None:
    recipe = tmp_path / "uses_similarity.yaml"
    recipe.write_text(textwrap.dedent("""\
        student: {kind: timm, model: vit_tiny_patch16_224}
        losses:
          relational: {kind: similarity, weight: 0.5}
        stages:
          main:
            data: {kind: synthetic}
            trainable: [head]
            optimizer: {lr: 1.0e-3}
            batch: {global_size: 4, per_device: 4}
        """))
    result = kdkit(site, "validate", str(recipe))
    assert result.returncode == 0, result.stderr
    result = kdkit(site, "validate", str(recipe), "--set", "losses.relational.teacher=[a]")
    assert result.returncode == 1
    assert "losses.relational.teacher: unknown key" in result.stderr and "did you mean 'teachers'?" in result.stderr
    assert "Traceback" not in result.stderr
    result = kdkit(site, "--disable", "similarity", "validate", str(recipe))
    assert result.returncode == 1
    assert ("losses.relational.kind: loss 'similarity' is offered only by a disabled plugin (plugin 'similarity', "
            "disabled by --disable)") in result.stderr


def test_contract_kit_passes_on_it(site, tmp_path) -> None:
    code = textwrap.dedent(f"""\
        from kdkit.plugins import load_plugins
        from kdkit.testing import check_plugin
        entry = load_plugins(distributions={{"kdkit-similarity-loss"}}).registry.get("loss", "similarity")
        check_plugin("loss", "similarity", entry.factory, {str(tmp_path)!r})
        print("contract ok")
        """)
    env = dict(os.environ, PYTHONPATH=str(site))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "contract ok"

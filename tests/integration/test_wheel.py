"""The wheel, installed into a fresh virtual environment outside the repository: metadata, shipped
recipes, a tiny run of a shipped recipe by name, exports that transformers' AutoProcessor opens.

Nothing is downloaded: the wheel comes from ``pip wheel`` of this checkout and its dependencies from
this environment's site-packages, seen through a ``.pth`` file (kdkit's own files left out).
"""

from __future__ import annotations

import email
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def sh(*argv: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, f"{argv}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def dependencies_view(target: Path) -> Path:
    """A directory of links to this environment's site-packages entries, kdkit's own left out."""
    target.mkdir()
    source = Path(sysconfig.get_paths()["purelib"])
    for entry in source.iterdir():
        if entry.name.lower().startswith(("kdkit", "__editable__.kdkit", "__editable___kdkit")):
            continue
        (target / entry.name).symlink_to(entry)
    return target


def tracked_copy(target: Path) -> Path:
    """The checkout's tracked files (links kept as links) copied to ``target``."""
    names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in names)):
        source, copy = REPO / name, target / name
        if not source.exists() and not source.is_symlink():  # deleted in the working tree
            continue
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, copy, follow_symlinks=False)
    return target


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """(the wheel, the fresh environment's bin directory, an environment for subprocesses)."""
    tmp = tmp_path_factory.mktemp("wheel")
    dist = tmp / "dist"
    source = tracked_copy(tmp / "source")  # setuptools builds in the source tree: keep the checkout clean
    sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", dist, source, cwd=tmp)
    (wheel,) = dist.glob("kdkit-*.whl")
    venv = tmp / "venv"
    sh(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp)
    python = venv / "bin" / "python"
    purelib = Path(sh(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp).strip())
    (purelib / "kdkit_test_dependencies.pth").write_text(f"{dependencies_view(tmp / 'deps')}\n")
    sh(sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-index", "--find-links", dist,
       "kdkit", cwd=tmp)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return wheel, venv / "bin", env


def test_wheel_metadata(wheel_env) -> None:
    wheel, _, _ = wheel_env
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        meta = email.message_from_bytes(archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))))
    assert {"kdkit/py.typed", "kdkit_plugins/py.typed", "kdkit/recipes/tiny/timm_two_teachers.yaml",
            "kdkit/recipes/tiny/hawaii/_tiny_llava.yaml", "kdkit/recipes/slurm/hawaii_8x8.sbatch"} <= names
    assert meta["License-Expression"] == "Apache-2.0"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "Typing :: Typed" in meta.get_all("Classifier")
    requires = meta.get_all("Requires-Dist")
    assert not [r for r in requires if r.startswith(("torch==", "torchvision=="))]
    extras = set(meta.get_all("Provides-Extra"))
    assert {"lmms", "wandb", "mlflow", "digits"} <= extras
    description = meta.get_payload()
    assert "kdkit recipes list" in description
    assert "](docs/" not in description and "](../" not in description  # no link that only works in the repository


def test_installed_kdkit_lists_copies_runs_and_exports(wheel_env, tmp_path: Path) -> None:
    _, bin_dir, env = wheel_env
    kdkit, python = bin_dir / "kdkit", bin_dir / "python"
    where = sh(python, "-c", "import kdkit, kdkit_plugins; print(kdkit.__file__); print(kdkit_plugins.__file__)",
               cwd=tmp_path, env=env)
    assert all(str(REPO) not in line and "site-packages" in line for line in where.splitlines())
    listed = sh(kdkit, "recipes", "list", cwd=tmp_path, env=env)
    assert "tiny/timm_two_teachers " in listed and "hawaii/hawaii_7b " in listed
    copied = sh(kdkit, "recipes", "copy", "tiny/hawaii/hawaii_7b", "mine", cwd=tmp_path, env=env)
    assert copied.startswith("wrote mine/tiny/hawaii/hawaii_7b.yaml (+ 4 files it extends)")
    sh(python, "-m", "kdkit_plugins.fixtures", "data", cwd=tmp_path, env=env)
    sh(kdkit, "run", "tiny/timm_two_teachers", "--data-root", "data", "--output-dir", "run", cwd=tmp_path, env=env)
    exported = sh(kdkit, "export", "run", "export", cwd=tmp_path, env=env)
    assert exported.startswith("exported to export")
    # the copied LLaVA twin, one step per stage, exported: AutoProcessor opens the export
    one_step = [a for s in ("pretrain", "finetune") for a in ("--set", f"stages.{s}.max_steps=1", "--set",
                                                            f"stages.{s}.batch.global_size=2")]
    sh(kdkit, "run", "mine/tiny/hawaii/hawaii_7b.yaml", "--data-root", "data", "--output-dir", "run_llava", *one_step,
       cwd=tmp_path, env=env)
    sh(kdkit, "export", "run_llava", "export_llava", cwd=tmp_path, env=env)
    opened = sh(python, "-c", "from transformers import AutoProcessor; p = AutoProcessor.from_pretrained('export_llava'); "
                "print(type(p).__name__, p.image_processor.do_pad)", cwd=tmp_path, env=env)
    assert opened.split() == ["LlavaProcessor", "True"]
    assert "## Teachers" in (tmp_path / "export_llava" / "README.md").read_text()

"""Every tiny twin of the HAWAII recipe family trains both stages on CPU with golden losses, and the
tiny HAWAII student exports, reloads and answers exactly as before export.

Regenerate the golden values after an intended change with ``KDKIT_UPDATE_GOLDEN=1 pytest tests/recipes``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from kdkit.engine.monitor import read_metrics
from kdkit.engine.run import run_recipe
from kdkit.export import export_run, load_student, trained_student
from kdkit.recipe import load_recipe
from kdkit_plugins.fixtures.hawaii import write_tiny_hawaii

ROOT = Path(__file__).resolve().parents[2] / "recipes"
TWINS = sorted((ROOT / "tiny" / "hawaii").glob("[!_]*.yaml"))
GOLDEN = Path(__file__).parent / "golden" / "tiny_twins.json"
#: One optimizer step of one micro-batch per stage keeps the twelve twins fast.
SHORT = [f"stages.{s}.{k}" for s in ("pretrain", "finetune") for k in ("max_steps=1", "batch.global_size=2")]
#: Golden values are float32 losses from CPU kernels: equal up to vectorisation differences between CPUs.
RTOL, ATOL = 1e-4, 1e-5


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_hawaii(tmp_path_factory.mktemp("tiny_hawaii"))


def test_every_full_recipe_has_a_twin() -> None:
    full = sorted(p.relative_to(ROOT).name for d in ("hawaii", "baselines", "ablations") for p in (ROOT / d).glob("*.yaml"))
    assert full == sorted(p.name for p in TWINS)
    for twin in TWINS:
        source = next(p for d in ("hawaii", "baselines", "ablations") for p in [ROOT / d / twin.name] if p.is_file())
        assert f"../../{source.parent.name}/{source.name}" in twin.read_text(encoding="utf-8")


@pytest.mark.parametrize("twin", TWINS, ids=[p.stem for p in TWINS])
def test_twin_has_the_structure_of_its_recipe(twin: Path, registry) -> None:
    source = next(ROOT / d / twin.name for d in ("hawaii", "baselines", "ablations") if (ROOT / d / twin.name).is_file())
    full, tiny = load_recipe(source, registry=registry), load_recipe(twin, registry=registry)
    assert list(tiny.teachers) == list(full.teachers)
    assert [[a.kind for a in t.align] for t in tiny.teachers.values()] == [[a.kind for a in t.align] for t in full.teachers.values()]
    assert {n: b.kind for n, b in tiny.losses.items()} == {n: b.kind for n, b in full.losses.items()}
    assert {n: b.weight for n, b in tiny.losses.items()} == {n: b.weight for n, b in full.losses.items()}
    assert (tiny.scorer and tiny.scorer.kind) == (full.scorer and full.scorer.kind)
    assert {n: b.kind for n, b in tiny.adapters.items()} == {n: b.kind for n, b in full.adapters.items()}
    assert list(tiny.stages) == list(full.stages)
    for name, stage in full.stages.items():
        assert tiny.stages[name].trainable == stage.trainable
        assert tiny.stages[name].data.config.template == stage.data.config.template


def losses_of(run_dir: Path) -> list[dict[str, float]]:
    return [{"stage": r["stage"], **r["losses"]} for r in read_metrics(run_dir)]


@pytest.mark.parametrize("twin", TWINS, ids=[p.stem for p in TWINS])
def test_twin_trains_with_golden_losses(twin: Path, tiny_root: Path, tmp_path: Path, registry) -> None:
    run_dir = run_recipe(twin, [f"runtime.data_root={tiny_root}", f"runtime.output_dir={tmp_path / 'run'}", *SHORT],
                         registry=registry, tensorboard=False, progress=False, report=False)
    got = losses_of(run_dir)
    assert [r["stage"] for r in got] == ["pretrain", "finetune"]
    golden = json.loads(GOLDEN.read_text(encoding="utf-8")) if GOLDEN.is_file() else {}
    if os.environ.get("KDKIT_UPDATE_GOLDEN"):
        golden[twin.stem] = got
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    assert twin.stem in golden, f"no golden losses for {twin.stem}; run with KDKIT_UPDATE_GOLDEN=1"
    expected = golden[twin.stem]
    assert [sorted(r) for r in got] == [sorted(r) for r in expected]
    for step_got, step_expected in zip(got, expected, strict=True):
        for term, value in step_expected.items():
            if term != "stage":
                assert step_got[term] == pytest.approx(value, rel=RTOL, abs=ATOL), f"{twin.stem} {step_got['stage']} {term}"


def test_tiny_hawaii_trains_exports_and_answers_the_same(tiny_root: Path, tmp_path: Path, registry) -> None:
    """Both stages end to end, then the exported student generates the tokens the trained one did."""
    twin = ROOT / "tiny" / "hawaii" / "hawaii_7b.yaml"
    run_dir = run_recipe(twin, [f"runtime.data_root={tiny_root}", f"runtime.output_dir={tmp_path / 'run'}", *SHORT],
                         registry=registry, tensorboard=False, progress=False, report=False)
    student = trained_student(run_dir, registry=registry).student
    student.model.eval()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    prompts = ["what color is the circle ?", "how many shapes are there ?"]
    before = student.generate(images, prompts, max_new_tokens=5)
    export_run(run_dir, tmp_path / "export", registry=registry)
    loaded = load_student(tmp_path / "export", registry=registry)
    assert loaded.generate(images, prompts, max_new_tokens=5) == before
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(images), student.encode(images), rtol=0, atol=0)

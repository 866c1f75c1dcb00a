"""``kdkit eval`` end to end: the exported tiny HAWAII student scored on every built-in generative
benchmark's tiny fixture in its released format, resumed, compared; bad input named in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kdkit.cli import main
from kdkit.interfaces import GenerativeBenchmark
from kdkit.plugins import load_plugins
from kdkit_plugins.fixtures.hawaii import export_tiny_hawaii

_BENCHMARKS = [e for e in load_plugins(distributions={"kdkit"}).registry.entries("benchmark") if e.factory.example]


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_hawaii(tmp_path_factory.mktemp("twin"))


def settings(example_config: dict) -> list[str]:
    """``--set KEY=VALUE`` arguments reproducing an example block (values as JSON, which YAML reads)."""
    out = []
    for key, value in example_config.items():
        if key != "kind":
            out += ["--set", f"{key}={json.dumps(value)}"]
    return out


@pytest.mark.parametrize("entry", _BENCHMARKS, ids=[e.name for e in _BENCHMARKS])
def test_every_generative_benchmark_scores_the_tiny_hawaii_student(entry, export: Path, tmp_path: Path, registry,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    example = entry.factory.example(tmp_path / "files")
    bench = registry.build("benchmark", example.config, example.context)
    if not isinstance(bench, GenerativeBenchmark):
        pytest.skip("model benchmark (tested with classifiers)")
    questions = bench.questions()
    argv = ["eval", str(export), "--benchmark", entry.name, *settings(example.config), "--data-root",
            str(example.context.data_root), "--output", str(tmp_path / "out"), "--batch-size", "4", "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr()
    directory = tmp_path / "out" / "export" / "00-export" / entry.name
    metrics = json.loads((directory / "metrics.json").read_text())
    assert set(bench.metrics) <= set(metrics["metrics"]) and metrics["primary"] == bench.primary
    lines = (directory / "predictions.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["question_id"] for line in lines) == sorted(q.id for q in questions)
    assert f"| export | {metrics['metrics'][bench.primary]:.1f} |" in out.out
    for label, value in bench.published.items():
        assert f"| *{label}* | {value:.1f} |" in out.out
    # a second run answers nothing again and reports the same scores
    assert main(argv) == 0
    assert f"{len(questions)} answered now" not in capsys.readouterr().err
    assert json.loads((directory / "metrics.json").read_text())["metrics"] == metrics["metrics"]


def test_seeds_compared_against_a_baseline(export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kdkit_plugins.fixtures.benchmarks_yesno import write_pope

    root = write_pope(tmp_path / "pope")
    argv = ["eval", f"base={export}", f"base={export}", f"kd={export}", f"kd={export}", "--benchmark", "pope",
            "--set", f"root={root}", "--output", str(tmp_path / "out"), "--baseline", "base", "--quiet"]
    assert main(argv) == 0
    table = capsys.readouterr().out
    # the same student on both sides: every paired difference is 0, so the interval is [0, 0]
    assert "| kd | 2 |" in table and "| +0.00 | [+0.00, +0.00] (seeds) | no difference |" in table


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_unknown_benchmark_suggests_the_closest(export: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(["eval", str(export), "--benchmark", "popee"], capsys)
    assert code == 1 and "unknown benchmark 'popee'" in err and "did you mean 'pope'?" in err


def test_benchmark_files_of_another_format_are_named(export: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from kdkit_plugins.fixtures.benchmarks_vqa import write_gqa

    root = write_gqa(tmp_path / "gqa")
    code, err = run_cli(["eval", str(export), "--benchmark", "textvqa", "--set", f"root={root}"], capsys)
    assert code == 1 and err.startswith("error: textvqa:") and "TextVQA_0.5.1_val.json" in err
    assert len(err.strip().splitlines()) == 1


def test_unknown_setting_is_named(export: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(["eval", str(export), "--benchmark", "pope", "--set", "splitz=[random]"], capsys)
    assert code == 1 and "benchmark 'pope': splitz: Extra inputs are not permitted" in err


def test_missing_image_names_the_question_and_keeps_earlier_answers(export: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from kdkit_plugins.fixtures.benchmarks_yesno import write_pope

    root = write_pope(tmp_path / "pope")
    images = sorted((root / "val2014").iterdir())
    asked = [json.loads(line)["image"] for line in (root / "coco" / "coco_pope_adversarial.json").read_text().splitlines()]
    last = root / "val2014" / asked[-1]
    moved = tmp_path / "moved.jpg"
    shutil.move(last, moved)
    argv = ["eval", str(export), "--benchmark", "pope", "--set", f"root={root}", "--set", "splits=[adversarial]",
            "--output", str(tmp_path / "out"), "--batch-size", "1", "--quiet"]
    code, err = run_cli(argv, capsys)
    assert code == 1 and "pope: question 'adversarial/" in err and asked[-1] in err
    predictions = tmp_path / "out" / "export" / "00-export" / "pope" / "predictions.jsonl"
    kept = len(predictions.read_text().splitlines())
    assert kept >= 1 and images
    shutil.move(moved, last)
    assert main(argv) == 0
    assert f"{len(asked) - kept} answered now" in capsys.readouterr().err


def test_export_without_its_adapter_weights_is_named(export: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from kdkit_plugins.fixtures.benchmarks_yesno import write_pope

    root = write_pope(tmp_path / "pope")
    broken = tmp_path / "broken"
    shutil.copytree(export, broken)
    weights = next(broken.glob("adapters/*/adapter.safetensors"))
    weights.unlink()
    code, err = run_cli(["eval", str(broken), "--benchmark", "pope", "--set", f"root={root}"], capsys)
    assert code == 1 and "adapter.safetensors" in err


def test_neither_export_nor_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kdkit_plugins.fixtures.benchmarks_yesno import write_pope

    root = write_pope(tmp_path / "pope")
    code, err = run_cli(["eval", str(tmp_path), "--benchmark", "pope", "--set", f"root={root}"], capsys)
    assert code == 1 and "is neither a kdkit export (no kdkit_student.yaml) nor a run directory" in err


def test_a_classifier_run_reports_top1_knn_and_linear_probe(tmp_path: Path, registry,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from kdkit.engine.run import run_recipe
    from kdkit.evaluation import build_benchmark, evaluate, load_subject

    recipe = Path(__file__).resolve().parents[2] / "recipes" / "vision" / "digits_student_alone.yaml"
    run_dir = run_recipe(recipe, ["stages.train.max_steps=3", f"runtime.output_dir={tmp_path / 'run'}"],
                         registry=registry, tensorboard=False, progress=False, report=False)
    data = "{kind: digits, split: %s, image_size: 32}"
    argv = ["eval", str(run_dir), "--benchmark", "classification", "--benchmark", "knn_probe", "--benchmark",
            "linear_probe", "--set", f"classification.data={data % 'test'}", "--set", f"knn_probe.train={data % 'train'}",
            "--set", f"knn_probe.test={data % 'test'}", "--set", f"linear_probe.train={data % 'train'}",
            "--set", f"linear_probe.test={data % 'test'}", "--quiet"]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "| student | classification (top1) | knn_probe (top1) | linear_probe (top1) |" in table
    found = {}
    for name in ("classification", "knn_probe", "linear_probe"):
        found[name] = json.loads((run_dir / "eval" / "step-00000003" / name / "metrics.json").read_text())["metrics"]
    assert set(found["classification"]) == {"top1", "top5"} and 0 <= found["classification"]["top1"] <= 100
    # the CLI's numbers are the benchmark's own on the same checkpoint
    block = {"kind": "knn_probe", "train": {"kind": "digits", "split": "train", "image_size": 32},
             "test": {"kind": "digits", "split": "test", "image_size": 32}}
    direct = evaluate(load_subject(run_dir, registry=registry), build_benchmark(block, registry=registry), "knn_probe",
                      progress=False)
    assert direct.scores.metrics["top1"] == pytest.approx(found["knn_probe"]["top1"])
    row = next(line for line in table.splitlines() if line.startswith("| run |"))
    assert row == f"| run | {found['classification']['top1']:.1f} | {found['knn_probe']['top1']:.1f} | " \
                  f"{found['linear_probe']['top1']:.1f} |"

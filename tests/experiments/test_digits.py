"""The digits experiment: the report's structure (fast, from made-up results) and a --quick run end to end (slow)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from experiments.digits.__main__ import main
from experiments.digits.experiment import QUICK, Budget, Results, train_and_evaluate
from experiments.digits.report import paired_difference, table, write_report
from kdkit.errors import KdkitError


def made_up() -> Results:
    return Results(
        teachers={"resnet": {"accuracy": 0.98, "wall_s": 5.0}, "convnext": {"accuracy": 0.95, "wall_s": 6.0},
                  "vit": {"accuracy": 0.90, "wall_s": 7.0}},
        alone=[{"accuracy": a, "wall_s": 2.0} for a in (0.80, 0.82, 0.84)],
        distilled=[{"accuracy": a, "wall_s": 9.0} for a in (0.90, 0.91, 0.92)],
        wall_s=60.0, settings={"seeds": 3})


def test_table_gives_mean_and_sample_std_over_seeds() -> None:
    rows = table(made_up())
    assert rows[0] == "| model | test accuracy (%) | runs | wall time per run (s) |"
    assert rows[2:5] == ["| teacher `resnet` | 98.00 | 1 | 5.0 |", "| teacher `convnext` | 95.00 | 1 | 6.0 |",
                         "| teacher `vit` | 90.00 | 1 | 7.0 |"]
    assert rows[5] == "| student alone | 82.00 ± 2.00 | 3 | 2.0 |"
    assert rows[6] == "| student distilled (3 teachers) | 91.00 ± 1.00 | 3 | 9.0 |"


def test_report_files(tmp_path) -> None:
    run = tmp_path / "runs" / "distilled_seed0"
    run.mkdir(parents=True)
    records = [{"step": s, "loss": 2.0 / s, "losses": {"task": 1.0 / s, "fine": 0.5 / s, "coarse": 0.2 / s}} for s in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    report = write_report(made_up(), tmp_path, notes="KD helped here.")
    text = report.read_text()
    assert text.startswith("# Three teachers distilled into a small ViT")
    assert "| student alone | 82.00 ± 2.00 | 3 | 2.0 |" in text and text.rstrip().endswith("KD helped here.")
    assert (tmp_path / "digits.png").stat().st_size > 10_000


def test_paired_difference_line() -> None:
    results = made_up()
    results.settings["split"] = "val"
    line = paired_difference(results)
    assert line.startswith("Distilled minus alone (val, paired over 3 seeds): +9.00 points, 95% bootstrap interval [+8.00, +10.00]")
    assert line.endswith(": better.")
    assert table(results)[0] == "| model | val accuracy (%) | runs | wall time per run (s) |"


def test_quick_budget_overrides() -> None:
    assert QUICK.overrides(teacher=True) == ["stages.train.max_steps=4", "runtime.log_every=1"]
    assert Budget(teacher_epochs=3, student_epochs=5).overrides(teacher=False) == ["stages.train.epochs=5"]
    assert Budget().overrides(teacher=True) == []


def test_a_finished_run_with_other_settings_is_not_reused(tmp_path) -> None:
    (tmp_path / "result.json").write_text(json.dumps({"scores": {"val": 0.5}, "wall_s": 1.0, "overrides": ["runtime.seed=0"]}))
    assert train_and_evaluate(Path("unused.yaml"), tmp_path, ["runtime.seed=0"], None, split="val")["accuracy"] == 0.5
    with pytest.raises(KdkitError, match=r"holds a run made with other settings \(\['runtime.seed=0'\]\); choose another "
                                         r"--output-dir"):
        train_and_evaluate(Path("unused.yaml"), tmp_path, ["runtime.seed=1"], None)


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path, capsys) -> None:
    """Teachers trained and exported in timm's format, 2 seeds of each student, evaluated, reported."""
    import timm

    assert main(["--quick", "--seeds", "2", "--threads", "1", "--output-dir", str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    assert capsys.readouterr().out.startswith(report)  # the report is printed too
    for name in ("resnet", "convnext", "vit"):
        assert re.search(rf"\| teacher `{name}` \| \d+\.\d\d \| 1 \|", report)
        assert (tmp_path / "data" / "teachers" / name / "model.safetensors").is_file()
        timm.create_model(f"local-dir:{tmp_path / 'data' / 'teachers' / name}", pretrained=True)
    assert re.search(r"\| student alone \| \d+\.\d\d ± \d+\.\d\d \| 2 \|", report)
    assert re.search(r"\| student distilled \(3 teachers\) \| \d+\.\d\d ± \d+\.\d\d \| 2 \|", report)
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results["alone"]) == 2 and len(results["distilled"]) == 2
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in results["alone"] + results["distilled"])
    assert (tmp_path / "digits.png").is_file()


def test_a_finished_run_is_scored_on_a_new_split_without_training(tmp_path, monkeypatch) -> None:
    import experiments.digits.experiment as experiment

    (tmp_path / "result.json").write_text(json.dumps({"scores": {"val": 0.5}, "wall_s": 1.0, "overrides": ["a=1"]}))
    calls = []
    monkeypatch.setattr(experiment, "evaluate_run", lambda run_dir, benchmark: calls.append(benchmark) or 0.75)
    assert train_and_evaluate(Path("unused.yaml"), tmp_path, ["a=1"], "test-benchmark", split="test")["accuracy"] == 0.75
    assert train_and_evaluate(Path("unused.yaml"), tmp_path, ["a=1"], "test-benchmark", split="test")["accuracy"] == 0.75
    assert calls == ["test-benchmark"]  # scored once, then read back
    assert json.loads((tmp_path / "result.json").read_text())["scores"] == {"val": 0.5, "test": 0.75}

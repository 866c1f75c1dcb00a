"""Run loggers: record flattening, and a tiny run logged to JSONL, TensorBoard, W&B (offline) and MLflow
(local file store), each read back: every loss term, lr, grad norm, throughput, wall time, peak memory,
routing, evaluation rows and the resolved recipe as hyperparameters."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import pytest
import yaml

from kdkit.catalog import recipes_root
from kdkit.engine.monitor import read_evaluations, read_metrics
from kdkit.engine.run import run_recipe
from kdkit.errors import PluginError
from kdkit.loggers import flat_hyperparameters, scalars

RECORD = {"step": 4, "stage": "pretrain", "stage_step": 2, "lr": 0.01, "loss": 1.5, "losses": {"task": 1.0, "fine": 0.5},
          "grad_norm": 2.0, "samples_per_s": 10.0, "skipped": 0, "routing": {"teacher": {"blocks.0": [0.25, 0.75]}}}


def test_scalars_flatten_a_record_with_tensorboards_names() -> None:
    assert scalars(RECORD) == {"stage_step": 2.0, "lr": 0.01, "loss": 1.5, "grad_norm": 2.0, "samples_per_s": 10.0,
                               "skipped": 0.0, "loss/task": 1.0, "loss/fine": 0.5,
                               "routing/teacher/blocks.0/expert0": 0.25, "routing/teacher/blocks.0/expert1": 0.75}
    assert scalars({"step": 3, "eval": {"top1": 50.0, "note": "text"}}) == {"eval/top1": 50.0}


def test_hyperparameters_are_the_recipe_flattened() -> None:
    recipe = {"name": "r", "stages": {"a": {"optimizer": {"lr": 0.1}, "trainable": ["adapters", "head"]}}, "x": None}
    assert flat_hyperparameters(recipe) == {"name": "r", "stages.a.optimizer.lr": 0.1,
                                            "stages.a.trainable": "['adapters', 'head']", "x": "None"}


def wandb_rows(run_dir: Path) -> tuple[dict, list[dict]]:
    """The config and the history rows of the offline W&B run under ``run_dir``."""
    from wandb.proto import wandb_internal_pb2 as pb
    from wandb.sdk.internal.datastore import DataStore

    (file,) = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    store = DataStore()
    store.open_for_scan(file)
    config, rows = {}, []
    while (data := store.scan_data()) is not None:
        record = pb.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            config.update({item.key or ".".join(item.nested_key): json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
    return config, rows


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory: pytest.TempPathFactory, tiny_root: Path, registry) -> Path:
    """The tiny two-teacher recipe (3 + 3 steps, MoLA routing) with an evaluation every 3 steps and every logger."""
    directory = tmp_path_factory.mktemp("logged")
    recipe = directory / "logged.yaml"
    recipe.write_text(yaml.safe_dump({
        "extends": str(recipes_root() / "tiny" / "timm_two_teachers.yaml"),
        "eval": {"benchmark": {"kind": "classification", "top_k": [1],
                               "data": {"kind": "synthetic", "size": 8, "image_size": 32, "num_classes": 4}}, "every": 3},
        "loggers": {"tb": {"kind": "tensorboard"}, "wb": {"kind": "wandb", "mode": "offline", "project": "tiny"},
                    "ml": {"kind": "mlflow", "experiment": "tiny"}},
    }))
    return run_recipe(recipe, [f"runtime.data_root={tiny_root}", f"runtime.output_dir={directory / 'run'}"],
                      registry=registry, progress=False, report=False)


def test_jsonl_holds_every_quantity(logged_run: Path) -> None:
    records = read_metrics(logged_run)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    for record in records:
        assert set(record["losses"]) == {"task", "fine", "coarse", "balance"}
        assert {"lr", "grad_norm", "samples_per_s", "wall_time_s", "peak_memory_mb"} <= set(record)
        assert record["peak_memory_mb"] > 10 and record["wall_time_s"] > 0
        assert record["routing"]  # MoLA's expert usage
    walls = [r["wall_time_s"] for r in records]
    assert walls == sorted(walls)
    assert [(e["step"], e["benchmark"]) for e in read_evaluations(logged_run)] == [(3, "classification"), (6, "classification")]


def test_tensorboard_has_the_same_numbers(logged_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logged_run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0}).Reload()
    records = read_metrics(logged_run)
    for tag in ("loss/fine", "lr", "grad_norm", "peak_memory_mb"):
        assert [e.value for e in events.Scalars(tag)] == pytest.approx([scalars(r)[tag] for r in records], rel=1e-6)
    assert [e.step for e in events.Scalars("eval/top1")] == [3, 6]
    (text,) = events.Tensors("recipe/text_summary")  # the resolved recipe as text
    assert "name: timm_two_teachers" in text.tensor_proto.string_val[0].decode()


def test_wandb_offline_run_holds_history_and_recipe(logged_run: Path) -> None:
    config, rows = wandb_rows(logged_run)
    assert config["name"] == "timm_two_teachers" and config["stages"]["pretrain"]["optimizer"]["lr"] == 0.01
    records = read_metrics(logged_run)
    evaluations = {e["step"]: e["eval"]["top1"] for e in read_evaluations(logged_run)}
    by_step: dict[int, dict] = {}
    for row in rows:
        by_step.setdefault(row["_step"], {}).update(row)
    assert sorted(by_step) == [1, 2, 3, 4, 5, 6]
    for record in records:
        row = by_step[record["step"]]
        for key, value in scalars(record).items():
            assert row[key] == pytest.approx(value, rel=1e-6), key
    assert {step: by_step[step]["eval/top1"] for step in evaluations} == pytest.approx(evaluations)


def test_mlflow_file_store_holds_metrics_and_parameters(logged_run: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(logged_run / "mlruns").resolve().as_uri())
    run_id = (logged_run / ".mlflow_run_id").read_text().strip()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["stages.finetune.optimizer.lr"] == "0.001"
    assert run.data.params["adapters.mola.kind"] == "mola"
    records = read_metrics(logged_run)
    for key in ("loss", "loss/coarse", "samples_per_s", "wall_time_s"):
        history = sorted(client.get_metric_history(run_id, key.replace("/", ".")), key=lambda m: m.step)
        assert [(m.step, m.value) for m in history] == [(r["step"], pytest.approx(scalars(r)[key], rel=1e-6)) for r in records]
    routing = [k for k in run.data.metrics if k.startswith("routing.")]
    assert routing
    assert [m.step for m in client.get_metric_history(run_id, "eval.top1")] == [3, 6]


def test_a_named_logger_without_its_package_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, tiny_root: Path,
                                                             registry, tmp_path: Path) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"extends": str(recipes_root() / "tiny" / "timm_two_teachers.yaml"),
                                      "loggers": {"wb": {"kind": "wandb"}}}))
    with pytest.raises(PluginError, match=r"""^logger 'wandb' needs wandb, which is not installed: pip install "kdkit\[wandb\]"$"""):
        run_recipe(recipe, [f"runtime.data_root={tiny_root}", f"runtime.output_dir={tmp_path / 'run'}"],
                   registry=registry, progress=False, report=False)

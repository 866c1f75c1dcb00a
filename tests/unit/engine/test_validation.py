"""Validation during training: eval rows at the right steps, the best checkpoint, training left exactly as it
would be without evaluation, ``eval.select`` refused before training, resume keeping the best, ``export --best``.

A test-local benchmark, ``scripted``, scores a known sequence (``score`` by global step) and the live student's
classifier weights (``head``: the sum of ``head.weight``, which proves the evaluation saw the weights of that very
step). It also draws from every random generator and runs a routed forward, so that leaving training untouched is
not vacuous.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch
import yaml
from pydantic import Field

import kdkit.plugins
from kdkit import Factory, PluginConfig, hookimpl
from kdkit.cli import main
from kdkit.engine import trainer as trainer_module
from kdkit.engine.best import BEST_FILE, publish_best, read_best
from kdkit.engine.checkpoint import BEST, list_checkpoints, load_checkpoint, read_weights
from kdkit.engine.monitor import read_evaluations, read_metrics
from kdkit.engine.run import run_recipe
from kdkit.engine.validation import Validation, evaluation_mode
from kdkit.errors import DataError, RecipeError
from kdkit.interfaces import EvalSubject, Scores
from kdkit.plugins import load_plugins

RECIPE = Path(__file__).parents[3] / "recipes" / "tiny" / "timm_two_teachers.yaml"
#: Dropout in the student: training draws from torch's generator, so an evaluation that moved it would show.
DROPOUT = "student.model_kwargs.drop_rate=0.25"
#: The scripted scores by global step: the best (max) is step 2, the best (min) step 1.
SCORES = {1: 0.2, 2: 0.9, 3: 0.5, 4: 0.7}
#: What the scripted benchmark saw at each call: (step, student in train mode?, every adapter's route).
SEEN: list[tuple[int, bool, list[str]]] = []


class ScriptedConfig(PluginConfig):
    """Scores a known sequence by global step, and the sum of the live student's classifier weights."""

    kind: Literal["scripted"] = "scripted"
    scores: dict[int, float] = Field(default_factory=dict, description="The `score` metric by global step.")
    file: str | None = Field(None, description="A file read at build time (a missing one fails the build).")


class Scripted:
    """A model benchmark with a known metric sequence."""

    metrics = ("score", "head")
    primary = "score"
    published: dict[str, float] = {}

    def __init__(self, scores: dict[int, float]) -> None:
        self.scores = scores

    def evaluate(self, subject: EvalSubject) -> Scores:
        step = subject.extras["step"]
        model = subject.student.model
        SEEN.append((step, model.training, [h.state.current.mode for h in subject.adapters.values()]))
        random.random(), np.random.rand(), torch.rand(3)  # every generator moves: they must be restored after
        subject.student({"images": torch.rand(2, 3, 32, 32)})  # a routed forward: router statistics must be restored
        return Scores({"score": self.scores.get(step, 0.0), "head": float(model.head.weight.sum())})


def build(config: ScriptedConfig, context) -> Scripted:
    if config.file is not None and not context.resolve(config.file).is_file():
        raise DataError(f"scripted: {context.resolve(config.file)} does not exist")
    return Scripted(config.scores)


class ScriptedPlugin:
    @hookimpl
    def kdkit_benchmarks(self) -> dict[str, Factory]:
        return {"scripted": Factory(config=ScriptedConfig, build=build)}


@pytest.fixture(scope="module")
def registry():
    """kdkit's own plugins and the scripted benchmark."""
    return load_plugins(distributions={"kdkit"}, extra=[("scripted", ScriptedPlugin())]).registry


@pytest.fixture
def everywhere(registry, monkeypatch):
    """The CLI (validate, export) sees the scripted benchmark too."""
    monkeypatch.setattr(kdkit.plugins, "get_registry", lambda refresh=False: registry)


def evaluating(scores: dict[int, float] = SCORES, **fields) -> str:
    block = {"benchmark": {"kind": "scripted", "scores": scores}, "every": 1, **fields}
    return "eval=" + json.dumps(block)


def run(overrides: list[str], registry, **kwargs) -> Path:
    SEEN.clear()
    kwargs.setdefault("report", False)
    return run_recipe(RECIPE, overrides, registry=registry, tensorboard=kwargs.pop("tensorboard", False),
                      progress=False, **kwargs)


@pytest.fixture(scope="module")
def plain(fast_into, tmp_path_factory, registry) -> Path:
    """The fast recipe with dropout, without evaluation (4 steps over 2 stages)."""
    return run(fast_into(tmp_path_factory.mktemp("plain") / "run") + [DROPOUT], registry)


@pytest.fixture(scope="module")
def evaluated(fast_into, tmp_path_factory, registry) -> tuple[Path, list]:
    """The same run evaluating after every step; checkpoints every 3 steps, only the last one kept."""
    out = tmp_path_factory.mktemp("evaluated") / "run"
    settings = [DROPOUT, evaluating(), "runtime.checkpoint_every=3", "runtime.keep_last=1"]
    run_dir = run(fast_into(out) + settings, registry, tensorboard=True, report=True)
    return run_dir, list(SEEN)


def test_every_evaluation_is_logged_at_its_step(evaluated) -> None:
    run_dir, seen = evaluated
    rows = read_evaluations(run_dir)
    assert [(r["step"], r["stage"], r["stage_step"]) for r in rows] == [
        (1, "pretrain", 1), (2, "pretrain", 2), (3, "finetune", 1), (4, "finetune", 2)]
    assert [r["eval"]["score"] for r in rows] == [SCORES[s] for s in (1, 2, 3, 4)]
    assert all(r["benchmark"] == "scripted" and r["time_eval"] >= 0 for r in rows)
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2, 3, 4]  # training rows apart from eval rows
    # the benchmark got the student in eval mode, every adapter routed
    assert seen == [(step, False, ["routed"]) for step in (1, 2, 3, 4)]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("eval/score")] == [(s, SCORES[s]) for s in (1, 2, 3, 4)]
    assert "eval/head" in events.Tags()["scalars"]
    report = (run_dir / "report.md").read_text()
    assert "| step | stage | score | head |" in report and "| 2 | pretrain | 0.9 |" in report
    assert "Best checkpoint (`checkpoints/best`): step 2 (pretrain), score = 0.9 (max)." in report


def test_best_checkpoint_holds_the_best_step(evaluated) -> None:
    run_dir, _ = evaluated
    checkpoints = run_dir / "checkpoints"
    info = read_best(checkpoints)
    assert {k: info[k] for k in ("step", "stage", "metric", "value", "mode")} == {
        "step": 2, "stage": "pretrain", "metric": "score", "value": 0.9, "mode": "max"}
    assert json.loads((checkpoints / BEST / BEST_FILE).read_text()) == info
    # the best step was not on the checkpoint schedule (every 3 steps): it got its own; keep_last=1 never prunes best
    assert [p.name for p in list_checkpoints(checkpoints)] == ["step-00000004"]
    best = load_checkpoint(checkpoints / BEST)
    assert best.state["global_step"] == 2 and best.state["stage"] == "pretrain"
    evaluated_head = read_evaluations(run_dir)[1]["eval"]["head"]
    assert float(read_weights(checkpoints / BEST)["student.head.weight"].sum()) == evaluated_head
    assert float(read_weights(checkpoints / "step-00000004")["student.head.weight"].sum()) != evaluated_head
    # every later checkpoint carries the best, for resumption
    assert load_checkpoint(checkpoints / "step-00000004").state["best"]["step"] == 2


def test_evaluating_leaves_training_bit_identical(plain, evaluated) -> None:
    run_dir, _ = evaluated
    keys = ("step", "stage", "loss", "losses", "grad_norm", "lr", "routing", "skipped")
    rows = [[{k: r[k] for k in keys} for r in read_metrics(d)] for d in (run_dir, plain)]
    assert rows[0] == rows[1]
    ours, theirs = (read_weights(list_checkpoints(d / "checkpoints")[-1]) for d in (run_dir, plain))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_mode_min_stages_and_every(fast, registry) -> None:
    run_dir = run(fast + [evaluating(mode="min", stages=["finetune"], every=2)], registry)
    assert [r["step"] for r in read_evaluations(run_dir)] == [4]  # finetune only: its step 4 is even and its last
    assert read_best(run_dir / "checkpoints")["step"] == 4
    run_dir = run(fast[:-1] + [f"runtime.output_dir={run_dir.parent / 'min'}", evaluating(mode="min")], registry)
    assert read_best(run_dir / "checkpoints")["value"] == 0.2


def test_evaluation_restores_modes_routes_statistics_and_generators(registry, tiny_root) -> None:
    from kdkit.engine.build import build_distiller
    from kdkit.engine.distributed import World
    from kdkit.recipe import load_recipe

    recipe = load_recipe(RECIPE, [f"runtime.data_root={tiny_root}"], registry=registry)
    distiller = build_distiller(recipe, registry, torch.device("cpu"))
    distiller.train()
    distiller.student.blocks[0].eval()  # a mixed state is restored as it was, not as all-train
    handle = distiller.adapters["mola"]
    with torch.no_grad():
        distiller.plugin({"images": torch.rand(2, 3, 32, 32)})
    usage = {b: {g: c.clone() for g, c in groups.items()} for b, groups in handle.usage().items()}
    outputs = handle.router_outputs()
    flags = [m.training for m in distiller.modules()]
    states = (torch.get_rng_state(), random.getstate(), np.random.get_state())
    expected = (torch.rand(1), random.random(), np.random.rand())
    torch.set_rng_state(states[0]), random.setstate(states[1]), np.random.set_state(states[2])
    with handle.routing("off"):
        with evaluation_mode(distiller, distiller, World()):
            assert not distiller.student.training and handle.state.current.mode == "routed"
            assert not torch.is_grad_enabled()
            torch.rand(5), random.random(), np.random.rand()
            distiller.plugin({"images": torch.rand(3, 3, 32, 32)})
            distiller.student.train()  # a benchmark's own doing is undone too
        assert handle.state.current.mode == "off"
    assert torch.is_grad_enabled()
    assert [m.training for m in distiller.modules()] == flags
    after = handle.usage()
    assert after.keys() == usage.keys()
    assert all(torch.equal(after[b][g], usage[b][g]) for b in usage for g in usage[b])
    assert [o.probs.shape for o in handle.router_outputs()] == [o.probs.shape for o in outputs]
    got = (torch.rand(1), random.random(), np.random.rand())
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]


def write_recipe(tmp_path: Path, tiny_root: Path, eval_block: dict) -> Path:
    data = yaml.safe_load(RECIPE.read_text())
    data["runtime"]["data_root"] = str(tiny_root)
    data["eval"] = eval_block
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_validate_refuses_a_metric_the_benchmark_does_not_produce(tmp_path, tiny_root, everywhere, capsys) -> None:
    path = write_recipe(tmp_path, tiny_root, {"benchmark": {"kind": "scripted"}, "select": "scores"})
    assert main(["validate", str(path)]) == 1
    assert capsys.readouterr().err == (
        f"error: invalid recipe {path}: "
        "eval.select: benchmark 'scripted' has no metric 'scores' (it produces: score, head); "
        "did you mean 'score'?\n")
    path = write_recipe(tmp_path, tiny_root, {"benchmark": {"kind": "scripted"}, "select": "head", "mode": "min"})
    assert main(["validate", str(path)]) == 0


def test_recipe_errors_of_the_eval_block_are_reported_with_their_paths(tmp_path, tiny_root, everywhere, capsys) -> None:
    path = write_recipe(tmp_path, tiny_root, {"benchmark": {"kind": "scripted", "scorez": {}}, "stages": ["warmup"],
                                              "mode": "best", "every": 0})
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert "eval.benchmark.scorez: unknown key" in err
    assert "eval.mode: Input should be 'max' or 'min'" in err
    assert "eval.every: Input should be greater than 0" in err
    assert main(["validate", str(RECIPE), "--set", "eval.every=2"]) == 1  # an absent section can be started by --set
    assert "eval.benchmark: required key is missing" in capsys.readouterr().err
    path = write_recipe(tmp_path, tiny_root, {"benchmark": {"kind": "scripted"}, "stages": ["warmup"]})
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert "eval.stages[0]: 'warmup' is not a stage of this recipe (stages: pretrain, finetune)" in err


def test_run_refuses_bad_select_and_bad_benchmark_before_training(fast, registry, monkeypatch) -> None:
    def never(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(trainer_module.Trainer, "optimizer_step", never)
    with pytest.raises(RecipeError, match=r"eval\.select: benchmark 'scripted' has no metric 'top1' \(it produces: "
                                          r"score, head\)"):
        run(fast + [evaluating(select="top1")], registry)
    with pytest.raises(DataError, match=r"^eval\.benchmark: scripted: .*missing\.jsonl does not exist$"):
        run(fast + ["eval={benchmark: {kind: scripted, file: missing.jsonl}}"], registry)
    assert not Path(fast[-1].split("=", 1)[1]).exists()  # nothing written


def killed_run(fast, registry, monkeypatch, after: int, extra: list[str]) -> None:
    calls = {"n": 0}
    original = trainer_module.Trainer.optimizer_step

    def dies(self, *args, **kwargs):
        if calls["n"] == after:
            raise RuntimeError("killed")
        calls["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(trainer_module.Trainer, "optimizer_step", dies)
    with pytest.raises(RuntimeError, match="killed"):
        run(fast + extra, registry)
    monkeypatch.setattr(trainer_module.Trainer, "optimizer_step", original)


def test_resume_keeps_a_better_best(fast, registry, monkeypatch) -> None:
    """Killed after step 3; step 4 scores 0.7 < 0.9 of step 2: the resumed run keeps step 2 as its best."""
    killed_run(fast, registry, monkeypatch, 3, [evaluating()])
    run_dir = run(fast + [evaluating()], registry, resume=True)
    assert [r["step"] for r in read_evaluations(run_dir)] == [1, 2, 3, 4]
    assert read_best(run_dir / "checkpoints")["step"] == 2


def test_resume_publishes_a_best_the_killed_run_did_not(fast, registry, monkeypatch) -> None:
    """Killed after writing step 2's checkpoint but before making it the best: resuming makes it the best."""
    def killed(self, directory, world):
        if self.best["step"] == 2:
            raise RuntimeError("killed")
        original(self, directory, world)

    original = Validation.publish
    monkeypatch.setattr(Validation, "publish", killed)
    with pytest.raises(RuntimeError, match="killed"):
        run(fast + [evaluating()], registry)
    assert read_best(Path(fast[-1].split("=", 1)[1]) / "checkpoints")["step"] == 1
    monkeypatch.setattr(Validation, "publish", original)
    run_dir = run(fast + [evaluating()], registry, resume=True)
    assert read_best(run_dir / "checkpoints")["step"] == 2
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("best*")) == ["best", "best-00000002"]


def test_export_best(evaluated, plain, tmp_path, everywhere, capsys) -> None:
    run_dir, _ = evaluated
    assert main(["export", str(run_dir), str(tmp_path / "out"), "--best"]) == 0
    exported = yaml.safe_load((tmp_path / "out" / "kdkit_student.yaml").read_text())
    assert exported["source"]["checkpoint"] == BEST
    from safetensors.torch import load_file

    head = load_file(str(tmp_path / "out" / "student" / "model.safetensors"))["head.weight"]
    assert float(head.sum()) == read_evaluations(run_dir)[1]["eval"]["head"]
    capsys.readouterr()
    assert main(["export", str(plain), str(tmp_path / "none"), "--best"]) == 1
    assert capsys.readouterr().err == (
        f"error: {plain} has no best checkpoint ({plain / 'checkpoints' / BEST} does not exist); only runs whose "
        "recipe has an `eval` block keep one\n")


def test_publishing_replaces_the_previous_best_whole(tmp_path) -> None:
    checkpoints = tmp_path / "checkpoints"
    for step in (1, 2):
        (checkpoints / f"step-{step:08d}" / "dcp").mkdir(parents=True)
        (checkpoints / f"step-{step:08d}" / "dcp" / "shard").write_text(f"weights of step {step}")
        (checkpoints / f"step-{step:08d}" / "state.json").write_text("{}")
    publish_best(checkpoints, checkpoints / "step-00000001", {"step": 1, "value": 0.5})
    publish_best(checkpoints, checkpoints / "step-00000002", {"step": 2, "value": 0.7})
    assert (checkpoints / BEST).is_symlink() and (checkpoints / BEST).resolve().name == "best-00000002"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best", "best-00000002", "step-00000001", "step-00000002"]
    assert (checkpoints / BEST / "dcp" / "shard").read_text() == "weights of step 2"
    assert (checkpoints / BEST / "dcp" / "shard").stat().st_nlink == 2  # shared with step-00000002, not copied
    import shutil

    shutil.rmtree(checkpoints / "step-00000002")  # pruned by keep_last: the best keeps its files
    assert (checkpoints / BEST / "dcp" / "shard").read_text() == "weights of step 2"
    publish_best(checkpoints, checkpoints / "step-00000002", {"step": 2, "value": 0.75})  # the same step again
    assert read_best(checkpoints) == {"step": 2, "value": 0.75}

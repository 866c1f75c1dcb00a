"""End-to-end runs of the tiny recipe: outputs, exact resume, and the errors a user can hit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kdkit.engine import trainer as trainer_module
from kdkit.engine.checkpoint import list_checkpoints
from kdkit.engine.monitor import read_metrics
from kdkit.engine.run import run_recipe
from kdkit.errors import CheckpointError, KdkitError

RECIPE = Path(__file__).parents[3] / "recipes" / "tiny" / "timm_two_teachers.yaml"


def run(overrides: list[str], registry, **kwargs) -> Path:
    return run_recipe(RECIPE, overrides, registry=registry, tensorboard=False, progress=False, **kwargs)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(list_checkpoints(run_dir / "checkpoints")[-1] / "model.safetensors"))


@pytest.fixture(scope="module")
def straight(fast_into, tmp_path_factory, registry) -> Path:
    """The fast recipe run from start to end without interruption (4 steps over 2 stages)."""
    return run(fast_into(tmp_path_factory.mktemp("straight") / "run"), registry)


def test_run_writes_everything_a_user_reads(straight: Path) -> None:
    for name in ("recipe.yaml", "environment.json", "metrics.jsonl", "report.md", "losses.png", "throughput.png",
                 "routing_teacher.png", "routing_general.png"):
        assert (straight / name).is_file(), name
    records = read_metrics(straight)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert [r["stage"] for r in records] == ["pretrain", "pretrain", "finetune", "finetune"]
    assert set(records[0]["losses"]) == {"task", "fine", "coarse", "balance"}
    # the logged total is the recipe-weighted sum of the logged unweighted terms
    weights = {"task": 1.0, "fine": 0.5, "coarse": 0.5, "balance": 0.05}
    for record in records:
        assert record["loss"] == pytest.approx(sum(weights[k] * v for k, v in record["losses"].items()), rel=1e-5)
    usage = records[-1]["routing"]["teacher"]
    assert set(usage) == {"blocks.0.mlp", "blocks.1.mlp"} and all(sum(f) == pytest.approx(1.0) for f in usage.values())


def test_checkpoints_hold_what_was_trained_so_far_and_the_buffers(straight: Path, tiny_recipe, tiny_root, registry) -> None:
    import json

    from kdkit.engine.build import build_distiller
    from kdkit.recipe import load_recipe

    recipe = load_recipe(tiny_recipe, [f"runtime.data_root={tiny_root}"], registry=registry)
    distiller = build_distiller(recipe, registry, torch.device("cpu"))
    params = {n for n, _ in distiller.named_parameters()}
    buffers = set(distiller.state_dict()) - params
    first, *_, last = list_checkpoints(straight / "checkpoints")
    stage_one = json.loads((first / "state.json").read_text())
    held = set(load_file(str(first / "model.safetensors")))
    assert held == set(stage_one["trained"]) | buffers
    assert "student.patch_embed.proj.weight" not in held  # vision_base is frozen in stage 1: rebuilt on resume
    assert set(stage_one["frozen"]) == params - set(stage_one["trained"])  # each one's digest instead
    assert set(final_weights(straight)) == params | buffers  # after stage 2 everything has been trained


def test_checkpoints_hold_every_trained_part_and_no_teacher(straight: Path) -> None:
    names = set(final_weights(straight))
    assert any(".lora_A" in n for n in names) and any("router" in n for n in names)
    assert any(n.startswith("heads.aligners.clip.") for n in names)
    assert any(n.startswith("heads.losses.coarse.") for n in names)  # CGKD's summarizer f_cg
    assert "student.patch_embed.proj.weight" in names  # trained in stage 2 (vision_base)
    assert not any("teacher" in n.split(".")[0] for n in names)
    assert len(list_checkpoints(straight / "checkpoints")) == 4


@pytest.mark.parametrize("killed_after", [
    pytest.param(1, id="mid-stage-1"),
    pytest.param(2, id="stage-boundary"),
    pytest.param(3, id="mid-stage-2"),
])
def test_resume_continues_exactly(straight, fast, registry, monkeypatch, killed_after: int) -> None:
    calls = {"n": 0}
    original = trainer_module.Trainer.optimizer_step

    def dies(self, *args, **kwargs):
        if calls["n"] == killed_after:
            raise RuntimeError("killed")
        calls["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(trainer_module.Trainer, "optimizer_step", dies)
    with pytest.raises(RuntimeError, match="killed"):
        run(fast, registry, report=False)
    monkeypatch.setattr(trainer_module.Trainer, "optimizer_step", original)
    run_dir = run(fast, registry, resume=True, report=False)

    assert [r["losses"] for r in read_metrics(run_dir)] == [r["losses"] for r in read_metrics(straight)]
    resumed, reference = final_weights(run_dir), final_weights(straight)
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)


def test_output_dir_holding_a_run_is_never_overwritten(straight, registry) -> None:
    before = (straight / "metrics.jsonl").read_text()
    overrides = [f"runtime.output_dir={straight}", f"runtime.data_root={straight.parent}"]
    with pytest.raises(KdkitError, match="already holds a run .*pass --resume"):
        run(overrides, registry)
    assert (straight / "metrics.jsonl").read_text() == before


def test_resume_from_another_recipe_names_the_differences(straight, fast_into, tmp_path, registry) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(straight, copy)
    changed = fast_into(copy) + ["adapters.mola.rank=2", "losses.fine.weight=0.25"]
    with pytest.raises(CheckpointError, match=r"adapters\.mola\.rank: 4 -> 2.*losses\.fine\.weight: 0\.5 -> 0\.25"):
        run(changed, registry, resume=True)


def test_resume_with_frozen_weights_that_rebuild_differently(straight, fast_into, tmp_path, registry, monkeypatch) -> None:
    import shutil

    from kdkit.engine import run as run_module

    copy = tmp_path / "copy"
    shutil.copytree(straight, copy)
    for later in list_checkpoints(copy / "checkpoints")[2:]:
        shutil.rmtree(later)  # the run ends after stage 1: vision_base is frozen, not in the checkpoint
    build = run_module.build_distiller

    def changed_base(*args, **kwargs):  # as if the base checkpoint file had been replaced
        distiller = build(*args, **kwargs)
        with torch.no_grad():
            distiller.student.patch_embed.proj.weight.add_(1e-3)
        return distiller

    monkeypatch.setattr(run_module, "build_distiller", changed_base)
    with pytest.raises(CheckpointError, match=r"step-00000002: the frozen weights rebuilt from the recipe differ from "
                                              r"the ones the run trained against \(student\.patch_embed\.proj\.weight\)"):
        run(fast_into(copy), registry, resume=True)


def test_resume_without_checkpoint_says_so(fast, registry) -> None:
    with pytest.raises(CheckpointError, match="nothing to resume"):
        run(fast, registry, resume=True)


def test_trainable_group_matching_nothing(fast, registry) -> None:
    with pytest.raises(KdkitError, match=r"stages\.pretrain\.trainable\[1\] 'projector' matches no parameter; groups"):
        run(fast + ["stages.pretrain.trainable=[adapters, projector]"], registry)


def test_nonfinite_loss_stops_naming_step_term_and_batch(fast, registry, monkeypatch) -> None:
    from kdkit_plugins.losses.task import TaskLoss

    seen: list[list[int]] = []

    def poisoned(self, step):  # the second micro-batch of step 1 goes NaN
        seen.append(step.batch["ids"].tolist())
        return step.task_loss * (float("nan") if len(seen) == 2 else 1.0)

    monkeypatch.setattr(TaskLoss, "__call__", poisoned)
    with pytest.raises(trainer_module.NonFiniteLoss) as caught:
        run(fast, registry, report=False)
    assert str(caught.value).startswith(
        f"non-finite loss at stage 'pretrain' step 1 (global step 1): rank 0: term 'task' on batch ids {seen[1]}")
    assert "runtime.on_nonfinite: skip" in str(caught.value)


def test_nonfinite_loss_skips_the_step_when_asked(fast, registry, monkeypatch) -> None:
    from kdkit_plugins.losses.task import TaskLoss

    monkeypatch.setattr(TaskLoss, "__call__", lambda self, step: step.task_loss * float("nan"))
    run_dir = run(fast + ["runtime.on_nonfinite=skip", "stages.finetune.losses=[fine]"], registry, report=False)
    records = read_metrics(run_dir)
    assert [r["skipped"] for r in records] == [1, 2, 2, 2]
    assert all(torch.isfinite(v).all() for v in final_weights(run_dir).values())


FSDP2_HINT = "runtime.distributed.strategy: fsdp2 (shards weights, gradients and optimizer state over the GPUs)"


@pytest.mark.parametrize(("overrides", "advice"), [
    ([], "lower stages.pretrain.batch.per_device (accumulation keeps the global batch), or set "
         f"runtime.gradient_checkpointing: true / runtime.precision: bf16 / {FSDP2_HINT}"),
    (["runtime.gradient_checkpointing=true"],
     f"lower stages.pretrain.batch.per_device (accumulation keeps the global batch), or set runtime.precision: bf16 / "
     f"{FSDP2_HINT}; already on: runtime.gradient_checkpointing: true"),
], ids=["checkpointing_off", "checkpointing_on"])
def test_out_of_memory_names_the_batch_and_what_to_do(fast, registry, monkeypatch, overrides, advice) -> None:
    """The hint recommends only the memory savings that are off, and names those already on."""
    from kdkit.engine.step import Distiller

    def exhausted(self, batch):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Distiller, "forward", exhausted)
    with pytest.raises(KdkitError) as caught:
        run(fast + overrides, registry, report=False)
    assert str(caught.value) == f"out of memory in stage 'pretrain' step 1 with batch.per_device=2 on cpu: {advice}"


def test_out_of_memory_with_every_saving_on_names_what_is_left(tiny_recipe, registry) -> None:
    from kdkit.recipe import load_recipe

    recipe = load_recipe(tiny_recipe, ["stages.finetune.batch.per_device=1", "runtime.gradient_checkpointing=true",
                                       "runtime.precision=bf16", "runtime.distributed.strategy=fsdp2"], registry=registry)
    message = trainer_module.out_of_memory_message("finetune", 4, recipe.stages["finetune"], recipe.runtime,
                                                   torch.device("cuda", 3))
    assert message == (
        "out of memory in stage 'finetune' step 5 with batch.per_device=1 on cuda:3: train fewer parameters "
        "(stages.finetune.trainable) or use a device with more memory; already on: runtime.gradient_checkpointing: "
        "true, runtime.precision: bf16, runtime.distributed.strategy: fsdp2")


def test_out_of_memory_with_forced_passes_kept_recommends_checkpointing_them(tiny_recipe, registry) -> None:
    from kdkit.recipe import load_recipe

    recipe = load_recipe(tiny_recipe, ["stages.finetune.batch.per_device=1", "runtime.gradient_checkpointing=true",
                                       "runtime.checkpoint_forced_passes=false", "runtime.precision=bf16",
                                       "runtime.distributed.strategy=fsdp2"], registry=registry)
    message = trainer_module.out_of_memory_message("finetune", 0, recipe.stages["finetune"], recipe.runtime,
                                                   torch.device("cuda", 0))
    assert message == (
        "out of memory in stage 'finetune' step 1 with batch.per_device=1 on cuda:0: set "
        "runtime.checkpoint_forced_passes: true; already on: runtime.gradient_checkpointing: true, "
        "runtime.precision: bf16, runtime.distributed.strategy: fsdp2")


def test_forced_pass_checkpointing_needs_layer_checkpointing(tiny_recipe, registry) -> None:
    from kdkit.recipe import load_recipe

    with pytest.raises(KdkitError, match="checkpoint_forced_passes: true needs gradient_checkpointing: true"):
        load_recipe(tiny_recipe, ["runtime.checkpoint_forced_passes=true"], registry=registry)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_runs_on_cpu(fast, registry, monkeypatch, precision) -> None:
    """bf16 autocast works on CPU; fp16 too, with a gradient scaler (checkpointed) that owns overflow steps."""
    import json

    from kdkit.engine.step import Distiller

    dtypes = []
    forward = Distiller.forward

    def watched(self, batch):
        losses, step = forward(self, batch)
        dtypes.append(step.logits.dtype)  # the classifier head: a matmul, so autocast computes it in low precision
        return losses, step

    monkeypatch.setattr(Distiller, "forward", watched)
    run_dir = run(fast + [f"runtime.precision={precision}", "stages.finetune.max_steps=1"], registry, report=False)
    records = read_metrics(run_dir)
    assert len(records) == 3 and all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    assert set(dtypes) == {torch.bfloat16 if precision == "bf16" else torch.float16}  # autocast was on
    scaler = json.loads((list_checkpoints(run_dir / "checkpoints")[-1] / "state.json").read_text())["scaler"]
    assert (scaler is not None) == (precision == "fp16")
    if precision == "fp16":  # a gradient overflowed (at the initial scale 2**16): the scaler skipped it, no stop
        assert scaler["scale"] < 2.0**16

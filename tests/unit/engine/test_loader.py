"""Stage plans and batch streams: accumulation, errors, resumable positions, sharding."""

from __future__ import annotations

import pytest
import torch

from kdkit.engine.distributed import World
from kdkit.engine.loader import batch_stream, plan_stage
from kdkit.errors import KdkitError
from kdkit.recipe.schema import Stage
from kdkit_plugins.data.synthetic import SyntheticImages


def stage(global_size: int, per_device: int, **extra) -> Stage:
    return Stage.model_validate({"data": {"kind": "synthetic"}, "trainable": ["head"], "optimizer": {"lr": 1e-3},
                                 "batch": {"global_size": global_size, "per_device": per_device}, **extra})


def test_accumulation_is_global_over_world_times_per_device() -> None:
    plan = plan_stage("s", stage(16, 2), 64, World(size=2))
    assert (plan.accumulation, plan.batches_per_epoch, plan.steps) == (4, 16, 4)
    assert plan_stage("s", stage(16, 2, epochs=2.5), 64, World()).steps == 10
    assert plan_stage("s", stage(16, 2, max_steps=7), 64, World()).steps == 7


def test_global_batch_not_divisible_by_world() -> None:
    with pytest.raises(KdkitError, match=r"stages.s.batch: global_size 6 is not divisible by world size 2 x per_device 2"):
        plan_stage("s", stage(6, 2), 64, World(size=2))


def test_dataset_smaller_than_a_batch() -> None:
    with pytest.raises(KdkitError, match="the dataset has 3 samples, fewer than one batch of 2 per process on 2"):
        plan_stage("s", stage(4, 2), 3, World(size=2))


def ids(stream, count: int) -> list[list[int]]:
    return [next(stream)["ids"].tolist() for _ in range(count)]


def test_stream_started_anywhere_continues_the_full_stream() -> None:
    data = SyntheticImages(10, 8, 2, 0.1, 0)
    s = stage(4, 2)
    plan = plan_stage("s", s, len(data), World())
    full = ids(batch_stream(data, s, plan, World(), 0, 0, 0), 12)  # crosses two epoch boundaries
    assert ids(batch_stream(data, s, plan, World(), 0, 7, 0), 5) == full[7:]
    assert full[:5] != full[5:10]  # each epoch is shuffled anew


def test_two_processes_see_the_same_samples_per_step_as_one() -> None:
    data = SyntheticImages(16, 8, 2, 0.1, 0)
    one = plan_stage("s", stage(8, 2), 16, World())
    two = plan_stage("s", stage(8, 2), 16, World(size=2))
    single = ids(batch_stream(data, stage(8, 2), one, World(), 3, 0, 0), 2 * one.accumulation)
    ranks = [ids(batch_stream(data, stage(8, 2), two, World(rank=r, size=2), 3, 0, 0), 2 * two.accumulation) for r in (0, 1)]
    for step in range(2):
        expected = sorted(sum(single[step * one.accumulation:(step + 1) * one.accumulation], []))
        got = sorted(sum([b for r in ranks for b in r[step * two.accumulation:(step + 1) * two.accumulation]], []))
        assert got == expected


def test_synthetic_samples_depend_only_on_seed_and_index() -> None:
    a, b = SyntheticImages(8, 16, 4, 0.1, 0), SyntheticImages(8, 16, 4, 0.1, 0)
    assert torch.equal(a[5]["images"], b[5]["images"]) and not torch.equal(a[5]["images"], a[6]["images"])
    assert sorted(int(a[i]["labels"]) for i in range(8)) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert a[0]["images"].min() >= 0 and a[0]["images"].max() <= 1


class PidImages(torch.utils.data.Dataset):
    """Samples that say which process read them."""

    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int) -> dict[str, int]:
        import os

        return {"ids": index, "pid": os.getpid()}


def test_workers_persist_across_epochs_and_the_stream_is_unchanged() -> None:
    import os

    s = stage(2, 2)
    plan = plan_stage("s", s, 6, World())
    batches = [next(stream) for stream in [batch_stream(PidImages(), s, plan, World(), 0, 0, 1)] for _ in range(9)]
    pids = {int(p) for b in batches for p in b["pid"]}
    assert len(pids) == 1 and os.getpid() not in pids  # 3 epochs, one worker process
    in_process = ids(batch_stream(PidImages(), s, plan, World(), 0, 0, 0), 9)
    assert [b["ids"].tolist() for b in batches] == in_process


def test_loader_pins_memory_only_for_cuda() -> None:
    from kdkit.engine.loader import loader_options

    assert loader_options(torch.device("cuda", 0), 2) == {"pin_memory": True, "persistent_workers": True}
    assert loader_options(torch.device("cpu"), 0) == {"pin_memory": False, "persistent_workers": False}

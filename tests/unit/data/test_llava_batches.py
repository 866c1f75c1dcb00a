"""Collate, length-grouped order (through the engine's loader too) and DataLoader workers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from kdkit import BuildContext
from kdkit.engine.distributed import World
from kdkit.engine.loader import batch_stream, plan_stage
from kdkit.recipe.schema import Stage
from kdkit_plugins.data._grouping import length_grouped_order
from kdkit_plugins.data.llava_json import LlavaJsonConfig, LlavaJsonDataset, build
from kdkit_plugins.fixtures.llava_data import write_mini_llava_data


@pytest.fixture
def mini(tmp_path: Path, tokenizer_dir: Path):
    data = write_mini_llava_data(tmp_path, captions=6, conversations=10, text_only=6)

    def make(**config) -> LlavaJsonDataset:
        fields = {"json": data.conversations, "image_folder": data.image_folder, "tokenizer": str(tokenizer_dir),
                  "image_tokens": 4, "image_size": 16, **config}
        return build(LlavaJsonConfig.model_validate(fields), BuildContext(data_root=tmp_path))

    return make


def test_collate_pads_right_to_the_longest(mini) -> None:
    data = mini()
    samples = [data[0], data[1], data[len(data) - 1]]  # 2 rounds, 3 rounds, text-only
    batch = data.collate(samples)
    lengths = [len(s["input_ids"]) for s in samples]
    longest = max(lengths)
    assert batch["images"].shape == (3, 3, 16, 16) and batch["images"].dtype == torch.float32
    for key, dtype in (("input_ids", torch.long), ("attention_mask", torch.long), ("labels", torch.long),
                       ("instruction_mask", torch.bool)):
        assert batch[key].shape == (3, longest) and batch[key].dtype == dtype, key
    for row, (sample, length) in enumerate(zip(samples, lengths)):
        assert torch.equal(batch["input_ids"][row, :length], sample["input_ids"])
        assert torch.equal(batch["labels"][row, :length], sample["labels"])
        assert (batch["input_ids"][row, length:] == data.vocab.pad).all() and data.vocab.pad == 3
        assert (batch["labels"][row, length:] == -100).all()
        assert batch["attention_mask"][row].tolist() == [1] * length + [0] * (longest - length)
        assert not batch["instruction_mask"][row, length:].any()
    assert batch["has_image"].tolist() == [True, True, False]
    assert batch["ids"].tolist() == [0, 1, len(data) - 1]


def test_mini_data_uses_only_known_words(mini) -> None:
    for template, json_name in (("vicuna_v1", "conversations.json"), ("plain", "captions.json")):
        data = mini(template=template, json=json_name)
        tokens = torch.cat([data[i]["input_ids"] for i in range(len(data))])
        assert data.vocab.tokenizer.unk_token_id not in tokens.tolist(), template


def test_group_order_is_a_seeded_permutation_of_sorted_batches() -> None:
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 100, (70,), generator=gen).tolist()
    indices = torch.randperm(70, generator=gen).tolist()[:64]
    order = length_grouped_order(indices, lengths, group=4, mega=4, seed=1)
    assert sorted(order) == sorted(indices)
    assert order == length_grouped_order(indices, lengths, group=4, mega=4, seed=1)
    assert order != length_grouped_order(indices, lengths, group=4, mega=4, seed=2)
    batches = [order[i:i + 4] for i in range(0, 64, 4)]
    for batch in batches:
        assert [lengths[i] for i in batch] == sorted((lengths[i] for i in batch), reverse=True)

    def padded(order: list[int]) -> int:
        return sum(4 * max(lengths[i] for i in order[k:k + 4]) for k in range(0, len(order), 4))

    assert padded(order) < 0.8 * padded(indices)


def test_group_order_keeps_modalities_apart() -> None:
    lengths = list(range(30))
    images = [i % 3 != 0 for i in range(30)]  # 20 with an image, 10 text-only
    order = length_grouped_order(list(range(30)), lengths, group=4, mega=2, seed=0, modalities=images)
    assert sorted(order) == list(range(30))
    full = [order[i:i + 4] for i in range(0, 28, 4)]  # 5 image batches + 2 text-only batches
    assert all(len({images[i] for i in batch}) == 1 for batch in full)
    assert sorted(order[-2:]) == [24, 27]  # the text-only leftovers, last


def test_dataset_group_order_only_when_asked(mini) -> None:
    indices = list(range(16))[::-1]
    assert mini().group_order(indices, 4, 0) == indices
    grouped = mini(group_by_length=True).group_order(indices, 4, 0)
    assert sorted(grouped) == sorted(indices) and grouped != indices


class Reversing(Dataset):
    """Sample i -> {"ids": i}; its group_order reverses the order and records its calls."""

    def __init__(self, size: int) -> None:
        self.size, self.calls = size, []

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"ids": torch.tensor(index)}

    def group_order(self, indices: list[int], group: int, seed: int) -> list[int]:
        self.calls.append((len(indices), group, seed))
        return indices[::-1]


def stage(per_device: int) -> Stage:
    return Stage.model_validate({"data": {"kind": "synthetic"}, "trainable": ["head"], "optimizer": {"lr": 1e-3},
                                 "batch": {"global_size": per_device, "per_device": per_device}})


def test_loader_reorders_each_epoch_through_group_order() -> None:
    from torch.utils.data import DistributedSampler

    data, s = Reversing(10), stage(2)
    plan = plan_stage("s", s, len(data), World())
    stream = batch_stream(data, s, plan, World(), 3, 0, 0)
    got = [next(stream)["ids"].tolist() for _ in range(10)]
    for epoch in (0, 1):
        sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=3, drop_last=True)
        sampler.set_epoch(epoch)
        reversed_order = list(sampler)[::-1]
        assert sum(got[epoch * 5:(epoch + 1) * 5], []) == reversed_order
    assert data.calls[:2] == [(10, 2, 3 * 1_000_003), (10, 2, 3 * 1_000_003 + 1)]


def test_resumed_stream_reads_the_same_grouped_batches(mini) -> None:
    data, s = mini(group_by_length=True), stage(2)
    plan = plan_stage("s", s, len(data), World())
    stream = batch_stream(data, s, plan, World(), 0, 0, 0)
    full = [next(stream)["ids"].tolist() for _ in range(14)]  # crosses an epoch boundary (11 batches per epoch)
    resumed = batch_stream(data, s, plan, World(), 0, 9, 0)
    assert [next(resumed)["ids"].tolist() for _ in range(5)] == full[9:]


def test_workers_give_the_same_batches(mini) -> None:
    data = mini()
    batches = [list(DataLoader(data, batch_size=4, collate_fn=data.collate, num_workers=n)) for n in (0, 2)]
    assert len(batches[0]) == len(batches[1]) == 4
    for one, two in zip(*batches):
        assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)

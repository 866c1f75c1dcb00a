"""The llava student on tiny assets: features, scatter and loss against transformers' own LLaVA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from kdkit import BuildContext
from kdkit.errors import DataError
from kdkit_plugins.fixtures.llava import write_tiny_llava
from kdkit_plugins.students.llava import LlavaStudentConfig, build


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("llava")
    write_tiny_llava(root / "llava")
    return root


def make(root: Path, **fields: object):
    config = LlavaStudentConfig.model_validate({"kind": "llava", "checkpoint": "llava", **fields})
    student = build(config, BuildContext(name="student", data_root=root))
    student.model.eval()
    return student


def reference(root: Path) -> LlavaForConditionalGeneration:
    return LlavaForConditionalGeneration.from_pretrained(root / "llava").eval()


def batch(student, has_image=(True, True), seed: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded token rows with <image> expanded, labels on the last tokens of each row."""
    gen = torch.Generator().manual_seed(seed)
    image = [student.image_token_id] * student.image_tokens
    rows, labels = [], []
    for i, with_image in enumerate(has_image):
        text = torch.randint(10, 300, (6 + 2 * i,), generator=gen).tolist()
        ids = [1] + (image if with_image else []) + text
        rows.append(ids)
        labels.append([-100] * (len(ids) - 3) + ids[-3:])
    width = max(len(r) for r in rows)
    pad = student.tokenizer.pad_token_id
    return {
        "images": torch.rand(len(rows), 3, 40, 40, generator=gen),
        "input_ids": torch.tensor([r + [pad] * (width - len(r)) for r in rows]),
        "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
        "labels": torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels]),
        "instruction_mask": torch.tensor([[False] * width for _ in rows]),
        "has_image": torch.tensor(has_image),
        "ids": torch.arange(len(rows)),
    }


def test_attributes_come_from_the_configs(assets: Path) -> None:
    student = make(assets)
    assert (student.feature_spec.height, student.feature_spec.width, student.feature_spec.channels) == (4, 4, 32)
    assert student.image_tokens == 16 and student.image_size == 32 and student.text_dim == 32
    assert student.image_token_id == student.tokenizer.convert_tokens_to_ids("<image>")
    assert student.adapter_target is student.model.model.vision_tower


@pytest.mark.parametrize(("strategy", "layer"), [("default", -2), ("full", -2), ("default", 1)])
def test_features_are_the_tower_hidden_state(assets: Path, strategy: str, layer: int) -> None:
    student = make(assets, vision_feature_select_strategy=strategy, vision_feature_layer=layer)
    ref = reference(assets)
    images = torch.rand(2, 3, 32, 32)
    pixels = student.pixels(images)
    with torch.no_grad():
        hidden = ref.model.vision_tower(pixels, output_hidden_states=True).hidden_states[layer]
        projected = ref.model.get_image_features(pixels, vision_feature_layer=layer,
                                                 vision_feature_select_strategy=strategy).pooler_output
        features = student.encode(images)
        selected = student.select(images)
    torch.testing.assert_close(features, hidden[:, 1:], rtol=0, atol=0)  # I^S is always the patch grid
    assert selected.shape[1] == student.image_tokens == 16 + (strategy == "full")
    torch.testing.assert_close(student.projector(selected), torch.stack(list(projected)))


def test_pixels_use_clip_normalisation(assets: Path) -> None:
    student = make(assets)
    images = torch.full((1, 3, 32, 32), 0.5)
    expected = (0.5 - torch.tensor(student.mean)) / torch.tensor(student.std)
    torch.testing.assert_close(student.pixels(images)[0, :, 0, 0], expected)
    assert student.mean == (0.48145466, 0.4578275, 0.40821073)


@pytest.mark.parametrize("has_image", [(True, True), (True, False)])
def test_task_loss_equals_transformers_llava(assets: Path, has_image: tuple[bool, bool]) -> None:
    student = make(assets)
    ref = reference(assets)
    data = batch(student, has_image)
    with torch.no_grad():
        out = student(data)
        pixels = student.pixels(data["images"])[data["has_image"]]
        expected = ref(input_ids=data["input_ids"], pixel_values=pixels, attention_mask=data["attention_mask"],
                       labels=data["labels"])
    torch.testing.assert_close(out.task_loss, expected.loss)
    torch.testing.assert_close(out.logits, expected.logits)
    torch.testing.assert_close(out.text, ref.get_input_embeddings()(data["input_ids"]))
    assert out.text_mask is data["instruction_mask"]


def test_image_token_count_mismatch_is_a_data_error(assets: Path) -> None:
    student = make(assets)
    data = batch(student)
    data["input_ids"][0, 1] = 20  # one placeholder fewer in sample 0
    with pytest.raises(DataError, match=r"<image> tokens per sample \[15, 16\] do not match \[16, 16\]"):
        student(data)


def test_zero_init_mola_leaves_features_and_loss_identical(assets: Path, registry) -> None:
    student = make(assets)
    data = batch(student)
    with torch.no_grad():
        before = student(data)
    context = BuildContext(name="mola", teacher_names=("a", "b"), model=student.adapter_target)
    handle = registry.build("adapter", {"kind": "mola", "rank": 4, "general_experts": 2, "router_hidden": 8}, context)
    assert len(handle.modules) == 3  # every CLIP layer's mlp, found by MoLA's default pattern
    with torch.no_grad(), handle.routing("routed"):
        after = student(data)
    torch.testing.assert_close(after.features, before.features, rtol=0, atol=0)
    torch.testing.assert_close(after.task_loss, before.task_loss, rtol=0, atol=0)


def test_parameter_groups_partition_the_model(assets: Path) -> None:
    student = make(assets)
    groups = student.parameter_groups()
    names = [n for n, _ in student.model.named_parameters()]
    assert sorted(n for g in groups.values() for n in g) == sorted(names)
    assert all("vision_tower" in n for n in groups["vision_base"])
    assert all("multi_modal_projector" in n for n in groups["projector"])
    assert "lm_head.weight" in groups["llm"] and groups["projector"]
    units = student.shard_units()
    assert len(units) == 3 + 2  # tower layers + decoder layers


def test_gradient_checkpointing_leaves_a_frozen_tower_out_of_the_backward(assets: Path) -> None:
    """LLaVA-1.5's stage 2 (tower frozen): checkpointing recomputes the decoder layers only, and the
    gradients equal those without checkpointing."""
    data = batch(make(assets))
    grads, recomputed = [], []
    for checkpointed in (False, True):
        student = make(assets)
        for param in student.vision_tower.parameters():
            param.requires_grad_(False)
        if checkpointed:
            student.enable_gradient_checkpointing()
        student.model.train()
        calls = {"tower": 0, "llm": 0}
        tower_layers = student.model.config.vision_config.num_hidden_layers
        for index, layer in enumerate(student.shard_units()):
            part = "tower" if index < tower_layers else "llm"
            layer.self_attn.register_forward_hook(lambda *_, part=part: calls.__setitem__(part, calls[part] + 1))
        loss = student(data).task_loss
        forward = dict(calls)
        loss.backward()
        recomputed.append({k: calls[k] - forward[k] for k in calls})
        grads.append({n: p.grad.clone() for n, p in student.model.named_parameters() if p.grad is not None})
    assert recomputed == [{"tower": 0, "llm": 0}, {"tower": 0, "llm": 2}]
    assert grads[0].keys() == grads[1].keys() and grads[0] and not any("vision_tower" in n for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], msg=name)


def test_gradient_checkpointing_gives_the_same_gradients(assets: Path) -> None:
    data = batch(make(assets))
    grads = []
    for checkpointed in (False, True):
        student = make(assets)
        if checkpointed:
            student.enable_gradient_checkpointing()
        student.model.train()
        student(data).task_loss.backward()
        grads.append({n: p.grad.clone() for n, p in student.model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], msg=name)

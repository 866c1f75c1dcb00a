"""Export of a trained student and its reload: same features and answers, exact parameter counts, errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

import kdkit
from kdkit.cli import main
from kdkit.engine.build import build_student
from kdkit.engine.checkpoint import save_checkpoint
from kdkit.errors import CheckpointError
from kdkit.export import MANIFEST, export_run, load_student
from kdkit.recipe import dump_recipe, validate_recipe
from kdkit_plugins.fixtures.llava import write_tiny_llava

MOLA = {"kind": "mola", "rank": 4, "general_experts": 2, "router_hidden": 8}
#: The tiny LLaVA's MoLA: 3 CLIP blocks, 1 teacher + 2 general experts of rank 4 on fc1 (32->64) and fc2 (64->32),
#: a teacher router 32->8->1 and a general router 32->8->2 per block.
ADAPTER_PARAMS = 3 * 3 * 4 * ((32 + 64) + (64 + 32))
ROUTER_PARAMS = 3 * ((32 * 8 + 8 + 8 * 1 + 1) + (32 * 8 + 8 + 8 * 2 + 2))


def recipe_data(root: Path) -> dict:
    return {
        "name": "tiny_llava",
        "student": {"kind": "llava", "checkpoint": "llava"},
        "teachers": {"clip": {"kind": "hf_clip", "checkpoint": "teachers/clip"}},
        "adapters": {"mola": dict(MOLA)},
        "losses": {"task": {"kind": "task"}},
        "stages": {"pretrain": {"data": {"kind": "llava_json", "json": "data.json", "template": "plain"},
                                "trainable": ["adapters", "routers", "projector"], "optimizer": {"lr": 1e-3},
                                "batch": {"global_size": 2, "per_device": 2}, "max_steps": 1}},
        "runtime": {"data_root": str(root), "seed": 3},
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, registry):
    """A run directory whose checkpoint holds only trained tensors: non-zero MoLA experts, routers, projector."""
    root = tmp_path_factory.mktemp("export")
    write_tiny_llava(root / "llava")
    recipe = validate_recipe(recipe_data(root), registry)
    run_dir = root / "run"
    run_dir.mkdir()
    dump_recipe(recipe, run_dir / "recipe.yaml")
    torch.manual_seed(recipe.runtime.seed)
    student, adapters = build_student(recipe, registry, torch.device("cpu"))
    gen = torch.Generator().manual_seed(5)
    trained = {}
    groups = student.parameter_groups()
    names = set(groups["projector"]) | {n for n, _ in student.model.named_parameters() if "lora_" in n or "router_" in n}
    with torch.no_grad():
        for name, param in student.model.named_parameters():
            if name in names:
                param.add_(0.3 * torch.randn(param.shape, generator=gen))
                trained[f"student.{name}"] = param.detach().clone()
    save_checkpoint(run_dir / "checkpoints", 1, trained, {}, {"global_step": 1}, keep_last=1)
    student.model.eval()
    return root, run_dir, student, adapters


def image_file(path: Path) -> Path:
    pixels = (torch.rand(20, 28, 3, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    Image.fromarray(pixels.numpy()).save(path)
    return path


def test_export_reloads_the_same_student(run, registry, tmp_path: Path) -> None:
    root, run_dir, student, _ = run
    out = tmp_path / "out"
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    prompts = ["what color is the circle ?", "how many squares are there ?"]
    with torch.no_grad():
        features = student.encode(images)
    answers = student.generate(images, prompts, max_new_tokens=6)
    assert all(answers)
    export_run(run_dir, out, registry=registry)
    loaded = kdkit.load_student(out, registry=registry)
    assert not loaded.model.training
    assert [h.state.current.mode for h in loaded.kdkit_adapters.values()] == ["routed"]
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(images), features, rtol=0, atol=0)
    assert loaded.generate(images, prompts, max_new_tokens=6) == answers
    manifest = yaml.safe_load((out / MANIFEST).read_text())
    assert manifest["teacher_names"] == ["clip"]
    assert manifest["student"]["checkpoint"] == "." and manifest["student_dir"] == "student"
    assert sorted(p.name for p in (out / "adapters" / "mola").iterdir()) == ["adapter.json", "adapter.safetensors"]
    # the exported model is plain transformers LLaVA: no adapter tensor in it
    from safetensors import safe_open

    with safe_open(str(out / "student" / "model.safetensors"), "pt") as weights:
        assert not [k for k in weights.keys() if "lora_" in k or "router_" in k or "base_layer" in k]


def test_the_experts_matter(run, registry, tmp_path: Path) -> None:
    """Without its adapters the exported base model gives other features: the reload test is not vacuous."""
    _, run_dir, student, _ = run
    out = tmp_path / "out"
    export_run(run_dir, out, registry=registry)
    loaded = kdkit.load_student(out, registry=registry)
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad(), loaded.kdkit_adapters["mola"].routing("off"):
        plain = loaded.encode(images)
    with torch.no_grad():
        assert not torch.allclose(plain, student.encode(images))


def test_parameter_counts_are_exact(run, registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, run_dir, _, _ = run
    from transformers import LlavaForConditionalGeneration

    base = sum(p.numel() for p in LlavaForConditionalGeneration.from_pretrained(root / "llava").parameters())
    assert main(["export", str(run_dir), str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    percent = 100 * (ADAPTER_PARAMS + ROUTER_PARAMS) / base
    assert f"base model            {base:>15,}" in printed
    assert f"+ adapters            {ADAPTER_PARAMS:>15,}" in printed
    assert f"+ routers             {ROUTER_PARAMS:>15,}" in printed
    assert f"with adapters         {base + ADAPTER_PARAMS + ROUTER_PARAMS:>15,}  (+{percent:.3f}%)" in printed
    parameters = yaml.safe_load((tmp_path / "out" / MANIFEST).read_text())["parameters"]
    assert parameters == {"base": base, "adapters": ADAPTER_PARAMS, "routers": ROUTER_PARAMS,
                          "total": base + ADAPTER_PARAMS + ROUTER_PARAMS, "added_percent": round(percent, 4)}


def test_generate_command_answers_like_the_student(run, registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, run_dir, student, _ = run
    out = tmp_path / "out"
    export_run(run_dir, out, registry=registry)
    picture = image_file(tmp_path / "picture.png")
    capsys.readouterr()
    assert main(["generate", str(out), "--image", str(picture), "--prompt", "what is this ?", "--max-new-tokens", "5"]) == 0
    expected = student.generate(student.load_image(picture), ["what is this ?"], max_new_tokens=5)[0]
    assert capsys.readouterr().out == expected + "\n"


def test_missing_or_broken_exports_name_the_file(run, registry, tmp_path: Path) -> None:
    _, run_dir, _, _ = run
    with pytest.raises(CheckpointError, match=re.escape(f"export directory {tmp_path / 'none'} does not exist")):
        load_student(tmp_path / "none", registry=registry)
    out = tmp_path / "out"
    export_run(run_dir, out, registry=registry)
    weights = out / "adapters" / "mola" / "adapter.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    with pytest.raises(CheckpointError, match=re.escape(f"adapter 'mola': {weights.parent} is corrupt")):
        load_student(out, registry=registry)
    (out / MANIFEST).write_text("format: [unclosed")
    with pytest.raises(CheckpointError, match=re.escape(f"{out / MANIFEST} is corrupt")):
        load_student(out, registry=registry)
    (out / MANIFEST).unlink()
    with pytest.raises(CheckpointError, match=re.escape(f"{out / MANIFEST} is missing: {out} is not a kdkit export")):
        load_student(out, registry=registry)


def test_export_errors(run, registry, tmp_path: Path) -> None:
    _, run_dir, _, _ = run
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path / 'recipe.yaml'} does not exist")):
        export_run(tmp_path, tmp_path / "out", registry=registry)
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint {tmp_path / 'step-9'} does not exist")):
        export_run(run_dir, tmp_path / "out", checkpoint=tmp_path / "step-9", registry=registry)


def tiny_vit() -> torch.nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=2, mlp_ratio=2.0, num_classes=0).eval()


def test_eject_restores_the_original_modules(registry) -> None:
    from kdkit import BuildContext

    model = tiny_vit()
    originals = {n: m for n, m in model.named_modules() if n.endswith("mlp") or n.endswith(("fc1", "fc2"))}
    images = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        before = model(images)
    handle = registry.build("adapter", {**MOLA, "general_experts": 2}, BuildContext(teacher_names=("a",), model=model))
    with torch.no_grad():
        for param in handle.parameters("adapters"):
            param.normal_()
        assert not torch.allclose(model(images), before)
    handle.eject()
    assert {n: m for n, m in model.named_modules() if n in originals} == originals  # the very same objects
    assert not [n for n, _ in model.named_parameters() if "lora_" in n or "router_" in n]
    with torch.no_grad():
        torch.testing.assert_close(model(images), before, rtol=0, atol=0)
    with pytest.raises(kdkit.KdkitError, match="holds no injected module"):
        handle.eject()


def test_eject_keeps_a_merged_lora(registry) -> None:
    from kdkit import BuildContext

    model = tiny_vit()
    handle = registry.build("adapter", {"kind": "lora", "rank": 2}, BuildContext(model=model))
    with torch.no_grad():
        for param in handle.parameters("adapters"):
            param.normal_()
    images = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        adapted = model(images)
    handle.merge()
    targets = list(handle.modules)
    handle.eject()
    assert targets and all(type(model.get_submodule(n)) is torch.nn.Linear for n in targets)
    with torch.no_grad():
        torch.testing.assert_close(model(images), adapted)

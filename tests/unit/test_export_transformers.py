"""An exported LLaVA student opened by the Hugging Face stack: AutoProcessor (pad-to-square images, the
training chat template), the model card, what plain transformers does with MoLA, merged LoRA, peft's format."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import kdkit
from kdkit.cli import main
from kdkit.engine.build import build_student
from kdkit.engine.checkpoint import save_checkpoint
from kdkit.errors import KdkitError
from kdkit.export import export_run
from kdkit.model_card import write_model_card
from kdkit.recipe import dump_recipe, validate_recipe
from kdkit_plugins.fixtures.llava import write_tiny_llava
from kdkit_plugins.students._llava_generate import prompt_ids

QUESTION = "what color is the circle ?"
ADAPTERS = {"mola": {"kind": "mola", "rank": 4, "general_experts": 2, "router_hidden": 8},
            "lora": {"kind": "lora", "rank": 4, "alpha": 8.0}}


def make_run(root: Path, registry, adapter: str, template: str = "vicuna_v1") -> Path:
    """A run directory whose checkpoint has trained (random, non-zero) adapters and projector."""
    write_tiny_llava(root / "llava")
    (root / "teachers").mkdir()
    (root / "teachers" / "clip.safetensors").write_bytes(b"tiny teacher weights")
    data = {
        "name": f"tiny_llava_{adapter}", "description": "A tiny LLaVA distilled from one CLIP teacher.",
        "student": {"kind": "llava", "checkpoint": "llava", "template": template},
        "teachers": {"clip": {"kind": "timm", "model": "test_vit", "checkpoint": "teachers/clip.safetensors"}},
        "adapters": {adapter: dict(ADAPTERS[adapter])},
        "losses": {"task": {"kind": "task"}},
        "stages": {"pretrain": {"data": {"kind": "llava_json", "json": "data.json", "template": "plain"},
                                "trainable": ["adapters", "routers", "projector"], "optimizer": {"lr": 1e-3},
                                "batch": {"global_size": 2, "per_device": 2}, "max_steps": 7}},
        "runtime": {"data_root": str(root), "seed": 3},
    }
    recipe = validate_recipe(data, registry)
    run_dir = root / "run"
    run_dir.mkdir()
    dump_recipe(recipe, run_dir / "recipe.yaml")
    torch.manual_seed(recipe.runtime.seed)
    student, _ = build_student(recipe, registry, torch.device("cpu"))
    gen = torch.Generator().manual_seed(5)
    trained = {}
    names = set(student.parameter_groups()["projector"])
    names |= {n for n, _ in student.model.named_parameters() if "lora_" in n or "router_" in n}
    with torch.no_grad():
        for name, param in student.model.named_parameters():
            if name in names:
                param.add_(0.3 * torch.randn(param.shape, generator=gen))
                trained[f"student.{name}"] = param.detach().clone()
    save_checkpoint(run_dir / "checkpoints", 7, trained, {}, {"global_step": 7}, keep_last=1)
    return run_dir


@pytest.fixture(scope="module")
def mola_export(tmp_path_factory: pytest.TempPathFactory, registry) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("mola")
    run_dir = make_run(root, registry, "mola")
    export_run(run_dir, root / "export", registry=registry)
    return root, root / "export"


def wide_image(path: Path) -> Path:
    """40x20: red left half, blue right half (padding to square adds mean-colour bands above and below)."""
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (20, 0, 40, 20))
    image.save(path)
    return path


def test_auto_processor_prepares_inputs_as_training(mola_export, registry, tmp_path: Path) -> None:
    from transformers import AutoProcessor, LlavaProcessor

    _, out = mola_export
    processor = AutoProcessor.from_pretrained(out)
    assert isinstance(processor, LlavaProcessor) and processor.image_processor.do_pad
    student = kdkit.load_student(out, registry=registry)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert text == ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                    "helpful, detailed, and polite answers to the user's questions. USER: <image>\n"
                    f"{QUESTION} ASSISTANT:")
    picture = wide_image(tmp_path / "wide.png")
    inputs = processor(text=text, images=Image.open(picture), return_tensors="pt")
    # the same tokens as the student's own prompt (16 image tokens for the 4x4 grid)
    assert inputs["input_ids"][0].tolist() == prompt_ids(student, QUESTION)
    # the same pixels as training's pad-to-square + resize + CLIP normalisation
    expected = student.pixels(student.load_image(picture))
    # equal except for resampling rounding at the red/blue edge (transformers' bicubic vs PIL's: < 1.5 grey levels)
    difference = (inputs["pixel_values"] - expected).abs()
    assert difference.max() < 0.02 and difference.mean() < 1e-3
    # the padding bands really are the mean colour (normalised: about 0), not a crop of the image
    assert inputs["pixel_values"][0, :, 0].abs().max() < 0.02


def test_the_chat_template_writes_multi_turn_like_vicuna_v1(mola_export) -> None:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(mola_export[1])
    messages = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is it ?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "a red circle ."}]},
                {"role": "user", "content": [{"type": "text", "text": "where ?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert text == "Be brief. USER: <image>\nwhat is it ? ASSISTANT: a red circle .</s> USER: where ? ASSISTANT:"


def test_model_card_names_base_teachers_recipe_data_and_eval(mola_export) -> None:
    root, out = mola_export
    card = (out / "README.md").read_text()
    teacher_sha = hashlib.sha256(b"tiny teacher weights").hexdigest()
    assert card.startswith("---\nlibrary_name: kdkit\n")
    assert "# tiny_llava_mola" in card and "A tiny LLaVA distilled from one CLIP teacher." in card
    assert "  - checkpoint: `llava` (`sha256:" in card
    assert f"| clip | timm | checkpoint: `teachers/clip.safetensors` (`sha256:{teacher_sha}`); model: `test_vit` |" in card
    assert "| pretrain | llava_json: json=data.json, template=plain" in card and "| 7 | 2 | 0.001 |" in card
    assert "the weights are its checkpoint `step-00000007`" in card
    assert "| total | 85,505 |" in card  # the MoLA count of test_export: 76,928 base + 6,912 adapters + 1,665 routers
    assert "No results yet" in card
    assert (out / "kdkit_recipe.yaml").read_text() == (root / "run" / "recipe.yaml").read_text()
    assert not (out / "recipe.yaml").exists()  # that name marks a run directory for kdkit eval
    result = out / "eval" / "textvqa"
    result.mkdir(parents=True)
    (result / "metrics.json").write_text(json.dumps({"benchmark": "textvqa", "primary": "accuracy",
                                                     "metrics": {"accuracy": 12.345}, "limit": 3}))
    write_model_card(out)
    card = (out / "README.md").read_text()
    assert "| textvqa | accuracy | 12.35 | first 3 | `eval/textvqa/metrics.json` |" in card
    assert "No results yet" not in card


def test_plain_transformers_does_not_silently_drop_mola(mola_export, registry) -> None:
    from transformers import LlavaForConditionalGeneration

    _, out = mola_export
    with pytest.raises(OSError, match="no file named model.safetensors"):  # the export's top is no plain model
        LlavaForConditionalGeneration.from_pretrained(out)
    assert "holds the base model WITHOUT them" in (out / "README.md").read_text()
    base = LlavaForConditionalGeneration.from_pretrained(out / "student").eval()
    student = kdkit.load_student(out, registry=registry)
    pixels = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tower = base.model.vision_tower(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        assert not torch.allclose(tower, student.vision_tower(pixel_values=pixels, output_hidden_states=True)
                                  .hidden_states[-2][:, 1:], atol=1e-4)


def test_merge_is_refused_for_mola(mola_export, registry, tmp_path: Path) -> None:
    root, _ = mola_export
    with pytest.raises(KdkitError, match=r"--merge: adapter mola \(mola\) cannot be merged exactly"):
        export_run(root / "run", tmp_path / "merged", registry=registry, merge=True)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory, registry) -> Path:
    return make_run(tmp_path_factory.mktemp("lora"), registry, "lora")


def hf_inputs(processor) -> dict[str, torch.Tensor]:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    image = Image.new("RGB", (24, 32), (10, 200, 30))
    return dict(processor(text=text, images=image, return_tensors="pt"))


def test_merged_lora_is_a_plain_llava_equal_to_the_student(lora_run, registry, tmp_path: Path) -> None:
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    out = tmp_path / "merged"
    assert main(["export", str(lora_run), str(out), "--merge"]) == 0
    plain = LlavaForConditionalGeneration.from_pretrained(out).eval()
    reference = tmp_path / "unmerged"
    export_run(lora_run, reference, registry=registry)
    student = kdkit.load_student(reference, registry=registry)
    inputs = hf_inputs(AutoProcessor.from_pretrained(out))
    with torch.no_grad():
        expected = student.model(**inputs).logits
        torch.testing.assert_close(plain(**inputs).logits, expected, rtol=1e-5, atol=1e-5)
        with student.kdkit_adapters["lora"].routing("off"):  # the LoRA changes the logits: the check is not vacuous
            assert not torch.allclose(student.model(**inputs).logits, expected, atol=1e-4)
    assert "This directory is a plain transformers model" in (out / "README.md").read_text()


def test_lora_in_peft_format_applies_to_the_exported_base(lora_run, registry, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    out = tmp_path / "out"
    export_run(lora_run, out, registry=registry)
    base = LlavaForConditionalGeneration.from_pretrained(out / "student")
    peft_model = PeftModel.from_pretrained(base, out / "adapters" / "lora" / "peft").eval()
    student = kdkit.load_student(out, registry=registry)
    inputs = hf_inputs(AutoProcessor.from_pretrained(out))
    with torch.no_grad():
        torch.testing.assert_close(peft_model(**inputs).logits, student.model(**inputs).logits, rtol=1e-5, atol=1e-5)


def test_kdkit_eval_refreshes_the_model_card(mola_export, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    from kdkit_plugins.fixtures.benchmarks_yesno import write_pope

    out = shutil.copytree(mola_export[1], tmp_path / "export", ignore=shutil.ignore_patterns("eval"))
    root = write_pope(tmp_path / "pope")
    assert main(["eval", str(out), "--benchmark", "pope", "--set", f"root={root}", "--limit", "4", "--quiet"]) == 0
    capsys.readouterr()
    metrics = json.loads((out / "eval" / "pope" / "metrics.json").read_text())
    value = metrics["metrics"][metrics["primary"]]
    assert f"| pope | {metrics['primary']} | {value:.2f} | first 4 | `eval/pope/metrics.json` |" in (out / "README.md").read_text()

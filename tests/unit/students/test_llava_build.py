"""Building the llava student: stage-1 assembly from CLIP + LM parts, and every bad input's message."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pydantic
import pytest
import torch
from transformers import AutoTokenizer, CLIPModel, CLIPVisionModel, LlamaForCausalLM

from kdkit import BuildContext, GridSpec
from kdkit.align import build_aligner_chain
from kdkit.errors import CheckpointError, KdkitError
from kdkit_plugins.data._encoding import Vocabulary, encode
from kdkit_plugins.data.conversation import get_template
from kdkit_plugins.fixtures.llava import write_tiny_clip_vision, write_tiny_llava, write_tiny_llm
from kdkit_plugins.fixtures.tokenizer import write_tiny_tokenizer
from kdkit_plugins.students._llava_generate import prompt_ids
from kdkit_plugins.students.llava import LlavaStudentConfig, build


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("parts")
    write_tiny_clip_vision(root / "clip")
    write_tiny_clip_vision(root / "clip_full", full=True, seed=1)
    write_tiny_llm(root / "llm", seed=2)
    write_tiny_llava(root / "llava")
    return root


def make(root: Path, **fields: object):
    config = LlavaStudentConfig.model_validate({"kind": "llava", **fields})
    return build(config, BuildContext(name="student", data_root=root))


def same_weights(module: torch.nn.Module, reference: torch.nn.Module) -> None:
    expected = reference.state_dict()
    found = module.state_dict()
    assert found.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(found[name], tensor, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("vision", ["clip", "clip_full"])
def test_assembly_joins_the_parts_with_a_fresh_projector(parts: Path, vision: str) -> None:
    torch.manual_seed(0)
    student = make(parts, vision=vision, language_model="llm")
    tower = CLIPVisionModel.from_pretrained(parts / "clip") if vision == "clip" else \
        CLIPModel.from_pretrained(parts / "clip_full").vision_model
    llm = LlamaForCausalLM.from_pretrained(parts / "llm")
    same_weights(student.vision_tower, tower)
    same_weights(student.model.get_decoder(), llm.model)
    same_weights(student.model.get_output_embeddings(), llm.lm_head)
    tokenizer = AutoTokenizer.from_pretrained(parts / "llm")
    assert student.image_token_id == tokenizer.convert_tokens_to_ids("<image>") == student.model.config.image_token_id
    assert student.model.get_input_embeddings().num_embeddings == len(tokenizer)  # nothing added
    assert (student.feature_layer, student.strategy, student.image_tokens) == (-2, "default", 16)
    projector = student.projector
    assert (projector.linear_1.in_features, projector.linear_2.out_features) == (32, 32)
    assert type(projector.act).__name__ == "GELUActivation"
    torch.manual_seed(0)
    again = make(parts, vision=vision, language_model="llm")
    same_weights(again.projector, projector)  # a seeded, reproducible init (export rebuilds it)
    torch.manual_seed(1)
    other = make(parts, vision=vision, language_model="llm")
    assert not torch.equal(other.projector.linear_1.weight, projector.linear_1.weight)


def test_assembly_adds_a_missing_image_token(parts: Path, tmp_path: Path) -> None:
    tokenizer_dir = write_tiny_tokenizer(tmp_path / "plain_tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json"):  # the same tokenizer without <image>
        data = json.loads((tokenizer_dir / name).read_text())
        if "added_tokens" in data:
            data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<image>"]
        data.pop("extra_special_tokens", None)
        (tokenizer_dir / name).write_text(json.dumps(data))
    write_tiny_llm(tmp_path / "llm", tokenizer_dir)
    rows = LlamaForCausalLM.from_pretrained(tmp_path / "llm").get_input_embeddings().num_embeddings
    student = make(tmp_path, vision=str(parts / "clip"), language_model="llm")
    assert student.image_token_id == rows  # appended after the LM's vocabulary
    assert student.model.get_input_embeddings().num_embeddings == rows + 1
    assert student.model.config.text_config.vocab_size == rows + 1
    assert student.tokenizer.convert_tokens_to_ids("<image>") == rows


@pytest.mark.parametrize("template", ["vicuna_v1", "plain"])
def test_generation_prompt_is_the_training_encoding_up_to_the_answer(parts: Path, template: str) -> None:
    student = make(parts, checkpoint="llava", template=template)
    question = "what color is the circle ?"
    tokenizer = student.tokenizer
    vocab = Vocabulary(tokenizer, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
                       student.image_token_id, student.image_tokens)
    pieces = get_template(template).format([("human", f"<image>\n{question}"), ("gpt", "red")], True)
    encoded = encode(pieces, vocab, None)
    start = int((encoded["labels"] != -100).nonzero()[0])
    ids = prompt_ids(student, question)
    assert ids == encoded["input_ids"][:start].tolist()
    if template == "vicuna_v1":
        assert tokenizer.decode(ids[-2:]) == "ASSISTANT :"
    else:
        assert ids == [tokenizer.bos_token_id] + [student.image_token_id] * student.image_tokens


def error(exc: type[Exception], match: str):
    return pytest.raises(exc, match=re.escape(match))


def test_missing_directories_name_the_field(parts: Path) -> None:
    with error(CheckpointError, f"student.checkpoint: directory '{parts / 'nope'}' does not exist (relative paths "
               "resolve against runtime.data_root)"):
        make(parts, checkpoint="nope")
    with error(CheckpointError, f"student.language_model: directory '{parts / 'none'}' does not exist"):
        make(parts, vision="clip", language_model="none")
    with error(CheckpointError, f"student.tokenizer: '{parts / 'clip'}' has no tokenizer_config.json; give a "
               "directory written by transformers' save_pretrained"):
        make(parts, checkpoint="llava", tokenizer="clip")


def test_a_directory_without_a_vision_tower_is_refused(parts: Path) -> None:
    with error(KdkitError, f"student.checkpoint: '{parts / 'llm' / 'config.json'}' has no vision_config (model_type "
               "'llama'): it is not a LLaVA model with a vision tower; for stage 1, give student.vision (a CLIP "
               "directory) and student.language_model instead"):
        make(parts, checkpoint="llm")
    with error(KdkitError, f"student.vision: '{parts / 'llm' / 'config.json'}' (model_type 'llama') describes no "
               "vision tower; give a CLIPVisionModel or CLIPModel directory"):
        make(parts, vision="llm", language_model="llm")


def test_a_tokenizer_of_another_model_is_refused(parts: Path, tmp_path: Path) -> None:
    write_tiny_llm(tmp_path / "small", vocab_size=100)
    with error(KdkitError, "student.language_model: the tokenizer has 339 tokens but the language model's vocabulary "
               "has 100 rows; use the tokenizer saved with the language model"):
        make(tmp_path, vision=str(parts / "clip"), language_model="small")
    write_tiny_llm(tmp_path / "other_eos", eos_token_id=5)
    with error(KdkitError, "student.language_model: the tokenizer's eos id is 2 but the language model's is 5"):
        make(tmp_path, vision=str(parts / "clip"), language_model="other_eos")


def test_a_truncated_weight_file_is_a_checkpoint_error(parts: Path, tmp_path: Path) -> None:
    broken = write_tiny_llava(tmp_path / "llava")
    (broken / "model.safetensors").write_bytes((broken / "model.safetensors").read_bytes()[:100])
    with pytest.raises(CheckpointError, match=re.escape(f"student.checkpoint: transformers cannot load '{broken}'")):
        make(tmp_path, checkpoint="llava")


def test_config_needs_exactly_one_source() -> None:
    with pytest.raises(pydantic.ValidationError, match="give either checkpoint .a LLaVA directory. or both vision"):
        LlavaStudentConfig.model_validate({"kind": "llava", "vision": "clip"})
    with pytest.raises(pydantic.ValidationError, match="not both"):
        LlavaStudentConfig.model_validate({"kind": "llava", "checkpoint": "a", "vision": "b", "language_model": "c"})


def test_feature_layer_out_of_range(parts: Path) -> None:
    with error(KdkitError, "student.vision_feature_layer: 4 is not a hidden state of the 3-layer tower (use an "
               "integer in [-4, 3]; 0 is the embeddings)"):
        make(parts, checkpoint="llava", vision_feature_layer=4)


def test_teacher_grid_that_misses_the_clip_grid_is_refused(parts: Path, registry) -> None:
    student = make(parts, checkpoint="llava")
    context = BuildContext(name="t", student_spec=student.feature_spec, text_dim=student.text_dim)
    # a chain written for another CLIP (a 6x6 grid after unshuffling 12x12 by 2) misses this one's 4x4 grid
    blocks = [{"kind": "resample", "size": [12, 12]}, {"kind": "pixel_unshuffle", "factor": 2}]
    with error(KdkitError, "aligner chain of teacher 't' ends on a 6x6 grid, but the student's token grid is 4x4"):
        build_aligner_chain(registry, "t", blocks, GridSpec(8, 8, 8), context)

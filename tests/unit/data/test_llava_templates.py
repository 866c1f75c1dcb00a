"""plain and vicuna_v1 tokenization, label masks and instruction masks against hand-written tokens."""

from __future__ import annotations

import pytest
import torch

from kdkit import BuildContext
from kdkit.errors import KdkitError
from kdkit_plugins.data._records import place_image
from kdkit_plugins.data.conversation import get_template

IMG = ["<image>"] * 3  # IMAGE_TOKENS copies
SYSTEM = ["A", "chat", "between", "a", "curious", "user", "and", "an", "artificial", "intelligence", "assistant",
          ".", "The", "assistant", "gives", "helpful", ",", "detailed", ",", "and", "polite", "answers", "to",
          "the", "user", "'", "s", "questions", "."]
FROZEN, TRAINED, INSTRUCTION = "frozen", "trained", "instruction"


def turn(role: str, value: str) -> dict[str, str]:
    return {"from": role, "value": value}


def expect(tokenizer, *spans: tuple[list[str], str]) -> dict[str, list]:
    """Hand-written spans (tokens, role) -> expected input_ids, labels and instruction mask."""
    ids, labels, instruction = [], [], []
    for tokens, role in spans:
        span = tokenizer.convert_tokens_to_ids(tokens)
        assert tokenizer.unk_token_id not in span, tokens
        ids += span
        labels += span if role == TRAINED else [-100] * len(span)
        instruction += [role == INSTRUCTION] * len(span)
    return {"input_ids": ids, "labels": labels, "instruction_mask": instruction}


def got(sample: dict) -> dict[str, list]:
    return {k: sample[k].tolist() for k in ("input_ids", "labels", "instruction_mask")}


def test_vicuna_multi_turn(make_dataset) -> None:
    data = make_dataset([{"id": "a", "image": "a.png", "conversations": [
        turn("human", "<image>\nWhat color is the circle?"), turn("gpt", "Red."),
        turn("human", "Where is it?"), turn("gpt", "At the top left.")]}])
    sample = data[0]
    assert got(sample) == expect(
        data.vocab.tokenizer,
        (["<s>"], FROZEN), (SYSTEM, FROZEN), (["USER", ":"], FROZEN), (IMG + ["\n"], FROZEN),
        (["What", "color", "is", "the", "circle", "?"], INSTRUCTION), (["ASSISTANT", ":"], FROZEN),
        (["Red", ".", "</s>"], TRAINED),
        (["USER", ":"], FROZEN), (["Where", "is", "it", "?"], INSTRUCTION), (["ASSISTANT", ":"], FROZEN),
        (["At", "the", "top", "left", ".", "</s>"], TRAINED))
    assert bool(sample["has_image"]) and int(sample["ids"]) == 0


def test_vicuna_special_ids_are_the_tokenizers(make_dataset) -> None:
    data = make_dataset([{"id": "a", "image": "a.png", "conversations": [turn("human", "<image>"), turn("gpt", "Red.")]}])
    ids = data[0]["input_ids"].tolist()
    tokenizer = data.vocab.tokenizer
    assert ids[0] == tokenizer.bos_token_id == 1 and ids[-1] == tokenizer.eos_token_id == 2
    assert ids.count(tokenizer.convert_tokens_to_ids("<image>")) == 3


@pytest.mark.parametrize("question", ["What is this?\n<image>", "What is this? <image>", "What is<image> this?"])
def test_image_anywhere_in_the_turn_moves_to_its_start(make_dataset, question: str) -> None:
    data = make_dataset([{"id": "a", "image": "a.png", "conversations": [turn("human", question), turn("gpt", "A box.")]}])
    assert got(data[0]) == expect(
        data.vocab.tokenizer, (["<s>"], FROZEN), (SYSTEM, FROZEN), (["USER", ":"], FROZEN), (IMG + ["\n"], FROZEN),
        (["What", "is", "this", "?"], INSTRUCTION), (["ASSISTANT", ":"], FROZEN), (["A", "box", ".", "</s>"], TRAINED))


def test_place_image_reproduces_llava_preprocess_multimodal() -> None:
    assert place_image("What is this?\n<image>") == "<image>\nWhat is this?"
    assert place_image("  What is this? <image> ") == "<image>\nWhat is this?"
    assert place_image("<image>") == "<image>"
    assert place_image("<image>\nWhat") == "<image>\nWhat"
    assert place_image("No image here ") == "No image here "


def test_vicuna_text_only(make_dataset) -> None:
    data = make_dataset([{"id": "t", "conversations": [turn("human", "What is 2 and 3?"), turn("gpt", "5.")]}],
                        pad_color=(0.5, 0.25, 1.0))
    sample = data[0]
    assert got(sample) == expect(
        data.vocab.tokenizer, (["<s>"], FROZEN), (SYSTEM, FROZEN), (["USER", ":"], FROZEN),
        (["What", "is", "2", "and", "3", "?"], INSTRUCTION), (["ASSISTANT", ":"], FROZEN), (["5", ".", "</s>"], TRAINED))
    assert not bool(sample["has_image"])
    assert torch.equal(sample["images"], torch.tensor([127, 63, 255]).div(255.0)[:, None, None].expand(3, 8, 8))


def test_vicuna_skips_a_leading_gpt_turn_like_llava(make_dataset) -> None:
    data = make_dataset([{"id": "t", "conversations": [turn("gpt", "Hi."), turn("human", "Where?"), turn("gpt", "No.")]}])
    assert got(data[0]) == expect(
        data.vocab.tokenizer, (["<s>"], FROZEN), (SYSTEM, FROZEN), (["USER", ":"], FROZEN), (["Where", "?"], INSTRUCTION),
        (["ASSISTANT", ":"], FROZEN), (["No", ".", "</s>"], TRAINED))


def test_plain_caption(make_dataset) -> None:
    data = make_dataset([{"id": "c", "image": "c.png", "conversations": [
        turn("human", "Describe the image briefly.\n<image>"), turn("gpt", "A red circle at the left.")]}],
        template="plain")
    sample = data[0]
    # preprocess_plain: the human turn becomes the image alone; caption + "\n" (the plain separator) trained; no eos
    assert got(sample) == expect(
        data.vocab.tokenizer, (["<s>"] + IMG, FROZEN),
        (["A", "red", "circle", "at", "the", "left", ".", "\n"], TRAINED))
    assert not sample["instruction_mask"].any()


def test_truncation_keeps_the_first_max_length_tokens(make_dataset) -> None:
    records = [{"id": "a", "image": "a.png", "conversations": [turn("human", "<image>\nWhat color?"), turn("gpt", "Red and blue.")]}]
    full = make_dataset(records)[0]
    prefix = 1 + len(SYSTEM) + 2 + 3 + 1 + 3 + 2  # bos, system, USER:, image, \n, question, ASSISTANT:
    assert len(full["input_ids"]) == prefix + 5
    cut = make_dataset(records, max_length=prefix + 2)[0]
    for key in ("input_ids", "labels", "instruction_mask"):
        assert cut[key].tolist() == full[key][:prefix + 2].tolist()
    tokenizer = make_dataset(records).vocab.tokenizer
    assert tokenizer.convert_ids_to_tokens(cut["labels"][-2:].tolist()) == ["Red", "and"]


def test_truncation_never_keeps_part_of_an_image(make_dataset) -> None:
    records = [{"id": "a", "image": "a.png", "conversations": [
        turn("human", "Hi"), turn("gpt", "Hello."), turn("human", "<image>\nAnd this?"), turn("gpt", "A box.")]}]
    before_image = 1 + len(SYSTEM) + 2 + 1 + 2 + 3 + 2  # bos, system, USER: Hi ASSISTANT: Hello.</s> USER:
    sample = make_dataset(records, max_length=before_image + 2)[0]
    assert len(sample["input_ids"]) == before_image and not bool(sample["has_image"])


def test_max_length_without_room_for_the_image_is_an_error(make_dataset) -> None:
    records = [{"id": "a", "image": "a.png", "conversations": [turn("human", "<image>"), turn("gpt", "A box.")]}]
    end = 1 + len(SYSTEM) + 2 + 3
    with pytest.raises(KdkitError, match=rf"^llava_json.max_length: {end} leaves no room for an answer after the "
                                         rf"{end} tokens up to the end of the image \(3 image tokens\); raise it$"):
        make_dataset(records, max_length=end)


def test_student_in_the_context_gives_tokenizer_image_tokens_and_size(make_dataset, tokenizer_dir, tmp_path) -> None:
    from transformers import AutoTokenizer

    class Student:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        image_token_id = tokenizer.convert_tokens_to_ids("<image>")
        image_tokens = 5
        image_size = 12

    records = [{"id": "a", "image": "a.png", "conversations": [turn("human", "<image>"), turn("gpt", "A box.")]}]
    context = BuildContext(data_root=tmp_path, extras={"student": Student()})
    sample = make_dataset(records, context=context, image_size=None, tokenizer=None, image_tokens=None)[0]
    assert sample["input_ids"].tolist().count(Student.image_token_id) == 5
    assert sample["images"].shape == (3, 12, 12)
    with pytest.raises(KdkitError, match=r"^llava_json.image_tokens: 3 != the student's image_tokens 5; remove the field"):
        make_dataset(records, context=context)


def test_without_student_or_tokenizer_field_is_an_error(make_dataset) -> None:
    records = [{"id": "a", "conversations": [turn("human", "Hi"), turn("gpt", "Hello.")]}]
    with pytest.raises(KdkitError, match=r"^llava_json: the context has no student with a tokenizer; set the data "
                                         r"fields `tokenizer` \(a saved tokenizer directory\) and `image_tokens`$"):
        make_dataset(records, tokenizer=None)


def test_unknown_template_names_the_known_ones() -> None:
    with pytest.raises(KdkitError, match=r"^llava_json.template: unknown conversation template 'vicuna' \(known: plain, "
                                         r"vicuna_v1\); did you mean 'vicuna_v1'\?$"):
        get_template("vicuna")


def test_generation_prompt_ends_with_the_assistant_tag(make_dataset) -> None:
    from kdkit_plugins.data._encoding import encode
    from kdkit_plugins.data.conversation import prompt_pieces

    data = make_dataset([{"id": "a", "image": "a.png", "conversations": [turn("human", "<image>"), turn("gpt", "A box.")]}])
    tokenizer = data.vocab.tokenizer
    for question in ("What is this?", "What is this? <image>"):
        ids = encode(prompt_pieces(get_template("vicuna_v1"), question, True), data.vocab, None)["input_ids"]
        assert ids.tolist() == expect(tokenizer, (["<s>"], FROZEN), (SYSTEM, FROZEN), (["USER", ":"] + IMG + ["\n"], FROZEN),
                                      (["What", "is", "this", "?", "ASSISTANT", ":"], FROZEN))["input_ids"]
    plain = encode(prompt_pieces(get_template("plain"), "Describe.", True), data.vocab, None)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(plain.tolist()) == ["<s>"] + IMG

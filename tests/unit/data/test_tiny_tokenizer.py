"""The tiny tokenizer fixture: a real transformers tokenizer with LLaMA-like specials and <image>."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerFast

from kdkit_plugins.fixtures.tokenizer import write_tiny_tokenizer


def test_loads_with_auto_tokenizer_and_knows_the_specials(tokenizer_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (0, 1, 2, 3)
    assert tokenizer.convert_tokens_to_ids("<image>") == len(tokenizer) - 1
    assert "<image>" in tokenizer.all_special_tokens


def test_words_punctuation_and_newlines_are_tokens(tokenizer_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = tokenizer("<image>\nHow many red circles? USER: Two.</s>").input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == [
        "<s>", "<image>", "\n", "How", "many", "red", "circles", "?", "USER", ":", "Two", ".", "</s>"]
    assert tokenizer("zebra", add_special_tokens=False).input_ids == [tokenizer.unk_token_id]


def test_extra_words(tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(write_tiny_tokenizer(tmp_path, extra_words=["zebra"]))
    assert tokenizer.convert_ids_to_tokens(tokenizer("A zebra", add_special_tokens=False).input_ids) == ["A", "zebra"]
    assert tokenizer.decode(tokenizer("The zebra is left.").input_ids, skip_special_tokens=True) == "The zebra is left."

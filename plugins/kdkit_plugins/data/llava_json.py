"""LLaVA-1.5 JSON data (Liu et al., "Improved Baselines with Visual Instruction Tuning", 2023).

Caption (``plain``) and conversation (``vicuna_v1``) records -> one padded-to-square image view,
token ids with answer-only labels, and the instruction mask the ``hawaii`` scorer reads.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset

from kdkit import BuildContext, Example, Factory, PluginConfig, hookimpl
from kdkit.errors import DataError, KdkitError, unknown_name_message
from kdkit_plugins.data._bad_records import BadRecordLog
from kdkit_plugins.data._encoding import IGNORE, Vocabulary, encode, image_block_end
from kdkit_plugins.data._grouping import length_grouped_order
from kdkit_plugins.data._images import CLIP_MEAN, UnreadableImageError, blank_image, color_bytes, load_image
from kdkit_plugins.data._records import BadRecord, Record, check_record, read_json_list
from kdkit_plugins.data.conversation import IMAGE, TEMPLATES, Template, get_template


# ``json`` is the recipe key LLaVA users expect; it shadows pydantic's deprecated ``BaseModel.json``
# method (harmless: a field value wins on instances), which pydantic warns about once at class creation.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message='Field name "json"', category=UserWarning)

    class LlavaJsonConfig(PluginConfig):
        """A LLaVA-1.5 JSON file (list of ``{"id", "image"?, "conversations"}``) and its image folder."""

        kind: Literal["llava_json"] = "llava_json"
        json: str = Field(description="The dataset's JSON file (a list of records), relative to the data root.")
        image_folder: str | None = Field(None, description="Folder the records' image paths are relative to (relative to "
                                                           "the data root); null: the JSON file's folder.")
        template: str = Field("vicuna_v1", description="Conversation template: plain (stage-1 captions) or vicuna_v1.")
        max_length: int | None = Field(2048, gt=0, description="Longest token sequence (image tokens included); longer "
                                                               "samples lose their end. Null: no limit.")
        image_size: int | None = Field(None, gt=0, description="Side of the square image view; null: the student's image_size.")
        pad_color: tuple[float, float, float] = Field(CLIP_MEAN, description="RGB in [0, 1] that pads images to a square "
                                                                            "and fills text-only samples' images.")
        tokenizer: str | None = Field(None, description="Saved tokenizer directory, used only without a student that has "
                                                        "a tokenizer (relative to the data root).")
        image_tokens: int | None = Field(None, gt=0, description="Tokens one <image> becomes, used only without a student "
                                                                 "that has a tokenizer.")
        on_bad_record: Literal["skip", "stop"] = Field("stop", description="A bad record (missing or corrupt image, <image> "
                                                                          "count mismatch, empty conversation): skip and "
                                                                          "count it, or stop with its id.")
        group_by_length: bool = Field(False, description="Batch samples of similar length together (less padding).")
        group_by_modality: bool = Field(True, description="With group_by_length: keep image and text-only samples in "
                                                          "separate batches.")
        group_mega_batches: int = Field(16, gt=0, description="With group_by_length: batches per length-sorted mega-batch.")
        limit: int | None = Field(None, gt=0, description="Use only the first N records of the file (smoke runs).")

        @field_validator("template")
        @classmethod
        def _known_template(cls, name: str) -> str:
            if name not in TEMPLATES:
                raise ValueError(unknown_name_message("conversation template", name, TEMPLATES))
            return name


class LlavaJsonDataset(Dataset):
    """Record ``i`` -> ``images`` (3, S, S), ``input_ids``/``labels``/``instruction_mask`` (L,), ``has_image``, ``ids``.

    Images are decoded in ``__getitem__`` (DataLoader workers parallelise it). An image that fails
    to decode stops the run (``on_bad_record: stop``) or is replaced by the next readable record.
    """

    def __init__(self, records: Sequence[Record], template: Template, vocab: Vocabulary, image_folder: Path,
                 image_size: int, config: LlavaJsonConfig, log: BadRecordLog) -> None:
        self.records, self.template, self.vocab = list(records), template, vocab
        self.image_folder, self.image_size, self.config, self.log = image_folder, image_size, config, log
        self.pad_color = color_bytes(config.pad_color)
        self.unreadable: set[int] = set()  # per process: positions whose image failed to decode here

    def __len__(self) -> int:
        return len(self.records)

    def sample(self, position: int) -> dict[str, Any]:
        """The sample of ``records[position]`` (raises :class:`UnreadableImageError` on a corrupt image)."""
        record = self.records[position]
        if record.image is None:
            images = blank_image(self.image_size, self.pad_color)
        else:
            images = load_image(self.image_folder / record.image, self.image_size, self.pad_color)
        tokens = encode(self.template.format(list(record.turns), record.image is not None), self.vocab,
                        self.config.max_length)
        return {"images": images, **tokens, "ids": torch.tensor(record.index)}

    def __getitem__(self, position: int) -> dict[str, Any]:
        failed: list[BadRecord] = []
        for step in range(len(self.records)):
            current = (position + step) % len(self.records)
            if current in self.unreadable:
                continue
            try:
                sample = self.sample(current)
            except UnreadableImageError as exc:
                record = self.records[current]
                if self.config.on_bad_record == "stop":
                    raise DataError(f"llava_json: {self.log.source}: record {record.index} (id {record.id!r}), field "
                                    f"'image': {exc}; replace the file or set on_bad_record: skip") from None
                self.unreadable.add(current)
                failed.append(BadRecord(record.index, record.id, f"field 'image': {exc}"))
                continue
            for bad in failed:  # the next readable record stands in: deterministic in any worker
                self.log.unreadable(bad, int(sample["ids"]))
            return sample
        raise DataError(f"llava_json: no record of {self.log.source} has a readable image")

    def collate(self, samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Samples -> batch, right-padded to the longest sequence (pad id, label -100, masks 0)."""
        def pad(key: str, value: int | bool) -> torch.Tensor:
            return pad_sequence([s[key] for s in samples], batch_first=True, padding_value=value)

        input_ids = pad("input_ids", self.vocab.pad)
        lengths = torch.tensor([len(s["input_ids"]) for s in samples])
        return {
            "images": torch.stack([s["images"] for s in samples]),
            "input_ids": input_ids,
            "attention_mask": (torch.arange(input_ids.shape[1])[None] < lengths[:, None]).long(),
            "labels": pad("labels", IGNORE),
            "instruction_mask": pad("instruction_mask", False),
            "has_image": torch.stack([s["has_image"] for s in samples]),
            "ids": torch.stack([s["ids"] for s in samples]),
        }

    def group_order(self, indices: list[int], group: int, seed: int) -> list[int]:
        """``indices`` reordered into length-grouped batches of ``group`` (unchanged without ``group_by_length``)."""
        if not self.config.group_by_length:
            return list(indices)
        modalities = [r.image is not None for r in self.records] if self.config.group_by_modality else None
        return length_grouped_order(indices, [r.length for r in self.records], group, self.config.group_mega_batches,
                                    seed, modalities)


def _vocabulary(config: LlavaJsonConfig, context: BuildContext) -> tuple[Vocabulary, int | None]:
    """Token ids from the student (when it has a tokenizer) or the config, and the student's image size."""
    student = context.extras.get("student")
    if getattr(student, "tokenizer", None) is not None:
        tokenizer, image_id, image_tokens = student.tokenizer, student.image_token_id, student.image_tokens
        if config.image_tokens is not None and config.image_tokens != image_tokens:
            raise KdkitError(f"llava_json.image_tokens: {config.image_tokens} != the student's image_tokens "
                             f"{image_tokens}; remove the field (the student's value is used)")
        image_size = getattr(student, "image_size", None)
    else:
        if config.tokenizer is None or config.image_tokens is None:
            raise KdkitError("llava_json: the context has no student with a tokenizer; set the data fields "
                             "`tokenizer` (a saved tokenizer directory) and `image_tokens`")
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(context.resolve(config.tokenizer)))
        if IMAGE not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE]})
        image_id, image_tokens, image_size = tokenizer.convert_tokens_to_ids(IMAGE), config.image_tokens, None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.unk_token_id
    if tokenizer.eos_token_id is None or pad is None:
        raise KdkitError("llava_json.tokenizer: the tokenizer needs an eos token and a pad (or unk) token")
    vocab = Vocabulary(tokenizer, tokenizer.bos_token_id, tokenizer.eos_token_id, pad, image_id, image_tokens)
    return vocab, image_size


def _check_max_length(config: LlavaJsonConfig, template: Template, vocab: Vocabulary) -> None:
    """The prompt prefix and one image block must fit in ``max_length``."""
    probe = template.format([("human", IMAGE), ("gpt", "")], True)
    end = image_block_end(probe, vocab)
    if config.max_length is not None and end is not None and end >= config.max_length:
        raise KdkitError(f"llava_json.max_length: {config.max_length} leaves no room for an answer after the "
                         f"{end} tokens up to the end of the image ({vocab.image_tokens} image tokens); raise it")


def build(config: LlavaJsonConfig, context: BuildContext) -> LlavaJsonDataset:
    """Read and check every record; bad ones stop the build or are skipped (and logged)."""
    template = get_template(config.template)
    json_path = context.resolve(config.json)
    raw = read_json_list(json_path, config.limit)
    folder = context.resolve(config.image_folder) if config.image_folder is not None else json_path.parent
    if not folder.is_dir():
        raise DataError(f"llava_json.image_folder: {folder} is not a directory; check the path (relative to the data root)")
    vocab, student_size = _vocabulary(config, context)
    image_size = config.image_size or student_size
    if image_size is None:
        raise KdkitError("llava_json.image_size: no student image_size in the context; set the field")
    _check_max_length(config, template, vocab)
    checked = [check_record(r, i, template, folder, vocab.image_tokens) for i, r in enumerate(raw)]
    bad = [c for c in checked if isinstance(c, BadRecord)]
    if bad and config.on_bad_record == "stop":
        more = f" ({len(bad) - 1} more bad records)" if len(bad) > 1 else ""
        raise DataError(f"llava_json: {json_path}: record {bad[0].index} (id {bad[0].id!r}): {bad[0].reason}{more}; "
                        f"fix the file or set on_bad_record: skip")
    log = BadRecordLog(context.extras.get("run_dir"), json_path)
    log.skipped(bad, len(raw))
    records = [c for c in checked if isinstance(c, Record)]
    if not records:
        raise DataError(f"llava_json: {json_path} has no usable record ({len(raw)} read, {len(bad)} bad)")
    return LlavaJsonDataset(records, template, vocab, folder, image_size, config, log)


def example(tmp_dir: Path) -> Example:
    """The tiny tokenizer and the generated mini conversations (16x16 images, 4 image tokens)."""
    from kdkit_plugins.fixtures.llava_data import write_mini_llava_data
    from kdkit_plugins.fixtures.tokenizer import write_tiny_tokenizer

    write_tiny_tokenizer(tmp_dir / "tokenizer")
    data = write_mini_llava_data(tmp_dir / "data")
    config = {"kind": "llava_json", "json": data.conversations, "image_folder": data.image_folder,
              "tokenizer": str(tmp_dir / "tokenizer"), "image_tokens": 4, "image_size": 16}
    return Example(config=config, context=BuildContext(data_root=data.root))


@hookimpl
def kdkit_data() -> dict[str, Factory]:
    return {"llava_json": Factory(config=LlavaJsonConfig, build=build, example=example)}

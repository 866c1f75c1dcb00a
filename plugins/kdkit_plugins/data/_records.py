"""Reading and checking LLaVA-1.5 JSON records (Liu et al., 2023): structure, roles, images.

Checks are cheap (no image is decoded) so every record is checked before training starts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdkit.errors import DataError
from kdkit_plugins.data.conversation import IMAGE, Template, Turn

ROLES = ("human", "gpt")


@dataclass(frozen=True)
class Record:
    """A checked record.

    Attributes:
        index: Position in the JSON list (the batch's ``ids``).
        id: The record's own ``id`` (or its index when it has none).
        turns: Alternating turns, human first, ``<image>`` moved to the start of its turn.
        image: Image path relative to the image folder, or None (text-only).
        length: Estimated length in tokens (words + image tokens), for length grouping.
    """

    index: int
    id: str
    turns: tuple[Turn, ...]
    image: str | None
    length: int


@dataclass(frozen=True)
class BadRecord:
    """A record that failed a check: where it is and why."""

    index: int
    id: str
    reason: str

    def as_json(self) -> dict[str, Any]:
        """The line written to ``bad_records.jsonl``."""
        return {"index": self.index, "id": self.id, "reason": self.reason}


def read_json_list(path: Path, limit: int | None) -> list[Any]:
    """The records of a LLaVA JSON file (its first ``limit``).

    Raises:
        DataError: the file is missing, is not JSON, or is not a list.
    """
    if not path.is_file():
        raise DataError(f"llava_json.json: dataset file {path} does not exist; check the path (relative to the data root)")
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"llava_json.json: {path} is not valid JSON ({exc})") from None
    if not isinstance(data, list):
        raise DataError(f"llava_json.json: {path} holds a JSON {type(data).__name__}, not a list of records "
                        f"(LLaVA-1.5 files are lists of {{'id', 'image', 'conversations'}} objects)")
    return data if limit is None else data[:limit]


def place_image(text: str) -> str:
    """LLaVA-1.5's ``preprocess_multimodal`` for one turn: ``<image>`` moved to the start, then ``"\\n"``."""
    if IMAGE not in text:
        return text
    return (IMAGE + "\n" + text.replace(IMAGE, "").strip()).strip()


def _turns(raw: Any) -> list[Turn] | str:
    """``conversations`` -> alternating turns (leading gpt turns dropped, as LLaVA does), or a reason."""
    if not isinstance(raw, list) or not raw:
        return "field 'conversations' is missing or empty"
    turns: list[Turn] = []
    for position, turn in enumerate(raw):
        if not isinstance(turn, dict) or turn.get("from") not in ROLES or not isinstance(turn.get("value"), str):
            return f"conversations[{position}]: expected {{'from': 'human' or 'gpt', 'value': text}}"
        turns.append((turn["from"], turn["value"]))
    skipped = next((i for i, (role, _) in enumerate(turns) if role == "human"), len(turns))
    turns = turns[skipped:]
    for position, (role, _) in enumerate(turns):
        if role != ROLES[position % 2]:
            return f"conversations[{position + skipped}]: expected a {ROLES[position % 2]!r} turn, got {role!r} (turns must alternate)"
    if len(turns) < 2:
        return "field 'conversations' has no human turn followed by a gpt answer"
    return turns


def check_record(raw: Any, index: int, template: Template, image_folder: Path, image_tokens: int) -> Record | BadRecord:
    """A checked :class:`Record`, or a :class:`BadRecord` saying which field is wrong."""
    if not isinstance(raw, dict):
        return BadRecord(index, str(index), f"record is a JSON {type(raw).__name__}, not an object")
    record_id = str(raw.get("id", index))
    turns = _turns(raw.get("conversations"))
    if isinstance(turns, str):
        return BadRecord(index, record_id, turns)
    image = raw.get("image")
    if image is not None and not isinstance(image, str):
        return BadRecord(index, record_id, "field 'image' must be one file name (a string)")
    placeholders = sum(text.count(IMAGE) for _, text in turns)
    images = int(image is not None)
    if placeholders != images:
        return BadRecord(index, record_id, f"'<image>' appears {placeholders} times in field 'conversations' "
                                           f"but the record has {images} image{'s' if images != 1 else ''}")
    if any(IMAGE in text for role, text in turns if role == "gpt"):
        return BadRecord(index, record_id, "'<image>' in a gpt turn of field 'conversations' (it belongs in a human turn)")
    reason = template.check(turns, image is not None)
    if reason:
        return BadRecord(index, record_id, reason)
    if image is not None and not (image_folder / image).is_file():
        return BadRecord(index, record_id, f"field 'image': file {image!r} not found in the image folder")
    turns = [(role, place_image(text)) for role, text in turns]
    length = sum(len(text.split()) for _, text in turns) + images * image_tokens
    return Record(index, record_id, tuple(turns), image, length)

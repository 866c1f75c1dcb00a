"""Bad records (both policies, each kind) and bad files, with their exact messages."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kdkit import BuildContext
from kdkit.errors import DataError
from kdkit_plugins.data.llava_json import LlavaJsonConfig, build
from kdkit_plugins.fixtures.llava_data import write_mini_llava_data

GOOD = {"id": "good", "image": "good.png", "conversations": [
    {"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A box."}]}
QUESTION = GOOD["conversations"]

BAD = {
    "missing": ({"id": "m", "image": "missing.png", "conversations": QUESTION},
                "field 'image': file 'missing.png' not found in the image folder"),
    "count_zero": ({"id": "z", "image": "good.png", "conversations": [{"from": "human", "value": "What?"}, QUESTION[1]]},
                   "'<image>' appears 0 times in field 'conversations' but the record has 1 image"),
    "count_two": ({"id": "t", "image": "good.png", "conversations": [
        {"from": "human", "value": "<image> What? <image>"}, QUESTION[1]]},
        "'<image>' appears 2 times in field 'conversations' but the record has 1 image"),
    "count_no_image": ({"id": "n", "conversations": QUESTION},
                       "'<image>' appears 1 times in field 'conversations' but the record has 0 images"),
    "empty": ({"id": "e", "conversations": []}, "field 'conversations' is missing or empty"),
    "no_conversations": ({"id": "c", "image": "good.png"}, "field 'conversations' is missing or empty"),
    "no_answer": ({"id": "q", "conversations": [{"from": "human", "value": "What?"}]},
                  "field 'conversations' has no human turn followed by a gpt answer"),
    "bad_role": ({"id": "r", "conversations": [{"from": "user", "value": "What?"}]},
                 "conversations[0]: expected {'from': 'human' or 'gpt', 'value': text}"),
    "not_alternating": ({"id": "a", "conversations": [{"from": "human", "value": "What?"}] * 2},
                        "conversations[1]: expected a 'gpt' turn, got 'human' (turns must alternate)"),
    "image_in_answer": ({"id": "g", "image": "good.png", "conversations": [
        {"from": "human", "value": "What?"}, {"from": "gpt", "value": "<image>"}]},
        "'<image>' in a gpt turn of field 'conversations' (it belongs in a human turn)"),
    "image_list": ({"id": "l", "image": ["good.png"], "conversations": QUESTION},
                   "field 'image' must be one file name (a string)"),
    "not_object": ("just text", "record is a JSON str, not an object"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_stop_names_the_record_and_field(make_dataset, tmp_path: Path, kind: str) -> None:
    record, reason = BAD[kind]
    record_id = record["id"] if isinstance(record, dict) else "1"
    message = (f"llava_json: {tmp_path / 'data.json'}: record 1 (id {record_id!r}): {reason}; "
               f"fix the file or set on_bad_record: skip")
    with pytest.raises(DataError, match=f"^{re.escape(message)}$"):
        make_dataset([GOOD, record, GOOD], on_bad_record="stop")


@pytest.mark.parametrize("kind", sorted(BAD))
def test_skip_drops_counts_and_writes_the_run_log(make_dataset, tmp_path: Path, kind: str, caplog) -> None:
    record, reason = BAD[kind]
    run_dir = tmp_path / "run"
    with caplog.at_level("WARNING"):
        data = make_dataset([GOOD, record, GOOD], on_bad_record="skip",
                            context=BuildContext(data_root=tmp_path, extras={"run_dir": run_dir}))
    assert [int(data[i]["ids"]) for i in range(len(data))] == [0, 2]
    assert caplog.messages == [f"llava_json: skipped 1 of 3 records of data.json (on_bad_record: skip); ids and "
                               f"reasons in {run_dir / 'bad_records.jsonl'}"]
    lines = [json.loads(line) for line in (run_dir / "bad_records.jsonl").read_text().splitlines()]
    record_id = record["id"] if isinstance(record, dict) else "1"
    assert lines == [{"file": "data.json", "phase": "build", "index": 1, "id": record_id, "reason": reason}]


def test_plain_template_needs_one_image_and_two_turns(make_dataset, tmp_path: Path) -> None:
    text_only = {"id": "x", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "A box."}]}
    with pytest.raises(DataError, match=re.escape("record 0 (id 'x'): template 'plain' needs one image and exactly one "
                                                  "human and one gpt turn (got 2 turns, no image)")):
        make_dataset([text_only], template="plain")


def corrupt(make_dataset, tmp_path: Path, policy: str, **config):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    broken = {"id": "b", "image": "broken.png", "conversations": QUESTION}
    text = {"id": "t", "conversations": [{"from": "human", "value": "What?"}, {"from": "gpt", "value": "A box."}]}
    return make_dataset([GOOD, broken, text], on_bad_record=policy, **config)


def test_corrupt_image_stops_when_read(make_dataset, tmp_path: Path) -> None:
    data = corrupt(make_dataset, tmp_path, "stop")
    assert len(data) == 3  # the file exists: only decoding finds it
    message = (f"llava_json: {tmp_path / 'data.json'}: record 1 (id 'b'), field 'image': cannot decode image "
               f"{tmp_path / 'images' / 'broken.png'}: ")
    with pytest.raises(DataError, match=f"^{re.escape(message)}.*; replace the file or set on_bad_record: skip$"):
        data[1]


def test_corrupt_image_is_replaced_by_the_next_readable_record(make_dataset, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    data = corrupt(make_dataset, tmp_path, "skip", context=BuildContext(data_root=tmp_path, extras={"run_dir": run_dir}))
    assert int(data[1]["ids"]) == 2 and int(data[1]["ids"]) == int(data[2]["ids"])
    assert int(data[1]["ids"]) == 2  # known unreadable now: skipped without decoding again, nothing logged twice
    (line,) = [json.loads(s) for s in (run_dir / "bad_records.jsonl").read_text().splitlines()]
    assert {k: line[k] for k in ("phase", "index", "id", "substitute", "rank")} == {
        "phase": "read", "index": 1, "id": "b", "substitute": 2, "rank": 0}
    assert line["reason"].startswith("field 'image': cannot decode image ")


def test_json_that_is_not_a_list(make_dataset, tmp_path: Path) -> None:
    message = (f"llava_json.json: {tmp_path / 'data.json'} holds a JSON dict, not a list of records (LLaVA-1.5 files "
               f"are lists of {{'id', 'image', 'conversations'}} objects)")
    with pytest.raises(DataError, match=f"^{re.escape(message)}$"):
        make_dataset({"annotations": []})


def test_missing_json_and_invalid_json(make_dataset, tmp_path: Path, tokenizer_dir: Path) -> None:
    fields = {"json": "nope.json", "tokenizer": str(tokenizer_dir), "image_tokens": 2, "image_size": 8}
    with pytest.raises(DataError, match=re.escape(f"llava_json.json: dataset file {tmp_path / 'nope.json'} does not exist")):
        build(LlavaJsonConfig.model_validate(fields), BuildContext(data_root=tmp_path))
    (tmp_path / "broken.json").write_text("[{", encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"llava_json.json: {tmp_path / 'broken.json'} is not valid JSON (")):
        build(LlavaJsonConfig.model_validate({**fields, "json": "broken.json"}), BuildContext(data_root=tmp_path))


def test_missing_image_folder(make_dataset, tmp_path: Path) -> None:
    message = f"llava_json.image_folder: {tmp_path / 'pictures'} is not a directory; check the path (relative to the data root)"
    with pytest.raises(DataError, match=f"^{re.escape(message)}$"):
        make_dataset([GOOD], image_folder="pictures")


def test_unknown_template_fails_config_validation() -> None:
    import pydantic

    with pytest.raises(pydantic.ValidationError, match=re.escape(
            "unknown conversation template 'vicuna' (known: plain, vicuna_v1); did you mean 'vicuna_v1'?")):
        LlavaJsonConfig.model_validate({"json": "x.json", "template": "vicuna"})


def test_config_round_trips_under_its_recipe_key() -> None:
    config = LlavaJsonConfig.model_validate({"json": "x.json"})
    assert config.json == "x.json" and config.model_dump(mode="json")["json"] == "x.json"
    assert LlavaJsonConfig.model_validate(config.model_dump(mode="json")) == config


def test_limit_reads_the_first_records(make_dataset) -> None:
    data = make_dataset([GOOD, BAD["missing"][0], GOOD], limit=1)
    assert len(data) == 1


def test_mini_data_with_every_bad_kind(tmp_path: Path, tokenizer_dir: Path) -> None:
    mini = write_mini_llava_data(tmp_path, bad_records=True)
    fields = {"json": mini.conversations, "image_folder": mini.image_folder, "tokenizer": str(tokenizer_dir),
              "image_tokens": 2, "image_size": 8, "on_bad_record": "skip"}
    data = build(LlavaJsonConfig.model_validate(fields), BuildContext(data_root=tmp_path))
    records = json.loads((tmp_path / mini.conversations).read_text())
    kept = {r.id for r in data.records}
    assert set(mini.bad) - kept == {"bad_missing", "bad_count", "bad_empty"}  # found at build
    corrupt_position = [r.id for r in data.records].index("bad_corrupt")  # found when read
    next_good = [r["id"] for r in records].index("conv002")  # after bad_count and bad_empty, dropped at build
    assert int(data[corrupt_position]["ids"]) == next_good == 6
    assert len(data) == len(records) - 3


def test_stop_names_the_first_bad_record_and_counts_the_others(tmp_path: Path, tokenizer_dir: Path) -> None:
    mini = write_mini_llava_data(tmp_path, bad_records=True)
    fields = {"json": mini.conversations, "image_folder": mini.image_folder, "tokenizer": str(tokenizer_dir),
              "image_tokens": 2, "image_size": 8}
    message = (f"llava_json: {tmp_path / mini.conversations}: record 2 (id 'bad_missing'): field 'image': file "
               f"'missing.png' not found in the image folder (2 more bad records); fix the file or set on_bad_record: skip")
    with pytest.raises(DataError, match=f"^{re.escape(message)}$"):
        build(LlavaJsonConfig.model_validate(fields), BuildContext(data_root=tmp_path))

"""Shared pieces of the LLaVA data tests: the tiny tokenizer and a builder for hand-written records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from kdkit import BuildContext
from kdkit_plugins.data.llava_json import LlavaJsonConfig, LlavaJsonDataset, build
from kdkit_plugins.fixtures.tokenizer import write_tiny_tokenizer

IMAGE_TOKENS = 3


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture
def make_dataset(tmp_path: Path, tokenizer_dir: Path):
    """``make_dataset(records, **config) -> dataset``: writes the JSON (and a 6x4 PNG per image name)."""

    def make(records: Any, context: BuildContext | None = None, **config: Any) -> LlavaJsonDataset:
        folder = tmp_path / "images"
        folder.mkdir(exist_ok=True)
        for record in records if isinstance(records, list) else []:
            name = record.get("image") if isinstance(record, dict) else None
            if isinstance(name, str) and not name.startswith("missing") and not (folder / name).exists():
                Image.new("RGB", (6, 4), (200, 10, 10)).save(folder / name)
        (tmp_path / "data.json").write_text(json.dumps(records), encoding="utf-8")
        fields = {"kind": "llava_json", "json": "data.json", "image_folder": "images", "image_size": 8,
                  "tokenizer": str(tokenizer_dir), "image_tokens": IMAGE_TOKENS, **config}
        return build(LlavaJsonConfig.model_validate(fields), context or BuildContext(data_root=tmp_path))

    return make


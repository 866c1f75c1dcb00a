"""The image_folder data: class folders, sorted class names as labels, clear errors naming the file."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from kdkit import BuildContext
from kdkit.errors import DataError


def folder(root, classes: dict[str, list[tuple[int, int, int]]]):
    for name, colours in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, colour in enumerate(colours):
            Image.new("RGB", (6, 4), colour).save(root / name / f"{i}.png")
    return root


def build(registry, tmp_path, name: str = "train", student=None, **fields):
    extras = {"student": student} if student is not None else {}
    return registry.build("data", {"kind": "image_folder", "root": "images", **fields},
                          BuildContext(name=name, data_root=tmp_path, extras=extras))


def test_labels_follow_sorted_class_names(registry, tmp_path) -> None:
    folder(tmp_path / "images", {"zebra": [(255, 0, 0)], "ant": [(0, 0, 255), (0, 255, 0)]})
    (tmp_path / "images" / "notes.txt").write_text("not a class")
    (tmp_path / "images" / "ant" / "readme.md").write_text("not an image")
    data = build(registry, tmp_path, image_size=8)
    assert data.classes == ["ant", "zebra"] and data.num_classes == 2 and len(data) == 3
    labels = [int(data[i]["labels"]) for i in range(3)]
    assert labels == [0, 0, 1]
    sample = data[2]
    assert sample["images"].shape == (3, 8, 8) and int(sample["ids"]) == 2
    torch.testing.assert_close(sample["images"], torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1).expand(3, 8, 8))
    torch.testing.assert_close(data[0]["images"][:, 0, 0], torch.tensor([0.0, 0.0, 1.0]))  # ant/0.png is blue


def test_missing_folder(registry, tmp_path) -> None:
    with pytest.raises(DataError, match=rf"^stages.train.data.root: image folder '{tmp_path}/images' does not exist"):
        build(registry, tmp_path)


def test_no_class_folder(registry, tmp_path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match=r"^stages.train.data.root: '.*/images' holds no class folder"):
        build(registry, tmp_path)


def test_class_folder_without_images(registry, tmp_path) -> None:
    folder(tmp_path / "images", {"cat": [(1, 2, 3)]})
    (tmp_path / "images" / "dog").mkdir()
    with pytest.raises(DataError, match=r"^stages.train.data.root: class folder '.*/images/dog' holds no image"):
        build(registry, tmp_path)


def test_unreadable_image_names_the_file(registry, tmp_path) -> None:
    folder(tmp_path / "images", {"cat": [(1, 2, 3)]})
    broken = tmp_path / "images" / "cat" / "broken.png"
    broken.write_bytes(b"not a png")
    data = build(registry, tmp_path)
    index = data.files.index(broken)
    with pytest.raises(DataError, match=rf"^image '{broken}' cannot be read \(.*\); replace or delete it$"):
        data[index]


def test_class_count_mismatch_names_both_fields(registry, tmp_path) -> None:
    folder(tmp_path / "images", {"a": [(0, 0, 0)], "b": [(9, 9, 9)], "c": [(5, 5, 5)]})
    with pytest.raises(DataError, match=r"^stages.train.data: '.*/images' \(a, b, c\) has 3 classes but the student's "
                                        r"classifier has 10 outputs; set student.model_kwargs.num_classes: 3$"):
        build(registry, tmp_path, student=SimpleNamespace(num_classes=10))

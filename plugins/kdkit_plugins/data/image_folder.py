"""Labelled images in class folders, the layout torchvision's ``ImageFolder`` reads:
``root/<class>/<image>``; class names sorted give the labels 0..K-1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from einops import rearrange
from pydantic import Field
from torch import Tensor
from torch.utils.data import Dataset

from kdkit import BuildContext, Example, Factory, PluginConfig, hookimpl
from kdkit.errors import DataError
from kdkit_plugins.data._classes import check_class_count

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class ImageFolderConfig(PluginConfig):
    """Images under ``root/<class>/``, resized to ``(3, S, S)`` in [0, 1]; labels from sorted class names."""

    kind: Literal["image_folder"] = "image_folder"
    root: str = Field(description="Folder holding one sub-folder per class; relative paths resolve against "
                      "runtime.data_root.")
    image_size: int = Field(32, ge=8, description="Height and width every image is resized to.")
    interpolation: Literal["bilinear", "bicubic", "nearest"] = Field("bilinear", description="Resizing filter.")
    extensions: list[str] = Field(default_factory=lambda: list(EXTENSIONS),
                                  description="File suffixes read as images (case-insensitive); other files are ignored.")


class ImageFolder(Dataset):
    """Sample ``i`` -> ``{"images": (3, S, S) in [0, 1], "labels": () long, "ids": () long}``.

    Args:
        files: Image paths, in class then file-name order.
        labels: Label of each file.
        classes: Class names; label ``k`` is ``classes[k]``.
        image_size: Output height and width.
        interpolation: PIL resizing filter name.
    """

    def __init__(self, files: list[Path], labels: list[int], classes: list[str], image_size: int,
                 interpolation: str) -> None:
        self.files, self.labels, self.classes = files, labels, classes
        self.image_size, self.interpolation = image_size, interpolation

    @property
    def num_classes(self) -> int:
        """Number of class folders."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.files)

    def read(self, path: Path) -> Tensor:
        """One file -> ``(3, S, S)`` float in [0, 1].

        Raises:
            DataError: the file cannot be decoded as an image (the file is named).
        """
        from PIL import Image, UnidentifiedImageError

        resample = getattr(Image.Resampling, self.interpolation.upper())
        try:
            with Image.open(path) as image:
                image = image.convert("RGB").resize((self.image_size, self.image_size), resample)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise DataError(f"image {str(path)!r} cannot be read ({exc}); replace or delete it") from None
        pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        return rearrange(pixels, "(h w c) -> c h w", h=self.image_size, c=3).float() / 255.0

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} is out of range for a dataset of {len(self)}")
        return {"images": self.read(self.files[index]), "labels": torch.tensor(self.labels[index]),
                "ids": torch.tensor(index)}


def scan(root: Path, extensions: list[str], field: str) -> tuple[list[Path], list[int], list[str]]:
    """Files, labels and sorted class names under ``root``.

    Raises:
        DataError: no such folder, no class folder, or a class folder without images.
    """
    if not root.is_dir():
        raise DataError(f"{field}: image folder {str(root)!r} does not exist (relative paths resolve against "
                        "runtime.data_root)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{field}: {str(root)!r} holds no class folder; put each class's images in "
                        f"{str(root / '<class name>')!r}")
    suffixes = {s.lower() if s.startswith(".") else f".{s.lower()}" for s in extensions}
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = sorted(p for p in (root / name).rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
        if not found:
            raise DataError(f"{field}: class folder {str(root / name)!r} holds no image ({', '.join(sorted(suffixes))}); "
                            "add images or remove the folder")
        files += found
        labels += [label] * len(found)
    return files, labels, classes


def build(config: ImageFolderConfig, context: BuildContext) -> ImageFolder:
    """Scan the folder (images are decoded lazily, one per sample read)."""
    field = f"stages.{context.name}.data.root" if context.name else "root"
    root = context.resolve(config.root)
    files, labels, classes = scan(root, config.extensions, field)
    shown = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
    check_class_count(len(classes), context, f"{str(root)!r} ({shown})")
    return ImageFolder(files, labels, classes, config.image_size, config.interpolation)


def write_tiny_folder(root: Path, classes: int = 2, per_class: int = 2, size: int = 12) -> Path:
    """A folder of tiny PNGs (class ``k`` has brightness ``k / classes``) for tests and examples."""
    from PIL import Image

    for label in range(classes):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            value = int(255 * label / classes) + i
            Image.new("RGB", (size, size), (value, value, value)).save(folder / f"{i:03d}.png")
    return root


def example(tmp_dir: Path) -> Example:
    """Two classes of two 12x12 PNGs, read at 16x16."""
    write_tiny_folder(tmp_dir / "images")
    return Example(config={"kind": "image_folder", "root": "images", "image_size": 16},
                   context=BuildContext(name="train", data_root=tmp_dir))


@hookimpl
def kdkit_data() -> dict[str, Factory]:
    return {"image_folder": Factory(config=ImageFolderConfig, build=build, example=example)}

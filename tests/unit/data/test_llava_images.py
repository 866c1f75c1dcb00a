"""Images padded to square with the pad color (LLaVA-1.5's expand2square), resized, in [0, 1]."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from kdkit_plugins.data._images import CLIP_MEAN, UnreadableImageError, color_bytes, load_image

PAD = (10, 20, 30)


def write(path: Path, rows: list[list[tuple[int, int, int]]]) -> Path:
    image = Image.new("RGB", (len(rows[0]), len(rows)))
    image.putdata([pixel for row in rows for pixel in row])
    image.save(path)
    return path


def expected(rows: list[list[tuple[int, int, int]]]) -> torch.Tensor:
    """Hand-written (H, W, 3) pixels -> (3, H, W) in [0, 1]."""
    return torch.tensor(rows, dtype=torch.float32).permute(2, 0, 1) / 255.0


A, B, C, D = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def test_wide_image_is_centered_vertically(tmp_path: Path) -> None:
    path = write(tmp_path / "wide.png", [[A, B, C, D], [D, C, B, A]])  # 4 wide, 2 high
    assert torch.equal(load_image(path, 4, PAD), expected([
        [PAD, PAD, PAD, PAD],
        [A, B, C, D],
        [D, C, B, A],
        [PAD, PAD, PAD, PAD]]))


def test_tall_image_is_centered_horizontally(tmp_path: Path) -> None:
    path = write(tmp_path / "tall.png", [[A], [B], [C]])  # 1 wide, 3 high
    assert torch.equal(load_image(path, 3, PAD), expected([[PAD, A, PAD], [PAD, B, PAD], [PAD, C, PAD]]))


def test_odd_margin_goes_below_like_llava(tmp_path: Path) -> None:
    path = write(tmp_path / "strip.png", [[A, B, C, D]])  # 4 wide, 1 high: offset (4 - 1) // 2 = 1
    assert torch.equal(load_image(path, 4, PAD), expected([[PAD] * 4, [A, B, C, D], [PAD] * 4, [PAD] * 4]))


def test_resize_to_image_size_keeps_a_flat_color(tmp_path: Path) -> None:
    path = write(tmp_path / "flat.png", [[PAD] * 6] * 3)
    out = load_image(path, 8, PAD)
    assert out.shape == (3, 8, 8) and out.dtype == torch.float32
    assert torch.allclose(out, expected([[PAD]]).expand(3, 8, 8), atol=1 / 255)


def test_grayscale_and_rgba_become_rgb(tmp_path: Path) -> None:
    Image.new("L", (2, 2), 128).save(tmp_path / "gray.png")
    Image.new("RGBA", (2, 2), (1, 2, 3, 0)).save(tmp_path / "rgba.png")
    assert torch.equal(load_image(tmp_path / "gray.png", 2, PAD), torch.full((3, 2, 2), 128 / 255))
    assert torch.equal(load_image(tmp_path / "rgba.png", 2, PAD), expected([[(1, 2, 3)] * 2] * 2))


def test_clip_mean_pad_color_is_llavas() -> None:
    assert color_bytes(CLIP_MEAN) == (122, 116, 104)  # tuple(int(x * 255) for x in image_processor.image_mean)


def test_corrupt_file(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(UnreadableImageError, match=r"^cannot decode image .*bad\.png: "):
        load_image(tmp_path / "bad.png", 4, PAD)

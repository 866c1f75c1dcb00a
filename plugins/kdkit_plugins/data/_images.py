"""Images as LLaVA-1.5 feeds them (Liu et al., 2023): RGB, padded to a square with the mean color, resized.

The result is the shared raw view ``(3, S, S)`` in [0, 1]; each model normalises it itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image

from kdkit.errors import DataError

#: CLIP's image-processor mean: LLaVA-1.5's padding color.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)


class UnreadableImageError(DataError):
    """An image file exists but cannot be decoded."""


def color_bytes(color: tuple[float, float, float]) -> tuple[int, int, int]:
    """A [0, 1] color as 8-bit RGB, truncated like LLaVA's ``tuple(int(x * 255) for x in mean)``."""
    return (int(color[0] * 255), int(color[1] * 255), int(color[2] * 255))


def pad_to_square(image: Image.Image, color: tuple[int, int, int]) -> Image.Image:
    """Center ``image`` on a square of its longer side filled with ``color`` (LLaVA's ``expand2square``)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new(image.mode, (side, side), color)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> ``(3, H, W)`` float32 in [0, 1]."""
    pixels = np.asarray(image, dtype=np.float32) / 255.0  # numpy: several times faster than torch's uint8 -> float here
    return torch.from_numpy(np.ascontiguousarray(rearrange(pixels, "h w c -> c h w")))


def load_image(path: Path, size: int, color: tuple[int, int, int]) -> torch.Tensor:
    """Image file -> RGB, padded to square with ``color``, bicubic-resized to ``size`` -> ``(3, size, size)``.

    Raises:
        UnreadableImageError: the file cannot be decoded (corrupt, truncated, not an image).
    """
    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")  # decodes the whole file: a truncated one fails here
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        where = path if isinstance(path, (str, Path)) else "(embedded image bytes)"
        raise UnreadableImageError(f"cannot decode image {where}: {exc}") from None
    image = pad_to_square(image, color)
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return to_tensor(image)


def blank_image(size: int, color: tuple[int, int, int]) -> torch.Tensor:
    """The pad-color image of a text-only sample, ``(3, size, size)``."""
    return (torch.tensor(color, dtype=torch.float32) / 255.0)[:, None, None].expand(3, size, size).clone()

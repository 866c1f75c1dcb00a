"""Grid orientation: changing one half of the image changes the matching half of the grid.

The change keeps the image's statistics (a half is flipped onto itself), so per-image
standardisation (Pix2Struct) cannot spread it. A channels-first flatten (the SAM neck trap) or a
transposed grid puts the change in the wrong place and fails.
"""

from __future__ import annotations

import torch

from teacher_builds import images


def _change(teacher, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """(H, W) mean absolute change of the grid."""
    return (teacher(after).grid - teacher(before).grid).abs().mean(dim=(0, 3))


def _dominates(inside: torch.Tensor, outside: torch.Tensor) -> bool:
    return bool(inside.mean() > 3 * outside.mean())


def test_right_half_change_lands_in_right_columns(tiny_teacher) -> None:
    x = images(2, 64, 64)
    y = x.clone()
    y[..., 32:] = x[..., 32:].flip(-2)  # right half upside down: same pixels, other places
    change = _change(tiny_teacher, x, y)
    width = change.shape[1]
    left, right = change[:, : width // 2], change[:, (width + 1) // 2 :]
    assert _dominates(right, left), f"change per column: {change.mean(0).tolist()}"


def test_bottom_half_change_lands_in_bottom_rows(tiny_teacher) -> None:
    x = images(2, 64, 64)
    y = x.clone()
    y[..., 32:, :] = x[..., 32:, :].flip(-1)  # bottom half mirrored
    change = _change(tiny_teacher, x, y)
    height = change.shape[0]
    top, bottom = change[: height // 2], change[(height + 1) // 2 :]
    assert _dominates(bottom, top), f"change per row: {change.mean(1).tolist()}"

"""resample, pixel_unshuffle and mlp aligners: references, declared grids and bad-input errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdkit import BuildContext, GridSpec
from kdkit.errors import KdkitError
from kdkit_plugins.aligners import mlp, pixel_unshuffle, resample


def context(in_spec: GridSpec, student: GridSpec = GridSpec(4, 4, 8)) -> BuildContext:
    return BuildContext(name="sam", in_spec=in_spec, student_spec=student)


@pytest.mark.parametrize("factor", [1, 2, 3])
def test_pixel_unshuffle_equals_torch_in_channels_last(factor: int) -> None:
    spec = GridSpec(6, 12, 5)
    aligner = pixel_unshuffle.build(pixel_unshuffle.PixelUnshuffleConfig(factor=factor), context(spec))
    grid = torch.randn(2, 6, 12, 5)
    expected = F.pixel_unshuffle(grid.permute(0, 3, 1, 2), factor).permute(0, 2, 3, 1)
    out = aligner(grid)
    assert torch.equal(out, expected)
    assert tuple(out.shape[1:]) == (aligner.out_spec.height, aligner.out_spec.width, aligner.out_spec.channels)
    assert aligner.projects is False


def test_pixel_unshuffle_derives_factor_from_student_grid() -> None:
    aligner = pixel_unshuffle.build(pixel_unshuffle.PixelUnshuffleConfig(), context(GridSpec(12, 12, 3)))
    assert aligner.factor == 3 and aligner.out_spec == GridSpec(4, 4, 27)


def test_pixel_unshuffle_indivisible_grid_names_working_factors() -> None:
    with pytest.raises(KdkitError) as info:
        pixel_unshuffle.build(pixel_unshuffle.PixelUnshuffleConfig(factor=3), context(GridSpec(8, 8, 3)))
    message = str(info.value)
    assert "'sam'" in message and "8x8 grid cannot be unshuffled by factor 3" in message
    assert "factors that divide it: 2, 4, 8" in message and "factor 2 reaches the student grid" in message


def test_pixel_unshuffle_without_any_factor_onto_student() -> None:
    with pytest.raises(KdkitError, match=r"no factor maps the 10x10 grid onto the student's 4x4; put a resample"):
        pixel_unshuffle.build(pixel_unshuffle.PixelUnshuffleConfig(), context(GridSpec(10, 10, 3)))


@pytest.mark.parametrize("mode", ["bilinear", "bicubic", "nearest", "area"])
def test_resample_matches_interpolate(mode: str) -> None:
    spec = GridSpec(8, 6, 3)
    aligner = resample.build(resample.ResampleConfig(mode=mode, size=(4, 3)), context(spec))
    grid = torch.randn(2, 8, 6, 3)
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    expected = F.interpolate(grid.permute(0, 3, 1, 2), size=(4, 3), mode=mode, **kwargs).permute(0, 2, 3, 1)
    assert torch.allclose(aligner(grid), expected, atol=1e-6)
    assert aligner.out_spec == GridSpec(4, 3, 3)


def test_resample_area_is_block_average_and_keeps_orientation() -> None:
    rows = torch.arange(8.0)[:, None].expand(8, 4)  # channel 0 = row index: height must stay height
    cols = torch.arange(4.0)[None, :].expand(8, 4)  # channel 1 = column index
    grid = torch.stack([rows, cols], -1)[None]
    aligner = resample.build(resample.ResampleConfig(mode="area", size=(4, 2)), context(GridSpec(8, 4, 2)))
    out = aligner(grid)[0]
    assert torch.equal(out[:, 0, 0], torch.tensor([0.5, 2.5, 4.5, 6.5]))
    assert torch.equal(out[0, :, 1], torch.tensor([0.5, 2.5]))


def test_resample_defaults_to_student_grid_times_scale() -> None:
    aligner = resample.build(resample.ResampleConfig(scale=2), context(GridSpec(5, 7, 3)))
    assert aligner.out_spec == GridSpec(8, 8, 3)
    grid = torch.randn(1, 8, 8, 3)
    assert aligner(grid) is grid  # same size: identity, no interpolation error


def test_mlp_width_comes_from_student_and_matches_reference() -> None:
    aligner = mlp.build(mlp.MlpConfig(hidden=7), context(GridSpec(4, 4, 6))).double()
    assert aligner.out_spec == GridSpec(4, 4, 8) and aligner.projects is True
    grid = torch.randn(2, 4, 4, 6, dtype=torch.float64)
    layer1, layer2 = aligner.mlp.fc1, aligner.mlp.fc2
    hidden = grid @ layer1.weight.T + layer1.bias
    hidden = 0.5 * hidden * (1 + torch.erf(hidden / 2**0.5))
    expected = hidden @ layer2.weight.T + layer2.bias
    assert torch.allclose(aligner(grid), expected, atol=1e-6)


def test_mlp_without_student_or_width_is_a_clear_error() -> None:
    with pytest.raises(KdkitError, match="out_channels is null"):
        mlp.build(mlp.MlpConfig(), BuildContext(name="eva", in_spec=GridSpec(2, 2, 3)))

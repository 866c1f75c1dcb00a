"""Every teacher is frozen for life, preprocesses the shared view itself and keeps its declared grid."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from kdkit.errors import KdkitError
from kdkit.interfaces import Teacher
from kdkit.teacher import Preprocess, frozen_prefixes, is_frozen_teacher, without_frozen
from teacher_builds import images


def test_frozen_after_train(tiny_teacher) -> None:
    tiny_teacher.train()
    assert not tiny_teacher.training
    assert not any(m.training for m in tiny_teacher.modules())
    assert all(not p.requires_grad for p in tiny_teacher.parameters())
    out = tiny_teacher(images(2, 48, 48))
    assert not out.grid.requires_grad
    assert isinstance(tiny_teacher, Teacher)


def test_grid_shape_as_declared(tiny_teacher) -> None:
    spec = tiny_teacher.out_spec
    out = tiny_teacher(images(3, 40, 56))  # any raw view size: the teacher resizes for itself
    assert tuple(out.grid.shape) == (3, spec.height, spec.width, spec.channels)
    assert out.grid.dtype == torch.float32
    if spec.prefix_tokens:
        assert tuple(out.prefix.shape) == (3, spec.prefix_tokens, spec.channels)
    else:
        assert out.prefix is None


def test_no_gradient_reaches_teacher_but_outputs_feed_trainable_modules(tiny_teacher) -> None:
    head = torch.nn.Linear(tiny_teacher.out_spec.channels, 1)
    head(tiny_teacher(images(2, 32, 32)).grid).sum().backward()
    assert head.weight.grad is not None
    assert all(p.grad is None for p in tiny_teacher.parameters())


def test_deterministic_in_eval_mode(tiny_teacher) -> None:
    x = images(2, 32, 32)
    tiny_teacher.train()
    torch.testing.assert_close(tiny_teacher(x).grid, tiny_teacher(x).grid, rtol=0, atol=0)


def test_bf16_runs_in_bf16(registry, tmp_path) -> None:
    from kdkit_plugins.teachers.tiny import write_tiny_hf_clip

    config = write_tiny_hf_clip(tmp_path / "m")
    fp32 = registry.build("teacher", config, _ctx())
    bf16 = registry.build("teacher", {**config, "dtype": "bf16"}, _ctx())
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    x = images(2, 32, 32)
    a, b = fp32(x).grid, bf16(x).grid
    assert b.dtype == torch.float32  # outputs are handed over in fp32
    assert not torch.equal(a, b)
    torch.testing.assert_close(a, b, rtol=0.1, atol=0.1)


def test_autocast_does_not_change_an_fp32_teacher(registry, tmp_path) -> None:
    from kdkit_plugins.teachers.tiny import write_tiny_hf_clip

    teacher = registry.build("teacher", write_tiny_hf_clip(tmp_path / "m"), _ctx())
    x = images(2, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = teacher(x).grid
    torch.testing.assert_close(inside, teacher(x).grid, rtol=0, atol=0)


def test_preprocess_equals_resize_then_normalise() -> None:
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.6, 0.7)
    pre = Preprocess((24, 40), mean, std, "bilinear")
    x = images(2, 48, 64)
    ref = F.interpolate(x, size=(24, 40), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    ref = (ref - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(pre(x), ref)
    same = images(1, 24, 40)  # already at size: normalise only
    torch.testing.assert_close(pre(same), (same - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1))


def test_mean_std_override_is_used(registry, tmp_path) -> None:
    from kdkit_plugins.teachers.tiny import write_tiny_open_clip

    config = write_tiny_open_clip(tmp_path / "m")
    teacher = registry.build("teacher", {**config, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}, _ctx())
    torch.testing.assert_close(teacher.preprocess.mean.flatten(), torch.full((3,), 0.5))
    default = registry.build("teacher", config, _ctx())
    torch.testing.assert_close(default.preprocess.mean.flatten(), torch.tensor([0.48, 0.46, 0.41]))


def test_bad_image_shape_is_named(tiny_teacher) -> None:
    with pytest.raises(KdkitError, match=r"takes \(B, 3, H, W\) images in \[0, 1\], got \(2, 1, 32, 32\)"):
        tiny_teacher(torch.rand(2, 1, 32, 32))


def test_training_checkpoint_and_optimizer_leave_teachers_out(tiny_teacher) -> None:
    model = torch.nn.ModuleDict({"teachers": torch.nn.ModuleDict({"a": tiny_teacher}), "head": torch.nn.Linear(2, 2)})
    assert is_frozen_teacher(tiny_teacher)
    assert frozen_prefixes(model) == ["teachers.a."]
    kept = without_frozen(model.state_dict(), model)
    assert sorted(kept) == ["head.bias", "head.weight"]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == 6


def _ctx():
    from kdkit import BuildContext

    return BuildContext(name="t")

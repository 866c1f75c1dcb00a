"""Teacher logits flow: ``TeacherOutput.logits`` -> ``step.teacher_logits[name]`` -> the ``kl`` loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import reduce
from torch import nn

from kdkit.engine import build
from kdkit.errors import KdkitError
from kdkit.interfaces import TeacherOutput
from kdkit.recipe import load_recipe
from kdkit_plugins.data.synthetic import SyntheticImages

CLASSES = 4  # the tiny student's head


class Classifier(nn.Module):
    """A real tiny teacher plus a fixed linear classifier on its pooled grid: emits logits too."""

    def __init__(self, teacher: nn.Module, seed: int) -> None:
        super().__init__()
        self.teacher = teacher
        self.out_spec = teacher.out_spec
        generator = torch.Generator().manual_seed(seed)
        self.classes = torch.randn(teacher.out_spec.channels, CLASSES, generator=generator)

    def forward(self, images: torch.Tensor) -> TeacherOutput:
        grid = self.teacher(images).grid
        return TeacherOutput(grid, None, reduce(grid, "b h w c -> b c", "mean") @ self.classes)


@pytest.fixture(scope="module")
def distiller(tiny_recipe, tiny_root, registry):
    overrides = [f"runtime.data_root={tiny_root}", "losses={task: {kind: task}, kd: {kind: kl, temperature: 2.0}}"]
    recipe = load_recipe(tiny_recipe, overrides, registry=registry)
    model = build.build_distiller(recipe, registry, torch.device("cpu"))
    model.active = ("task", "kd")
    build.set_trainable(model, {"all": [n for n, _ in model.named_parameters()]})
    return model


@pytest.fixture
def batch():
    data = SyntheticImages(4, 32, CLASSES, 0.1, 0)
    return torch.utils.data.default_collate([data[i] for i in range(3)])


def test_kl_reads_the_logits_each_teacher_emits(distiller, batch, monkeypatch) -> None:
    fakes = {name: Classifier(teacher, seed) for seed, (name, teacher) in enumerate(distiller.teachers.items())}
    monkeypatch.setattr(distiller, "teachers", fakes)
    losses, step = distiller(batch)
    assert set(step.teacher_logits) == {"clip", "eva02"}
    for name, fake in fakes.items():
        torch.testing.assert_close(step.teacher_logits[name], fake(batch["images"]).logits)
    student = step.logits.double() / 2.0
    expected = torch.stack([
        4.0 * F.kl_div(student.log_softmax(-1), (step.teacher_logits[n].double() / 2.0).log_softmax(-1),
                       log_target=True, reduction="batchmean")
        for n in ("clip", "eva02")
    ]).mean()
    torch.testing.assert_close(losses["kd"].double(), expected, rtol=1e-6, atol=1e-8)
    losses["kd"].backward()  # the student learns from the teachers' logits; the teachers get nothing
    assert distiller.student.head.weight.grad.abs().sum() > 0
    assert not any(p.requires_grad or p.grad is not None for f in fakes.values() for p in f.parameters())


def test_teachers_without_logits_leave_kl_a_clear_error(distiller, batch) -> None:
    with pytest.raises(KdkitError, match=r"loss 'kd' needs step.teacher_logits\['clip'\], but teacher 'clip' is "
                                         r"missing \(step.teacher_logits has: nothing\)"):
        distiller(batch)

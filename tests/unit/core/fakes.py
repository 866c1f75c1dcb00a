"""Small fake plugins and a recipe that uses them, so core tests do not depend on the built-ins."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kdkit import Factory, PluginConfig, hookimpl
from kdkit.plugins import load_plugins


class FakeTeacherConfig(PluginConfig):
    """A teacher with one required and one optional field."""

    kind: Literal["fake_teacher"] = "fake_teacher"
    checkpoint: str = Field(description="Weights file.")
    layer: int = Field(-1, description="Layer index.")


class FakeAlignerConfig(PluginConfig):
    """An aligner with a hidden width."""

    kind: Literal["fake_mlp"] = "fake_mlp"
    hidden: int = Field(64, gt=0, description="Hidden width.")


class FakeLossConfig(PluginConfig):
    """A loss with no field."""

    kind: Literal["fake_loss"] = "fake_loss"


class FakeStudentConfig(PluginConfig):
    """A student."""

    kind: Literal["fake_student"] = "fake_student"
    width: int = Field(8, description="Width.")


class FakeDataConfig(PluginConfig):
    """A dataset."""

    kind: Literal["fake_data"] = "fake_data"
    size: int = Field(4, description="Samples.")


def _build(config, context):
    return config


class FakePlugin:
    @hookimpl
    def kdkit_teachers(self):
        return {"fake_teacher": Factory(FakeTeacherConfig, _build)}

    @hookimpl
    def kdkit_aligners(self):
        return {"fake_mlp": Factory(FakeAlignerConfig, _build)}

    @hookimpl
    def kdkit_losses(self):
        return {"fake_loss": Factory(FakeLossConfig, _build)}

    @hookimpl
    def kdkit_students(self):
        return {"fake_student": Factory(FakeStudentConfig, _build)}

    @hookimpl
    def kdkit_data(self):
        return {"fake_data": Factory(FakeDataConfig, _build)}


GOOD_RECIPE = """\
# a recipe for the core tests
student: {kind: fake_student, width: 16}
teachers:
  eva02:
    kind: fake_teacher
    checkpoint: eva.safetensors
    align:
      - {kind: fake_mlp}
      - {kind: fake_mlp, hidden: 32}
losses:
  fine: {kind: fake_loss, weight: 0.5}
  coarse: {kind: fake_loss, weight: 0.5}
stages:
  pretrain:
    data: {kind: fake_data}
    trainable: [adapters]
    optimizer: {lr: 1.0e-3}
    batch: {global_size: 8, per_device: 4}
"""



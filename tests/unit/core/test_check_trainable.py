"""What plain ``kdkit validate`` checks of the trainable lists (kdkit.recipe.check.check_trainable)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from kdkit.errors import KdkitError
from kdkit.recipe import load_recipe
from kdkit.recipe.check import TrainableScope, check_trainable

RECIPE = Path(__file__).resolve().parents[3] / "recipes" / "tiny" / "timm_two_teachers.yaml"


def with_skeleton(registry, monkeypatch, skeleton) -> None:
    """The registry's timm student factory with ``skeleton`` in place of its own."""
    factory = dataclasses.replace(registry.factory("student", "timm"), skeleton=skeleton)
    original = registry.factory
    monkeypatch.setattr(registry, "factory", lambda kind, name: factory if (kind, name) == ("student", "timm")
                        else original(kind, name))


def test_every_entry_but_the_kd_heads_is_checked(registry) -> None:
    scope = check_trainable(load_recipe(RECIPE, registry=registry), registry)
    assert scope == TrainableScope(skipped=("kd_heads",))
    assert scope.note() == ("trainable lists checked except 'kd_heads' (KD heads are built from the teachers: "
                            "`kdkit validate --build`)")
    recipe = load_recipe(RECIPE, ["stages.pretrain.trainable=[head]", "stages.finetune.trainable=[vision_base]"],
                         registry=registry)
    assert check_trainable(recipe, registry).note() == "trainable lists checked"


def test_a_student_without_a_skeleton_is_named(registry, monkeypatch) -> None:
    with_skeleton(registry, monkeypatch, None)
    scope = check_trainable(load_recipe(RECIPE, registry=registry), registry)
    assert scope.note() == ("trainable lists not checked: the 'timm' student plugin offers no skeleton (a build "
                            "without its weights); run `kdkit validate --build` where the student's files are")


def test_a_plugin_failing_on_the_meta_device_leaves_the_lists_unchecked(registry, monkeypatch) -> None:
    def broken(config, context):
        raise NotImplementedError("Cannot copy out of meta tensor; no data!")

    with_skeleton(registry, monkeypatch, broken)
    scope = check_trainable(load_recipe(RECIPE, registry=registry), registry)
    assert scope.not_checked == ("the student could not be built on the meta device (NotImplementedError: Cannot "
                                 "copy out of meta tensor; no data!)")

    def refused(config, context):
        raise KdkitError("student.feature_layer 9 is out of range")

    with_skeleton(registry, monkeypatch, refused)
    with pytest.raises(KdkitError, match="feature_layer 9 is out of range"):  # what run says too: not hidden
        check_trainable(load_recipe(RECIPE, registry=registry), registry)

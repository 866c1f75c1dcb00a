"""The timm student's export: timm's own on-disk format, and the fields that build it back exactly."""

from __future__ import annotations

import json

import pytest
import torch

from kdkit import BuildContext

RESNET = {"kind": "timm", "model": "resnet18", "image_size": 32, "feature_layer": 2,
          "model_kwargs": {"channels": [8, 8, 16, 16], "stem_width": 8, "num_classes": 5}}
VIT = {"kind": "timm", "model": "vit_tiny_patch16_224", "feature_layer": 0, "mean": [0.1, 0.2, 0.3],
       "model_kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 16, "depth": 2, "num_heads": 2, "num_classes": 5}}


def trained_like(student) -> None:
    """Move every weight and batch-norm statistic away from its initial value."""
    with torch.no_grad():
        for tensor in student.model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.05 * torch.randn_like(tensor))


@pytest.mark.parametrize("fields", [RESNET, VIT], ids=["resnet", "vit"])
def test_export_round_trip_gives_identical_outputs(registry, tmp_path, fields) -> None:
    student = registry.build("student", fields, BuildContext(name="student"))
    trained_like(student)
    returned = student.export(tmp_path / "export")
    assert returned["checkpoint"] == "model.safetensors"
    assert (tmp_path / "export" / "model.safetensors").is_file()

    torch.manual_seed(123)  # a different random init: only the file can make the outputs equal
    again = registry.build("student", returned, BuildContext(name="student", data_root=tmp_path / "export"))
    images = torch.rand(3, 3, 32, 32)
    for model in (student.model, again.model):
        model.eval()
    first, second = student({"images": images}), again({"images": images})
    torch.testing.assert_close(second.logits, first.logits, rtol=0, atol=0)
    torch.testing.assert_close(second.features, first.features, rtol=0, atol=0)
    assert again.feature_spec == student.feature_spec and again.mean == student.mean


def test_export_is_timms_own_format(registry, tmp_path) -> None:
    """timm loads the directory by itself (``local-dir:``), with the recorded architecture and class count."""
    import timm

    student = registry.build("student", RESNET, BuildContext(name="student"))
    trained_like(student)
    student.export(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architecture"] == "resnet18" and config["num_classes"] == 5
    model = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    student.model.eval()
    pixels = student.pixels(torch.rand(2, 3, 32, 32))
    torch.testing.assert_close(model(pixels), student.model(pixels), rtol=0, atol=0)


def test_exported_student_loads_as_a_timm_teacher_with_its_logits(registry, tmp_path) -> None:
    """A student trained in one run is a teacher of the next: same features and logits."""
    student = registry.build("student", RESNET, BuildContext(name="student"))
    trained_like(student)
    student.export(tmp_path / "resnet")
    teacher = registry.build("teacher", {
        "kind": "timm", "model": "resnet18", "checkpoint": "resnet/model.safetensors", "resolution": 32,
        "interpolation": "bilinear", "layer": 2, "logits": True, "model_args": RESNET["model_kwargs"],
    }, BuildContext(name="resnet", data_root=tmp_path))
    student.model.eval()
    images = torch.rand(2, 3, 32, 32)
    out = teacher(images)
    expected = student({"images": images})
    torch.testing.assert_close(out.logits, expected.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.grid.flatten(1, 2), expected.features, rtol=1e-5, atol=1e-5)


def test_teacher_logits_need_a_classifier(registry, tmp_path) -> None:
    from kdkit.errors import KdkitError

    kwargs = {**RESNET["model_kwargs"], "num_classes": 0}
    student = registry.build("student", {**RESNET, "model_kwargs": kwargs}, BuildContext(name="student"))
    student.export(tmp_path / "r")
    with pytest.raises(KdkitError, match=r"^teachers.r.logits: timm model 'resnet18' was built without a classifier "
                                         r"\(num_classes 0\); set teachers.r.model_args.num_classes"):
        registry.build("teacher", {"kind": "timm", "model": "resnet18", "checkpoint": "r/model.safetensors",
                                   "resolution": 32, "logits": True, "model_args": kwargs},
                       BuildContext(name="r", data_root=tmp_path))

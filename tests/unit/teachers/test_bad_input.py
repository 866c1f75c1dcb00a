"""Bad checkpoints and bad recipe values raise errors naming the teacher, the file and the reason."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from kdkit.errors import CheckpointError, KdkitError
from kdkit.weights import load_into, read_state_dict
from kdkit_plugins.teachers import tiny
from teacher_builds import build_teacher


class NotATensor:
    """Pickled into a checkpoint, it can only be loaded by running code."""

    def __reduce__(self):
        return (print, ("this would run on load",))


def test_missing_file_names_teacher_and_path(registry, tmp_path) -> None:
    with pytest.raises(CheckpointError, match=r"teacher 'eva': checkpoint '.*nope\.pth': no such file"):
        build_teacher(registry, {"kind": "timm", "model": "test_convnext", "checkpoint": str(tmp_path / "nope.pth")},
                      name="eva")


def test_empty_checkpoint_field_says_what_to_set(registry) -> None:
    with pytest.raises(CheckpointError, match=r"teacher 'sam': no `checkpoint` given"):
        build_teacher(registry, {"kind": "sam"}, name="sam")


def test_relative_checkpoint_resolved_against_data_root(registry, tmp_path) -> None:
    from kdkit import BuildContext

    config = tiny.write_tiny_sam(tmp_path / "weights")
    config["checkpoint"] = "weights/sam_tiny.pth"
    teacher = registry.build("teacher", config, BuildContext(name="sam", data_root=tmp_path))
    assert teacher.out_spec.height == 8


def test_pickle_needing_code_is_refused(tmp_path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "extra": NotATensor()}, path)
    with pytest.raises(CheckpointError, match=r"teacher 'x': checkpoint .*evil\.pth.*refused: this pickle needs "
                       r"to run code to load .*weights_only=True"):
        read_state_dict(path, "x")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_corrupt_file(tmp_path, suffix) -> None:
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match=rf"teacher 'x': checkpoint .*broken\{suffix}.*corrupt"):
        read_state_dict(path, "x")


def test_truncated_file(tmp_path) -> None:
    path = tmp_path / "cut.pth"
    torch.save({"w": torch.randn(64, 64)}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_state_dict(path, "x")


def test_nested_and_ddp_state_dicts_are_unwrapped(tmp_path) -> None:
    path = tmp_path / "nested.pth"
    torch.save({"epoch": 3, "state_dict": {"module.a": torch.ones(1), "module.b": torch.zeros(2)}}, path)
    assert sorted(read_state_dict(path, "x")) == ["a", "b"]


def test_plain_pickle_of_something_else(tmp_path) -> None:
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="holds a list, not a state dict"):
        read_state_dict(path, "x")
    path.write_bytes(pickle.dumps([1, 2, 3]))  # a pickle, but not torch.save's format
    with pytest.raises(CheckpointError, match="not written by torch.save"):
        read_state_dict(path, "x")


def test_other_size_reports_first_mismatching_shapes(tmp_path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    other = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Linear(16, 2), torch.nn.Linear(2, 2))
    with pytest.raises(CheckpointError, match=r"another architecture or size\? 3 shape mismatches: 0\.weight: "
                       r"checkpoint \(16, 4\) vs model \(8, 4\).*2 unexpected keys: 2\.weight; 2\.bias"):
        load_into(model, other.state_dict(), "x", "f.pth")


def test_timm_checkpoint_of_other_size(registry, tmp_path) -> None:
    config = tiny.write_tiny_timm(tmp_path / "m")
    config["model_args"] = {**config["model_args"], "embed_dim": 48}
    with pytest.raises(CheckpointError, match=r"teacher 't': checkpoint .*model\.safetensors.*does not fit the model "
                       r"built with model='eva02_tiny_patch14_224'.*shape mismatches: .*checkpoint \(1, 1, 32\) vs "
                       r"model \(1, 1, 48\)"):
        build_teacher(registry, config)


def test_sam_checkpoint_of_other_size(registry, tmp_path) -> None:
    config = tiny.write_tiny_sam(tmp_path / "m")
    config["encoder_args"] = {**config["encoder_args"], "depth": 3}
    with pytest.raises(CheckpointError, match=r"missing keys: blocks\.2\."):
        build_teacher(registry, config)


def test_hf_directory_of_another_model(registry, tmp_path) -> None:
    config = tiny.write_tiny_pix2struct(tmp_path / "p2s")
    with pytest.raises(CheckpointError, match=r"teacher 't': checkpoint .*p2s.*CLIPVisionModel"):
        build_teacher(registry, {"kind": "hf_clip", "checkpoint": config["checkpoint"]})


def test_hf_folder_without_config(registry, tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"checkpoint '.*empty': has no config.json \(the model's configuration\)"):
        build_teacher(registry, {"kind": "hf_clip", "checkpoint": str(tmp_path / "empty")})


@pytest.mark.parametrize(("kind", "write", "config_file"), [
    ("open_clip", tiny.write_tiny_open_clip, "open_clip_config.json"),
    ("pix2struct", tiny.write_tiny_pix2struct, "config.json"),
    ("hf_clip", tiny.write_tiny_hf_clip, "config.json"),
])
def test_model_directory_missing_or_breaking_its_config_names_directory_and_file(registry, tmp_path, kind, write,
                                                                                 config_file) -> None:
    """The library's own FileNotFoundError / RuntimeError never reaches the user: kdkit names the file."""
    config = write(tmp_path / kind)
    (tmp_path / kind / config_file).unlink()
    with pytest.raises(CheckpointError, match=rf"teacher 'clip': checkpoint '.*{kind}': has no {config_file}"):
        build_teacher(registry, config, name="clip")
    (tmp_path / kind / config_file).write_text("{not json")
    with pytest.raises(CheckpointError, match=rf"checkpoint '.*{config_file}': is not valid JSON"):
        build_teacher(registry, config, name="clip")


def test_model_args_timm_refuses_are_named(registry, tmp_path) -> None:
    config = tiny.write_tiny_timm(tmp_path / "timm")
    config["model_args"] = {**config.get("model_args", {}), "bogus": 1}
    with pytest.raises(KdkitError, match=r"teacher 'eva': timm cannot create .* with model_args "
                                         r".*'bogus': 1.*unexpected keyword argument 'bogus'"):
        build_teacher(registry, config, name="eva")


@pytest.mark.parametrize(("kind", "name", "close"), [
    ("timm", "eva02_large_patch14_44", "eva02_large_patch14_448"),
    ("open_clip", "ViT-L-14-33", "ViT-L-14-336"),
    ("sam", "vit_hh", "vit_h"),
    ("module", "resnet5", "resnet50"),
])
def test_unknown_model_lists_close_names(registry, tmp_path, kind, name, close) -> None:
    path = tmp_path / "w.pth"
    torch.save({"w": torch.zeros(1)}, path)
    with pytest.raises(KdkitError, match=rf"teacher 't': unknown .* model '{name}'; closest: .*{close}"):
        build_teacher(registry, {"kind": kind, "model": name, "checkpoint": str(path)})


@pytest.mark.parametrize(("write", "layer", "depth"), [
    (tiny.write_tiny_hf_clip, 3, 3),
    (tiny.write_tiny_open_clip, -4, 3),
    (tiny.write_tiny_timm, 2, 2),
    (tiny.write_tiny_pix2struct, -3, 2),
])
def test_layer_out_of_range(registry, tmp_path, write, layer, depth) -> None:
    config = {**write(tmp_path / "m"), "layer": layer}
    with pytest.raises(KdkitError, match=rf"teacher 't': layer {layer} is out of range; the model has {depth} .*"
                       rf"\[{-depth}, {depth - 1}\]"):
        build_teacher(registry, config)


def test_module_path_not_found_lists_close_ones(registry, tmp_path) -> None:
    config = {**tiny.write_tiny_module(tmp_path / "m"), "layer": "feature.3"}
    with pytest.raises(KdkitError, match=r"no module 'feature\.3' in MobileNetV3; closest: features\.3"):
        build_teacher(registry, config)


@pytest.mark.parametrize(("write", "resolution", "message"), [
    (tiny.write_tiny_sam, 48, r"SAM's encoder takes 64x64 inputs only"),
    (tiny.write_tiny_hf_clip, 36, r"resolution 36x36 is not a multiple of the patch size 8"),
    (tiny.write_tiny_pix2struct, 36, r"must be a multiple of the patch size 8"),
    (tiny.write_tiny_pix2struct, 8 * 64, r"at most 63 rows and columns"),
])
def test_resolution_the_model_cannot_take(registry, tmp_path, write, resolution, message) -> None:
    config = {**write(tmp_path / "m"), "resolution": resolution}
    with pytest.raises(KdkitError, match=message):
        build_teacher(registry, config)


def test_open_clip_file_without_model_name(registry, tmp_path) -> None:
    path = tmp_path / "w.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(path))
    with pytest.raises(KdkitError, match=r"`checkpoint` is a file, so `model` must name its open_clip architecture"):
        build_teacher(registry, {"kind": "open_clip", "checkpoint": str(path)})


def test_checkpoint_directory_with_two_weight_files(tmp_path: Path) -> None:
    for name in ("a.pth", "b.pth"):
        torch.save({"w": torch.zeros(1)}, tmp_path / name)
    with pytest.raises(CheckpointError, match=r"holds several \.pth files \(a\.pth, b\.pth\); name one"):
        read_state_dict(tmp_path, "x")

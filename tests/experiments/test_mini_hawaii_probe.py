"""The mini-world probe's labelled views: every TRAIN image once per aspect, under its answer (no held-out image)."""

from __future__ import annotations

from pathlib import Path

from experiments.mini_hawaii.probe import aspect_folders, report
from experiments.mini_hawaii.world import ASPECTS, read_scenes, write_world


def test_aspect_folders_hold_each_train_image_under_its_answer(tmp_path: Path) -> None:
    files = write_world(tmp_path / "data", seed=0, train_images=12, test_images=4)
    folders = aspect_folders(files, tmp_path / "probe")
    scenes = read_scenes(files, "train")
    assert list(folders) == list(ASPECTS)
    for aspect, folder in folders.items():
        links = sorted(folder.glob("*/*.png"))
        assert len(links) == len(scenes)
        assert {(p.parent.name, p.name) for p in links} == {(s[aspect], Path(s["image"]).name) for s in scenes}
        assert all(p.resolve().parent.name == "train" for p in links)
    assert aspect_folders(files, tmp_path / "probe") == folders  # a rerun reuses the links


def test_report_names_a_misranked_expert() -> None:
    row = {"accuracy": 50.0, "gain": 0.0, "gflops": 0.01, "ms": 1.0, "feature_dim": 4}
    results = {"aspects": {"color": [{**row, "name": "student (own features)"}, {**row, "name": "clip", "gain": 5.0}]},
               "expert_first": {"color": True, "count": False}}
    lines = report(results)
    assert lines[0] == "### color" and lines[-1] == "Expert first on its own aspect: color yes, count NO"

"""``python -m experiments.mini_hawaii.probe [--output-dir DIR] [--profile default]``: ``kdkit probe`` on the mini world.

Each aspect of the world (colour, shape, count, position) becomes a labelled image folder of the world's
TRAIN images (links, one sub-folder per answer; the held-out questions are never read), and the demo's
HAWAII recipe is probed on it: its student (the random-init tower every demo run starts from) and its
three expert teachers. The check: every expert ranks first on the aspect(s) it was trained for
(``EXPERTISE``). The world and the experts are the demo's own (reused from a demo output directory).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from experiments.mini_hawaii.experts import EXPERTISE
from experiments.mini_hawaii.world import ASPECTS, WorldFiles, read_scenes


def aspect_folders(files: WorldFiles, root: Path) -> dict[str, Path]:
    """``root/<aspect>/<answer>/<image>`` links to the train images, one folder per aspect."""
    folders = {}
    scenes = read_scenes(files, "train")
    for aspect in ASPECTS:
        folder = root / aspect
        for scene in scenes:
            link = folder / scene[aspect] / Path(scene["image"]).name
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to((files.path("images") / scene["image"]).resolve())
        folders[aspect] = folder
    return folders


def probe_world(output: Path, profile_name: str = "default", jobs: int = 1, limit: int = 1000) -> dict[str, Any]:
    """World and experts (reused when present), then the probe of every aspect; returns rows and the check."""
    from dataclasses import asdict

    from experiments.mini_hawaii.pipeline import PROFILES, experts_phase, world_phase
    from experiments.mini_hawaii.variants import RECIPES, write_student
    from experiments.mini_hawaii.world import vocabulary_words
    from kdkit.probe import probe_recipe

    profile = PROFILES[profile_name]
    data_root = (output / "data").resolve()
    files, _ = world_phase(data_root, profile)
    experts, _ = experts_phase(data_root, profile, jobs)
    student = write_student(data_root, 0, vocabulary_words())
    overrides = [f"runtime.data_root={data_root}", *(f"{k}={v}" for k, v in student.items())]
    results: dict[str, Any] = {"experts": experts, "aspects": {}}
    for aspect, folder in aspect_folders(files, data_root / "probe").items():
        block = {"kind": "image_folder", "root": str(folder), "image_size": 32}
        rows = probe_recipe(RECIPES / "hawaii.yaml", overrides=overrides, data=block, limit=limit)
        results["aspects"][aspect] = [asdict(r) for r in rows]
    first = {aspect: rows[1]["name"] for aspect, rows in results["aspects"].items()}
    results["first"] = first
    results["expert_first"] = {aspect: first[aspect] == expert for expert, aspects in EXPERTISE.items()
                               for aspect in aspects}
    return results


def report(results: dict[str, Any]) -> list[str]:
    """Markdown: one ranked table per aspect and the check line."""
    from kdkit.probe import ProbeRow, table

    lines = []
    for aspect, rows in results["aspects"].items():
        lines += [f"### {aspect}", "", *table([ProbeRow(**r) for r in rows], None)[:-2], ""]
    ok = results["expert_first"]
    lines.append("Expert first on its own aspect: " + ", ".join(f"{a} {'yes' if v else 'NO'}" for a, v in ok.items()))
    return lines


def main(argv: list[str] | None = None) -> int:
    """Parse, probe, print the tables and a JSON line; exit 1 when an expert is not first on its aspect."""
    parser = argparse.ArgumentParser(prog="python -m experiments.mini_hawaii.probe", description=__doc__)
    parser.add_argument("--output-dir", type=Path, default=Path("runs/mini_hawaii"), help="a demo output directory")
    parser.add_argument("--profile", default="default", choices=("quick", "default", "full"))
    parser.add_argument("--jobs", type=int, default=1, help="processes training the experts (default 1)")
    parser.add_argument("--limit", type=int, default=1000, help="train images probed per aspect (default 1000)")
    args = parser.parse_args(argv)
    import os

    load = os.getloadavg()[0]
    results = probe_world(args.output_dir, args.profile, args.jobs, args.limit)
    print("\n".join(report(results)))
    print(json.dumps({"first": results["first"], "expert_first": results["expert_first"], "loadavg_start": load,
                      "loadavg_end": os.getloadavg()[0]}))
    return 0 if all(results["expert_first"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())

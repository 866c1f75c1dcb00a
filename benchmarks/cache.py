"""Teacher cache against online teachers: training step time, cache read throughput, bytes per sample,
and the loss deviation of the lossy storage dtypes.

    python -m benchmarks.cache [--repeats 3] [--steps 6] [--threads 1]

Two cases, each cached (fp32) with ``kdkit cache`` first, then trained side by side from the same
initialisation (online and cached steps interleaved, ``--repeats`` times, so a burst of load on a
shared machine hits both alike):

- ``twin``: the tiny HAWAII twin (tiny LLaVA student, tiny CLIP / ConvNeXt / EVA-02 teachers);
- ``classifier``: a timm ViT classifier student with two timm EVA-02 teachers sized so that their
  forward costs at least 10x the student's (measured and printed).

Per repeat, ``--steps`` optimizer steps of each mode alternate (online, cached, online...) after
one warm-up step each; the ratio of their median times is the repeat's cached / online ratio; the table shows the median and min-max over repeats. The
cache's read throughput (teacher outputs served per second, image digests and row checks
included) is compared with the samples per second the cached step consumes. Bytes per sample come
from the shards written. The lossy dtypes (bf16, fp16, int8) train the classifier's first stage
from their caches; the largest relative deviation of any logged loss from the fp32-cached run is
reported. The load average is printed: on a shared machine the numbers are only indicative. The
last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from kdkit.cache.command import cache_stage
from kdkit.engine import build
from kdkit.engine.capabilities import data_capabilities
from kdkit.engine.monitor import read_metrics
from kdkit.engine.run import run_recipe
from kdkit.engine.step import weighted_total
from kdkit.plugins import get_registry
from kdkit.recipe import load_recipe
from kdkit_plugins.fixtures.hawaii import write_tiny_hawaii
from kdkit_plugins.fixtures.timm_two_teachers import write_tiny_timm_two_teachers

ROOT = Path(__file__).parents[1] / "recipes" / "tiny"
TWIN = ROOT / "hawaii" / "hawaii_7b.yaml"
CLASSIFIER = ROOT / "timm_two_teachers.yaml"
#: Two random-init timm EVA-02 teachers (width 384, 8 layers) at 112 px (8x8 tokens), saved by :func:`write_teachers`.
TEACHER_ARGS = {"embed_dim": 384, "depth": 8, "num_heads": 6, "img_size": 112}
CLASSIFIER_SETTINGS = [
    "student.model_kwargs={img_size: 64, patch_size: 8, embed_dim: 64, depth: 4, num_heads: 2, num_classes: 4}",
    *[f"teachers.{t}.{k}={v}" for t in ("clip", "eva02") for k, v in {
        "kind": "timm", "model": "eva02_tiny_patch14_224", "checkpoint": f"big/{t}.safetensors",
        "model_args": "{" + ", ".join(f"{a}: {b}" for a, b in TEACHER_ARGS.items()) + "}"}.items()],
    "stages.pretrain.data.size=32", "stages.pretrain.data.image_size=64", "stages.finetune.data.image_size=64",
]


def write_teachers(root: Path) -> None:
    """The classifier case's teachers as timm safetensors checkpoints under ``root / "big"``."""
    import timm
    from safetensors.torch import save_file

    (root / "big").mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(("clip", "eva02")):
        torch.manual_seed(seed)
        model = timm.create_model("eva02_tiny_patch14_224", pretrained=False, **TEACHER_ARGS)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "big" / f"{name}.safetensors"))


def quiet(*_: object) -> None:
    """Swallow summary lines."""


class Case:
    """One recipe built twice (online and cached teachers) with the same initialisation, and its batches."""

    def __init__(self, recipe: Path, settings: list[str], cache: Path, registry: Any, batch: int) -> None:
        self.registry = registry
        cache_stage(recipe, "pretrain", cache, overrides=settings, shard_size=64, registry=registry, echo=quiet)
        self.online = self.build(load_recipe(recipe, settings, registry=registry))
        self.cached = self.build(load_recipe(recipe, [*settings, f"runtime.teacher_cache={cache}"], registry=registry))
        spec = load_recipe(recipe, settings, registry=registry)
        context = build.base_context(spec, torch.device("cpu"))
        context.extras = {"student": self.online[0].plugin, "run_dir": cache}
        data = registry.build("data", spec.stages["pretrain"].data.config, context)
        collate = data_capabilities(data).collate or torch.utils.data.default_collate
        self.batches = [collate([data[(i * batch + j) % len(data)] for j in range(batch)]) for i in range(8)]
        self.weights = {n: b.weight for n, b in spec.losses.items()}
        self.cache = cache

    def build(self, recipe: Any) -> tuple[Any, torch.optim.Optimizer]:
        distiller = build.build_distiller(recipe, self.registry, torch.device("cpu"))
        stage = recipe.stages["pretrain"]
        chosen = build.resolve_trainable("pretrain", stage.trainable, distiller, build.parameter_groups(distiller))
        build.set_trainable(distiller, chosen)
        distiller.active = tuple(stage.losses or recipe.losses)
        distiller.train()
        return distiller, torch.optim.AdamW([p for p in distiller.parameters() if p.requires_grad], lr=1e-4)

    def step(self, which: tuple[Any, torch.optim.Optimizer], index: int) -> float:
        """Seconds of one optimizer step (forward, backward, update) on batch ``index``."""
        distiller, optimizer = which
        batch = self.batches[index % len(self.batches)]
        tick = time.perf_counter()
        losses, _ = distiller(batch)
        weighted_total(losses, self.weights).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - tick

    def read_rate(self) -> float:
        """Samples per second the cache serves (digests, lookups, row checks, decoding)."""
        source = self.cached[0].source
        tick, count = time.perf_counter(), 0
        for batch in self.batches:
            source.outputs(batch["images"], batch["ids"])
            count += batch["images"].shape[0]
        return count / (time.perf_counter() - tick)

    def forward_costs(self) -> tuple[float, float]:
        """Seconds of one teacher pass (all teachers) and one student forward on the first batch."""
        distiller = self.online[0]
        images = self.batches[0]["images"]
        with torch.no_grad():
            for _ in range(2):  # the second of two runs: warm
                tick = time.perf_counter()
                distiller.source.outputs(images, None)
                teachers = time.perf_counter() - tick
                tick = time.perf_counter()
                distiller.plugin.encode(images)
                student = time.perf_counter() - tick
        return teachers, student

    def bytes_per_sample(self) -> dict[str, float]:
        out = {}
        for teacher in sorted(p.name for p in self.cache.iterdir() if p.is_dir()):
            shards = list((self.cache / teacher).glob("*.safetensors"))
            rows = sum(int(_rows(s)) for s in shards)
            out[teacher] = round(sum(s.stat().st_size for s in shards) / max(1, rows), 1)
        return out


def _rows(path: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata()["rows"]


def measure(case: Case, repeats: int, steps: int) -> dict[str, Any]:
    case.step(case.online, 0)  # warm-up
    case.step(case.cached, 0)
    ratios, online, cached = [], [], []
    for r in range(repeats):  # steps alternate online / cached, so a burst of load hits both alike
        pairs = [(case.step(case.online, 1 + r * steps + k), case.step(case.cached, 1 + r * steps + k))
                 for k in range(steps)]
        a, b = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
        online.append(a)
        cached.append(b)
        ratios.append(b / a)
    consume = case.batches[0]["images"].shape[0] / statistics.median(cached)
    reads = [case.read_rate() for _ in range(repeats)]
    teachers, student = case.forward_costs()
    return {
        "cached_vs_online": round(statistics.median(ratios), 3), "range": [round(min(ratios), 3), round(max(ratios), 3)],
        "online_step_s": round(statistics.median(online), 4), "cached_step_s": round(statistics.median(cached), 4),
        "read_samples_per_s": round(statistics.median(reads), 1), "consume_samples_per_s": round(consume, 1),
        "read_vs_consume": round(statistics.median(reads) / consume, 2),
        "teacher_vs_student_forward": round(teachers / student, 1), "bytes_per_sample": case.bytes_per_sample(),
    }


def lossy(root: Path, work: Path, registry: Any) -> dict[str, float]:
    """Largest relative deviation of a logged loss (classifier, first stage, 4 steps) per storage dtype vs fp32."""
    settings = [f"runtime.data_root={root}", "stages.pretrain.max_steps=4", "stages.pretrain.data.size=16",
                "stages.finetune.max_steps=1", "stages.finetune.data.size=16"]
    result, reference = {}, None
    for dtype in ("fp32", "bf16", "fp16", "int8"):
        cache = work / f"lossy-{dtype}"
        for stage in ("pretrain", "finetune"):
            cache_stage(CLASSIFIER, stage, cache, dtype=dtype, overrides=settings, shard_size=64, registry=registry,
                        echo=quiet)
        run = run_recipe(CLASSIFIER, [*settings, f"runtime.teacher_cache={cache}", f"runtime.output_dir={work / dtype}"],
                         registry=registry, tensorboard=False, progress=False, report=False)
        values = [v for r in read_metrics(run) for v in r["losses"].values()]
        if reference is None:
            reference = values
        result[dtype] = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(values, reference, strict=True))
    return {k: float(f"{v:.3g}") for k, v in result.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    registry = get_registry()
    started = time.perf_counter()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        twin_root = write_tiny_hawaii(work / "hawaii")
        tiny_root = write_tiny_timm_two_teachers(work / "tiny")
        write_teachers(tiny_root)
        twin = Case(TWIN, [f"runtime.data_root={twin_root}"], work / "twin-cache", registry, batch=2)
        classifier = Case(CLASSIFIER, [f"runtime.data_root={tiny_root}", *CLASSIFIER_SETTINGS], work / "cls-cache",
                          registry, batch=8)
        results = {"twin": measure(twin, args.repeats, args.steps),
                   "classifier": measure(classifier, args.repeats, args.steps)}
        loss_deviation = lossy(tiny_root, work, registry)
    print(f"{'case':<12} {'cached/online':>14} {'range':>15} {'online s':>9} {'cached s':>9} {'read/consume':>13} "
          f"{'teachers/student fwd':>21}")
    for name, row in results.items():
        print(f"{name:<12} {row['cached_vs_online']:>14} {str(row['range']):>15} {row['online_step_s']:>9} "
              f"{row['cached_step_s']:>9} {row['read_vs_consume']:>13} {row['teacher_vs_student_forward']:>21}")
        print(f"{'':<12} bytes per sample (fp32): {row['bytes_per_sample']}")
    print(f"largest relative loss deviation from the fp32 cache: {loss_deviation}")
    load_after = os.getloadavg()
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} on {os.cpu_count()} CPUs; "
          f"{time.perf_counter() - started:.0f} s (a shared machine: indicative only)")
    print(json.dumps({
        "twin_cached_vs_online": results["twin"]["cached_vs_online"],
        "twin_range": results["twin"]["range"],
        "classifier_cached_vs_online": results["classifier"]["cached_vs_online"],
        "classifier_range": results["classifier"]["range"],
        "classifier_teacher_vs_student_forward": results["classifier"]["teacher_vs_student_forward"],
        "read_vs_consume": min(results["twin"]["read_vs_consume"], results["classifier"]["read_vs_consume"]),
        "read_vs_consume_by_case": {k: v["read_vs_consume"] for k, v in results.items()},
        "bytes_per_sample_fp32": {k: v["bytes_per_sample"] for k, v in results.items()},
        "loss_deviation_vs_fp32": loss_deviation,
        "repeats": args.repeats, "steps": args.steps, "threads": args.threads,
        "loadavg_before": round(load_before[0], 2), "loadavg_after": round(load_after[0], 2),
    }))


if __name__ == "__main__":
    main()

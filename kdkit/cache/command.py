"""``kdkit cache RECIPE --stage S``: every teacher's output grid for every sample of a stage, on disk.

Work is cut into shards of ``shard_size`` consecutive samples (in dataset order); under
``torchrun`` rank ``r`` of ``W`` writes shards ``r, r + W, ...``. A shard already published is
never computed again, so a killed run is finished by running the same command again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from kdkit.cache import CacheError
from kdkit.cache.fingerprint import sample_digests, teacher_fingerprint
from kdkit.cache.quantize import STORAGE
from kdkit.cache.source import meta_of
from kdkit.cache.store import TeacherStore
from kdkit.engine.capabilities import data_capabilities
from kdkit.interfaces import TeacherOutput
from kdkit.registry import Registry

#: Bytes of one stored value per storage dtype.
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1}
#: Bytes a shard stores per row besides the outputs: id, image digest, row check.
ROW_OVERHEAD = 8 + 16 + 8


def row_bytes(out: TeacherOutput, dtype: str) -> int:
    """Bytes one sample's outputs take in a shard stored as ``dtype`` (int8 adds its per-channel scales)."""
    total = ROW_OVERHEAD
    for tensor in (out.grid, out.prefix):
        if tensor is not None:
            values = tensor[0].numel()
            total += values * BYTES[dtype] + (tensor.shape[-1] * 4 if dtype == "int8" else 0)
    if out.logits is not None:
        total += out.logits[0].numel() * 4
    return total


def data_key(block: Any) -> str:
    """Short digest of a stage's data block: names the shards of that dataset."""
    text = json.dumps(block.config.model_dump(mode="json"), sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=5).hexdigest()


class _World:
    """Rank and size under ``torchrun`` (gloo process group for the final barrier), else one process."""

    def __init__(self) -> None:
        self.size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.joined = False
        if self.size > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("gloo")
            self.joined = True

    def barrier(self) -> None:
        if self.size > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.joined:
            torch.distributed.destroy_process_group()


def _samples(dataset: Any, positions: Sequence[int], batch_size: int, workers: int) -> Iterable[dict[str, Any]]:
    collate = data_capabilities(dataset).collate
    loader = DataLoader(dataset, batch_size=batch_size, sampler=list(positions), num_workers=workers, collate_fn=collate)
    yield from loader


def _concat(outputs: list[TeacherOutput]) -> TeacherOutput:
    return TeacherOutput(*(None if outputs[0][k] is None else torch.cat([o[k] for o in outputs]) for k in range(3)))


def cache_stage(recipe_path: str | Path, stage: str, output: str | Path | None = None, dtype: str = "fp32",
                overrides: Iterable[str] = (), shard_size: int = 256, batch_size: int = 16, estimate: bool = False,
                registry: Registry | None = None, echo: Any = print) -> dict[str, Any]:
    """Cache (or, with ``estimate``, size) every teacher's outputs for stage ``stage`` of a recipe.

    Args:
        recipe_path: The recipe file.
        stage: The stage whose data is cached.
        output: The cache directory (default: the recipe's ``runtime.teacher_cache``).
        dtype: Storage dtype: ``fp32``, ``bf16``, ``fp16`` or ``int8``.
        overrides: ``key=value`` recipe overrides.
        shard_size: Samples per shard.
        batch_size: Samples per teacher forward.
        estimate: Print the disk size per teacher and dtype, write nothing.
        registry: Plugins (default: every installed plugin).
        echo: Where lines of the summary go (rank 0 only).

    Returns:
        Per teacher: rows, bytes and reconstruction error (or, with ``estimate``, bytes per dtype).

    Raises:
        CacheError: an unknown stage, no output directory, a stale cache, random augmentation, disk full.
    """
    from kdkit.engine.build import base_context, build_student, build_teacher
    from kdkit.engine.distributed import pick_device
    from kdkit.engine.run import seed_everything
    from kdkit.recipe import load_recipe

    if dtype not in STORAGE:
        raise CacheError(f"unknown cache dtype {dtype!r} (known: {', '.join(STORAGE)})")
    if registry is None:
        from kdkit.plugins import get_registry

        registry = get_registry()
    recipe = load_recipe(recipe_path, overrides, registry=registry)
    if stage not in recipe.stages:
        raise CacheError(f"--stage {stage!r} is not a stage of {recipe.name} (stages: {', '.join(recipe.stages)})")
    world = _World()
    try:
        device = pick_device(recipe.runtime, world.local_rank)
        context = base_context(recipe, device)
        target = output if output is not None else recipe.runtime.teacher_cache
        if target is None and not estimate:
            raise CacheError("no cache directory: pass --output CACHE or set runtime.teacher_cache in the recipe")
        root = context.resolve(target) if target is not None else None
        seed_everything(recipe.runtime.seed)
        student, _ = build_student(recipe, registry, torch.device("cpu"))  # the data plugin reads its tokenizer and size
        data_context = dataclasses.replace(context, name=stage, extras={"student": student, "run_dir": root or Path(".")})
        block = recipe.stages[stage].data
        dataset = registry.build("data", block.config, data_context)
        if data_capabilities(dataset).augments:
            raise CacheError(f"stages.{stage}.data: the {block.kind!r} data augments its images at random; its teacher "
                             "outputs are not a function of the sample, so they are not cached (turn augmentation off)")
        teachers = {name: build_teacher(registry, name, b, context, device, recipe.runtime.seed)
                    for name, b in recipe.teachers.items()}
        if estimate:
            return _estimate(dataset, teachers, device, len(dataset), echo if world.rank == 0 else (lambda *_: None))
        fingerprints = {n: teacher_fingerprint(b.config.model_dump(mode="json"), context, None)
                        for n, b in recipe.teachers.items()}
        return _write(dataset, teachers, fingerprints, root, dtype, data_key(block), shard_size, batch_size,
                      recipe.runtime.num_workers, device, world, echo)
    finally:
        world.close()


def _first_output(dataset: Any, teachers: dict[str, Any], device: torch.device) -> dict[str, TeacherOutput]:
    batch = next(iter(_samples(dataset, [0], 1, 0)))
    with torch.no_grad():
        return {n: t(batch["images"].to(device)) for n, t in teachers.items()}


def _estimate(dataset: Any, teachers: dict[str, Any], device: torch.device, samples: int, echo: Any) -> dict[str, Any]:
    firsts = _first_output(dataset, teachers, device)
    table: dict[str, Any] = {}
    echo(f"estimate for {samples:,} samples (text-only samples are not stored: an upper bound)")
    echo(f"  {'teacher':<16} {'grid':<14}" + "".join(f" {d:>12}" for d in BYTES))
    for name, out in firsts.items():
        sizes = {d: row_bytes(out, d) for d in BYTES}
        table[name] = {"grid": list(out.grid.shape[1:]), "bytes_per_sample": sizes,
                       "bytes": {d: s * samples for d, s in sizes.items()}}
        echo(f"  {name:<16} {'x'.join(map(str, out.grid.shape[1:])):<14}"
             + "".join(f" {_human(s * samples):>12}" for s in sizes.values()))
    total = {d: sum(t["bytes"][d] for t in table.values()) for d in BYTES}
    echo(f"  {'total':<31}" + "".join(f" {_human(v):>12}" for v in total.values()))
    return {"samples": samples, "teachers": table, "total": total}


def _human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1000
    return f"{size:.1f} TB"


def _write(dataset: Any, teachers: dict[str, Any], fingerprints: dict[str, dict[str, str]], root: Path, dtype: str,
           key: str, shard_size: int, batch_size: int, workers: int, device: torch.device, world: _World,
           echo: Any) -> dict[str, Any]:
    firsts = _first_output(dataset, teachers, device)
    stores = {}
    for name, teacher in teachers.items():
        store = TeacherStore(root, meta_of(name, fingerprints[name], teacher, firsts[name], dtype))
        if world.rank == 0:
            store.create()  # refuses a stale cache before any shard is written
        stores[name] = store
    world.barrier()
    for store in stores.values():
        if world.rank != 0:
            store.create()
    shards = math.ceil(len(dataset) / shard_size)
    mine = [k for k in range(shards) if k % world.size == world.rank]
    written = skipped = 0
    for k in mine:
        name = f"{key}-{k:06d}"
        todo = [t for t, s in stores.items() if not s.has_shard(name)]
        if not todo:
            skipped += 1
            continue
        positions = range(k * shard_size, min(len(dataset), (k + 1) * shard_size))
        ids, digests, outs = [], [], {t: [] for t in todo}
        for batch in _samples(dataset, positions, batch_size, workers):
            images = batch["images"]
            keep = batch.get("has_image")
            if keep is not None:  # text-only samples get no teacher work and no entry
                images, batch_ids = images[keep.bool()], batch["ids"][keep.bool()]
            else:
                batch_ids = batch["ids"]
            if images.shape[0] == 0:
                continue
            ids.append(batch_ids.to(torch.int64))
            digests.append(sample_digests(images))
            with torch.no_grad():
                for t in todo:
                    out = teachers[t](images.to(device))
                    outs[t].append(TeacherOutput(*(x.detach().cpu() if x is not None else None for x in out)))
        all_ids = torch.cat(ids) if ids else torch.zeros(0, dtype=torch.int64)
        all_digests = np.concatenate(digests) if digests else np.zeros((0, 16), np.uint8)
        for t in todo:
            out = _concat(outs[t]) if outs[t] else _empty(firsts[t])
            stores[t].write_shard(name, all_ids, all_digests, out)
        written += 1
    world.barrier()
    summary: dict[str, Any] = {"shards": shards, "written": written, "skipped": skipped, "dtype": dtype, "teachers": {}}
    for name, store in stores.items():
        rows, size, errors = 0, 0, []
        for path in store.shards():
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata()
            rows += int(meta["rows"])
            errors.append(float(meta["error"]))
            size += path.stat().st_size
        error = max(errors, default=0.0)
        if world.rank == 0:
            store.meta.error = error
            store.write_meta()
        summary["teachers"][name] = {"rows": rows, "bytes": size, "bytes_per_row": size / max(1, rows),
                                     "relative_error": error}
    if world.rank == 0:
        echo(f"cache {root}: {shards} shards of {shard_size} samples ({written} written now by rank 0, "
             f"{skipped} already there), dtype {dtype}")
        for name, row in summary["teachers"].items():
            echo(f"  {name:<16} {row['rows']:>8,} samples  {_human(row['bytes']):>10}  "
                 f"relative error {row['relative_error']:.2e}")
    return summary


def _empty(first: TeacherOutput) -> TeacherOutput:
    return TeacherOutput(*(None if x is None else x.new_zeros((0, *x.shape[1:])).cpu() for x in first))

"""Teacher sources backed by a cache: ``cached`` (every output read by sample id) and ``hybrid``
(read what is cached, compute the rest with the teacher, optionally append it to the cache).

A teacher whose outputs are all read is never built: its grid shape comes from ``teacher.json``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from kdkit.cache import CacheError
from kdkit.cache.fingerprint import sample_digests, teacher_fingerprint
from kdkit.cache.store import TeacherMeta, TeacherStore
from kdkit.interfaces import BuildContext, GridSpec, TeacherOutput

Mode = Literal["cached", "hybrid"]


def meta_of(name: str, fingerprint: dict[str, str], teacher: nn.Module, sample: TeacherOutput, dtype: str) -> TeacherMeta:
    """A new ``teacher.json`` for ``teacher`` from one of its outputs (shapes and output dtype)."""
    grid = sample.grid
    return TeacherMeta(
        teacher=name, fingerprint=fingerprint, dtype=dtype, output_dtype=str(grid.dtype).removeprefix("torch."),
        grid=list(grid.shape[1:]), prefix=list(sample.prefix.shape[1:]) if sample.prefix is not None else None,
        logits=int(sample.logits.shape[-1]) if sample.logits is not None else None)


def _merge(found: TeacherOutput | None, found_rows: list[int], computed: TeacherOutput | None, missing: list[int],
           size: int, device: torch.device) -> TeacherOutput:
    """Cached rows and computed rows -> one output of ``size`` rows in batch order."""
    parts = [(p, r) for p, r in ((found, found_rows), (computed, missing)) if p is not None and r]
    if len(parts) == 1:
        out = parts[0][0]
        return TeacherOutput(*(t.to(device) if t is not None else None for t in out))
    fields: list[Tensor | None] = []
    for k in range(3):
        values = [(p[k], rows) for p, rows in parts]
        if any(v is None for v, _ in values):
            fields.append(None)
            continue
        first = values[0][0]
        full = torch.empty((size, *first.shape[1:]), dtype=first.dtype, device=device)
        for value, rows in values:
            full[torch.tensor(rows, device=device)] = value.to(device, first.dtype)
        fields.append(full)
    return TeacherOutput(*fields)


class CachedTeachers:
    """A :class:`~kdkit.interfaces.TeacherSource` reading a teacher cache.

    Args:
        stores: The open store of every cached teacher.
        builders: Build a teacher (frozen, on the device) by name, for the teachers computed online.
        mode: ``cached`` (a missing sample is an error) or ``hybrid`` (computed with the teacher).
        append: In hybrid mode, write what was computed as new shards (``shard_size`` rows each).
        root: The cache directory (for messages and appended shards).
        dtype: Storage dtype of a teacher cached for the first time by appending.
        fingerprints: Every teacher's live fingerprint (for a teacher cached for the first time).
        shard_size: Rows per appended shard.
    """

    def __init__(self, stores: Mapping[str, TeacherStore], builders: Mapping[str, Callable[[], nn.Module]], mode: Mode,
                 append: bool, root: Path, dtype: str, fingerprints: Mapping[str, dict[str, str]],
                 shard_size: int = 256) -> None:
        self.stores, self.builders, self.mode, self.append = dict(stores), dict(builders), mode, append
        self.root, self.dtype, self.fingerprints, self.shard_size = root, dtype, dict(fingerprints), shard_size
        self.teachers: dict[str, nn.Module] = {}
        for name in builders:  # teachers without any cache entry are needed at once
            if name not in self.stores:
                self.teachers[name] = builders[name]()
        self.pending: dict[str, list[tuple[Tensor, np.ndarray, TeacherOutput]]] = {}
        self.order = tuple(builders)

    @property
    def specs(self) -> dict[str, GridSpec]:
        """Each teacher's raw output grid: from ``teacher.json`` when cached, else from the loaded teacher."""
        specs = {}
        for name in self.order:
            if name in self.stores:
                meta = self.stores[name].meta
                specs[name] = GridSpec(*meta.grid, prefix_tokens=meta.prefix[0] if meta.prefix else 0)
            else:
                specs[name] = self.teachers[name].out_spec
        return specs

    def teacher(self, name: str) -> nn.Module:
        """The teacher ``name``, built on first use (hybrid mode, a sample missing from the cache)."""
        if name not in self.teachers:
            self.teachers[name] = self.builders[name]()
        return self.teachers[name]

    def outputs(self, images: Tensor, ids: Tensor | None) -> dict[str, TeacherOutput]:
        """``(B, 3, H, W)`` raw views and their ``(B,)`` sample ids -> every teacher's output.

        Raises:
            CacheError: no ids; in ``cached`` mode, samples without a valid entry (how many and the first ids).
        """
        if ids is None:
            raise CacheError("a teacher cache needs the batch's sample ids: the data plugin must yield 'ids'")
        id_list = [int(i) for i in ids.tolist()]
        digests = sample_digests(images)
        result: dict[str, TeacherOutput] = {}
        for name in self.order:
            store = self.stores.get(name)
            if store is None:
                out = self.teacher(name)(images)
                if self.append and self.mode == "hybrid":
                    self._remember(name, ids, digests, out, list(range(len(id_list))))
                result[name] = out
                continue
            places, found_rows, missing = [], [], []
            for row, (sample, digest) in enumerate(zip(id_list, digests, strict=True)):
                place = store.find(sample, digest.tobytes())
                if place is None:
                    missing.append(row)
                else:
                    places.append(place)
                    found_rows.append(row)
            if missing and self.mode == "cached":
                first = ", ".join(str(id_list[r]) for r in missing[:5])
                raise CacheError(
                    f"teacher {name!r}: {len(missing)} of this batch's {len(id_list)} samples have no entry for their "
                    f"image in the cache {self.root} (first ids: {first}); cache the stage with `kdkit cache RECIPE "
                    "--stage S`, or set runtime.teacher_cache_mode: hybrid to compute them")
            found = store.read(places, [id_list[r] for r in found_rows]) if places else None
            computed = None
            if missing:
                index = torch.tensor(missing, device=images.device)
                computed = self.teacher(name)(images[index])
                if self.append:
                    self._remember(name, ids, digests, computed, missing)
            result[name] = _merge(found, found_rows, computed, missing, len(id_list), images.device)
        return result

    def _remember(self, name: str, ids: Tensor, digests: np.ndarray, out: TeacherOutput, rows: list[int]) -> None:
        """Keep ``out`` (the outputs of batch rows ``rows``, one per row) to append; publish every ``shard_size``."""
        detached = TeacherOutput(*(t.detach().cpu() if t is not None else None for t in out))
        self.pending.setdefault(name, []).append((ids.detach().cpu()[torch.tensor(rows)], digests[rows], detached))
        if sum(len(p[0]) for p in self.pending[name]) >= self.shard_size:
            self._flush(name)

    def _flush(self, name: str) -> None:
        items = self.pending.pop(name, [])
        if not items:
            return
        ids = torch.cat([i for i, _, _ in items])
        digests = np.concatenate([d for _, d, _ in items])
        fields = [None if items[0][2][k] is None else torch.cat([o[k] for _, _, o in items]) for k in range(3)]
        out = TeacherOutput(*fields)
        store = self.stores.get(name)
        if store is None:
            store = TeacherStore(self.root, meta_of(name, self.fingerprints[name], self.teachers[name], out, self.dtype))
            store.create()
            self.stores[name] = store
        store.write_shard(f"append-{os.getpid()}-{uuid.uuid4().hex[:8]}", ids, digests, out)
        store.load_index()

    def flush(self) -> None:
        """Publish every appended row not yet written (end of a stage or run)."""
        for name in list(self.pending):
            self._flush(name)


def open_cache(root: Path, teachers: Mapping[str, Any], context: BuildContext,
               builders: Mapping[str, Callable[[], nn.Module]], mode: Mode, append: bool, dtype: str = "fp32") -> CachedTeachers:
    """Open the cache at ``root`` for the recipe's teacher blocks; a stale teacher cache is refused.

    Args:
        root: The cache directory.
        teachers: The recipe's teacher blocks by name (their ``config`` is fingerprinted).
        context: Resolves checkpoint paths.
        builders: Build each teacher (for hybrid mode and teachers without a cache).
        mode: ``cached`` or ``hybrid``.
        append: Hybrid mode appends what it computes.
        dtype: Storage dtype of appended shards of a teacher without a cache yet.

    Raises:
        CacheError: a teacher whose cache was written by another teacher (the field is named); in
            ``cached`` mode, a teacher without any cache.
    """
    root = Path(root)
    stores, fingerprints = {}, {}
    for name, block in teachers.items():
        live = teacher_fingerprint(block.config.model_dump(mode="json"), context, None)
        fingerprints[name] = live
        stored = TeacherStore.read_meta(root, name)
        if stored is None:
            if mode == "cached":
                raise CacheError(f"teacher {name!r} has no cache in {root}; cache it with `kdkit cache RECIPE --stage S "
                                 "--output CACHE`, or set runtime.teacher_cache_mode: hybrid")
            continue
        store = TeacherStore(root, TeacherMeta(name, live, stored.dtype))
        store.check(stored)
        store.meta = stored
        store.load_index()
        stores[name] = store
    return CachedTeachers(stores, builders, mode, append, root, dtype, fingerprints)

"""One teacher's cached outputs on disk: ``teacher.json`` and safetensors shards, each self-describing.

Layout of a cache directory::

    CACHE/<teacher>/teacher.json               fingerprint, storage dtype, output grid
    CACHE/<teacher>/<data>-<k>.safetensors     rows of shard k of one dataset (``kdkit cache``)
    CACHE/<teacher>/append-<...>.safetensors   rows a hybrid run computed and appended

A shard holds ``ids`` ``(N,)``, ``digests`` ``(N, 16)`` (each sample's image digest), ``grid``
``(N, H, W, C)`` in the storage dtype (+ ``grid_scale`` ``(N, C)`` for int8), optionally
``prefix`` / ``logits``, and ``checks`` ``(N, 8)``: a BLAKE2b of every stored row, verified on
each read, so a damaged row is named and never used. The index is the set of published shards
(read from their ``ids`` and ``digests`` at open): there is no shared file to update, so ranks
never contend and a kill cannot leave an index and its shards disagreeing. A shard is written
under a temporary name, synced, and renamed into place: it exists whole or not at all.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kdkit.cache import CacheError
from kdkit.cache.fingerprint import differing
from kdkit.cache.quantize import decode, encode
from kdkit.errors import storage_error
from kdkit.interfaces import TeacherOutput

FORMAT = "kdkit-teacher-cache/1"
#: Shards kept open (memory-mapped) at once per teacher; older ones are closed and reopened on demand.
OPEN_SHARDS = 128
META = "teacher.json"
DTYPE_NAMES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class TeacherMeta:
    """What ``teacher.json`` records.

    Attributes:
        teacher: The teacher's name in the recipe.
        fingerprint: Fields identifying the teacher's outputs (see :mod:`kdkit.cache.fingerprint`).
        dtype: Storage dtype (``fp32``, ``bf16``, ``fp16``, ``int8``).
        output_dtype: The teacher's own output dtype (reads are returned in it).
        grid: ``[H, W, C]`` of the output grid.
        prefix: ``[P, C]`` of the prefix tokens, or None.
        logits: Number of logits, or None.
        error: Largest relative reconstruction error of a shard (0 for fp32), updated as shards are written.
    """

    teacher: str
    fingerprint: dict[str, str]
    dtype: str
    output_dtype: str = "float32"
    grid: list[int] = field(default_factory=list)
    prefix: list[int] | None = None
    logits: int | None = None
    error: float = 0.0


def _checks(tensors: Mapping[str, Tensor], rows: int) -> np.ndarray:
    """``(rows, 8)`` uint8 BLAKE2b of each row's bytes over every stored tensor (sorted by name)."""
    if rows == 0:
        return np.zeros((0, 8), np.uint8)
    arrays = [tensors[k].contiguous().view(torch.uint8).reshape(rows, -1).numpy() for k in sorted(tensors)]
    return np.stack([np.frombuffer(hashlib.blake2b(b"".join(a[i].tobytes() for a in arrays), digest_size=8).digest(),
                                   dtype=np.uint8) for i in range(rows)]) if rows else np.zeros((0, 8), np.uint8)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class TeacherStore:
    """Read and write one teacher's shards under ``root / teacher``.

    Args:
        root: The cache directory.
        meta: The teacher's metadata (its fingerprint is checked against ``teacher.json``).
    """

    def __init__(self, root: Path, meta: TeacherMeta) -> None:
        self.root, self.meta = Path(root), meta
        self.dir = self.root / meta.teacher
        self.index: dict[int, list[tuple[Path, int, bytes]]] = {}
        self._files: OrderedDict[Path, Any] = OrderedDict()

    # metadata -------------------------------------------------------------------------------
    @staticmethod
    def read_meta(root: Path, teacher: str) -> TeacherMeta | None:
        """The stored ``teacher.json`` of ``teacher``, or None when the cache has none."""
        path = Path(root) / teacher / META
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.pop("format") != FORMAT:
                raise ValueError("another format")
            return TeacherMeta(**data)
        except (ValueError, TypeError, KeyError) as exc:
            raise CacheError(f"teacher cache {path} is corrupt ({exc}); delete {path.parent} and cache again") from None

    def check(self, stored: TeacherMeta) -> None:
        """Refuse a cache written for another teacher (the differing fields are named)."""
        fields = differing(stored.fingerprint, self.meta.fingerprint)
        if fields:
            shown = "; ".join(f"{k}: {stored.fingerprint.get(k, '(none)')} -> {self.meta.fingerprint.get(k, '(none)')}"
                              for k in fields[:5])
            raise CacheError(f"teacher {self.meta.teacher!r}: the cache at {self.dir} was written by another teacher "
                             f"({shown}); cache again into a new directory, or delete {self.dir}")

    def create(self) -> None:
        """Write ``teacher.json`` (or check the one there): the first step of caching."""
        stored = self.read_meta(self.root, self.meta.teacher)
        if stored is not None:
            self.check(stored)
            if stored.dtype != self.meta.dtype:
                raise CacheError(f"teacher {self.meta.teacher!r}: the cache at {self.dir} stores {stored.dtype}, not "
                                 f"{self.meta.dtype}; use --dtype {stored.dtype} or another directory")
            self.meta.error = stored.error
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self.write_meta()

    def write_meta(self) -> None:
        """Publish ``teacher.json`` atomically."""
        data = {"format": FORMAT, **self.meta.__dict__}
        self._publish(self.dir / META, lambda tmp: tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8"))

    # writing --------------------------------------------------------------------------------
    def _publish(self, final: Path, write: Any) -> None:
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        try:
            write(tmp)
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, final)
            _fsync_dir(final.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            error = storage_error("write teacher cache shard", final, exc)
            if exc.errno == errno.ENOSPC:
                raise CacheError(f"{error}; the shards already published are intact: free space and run "
                                 "`kdkit cache` again to finish") from None
            raise error from None

    def write_shard(self, name: str, ids: Tensor, digests: np.ndarray, outputs: TeacherOutput) -> float:
        """Publish one shard ``name`` (``ids`` ``(N,)``, ``digests`` ``(N, 16)``, outputs of N samples).

        Returns:
            The shard's relative reconstruction error of the grid (0 for fp32).
        """
        from safetensors.torch import save_file

        from kdkit.cache.quantize import relative_error

        rows = int(ids.shape[0])
        stored: dict[str, Tensor] = {}
        coded = encode(outputs.grid, self.meta.dtype)
        stored["grid"] = coded["values"]
        if "scale" in coded:
            stored["grid_scale"] = coded["scale"]
        if outputs.prefix is not None:
            coded = encode(outputs.prefix, self.meta.dtype)
            stored["prefix"] = coded["values"]
            if "scale" in coded:
                stored["prefix_scale"] = coded["scale"]
        if outputs.logits is not None:
            stored["logits"] = outputs.logits.detach().cpu().float().contiguous()
        tensors = {**stored, "ids": ids.detach().cpu().to(torch.int64).contiguous(),
                   "digests": torch.from_numpy(np.ascontiguousarray(digests)),
                   "checks": torch.from_numpy(_checks(stored, rows))}
        error = relative_error(outputs.grid, self.meta.dtype) if self.meta.dtype != "fp32" else 0.0
        metadata = {"format": FORMAT, "teacher": self.meta.teacher, "rows": str(rows), "error": repr(error)}
        self._publish(self.dir / f"{name}.safetensors", lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
        return error

    def has_shard(self, name: str) -> bool:
        """Whether shard ``name`` is published and readable (a damaged one is deleted, to be written again)."""
        path = self.dir / f"{name}.safetensors"
        if not path.is_file():
            return False
        try:
            self._open(path)
        except CacheError:
            path.unlink(missing_ok=True)
            return False
        return True

    # reading --------------------------------------------------------------------------------
    def shards(self) -> list[Path]:
        """Every published shard, sorted."""
        return sorted(self.dir.glob("*.safetensors")) if self.dir.is_dir() else []

    def _open(self, path: Path) -> Any:
        handle = self._files.get(path)
        if handle is not None:
            self._files.move_to_end(path)
        else:
            from safetensors import safe_open

            try:
                handle = safe_open(str(path), framework="pt")
                keys = set(handle.keys())
                if not {"ids", "digests", "grid", "checks"} <= keys or handle.metadata().get("format") != FORMAT:
                    raise ValueError("not a kdkit teacher-cache shard")
            except Exception as exc:  # safetensors raises its own types on a truncated header or body
                raise CacheError(f"teacher {self.meta.teacher!r}: shard {path} is truncated or corrupt ({exc}); "
                                 "delete it and run `kdkit cache` again (finished shards are kept)") from None
            self._files[path] = handle
            if len(self._files) > OPEN_SHARDS:  # a real cache has thousands of shards: keep file handles bounded
                self._files.popitem(last=False)
        return handle

    def load_index(self) -> int:
        """Read every shard's ``ids`` and ``digests``; returns the number of entries."""
        self.index = {}
        count = 0
        for path in self.shards():
            handle = self._open(path)
            ids = handle.get_tensor("ids").tolist()
            digests = handle.get_tensor("digests").numpy()
            for row, sample in enumerate(ids):
                self.index.setdefault(int(sample), []).append((path, row, digests[row].tobytes()))
            count += len(ids)
        return count

    def find(self, sample: int, digest: bytes) -> tuple[Path, int] | None:
        """Where the entry of ``sample`` with image ``digest`` is, or None."""
        for path, row, stored in self.index.get(sample, ()):
            if stored == digest:
                return path, row
        return None

    def read(self, places: Sequence[tuple[Path, int]], ids: Sequence[int]) -> TeacherOutput:
        """The outputs stored at ``places`` (one per sample), checked row by row, in the teacher's dtype."""
        dtype = DTYPE_NAMES.get(self.meta.output_dtype, torch.float32)
        parts: dict[str, list[Tensor]] = {}
        for (path, row), sample in zip(places, ids, strict=True):
            handle = self._open(path)
            names = [k for k in ("grid", "grid_scale", "prefix", "prefix_scale", "logits") if k in handle.keys()]
            rows = {k: handle.get_slice(k)[row:row + 1] for k in names}
            check = handle.get_slice("checks")[row:row + 1].numpy()
            if not np.array_equal(_checks(rows, 1), check):
                raise CacheError(f"teacher {self.meta.teacher!r}: shard {path} row {row} (sample id {sample}) is "
                                 "corrupt (its check does not match); delete the shard and run `kdkit cache` again")
            for key, value in rows.items():
                parts.setdefault(key, []).append(value)
        joined = {k: torch.cat(v) for k, v in parts.items()}
        grid = decode(joined["grid"], joined.get("grid_scale"), dtype)
        prefix = decode(joined["prefix"], joined.get("prefix_scale"), dtype) if "prefix" in joined else None
        return TeacherOutput(grid, prefix, joined.get("logits"))

"""Teacher-feature cache: each teacher's output grid stored once per sample, read back by sample id.

:mod:`~kdkit.cache.fingerprint` (what makes an entry valid), :mod:`~kdkit.cache.quantize` (storage
dtypes), :mod:`~kdkit.cache.store` (safetensors shards), :mod:`~kdkit.cache.source` (the cached and
hybrid teacher sources), :mod:`~kdkit.cache.command` (``kdkit cache``).
"""

from __future__ import annotations

from kdkit.errors import KdkitError


class CacheError(KdkitError):
    """A teacher cache is missing, stale, corrupt, or does not hold what a run needs."""


__all__ = ["CacheError"]

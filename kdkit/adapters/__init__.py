"""Generic adapter machinery: injection by name patterns, routing control, router logs, storage.

Nothing here knows a model or a teacher: adapter plugins (``lora``, ``mola``...) build on it.
"""

from __future__ import annotations

from kdkit.adapters.handle import Adapter, AdapterHandle
from kdkit.adapters.routing import NAMED_MODES, RouterLog, Routing, RoutingSpec, RoutingState, resolve
from kdkit.adapters.storage import load_adapter, read_adapter_config, save_adapter
from kdkit.adapters.targets import check_rank, child_linear, freeze, match_linears, match_modules, replace_module

__all__ = [
    "NAMED_MODES",
    "Adapter",
    "AdapterHandle",
    "RouterLog",
    "Routing",
    "RoutingSpec",
    "RoutingState",
    "check_rank",
    "child_linear",
    "freeze",
    "load_adapter",
    "match_linears",
    "match_modules",
    "read_adapter_config",
    "replace_module",
    "resolve",
    "save_adapter",
]

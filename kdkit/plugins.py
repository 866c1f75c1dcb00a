"""Discover and load plugins from the ``kdkit`` entry-point group.

Built-in plugins (``kdkit_plugins``) are found through the same entry points as third-party ones.
A plugin that fails to import is recorded as broken (with its error) and the others still load;
a plugin that implements a misspelt hook is an error at load time.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import os
import threading
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

import pluggy

from kdkit import hookspecs
from kdkit.errors import PluginError, closest
from kdkit.registry import Registry

ENTRY_POINT_GROUP = "kdkit"
DISABLE_ENV = "KDKIT_DISABLE_PLUGINS"


@dataclass(frozen=True)
class PluginInfo:
    """One plugin as loaded: its name, module, distribution and whether it imported."""

    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    error: str | None = None
    blocked: bool = False


@dataclass
class LoadedPlugins:
    """A plugin manager, what was loaded into it, and the registry of offered names."""

    manager: pluggy.PluginManager
    plugins: list[PluginInfo] = field(default_factory=list)
    registry: Registry = field(default_factory=lambda: Registry({}))


def _check_hook_names(name: str, module: object) -> None:
    """Reject a plugin that implements a hook kdkit does not define (a misspelling)."""
    known = set(hookspecs.HOOKS.values())
    marker = f"{hookspecs.PROJECT}_impl"
    for attr in dir(module):
        if attr.startswith("kdkit") and attr not in known and hasattr(getattr(module, attr), marker):
            hint = closest(attr, known)
            raise PluginError(
                f"plugin {name!r} implements unknown hook {attr!r}"
                + (f"; did you mean {hint!r}?" if hint else f" (hooks: {', '.join(sorted(known))})")
            )


def disabled_from_env() -> set[str]:
    """Plugin names listed (comma-separated) in ``KDKIT_DISABLE_PLUGINS``."""
    return {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}


#: Plugin names disabled by the command line's ``--disable`` (the CLI also exports them in
#: ``KDKIT_DISABLE_PLUGINS`` for child processes); only used to say which switch disabled a plugin.
DISABLED_BY_FLAG: set[str] = set()


def _offered_names(obj: object) -> list[tuple[str, str]]:
    """``(kind, name)`` pairs a plugin module offers, read from its hook functions without registering it."""
    marker = f"{hookspecs.PROJECT}_impl"
    found = []
    for kind, hook_name in hookspecs.HOOKS.items():
        function = getattr(obj, hook_name, None)
        if function is None or not hasattr(function, marker):
            continue
        try:
            offered = function()
        except Exception:  # a broken plugin that is disabled anyway: nothing to report
            continue
        found += [(kind, name) for name in (offered if isinstance(offered, dict) else {})]
    return found


def _disabled_offers(name: str, target: str, obj: object | None) -> dict[tuple[str, str], str]:
    """``{(kind, name): "plugin 'p' (disabled by --disable)"}`` for what disabled plugin ``name`` offers."""
    via = "--disable" if name in DISABLED_BY_FLAG else DISABLE_ENV
    if obj is None:
        try:
            obj = importlib.import_module(target)
        except Exception:
            return {}
    return {pair: f"plugin {name!r}, disabled by {via}" for pair in _offered_names(obj)}


def load_plugins(
    *,
    entry_points: bool = True,
    distributions: Collection[str] | None = None,
    blocked: Iterable[str] = (),
    extra: Iterable[tuple[str, object]] = (),
) -> LoadedPlugins:
    """Create a plugin manager and load plugins into it.

    Args:
        entry_points: Load every entry point of the ``kdkit`` group.
        distributions: When given, only entry points of these distributions are loaded (tests use
            ``{"kdkit"}`` so installed third-party packages cannot change their results).
        blocked: Plugin (entry-point) names to disable, added to ``KDKIT_DISABLE_PLUGINS``.
        extra: ``(name, module_or_object)`` plugins to register directly.

    Raises:
        PluginError: a misspelt hook, or a name offered by two plugins.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    blocked_names = set(blocked) | disabled_from_env()
    infos: list[PluginInfo] = []
    disabled: dict[tuple[str, str], str] = {}

    candidates: list[tuple[str, str, str | None, str | None, object | None]] = []
    if entry_points:
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist.metadata["Name"] if ep.dist is not None else None
            version = ep.dist.version if ep.dist is not None else None
            if distributions is not None and dist not in distributions:
                continue
            candidates.append((ep.name, ep.value, dist, version, None))
    candidates += [(name, getattr(obj, "__name__", repr(obj)), None, None, obj) for name, obj in extra]

    for name, target, dist, version, obj in candidates:
        if name in blocked_names:
            pm.set_blocked(name)
            infos.append(PluginInfo(name, target, dist, version, blocked=True))
            disabled.update(_disabled_offers(name, target, obj))
            continue
        if obj is None:
            try:
                obj = importlib.import_module(target)
            except Exception as exc:  # a plugin's own bug or missing dependency: record, carry on
                infos.append(PluginInfo(name, target, dist, version, error=f"{type(exc).__name__}: {exc}"))
                continue
        _check_hook_names(name, obj)
        if pm.get_plugin(name) is not None:
            other = next(i for i in infos if i.name == name)
            raise PluginError(
                f"two plugins are named {name!r}: {other.module} ({other.distribution}) and {target} ({dist})"
            )
        pm.register(obj, name=name)
        infos.append(PluginInfo(name, target, dist, version))
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(str(exc)) from exc

    by_name = {i.name: i for i in infos}
    offers = []
    for kind, hook_name in hookspecs.HOOKS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            info = by_name.get(impl.plugin_name)
            offered = impl.function()
            offers.append((kind, impl.plugin_name, offered, info.distribution if info else None, info.version if info else None))
    registry = Registry.collect(offers)
    registry.broken = {i.name: i.error for i in infos if i.error}
    registry.disabled = {pair: why for pair, why in disabled.items() if not registry.has(*pair)}
    return LoadedPlugins(pm, infos, registry)


_default: LoadedPlugins | None = None
_lock = threading.Lock()


def default_plugins(refresh: bool = False) -> LoadedPlugins:
    """The process-wide plugins (all entry points, minus ``KDKIT_DISABLE_PLUGINS``), loaded once."""
    global _default
    with _lock:
        if _default is None or refresh:
            _default = load_plugins()
        return _default


def check_disabled_names(names: Iterable[str]) -> None:
    """Refuse ``--disable`` names that no installed plugin has (a typo would disable nothing).

    Raises:
        PluginError: an unknown name, with the known plugin names and a "did you mean".
    """
    from kdkit.errors import unknown_name_message

    known = {ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    for name in names:
        if name not in known:
            raise PluginError("--disable: " + unknown_name_message("plugin", name, known))


def get_registry(refresh: bool = False) -> Registry:
    """The process-wide :class:`Registry`."""
    return default_plugins(refresh).registry

"""Factories and the registry that maps ``(kind, name)`` to the plugin that offers it."""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from kdkit.errors import PluginError, UnknownPluginError, unknown_name_message

if typing.TYPE_CHECKING:
    from kdkit.interfaces import BuildContext, Example


@dataclass(frozen=True)
class Factory:
    """How to configure and build one named plugin.

    Attributes:
        config: The pydantic config class (``extra="forbid"``, ``kind`` defaulting to the name).
        build: ``build(config, context) -> object``.
        example: ``example(tmp_dir) -> Example``: a tiny, self-contained build used by the
            contract kit (may write tiny checkpoints into ``tmp_dir``). None when the defaults
            and a tiny generic context are enough.
        requires: Modules ``build`` imports that kdkit does not require (an optional integration).
        extra: The kdkit extra that installs them (``pip install "kdkit[<extra>]"``).
        skeleton: ``skeleton(config, context) -> object``: the same object as ``build`` with every
            parameter on the meta device and no weight file read (configuration files only), so that
            ``kdkit validate`` can see its module and parameter names. Raises
            :class:`~kdkit.errors.FilesNotFound` when a file it needs is absent. None: not offered.
    """

    config: type[BaseModel]
    build: Callable[[Any, BuildContext], Any]
    example: Callable[[Path], Example] | None = None
    requires: tuple[str, ...] = ()
    extra: str | None = None
    skeleton: Callable[[Any, BuildContext], Any] | None = None

    @property
    def missing(self) -> tuple[str, ...]:
        """The modules of ``requires`` that are not installed."""
        import importlib.util

        return tuple(m for m in self.requires if importlib.util.find_spec(m) is None)

    @property
    def install_hint(self) -> str:
        """How to install what is missing: ``pip install "kdkit[<extra>]"`` (or the modules)."""
        return f'pip install "kdkit[{self.extra}]"' if self.extra else "pip install " + " ".join(self.missing)

    @property
    def summary(self) -> str:
        """First line of the config class docstring."""
        doc = (self.config.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


@dataclass(frozen=True)
class Entry:
    """A registered name: its factory and the plugin (and distribution) that offered it."""

    kind: str
    name: str
    factory: Factory
    plugin: str
    distribution: str | None = None
    version: str | None = None


def declared_kind(config: type[BaseModel]) -> str | None:
    """The default of a config class's ``kind`` field, or None when it has none."""
    field = config.model_fields.get("kind")
    if field is None or not isinstance(field.default, str):
        return None
    return field.default


def check_factory(kind: str, name: str, factory: object, plugin: str) -> None:
    """Raise :class:`PluginError` when ``factory`` breaks the factory contract."""
    where = f"plugin {plugin!r} offers {kind} {name!r}"
    if not isinstance(factory, Factory):
        raise PluginError(f"{where} as {type(factory).__name__}, expected kdkit.Factory")
    config = factory.config
    if not (isinstance(config, type) and issubclass(config, BaseModel)):
        raise PluginError(f"{where} with a config that is not a pydantic model: {config!r}")
    if config.model_config.get("extra") != "forbid":
        raise PluginError(f"{where}: its config {config.__name__} must set extra='forbid'")
    if declared_kind(config) != name:
        raise PluginError(
            f"{where}: its config {config.__name__}.kind defaults to "
            f"{declared_kind(config)!r}; it must default to {name!r}"
        )
    if not callable(factory.build):
        raise PluginError(f"{where} with a build that is not callable")


class Registry:
    """All registered names by kind, with the plugin that offered each.

    Args:
        entries: ``{kind: {name: Entry}}``.
        broken: ``{plugin name: error message}`` of plugins that failed to import.
    """

    def __init__(self, entries: Mapping[str, Mapping[str, Entry]], broken: Mapping[str, str] | None = None):
        self._entries = {kind: dict(names) for kind, names in entries.items()}
        self.broken: dict[str, str] = dict(broken or {})
        #: ``{(kind, name): "plugin 'p', disabled by --disable"}``: names only disabled plugins offer.
        self.disabled: dict[tuple[str, str], str] = {}

    @property
    def kinds(self) -> list[str]:
        """The plugin kinds, in hook order."""
        return list(self._entries)

    def names(self, kind: str) -> list[str]:
        """Sorted names registered for ``kind``."""
        return sorted(self._entries.get(kind, {}))

    def entries(self, kind: str | None = None) -> list[Entry]:
        """Every entry (of one kind, or of all kinds), sorted by kind then name."""
        kinds = [kind] if kind else self.kinds
        return [self._entries[k][n] for k in kinds for n in self.names(k)]

    def has(self, kind: str, name: str) -> bool:
        """Whether ``name`` is registered for ``kind``."""
        return name in self._entries.get(kind, {})

    def get(self, kind: str, name: str) -> Entry:
        """The entry for ``(kind, name)``; :class:`UnknownPluginError` lists the known names."""
        if kind not in self._entries:
            raise UnknownPluginError(unknown_name_message("plugin kind", kind, self._entries))
        try:
            return self._entries[kind][name]
        except KeyError:
            if (kind, name) in self.disabled:
                raise UnknownPluginError(f"{kind} {name!r} is offered only by a disabled plugin "
                                         f"({self.disabled[kind, name]}); enable it to use it") from None
            message = unknown_name_message(kind, name, self._entries[kind])
            if self.broken:
                message += "; plugins that failed to load: " + ", ".join(sorted(self.broken))
            raise UnknownPluginError(message) from None

    def factory(self, kind: str, name: str) -> Factory:
        """The factory for ``(kind, name)``."""
        return self.get(kind, name).factory

    def build(self, kind: str, config: BaseModel | Mapping[str, Any], context: BuildContext) -> Any:
        """Validate ``config`` (a block dict or a config model) and build it with ``context``."""
        name = config.kind if isinstance(config, BaseModel) else config.get("kind")  # type: ignore[attr-defined]
        if not isinstance(name, str):
            raise UnknownPluginError(f"{kind} block has no 'kind' (known: {', '.join(self.names(kind))})")
        factory = self.factory(kind, name)
        if factory.missing:
            raise PluginError(f"{kind} {name!r} needs {', '.join(factory.missing)}, which is not installed: "
                              f"{factory.install_hint}")
        if not isinstance(config, factory.config):
            data = config.model_dump() if isinstance(config, BaseModel) else dict(config)
            config = factory.config.model_validate(data)
        return factory.build(config, context)

    @staticmethod
    def collect(offers: Iterable[tuple[str, str, Mapping[str, object], str | None, str | None]]) -> Registry:
        """Build a registry from ``(kind, plugin, {name: factory}, distribution, version)`` offers.

        Raises:
            PluginError: a malformed factory, or a name offered by two plugins (both are named).
        """
        from kdkit.hookspecs import HOOKS

        entries: dict[str, dict[str, Entry]] = {kind: {} for kind in HOOKS}
        for kind, plugin, offered, dist, version in offers:
            if not isinstance(offered, Mapping):
                raise PluginError(f"plugin {plugin!r}: hook {HOOKS[kind]} must return a dict of name -> Factory")
            for name, factory in offered.items():
                check_factory(kind, name, factory, plugin)
                if name in entries[kind]:
                    first = entries[kind][name].plugin
                    raise PluginError(
                        f"{kind} {name!r} is offered by two plugins: {first!r} and {plugin!r}; "
                        f"disable one (KDKIT_DISABLE_PLUGINS={plugin}) or rename it"
                    )
                entries[kind][name] = Entry(kind, name, factory, plugin, dist, version)  # type: ignore[arg-type]
        return Registry(entries)

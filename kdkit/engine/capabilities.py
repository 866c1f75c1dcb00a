"""What the built plugins of a run can do, checked once against the optional-capability protocols of
:mod:`kdkit.interfaces` and kept: the engine asks this object, never a plugin's attribute names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kdkit.interfaces import (
    AnswersQuestions,
    Augments,
    ChecksActivations,
    Collates,
    Exports,
    GroupsBatches,
    PreservesRouters,
    ReplaysRoutes,
    ReportsRouters,
    Routable,
    RoutingControl,
    ShardsUnits,
    TeacherExperts,
)


@dataclass(frozen=True)
class Capabilities:
    """The student's and the adapters' optional capabilities.

    Attributes:
        shard_units: The student, when it names FSDP2 sharding units.
        checkpointing: The student, when it supports activation checkpointing.
        exports: The student, when it writes a stand-alone export.
        answers: The student, when it generates answers about images.
        routed: Adapters whose route is set per forward.
        experts: Adapters with at least one teacher expert (the forced passes go through them).
        replay: Adapters whose route is replayed on recomputation.
        routers: Adapters that report router outputs and usage.
        preserves: Adapters whose router log is restored after an evaluation.
        routable: Adapters whose route can be set for good (``routed`` at inference).
    """

    shard_units: ShardsUnits | None = None
    checkpointing: ChecksActivations | None = None
    exports: Exports | None = None
    answers: AnswersQuestions | None = None
    routed: tuple[RoutingControl, ...] = ()
    experts: tuple[TeacherExperts, ...] = ()
    replay: tuple[ReplaysRoutes, ...] = ()
    routers: tuple[ReportsRouters, ...] = ()
    preserves: tuple[PreservesRouters, ...] = ()
    routable: tuple[Routable, ...] = ()


def _as(obj: Any, protocol: type) -> Any:
    return obj if isinstance(obj, protocol) else None


def adapter_capabilities(adapters: Sequence[Any]) -> dict[str, tuple[Any, ...]]:
    """The adapter fields of :class:`Capabilities` for ``adapters`` (in order)."""
    return {
        "routed": tuple(h for h in adapters if isinstance(h, RoutingControl)),
        "experts": tuple(h for h in adapters if isinstance(h, TeacherExperts) and h.teacher_names),
        "replay": tuple(h for h in adapters if isinstance(h, ReplaysRoutes)),
        "routers": tuple(h for h in adapters if isinstance(h, ReportsRouters)),
        "preserves": tuple(h for h in adapters if isinstance(h, PreservesRouters)),
        "routable": tuple(h for h in adapters if isinstance(h, Routable)),
    }


def capabilities_of(student: Any, adapters: Mapping[str, Any] | Sequence[Any] = ()) -> Capabilities:
    """Check ``student`` and ``adapters`` against every optional-capability protocol, once."""
    handles = list(adapters.values()) if isinstance(adapters, Mapping) else list(adapters)
    return Capabilities(
        shard_units=_as(student, ShardsUnits), checkpointing=_as(student, ChecksActivations),
        exports=_as(student, Exports), answers=_as(student, AnswersQuestions), **adapter_capabilities(handles),
    )


@dataclass(frozen=True)
class DataCapabilities:
    """A dataset's optional capabilities.

    Attributes:
        collate: Its batch collation, or None (PyTorch's default collation).
        group_order: Its per-epoch batch grouping, or None.
        augments: Whether its samples change between readings (random augmentation).
    """

    collate: Callable[[Sequence[Any]], Any] | None = None
    group_order: Callable[[list[int], int, int], list[int]] | None = None
    augments: bool = False


def data_capabilities(dataset: Any) -> DataCapabilities:
    """Check a dataset against :class:`~kdkit.interfaces.Collates`, :class:`~kdkit.interfaces.GroupsBatches`
    and :class:`~kdkit.interfaces.Augments`, once."""
    return DataCapabilities(
        collate=dataset.collate if isinstance(dataset, Collates) else None,
        group_order=dataset.group_order if isinstance(dataset, GroupsBatches) else None,
        augments=bool(dataset.augments) if isinstance(dataset, Augments) else False,
    )

"""What the engine gets back from an adapter's ``build``: the :class:`Adapter` protocol, and
:class:`AdapterHandle`, a ready implementation adapter plugins may return."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import nn

from kdkit.adapters.routing import Routing, RouterLog, RoutingSpec, RoutingState
from kdkit.adapters.storage import load_adapter, save_adapter
from kdkit.adapters.targets import replace_module, unwrap
from kdkit.errors import KdkitError

if TYPE_CHECKING:
    from pydantic import BaseModel

    from kdkit.interfaces import RouterOutput


@runtime_checkable
class Adapter(Protocol):
    """An adapter injected in place into a model.

    Attributes:
        model: The module the adapter was injected into.
        modules: The injected modules by name (relative to ``model``).
        teacher_names: Names of the teacher experts (empty for a plain adapter).
        mergeable: Whether :meth:`merge` can fold the adapter into the base weights.
    """

    model: nn.Module
    modules: dict[str, nn.Module]
    teacher_names: tuple[str, ...]
    mergeable: bool

    def parameter_groups(self) -> dict[str, dict[str, nn.Parameter]]:
        """``{"adapters": {name: param}, "routers": {...}}`` with names relative to ``model``."""
        ...

    def routing(self, spec: RoutingSpec) -> contextlib.AbstractContextManager[Routing]:
        """Context manager: forwards inside it follow ``spec``."""
        ...

    def router_outputs(self) -> list[RouterOutput]:
        """Router outputs of the last routed forward, one per block and group."""
        ...

    def save(self, path: str | Path) -> Path:
        """Write the adapter's own weights and config to the directory ``path``."""
        ...

    def load(self, path: str | Path) -> None:
        """Load weights written by :meth:`save`; raises on another teacher set or shape."""
        ...


class AdapterHandle:
    """A ready :class:`Adapter` over injected modules that each expose ``parameter_groups()``.

    Args:
        model: The module the adapter was injected into.
        modules: Injected modules by name relative to ``model``; each has
            ``parameter_groups() -> {group: {local name: Parameter}}`` and, when mergeable,
            ``merge()`` / ``unmerge()``.
        config: The plugin config the adapter was built from.
        teacher_names: Teacher experts, in order (empty for a plain adapter).
        state: The routing state the modules read.
        log: The router log the modules write, or None when the adapter has no routers.
        mergeable: Whether the adapter can be folded into the base weights.
    """

    def __init__(
        self,
        model: nn.Module,
        modules: Mapping[str, nn.Module],
        config: BaseModel,
        *,
        teacher_names: Sequence[str] = (),
        state: RoutingState | None = None,
        log: RouterLog | None = None,
        mergeable: bool = False,
    ) -> None:
        self.model = model
        self.modules = dict(modules)
        self.config = config
        self.teacher_names = tuple(teacher_names)
        self.state = state or RoutingState(self.teacher_names, ("routed", "off"))
        self.log = log
        self.mergeable = mergeable

    # parameters -----------------------------------------------------------------------------
    def parameter_groups(self) -> dict[str, dict[str, nn.Parameter]]:
        """``{group: {name relative to model: parameter}}`` (groups ``adapters``, ``routers``)."""
        groups: dict[str, dict[str, nn.Parameter]] = {"adapters": {}, "routers": {}}
        for prefix, module in self.modules.items():
            for group, params in module.parameter_groups().items():
                groups.setdefault(group, {}).update({f"{prefix}.{n}": p for n, p in params.items()})
        return groups

    def parameters(self, group: str | None = None) -> list[nn.Parameter]:
        """The parameters of one group, or of every group."""
        groups = self.parameter_groups()
        if group is not None and group not in groups:
            raise KdkitError(f"unknown parameter group {group!r} (known: {', '.join(groups)})")
        return [p for g, params in groups.items() if group in (None, g) for p in params.values()]

    def set_trainable(self, group: str, trainable: bool = True) -> None:
        """Switch ``requires_grad`` of one parameter group."""
        for param in self.parameters(group):
            param.requires_grad_(trainable)

    # routing --------------------------------------------------------------------------------
    def routing(self, spec: RoutingSpec) -> contextlib.AbstractContextManager[Routing]:
        """Context manager: forwards inside follow ``spec`` (see :func:`kdkit.adapters.resolve`)."""
        return self.state.use(spec)

    def set_routing(self, spec: RoutingSpec) -> None:
        """Follow ``spec`` from now on."""
        self.state.set(spec)

    def preserved_routers(self) -> contextlib.AbstractContextManager[None]:
        """Inside: forwards may route freely; after: the router log (last outputs, usage) is as before."""
        return self.log.preserved() if self.log is not None else contextlib.nullcontext()

    def checkpoint_context(self) -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
        """``context_fn`` for non-reentrant activation checkpointing (replays the route)."""
        return self.state.checkpoint_context()

    def forced_index(self, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
        """``(N_t * B,)`` teacher-major expert index for ``images.repeat(N_t, 1, 1, 1)``.

        Sample ``k * B + b`` is image ``b`` forced through teacher expert ``k``.
        """
        if not self.teacher_names:
            raise KdkitError("this adapter has no teacher experts to force")
        experts = torch.arange(len(self.teacher_names), device=device)
        return experts.repeat_interleave(batch_size)

    def router_outputs(self) -> list[RouterOutput]:
        """Router outputs of the last routed forward, block by block (empty without routers)."""
        return self.log.outputs() if self.log is not None else []

    def usage(self, reset: bool = False) -> dict[str, dict[str, torch.Tensor]]:
        """``{block: {group: (E,) token counts per expert}}`` since the last reset."""
        return self.log.usage(reset) if self.log is not None else {}

    # merging --------------------------------------------------------------------------------
    def merge(self) -> None:
        """Fold the adapter into the base weights (mergeable adapters only)."""
        self._require_mergeable("merge")
        for module in self.modules.values():
            module.merge()

    def unmerge(self) -> None:
        """Undo :meth:`merge`."""
        self._require_mergeable("unmerge")
        for module in self.modules.values():
            module.unmerge()

    def _require_mergeable(self, action: str) -> None:
        if not self.mergeable:
            raise KdkitError(
                f"cannot {action} a {self.config.kind!r} adapter: its experts are chosen per token from "
                "the input, so no single weight matrix equals it; keep it (and its routers) at inference"
            )

    def eject(self) -> None:
        """Remove the adapter: every injected module is replaced by the original it wrapped.

        The originals keep their current base weights (a merged plain LoRA stays merged; MoLA's
        experts and routers are dropped). The handle holds no module afterwards.

        Raises:
            KdkitError: the adapter was already ejected.
        """
        if not self.modules:
            raise KdkitError(f"this {self.config.kind!r} adapter holds no injected module (already ejected?)")
        for name, module in self.modules.items():
            replace_module(self.model, name, unwrap(module))
        self.modules = {}

    # persistence ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The adapter's own tensors (every group), by name relative to ``model``."""
        return {n: p for params in self.parameter_groups().values() for n, p in params.items()}

    def save(self, path: str | Path) -> Path:
        """Write the adapter's weights (safetensors) and config (JSON) into the directory ``path``."""
        config: dict[str, Any] = self.config.model_dump(mode="json")
        return save_adapter(path, self.state_dict(), kind=self.config.kind, config=config, teacher_names=self.teacher_names)

    def load(self, path: str | Path) -> None:
        """Load weights written by :meth:`save` in place.

        Raises:
            CheckpointError: another adapter kind, teacher set, target set or shape.
        """
        live = self.state_dict()
        tensors = load_adapter(path, live, kind=self.config.kind, teacher_names=self.teacher_names)
        with torch.no_grad():
            for name, tensor in tensors.items():
                live[name].copy_(tensor)

    def __repr__(self) -> str:
        counts = {g: sum(p.numel() for p in ps.values()) for g, ps in self.parameter_groups().items()}
        return f"{type(self).__name__}({self.config.kind}, {len(self.modules)} modules, parameters {counts})"

"""Routing control shared by an adapter's blocks, and the log of what their routers decided.

A :class:`RoutingState` is one small Python object every routed block of an injection reads at
forward time, so the route changes per forward without rebuilding anything. A
:class:`RouterLog` keeps the router outputs of the last routed forward of each block (for the
load-balance loss) and running expert-usage counts (for statistics).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

import torch

from kdkit.errors import KdkitError
from kdkit.interfaces import RouterOutput

if TYPE_CHECKING:
    from torch import Tensor

#: Named routing modes: both groups, no adapter at all, the general group only.
NAMED_MODES = ("routed", "off", "general_only")

#: What :meth:`RoutingState.use` accepts: a mode name, a teacher name, a teacher index, or a
#: ``(B,)`` integer tensor of per-sample teacher-expert indices.
RoutingSpec = Union[str, int, "Tensor"]


@dataclass(frozen=True)
class Routing:
    """One resolved route.

    Attributes:
        mode: ``"routed"``, ``"off"``, ``"general_only"``, ``"teacher"`` (one expert everywhere)
            or ``"index"`` (one teacher expert per sample).
        expert: The forced teacher expert's index (mode ``"teacher"``).
        index: ``(B,)`` long tensor of teacher-expert indices, one per sample (mode ``"index"``).
    """

    mode: str = "routed"
    expert: int | None = None
    index: Tensor | None = None


def resolve(spec: RoutingSpec | Routing, teacher_names: Sequence[str], modes: Sequence[str]) -> Routing:
    """Turn a user's routing spec into a :class:`Routing`, or raise a clear error.

    Args:
        spec: A mode name, a teacher name, a teacher index, or a ``(B,)`` integer tensor.
        teacher_names: Names of the teacher experts, in order.
        modes: The named modes the adapter supports (a subset of :data:`NAMED_MODES`).

    Raises:
        KdkitError: an unknown name, an index out of range, a tensor of the wrong shape or dtype.
    """
    if isinstance(spec, Routing):
        return spec
    n_teachers = len(teacher_names)
    if isinstance(spec, str):
        if spec in modes:
            return Routing(spec)
        if spec in teacher_names:
            return Routing("teacher", expert=list(teacher_names).index(spec))
        known = list(modes) + [f"teacher {t!r}" for t in teacher_names]
        raise KdkitError(f"unknown routing {spec!r}; use one of: {', '.join(known)}")
    if isinstance(spec, torch.Tensor):
        if spec.ndim != 1 or spec.dtype not in (torch.int32, torch.int64):
            raise KdkitError(
                f"a per-sample expert index must be a (B,) integer tensor, got {spec.dtype} {tuple(spec.shape)}"
            )
        if n_teachers == 0:
            raise KdkitError("a per-sample expert index needs teacher experts, and this adapter has none")
        # one host sync per routing change (not per forward) buys a clear error instead of a crash
        if spec.numel() and (int(spec.min()) < 0 or int(spec.max()) >= n_teachers):
            raise KdkitError(
                f"per-sample expert index has values in [{int(spec.min())}, {int(spec.max())}]; "
                f"valid teacher experts are 0..{n_teachers - 1} ({', '.join(teacher_names)})"
            )
        return Routing("index", index=spec.long())
    if isinstance(spec, int) and not isinstance(spec, bool):
        if not 0 <= spec < n_teachers:
            raise KdkitError(
                f"teacher expert {spec} is out of range: this adapter has {n_teachers} teacher experts"
                + (f" ({', '.join(teacher_names)})" if teacher_names else "")
            )
        return Routing("teacher", expert=spec)
    raise KdkitError(f"routing must be a mode name, teacher name, int or (B,) tensor, got {type(spec).__name__}")


class RoutingState:
    """The route every block of one injection follows, and whether a forward is being replayed.

    Args:
        teacher_names: Names of the teacher experts, in order.
        modes: Named modes the adapter supports.
    """

    def __init__(self, teacher_names: Sequence[str], modes: Sequence[str] = NAMED_MODES) -> None:
        self.teacher_names = tuple(teacher_names)
        self.modes = tuple(modes)
        self.current = Routing("routed")
        #: True while activation checkpointing recomputes a forward (nothing is logged twice).
        self.replaying = False

    def set(self, spec: RoutingSpec | Routing) -> None:
        """Switch the route until the next call."""
        self.current = resolve(spec, self.teacher_names, self.modes)

    @contextlib.contextmanager
    def use(self, spec: RoutingSpec | Routing) -> Iterator[Routing]:
        """Context manager: follow ``spec`` inside the block, restore the previous route after."""
        previous = self.current
        self.current = resolve(spec, self.teacher_names, self.modes)
        try:
            yield self.current
        finally:
            self.current = previous

    @contextlib.contextmanager
    def _replay(self, routing: Routing) -> Iterator[None]:
        previous, was_replaying = self.current, self.replaying
        self.current, self.replaying = routing, True
        try:
            yield
        finally:
            self.current, self.replaying = previous, was_replaying

    def checkpoint_context(self) -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
        """``context_fn`` for :func:`torch.utils.checkpoint.checkpoint` (``use_reentrant=False``).

        Activation checkpointing recomputes a forward during backward, when another route may
        be active (the forced passes run after the routed one). This snapshots the route at
        forward time and replays it during recomputation.
        """
        return contextlib.nullcontext(), self._replay(self.current)


class RouterLog:
    """Router outputs of the last routed forward of each block, and running usage counts."""

    def __init__(self) -> None:
        self._last: dict[str, dict[str, RouterOutput]] = {}
        self._counts: dict[str, dict[str, Tensor]] = {}

    def record(self, block: str, outputs: dict[str, tuple[Tensor, Tensor]], *, count: bool = True) -> None:
        """Replace ``block``'s outputs with ``{group: ((N, E) probs, (N,) choice)}``.

        Args:
            block: Name of the routed block.
            outputs: Probabilities and top-1 choices per expert group.
            count: Add the choices to the usage counts (False while a forward is replayed).
        """
        self._last[block] = {g: RouterOutput(block, g, p, c) for g, (p, c) in outputs.items()}
        if not count:
            return
        counts = self._counts.setdefault(block, {})
        for group, (probs, choice) in outputs.items():
            experts = torch.arange(probs.shape[-1], device=choice.device)
            # a comparison, not bincount: bincount needs the max on the host (a device sync)
            used = (choice.detach().unsqueeze(-1) == experts).sum(0)
            counts[group] = counts[group] + used if group in counts else used

    def outputs(self) -> list[RouterOutput]:
        """Every router's last output, block by block in forward order."""
        return [out for group in self._last.values() for out in group.values()]

    def usage(self, reset: bool = False) -> dict[str, dict[str, Tensor]]:
        """``{block: {group: (E,) tokens routed to each expert}}`` since the last reset."""
        counts = {b: dict(g) for b, g in self._counts.items()}
        if reset:
            self._counts = {}
        return counts

    def clear(self) -> None:
        """Forget the last outputs (not the counts)."""
        self._last = {}

    @contextlib.contextmanager
    def preserved(self) -> Iterator[None]:
        """Inside: forwards are logged into a scratch log; after: the last outputs and the usage counts
        are those of before (an evaluation between training steps leaves training's statistics alone)."""
        last, counts = self._last, self._counts
        self._last, self._counts = {}, {}
        try:
            yield
        finally:
            self._last, self._counts = last, counts

    def __deepcopy__(self, memo: dict) -> RouterLog:
        # router outputs are transient (and hold autograd graphs, which cannot be deep-copied):
        # a copied model starts with an empty log
        return RouterLog()

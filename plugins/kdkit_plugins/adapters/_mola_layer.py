"""MoLA layers: stacked low-rank experts, applied to each token's chosen experts only (tokens
grouped by expert) or densely under a gate mask, and the block wrapper that routes each token
once for all of its adapted Linears."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.nn import functional as F

from kdkit.adapters import RouterLog, RoutingState
from kdkit.errors import KdkitError
from kdkit_plugins.adapters._router import Router, gate, top1


@dataclass
class Grouping:
    """The tokens of one block forward sorted by their chosen experts, shared by the block's Linears.

    Tokens are sorted by their combination of choices (teacher expert, then general expert), so
    every expert's tokens are contiguous runs of the sorted rows: one run per teacher expert,
    one per (teacher, general) pair for the general experts.

    Attributes:
        order: ``(N,)`` token indices in sorted order.
        segments: Per router group, ``(expert, first row, rows)`` runs of the sorted rows; each
            group's runs cover every row once (``expert`` relative to the route's ``start``).
        weights: Per router group, ``(N,)`` gate value of each sorted row's expert (scaling folded
            in; carries the router gradient under ``gate: prob``).
    """

    order: Tensor
    segments: list[list[tuple[int, int, int]]]
    weights: list[Tensor]


@dataclass
class Route:
    """What one block forward asks its experts to do (exactly one of gates, grouping, expert, index is set).

    Attributes:
        gates: ``(N, e)`` per-token gates (scaling folded in) over experts ``start:stop``.
        start: First expert the gates or the grouping cover.
        grouping: Tokens grouped by their chosen expert (only the chosen experts run).
        expert: One expert for every token.
        index: ``(B,)`` one expert per sample.
    """

    gates: Tensor | None = None
    start: int = 0
    grouping: Grouping | None = None
    expert: int | None = None
    index: Tensor | None = None


class LowRankExperts(nn.Module):
    """E rank-r experts ``(..., in) -> (..., out)`` stored stacked: ``lora_A`` ``(E, r, in)``,
    ``lora_B`` ``(E, r, out)`` (zero: an exact identity at init).

    A grouped route runs each expert on its own tokens only (compute proportional to the chosen
    experts; one host sync per block for the group sizes). A dense route runs all experts a gate
    covers as two GEMMs of width ``E * r``, the gate a mask on the ``(N, E, r)`` intermediate:
    shapes are fixed and nothing waits on the host.
    """

    def __init__(self, experts: int, rank: int, in_features: int, out_features: int, scaling: float,
                 dropout: float = 0.0, device: torch.device | None = None) -> None:
        super().__init__()
        self.scaling = scaling
        self.lora_A = nn.Parameter(torch.empty(experts, rank, in_features, device=device))
        self.lora_B = nn.Parameter(torch.zeros(experts, rank, out_features, device=device))
        for a in self.lora_A:  # per expert, as nn.Linear would initialise an (r, in) weight
            nn.init.kaiming_uniform_(a, a=5**0.5)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def add(self, out: Tensor, x: Tensor, route: Route) -> Tensor:
        """``out`` ``(..., out)`` plus the routed experts applied to ``x`` ``(..., in)``.

        The experts are added into ``out`` in place (one fused GEMM, no copy of the wide output):
        ``out`` is the fresh result of the base Linear, which autograd does not keep.
        """
        x = self.dropout(x)
        if route.index is not None:
            return self._per_sample(out, x, route.index)
        rows, outs = rearrange(x, "... i -> (...) i"), out.view(-1, out.shape[-1])  # view: writes reach out
        if route.grouping is not None:
            return self._grouped(out, outs, rows, route.grouping, route.start)
        if route.expert is not None:
            z = F.linear(rows, self.lora_A[route.expert].to(x.dtype))
            outs.addmm_(z.to(out.dtype), self.lora_B[route.expert].to(out.dtype), alpha=self.scaling)
            return out
        gates = route.gates
        assert gates is not None
        a, b = self.lora_A, self.lora_B
        if gates.shape[-1] != a.shape[0]:  # a group only (a full slice would still cost a backward copy)
            a, b = a[route.start : route.start + gates.shape[-1]], b[route.start : route.start + gates.shape[-1]]
        z = rearrange(F.linear(rows, rearrange(a, "e r i -> (e r) i").to(x.dtype)), "n (e r) -> n e r", e=gates.shape[-1])
        z = rearrange(z * gates.to(z.dtype).unsqueeze(-1), "n e r -> n (e r)")
        outs.addmm_(z.to(out.dtype), rearrange(b, "e r o -> (e r) o").to(out.dtype))
        return out

    def _grouped(self, out: Tensor, outs: Tensor, rows: Tensor, grouping: Grouping, start: int) -> Tensor:
        """``outs`` ``(N, out)`` (a view of ``out``) plus each token's chosen experts on ``rows`` ``(N, in)``.

        One gather of the rows in sorted order, two GEMMs per run, one scatter-add back:
        ``2 r (in + out)`` multiply-adds per token and router group, as a single LoRA costs.
        """
        sorted_rows = rows.index_select(0, grouping.order)
        track = torch.is_grad_enabled() and (
            rows.requires_grad or self.lora_A.requires_grad or any(w.requires_grad for w in grouping.weights))
        # without autograd every run writes or adds straight into one buffer (no per-run tensors, no cat)
        delta = None if track else outs.new_empty(outs.shape)
        total: Tensor | None = None
        for g, (segments, weights) in enumerate(zip(grouping.segments, grouping.weights, strict=True)):
            pieces = []
            for expert, first, count in segments:
                z = F.linear(sorted_rows[first : first + count], self.lora_A[start + expert].to(rows.dtype))
                z = (z * weights[first : first + count].to(z.dtype).unsqueeze(-1)).to(out.dtype)
                b = self.lora_B[start + expert].to(out.dtype)
                if delta is None:
                    pieces.append(torch.mm(z, b))
                elif g == 0:  # the first group's runs cover every row: they initialise the buffer
                    torch.mm(z, b, out=delta[first : first + count])
                else:
                    delta[first : first + count].addmm_(z, b)
            if delta is None:
                total = torch.cat(pieces) if total is None else total + torch.cat(pieces)
        outs.index_add_(0, grouping.order, delta if delta is not None else total)
        return out

    def _per_sample(self, out: Tensor, x: Tensor, index: Tensor) -> Tensor:
        """Sample ``k`` of ``x`` ``(B, ..., in)`` through expert ``index[k]`` only."""
        batch = index.shape[0]
        if x.shape[0] != batch:
            raise KdkitError(
                f"per-sample expert index has {batch} entries but the adapted layer sees a batch of "
                f"{x.shape[0]} (tokens must be batch-first)"
            )
        a = self.lora_A.index_select(0, index).to(x.dtype)  # (B, r, in)
        b = self.lora_B.index_select(0, index).to(out.dtype)  # (B, r, out)
        z = torch.bmm(rearrange(x, "b ... i -> b (...) i"), a.transpose(1, 2))
        out.view(batch, -1, out.shape[-1]).baddbmm_(z.to(out.dtype), b, alpha=self.scaling)
        return out

    def extra_repr(self) -> str:
        e, r, i = self.lora_A.shape
        return f"experts={e}, rank={r}, in={i}, out={self.lora_B.shape[-1]}, scaling={self.scaling:g}"


class MolaLinear(LowRankExperts):
    """A frozen Linear (``base_layer``) plus experts that follow its block's route."""

    def __init__(self, base_layer: nn.Linear, block: MolaBlock, experts: int, rank: int, scaling: float, dropout: float) -> None:
        super().__init__(experts, rank, base_layer.in_features, base_layer.out_features, scaling, dropout, base_layer.weight.device)
        self.base_layer = base_layer
        self._block = [block]  # a list: the block must not become a child module (a cycle)

    def forward(self, x: Tensor) -> Tensor:
        out = self.base_layer(x)
        route = self._block[0].route
        return out if route is None else self.add(out, x, route)


class MolaBlock(nn.Module):
    """Wraps an FFN block: routes each token once per forward, for every adapted Linear inside.

    Args:
        base_layer: The original block (its adapted Linears already replaced by :class:`MolaLinear`).
        name: The block's name (for router outputs and errors).
        dim: Width of the block's input tokens.
        teacher_experts: Number of teacher-specific experts (N_t).
        general_experts: Number of general experts (N_g).
        router_hidden: Hidden width of each router.
        gate_mode: ``straight_through``, ``prob`` or ``soft``.
        scaling: alpha / rank, folded into the gates.
        compute: ``grouped`` (only the chosen experts run, wherever that is exact) or ``dense``.
        state: Routing state shared by the injection.
        log: Router log shared by the injection.
    """

    def __init__(self, base_layer: nn.Module, name: str, dim: int, teacher_experts: int, general_experts: int,
                 router_hidden: int, gate_mode: str, scaling: float, state: RoutingState, log: RouterLog,
                 compute: str = "grouped") -> None:
        super().__init__()
        device = next(base_layer.parameters()).device
        self.base_layer = base_layer
        self.name, self.n_teacher, self.gate_mode, self.scaling = name, teacher_experts, gate_mode, scaling
        self.compute = compute
        self.router_teacher = Router(dim, router_hidden, teacher_experts, device) if teacher_experts else None
        self.router_general = Router(dim, router_hidden, general_experts, device) if general_experts else None
        self.experts: LowRankExperts | None = None  # set for the parallel placement
        self.state, self.log = state, log
        self.route: Route | None = None

    def forward(self, hidden: Tensor, *args: object, **kwargs: object) -> Tensor:
        self.route = self._route(hidden)
        try:
            out = self.base_layer(hidden, *args, **kwargs)
            if self.experts is not None and self.route is not None:
                # a block's output may be saved by autograd (unlike a Linear's): add out of place
                out = self.experts.add(out.clone(memory_format=torch.contiguous_format), hidden, self.route)
        finally:
            self.route = None
        return out

    def _route(self, hidden: Tensor) -> Route | None:
        """The route of this forward; runs the routers when the mode needs them, and logs them unless replaying."""
        routing = self.state.current
        if routing.mode == "off":
            return None
        if routing.mode == "teacher":
            return Route(expert=routing.expert)
        if routing.mode == "index":
            return Route(index=routing.index)
        tokens = rearrange(hidden, "... d -> (...) d")
        routers: Sequence[tuple[str, Router | None]] = [("general", self.router_general)]
        if routing.mode == "routed":
            routers = [("teacher", self.router_teacher), ("general", self.router_general)]
        gates, choices, outputs = [], [], {}
        for group, router in routers:
            if router is None:
                continue
            probs = router(tokens)
            choice, onehot = top1(probs)
            gates.append(gate(probs, onehot, self.gate_mode) * self.scaling)
            choices.append(choice)
            outputs[group] = (probs, choice)
        # a recomputation under activation checkpointing logs nothing: the log keeps the routed pass's
        # outputs, and no second autograd graph outlives the step
        if not self.state.replaying:
            self.log.record(self.name, outputs)
        start = 0 if routing.mode == "routed" and self.router_teacher is not None else self.n_teacher
        if self._grouped(gates):
            return Route(grouping=group_tokens(gates, choices), start=start)
        return Route(gates=torch.cat(gates, -1) if len(gates) > 1 else gates[0], start=start)

    def _grouped(self, gates: Sequence[Tensor]) -> bool:
        """Whether running only the chosen experts gives this forward's exact values and gradients.

        ``soft`` mixes every expert. ``straight_through`` differentiates the loss with respect to
        every expert's gate, which needs every expert's output: exact only while no gradient
        reaches the routers (inference, frozen routers). ``prob`` gates are zero off the choice.
        """
        if self.compute != "grouped" or self.gate_mode == "soft":
            return False
        return self.gate_mode == "prob" or not any(g.requires_grad for g in gates)

    def parameter_groups(self) -> dict[str, dict[str, nn.Parameter]]:
        """``{"adapters": LoRA A/B by local name, "routers": router weights by local name}``."""
        groups: dict[str, dict[str, nn.Parameter]] = {"adapters": {}, "routers": {}}
        for name, param in self.named_parameters():
            if name.startswith("router_"):
                groups["routers"][name] = param
            elif name.rsplit(".", 1)[-1] in ("lora_A", "lora_B"):
                groups["adapters"][name] = param
        return groups


def group_tokens(gates: Sequence[Tensor], choices: Sequence[Tensor]) -> Grouping:
    """Per router group ``(N, E_g)`` gates and ``(N,)`` top-1 choices -> tokens sorted by their choices.

    One stable sort of the mixed-radix key ``(choice_1, choice_2, ...)``; the run lengths come
    from one ``bincount`` of the key, the block's one host sync.
    """
    sizes = [g.shape[-1] for g in gates]
    key = torch.zeros_like(choices[0])
    for size, choice in zip(sizes, choices, strict=True):
        key = key * size + choice
    order = torch.argsort(key, stable=True)
    combos = torch.bincount(key, minlength=math.prod(sizes)).tolist()
    segments: list[list[tuple[int, int, int]]] = []
    offset = 0
    for g, size in enumerate(sizes):
        # the key's leading groups (up to g) fix this group's expert: combos come in runs of `inner`
        inner = math.prod(sizes[g + 1 :])
        runs, first = [], 0
        for combo in range(0, len(combos), inner):
            count = sum(combos[combo : combo + inner])
            if count:
                runs.append((offset + (combo // inner) % size, first, count))
            first += count
        segments.append(runs)
        offset += size
    weights = [g.gather(-1, c.unsqueeze(-1)).squeeze(-1).index_select(0, order) for g, c in zip(gates, choices, strict=True)]
    return Grouping(order=order, segments=segments, weights=weights)

"""Slow, obviously-correct MoLA references: per-token merged weights instead of masked GEMMs."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from kdkit_plugins.adapters._mola_layer import LowRankExperts, MolaBlock, MolaLinear


def delta(experts: LowRankExperts, weights: Sequence[tuple[int, float]]) -> Tensor:
    """``(out, in)``: sum over ``(expert, weight)`` of ``weight * scaling * B_e^T A_e``."""
    total = torch.zeros(experts.lora_B.shape[-1], experts.lora_A.shape[-1])
    for expert, weight in weights:
        total += weight * experts.scaling * (experts.lora_B[expert].t() @ experts.lora_A[expert])
    return total


def merged_base(block: MolaBlock, weights: Sequence[tuple[int, float]]) -> nn.Module:
    """A copy of the block's original module with the weighted experts folded into its Linears."""
    base = copy.deepcopy(block.base_layer)
    for name, module in list(base.named_modules()):
        if isinstance(module, MolaLinear):
            linear = copy.deepcopy(module.base_layer)
            with torch.no_grad():
                linear.weight += delta(module, weights)
            parent, _, child = name.rpartition(".")
            setattr(base.get_submodule(parent) if parent else base, child, linear)
    return base


@torch.no_grad()
def block_output(block: MolaBlock, hidden: Tensor, weights_per_token: Sequence[Sequence[tuple[int, float]]]) -> Tensor:
    """``(N, d)`` tokens -> ``(N, d_out)``, each token through its own merged weights."""
    rows = []
    for token, weights in zip(hidden, weights_per_token, strict=True):
        out = merged_base(block, weights)(token[None, None])[0, 0]
        if block.experts is not None:  # parallel placement: a low-rank map of the block's input
            out = out + token @ delta(block.experts, weights).t()
        rows.append(out)
    return torch.stack(rows)


def token_weights(block: MolaBlock, hidden: Tensor, gate: str) -> list[list[tuple[int, float]]]:
    """Per token, the ``(expert, weight)`` pairs a routed forward must use under ``gate``."""
    groups = [(0, block.router_teacher), (block.n_teacher, block.router_general)]
    per_token: list[list[tuple[int, float]]] = [[] for _ in range(hidden.shape[0])]
    with torch.no_grad():
        for offset, router in groups:
            if router is None:
                continue
            probs = router(hidden)
            for n, row in enumerate(probs):
                top = int(row.argmax())
                if gate == "soft":
                    per_token[n] += [(offset + e, float(p)) for e, p in enumerate(row)]
                else:
                    per_token[n].append((offset + top, 1.0 if gate == "straight_through" else float(row[top])))
    return per_token

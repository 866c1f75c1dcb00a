"""MoLA routers: a 2-layer GELU MLP per expert group, run in fp32, and the top-1 gates."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class Router(nn.Module):
    """``(N, dim)`` tokens -> ``(N, experts)`` probabilities, always computed in fp32.

    In bf16 near-ties flip the top-1 choice for a visible share of tokens, so the router casts
    its input and weights up and keeps autocast off.
    """

    def __init__(self, dim: int, hidden: int, experts: int, device: torch.device | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, device=device)
        self.fc2 = nn.Linear(hidden, experts, device=device)

    def forward(self, tokens: Tensor) -> Tensor:
        device = tokens.device.type
        off = torch.autocast(device, enabled=False) if torch.amp.is_autocast_available(device) else nullcontext()
        with off:
            hidden = F.gelu(F.linear(tokens.float(), self.fc1.weight.float(), self.fc1.bias.float()))
            logits = F.linear(hidden, self.fc2.weight.float(), self.fc2.bias.float())
        return logits.softmax(-1)


def top1(probs: Tensor) -> tuple[Tensor, Tensor]:
    """``(N, E)`` probabilities -> ``(N,)`` top-1 choice and its ``(N, E)`` one-hot (probs' dtype)."""
    choice = probs.argmax(-1)
    experts = torch.arange(probs.shape[-1], device=probs.device)
    # a comparison rather than F.one_hot: no value check, so no device sync
    return choice, (choice.unsqueeze(-1) == experts).to(probs.dtype)


def gate(probs: Tensor, onehot: Tensor, mode: str) -> Tensor:
    """``(N, E)`` router probabilities and top-1 one-hot -> ``(N, E)`` expert gates.

    ``straight_through``: forward value exactly the one-hot (``p - p.detach()`` is exactly 0),
    gradient that of ``p``, so every loss reaches the router. ``prob``: the chosen expert scaled
    by its probability (Switch). ``soft``: every expert weighted by its probability.
    """
    if mode == "straight_through":
        return onehot + (probs - probs.detach())
    if mode == "prob":
        return onehot * probs
    return probs

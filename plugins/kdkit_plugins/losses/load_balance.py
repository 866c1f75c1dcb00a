"""Switch / DeepSeekMoE load balance (Fedus et al., arXiv 2101.03961): ``E · Σ_e f_e · P_e`` per router
and block, averaged; HAWAII's ``L_mb`` (arXiv 2506.19072). Equals 1 when routing is perfectly balanced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdkit import BuildContext, Example, Factory, PluginConfig, StepContext, hookimpl
from kdkit.errors import KdkitError
from kdkit.interfaces import RouterOutput
from kdkit_plugins.losses._precision import widen
from kdkit_plugins.losses._teachers import check_finite


class LoadBalanceConfig(PluginConfig):
    """Auxiliary loss that keeps routers from sending every token to the same expert."""

    kind: Literal["load_balance"] = "load_balance"
    groups: list[str] | None = Field(
        None, description="Router groups to balance (e.g. [teacher, general]); null: every router."
    )


def balance(router: RouterOutput) -> Tensor:
    """Scalar ``E · Σ_e f_e · P_e`` for one router: f from the ``(N,)`` choices, P from ``(N, E)`` probs."""
    experts = router.probs.shape[-1]
    probability = widen(router.probs).mean(0)
    fraction = F.one_hot(router.choice.long(), experts).to(probability).mean(0)
    return experts * (fraction * probability).sum()


class LoadBalance:
    """``step -> scalar``: the mean of :func:`balance` over the selected routers.

    Args:
        term: The loss's name (for messages).
        groups: Router groups to include (None: all).
    """

    def __init__(self, term: str, groups: tuple[str, ...] | None = None) -> None:
        self.term = term
        self.groups = groups

    def __call__(self, step: StepContext) -> Tensor:
        """Scalar ``L_mb`` (unweighted)."""
        routers = [r for r in step.routers if self.groups is None or r.group in self.groups]
        if not routers:
            seen = sorted({r.group for r in step.routers})
            raise KdkitError(
                f"loss {self.term!r} found no router outputs"
                + (f" in groups {list(self.groups)} (groups seen: {seen})" if self.groups else "")
                + "; the student needs a routed adapter (mola), or drop this loss"
            )
        loss = torch.stack([balance(r) for r in routers]).mean()
        return check_finite(loss, self.term, {f"router {r.block}/{r.group} probs": r.probs for r in routers})


def build(config: LoadBalanceConfig, context: BuildContext) -> LoadBalance:
    """The load-balance term."""
    return LoadBalance(context.name or "load_balance", tuple(config.groups) if config.groups is not None else None)


def example(tmp_dir: Path) -> Example:
    """Two blocks x two router groups."""
    from kdkit_plugins.losses._tiny_step import tiny_context, tiny_step

    context = tiny_context(name="balance")
    return Example(config={"kind": "load_balance"}, context=context, inputs=(tiny_step(context),))


@hookimpl
def kdkit_losses() -> dict[str, Factory]:
    return {"load_balance": Factory(config=LoadBalanceConfig, build=build, example=example)}

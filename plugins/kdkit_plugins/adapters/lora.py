"""LoRA: low-rank adapters on named Linear layers (Hu et al., 2021, arXiv 2106.09685).

Mergeable: ``merge()`` folds ``scaling * B A`` into the frozen base weight.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from kdkit import BuildContext, Example, Factory, PluginConfig, hookimpl
from kdkit.adapters import AdapterHandle, RoutingState, check_rank, freeze, match_linears, replace_module
from kdkit.errors import KdkitError
from kdkit_plugins.adapters.lora_peft import save_peft

FFN_LINEARS = r"(.*\.)?(layers|blocks|resblocks)\.\d+\.mlp\.(fc1|fc2|c_fc|c_proj)"


class LoraConfig(PluginConfig):
    """Plain LoRA on every Linear whose name matches a target pattern."""

    kind: Literal["lora"] = "lora"
    targets: list[str] = Field(
        default_factory=lambda: [FFN_LINEARS],
        description="Regular expressions matched with re.fullmatch against module names of the "
        "model; every match must be an nn.Linear. The default matches the MLP Linears of "
        "transformers CLIP, timm ViT and open_clip ViT blocks.",
    )
    rank: int = Field(32, gt=0, description="Rank r of the low-rank update B A.")
    alpha: float | None = Field(None, gt=0, description="Scaling numerator: the update is scaled by alpha / rank. Defaults to rank.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapter's input (training only).")


class LoraLinear(nn.Module):
    """``(..., in) -> (..., out)``: ``base_layer(x) + scaling * dropout(x) A^T B``.

    ``lora_A`` is ``(r, in)`` (Kaiming-uniform), ``lora_B`` is ``(r, out)`` and zero, so the
    injection starts as an exact identity.
    """

    def __init__(self, base_layer: nn.Linear, rank: int, alpha: float, dropout: float, state: RoutingState) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.scaling = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base_layer.in_features, device=base_layer.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(rank, base_layer.out_features, device=base_layer.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=5**0.5)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.state = state
        self.merged = False

    def forward(self, x: Tensor) -> Tensor:
        out = self.base_layer(x)
        if self.merged or self.state.current.mode == "off":
            return out
        z = nn.functional.linear(self.dropout(x), self.lora_A.to(x.dtype))
        return out + self.scaling * (z @ self.lora_B.to(x.dtype))

    def delta_weight(self) -> Tensor:
        """``(out, in)``: the update ``scaling * B^T A`` in the base weight's layout."""
        return self.scaling * (self.lora_B.t() @ self.lora_A)

    def merge(self) -> None:
        """Add the update to the base weight (forward then skips the adapter path)."""
        if self.merged:
            raise KdkitError("this LoRA layer is already merged; unmerge() it first")
        with torch.no_grad():
            self.base_layer.weight += self.delta_weight().to(self.base_layer.weight.dtype)
        self.merged = True

    def unmerge(self) -> None:
        """Subtract the update from the base weight again."""
        if not self.merged:
            raise KdkitError("this LoRA layer is not merged")
        with torch.no_grad():
            self.base_layer.weight -= self.delta_weight().to(self.base_layer.weight.dtype)
        self.merged = False

    def parameter_groups(self) -> dict[str, dict[str, nn.Parameter]]:
        """``{"adapters": {"lora_A": ..., "lora_B": ...}}``."""
        return {"adapters": {"lora_A": self.lora_A, "lora_B": self.lora_B}}

    def extra_repr(self) -> str:
        return f"rank={self.lora_A.shape[0]}, scaling={self.scaling:g}"


def build(config: LoraConfig, context: BuildContext) -> AdapterHandle:
    """Freeze ``context.model`` and wrap every target Linear in a :class:`LoraLinear`, in place."""
    model = context.model
    if model is None:
        raise KdkitError("the lora adapter needs context.model: the module to inject into")
    try:  # the recipe field to fix leads the message
        names = match_linears(model, config.targets, what="lora target")
    except KdkitError as exc:
        raise KdkitError(f"adapters.{context.name or 'lora'}.targets: {exc}") from None
    for name in names:
        linear = model.get_submodule(name)
        check_rank(config.rank, linear.in_features, linear.out_features, name)
    freeze(model)
    state = RoutingState((), ("routed", "off"))
    alpha = config.alpha if config.alpha is not None else float(config.rank)
    modules = {}
    for name in names:
        modules[name] = LoraLinear(model.get_submodule(name), config.rank, alpha, config.dropout, state)
        replace_module(model, name, modules[name])
    handle = AdapterHandle(model, modules, config, state=state, mergeable=True)
    handle.save_peft = partial(save_peft, handle)  # type: ignore[attr-defined]  # read by kdkit export
    return handle


def example(tmp_dir: Path) -> Example:
    """A tiny timm ViT (2 blocks, width 16) and a batch of 2 images of 16x16."""
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=2, mlp_ratio=2.0, num_classes=0)
    context = BuildContext(name="lora", model=model.eval())
    return Example(config={"kind": "lora", "rank": 4}, context=context, inputs=(torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)),))


@hookimpl
def kdkit_adapters() -> dict[str, Factory]:
    return {"lora": Factory(config=LoraConfig, build=build, example=example)}

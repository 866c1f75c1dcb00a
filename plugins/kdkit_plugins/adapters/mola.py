"""MoLA: a mixture of teacher-specific and general LoRA experts in every FFN block, each group
top-1 routed per token (HAWAII, Wang et al., NeurIPS 2025, arXiv 2506.19072).

Not mergeable: the experts are chosen per token from the input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from kdkit import BuildContext, Example, Factory, PluginConfig, hookimpl
from kdkit.adapters import (
    NAMED_MODES, AdapterHandle, RouterLog, RoutingState, check_rank, child_linear, freeze, match_modules, replace_module,
)
from kdkit.errors import KdkitError
from kdkit_plugins.adapters._mola_layer import LowRankExperts, MolaBlock, MolaLinear

FFN_BLOCKS = r"(.*\.)?(layers|blocks|resblocks)\.\d+\.mlp"


class MolaConfig(PluginConfig):
    """Mixture of LoRA adapters: N_t teacher experts + N_g general experts per FFN block, two routers."""

    kind: Literal["mola"] = "mola"
    blocks: list[str] = Field(
        default_factory=lambda: [FFN_BLOCKS],
        description="Regular expressions (re.fullmatch on module names) selecting the FFN blocks to "
        "route. The default matches transformers CLIP 'encoder.layers.N.mlp', timm ViT "
        "'blocks.N.mlp' and open_clip 'transformer.resblocks.N.mlp'.",
    )
    fc1: list[str] = Field(
        default_factory=lambda: ["fc1", "c_fc"],
        description="Patterns (re.fullmatch, relative to a block) of the block's first Linear; exactly one must match.",
    )
    fc2: list[str] = Field(
        default_factory=lambda: ["fc2", "c_proj"],
        description="Patterns (re.fullmatch, relative to a block) of the block's second Linear; exactly one must match.",
    )
    placement: Literal["fc1", "fc2", "both", "parallel"] = Field(
        "both",
        description="Where the experts go: on fc1, on fc2, on both (MoVE-KD's form; one routing decision "
        "serves both), or parallel: one low-rank adapter from the block's input to its output, beside "
        "the whole FFN (HAWAII's F*(h) = F(h) + a_i^T(h) + a_j^G(h), the HAWAII recipes' choice).",
    )
    compute: Literal["grouped", "dense"] = Field(
        "grouped",
        description="grouped: each token runs only its chosen experts (tokens grouped by expert; one host "
        "sync per block), wherever that is exact: always for gate prob, and for straight_through while no "
        "gradient reaches the routers (inference); otherwise dense. dense: every expert on every token "
        "under a gate mask (fixed shapes, no sync: torch.compile and CUDA graphs).",
    )
    rank: int = Field(32, gt=0, description="Rank r of every LoRA expert.")
    alpha: float | None = Field(None, gt=0, description="Experts are scaled by alpha / rank. Defaults to rank (scaling 1).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the experts' input (training only).")
    teacher_experts: bool = Field(True, description="One teacher-specific expert per recipe teacher, with its own router.")
    general_experts: int = Field(3, ge=0, description="Number N_g of general experts, with their own router (0: none).")
    router_hidden: int = Field(64, gt=0, description="Hidden width of each 2-layer GELU router (keep it narrow: it runs on every token).")
    gate: Literal["straight_through", "prob", "soft"] = Field(
        "straight_through",
        description="straight_through: the top-1 expert at weight exactly 1, router gradient of its "
        "probabilities; prob: the top-1 expert times its probability; soft: every expert weighted "
        "by its probability.",
    )


def _check_teachers(config: MolaConfig, teacher_names: tuple[str, ...]) -> tuple[str, ...]:
    if not config.teacher_experts:
        teacher_names = ()
    elif not teacher_names:
        raise KdkitError(
            "mola has teacher_experts: true but the recipe has no teachers; add teachers or set "
            "teacher_experts: false (general experts only)"
        )
    if len(set(teacher_names)) != len(teacher_names):
        raise KdkitError(f"teacher names must be unique, got {list(teacher_names)}")
    clash = sorted(set(teacher_names) & set(NAMED_MODES))
    if clash:
        raise KdkitError(f"teacher names {clash} clash with routing modes {list(NAMED_MODES)}; rename the teachers")
    if not teacher_names and config.general_experts == 0:
        raise KdkitError("mola needs experts: set general_experts > 0 or teacher_experts: true")
    return teacher_names


def build(config: MolaConfig, context: BuildContext) -> AdapterHandle:
    """Freeze ``context.model`` and wrap every matched FFN block in a :class:`MolaBlock`, in place."""
    model = context.model
    if model is None:
        raise KdkitError("the mola adapter needs context.model: the module to inject into")
    teachers = _check_teachers(config, tuple(context.teacher_names))
    experts = len(teachers) + config.general_experts
    scaling = (config.alpha if config.alpha is not None else config.rank) / config.rank
    field = f"adapters.{context.name or 'mola'}"
    try:  # the recipe field to fix leads the message
        names = match_modules(model, config.blocks, what="mola block")
    except KdkitError as exc:
        raise KdkitError(f"{field}.blocks: {exc}") from None
    plan = []
    for name in names:
        block = model.get_submodule(name)
        try:
            first = child_linear(block, name, config.fc1, role="fc1")
            second = child_linear(block, name, config.fc2, role="fc2")
        except KdkitError as exc:
            raise KdkitError(f"{field}.fc1/fc2: {exc}") from None
        adapted = {"fc1": [first], "fc2": [second], "both": [first, second], "parallel": []}[config.placement]
        for child in adapted:
            linear = block.get_submodule(child)
            check_rank(config.rank, linear.in_features, linear.out_features, f"{name}.{child}")
        if config.placement == "parallel":
            in_features, out_features = block.get_submodule(first).in_features, block.get_submodule(second).out_features
            check_rank(config.rank, in_features, out_features, f"{name} (parallel)")
        plan.append((name, block, adapted, block.get_submodule(first), block.get_submodule(second)))
    freeze(model)
    modes = ("routed", "off") + (("general_only",) if config.general_experts else ())
    state, log = RoutingState(teachers, modes), RouterLog()
    modules: dict[str, nn.Module] = {}
    for name, block, adapted, first, second in plan:
        wrapper = MolaBlock(block, name, first.in_features, len(teachers), config.general_experts,
                            config.router_hidden, config.gate, scaling, state, log, config.compute)
        for child in adapted:
            linear = block.get_submodule(child)
            replace_module(block, child, MolaLinear(linear, wrapper, experts, config.rank, scaling, config.dropout))
        if config.placement == "parallel":
            wrapper.experts = LowRankExperts(experts, config.rank, first.in_features, second.out_features,
                                             scaling, config.dropout, first.weight.device)
        replace_module(model, name, wrapper)
        modules[name] = wrapper
    return AdapterHandle(model, modules, config, teacher_names=teachers, state=state, log=log, mergeable=False)


def example(tmp_dir: Path) -> Example:
    """A tiny timm ViT (2 blocks, width 16), two teachers, and a batch of 2 images of 16x16."""
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=2, mlp_ratio=2.0, num_classes=0)
    context = BuildContext(name="mola", teacher_names=("t0", "t1"), model=model.eval())
    config = {"kind": "mola", "rank": 4, "general_experts": 2, "router_hidden": 8}
    return Example(config=config, context=context, inputs=(torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)),))


@hookimpl
def kdkit_adapters() -> dict[str, Factory]:
    return {"mola": Factory(config=MolaConfig, build=build, example=example)}

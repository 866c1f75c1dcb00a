"""MoLA speed at CLIP-L/14-336 width: kdkit's dense routed experts against a plain encoder, a
loop-over-experts reference (gather tokens per expert with ``torch.where``, scatter back), the
forced passes batched or one by one, and a training step against a single LoRA.

    python -m benchmarks.mola            # CLIP-L width, a few layers, fp32 CPU
    python -m benchmarks.mola --quick    # CI-size shapes
    python -m benchmarks.mola --overhead # parameter / FLOP table of a full CLIP-L tower

The last line printed is one JSON object of ratios: per repeat, the two variants timed back to
back; the median over repeats.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from kdkit.engine.step import forced_batching
from kdkit.interfaces import BuildContext
from kdkit_plugins.adapters import lora, mola
from kdkit_plugins.adapters._mola_layer import MolaBlock, MolaLinear

TEACHERS = ("clip", "convnext", "eva")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
#: The placement of recipes/hawaii/hawaii_7b.yaml (the paper's F*(h) = F(h) + a_i^T(h) + a_j^G(h)).
HAWAII_PLACEMENT = "parallel"


def clip_tower(layers: int, hidden: int, mlp: int, image: int, heads: int) -> nn.Module:
    """A random-init transformers CLIP vision tower with patch 14 ((image/14)^2 + 1 tokens)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                              num_attention_heads=heads, image_size=image, patch_size=14)
    model = CLIPVisionModel(config).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


# -- the reference: a loop over experts, one torch.where gather and index_add scatter each -------
class LoopLinear(nn.Module):
    """A Linear plus experts applied token group by token group (the per-expert loop)."""

    def __init__(self, source: MolaLinear, block: LoopBlock) -> None:
        super().__init__()
        self.base_layer, self.scaling, self._block = source.base_layer, source.scaling, [block]
        self.lora_A, self.lora_B = nn.Parameter(source.lora_A.detach().clone()), nn.Parameter(source.lora_B.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        out = self.base_layer(x)
        rows, flat = x.reshape(-1, x.shape[-1]), out.view(-1, out.shape[-1])
        for offset, experts, choice in self._block[0].choices:
            for expert in range(experts):
                index = torch.where(choice == expert)[0]  # host sync: the size is data-dependent
                update = (rows[index] @ self.lora_A[offset + expert].t()) @ self.lora_B[offset + expert]
                flat.index_add_(0, index, update, alpha=self.scaling)
        return out


class LoopBlock(nn.Module):
    """Routes each token (top-1 per group) and lets its :class:`LoopLinear` s loop over experts."""

    def __init__(self, source: MolaBlock) -> None:
        super().__init__()
        self.base_layer = source.base_layer
        self.router_teacher, self.router_general = source.router_teacher, source.router_general
        self.offsets = (0, source.n_teacher)
        self.choices: list[tuple[int, int, Tensor]] = []

    def forward(self, hidden: Tensor) -> Tensor:
        tokens = hidden.reshape(-1, hidden.shape[-1])
        routers = (self.router_teacher, self.router_general)
        self.choices = [(off, r.fc2.out_features, r(tokens).argmax(-1)) for off, r in zip(self.offsets, routers, strict=True)]
        return self.base_layer(hidden)


def loop_copy(model: nn.Module, handle: object) -> nn.Module:
    """A copy of a MoLA-injected model with every block and Linear turned into the loop version."""
    model = copy.deepcopy(model)
    for name in handle.modules:
        block = model.get_submodule(name)
        loop = LoopBlock(block)
        for child, module in list(block.base_layer.named_children()):
            if isinstance(module, MolaLinear):
                setattr(block.base_layer, child, LoopLinear(module, loop))
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, loop)
    return model


# -- timing ----------------------------------------------------------------------------------
def interleaved_times(runs: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds of every repeat per run, the runs interleaved so machine noise hits them all alike."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for run in runs.values():  # warm-up
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            sync()
            start = time.perf_counter()
            run()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def randomize(handle: object) -> None:
    """Non-zero experts (zero B would let a wrong path look right)."""
    with torch.no_grad():
        for param in handle.parameters("adapters"):
            param.normal_(0, 0.02)


def injected(plain: nn.Module, args: argparse.Namespace, **options: object) -> tuple[nn.Module, object]:
    """A MoLA-injected copy of ``plain`` (3 teacher + 3 general experts) with random experts."""
    model = copy.deepcopy(plain)
    config = mola.MolaConfig(rank=args.rank, router_hidden=args.router_hidden, **options)
    handle = mola.build(config, BuildContext(teacher_names=TEACHERS, model=model))
    randomize(handle)
    return model, handle


def measure(args: argparse.Namespace) -> dict[str, float]:
    shapes = dict(layers=2, hidden=64, mlp=256, image=56, heads=4) if args.quick else \
        dict(layers=args.layers, hidden=1024, mlp=4096, image=336, heads=16)
    torch.manual_seed(0)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    plain = clip_tower(**shapes).to(device, dtype)
    hawaii_model, handle = injected(plain, args, placement=HAWAII_PLACEMENT)
    both_model, both_handle = injected(plain, args, placement="both")
    dense_model, _ = injected(plain, args, placement="both", compute="dense")
    dense_model.load_state_dict(both_model.state_dict())
    loop_model = loop_copy(both_model, both_handle)
    lora_model = copy.deepcopy(plain)
    lora_handle = lora.build(lora.LoraConfig(rank=args.rank), BuildContext(model=lora_model))
    randomize(lora_handle)

    for model in (hawaii_model, both_model, dense_model, loop_model, lora_model):
        model.to(device, dtype)
    images = torch.rand(args.batch, 3, shapes["image"], shapes["image"], device=device, dtype=dtype)
    with torch.no_grad():
        reference = loop_model(images).last_hidden_state
        gap = max((m(images).last_hidden_state - reference).abs().max().item() for m in (both_model, dense_model))

    def infer(model: nn.Module) -> Callable[[], object]:
        return lambda: model(images)

    def forced(batched: bool) -> Callable[[], object]:
        return lambda: forced_passes(hawaii_model, handle, images, batched)

    def train(model: nn.Module) -> Callable[[], object]:
        def step() -> None:
            model.zero_grad(set_to_none=True)
            model(images).last_hidden_state.square().mean().backward()
        return step

    with torch.no_grad():
        infer_times = interleaved_times({
            "plain": infer(plain), "mola_routed": infer(hawaii_model), "mola_both_routed": infer(both_model),
            "mola_both_dense": infer(dense_model), "loop_routed": infer(loop_model),
            "forced_batched": forced(True), "forced_sequential": forced(False),
        }, args.repeats, device)
    train_times = interleaved_times({"lora_train": train(lora_model), "mola_train": train(hawaii_model)}, args.repeats, device)
    times = {**infer_times, **train_times}

    tokens = (shapes["image"] // 14) ** 2 + 1
    print(f"shapes: {shapes['layers']} layers, hidden {shapes['hidden']}, MLP {shapes['mlp']}, {tokens} tokens, "
          f"batch {args.batch}, rank {args.rank}, router {args.router_hidden}, {len(TEACHERS)} teacher + 3 general "
          f"experts, {args.dtype} on {device.type}, {torch.get_num_threads()} threads, {args.repeats} interleaved repeats, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"mola_routed: HAWAII placement ({HAWAII_PLACEMENT}); mola_both: MoVE-KD's fc1+fc2 (grouped experts; "
          f"mola_both_dense: every expert under a mask)")
    print(f"max |kdkit - loop reference| on the fc1+fc2 routed output: {gap:.2e}")
    print(f"{'variant':<20}{'median ms':>10}{'min ms':>10}{'max ms':>10}")
    for name, seconds in times.items():
        print(f"{name:<20}{1000 * statistics.median(seconds):>10.1f}{1000 * min(seconds):>10.1f}{1000 * max(seconds):>10.1f}")
    def ratio(numerator: str, denominator: str) -> float:
        """Median over repeats of the ratio within each repeat (the two ran back to back)."""
        return round(statistics.median(a / b for a, b in zip(times[numerator], times[denominator], strict=True)), 4)

    choice = "batched" if forced_batching(images.device) else "sequential"
    speedup = ratio("forced_sequential", "forced_batched")
    print(f"forced passes: the engine runs them {choice} on {images.device.type}; batched is {speedup:.2f}x "
          f"as fast as sequential here")
    return {
        "mola_infer_vs_plain": ratio("mola_routed", "plain"),
        "mola_both_infer_vs_plain": ratio("mola_both_routed", "plain"),
        "mola_both_dense_infer_vs_plain": ratio("mola_both_dense", "plain"),
        "loop_infer_vs_plain": ratio("loop_routed", "plain"),
        "mola_train_vs_lora": ratio("mola_train", "lora_train"),
        "forced_batched_speedup": speedup,
        "forced_engine_choice": choice,
    }


def forced_passes(model: nn.Module, handle: object, images: Tensor, batched: bool) -> list[Tensor]:
    """The N_t forced passes ``I_i^S``: one batch of ``N_t * B`` images, or one pass per teacher."""
    if batched:
        with handle.routing(handle.forced_index(images.shape[0])):
            out = model(images.repeat(len(TEACHERS), 1, 1, 1)).last_hidden_state
        return list(out.chunk(len(TEACHERS)))
    outs = []
    for name in TEACHERS:
        with handle.routing(name):
            outs.append(model(images).last_hidden_state)
    return outs


# -- parameters and FLOPs of a full CLIP-L/14-336 tower (meta tensors: nothing is computed) ------
def _addmm_flops(_out: list[int], a: list[int], b: list[int], *args: object, **kwargs: object) -> int:
    """FLOPs of ``out += a @ b`` from shapes (what the counter's wrapper passes)."""
    return 2 * a[0] * a[1] * b[1]


def _baddbmm_flops(_out: list[int], a: list[int], b: list[int], *args: object, **kwargs: object) -> int:
    """FLOPs of a batched ``out += a @ b`` from shapes."""
    return 2 * a[0] * a[1] * a[2] * b[2]


def overhead(rank: int, router_hidden: int) -> list[dict[str, object]]:
    """Rows of the CLIP-L overhead table: parameters and forward FLOPs per image per variant."""
    from torch.utils.flop_counter import FlopCounterMode

    def count(model: nn.Module, routing: object = None) -> tuple[int, dict[str, int]]:
        images = torch.empty(1, 3, 336, 336, device="meta")
        # the experts are added with in-place addmm_/baddbmm_, which the counter does not know
        aten = torch.ops.aten
        inplace = {aten.addmm_: _addmm_flops, aten.baddbmm_: _baddbmm_flops}
        with FlopCounterMode(display=False, custom_mapping=inplace) as counter:
            if routing is None:
                model(images)
            else:
                with routing:
                    model(images)
        return counter.get_total_flops(), counter.get_flop_counts()

    with torch.device("meta"):
        base = clip_tower(layers=24, hidden=1024, mlp=4096, image=336, heads=16)
        n_base = sum(p.numel() for p in base.parameters())
        flops_base, _ = count(base)
        rows = [dict(variant="plain CLIP-L/14-336", params=n_base, extra=0, active=0, flops=flops_base)]
        lora_model = copy.deepcopy(base)
        lh = lora.build(lora.LoraConfig(rank=rank), BuildContext(model=lora_model))
        n = sum(p.numel() for p in lh.parameters())
        rows.append(dict(variant=f"LoRA r={rank} fc1+fc2", params=n_base + n, extra=n, active=n, flops=count(lora_model)[0]))
        for placement in ("both", "parallel"):
            model = copy.deepcopy(base)
            config = mola.MolaConfig(rank=rank, router_hidden=router_hidden, placement=placement, compute="dense")
            handle = mola.build(config,
                                BuildContext(teacher_names=TEACHERS, model=model))
            adapters, routers = handle.parameters("adapters"), handle.parameters("routers")
            n_adapt, n_router = sum(p.numel() for p in adapters), sum(p.numel() for p in routers)
            experts = len(TEACHERS) + 3
            active = n_router + 2 * n_adapt // experts  # one teacher + one general expert per token
            flops, by_module = count(model)
            router_flops = sum(sum(v.values()) for k, v in by_module.items() if k.endswith(("router_teacher", "router_general")))
            one_lora = count(model, handle.routing("clip"))[0] - flops_base  # exactly one expert
            rows.append(dict(variant=f"MoLA {placement}, dense (6 experts; training with straight_through)", params=n_base + n_adapt + n_router,
                             extra=n_adapt + n_router, active=active, flops=flops))
            rows.append(dict(variant=f"MoLA {placement}, grouped (2 chosen experts; inference)", params=n_base + n_adapt + n_router,
                             extra=n_adapt + n_router, active=active, flops=flops_base + 2 * one_lora + router_flops))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes (CI)")
    parser.add_argument("--layers", type=int, default=2, help="encoder layers at CLIP-L width")
    parser.add_argument("--batch", type=int, default=1, help="images per forward")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--router-hidden", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (median is reported)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="weights and inputs")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    parser.add_argument("--overhead", action="store_true", help="print the CLIP-L parameter/FLOP table and exit")
    args = parser.parse_args()
    if args.overhead:
        rows = overhead(args.rank, args.router_hidden)
        base = rows[0]
        print("| variant | parameters (M) | added (M) | active added at inference (M) | GFLOPs / image | vs plain |")
        print("|---|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['variant']} | {r['params'] / 1e6:.2f} | {r['extra'] / 1e6:.3f} | {r['active'] / 1e6:.3f} "
                  f"| {r['flops'] / 1e9:.1f} | {r['flops'] / base['flops']:.4f} |")
        print(json.dumps({r["variant"]: round(r["flops"] / base["flops"], 4) for r in rows}))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    args.repeats = args.repeats or (3 if args.quick else 11)
    print(json.dumps(measure(args)))


if __name__ == "__main__":
    main()

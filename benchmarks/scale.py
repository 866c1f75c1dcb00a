"""Scale rehearsal: the HAWAII-7B student at its real widths through the engine's step on CPU.

    python -m benchmarks.scale                    # CLIP-L/14-336 (all 24 layers), Llama 4096 (2 layers), batch 1
    python -m benchmarks.scale --tower-layers 4 --llm-layers 1    # a quarter of the time: 4 tower layers
    python -m benchmarks.scale --quick            # CI-size widths: checks the script, measures nothing
    python -m benchmarks.scale --projection-only  # the 8-GPU projection table from the built-in per-layer figures

The student is LLaVA-1.5-7B's at its real widths: a CLIP ViT-L/14-336 tower (hidden 1024, MLP
4096, 16 heads, 577 tokens), the mlp2x_gelu projector (1024 -> 4096 -> 4096) and a Llama at 4096
width (MLP 11008, 32 heads) with a few layers and the tiny tokenizer's vocabulary; MoLA at the
recipe's settings (rank 32, router 64, 3 teacher + 3 general experts, ``placement: parallel``).
The ``clip`` teacher is the student's own CLIP at real width; ``convnext`` and ``eva02`` are the
tiny twins' (frozen, no gradient: their size changes the teacher time, not the student's
activation memory). Everything else is the tiny HAWAII twin of ``recipes/hawaii/hawaii_7b.yaml``
against the LLaVA-1.5 twin (``recipes/tiny/hawaii/llava15_7b.yaml``): same data, stage
``finetune`` (every part trains), built by the engine (``build_distiller``), one micro-batch
through ``Distiller.forward`` and ``backward`` exactly as the trainer runs it.

Four configurations run, each in its own process (so peak memory is its own): plain LLaVA and
MoLA + KD, each with ``runtime.gradient_checkpointing`` off and on. Per configuration, a warm-up
step, then ``--steps`` timed steps (median). Measured:

- **activation memory**: bytes autograd keeps for the backward at the end of the forward: the
  unique storages of every saved tensor (parameters excluded) plus, with checkpointing, the
  input each checkpointed layer keeps for its recomputation;
- **peak memory**: the process's peak resident set (parameters, gradients and activations);
- **recomputed layers**: student layer forwards run again during the backward;
- **phases** of one step: teachers (+ aligners), routed student pass (tower, projector, LLM),
  forced passes, scorer + losses, backward.

The projection table (``docs/guides/scale.md``) extrapolates the measured per-layer activation
figures to the full 7B / 13B models on 8 GPUs in bf16: a projection, not a measurement. The
last line printed is JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"plain": ROOT / "recipes" / "tiny" / "hawaii" / "llava15_7b.yaml",
           "kd": ROOT / "recipes" / "tiny" / "hawaii" / "hawaii_7b.yaml"}
STAGE = "finetune"
GIB = 2**30
#: LLaVA-1.5 at real width (transformers config fields); layer counts come from the command line.
VISION = {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16, "image_size": 336,
          "patch_size": 14, "projection_dim": 768}
LANGUAGE = {"hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32, "num_key_value_heads": 32,
            "max_position_embeddings": 4096}
QUICK_VISION = {"hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 4, "image_size": 56,
                "patch_size": 14, "projection_dim": 32}
QUICK_LANGUAGE = {"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4, "num_key_value_heads": 4,
                  "max_position_embeddings": 1024}


# -- the models and data -------------------------------------------------------------------------
def write_models(root: Path, args: argparse.Namespace) -> Path:
    """The tiny HAWAII data and teachers, with the student's CLIP and Llama replaced by real-width ones."""
    from kdkit_plugins.fixtures.hawaii import write_tiny_hawaii
    from kdkit_plugins.fixtures.llava import write_tiny_clip_vision, write_tiny_llm

    write_tiny_hawaii(root)
    vision, language = (QUICK_VISION, QUICK_LANGUAGE) if args.quick else (VISION, LANGUAGE)
    write_tiny_clip_vision(root / "models" / "clip", seed=1, num_hidden_layers=args.tower_layers, **vision)
    write_tiny_llm(root / "models" / "llm", tokenizer_dir=root / "models" / "llm", seed=2,
                   num_hidden_layers=args.llm_layers, **language)
    return root


def overrides(config: str, checkpointing: bool, root: Path, args: argparse.Namespace) -> list[str]:
    """Recipe overrides of one configuration."""
    out = [f"runtime.data_root={root}", f"runtime.gradient_checkpointing={str(checkpointing).lower()}",
           f"runtime.device={args.device}", f"runtime.precision={args.precision}",
           f"stages.{STAGE}.batch.per_device={args.batch}", f"stages.{STAGE}.batch.global_size={args.batch}",
           f"stages.{STAGE}.data.max_length=2048"]
    if config == "kd" and not args.quick:
        out += ["adapters.mola.rank=32", "adapters.mola.router_hidden=64"]
    return out


# -- one configuration, in its own process ------------------------------------------------------
@dataclasses.dataclass
class Meter:
    """What one step showed: time and saved bytes per phase, layer recomputations."""

    seconds: dict[str, float] = dataclasses.field(default_factory=lambda: defaultdict(float))
    stack: list[list[Any]] = dataclasses.field(default_factory=list)
    kept: list[tuple[Any, str]] = dataclasses.field(default_factory=list)
    region: str = "other"
    recomputed: int = 0

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time spent inside, less the time of phases nested in it."""
        self.stack.append([name, time.perf_counter(), 0.0])
        try:
            yield
        finally:
            _, start, children = self.stack.pop()
            elapsed = time.perf_counter() - start
            self.seconds[name] += elapsed - children
            if self.stack:
                self.stack[-1][2] += elapsed

    @property
    def current(self) -> str:
        return self.stack[-1][0] if self.stack else "other"

    def keep(self, tensor: Any) -> None:
        """Note ``tensor`` (saved for the backward) under the current phase and layer region."""
        if tensor.untyped_storage().nbytes():
            self.kept.append((weakref.ref(tensor), f"{self.current}/{self.region}"))

    def held(self) -> dict[str, int]:
        """Bytes per phase/region of the noted tensors still alive: each storage once, where first noted.

        A tensor saved by a graph that is already gone (a detached score's graph, or the layer
        inputs a whole-pass checkpoint drops after its forward) no longer counts.
        """
        saved: dict[str, int] = defaultdict(int)
        storages: set[int] = set()
        for ref, where in self.kept:
            tensor = ref()
            if tensor is None:
                continue
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in storages:
                storages.add(storage.data_ptr())
                saved[where] += storage.nbytes()
        return dict(saved)


def timed(meter: Meter, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with meter.phase(name):
            return fn(*args, **kwargs)
    return wrapper


def child(config: str, checkpointing: bool, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Build one configuration through the engine, run warm-up + timed steps, return its figures."""
    import torch

    from kdkit.engine import build
    from kdkit.engine.capabilities import data_capabilities
    from kdkit.engine.loader import to_device
    from kdkit.engine.step import weighted_total
    from kdkit.plugins import get_registry
    from kdkit.recipe import load_recipe

    torch.set_num_threads(args.threads or torch.get_num_threads())
    registry = get_registry()
    recipe = load_recipe(RECIPES[config], overrides(config, checkpointing, root, args), registry=registry)
    device = torch.device(args.device)
    distiller = build.build_distiller(recipe, registry, device)
    stage = recipe.stages[STAGE]
    groups = build.parameter_groups(distiller)
    build.set_trainable(distiller, build.resolve_trainable(STAGE, stage.trainable, distiller, groups))
    if checkpointing:  # as the trainer does
        distiller.enable_checkpointing(forced_passes=not args.layers_only)
    distiller.train()
    context = dataclasses.replace(build.base_context(recipe, device), name=STAGE, extras={"student": distiller.plugin})
    dataset = registry.build("data", stage.data.config, context)
    batch = to_device(data_capabilities(dataset).collate([dataset[i] for i in range(args.batch)]), device)
    cuda = device.type == "cuda"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    weights = {name: block.weight for name, block in recipe.losses.items()}
    parameters = {p.untyped_storage().data_ptr() for p in distiller.parameters()}
    rss_built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    meter = Meter()
    layers = distiller.plugin.shard_units()
    tower_layers = distiller.plugin.model.config.vision_config.num_hidden_layers
    state = {"backward": False}
    for index, layer in enumerate(layers):
        region = "tower" if index < tower_layers else "llm"

        def enter(module: Any, inputs: tuple[Any, ...], kwargs: dict[str, Any], region: str = region) -> None:
            meter.region = region
            if checkpointing and torch.is_grad_enabled() and not state["backward"]:
                hidden = inputs[0] if inputs else kwargs.get("hidden_states")
                if isinstance(hidden, torch.Tensor) and hidden.requires_grad:
                    meter.keep(hidden)  # the checkpoint keeps each layer's input for the recomputation

        def leave(*_: Any) -> None:
            meter.region = "other"

        def attention(*_: Any) -> None:
            if state["backward"]:
                meter.recomputed += 1

        layer.register_forward_pre_hook(enter, with_kwargs=True)
        layer.register_forward_hook(leave)
        getattr(layer, "self_attn").register_forward_hook(attention)
    distiller.teacher_pass = timed(meter, "teachers", distiller.teacher_pass)  # type: ignore[method-assign]
    distiller.forced_pass = timed(meter, "forced passes", distiller.forced_pass)  # type: ignore[method-assign]
    distiller.losses = {n: timed(meter, "scorer + losses", fn) for n, fn in distiller.losses.items()}
    if distiller.scorer is not None:
        object.__setattr__(distiller, "scorer", timed(meter, "scorer + losses", distiller.scorer))

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.untyped_storage().data_ptr() not in parameters:
            meter.keep(tensor)
        return tensor

    steps = []
    for step in range(1 + args.steps):
        meter.seconds.clear(), meter.kept.clear()
        meter.recomputed = 0
        distiller.zero_grad(set_to_none=True)
        sync()
        start = time.perf_counter()
        with meter.phase("routed pass"), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
            losses, context = distiller(batch)  # held through the backward, as the trainer holds it
        total = weighted_total({n: losses[n] for n in distiller.active}, weights)
        sync()
        saved = meter.held()
        state["backward"] = True
        with meter.phase("backward"):
            total.backward()
            sync()
        state["backward"] = False
        seconds = time.perf_counter() - start
        if step:  # the first step warms up allocators and lazy initialisation
            steps.append({"seconds": seconds, "phases": dict(meter.seconds), "saved": saved,
                          "recomputed": meter.recomputed, "loss": float(total)})
    last = steps[-1]
    return {
        "config": config, "checkpointing": checkpointing,
        "step_seconds": [s["seconds"] for s in steps],
        "phases": {k: statistics.median(s["phases"].get(k, 0.0) for s in steps) for k in last["phases"]},
        "activation_bytes": sum(last["saved"].values()), "saved_by_phase": last["saved"],
        "recomputed_layers": last["recomputed"],
        "peak_rss_bytes": torch.cuda.max_memory_allocated(device) if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "built_rss_bytes": rss_built,
        "parameters": sum(p.numel() for p in distiller.parameters()),
        "trainable": sum(p.numel() for p in distiller.parameters() if p.requires_grad),
        "tokens": int(batch["input_ids"].shape[1]), "tower_layers": tower_layers,
        "llm_layers": len(layers) - tower_layers, "threads": torch.get_num_threads(), "loss": last["loss"],
    }


# -- the parent: one process per configuration, a table, JSON -----------------------------------
#: (student, checkpointing) of each configuration, in table order. ``on`` for MoLA + KD is the
#: engine's default with checkpointing (layers + each forced pass kept as its output only);
#: ``layers`` is ``runtime.checkpoint_forced_passes: false`` (layers only).
CONFIGS: tuple[tuple[str, str], ...] = (("plain", "off"), ("kd", "off"), ("plain", "on"), ("kd", "layers"), ("kd", "on"))
LABELS = {"off": "ckpt off", "on": "ckpt on", "layers": "ckpt layers only"}


def run_child(config: str, ckpt: str, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.scale", "--child", config, "--root", str(root),
               "--batch", str(args.batch), "--steps", str(args.steps), "--tower-layers", str(args.tower_layers),
               "--llm-layers", str(args.llm_layers), "--device", args.device, "--precision", args.precision]
    command += (["--checkpointing"] if ckpt != "off" else []) + (["--layers-only"] if ckpt == "layers" else [])
    command += (["--quick"] if args.quick else []) + (["--threads", str(args.threads)] if args.threads else [])
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode:
        raise SystemExit(f"{config} ({LABELS[ckpt]}) failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def gib(n: float) -> str:
    return f"{n / GIB:.2f}"


def deeper(r: dict[str, Any], layers: int) -> float:
    """Activation bytes of configuration ``r`` (checkpointing on) with ``layers`` decoder layers instead of
    the measured ones: under checkpointing each decoder layer keeps only its input, so every layer adds
    the measured per-layer bytes (``routed pass/llm`` over the measured layer count)."""
    per_layer = r["saved_by_phase"].get("routed pass/llm", 0) / r["llm_layers"]
    return r["activation_bytes"] + (layers - r["llm_layers"]) * per_layer


def report(results: dict[tuple[str, str], dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    first = next(iter(results.values()))
    print(f"student: CLIP tower {first['tower_layers']} layers, LLM {first['llm_layers']} layers, "
          f"{'CI-size widths' if args.quick else 'real 7B widths'}; {first['tokens']} tokens per sample, batch "
          f"{args.batch}, {args.precision} on {args.device}, {first['threads']} threads, {args.steps} timed step(s) after a warm-up; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'configuration':<32}{'step s':>9}{'activations GiB':>17}{'peak GiB':>10}{'peak - built':>14}{'recomputed':>12}")
    for (config, ckpt), r in results.items():
        name = f"{'MoLA + KD' if config == 'kd' else 'plain LLaVA'}, {LABELS[ckpt]}"
        print(f"{name:<32}{statistics.median(r['step_seconds']):>9.1f}{gib(r['activation_bytes']):>17}"
              f"{gib(r['peak_rss_bytes']):>10}{gib(r['peak_rss_bytes'] - r['built_rss_bytes']):>14}{r['recomputed_layers']:>12}")
    for ckpt in ("off", "layers", "on"):
        kd = results[("kd", ckpt)]
        print(f"phases of one MoLA + KD step, {LABELS[ckpt]} (s): "
              + ", ".join(f"{k} {v:.2f}" for k, v in kd["phases"].items()))
        print(f"  activations by phase/layer region (GiB): "
              + ", ".join(f"{k} {gib(v)}" for k, v in sorted(kd["saved_by_phase"].items()) if v > GIB / 1000))

    def step(r: dict[str, Any]) -> float:
        return statistics.median(r["step_seconds"])

    def ratio(a: dict[str, Any], b: dict[str, Any], key: str = "activation_bytes") -> float:
        return round(a[key] / b[key], 4)

    def above_built(r: dict[str, Any]) -> int:
        return max(r["peak_rss_bytes"] - r["built_rss_bytes"], 1)

    kd, layers, plain = results[("kd", "on")], results[("kd", "layers")], results[("plain", "on")]
    key = {(c, k): f"{c}_ckpt_{k}" for c, k in results}
    deep = {name: deeper(r, FULL["7B"]["layers"]) for name, r in (("kd", kd), ("layers", layers), ("plain", plain))}
    print(f"extrapolated to the 7B's {FULL['7B']['layers']} decoder layers (each checkpointed layer keeps one more input "
          f"of the measured size; GiB): plain {gib(deep['plain'])}, MoLA + KD {gib(deep['kd'])} "
          f"({deep['kd'] / deep['plain']:.2f}x), layers only {gib(deep['layers'])} ({deep['layers'] / deep['plain']:.2f}x)")
    return {
        "activation_kd_vs_plain": ratio(kd, plain),
        "activation_kd_vs_plain_32_layers": round(deep["kd"] / deep["plain"], 4),
        "activation_kd_layers_only_vs_plain_32_layers": round(deep["layers"] / deep["plain"], 4),
        "step_kd_vs_plain": round(step(kd) / step(plain), 4),
        "recomputed_layers": kd["recomputed_layers"],
        "recomputed_layers_plain": plain["recomputed_layers"],
        "activation_kd_layers_only_vs_plain": ratio(layers, plain),
        "step_forced_ckpt_vs_layers_only": round(step(kd) / step(layers), 4),
        "peak_above_built_kd_vs_plain": round(above_built(kd) / above_built(plain), 4),
        "activation_gib": {key[k]: round(r["activation_bytes"] / GIB, 3) for k, r in results.items()},
        "peak_gib": {key[k]: round(r["peak_rss_bytes"] / GIB, 3) for k, r in results.items()},
        "peak_above_built_gib": {key[k]: round(above_built(r) / GIB, 3) for k, r in results.items()},
        "step_s": {key[k]: round(step(r), 2) for k, r in results.items()},
        "activation_kd_vs_plain_ckpt_off": ratio(results[("kd", "off")], results[("plain", "off")]),
        "tower_layers": first["tower_layers"], "llm_layers": first["llm_layers"], "tokens": first["tokens"],
        "batch": args.batch, "load_average": round(os.getloadavg()[0], 2),
    }


# -- the projection: full models on 8 GPUs in bf16, from the measured per-layer figures ----------
#: Full models: parameters (LLaVA-1.5 + MoLA parallel + KD heads), decoder layers, width, vocabulary.
FULL = {"7B": dict(params=7_062_902_784 + 12_595_344, heads=40_000_000, layers=32, width=4096, vocab=32_000, per_device=8),
        "13B": dict(params=13_350_839_296 + 12_595_344, heads=40_000_000, layers=40, width=5120, vocab=32_000, per_device=4)}
TOWER_LAYERS, TOWER_TOKENS, TOWER_WIDTH, TEACHERS, GPUS, TOKENS = 24, 577, 1024, 3, 8, 2048
#: Frozen teachers on every GPU: CLIP-L in fp32, ConvNeXt-XXL and EVA-02-L in bf16 (about).
TEACHER_BYTES = 0.30e9 * 4 + (0.85e9 + 0.30e9) * 2
#: Share of the fp32 activation bytes left under bf16 autocast (saved GEMM inputs in bf16; norms,
#: softmax and the fp32 residual stream not): an assumption, checkable with --device cuda --precision bf16.
BF16_SHARE = 0.6


def projection(off: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the projection table from the measured MoLA + KD run without checkpointing (``off``)."""
    saved, tokens = off["saved_by_phase"], off["tokens"]
    tower_layer = saved.get("routed pass/tower", 0) / off["tower_layers"]  # bytes per tower layer per image, fp32
    llm_token_layer = saved.get("routed pass/llm", 0) / off["llm_layers"] / tokens / LANGUAGE["hidden_size"]  # per token per width
    extras = sum(v for k, v in saved.items() if k.split("/")[0] in ("teachers", "scorer + losses"))
    rows = []
    for name, m in FULL.items():
        trainable = m["params"] + m["heads"]
        state = 16 * trainable  # fp32 weights, fp32 gradients, AdamW's two fp32 moments
        llm_layer = llm_token_layer * m["width"] * TOKENS
        logits = TOKENS * m["vocab"] * 8  # fp32 logits and their float copy for the loss
        off_sample = BF16_SHARE * (TOWER_LAYERS * (1 + TEACHERS) * tower_layer + m["layers"] * llm_layer) + logits + extras
        on_sample = checkpointed_bytes(m) + logits + extras
        # in the backward: one layer recomputed at a time, or one forced pass's layer inputs + one of its layers
        transient = max(BF16_SHARE * max(llm_layer, tower_layer), 4 * TOWER_LAYERS * TOWER_TOKENS * TOWER_WIDTH
                        + BF16_SHARE * tower_layer)
        for strategy, shard in (("DDP", 1), ("FSDP2", GPUS)):
            for ckpt in (False, True):
                acts = m["per_device"] * (on_sample + transient if ckpt else off_sample)
                rows.append(dict(model=name, strategy=strategy, ckpt=ckpt, per_device=m["per_device"],
                                 params=4 * trainable / shard, optimizer=12 * trainable / shard,
                                 teachers=TEACHER_BYTES, activations=acts,
                                 total=state / shard + TEACHER_BYTES + acts))
    return rows


def checkpointed_bytes(m: dict[str, Any]) -> float:
    """fp32 bytes MoLA + KD keeps per sample under checkpointing (the engine's default): each decoder
    layer's input, each tower layer's input in the routed pass, and each forced pass's output."""
    return 4 * ((TOWER_LAYERS + TEACHERS) * TOWER_TOKENS * TOWER_WIDTH + m["layers"] * TOKENS * m["width"])


def projected_ratio(off: dict[str, Any], model: str = "7B") -> float:
    """Projected activation memory of MoLA + KD over plain LLaVA, both with checkpointing, at full depth.

    Plain LLaVA's stage 2 keeps each decoder layer's input and the logits; MoLA + KD adds each
    tower layer's input in the routed pass (the tower trains), each forced pass's output, and what
    the teachers' aligners, the scorer and the losses keep (measured, ``off``).
    """
    m = FULL[model]
    extras = sum(v for k, v in off["saved_by_phase"].items() if k.split("/")[0] in ("teachers", "scorer + losses"))
    logits = TOKENS * m["vocab"] * 8
    base = 4 * m["layers"] * TOKENS * m["width"] + logits
    return (checkpointed_bytes(m) + logits + extras) / base


def print_projection(rows: list[dict[str, Any]]) -> None:
    print(f"PROJECTION (not a measurement): HAWAII stage 2 (every part trains) on {GPUS} GPUs, bf16 autocast over "
          f"fp32 weights, AdamW, {TOKENS} tokens per sample, GB per GPU")
    print("| model | strategy | checkpointing | batch / GPU | weights | grads + AdamW | teachers | activations | total |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['strategy']} | {'on' if r['ckpt'] else 'off'} | {r['per_device']} | "
              + " | ".join(f"{r[k] / 1e9:.1f}" for k in ("params", "optimizer", "teachers", "activations", "total")) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tower-layers", type=int, default=24, help="CLIP layers at real width (the real tower has 24)")
    parser.add_argument("--llm-layers", type=int, default=2, help="Llama layers at 4096 width (7B has 32)")
    parser.add_argument("--batch", type=int, default=1, help="samples per micro-batch")
    parser.add_argument("--steps", type=int, default=1, help="timed steps per configuration, after one warm-up")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="autocast precision of the student")
    parser.add_argument("--quick", action="store_true", help="CI-size widths (checks the script only)")
    parser.add_argument("--child", choices=sorted(RECIPES), help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--layers-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.checkpointing, args.root, args)))
        return
    with tempfile.TemporaryDirectory(prefix="kdkit-scale-") as tmp:
        root = write_models(Path(tmp), args)
        results = {(c, k): run_child(c, k, root, args) for c, k in CONFIGS}
    summary = report(results, args)
    if not args.quick:
        print_projection(projection(results[("kd", "off")]))
        summary["activation_kd_vs_plain_projected_7b"] = round(projected_ratio(results[("kd", "off")]), 4)
        print(f"projected activation memory, MoLA + KD over plain LLaVA at full 7B depth with checkpointing: "
              f"{summary['activation_kd_vs_plain_projected_7b']:.2f}x (a projection)")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

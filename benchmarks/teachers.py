"""What online teachers cost: tiny-teacher forward time and peak memory on CPU, and the FLOPs of
the real-size teachers at their recipe resolutions relative to CLIP ViT-L/14-336.

Run: ``python -m benchmarks.teachers``. Real-size models are built on the meta device and their
forward is counted by ``torch.utils.flop_counter`` (no weights, no compute, no download).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdkit import BuildContext
from kdkit.plugins import load_plugins

def _open_clip(name: str) -> Callable[[torch.Tensor], Any]:
    import open_clip

    return open_clip.create_model(name, pretrained=None, load_weights=False, pretrained_text=False,
                                   device="meta").visual


def _timm(name: str) -> Callable[[torch.Tensor], Any]:
    import timm

    return timm.create_model(name, pretrained=False)


def _sam(name: str) -> Callable[[torch.Tensor], Any]:
    from segment_anything import sam_model_registry

    return sam_model_registry[name]().image_encoder


def pix2struct_large_gflops(patches: int = 2048) -> float:
    """Analytic GFLOPs of the pix2struct-large vision encoder on ``patches`` patches (multiply-add = 2)."""
    width, layers, inner, d_ff, patch_dim = 1536, 18, 24 * 64, 3968, 16 * 16 * 3  # the public release's config
    linear = 4 * width * inner + 3 * width * d_ff  # q, k, v, o + gated-GELU MLP (wi_0, wi_1, wo)
    attention = 2 * patches * inner  # scores and weighted sum, per token
    return 2 * patches * (patch_dim * width + layers * (linear + attention)) / 1e9


#: Real-size teachers: (name, builder run on the meta device, input size at the recipe resolution).
REAL: list[tuple[str, Callable[[], Callable[[torch.Tensor], Any]], tuple[int, int]]] = [
    ("clip_vit_l14_336 (open_clip ViT-L-14-336)", lambda: _open_clip("ViT-L-14-336"), (336, 336)),
    ("convnext_xxlarge (open_clip)", lambda: _open_clip("convnext_xxlarge"), (1024, 1024)),
    ("eva02_large_patch14_448 (timm)", lambda: _timm("eva02_large_patch14_448"), (448, 448)),
    ("sam_vit_h (segment-anything)", lambda: _sam("vit_h"), (1024, 1024)),
]


def real_flops() -> list[dict[str, Any]]:
    """GFLOPs of one image through each real-size teacher, counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    rows = []
    for name, make, size in REAL:
        with torch.device("meta"):
            model = make()
            if isinstance(model, nn.Module):
                model.eval()
            counter = FlopCounterMode(display=False)
            with torch.no_grad(), counter:
                model(torch.empty(1, 3, *size))
        rows.append({"teacher": name, "resolution": f"{size[0]}x{size[1]}", "gflops": counter.get_total_flops() / 1e9})
    # Pix2Struct's attention mask makes data-dependent choices that cannot run on the meta device.
    rows.append({"teacher": "pix2struct_large (analytic)", "resolution": "2048 patches",
                 "gflops": pix2struct_large_gflops()})
    base = rows[0]["gflops"]
    for row in rows:
        row["vs_clip_l336"] = row["gflops"] / base
    return rows


def _peak_bytes(run: Callable[[], Any]) -> int:
    """Peak of the running sum of CPU allocations made during ``run()`` (torch profiler, approximate)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def tiny_costs(batch: int = 8, repeats: int = 5) -> list[dict[str, Any]]:
    """Forward time (median) and peak activation memory of every tiny teacher on CPU."""
    from kdkit_plugins.teachers import tiny

    registry = load_plugins(distributions={"kdkit"}).registry
    writers = {
        "open_clip (ViT)": lambda d: tiny.write_tiny_open_clip(d, "vit"),
        "open_clip (ConvNeXt)": lambda d: {**tiny.write_tiny_open_clip(d, "convnext"), "layer": -1},
        "hf_clip": tiny.write_tiny_hf_clip,
        "timm (EVA-02)": tiny.write_tiny_timm,
        "timm (ConvNeXt)": lambda d: tiny.write_tiny_timm(d, *tiny.TINY_CONVNEXT),
        "sam": tiny.write_tiny_sam,
        "pix2struct": tiny.write_tiny_pix2struct,
        "module (torchvision)": tiny.write_tiny_module,
    }
    images = torch.rand(batch, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, write in writers.items():
            teacher = registry.build("teacher", write(Path(tmp) / name.replace(" ", "_")), BuildContext(name=name))
            teacher(images)  # warm-up
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                teacher(images)
                times.append(time.perf_counter() - start)
            params = sum(p.numel() for p in teacher.parameters())
            rows.append({"teacher": name, "grid": str(teacher.out_spec), "params": params,
                         "forward_ms": 1e3 * sorted(times)[len(times) // 2],
                         "peak_mib": _peak_bytes(lambda t=teacher: t(images)) / 2**20})
    return rows


def main() -> None:
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    tiny_rows = tiny_costs()
    print(f"{'tiny teacher (CPU, batch 8, 64x64 view)':<42}{'grid':>10}{'params':>9}{'fwd ms':>9}{'peak MiB':>10}")
    for row in tiny_rows:
        print(f"{row['teacher']:<42}{row['grid']:>10}{row['params']:>9}{row['forward_ms']:>9.1f}{row['peak_mib']:>10.2f}")
    real_rows = real_flops()
    print(f"\n{'real-size teacher':<42}{'input':>11}{'GFLOPs':>10}{'x CLIP-L/336':>14}")
    for row in real_rows:
        print(f"{row['teacher']:<42}{row['resolution']:>11}{row['gflops']:>10.1f}{row['vs_clip_l336']:>14.2f}")
    summary = {
        "tiny_forward_ms": {r["teacher"]: round(r["forward_ms"], 2) for r in tiny_rows},
        "tiny_peak_mib": {r["teacher"]: round(r["peak_mib"], 3) for r in tiny_rows},
        "real_gflops": {r["teacher"]: round(r["gflops"], 1) for r in real_rows},
        "real_flops_vs_clip_l336": {r["teacher"]: round(r["vs_clip_l336"], 2) for r in real_rows},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

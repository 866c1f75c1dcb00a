"""Do the hawaii scorer's text rows point where the instruction points? ``python -m benchmarks.hawaii_text_space``.

Synthetic scenes of two regions (A: the first half of the m tokens, B: the rest; each region's tokens are
its own "look" plus noise). A student projector (a 2-layer GELU MLP, D -> E) stands for LLaVA's trained
projector: the word for a region is its look passed through the projector (LLaVA's stage 1 trains the
projector to put image features where the LLM reads the words that describe them). Sample 0's
instruction names A, sample 1's names B. A scene counts as "pointing right" when the instruction naming
A puts more score mass on A than the one naming B, and vice versa. Compared: ``text_space: projector``
(no new parameters) and ``text_space: paper`` (a fresh P_T, as in a run where detached scores leave it
untrained). Prints one JSON line last: the fraction pointing right and the mean mass shift, per space.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from types import SimpleNamespace

import torch
from torch import nn

from kdkit.interfaces import StepContext
from kdkit_plugins.losses._tiny_step import tiny_context
from kdkit_plugins.scorers.hawaii import HawaiiConfig, build


def scene(seed: int, width: int, text_dim: int, tokens: int) -> tuple[StepContext, nn.Module]:
    """A two-region step (two samples: instruction A, instruction B) and the projector it was made with."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    projector = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, text_dim))
    looks = torch.randn(2, width, generator=gen)
    grid = looks.repeat_interleave(tokens // 2, 0) + 0.3 * torch.randn(tokens, width, generator=gen)
    with torch.no_grad():
        words = projector(looks)
    words = words / words.norm(dim=-1, keepdim=True) * words.norm(dim=-1).mean()
    text = torch.stack([words[0].repeat(4, 1), words[1].repeat(4, 1)])
    step = StepContext(teacher_names=("t0",), teacher_aligned={"t0": grid[None].repeat(2, 1, 1)}, text=text,
                       text_mask=torch.ones(2, 4, dtype=torch.bool))
    return step, projector


def main(argv: list[str] | None = None) -> int:
    """Run the scenes for both text spaces; print a table and the JSON line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hawaii_text_space", description=__doc__)
    parser.add_argument("--scenes", type=int, default=200, help="random scenes (default 200)")
    parser.add_argument("--width", type=int, default=32, help="student width D (default 32)")
    parser.add_argument("--text-dim", type=int, default=48, help="instruction embedding width E (default 48)")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    half = 8
    results = {}
    for space in ("projector", "paper"):
        right, shifts = 0, []
        for seed in range(args.scenes):
            step, projector = scene(seed, args.width, args.text_dim, 2 * half)
            context = tiny_context(teachers=("t0",), grid=(2, half), width=args.width, text_dim=args.text_dim)
            context.extras["student"] = SimpleNamespace(projector=projector)
            torch.manual_seed(10_000 + seed)  # P_T's init in the paper space
            scores = build(HawaiiConfig(text_space=space), context)(step, "t0")
            on_a, on_b = scores[:, :half].sum(-1), scores[:, half:].sum(-1)
            right += bool(on_a[0] > on_a[1] and on_b[1] > on_b[0])
            shifts.append(float((on_a[0] - on_a[1]) + (on_b[1] - on_b[0])) / 2)
        results[space] = {"pointing_right": right / args.scenes, "mean_mass_shift": statistics.fmean(shifts)}
        print(f"{space:>9}: instruction points the right way in {right}/{args.scenes} scenes, "
              f"mean mass shift {results[space]['mean_mass_shift']:+.4f}")
    print(json.dumps({"benchmark": "hawaii_text_space", "scenes": args.scenes, "width": args.width,
                      "text_dim": args.text_dim, "loadavg": round(load, 2), **results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

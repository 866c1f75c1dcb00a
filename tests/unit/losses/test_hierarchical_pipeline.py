"""Teachers -> aligner chains -> hawaii scores -> FGKD + CGKD + load balance for 1 to 5 teachers of
different grids and widths: shapes, and which parameters receive gradients.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from einops import rearrange
from torch import nn

from kdkit import BuildContext, GridSpec, StepContext
from kdkit.align import build_aligner_chain
from kdkit.interfaces import RouterOutput
from kdkit_plugins.losses import cgkd, fgkd, load_balance
from kdkit_plugins.scorers import hawaii

STUDENT, TEXT_DIM, BATCH = GridSpec(3, 3, 10), 6, 2
# teacher: (patch size on a 18x18 image, width, aligner chain)
TEACHERS = {
    "clip": (3, 4, [{"kind": "pixel_unshuffle"}, {"kind": "mlp"}]),
    "convnext": (6, 7, [{"kind": "resample", "scale": 2}, {"kind": "pixel_unshuffle"}, {"kind": "mlp", "hidden": 5}]),
    "eva": (2, 3, [{"kind": "standardize"}, {"kind": "resample", "mode": "area"}, {"kind": "mlp"}]),
    "sam": (9, 5, [{"kind": "resample", "size": [9, 9]}, {"kind": "pixel_unshuffle"}, {"kind": "mlp"}]),
    "pix2struct": (6, 12, [{"kind": "mlp"}]),
}


class Student(nn.Module):
    """A patch embedding, one adapter per teacher, a general adapter and a router."""

    def __init__(self, teachers: tuple[str, ...]) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, STUDENT.channels, 6, stride=6)
        self.adapters = nn.ModuleDict({t: nn.Linear(STUDENT.channels, STUDENT.channels) for t in teachers})
        self.general = nn.Linear(STUDENT.channels, STUDENT.channels)
        self.router = nn.Linear(STUDENT.channels, len(teachers))

    def forward(self, images: torch.Tensor):
        base = rearrange(self.embed(images), "b c h w -> b (h w) c")
        probs = torch.softmax(self.router(base), -1)
        choice = probs.argmax(-1)
        experts = torch.stack([self.adapters[t](base) for t in self.adapters], -2)
        routed = base + self.general(base) + torch.gather(experts, 2, choice[..., None, None].expand(-1, -1, 1, base.shape[-1]))[:, :, 0]
        forced = {t: base + self.adapters[t](base) for t in self.adapters}
        router = RouterOutput("blocks.0", "teacher", probs.flatten(0, 1), choice.flatten())
        return routed, forced, [router]


def run(count: int, registry):
    names = tuple(TEACHERS)[:count]
    teachers = {t: nn.Conv2d(3, TEACHERS[t][1], TEACHERS[t][0], stride=TEACHERS[t][0]).requires_grad_(False) for t in names}
    context = BuildContext(teacher_names=names, student_spec=STUDENT, text_dim=TEXT_DIM)
    chains = {}
    for t in names:
        patch, width, blocks = TEACHERS[t]
        chains[t] = build_aligner_chain(registry, t, blocks, GridSpec(18 // patch, 18 // patch, width), context)
        context.teacher_specs[t], context.teacher_token_specs[t] = chains[t].out_spec, chains[t].token_spec
    scorer = hawaii.build(hawaii.HawaiiConfig(text_space="paper"), context)  # this student has no projector
    fine = fgkd.build(fgkd.FgkdConfig(), dataclasses.replace(context, name="fine"))
    coarse = cgkd.build(cgkd.CgkdConfig(), dataclasses.replace(context, name="coarse"))
    balance = load_balance.build(load_balance.LoadBalanceConfig(), dataclasses.replace(context, name="balance"))
    student = Student(names)

    images = torch.rand(BATCH, 3, 18, 18)
    step = StepContext(teacher_names=names, text=torch.randn(BATCH, 4, TEXT_DIM), text_mask=torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]]).bool())
    for t in names:
        with torch.no_grad():
            step.teacher_grids[t] = rearrange(teachers[t](images), "b c h w -> b h w c")
        step.teacher_tokens[t], step.teacher_aligned[t] = chains[t](step.teacher_grids[t])
    step.student_routed, step.student_forced, step.routers = student(images)
    step.scores = {t: scorer(step, t) for t in names}
    losses = {"fine": fine(step), "coarse": coarse(step), "balance": balance(step)}
    (0.5 * (losses["fine"] + losses["coarse"]) + 0.05 * losses["balance"]).backward()
    return names, step, losses, {"teachers": teachers, "chains": chains, "scorer": scorer, "coarse": coarse, "student": student}


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5])
def test_shapes_for_one_to_five_teachers(registry, count: int) -> None:
    names, step, losses, _ = run(count, registry)
    for t in names:
        assert step.teacher_aligned[t].shape == (BATCH, STUDENT.tokens, STUDENT.channels)
        assert step.teacher_tokens[t].shape[:2] == (BATCH, STUDENT.tokens)
        assert step.scores[t].shape == (BATCH, STUDENT.tokens)
        assert torch.allclose(step.scores[t].sum(-1), torch.ones(BATCH))
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())


def has_grad(module: nn.Module) -> bool:
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_gradients_reach_projections_and_student_but_never_teachers_or_detached_scorers(registry) -> None:
    names, step, _, parts = run(3, registry)
    for t in names:
        assert all(p.grad is None for p in parts["teachers"][t].parameters())
        assert has_grad(parts["chains"][t])  # P_i trains (FGKD target and CGKD input side)
        assert has_grad(parts["student"].adapters[t])
    assert has_grad(parts["coarse"].summarizer)
    assert has_grad(parts["student"].embed) and has_grad(parts["student"].general)
    assert has_grad(parts["student"].router)  # from the load-balance term
    assert all(p.grad is None for p in parts["scorer"].parameters())  # scores are detached

"""hawaii scorer against s_i = mean_rows(softmax([Î_i ; T̂] Î_iᵀ / √D)) written out per sample in float64, in both
text spaces (the paper's P_T and the student's own projector); the text rows point where the instruction points."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from kdkit.errors import KdkitError
from kdkit_plugins.losses._tiny_step import tiny_context, tiny_step
from kdkit_plugins.scorers.hawaii import HawaiiConfig, build


def mlp_reference(mlp, x: torch.Tensor) -> torch.Tensor:
    hidden = x @ mlp.fc1.weight.T + mlp.fc1.bias
    return 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2))) @ mlp.fc2.weight.T + mlp.fc2.bias


def reference(scorer, step, teacher: str) -> torch.Tensor:
    rows = []
    for b in range(step.teacher_aligned[teacher].shape[0]):
        tokens = step.teacher_aligned[teacher][b]
        if teacher in scorer.token_projections:
            tokens = mlp_reference(scorer.token_projections[teacher], tokens)
        queries = tokens
        if step.text is not None and step.text.shape[1]:
            text = mlp_reference(scorer.text_projection, step.text[b][step.text_mask[b]])
            queries = torch.cat([tokens, text])
        attention = torch.softmax(queries @ tokens.T / math.sqrt(tokens.shape[-1]), dim=1)
        rows.append(attention.mean(0))
    return torch.stack(rows)


def with_projector(context, seed: int = 0):
    """``context`` whose student has a float64 projector from the student width into the text width."""
    torch.manual_seed(seed)
    projector = nn.Sequential(nn.Linear(context.student_spec.channels, 16), nn.GELU(), nn.Linear(16, context.text_dim))
    return dataclasses.replace(context, extras={**context.extras, "student": SimpleNamespace(projector=projector.double())})


def double_step(**kwargs):
    context = tiny_context(**kwargs)
    step = tiny_step(context, text_len=6)
    step.teacher_aligned = {t: x.double() for t, x in step.teacher_aligned.items()}
    step.text = step.text.double() if step.text is not None else None
    return context, step


@pytest.mark.parametrize("project_tokens", [False, True])
def test_scores_match_the_formula_with_padded_text(project_tokens: bool) -> None:
    context, step = double_step()
    scorer = build(HawaiiConfig(project_tokens=project_tokens, hidden=5, text_space="paper"), context).double()
    for teacher in context.teacher_names:
        scores = scorer(step, teacher)
        assert torch.allclose(scores, reference(scorer, step, teacher), atol=1e-6)
        assert torch.allclose(scores.sum(-1), torch.ones(2, dtype=torch.float64), atol=1e-12)


def test_padded_text_rows_are_ignored() -> None:
    context, step = double_step()
    scorer = build(HawaiiConfig(text_space="paper"), context).double()
    before = scorer(step, "t0")
    step.text[1, 3:] = 1e3  # the second sample's padding (mask False from position 3)
    assert torch.equal(scorer(step, "t0"), before)
    step.text[1, 0] = 1e3  # a real instruction token does matter
    assert not torch.allclose(scorer(step, "t0")[1], before[1])


@pytest.mark.parametrize("space", ["paper", "projector"])
@pytest.mark.parametrize("case", ["all_padding", "empty", "none", "use_text_false"])
def test_missing_instruction_falls_back_to_self_similarity(case: str, space: str) -> None:
    context, step = double_step()
    context = with_projector(context)
    scorer = build(HawaiiConfig(text_space=space, use_text=case != "use_text_false"), context).double()
    tokens = step.teacher_aligned["t1"]
    expected = torch.softmax(tokens @ tokens.transpose(1, 2) / math.sqrt(tokens.shape[-1]), -1).mean(1)
    if case == "all_padding":
        step.text_mask[:] = False
    elif case == "empty":
        step.text, step.text_mask = step.text[:, :0], step.text_mask[:, :0]
    elif case == "none":
        step.text, step.text_mask = None, None
    scores = scorer(step, "t1")
    assert torch.isfinite(scores).all() and torch.allclose(scores, expected, atol=1e-12)


def test_scores_are_detached_by_default_and_trainable_on_request() -> None:
    context, step = double_step()
    step.teacher_aligned["t0"].requires_grad_(True)
    assert not build(HawaiiConfig(text_space="paper"), context).double()(step, "t0").requires_grad
    scorer = build(HawaiiConfig(detach=False, text_space="paper"), context).double()
    (scorer(step, "t0") * torch.randn(2, 6, dtype=torch.float64)).sum().backward()
    assert scorer.text_projection.fc1.weight.grad is not None
    assert step.teacher_aligned["t0"].grad is not None


def test_text_embeddings_never_receive_gradients() -> None:
    context, step = double_step()
    step.text.requires_grad_(True)
    scorer = build(HawaiiConfig(detach=False, text_space="paper"), context).double()
    scorer(step, "t0").sum().backward()
    assert step.text.grad is None


def test_width_mismatch_and_unknown_teacher_are_clear_errors() -> None:
    context, step = double_step()
    scorer = build(HawaiiConfig(text_space="paper"), context).double()
    step.teacher_aligned["t0"] = torch.randn(2, 6, 3, dtype=torch.float64)
    with pytest.raises(KdkitError, match="teacher 't0' tokens are 3 wide, not the student width 8; end its aligner chain with an mlp"):
        scorer(step, "t0")
    with pytest.raises(KdkitError, match=r"no aligned tokens for teacher 'sam' \(have: t0, t1\)"):
        scorer(step, "sam")


def test_student_without_text_builds_a_text_free_scorer() -> None:
    context, step = double_step(text_dim=None)
    scorer = build(HawaiiConfig(text_space="paper"), context)
    assert scorer.text_projection is None
    step.text = None
    assert scorer.double()(step, "t0").shape == (2, 6)


def projector_reference(projector, step, teacher: str) -> torch.Tensor:
    rows = []
    for b in range(step.teacher_aligned[teacher].shape[0]):
        tokens = step.teacher_aligned[teacher][b]
        self_rows = torch.softmax(tokens @ tokens.T / math.sqrt(tokens.shape[-1]), dim=1)
        keys = projector(tokens)
        text = step.text[b][step.text_mask[b]]
        text_rows = torch.softmax(text @ keys.T / math.sqrt(keys.shape[-1]), dim=1)
        rows.append(torch.cat([self_rows, text_rows]).mean(0))
    return torch.stack(rows)


def test_projector_space_matches_its_formula_and_adds_no_parameters() -> None:
    context, step = double_step()
    context = with_projector(context)
    scorer = build(HawaiiConfig(), context).double()
    projector = context.extras["student"].projector
    assert list(scorer.parameters()) == [] and scorer.state_dict() == {}  # the projector stays the student's
    for teacher in context.teacher_names:
        with torch.no_grad():
            expected = projector_reference(projector, step, teacher)
        assert torch.allclose(scorer(step, teacher), expected, atol=1e-12)


def test_projector_gets_no_gradient_from_detached_scores() -> None:
    context, step = double_step()
    context = with_projector(context)
    step.teacher_aligned["t0"].requires_grad_(True)
    scores = build(HawaiiConfig(), context).double()(step, "t0")
    assert not scores.requires_grad
    assert all(p.grad is None for p in context.extras["student"].projector.parameters())


def regions_step(context, seed: int):
    """Tokens of two regions (A: tokens 0-2, B: 3-5) and the projector's images of each region's look."""
    gen = torch.Generator().manual_seed(seed)
    looks = torch.randn(2, context.student_spec.channels, generator=gen, dtype=torch.float64)
    tokens = looks.repeat_interleave(3, 0) + 0.3 * torch.randn(6, context.student_spec.channels, generator=gen,
                                                               dtype=torch.float64)
    _, step = double_step()
    step.teacher_aligned = {"t0": tokens[None].repeat(2, 1, 1)}
    step.text_mask = torch.ones(2, 3, dtype=torch.bool)
    return step, looks, gen


@pytest.mark.parametrize("seed", range(10))
def test_scores_move_towards_the_region_the_instruction_names(seed: int) -> None:
    """A word's embedding lies where the (trained) projector sends what it describes: sample 0 asks about
    region A, sample 1 about region B; each puts more mass on its own region than the other does."""
    context = with_projector(double_step()[0], seed)
    projector = context.extras["student"].projector
    step, looks, gen = regions_step(context, seed)
    with torch.no_grad():
        words = projector(looks)  # (2, E): the word for A, the word for B
    words = words / words.norm(dim=-1, keepdim=True) * 3.0
    step.text = torch.stack([words[0].repeat(3, 1), words[1].repeat(3, 1)]) + 0.05 * torch.randn(
        2, 3, words.shape[-1], generator=gen, dtype=torch.float64)
    scores = build(HawaiiConfig(), context).double()(step, "t0")
    on_a = scores[:, :3].sum(-1)
    assert on_a[0] > on_a[1] and scores[1, 3:].sum() > scores[0, 3:].sum()


def test_projector_space_needs_a_student_projector() -> None:
    context, _ = double_step()
    context = dataclasses.replace(context, extras={"student": SimpleNamespace()})
    with pytest.raises(KdkitError, match=r"^hawaii scorer: text_space: projector needs a student with a `projector` "
                                         r"\(its map from features into the instruction embeddings\); this student "
                                         r"has none, set text_space: paper$"):
        build(HawaiiConfig(), context)
    assert build(HawaiiConfig(use_text=False), context).text_projection is None  # no text: nothing needed

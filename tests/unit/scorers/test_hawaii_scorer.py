"""hawaii scorer against s_i = mean_rows(softmax([Î_i ; T̂] Î_iᵀ / √D)) written out per sample in float64."""

from __future__ import annotations

import math

import pytest
import torch

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


def double_step(**kwargs):
    context = tiny_context(**kwargs)
    step = tiny_step(context, text_len=6)
    step.teacher_aligned = {t: x.double() for t, x in step.teacher_aligned.items()}
    step.text = step.text.double() if step.text is not None else None
    return context, step


@pytest.mark.parametrize("project_tokens", [False, True])
def test_scores_match_the_formula_with_padded_text(project_tokens: bool) -> None:
    context, step = double_step()
    scorer = build(HawaiiConfig(project_tokens=project_tokens, hidden=5), context).double()
    for teacher in context.teacher_names:
        scores = scorer(step, teacher)
        assert torch.allclose(scores, reference(scorer, step, teacher), atol=1e-6)
        assert torch.allclose(scores.sum(-1), torch.ones(2, dtype=torch.float64), atol=1e-12)


def test_padded_text_rows_are_ignored() -> None:
    context, step = double_step()
    scorer = build(HawaiiConfig(), context).double()
    before = scorer(step, "t0")
    step.text[1, 3:] = 1e3  # the second sample's padding (mask False from position 3)
    assert torch.equal(scorer(step, "t0"), before)
    step.text[1, 0] = 1e3  # a real instruction token does matter
    assert not torch.allclose(scorer(step, "t0")[1], before[1])


@pytest.mark.parametrize("case", ["all_padding", "empty", "none"])
def test_missing_instruction_falls_back_to_self_similarity(case: str) -> None:
    context, step = double_step()
    scorer = build(HawaiiConfig(), context).double()
    tokens = step.teacher_aligned["t1"]
    expected = torch.softmax(tokens @ tokens.transpose(1, 2) / math.sqrt(tokens.shape[-1]), -1).mean(1)
    if case == "all_padding":
        step.text_mask[:] = False
    elif case == "empty":
        step.text, step.text_mask = step.text[:, :0], step.text_mask[:, :0]
    else:
        step.text, step.text_mask = None, None
    scores = scorer(step, "t1")
    assert torch.isfinite(scores).all() and torch.allclose(scores, expected, atol=1e-12)


def test_scores_are_detached_by_default_and_trainable_on_request() -> None:
    context, step = double_step()
    step.teacher_aligned["t0"].requires_grad_(True)
    assert not build(HawaiiConfig(), context).double()(step, "t0").requires_grad
    scorer = build(HawaiiConfig(detach=False), context).double()
    (scorer(step, "t0") * torch.randn(2, 6, dtype=torch.float64)).sum().backward()
    assert scorer.text_projection.fc1.weight.grad is not None
    assert step.teacher_aligned["t0"].grad is not None


def test_text_embeddings_never_receive_gradients() -> None:
    context, step = double_step()
    step.text.requires_grad_(True)
    scorer = build(HawaiiConfig(detach=False), context).double()
    scorer(step, "t0").sum().backward()
    assert step.text.grad is None


def test_width_mismatch_and_unknown_teacher_are_clear_errors() -> None:
    context, step = double_step()
    scorer = build(HawaiiConfig(), context).double()
    step.teacher_aligned["t0"] = torch.randn(2, 6, 3, dtype=torch.float64)
    with pytest.raises(KdkitError, match="teacher 't0' tokens are 3 wide, not the student width 8; end its aligner chain with an mlp"):
        scorer(step, "t0")
    with pytest.raises(KdkitError, match=r"no aligned tokens for teacher 'sam' \(have: t0, t1\)"):
        scorer(step, "sam")


def test_student_without_text_builds_a_text_free_scorer() -> None:
    context, step = double_step(text_dim=None)
    scorer = build(HawaiiConfig(), context)
    assert scorer.text_projection is None
    step.text = None
    assert scorer.double()(step, "t0").shape == (2, 6)

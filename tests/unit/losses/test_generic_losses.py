"""feature, kl, ce and task losses against float64 references, with padding and clear errors."""

from __future__ import annotations

import pytest
import torch

from kdkit.errors import KdkitError
from kdkit_plugins.losses import feature, logits, task
from kdkit_plugins.losses._tiny_step import tiny_context, tiny_step


def step64(context):
    step = tiny_step(context)
    step.student_routed = step.student_routed.double()
    step.student_forced = {t: x.double() for t, x in step.student_forced.items()}
    step.teacher_aligned = {t: x.double() for t, x in step.teacher_aligned.items()}
    return step


def distance(metric: str, s: torch.Tensor, t: torch.Tensor, beta: float) -> torch.Tensor:
    if metric == "mse":
        return ((s - t) ** 2).mean()
    if metric == "cosine":
        return (1 - (s * t).sum(-1) / (s.norm(dim=-1) * t.norm(dim=-1))).mean()
    diff = (s - t).abs()
    return torch.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta).mean()


@pytest.mark.parametrize("metric", ["mse", "cosine", "smooth_l1"])
@pytest.mark.parametrize("student", ["routed", "forced"])
def test_feature_metrics(metric: str, student: str) -> None:
    context = tiny_context()
    step = step64(context)
    term = feature.build(feature.FeatureConfig(metric=metric, student=student, beta=0.7), context)
    pick = (lambda t: step.student_routed) if student == "routed" else (lambda t: step.student_forced[t])
    expected = sum(distance(metric, pick(t), step.teacher_aligned[t], 0.7) for t in ("t0", "t1")) / 2
    assert abs(term(step).item() - expected.item()) < 1e-6


def test_feature_scorer_weights_pick_tokens() -> None:
    """token_weights: scorer weighs each token's distance by step.scores (MoVE-KD style)."""
    context = tiny_context()
    step = step64(context)
    batch, tokens = step.student_routed.shape[:2]
    weights = torch.rand(batch, tokens, dtype=torch.float64).softmax(-1)
    step.scores = {"t0": weights, "t1": torch.zeros(batch, tokens, dtype=torch.float64)}
    step.scores["t1"][:, 2] = 1.0  # all weight on token 2
    term = feature.build(feature.FeatureConfig(token_weights="scorer"), context)
    per_token = {t: ((step.student_routed - step.teacher_aligned[t]) ** 2).mean(-1) for t in ("t0", "t1")}
    expected = ((weights * per_token["t0"]).sum(-1).mean() + per_token["t1"][:, 2].mean()) / 2
    assert abs(term(step).item() - expected.item()) < 1e-9
    step.scores = {"t0": weights}
    with pytest.raises(KdkitError, match=r"needs step.scores\['t1'\]"):
        term(step)


def test_feature_detach_target_stops_gradients() -> None:
    context = tiny_context()
    step = tiny_step(context)
    step.teacher_aligned["t0"].requires_grad_(True)
    step.student_routed.requires_grad_(True)
    feature.build(feature.FeatureConfig(teachers=["t0"], detach_target=True), context)(step).backward()
    assert step.teacher_aligned["t0"].grad is None and step.student_routed.grad is not None


def test_feature_tokens_target_of_other_width_is_a_clear_error() -> None:
    context = tiny_context()
    with pytest.raises(KdkitError, match="student features .* and target .* differ"):
        feature.build(feature.FeatureConfig(target="tokens"), context)(tiny_step(context))


def test_kl_with_temperature_and_padded_positions() -> None:
    context = tiny_context(teachers=("a", "b"))
    step = tiny_step(context)
    step.logits = torch.randn(2, 4, 5, dtype=torch.float64)
    step.teacher_logits = {t: torch.randn(2, 4, 5, dtype=torch.float64) for t in ("a", "b")}
    step.labels = torch.tensor([[1, 2, -100, -100], [0, 1, 2, 3]])
    temperature = 2.0
    expected = 0.0
    for t in ("a", "b"):
        total, count = 0.0, 0
        for b in range(2):
            for i in range(4):
                if step.labels[b, i] == -100:
                    continue
                p = torch.softmax(step.teacher_logits[t][b, i] / temperature, -1)
                q = torch.softmax(step.logits[b, i] / temperature, -1)
                total, count = total + (p * (p.log() - q.log())).sum(), count + 1
        expected = expected + temperature**2 * total / count
    term = logits.build_kl(logits.KlConfig(temperature=temperature), context)
    assert abs(term(step).item() - (expected / 2).item()) < 1e-6
    step.teacher_logits["a"] = step.logits.clone()
    step.teacher_logits["b"] = step.logits.clone()
    assert abs(term(step).item()) < 1e-12


def test_ce_with_ignore_index_and_smoothing() -> None:
    context = tiny_context()
    step = tiny_step(context)
    step.logits = torch.randn(3, 4, dtype=torch.float64)
    step.labels = torch.tensor([2, -100, 0])
    smoothing = 0.2
    expected = 0.0
    for b in (0, 2):
        logp = torch.log_softmax(step.logits[b], -1)
        target = torch.full((4,), smoothing / 4, dtype=torch.float64)
        target[step.labels[b]] += 1 - smoothing
        expected = expected - (target * logp).sum()
    term = logits.build_ce(logits.CeConfig(label_smoothing=smoothing), context)
    assert abs(term(step).item() - (expected / 2).item()) < 1e-6


def test_logit_losses_fail_clearly_without_their_inputs() -> None:
    context = tiny_context(name="kd")
    step = tiny_step(context)
    step.teacher_logits = {}
    with pytest.raises(KdkitError, match=r"step.teacher_logits\['t0'\], but teacher 't0' is missing"):
        logits.build_kl(logits.KlConfig(), context)(step)
    step.labels = None
    with pytest.raises(KdkitError, match="needs step.labels, but the batch has no labels"):
        logits.build_ce(logits.CeConfig(), context)(step)


def test_task_loss_is_passed_through_or_fails_clearly() -> None:
    context = tiny_context(name="lm")
    step = tiny_step(context)
    term = task.build(task.TaskConfig(), context)
    assert term(step) is step.task_loss
    step.task_loss = None
    with pytest.raises(KdkitError, match="loss 'lm': the student returned no task loss"):
        term(step)
    step.task_loss = torch.tensor(float("nan"))
    with pytest.raises(KdkitError, match="loss 'lm': step.task_loss has non-finite values"):
        term(step)

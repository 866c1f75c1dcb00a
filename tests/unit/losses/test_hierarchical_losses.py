"""FGKD, CGKD and load balance against float64 references written from the formulas."""

from __future__ import annotations

import math

import pytest
import torch

from kdkit.errors import KdkitError
from kdkit_plugins.losses import cgkd, fgkd, load_balance
from kdkit_plugins.losses._tiny_step import tiny_context, tiny_step


def double(step):
    for field in ("teacher_tokens", "teacher_aligned", "student_forced", "scores"):
        setattr(step, field, {t: x.double() for t, x in getattr(step, field).items()})
    step.student_routed = step.student_routed.double()
    return step


def mlp(module, x):
    hidden = x @ module.fc1.weight.T + module.fc1.bias
    return 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2))) @ module.fc2.weight.T + module.fc2.bias


def fgkd_reference(step, teachers, weights, target_of, student_of=lambda t, x: x):
    """(1/N_t) Σ_i Σ_k s_i[k] · mean_c (I_i^S[k] − Î_i^T[k])², averaged over the batch, loop by loop."""
    total = 0.0
    for t in teachers:
        student, target = student_of(t, step.student_forced[t]), target_of(t)
        batch, m, channels = target.shape
        per_sample = []
        for b in range(batch):
            acc = 0.0
            for k in range(m):
                acc = acc + weights(t)[b, k] * sum((student[b, k, c] - target[b, k, c]) ** 2 for c in range(channels)) / channels
            per_sample.append(acc)
        total = total + sum(per_sample) / batch
    return total / len(teachers)


def standardized(x, eps=1e-6):
    flat = x.reshape(-1, x.shape[-1])
    return (x - flat.mean(0)) / (flat.var(0, unbiased=False) + eps).sqrt()


@pytest.mark.parametrize("scoring", ["scorer", "none"])
def test_fgkd_paper_form(scoring: str) -> None:
    context = tiny_context(teachers=("a", "b", "c"))
    step = double(tiny_step(context))
    loss = fgkd.build(fgkd.FgkdConfig(scoring=scoring), context)(step)
    uniform = lambda t: torch.full((2, 6), 1 / 6, dtype=torch.float64)  # noqa: E731
    weights = (lambda t: step.scores[t]) if scoring == "scorer" else uniform
    expected = fgkd_reference(step, ("a", "b", "c"), weights, lambda t: step.teacher_aligned[t])
    assert abs(loss.item() - expected.item()) < 1e-6


def test_fgkd_uses_uniform_weights_for_a_teacher_without_scores_and_a_teacher_subset() -> None:
    context = tiny_context(teachers=("a", "b", "c"))
    step = double(tiny_step(context))
    del step.scores["c"]
    loss = fgkd.build(fgkd.FgkdConfig(teachers=["c", "a"]), context)(step)
    weights = lambda t: step.scores.get(t, torch.full((2, 6), 1 / 6, dtype=torch.float64))  # noqa: E731
    expected = fgkd_reference(step, ("c", "a"), weights, lambda t: step.teacher_aligned[t])
    assert abs(loss.item() - expected.item()) < 1e-6


def test_fgkd_standardize_and_student_heads_guards() -> None:
    context = tiny_context()
    step = double(tiny_step(context))
    weights = lambda t: step.scores[t]  # noqa: E731
    loss = fgkd.build(fgkd.FgkdConfig(guard="standardize"), context)(step)
    expected = fgkd_reference(step, ("t0", "t1"), weights, lambda t: standardized(step.teacher_aligned[t]))
    assert abs(loss.item() - expected.item()) < 1e-6
    term = fgkd.build(fgkd.FgkdConfig(guard="student_heads", head_hidden=4), context).double()
    assert term.heads["t1"].fc2.out_features == context.teacher_token_specs["t1"].channels
    expected = fgkd_reference(step, ("t0", "t1"), weights, lambda t: step.teacher_tokens[t], lambda t, x: mlp(term.heads[t], x))
    assert abs(term(step).item() - expected.item()) < 1e-6


def test_cgkd_matches_mse_against_summarized_concatenation_in_recipe_order() -> None:
    context = tiny_context(teachers=("a", "b", "c"), raw_widths=(1, 2, 3))
    step = double(tiny_step(context))
    term = cgkd.build(cgkd.CgkdConfig(head_hidden=5), context).double()
    assert term.summarizer.fc1.in_features == 4 * (1 + 2 + 3)
    concat = torch.cat([step.teacher_tokens[t] for t in ("a", "b", "c")], -1)
    expected = ((step.student_routed - mlp(term.summarizer, concat)) ** 2).mean()
    assert abs(term(step).item() - expected.item()) < 1e-6
    step.teacher_tokens = {t: step.teacher_tokens[t] for t in ("c", "b", "a")}  # dict order must not matter
    assert abs(term(step).item() - expected.item()) < 1e-6
    heads = cgkd.build(cgkd.CgkdConfig(guard="student_heads"), context).double()
    expected = ((mlp(heads.head, step.student_routed) - concat) ** 2).mean()
    assert heads.summarizer is None and abs(heads(step).item() - expected.item()) < 1e-6
    standard = cgkd.build(cgkd.CgkdConfig(guard="standardize"), context).double()
    expected = ((step.student_routed - standardized(mlp(standard.summarizer, concat))) ** 2).mean()
    assert abs(standard(step).item() - expected.item()) < 1e-6


def test_load_balance_reference_and_balanced_value() -> None:
    context = tiny_context(teachers=("a", "b", "c"))
    step = tiny_step(context)
    for r in step.routers:
        r.probs = r.probs.double()
    expected = []
    for r in step.routers:
        n, e = r.probs.shape
        f = [sum(1 for i in range(n) if r.choice[i] == j) / n for j in range(e)]
        p = [r.probs[:, j].sum() / n for j in range(e)]
        expected.append(e * sum(fj * pj for fj, pj in zip(f, p)))
    term = load_balance.build(load_balance.LoadBalanceConfig(), context)
    assert abs(term(step).item() - (sum(expected) / len(expected)).item()) < 1e-6
    teacher_only = load_balance.build(load_balance.LoadBalanceConfig(groups=["teacher"]), context)
    assert abs(teacher_only(step).item() - (sum(expected[0::2]) / 2).item()) < 1e-6
    for r in step.routers:  # perfectly balanced: uniform probabilities, every expert chosen equally
        n, e = r.probs.shape
        r.probs, r.choice = torch.full((n, e), 1 / e), torch.arange(n) % e
    assert abs(term(step).item() - 1.0) < 1e-6


def test_load_balance_without_routers_is_a_clear_error() -> None:
    context = tiny_context()
    step = tiny_step(context)
    with pytest.raises(KdkitError, match=r"in groups \['expert'\] \(groups seen: \['general', 'teacher'\]\)"):
        load_balance.build(load_balance.LoadBalanceConfig(groups=["expert"]), context)(step)
    step.routers = []
    with pytest.raises(KdkitError, match="found no router outputs; the student needs a routed adapter"):
        load_balance.build(load_balance.LoadBalanceConfig(), context)(step)


def test_missing_teachers_fail_clearly() -> None:
    context = tiny_context(teachers=("clip", "sam"), name="fine")
    with pytest.raises(KdkitError, match=r"loss 'fine' names teachers that are not in the recipe: eva \(teachers: clip, sam\)"):
        fgkd.build(fgkd.FgkdConfig(teachers=["eva", "sam"]), context)
    step = tiny_step(context)
    del step.student_forced["sam"]
    with pytest.raises(KdkitError, match=r"step.student_forced\['sam'\], but teacher 'sam' is missing \(step.student_forced has: clip\)"):
        fgkd.build(fgkd.FgkdConfig(), context)(step)
    del step.teacher_tokens["clip"]
    with pytest.raises(KdkitError, match=r"loss 'fine' needs step.teacher_tokens\['clip'\]"):
        cgkd.build(cgkd.CgkdConfig(), context)(step)


def test_non_finite_features_name_the_teacher_and_term() -> None:
    context = tiny_context(teachers=("clip", "sam"), name="fine")
    step = tiny_step(context)
    step.teacher_aligned["sam"][0, 1, 2] = float("nan")
    with pytest.raises(KdkitError, match=r"loss 'fine': target of teacher 'sam' has non-finite values"):
        fgkd.build(fgkd.FgkdConfig(), context)(step)
    context.name = "coarse"
    step.teacher_tokens["clip"][1, 0, 0] = float("inf")
    with pytest.raises(KdkitError, match=r"loss 'coarse': concatenated teacher_tokens has non-finite values"):
        cgkd.build(cgkd.CgkdConfig(), context)(step)


def test_width_mismatch_in_paper_form_points_to_the_fix() -> None:
    context = tiny_context()
    step = tiny_step(context)
    step.teacher_aligned["t0"] = torch.randn(2, 6, 5)
    with pytest.raises(KdkitError, match="teacher 't0': student features .* differ; end the teacher's chain with an mlp or set guard: student_heads"):
        fgkd.build(fgkd.FgkdConfig(), context)(step)

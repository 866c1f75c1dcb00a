"""The collapse guard is measurable: with a student that cannot predict its teacher, the paper's form
(a) still drives its loss towards 0 by collapsing the learned teacher-side target; standardized targets
(b) and student-side heads (c) keep the loss at the irreducible error.
"""

from __future__ import annotations

import pytest
import torch

from kdkit import StepContext
from kdkit_plugins.aligners.mlp import GeluMLP
from kdkit_plugins.losses import fgkd
from kdkit_plugins.losses._tiny_step import tiny_context

BATCH, GRID, WIDTH, TEACHER_WIDTH = 8, (4, 4), 8, 6


def setup(guard: str):
    torch.manual_seed(0)
    context = tiny_context(teachers=("t",), grid=GRID, width=WIDTH, raw_widths=(TEACHER_WIDTH // 4 + 1,))
    context.teacher_token_specs["t"] = context.teacher_token_specs["t"].__class__(*GRID, TEACHER_WIDTH)
    loss = fgkd.build(fgkd.FgkdConfig(guard=guard, scoring="none"), context)
    projection = GeluMLP(TEACHER_WIDTH, WIDTH)  # the paper's teacher-side P_i
    student = torch.nn.Linear(4, WIDTH)  # sees only its own input, independent of the teacher
    m = GRID[0] * GRID[1]
    data = [(torch.randn(BATCH, m, TEACHER_WIDTH), torch.randn(BATCH, m, 4)) for _ in range(4)]
    return loss, projection, student, data


def step_of(projection, student, tokens, inputs) -> StepContext:
    return StepContext(
        teacher_names=("t",),
        teacher_tokens={"t": tokens},
        teacher_aligned={"t": projection(tokens)},
        student_forced={"t": student(inputs)},
    )


def train(guard: str, steps: int = 60) -> tuple[float, float, float, float]:
    """Initial and final loss, and the target's variance over tokens before and after."""
    loss, projection, student, data = setup(guard)
    params = [*projection.parameters(), *student.parameters(), *loss.parameters()]
    optimizer = torch.optim.Adam(params, lr=3e-2)

    def evaluate() -> tuple[float, float]:
        with torch.no_grad():
            values = [loss(step_of(projection, student, *batch)).item() for batch in data]
            variance = torch.cat([projection(tokens) for tokens, _ in data]).flatten(0, 1).var(0).mean().item()
        return sum(values) / len(values), variance

    first, first_variance = evaluate()
    for i in range(steps):
        optimizer.zero_grad()
        loss(step_of(projection, student, *data[i % len(data)])).backward()
        optimizer.step()
    last, last_variance = evaluate()
    return first, last, first_variance, last_variance


def test_paper_form_admits_a_collapsed_solution_that_lowers_the_loss() -> None:
    first, last, first_variance, last_variance = train("none")
    assert last < 0.05 * first  # the loss "improves" twenty-fold...
    assert last_variance < 0.05 * first_variance  # ...because the target stopped carrying information


@pytest.mark.parametrize("guard", ["standardize", "student_heads"])
def test_guards_keep_the_loss_at_the_irreducible_error(guard: str) -> None:
    first, last, _, _ = train(guard)
    # the student cannot predict its (unit-variance) target: the best it can do is its mean, loss ~ 1
    assert last > 0.8


def test_scaling_the_target_lowers_the_paper_loss_but_not_the_standardized_one() -> None:
    torch.manual_seed(0)
    context = tiny_context(teachers=("t",), grid=GRID, width=WIDTH)
    tokens, student = torch.randn(BATCH, 16, WIDTH), torch.randn(BATCH, 16, WIDTH)
    paper = fgkd.build(fgkd.FgkdConfig(scoring="none"), context)
    guarded = fgkd.build(fgkd.FgkdConfig(scoring="none", guard="standardize"), context)

    def value(term, scale: float, student_scale: float) -> float:
        step = StepContext(teacher_names=("t",), teacher_aligned={"t": scale * tokens}, student_forced={"t": student_scale * student})
        return term(step).item()

    for scale in (0.5, 0.1):  # shrinking both sides: the paper's loss falls with scale², towards 0
        assert value(paper, scale, scale) == pytest.approx(scale**2 * value(paper, 1, 1), rel=1e-4)
        assert value(guarded, scale, 1) == pytest.approx(value(guarded, 1, 1), rel=1e-3)  # target scale is irrelevant

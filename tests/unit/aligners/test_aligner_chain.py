"""AlignerChain: teachers of any grid and width reach the student grid; bad chains fail clearly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdkit import BuildContext, GridSpec
from kdkit.align import AlignerChain, build_aligner_chain
from kdkit.errors import KdkitError

STUDENT = GridSpec(3, 3, 10)
CONTEXT = BuildContext(student_spec=STUDENT, text_dim=6)
# (teacher grid, aligner chain): different grids and widths, 1 to 5 teachers
TEACHERS = {
    "clip": (GridSpec(6, 6, 4), [{"kind": "pixel_unshuffle"}, {"kind": "mlp"}]),
    "convnext": (GridSpec(4, 4, 7), [{"kind": "resample", "scale": 2}, {"kind": "pixel_unshuffle", "factor": 2}, {"kind": "mlp", "hidden": 5}]),
    "eva": (GridSpec(5, 5, 3), [{"kind": "standardize"}, {"kind": "resample", "mode": "area"}, {"kind": "mlp"}]),
    "sam": (GridSpec(8, 8, 2), [{"kind": "resample", "size": [9, 9]}, {"kind": "pixel_unshuffle"}, {"kind": "standardize", "method": "phi_s"}, {"kind": "mlp"}]),
    "pix2struct": (GridSpec(3, 3, 12), [{"kind": "mlp"}]),
}


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5])
def test_chains_for_one_to_five_teachers_reach_the_student_grid(registry, count: int) -> None:
    for name, (spec, blocks) in list(TEACHERS.items())[:count]:
        chain = build_aligner_chain(registry, name, blocks, spec, CONTEXT)
        grid = torch.randn(2, spec.height, spec.width, spec.channels)
        tokens, aligned = chain(grid)
        assert (chain.out_spec.height, chain.out_spec.width) == (3, 3)
        assert tuple(aligned.shape) == (2, 9, STUDENT.channels)
        assert tuple(tokens.shape) == (2, 9, chain.token_spec.channels)


def test_tokens_are_the_grid_before_the_first_projection(registry) -> None:
    spec, blocks = TEACHERS["clip"]
    chain = build_aligner_chain(registry, "clip", blocks, spec, CONTEXT)
    grid = torch.randn(2, 6, 6, 4)
    tokens, aligned = chain(grid)
    unshuffled = F.pixel_unshuffle(grid.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1).reshape(2, 9, 16)
    assert torch.equal(tokens, unshuffled)
    assert torch.allclose(aligned, chain.steps[1].mlp(unshuffled))
    assert chain.token_spec == GridSpec(3, 3, 16)


def test_chain_without_projection_returns_its_output_as_tokens(registry) -> None:
    chain = build_aligner_chain(registry, "clip", [{"kind": "pixel_unshuffle"}], GridSpec(6, 6, 4), CONTEXT)
    tokens, aligned = chain(torch.randn(1, 6, 6, 4))
    assert torch.equal(tokens, aligned) and chain.token_spec == chain.out_spec


def test_empty_chain_on_the_student_grid_is_an_identity(registry) -> None:
    chain = build_aligner_chain(registry, "same", [], GridSpec(3, 3, 10), CONTEXT)
    grid = torch.randn(1, 3, 3, 10)
    assert isinstance(chain, AlignerChain) and torch.equal(chain(grid).aligned, grid.reshape(1, 9, 10))


def test_chain_off_the_student_grid_names_teacher_step_and_working_factor(registry) -> None:
    blocks = [{"kind": "resample", "size": [12, 12]}, {"kind": "pixel_unshuffle", "factor": 2}]
    with pytest.raises(KdkitError) as info:
        build_aligner_chain(registry, "sam", blocks, GridSpec(8, 8, 2), CONTEXT)
    message = str(info.value)
    assert "aligner chain of teacher 'sam' ends on a 6x6 grid, but the student's token grid is 3x3" in message
    assert "teachers.sam.align[1] (pixel_unshuffle): factor 4 would map 12x12 onto 3x3" in message


def test_step_build_errors_carry_the_recipe_path(registry) -> None:
    with pytest.raises(KdkitError, match=r"teachers\.eva\.align\[0\] \(pixel_unshuffle\): .*5x5 grid cannot be unshuffled by factor 2"):
        build_aligner_chain(registry, "eva", [{"kind": "pixel_unshuffle", "factor": 2}], GridSpec(5, 5, 3), CONTEXT)
    with pytest.raises(KdkitError, match=r"(?s)teachers\.eva\.align\[0\] \(mlp\): .*hiden"):
        build_aligner_chain(registry, "eva", [{"kind": "mlp", "hiden": 3}], GridSpec(3, 3, 3), CONTEXT)


def test_projection_before_reaching_the_student_grid_is_refused(registry) -> None:
    with pytest.raises(KdkitError, match=r"teachers\.eva\.align\[0\] \(mlp\): projects the 6x6 grid before it reaches"):
        build_aligner_chain(registry, "eva", [{"kind": "mlp"}, {"kind": "pixel_unshuffle"}], GridSpec(6, 6, 3), CONTEXT)


def test_a_checkpointed_chain_keeps_only_its_outputs_and_runs_again_in_the_backward(registry) -> None:
    """Same outputs and gradients; no intermediate of the chain is saved for the backward; the backward runs
    the chain again (up to the last step whose saved tensors it needs: torch stops recomputing early)."""
    spec, blocks = TEACHERS["convnext"]
    grid = torch.randn(2, spec.height, spec.width, spec.channels)
    results = {}
    for checkpointed in (False, True):
        torch.manual_seed(0)
        chain = build_aligner_chain(registry, "convnext", blocks, spec, CONTEXT)
        chain.checkpointed = checkpointed
        calls = []
        for step in chain.steps:
            step.register_forward_hook(lambda *_: calls.append(1))
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
            tokens, aligned = chain(grid)
        (aligned.square().sum() + tokens.sum()).backward()
        results[checkpointed] = (aligned.detach(), {n: p.grad for n, p in chain.named_parameters()}, len(calls), saved)
    (plain, plain_grads, plain_calls, plain_saved), (kept, grads, calls, saved) = results[False], results[True]
    assert torch.equal(kept, plain) and grads.keys() == plain_grads.keys()
    assert all(torch.equal(grads[n], plain_grads[n]) for n in grads)
    assert plain_calls == 3 and 3 < calls <= 6
    assert len(plain_saved) == 4 and saved == [grid.shape]  # the checkpoint keeps the chain's input only

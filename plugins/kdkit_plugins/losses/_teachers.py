"""How loss terms pick their teachers, find a teacher's tensors, and fail on missing or non-finite ones."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from kdkit.errors import KdkitError, NonFiniteError


def select_teachers(term: str, requested: Sequence[str] | None, known: Sequence[str]) -> tuple[str, ...]:
    """``requested`` (checked against the recipe's teachers ``known``), or all of ``known``."""
    if requested is None:
        return tuple(known)
    if not requested:
        raise KdkitError(f"loss {term!r}: `teachers` is an empty list; leave it out to use every teacher")
    unknown = [t for t in requested if t not in known]
    if unknown and known:
        raise KdkitError(
            f"loss {term!r} names teachers that are not in the recipe: {', '.join(unknown)} "
            f"(teachers: {', '.join(known)})"
        )
    return tuple(requested)


def forced_sample(step: object) -> dict[str, float] | None:
    """``{teacher: N_t / k}`` when this step ran the forced passes of a random ``k`` of the ``N_t``
    teachers only (``runtime.forced_teachers``), else None (every teacher's ran)."""
    extras = getattr(step, "extras", None)
    return extras.get("forced_weights") if isinstance(extras, Mapping) else None


def sampled_mean(terms: Mapping[str, Tensor], teachers: Sequence[str], sample: Mapping[str, float] | None,
                 like: Tensor | None = None) -> Tensor:
    """``mean`` over ``teachers`` of the per-teacher scalars ``terms``, or, when only the teachers
    in ``sample`` ran, its unbiased estimate ``(1 / |teachers|) Σ_{t in sample} (N_t / k) terms[t]``
    (zero when no sampled teacher is among ``teachers``; ``like`` gives its device)."""
    if sample is None:
        return torch.stack([terms[t] for t in teachers]).mean()
    if not terms:
        return torch.zeros((), device=None if like is None else like.device)
    return torch.stack([sample[t] * terms[t] for t in terms]).sum() / len(teachers)


def need(tensors: Mapping[str, Tensor], teacher: str, field: str, term: str) -> Tensor:
    """``tensors[teacher]``, or a :class:`KdkitError` naming the loss, the field and the teacher."""
    try:
        return tensors[teacher]
    except KeyError:
        have = ", ".join(tensors) or "nothing"
        raise KdkitError(
            f"loss {term!r} needs step.{field}[{teacher!r}], but teacher {teacher!r} is missing (step.{field} has: {have})"
        ) from None


def same_shape(student: Tensor, target: Tensor, teacher: str, term: str, hint: str) -> None:
    """Raise when a student feature and its target differ in shape."""
    if student.shape != target.shape:
        raise KdkitError(
            f"loss {term!r}, teacher {teacher!r}: student features {tuple(student.shape)} and target "
            f"{tuple(target.shape)} differ; {hint}"
        )


def check_finite(loss: Tensor, term: str, inputs: Mapping[str, Tensor]) -> Tensor:
    """``loss`` if finite; otherwise a :class:`NonFiniteError` naming the first non-finite input.

    One host sync per call (the check on the scalar); inputs are only inspected on failure.
    """
    if bool(torch.isfinite(loss)):
        return loss
    for label, tensor in inputs.items():
        if not bool(torch.isfinite(tensor).all()):
            raise NonFiniteError(f"loss {term!r}: {label} has non-finite values (NaN or inf); check that teacher/feature")
    raise NonFiniteError(f"loss {term!r} is {loss.item()} although its inputs are finite (overflow: try fp32 for this term)")

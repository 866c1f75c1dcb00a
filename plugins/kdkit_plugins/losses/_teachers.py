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

"""The teacher pass: each teacher's output for a batch (from a :class:`~kdkit.interfaces.TeacherSource`)
through its trainable aligner chain, into the step context.

:class:`OnlineTeachers` runs the frozen teachers; a teacher cache (:mod:`kdkit.cache`) reads
stored outputs by sample id, and its hybrid mode computes what is missing with the online source.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from torch import Tensor, nn

from kdkit.errors import KdkitError
from kdkit.interfaces import GridSpec, StepContext, TeacherOutput, TeacherSource


class NoDistilledSamples(KdkitError):
    """Raised by the step context's teacher fields on a batch whose samples all go without distillation."""


class Absent(Mapping[str, Tensor]):
    """Teacher outputs of a batch that has no distilled sample: any read raises :class:`NoDistilledSamples`.

    The distiller counts a loss term that reads one as 0 for that batch.
    """

    def __getitem__(self, key: str) -> Tensor:
        raise NoDistilledSamples("no sample of this batch is distilled")

    def __iter__(self) -> Iterator[str]:
        raise NoDistilledSamples("no sample of this batch is distilled")

    def __len__(self) -> int:
        raise NoDistilledSamples("no sample of this batch is distilled")


class OnlineTeachers:
    """Runs every teacher on the batch (frozen, eval mode, its own dtype).

    Args:
        teachers: Frozen teachers by name, in recipe order.
    """

    def __init__(self, teachers: Mapping[str, nn.Module]) -> None:
        self.teachers = dict(teachers)

    @property
    def specs(self) -> dict[str, GridSpec]:
        """Each teacher's declared output grid."""
        return {name: teacher.out_spec for name, teacher in self.teachers.items()}

    def outputs(self, images: Tensor, ids: Tensor | None) -> dict[str, TeacherOutput]:
        """``(B, 3, H, W)`` raw views -> every teacher's output (``ids`` unused)."""
        del ids
        return {name: teacher(images) for name, teacher in self.teachers.items()}

    def flush(self) -> None:
        """Nothing to publish."""


def teacher_pass(source: TeacherSource, chains: Mapping[str, nn.Module], images: Tensor, ids: Tensor | None,
                 step: StepContext) -> None:
    """Fill ``step``'s grids ``(B, H_i, W_i, C_i)``, prefixes, logits, tokens ``I_i^T`` and aligned ``Î_i^T``.

    Args:
        source: Where each teacher's output comes from.
        chains: The aligner chain of every teacher (trainable: always run here, never cached).
        images: ``(B, 3, H, W)`` raw views of the distilled samples.
        ids: ``(B,)`` their sample ids (None: the source must not need them).
        step: The step context to fill.
    """
    outputs = source.outputs(images, ids)
    for name in step.teacher_names:
        out = outputs[name]
        step.teacher_grids[name] = out.grid
        if out.prefix is not None:
            step.teacher_prefix[name] = out.prefix
        if out.logits is not None:
            step.teacher_logits[name] = out.logits
        tokens, aligned = chains[name](out.grid)
        step.teacher_tokens[name] = tokens
        step.teacher_aligned[name] = aligned

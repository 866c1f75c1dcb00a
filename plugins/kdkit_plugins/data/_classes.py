"""The check every labelled data plugin makes at build time: its class count fits the student's head."""

from __future__ import annotations

from kdkit import BuildContext
from kdkit.errors import DataError


def check_class_count(classes: int, context: BuildContext, source: str) -> None:
    """Raise when the student built for this run has a classifier of another size than ``classes``.

    The trainer builds every stage's data before training with the student in
    ``context.extras["student"]``; a student without ``num_classes`` (no classifier) is not checked.

    Raises:
        DataError: the sizes differ (names the data block and ``student.model_kwargs.num_classes``).
    """
    outputs = getattr(context.extras.get("student"), "num_classes", None)
    if outputs is None or int(outputs) == classes:
        return
    where = f"stages.{context.name}.data" if context.name else "data"
    raise DataError(f"{where}: {source} has {classes} classes but the student's classifier has {outputs} outputs; "
                    f"set student.model_kwargs.num_classes: {classes}")

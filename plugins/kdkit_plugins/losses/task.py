"""The student's own task loss (language modelling for a VLM, cross-entropy for a classifier): ``L_gen``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from torch import Tensor

from kdkit import BuildContext, Example, Factory, PluginConfig, StepContext, hookimpl
from kdkit.errors import KdkitError
from kdkit_plugins.losses._teachers import check_finite


class TaskConfig(PluginConfig):
    """The loss the student computes for its own task (read from the step context)."""

    kind: Literal["task"] = "task"


class TaskLoss:
    """``step -> step.task_loss`` (scalar), with a clear error when the student produced none."""

    def __init__(self, term: str) -> None:
        self.term = term

    def __call__(self, step: StepContext) -> Tensor:
        """The student's task loss."""
        if step.task_loss is None:
            raise KdkitError(
                f"loss {self.term!r}: the student returned no task loss (does the batch carry labels?); "
                "drop this term for feature-only distillation"
            )
        return check_finite(step.task_loss, self.term, {"step.task_loss": step.task_loss})


def build(config: TaskConfig, context: BuildContext) -> TaskLoss:
    """The task term."""
    return TaskLoss(context.name or "task")


def example(tmp_dir: Path) -> Example:
    """A step with a task loss."""
    from kdkit_plugins.losses._tiny_step import tiny_context, tiny_step

    context = tiny_context(name="lm")
    return Example(config={"kind": "task"}, context=context, inputs=(tiny_step(context),))


@hookimpl
def kdkit_losses() -> dict[str, Factory]:
    return {"task": Factory(config=TaskConfig, build=build, example=example)}

"""TensorBoard event files: every number of a record as a scalar (``kdkit.loggers.scalars`` names),
the resolved recipe as text."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from kdkit import BuildContext, Example, Factory, PluginConfig, hookimpl


class TensorboardConfig(PluginConfig):
    """TensorBoard scalars under the run directory (`tensorboard --logdir RUN_DIR/tensorboard`)."""

    kind: Literal["tensorboard"] = "tensorboard"
    directory: str = Field("tensorboard", description="Event directory, relative to the run directory.")


class TensorboardLogger:
    """Writes scalars with ``torch.utils.tensorboard.SummaryWriter``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.writer: Any = None

    def start(self, run_dir: Path, hyperparameters: Mapping[str, Any], resumed: bool) -> None:
        """Open the writer; the recipe goes in as YAML text (tag ``recipe``)."""
        import yaml
        from torch.utils.tensorboard import SummaryWriter

        del run_dir
        self.writer = SummaryWriter(log_dir=str(self.directory))
        if not resumed:
            text = yaml.safe_dump(dict(hyperparameters), sort_keys=False)
            self.writer.add_text("recipe", "```yaml\n" + text + "\n```", 0)

    def log(self, record: Mapping[str, Any]) -> None:
        """Every number of ``record`` at its ``step``."""
        from kdkit.loggers import scalars

        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, record["step"])

    def log_eval(self, record: Mapping[str, Any]) -> None:
        """The metrics as ``eval/<metric>``, flushed at once."""
        from kdkit.loggers import scalars

        for tag, value in scalars({"eval": record["eval"]}).items():
            self.writer.add_scalar(tag, value, record["step"])
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def build(config: TensorboardConfig, context: BuildContext) -> TensorboardLogger:
    """A TensorBoard logger writing into ``config.directory`` under the run directory."""
    return TensorboardLogger(context.resolve(config.directory))


def example(tmp_dir: Path) -> Example:
    """Logs into ``tmp_dir/tensorboard``."""
    return Example(config={"kind": "tensorboard"}, context=BuildContext(name="tensorboard", data_root=tmp_dir))


@hookimpl
def kdkit_loggers() -> dict[str, Factory]:
    return {"tensorboard": Factory(config=TensorboardConfig, build=build, example=example, requires=("tensorboard",))}

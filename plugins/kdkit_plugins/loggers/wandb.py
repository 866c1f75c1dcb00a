"""Weights & Biases: the records as a W&B run's history, the resolved recipe as its config.

``mode: offline`` (the default) writes the run under the run directory without any network;
``wandb sync RUN_DIR/wandb/offline-run-*`` uploads it later. ``mode: online`` logs live.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from kdkit import BuildContext, Example, Factory, PluginConfig, hookimpl

#: File in the run directory holding the W&B run id, so a resumed run continues the same W&B run.
RUN_ID = ".wandb_run_id"


class WandbConfig(PluginConfig):
    """Weights & Biases run (history, config = resolved recipe); offline by default."""

    kind: Literal["wandb"] = "wandb"
    project: str = Field("kdkit", description="W&B project.")
    entity: str | None = Field(None, description="W&B entity (user or team; default: your default entity).")
    name: str | None = Field(None, description="Run name (default: the run directory's name).")
    group: str | None = Field(None, description="Run group (e.g. one per configuration, seeds inside).")
    tags: list[str] = Field(default_factory=list, description="Run tags.")
    mode: Literal["offline", "online", "disabled"] = Field(
        "offline", description="offline: write locally under the run directory (sync later with `wandb sync`); "
        "online: log live (needs `wandb login`); disabled: no-op.")
    directory: str = Field(".", description="Where W&B writes its `wandb/` folder, relative to the run directory.")


class WandbLogger:
    """Logs to one W&B run per kdkit run (the same one again on ``--resume``)."""

    def __init__(self, config: WandbConfig, directory: Path) -> None:
        self.config = config
        self.directory = directory
        self.run: Any = None

    def start(self, run_dir: Path, hyperparameters: Mapping[str, Any], resumed: bool) -> None:
        """``wandb.init`` with the recipe as config; the run id is kept in ``RUN_DIR/.wandb_run_id``."""
        import wandb

        id_file = Path(run_dir) / RUN_ID
        run_id = id_file.read_text(encoding="utf-8").strip() if id_file.is_file() else wandb.util.generate_id()
        id_file.write_text(run_id + "\n", encoding="utf-8")
        self.directory.mkdir(parents=True, exist_ok=True)
        cfg = self.config
        self.run = wandb.init(
            project=cfg.project, entity=cfg.entity, name=cfg.name or Path(run_dir).name, group=cfg.group,
            tags=cfg.tags or None, mode=cfg.mode, dir=str(self.directory), id=run_id, resume="allow",
            config=dict(hyperparameters), settings=wandb.Settings(console="off", silent=True), reinit="create_new")
        del resumed

    def log(self, record: Mapping[str, Any]) -> None:
        """Every number of ``record`` at its ``step`` (``kdkit.loggers.scalars`` names), plus its stage."""
        from kdkit.loggers import scalars

        self.run.log(scalars(record), step=int(record["step"]))

    def log_eval(self, record: Mapping[str, Any]) -> None:
        """The metrics as ``eval/<metric>`` at the record's step."""
        from kdkit.loggers import scalars

        self.run.log(scalars({"eval": record["eval"]}), step=int(record["step"]))

    def close(self) -> None:
        """Finish the W&B run (offline: its files are complete)."""
        if self.run is not None:
            self.run.finish()
            self.run = None


def build(config: WandbConfig, context: BuildContext) -> WandbLogger:
    """A W&B logger writing under ``config.directory`` of the run directory."""
    return WandbLogger(config, context.resolve(config.directory))


def example(tmp_dir: Path) -> Example:
    """An offline run under ``tmp_dir``."""
    return Example(config={"kind": "wandb", "mode": "offline"}, context=BuildContext(name="wandb", data_root=tmp_dir))


@hookimpl
def kdkit_loggers() -> dict[str, Factory]:
    return {"wandb": Factory(config=WandbConfig, build=build, example=example, requires=("wandb",), extra="wandb")}

"""``metrics.jsonl``: one JSON line per logged step or evaluation, the run's own record (resuming,
the report and ``kdkit export --best`` read it)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from kdkit import BuildContext, Example, Factory, PluginConfig, hookimpl


class JsonlConfig(PluginConfig):
    """Every record as one line of `metrics.jsonl` in the run directory (always on)."""

    kind: Literal["jsonl"] = "jsonl"


class JsonlLogger:
    """Appends each record to ``<run_dir>/metrics.jsonl``."""

    def __init__(self) -> None:
        self.run_dir: Path | None = None

    def start(self, run_dir: Path, hyperparameters: Mapping[str, Any], resumed: bool) -> None:
        """Remember the run directory (the recipe is saved beside it as ``recipe.yaml`` already)."""
        del hyperparameters, resumed
        self.run_dir = Path(run_dir)

    def log(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` as one line."""
        from kdkit.engine.monitor import append_record

        assert self.run_dir is not None, "start() first"
        append_record(self.run_dir, dict(record))

    def log_eval(self, record: Mapping[str, Any]) -> None:
        """Append the evaluation ``record`` as one line."""
        self.log(record)

    def close(self) -> None:
        """Nothing is held open between records."""


def build(config: JsonlConfig, context: BuildContext) -> JsonlLogger:
    """A JSONL logger."""
    del config, context
    return JsonlLogger()


def example(tmp_dir: Path) -> Example:
    """Logs into ``tmp_dir``."""
    return Example(config={"kind": "jsonl"}, context=BuildContext(name="jsonl", data_root=tmp_dir))


@hookimpl
def kdkit_loggers() -> dict[str, Factory]:
    return {"jsonl": Factory(config=JsonlConfig, build=build, example=example)}

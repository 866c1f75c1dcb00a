"""MLflow: the records as metrics of an MLflow run, the resolved recipe as its parameters.

The default tracking URI is a local file store inside the run directory (``RUN_DIR/mlruns``: no
server, no database; MLflow 3 needs ``MLFLOW_ALLOW_FILE_STORE=true`` for it, which the logger sets
when it uses it); ``MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri RUN_DIR/mlruns``
shows it. Give ``tracking_uri`` (a database or a server) to log there instead.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from kdkit import BuildContext, Example, Factory, PluginConfig, hookimpl

#: File in the run directory holding the MLflow run id, so a resumed run continues the same MLflow run.
RUN_ID = ".mlflow_run_id"
#: MLflow takes at most this many parameters / metrics per batch call.
PARAMS_PER_BATCH, METRICS_PER_BATCH = 100, 1000


class MlflowConfig(PluginConfig):
    """MLflow run (metrics per step, parameters = resolved recipe); a local file store by default."""

    kind: Literal["mlflow"] = "mlflow"
    tracking_uri: str | None = Field(None, description="MLflow tracking URI (default: a file store in RUN_DIR/mlruns).")
    experiment: str = Field("kdkit", description="MLflow experiment name (created when missing).")
    run_name: str | None = Field(None, description="Run name (default: the run directory's name).")
    tags: dict[str, str] = Field(default_factory=dict, description="Run tags.")


class MlflowLogger:
    """Logs through an ``MlflowClient`` (no global MLflow state is touched)."""

    def __init__(self, config: MlflowConfig) -> None:
        self.config = config
        self.client: Any = None
        self.run_id: str | None = None

    def start(self, run_dir: Path, hyperparameters: Mapping[str, Any], resumed: bool) -> None:
        """Create (or, on resume, reopen) the run; log the flattened recipe as parameters once."""
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        from kdkit.loggers import flat_hyperparameters

        run_dir = Path(run_dir)
        uri = self.config.tracking_uri
        if uri is None:  # MLflow 3 keeps its file store behind this switch; a run-local store is what we want
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (run_dir / "mlruns").resolve().as_uri()
        self.client = MlflowClient(tracking_uri=uri)
        id_file = run_dir / RUN_ID
        if id_file.is_file():
            self.run_id = id_file.read_text(encoding="utf-8").strip()
            self.client.update_run(self.run_id, status="RUNNING")
            return
        experiment = self.client.get_experiment_by_name(self.config.experiment)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(self.config.experiment)
        run = self.client.create_run(experiment_id, run_name=self.config.run_name or run_dir.name,
                                     tags=dict(self.config.tags))
        self.run_id = run.info.run_id
        id_file.write_text(self.run_id + "\n", encoding="utf-8")
        params = [Param(key, str(value)[:6000]) for key, value in flat_hyperparameters(hyperparameters).items()]
        for first in range(0, len(params), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[first:first + PARAMS_PER_BATCH])
        del resumed

    def _metrics(self, values: Mapping[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        # "loss" and "loss/task" cannot both be files of the file store: MLflow names use dots
        metrics = [Metric(key.replace("/", "."), value, now, step) for key, value in values.items()]
        for first in range(0, len(metrics), METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[first:first + METRICS_PER_BATCH])

    def log(self, record: Mapping[str, Any]) -> None:
        """Every number of ``record`` at its ``step`` (``kdkit.loggers.scalars`` names, ``/`` written ``.``)."""
        from kdkit.loggers import scalars

        self._metrics(scalars(record), int(record["step"]))

    def log_eval(self, record: Mapping[str, Any]) -> None:
        """The metrics as ``eval.<metric>`` at the record's step."""
        from kdkit.loggers import scalars

        self._metrics(scalars({"eval": record["eval"]}), int(record["step"]))

    def close(self) -> None:
        """Mark the run finished."""
        if self.client is not None and self.run_id is not None:
            self.client.set_terminated(self.run_id)
            self.client = None


def build(config: MlflowConfig, context: BuildContext) -> MlflowLogger:
    """An MLflow logger."""
    del context
    return MlflowLogger(config)


def example(tmp_dir: Path) -> Example:
    """A file store under ``tmp_dir``."""
    return Example(config={"kind": "mlflow"}, context=BuildContext(name="mlflow", data_root=tmp_dir))


@hookimpl
def kdkit_loggers() -> dict[str, Factory]:
    return {"mlflow": Factory(config=MlflowConfig, build=build, example=example, requires=("mlflow",), extra="mlflow")}

"""Run loggers: where the records of a training run go (``metrics.jsonl`` always; TensorBoard,
Weights & Biases, MLflow... through ``logger`` plugins named in the recipe's ``loggers`` section).

A record is one logged optimizer step (``step``, ``stage``, ``loss``, ``losses`` by term, ``lr``,
``grad_norm``, ``samples_per_s``, timings, ``wall_time_s``, ``peak_memory_mb``, ``routing``) or one
evaluation (``step``, ``stage``, ``benchmark``, ``eval`` by metric). Loggers get the resolved recipe
once, as hyperparameters, when the run starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from kdkit.recipe.schema import Recipe
    from kdkit.registry import Registry

#: The logger every run has: ``metrics.jsonl`` is what resuming, the report and ``--best`` read.
ALWAYS = {"jsonl": {"kind": "jsonl"}}
#: The loggers of a recipe without a ``loggers`` section.
DEFAULT = {"tensorboard": {"kind": "tensorboard"}}


@runtime_checkable
class RunLogger(Protocol):
    """What a ``logger`` plugin's ``build`` returns. Only rank 0 builds and calls it."""

    def start(self, run_dir: Path, hyperparameters: Mapping[str, Any], resumed: bool) -> None:
        """The run begins (or resumes) in ``run_dir``; ``hyperparameters`` is the resolved recipe."""
        ...

    def log(self, record: Mapping[str, Any]) -> None:
        """One training record (see the module docstring)."""
        ...

    def log_eval(self, record: Mapping[str, Any]) -> None:
        """One evaluation record: ``step``, ``stage``, ``benchmark`` and its metrics under ``eval``."""
        ...

    def close(self) -> None:
        """The run ended (normally or not): flush and release."""
        ...


def scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """A record's numbers under flat names, as every dashboard logger shows them.

    Top-level numbers keep their key (``loss``, ``lr``, ``grad_norm``...; ``step`` is the x-axis and
    left out), loss terms become ``loss/<term>``, routing fractions ``routing/<group>/<block>/expert<i>``
    and evaluation metrics ``eval/<metric>``.
    """
    found: dict[str, float] = {}
    for key, value in record.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
            found[key] = float(value)
    for name, value in (record.get("losses") or {}).items():
        found[f"loss/{name}"] = float(value)
    for group, blocks in (record.get("routing") or {}).items():
        for block, fractions in blocks.items():
            for expert, fraction in enumerate(fractions):
                found[f"routing/{group}/{block}/expert{expert}"] = float(fraction)
    for name, value in (record.get("eval") or {}).items():
        if isinstance(value, (int, float)):
            found[f"eval/{name}"] = float(value)
    return found


def flat_hyperparameters(data: Mapping[str, Any], prefix: str = "") -> dict[str, str | int | float | bool]:
    """A nested recipe mapping -> ``{"stages.pretrain.optimizer.lr": 0.001, ...}`` (lists as their text)."""
    flat: dict[str, str | int | float | bool] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_hyperparameters(value, f"{name}."))
        elif isinstance(value, (str, int, float, bool)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def logger_blocks(recipe: Recipe | None, tensorboard: bool = True) -> dict[str, dict[str, Any]]:
    """The run's logger blocks by name: ``jsonl`` first, then the recipe's (or :data:`DEFAULT`).

    ``tensorboard=False`` leaves out the default TensorBoard logger of a recipe without ``loggers``.
    """
    chosen = getattr(recipe, "loggers", None)
    if chosen is None:
        blocks = dict(DEFAULT) if tensorboard else {}
    else:
        blocks = {name: block.config.model_dump(mode="json") for name, block in chosen.items()}
    return {**ALWAYS, **{name: block for name, block in blocks.items() if block["kind"] not in ("jsonl",)}}


def build_loggers(recipe: Recipe | None, registry: Registry, run_dir: Path, tensorboard: bool = True) -> dict[str, RunLogger]:
    """Build the run's loggers (:func:`logger_blocks`); relative paths in them resolve against ``run_dir``.

    A default logger whose package is missing is left out with a note; one the recipe names is an error.

    Raises:
        PluginError: a logger the recipe names needs a package that is not installed (the pip line is given).
    """
    from kdkit.engine.monitor import console
    from kdkit.interfaces import BuildContext

    implicit = getattr(recipe, "loggers", None) is None
    built: dict[str, RunLogger] = {}
    for name, block in logger_blocks(recipe, tensorboard).items():
        factory = registry.factory("logger", block["kind"])
        if implicit and factory.missing:
            console(f"logger {name!r} left out: {', '.join(factory.missing)} is not installed ({factory.install_hint})")
            continue
        built[name] = registry.build("logger", dict(block), BuildContext(name=name, data_root=run_dir))
    return built

"""The digits experiment: train the teachers once, then the student alone and distilled over seeds.

Every run goes through the engine (``run_recipe``); each teacher's student is then written in timm's
format (``student.export``) into ``<output>/data/teachers/<name>/``, where the 3-teacher recipe reads
it. A finished run leaves ``result.json`` (accuracy per split read, wall time, overrides) in its directory and
is reused when the experiment is started again with the same output directory.

Every run trains on the train side minus a validation split (``VAL_FRACTION`` of each class, carved by the
``digits`` data plugin). The experiment scores on ``val`` unless asked for ``test``: choose on val, then read
test once for each configuration you report (a reused run is scored on test without retraining).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.digits.evaluate import evaluate_run, held_out_benchmark
from kdkit.errors import KdkitError

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "vision"
TEACHERS = ("resnet", "convnext", "vit")
#: Fraction of each class of the train side held out as the validation split (every run trains without it).
VAL_FRACTION = 0.2
SPLIT_OVERRIDE = f"stages.train.data.val_fraction={VAL_FRACTION}"
RESULT = "result.json"


def held_out_data(split: str) -> dict[str, Any]:
    """The data block of the ``val`` or ``test`` split every run is scored on."""
    return {"kind": "digits", "split": split, "image_size": 32, "val_fraction": VAL_FRACTION}


@dataclass(frozen=True)
class Budget:
    """How long each run trains: epochs over the train split, or a fixed number of steps."""

    teacher_epochs: float | None = None
    student_epochs: float | None = None
    max_steps: int | None = None

    def overrides(self, teacher: bool) -> list[str]:
        """``--set`` overrides for a run of this budget."""
        if self.max_steps is not None:
            return [f"stages.train.max_steps={self.max_steps}", "runtime.log_every=1"]
        epochs = self.teacher_epochs if teacher else self.student_epochs
        return [f"stages.train.epochs={epochs}"] if epochs is not None else []


#: The recipes' own epochs; ``--quick``: 4 steps per run (checks the pipeline, not the method).
FULL = Budget()
QUICK = Budget(max_steps=4)


@dataclass
class Results:
    """Test accuracies and wall times of every run, by role."""

    teachers: dict[str, dict[str, float]] = field(default_factory=dict)
    alone: list[dict[str, float]] = field(default_factory=list)
    distilled: list[dict[str, float]] = field(default_factory=list)
    wall_s: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """JSON-able form (saved as ``results.json``)."""
        return {"teachers": self.teachers, "alone": self.alone, "distilled": self.distilled, "wall_s": self.wall_s,
                "settings": self.settings}


def train_and_evaluate(recipe: Path, run_dir: Path, overrides: Sequence[str], benchmark: Any,
                       export_dir: Path | None = None, split: str = "test") -> dict[str, Any]:
    """Train ``recipe`` into ``run_dir``, measure accuracy on ``split``, export the student to ``export_dir``.

    A run directory that already holds ``result.json`` is reused; a split it has not been scored on yet is
    scored then (no retraining). ``accuracy`` in the returned dict is the accuracy on ``split``.
    """
    from kdkit.engine.run import run_recipe

    done = run_dir / RESULT
    if done.is_file():
        result = json.loads(done.read_text(encoding="utf-8"))
        if result.get("overrides") != list(overrides):
            raise KdkitError(f"{run_dir} holds a run made with other settings ({result.get('overrides')}); "
                             "choose another --output-dir (and --teachers-from to reuse its teachers)")
        scores = result.setdefault("scores", {})
        if split not in scores:
            scores[split] = evaluate_run(run_dir, benchmark)
            done.write_text(json.dumps(result) + "\n", encoding="utf-8")
        return {**result, "accuracy": scores[split]}
    started = time.perf_counter()
    run_recipe(recipe, [*overrides, f"runtime.output_dir={run_dir}"], tensorboard=False, progress=False, report=False)
    wall = time.perf_counter() - started
    result = {"scores": {split: evaluate_run(run_dir, benchmark, export_dir)}, "wall_s": wall, "overrides": list(overrides)}
    done.write_text(json.dumps(result) + "\n", encoding="utf-8")
    return {**result, "accuracy": result["scores"][split]}


def run_experiment(output_dir: Path, seeds: int = 3, budget: Budget = FULL, distill_overrides: Sequence[str] = (),
                   teachers_from: Path | None = None, log: Any = print, split: str = "val",
                   distill_recipe: str = "digits_3teachers.yaml") -> Results:
    """Teachers (once), then ``seeds`` seeds of the student alone and distilled; returns every result.

    Args:
        output_dir: Where runs, exports, ``results.json`` go.
        seeds: Seeds of each student run (0 .. seeds-1).
        budget: Training length of every run.
        distill_overrides: ``--set`` overrides of the distilled recipe only (loss weights, layers...).
        teachers_from: The output directory of an earlier experiment whose teachers (and student-alone runs,
            which no distillation override changes) to reuse.
        log: Where progress lines go.
        split: ``val`` (choose settings) or ``test`` (read once per reported configuration).
        distill_recipe: The distilled recipe, a file name in ``recipes/vision``.
    """
    started = time.perf_counter()
    output_dir = Path(output_dir)
    source = Path(teachers_from) if teachers_from is not None else output_dir
    data_root = (source / "data").resolve()
    runs = output_dir / "runs"
    benchmark = held_out_benchmark(held_out_data(split))
    results = Results(settings={"seeds": seeds, "budget": budget.__dict__, "distill_overrides": list(distill_overrides),
                                "teachers_from": str(teachers_from) if teachers_from is not None else None,
                                "split": split, "val_fraction": VAL_FRACTION, "distill_recipe": distill_recipe})
    for name in TEACHERS:
        if teachers_from is not None:
            done = json.loads((source / "runs" / f"teacher_{name}" / RESULT).read_text(encoding="utf-8"))
            results.teachers[name] = train_and_evaluate(Path("unused.yaml"), source / "runs" / f"teacher_{name}",
                                                        done["overrides"], benchmark, split=split)
            continue
        log(f"teacher {name}: training on the train split")
        results.teachers[name] = train_and_evaluate(
            RECIPES / "digits_teachers" / f"{name}.yaml", runs / f"teacher_{name}",
            [*budget.overrides(teacher=True), f"runtime.data_root={data_root}", SPLIT_OVERRIDE], benchmark,
            data_root / "teachers" / name, split)
        log(f"teacher {name}: {split} accuracy {results.teachers[name]['accuracy']:.4f}")
    for seed in range(seeds):
        common = [f"runtime.seed={seed}", f"runtime.data_root={data_root}", *budget.overrides(teacher=False),
                  SPLIT_OVERRIDE]
        for role, recipe, extra, where in (("alone", "digits_student_alone.yaml", (), source / "runs"),
                                           ("distilled", distill_recipe, tuple(distill_overrides), runs)):
            log(f"student {role}, seed {seed}")
            result = train_and_evaluate(RECIPES / recipe, where / f"{role}_seed{seed}", [*common, *extra], benchmark,
                                        split=split)
            getattr(results, role).append(result)
            log(f"student {role}, seed {seed}: {split} accuracy {result['accuracy']:.4f}")
    results.wall_s = time.perf_counter() - started
    (output_dir / "results.json").write_text(json.dumps(results.to_json(), indent=2) + "\n", encoding="utf-8")
    return results

"""Score one student on one benchmark: batched greedy answers written as they come, then the
benchmark's own scoring; or, for model benchmarks, the benchmark's own measurement.

A results directory holds::

    benchmark.json      the benchmark block the predictions were made with (a rerun must match)
    predictions.jsonl   one answer per line, appended batch by batch (resumable)
    metrics.json        the scores, the published reference numbers and where they came from
    results.md          the same as a Markdown table
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdkit.errors import DataError, KdkitError
from kdkit.interfaces import (
    AnswersQuestions,
    Benchmark,
    BuildContext,
    EvalSubject,
    GenerativeBenchmark,
    ModelBenchmark,
    Question,
    Scores,
)

#: Questions per generate call by default (the benchmark script measures the speed-up over 1).
DEFAULT_BATCH = 16


class EvaluationError(KdkitError):
    """A benchmark cannot be run on this student, or its results directory belongs to another evaluation."""


@dataclass
class Result:
    """One student scored on one benchmark.

    Attributes:
        benchmark: The benchmark's registered name.
        primary: Its headline metric.
        scores: What scoring produced.
        published: Published reference values of the primary metric, by label.
        directory: Where predictions and metrics were written (None when nothing was written).
        seconds: Wall time of this invocation (generation and scoring).
        answered: Questions answered by this invocation (the others came from a previous one).
    """

    benchmark: str
    primary: str
    scores: Scores
    published: dict[str, float]
    directory: Path | None = None
    seconds: float = 0.0
    answered: int = 0

    @property
    def value(self) -> float:
        """The primary metric's value."""
        return self.scores.metrics[self.primary]


def build_benchmark(block: Mapping[str, Any], data_root: str | Path = ".", registry: Any = None) -> Benchmark:
    """Build the benchmark a block names (``{"kind": "pope", "root": ...}``), paths relative to ``data_root``.

    Raises:
        UnknownPluginError: no plugin offers that benchmark (the closest name is suggested).
        EvaluationError: the block does not fit the benchmark's config (the field is named).
    """
    import pydantic

    if registry is None:
        from kdkit.plugins import get_registry

        registry = get_registry()
    name = str(block.get("kind"))
    factory = registry.factory("benchmark", name)
    try:
        config = factory.config.model_validate(dict(block))
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'block'}: {e['msg']}" for e in exc.errors())
        raise EvaluationError(f"benchmark {name!r}: {problems}") from None
    context = BuildContext(name=name, data_root=Path(data_root), extras={"registry": registry})
    benchmark = factory.build(config, context)
    check_declarations(name, benchmark)
    return benchmark


def check_declarations(name: str, benchmark: object) -> None:
    """The benchmark declares its metrics, a primary among them, and one way to be run."""
    if not isinstance(benchmark, Benchmark):
        raise EvaluationError(f"benchmark {name!r} does not declare metrics, primary and published")
    if benchmark.primary not in benchmark.metrics:
        raise EvaluationError(f"benchmark {name!r}: primary metric {benchmark.primary!r} is not among its metrics "
                              f"({', '.join(benchmark.metrics)})")
    if not isinstance(benchmark, (GenerativeBenchmark, ModelBenchmark)):
        raise EvaluationError(f"benchmark {name!r} has neither questions()+score() nor evaluate()")


def check_metric(name: str, benchmark: Benchmark, metric: str, where: str) -> None:
    """``metric`` is one the benchmark produces; else an error naming ``where`` it was asked for."""
    if metric not in benchmark.metrics:
        from kdkit.errors import closest

        hint = closest(metric, benchmark.metrics)
        raise EvaluationError(f"{where}: benchmark {name!r} has no metric {metric!r} (it produces: "
                              f"{', '.join(benchmark.metrics)})" + (f"; did you mean {hint!r}?" if hint else ""))


def batches(questions: Sequence[Question], size: int) -> Iterator[list[Question]]:
    """Consecutive chunks of at most ``size`` questions sharing one ``max_new_tokens``."""
    chunk: list[Question] = []
    for question in questions:
        if chunk and (len(chunk) == size or question.max_new_tokens != chunk[0].max_new_tokens):
            yield chunk
            chunk = []
        chunk.append(question)
    if chunk:
        yield chunk


def answer(student: AnswersQuestions, questions: Sequence[Question], batch_size: int,
           on_batch: Callable[[list[tuple[str, str]]], None], benchmark: str = "benchmark",
           progress: bool = False) -> int:
    """Answer ``questions`` greedily, ``batch_size`` at a time, handing each batch's answers to ``on_batch``.

    Returns the number of questions answered.

    Raises:
        DataError: a question without an image, or an image missing or corrupt (question id named).
    """
    import torch

    bar = _progress(len(questions), benchmark) if progress else None
    cache: dict[Any, torch.Tensor] = {}
    done = 0
    try:
        for chunk in batches(questions, batch_size):
            views = []
            for q in chunk:
                if q.image is None:
                    raise DataError(f"{benchmark}: question {q.id!r} has no image; this student answers about images")
                key = q.image if isinstance(q.image, bytes) else str(q.image)
                if key not in cache:
                    if len(cache) > 4 * batch_size:
                        cache.clear()
                    try:
                        cache[key] = student.load_image(q.image)
                    except DataError as exc:
                        raise DataError(f"{benchmark}: question {q.id!r}: {exc}") from None
                views.append(cache[key])
            replies = student.generate(torch.cat(views), [q.prompt for q in chunk],
                                       max_new_tokens=chunk[0].max_new_tokens)
            on_batch([(q.id, reply) for q, reply in zip(chunk, replies, strict=True)])
            done += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return done


def _progress(total: int, name: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=name, unit="q", dynamic_ncols=True, file=sys.stderr)


def evaluate(subject: EvalSubject, benchmark: Benchmark, name: str, block: Mapping[str, Any] | None = None,
             directory: Path | None = None, batch_size: int = DEFAULT_BATCH, limit: int | None = None,
             progress: bool = True) -> Result:
    """Score ``subject`` on ``benchmark``; with ``directory``, write (and resume) predictions and metrics there.

    Args:
        subject: The student (eval mode, adapters routed).
        benchmark: A built benchmark.
        name: Its registered name.
        block: The block it was built from (stored so a rerun with other settings is refused).
        directory: Results directory, or None to keep everything in memory.
        batch_size: Questions per generate call.
        limit: Evaluate only the first N questions (a quick look; not comparable to full runs).
        progress: Show a progress bar with ETA.

    Raises:
        EvaluationError: the student cannot answer this benchmark, or ``directory`` holds another evaluation.
    """
    start = time.perf_counter()
    if directory is not None:
        _claim(directory, name, dict(block or {"kind": name}), limit)
    answered = 0
    if isinstance(benchmark, GenerativeBenchmark):
        student = subject.student
        if not isinstance(student, AnswersQuestions):
            raise EvaluationError(f"benchmark {name!r} asks questions, but the {type(student).__name__} student does "
                                  "not answer them (it has no generate/load_image)")
        questions = list(benchmark.questions())
        _check_unique(name, questions)
        if limit is not None:
            questions = questions[:limit]
        if directory is not None:
            from kdkit.evaluation.predictions import PredictionStore

            store = PredictionStore(directory / "predictions.jsonl", {q.id for q in questions}, name)
            todo = [q for q in questions if q.id not in store]
            answered = answer(student, todo, batch_size, store.append, name, progress)
            predictions = store.answers
        else:
            predictions = {}
            answered = answer(student, questions, batch_size, lambda pairs: predictions.update(pairs), name, progress)
        scores = benchmark.score({q.id: predictions[q.id] for q in questions})
    else:
        scores = benchmark.evaluate(subject)  # type: ignore[union-attr]
    missing = [m for m in benchmark.metrics if m not in scores.metrics]
    if missing and limit is None:
        raise EvaluationError(f"benchmark {name!r} declared metrics it did not return: {', '.join(missing)}")
    result = Result(name, benchmark.primary, scores, dict(benchmark.published), directory,
                    time.perf_counter() - start, answered)
    if directory is not None:
        write_result(result, subject, limit)
    return result


def _check_unique(name: str, questions: Sequence[Question]) -> None:
    seen: set[str] = set()
    for q in questions:
        if q.id in seen:
            raise EvaluationError(f"benchmark {name!r} has two questions with id {q.id!r}")
        seen.add(q.id)


def _claim(directory: Path, name: str, block: dict[str, Any], limit: int | None) -> None:
    """Record what ``directory`` evaluates; refuse it when it holds predictions of another setting."""
    directory.mkdir(parents=True, exist_ok=True)
    marker = directory / "benchmark.json"
    wanted = {"benchmark": name, "block": block, "limit": limit}
    if marker.exists():
        try:
            found = json.loads(marker.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            found = None
        if found != wanted:
            differs = _first_difference(found, wanted)
            raise EvaluationError(f"{directory} holds predictions made with other settings ({differs}); "
                                  "choose another --output or pass --fresh to discard them")
        return
    _atomic_write(marker, json.dumps(wanted, indent=2, sort_keys=True))


def _first_difference(found: Any, wanted: dict[str, Any]) -> str:
    if not isinstance(found, dict):
        return "benchmark.json is unreadable"
    from kdkit.engine.checkpoint import flat_items

    flat_found, flat_wanted = flat_items(found), flat_items(wanted)
    for key in sorted(set(flat_found) | set(flat_wanted)):
        if flat_found.get(key) != flat_wanted.get(key):
            return f"{key}: {flat_found.get(key)!r} there, {flat_wanted.get(key)!r} now"
    return "unknown difference"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_result(result: Result, subject: EvalSubject, limit: int | None = None) -> None:
    """``metrics.json`` and ``results.md`` of one result, written atomically into its directory."""
    from kdkit.evaluation.report import result_markdown

    assert result.directory is not None
    data = {
        "benchmark": result.benchmark,
        "primary": result.primary,
        "metrics": result.scores.metrics,
        "published": result.published,
        "student": str(subject.source) if subject.source else None,
        "checkpoint": subject.checkpoint.name if subject.checkpoint else None,
        "limit": limit,
        "details": result.scores.details,
        "units": result.scores.units,
    }
    _atomic_write(result.directory / "metrics.json", json.dumps(data, indent=1, default=str))
    _atomic_write(result.directory / "results.md", result_markdown(result, str(subject.source or "student"), limit))


def read_result(directory: Path) -> Result:
    """A :class:`Result` back from a results directory's ``metrics.json``."""
    file = Path(directory) / "metrics.json"
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        return Result(data["benchmark"], data["primary"],
                      Scores(data["metrics"], data.get("units") or {}, data.get("details") or {}),
                      data.get("published") or {}, Path(directory))
    except FileNotFoundError:
        raise EvaluationError(f"{file} does not exist; run `kdkit eval` first") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise EvaluationError(f"{file} is not a kdkit metrics file ({exc})") from None

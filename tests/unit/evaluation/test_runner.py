"""The evaluation runner: batching, resumable predictions, settings guard, errors naming the culprit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from kdkit.errors import DataError
from kdkit.evaluation.predictions import PredictionStore
from kdkit.evaluation.runner import EvaluationError, batches, check_metric, evaluate
from kdkit.interfaces import EvalSubject, Question, Scores


class EchoStudent:
    """Answers ``"<prompt>!"``; counts generate calls and their batch sizes; can fail after N calls."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls: list[int] = []
        self.fail_after = fail_after

    def load_image(self, source):
        if isinstance(source, bytes):
            return torch.zeros(1, 3, 4, 4)
        if not Path(source).is_file():
            raise DataError(f"image {str(source)!r} does not exist")
        return torch.ones(1, 3, 4, 4)

    def generate(self, images, prompts, max_new_tokens=32):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt
        assert images.shape[0] == len(prompts)
        self.calls.append(len(prompts))
        return [p + "!" for p in prompts]


class Toy:
    """Ten questions; accuracy = % of answers ending in "!"; unit per question."""

    metrics = ("accuracy", "answered")
    primary = "accuracy"
    published = {"Somebody (paper)": 50.0}

    def __init__(self, image: Path | bytes | None, count: int = 10) -> None:
        self.image, self.count = image, count

    def questions(self):
        return [Question(f"q{i}", f"question {i}", self.image, 4) for i in range(self.count)]

    def score(self, predictions):
        units = {k: 100.0 * v.endswith("!") for k, v in predictions.items()}
        return Scores({"accuracy": sum(units.values()) / len(units), "answered": float(len(units))}, units)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "img.png"
    Image.new("RGB", (6, 4), (255, 0, 0)).save(path)
    return path


def test_batches_split_on_size_and_answer_length() -> None:
    qs = [Question(str(i), "p", None, 4 if i < 5 else 8) for i in range(7)]
    assert [[q.id for q in b] for b in batches(qs, 2)] == [["0", "1"], ["2", "3"], ["4"], ["5", "6"]]


def test_evaluates_in_batches_and_writes_results(image: Path, tmp_path: Path) -> None:
    student = EchoStudent()
    result = evaluate(EvalSubject(student, source=tmp_path), Toy(image), "toy", None, tmp_path / "out", batch_size=4,
                      progress=False)
    assert student.calls == [4, 4, 2]
    assert result.value == 100.0 and result.answered == 10
    lines = (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
    assert json.loads(lines[3]) == {"question_id": "q3", "prediction": "question 3!"}
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["metrics"] == {"accuracy": 100.0, "answered": 10.0}
    assert metrics["published"] == {"Somebody (paper)": 50.0}
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| accuracy (primary) | 100.0 |" in table and "| Somebody (paper) | 50.0 |" in table


def test_an_interrupted_evaluation_resumes_without_losing_answers(image: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        evaluate(EvalSubject(EchoStudent(fail_after=2)), Toy(image), "toy", None, out, batch_size=3, progress=False)
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 6  # two whole batches kept
    again = EchoStudent()
    result = evaluate(EvalSubject(again), Toy(image), "toy", None, out, batch_size=3, progress=False)
    assert again.calls == [3, 1] and result.answered == 4 and result.scores.metrics["answered"] == 10


def test_a_torn_last_line_is_dropped_with_a_warning(image: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    evaluate(EvalSubject(EchoStudent()), Toy(image, count=3), "toy", None, out, progress=False)
    file = out / "predictions.jsonl"
    file.write_text(file.read_text() + '{"question_id": "q9", "predic')
    with pytest.warns(UserWarning, match="dropped a torn last line"):
        store = PredictionStore(file, {"q0", "q1", "q2"}, "toy")
    assert len(store) == 3 and file.read_text().endswith("}\n")


def test_predictions_of_another_benchmark_are_refused(image: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.jsonl").write_text('{"question_id": "other-7", "prediction": "yes"}\n')
    with pytest.raises(DataError, match=r"predictions.jsonl line 1: question id 'other-7' is not a question of toy"):
        evaluate(EvalSubject(EchoStudent()), Toy(image), "toy", None, out, progress=False)


def test_other_settings_are_refused_in_the_same_directory(image: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    evaluate(EvalSubject(EchoStudent()), Toy(image), "toy", {"kind": "toy", "split": "a"}, out, progress=False)
    with pytest.raises(EvaluationError, match=r"other settings \(block.split: 'a' there, 'b' now\)"):
        evaluate(EvalSubject(EchoStudent()), Toy(image), "toy", {"kind": "toy", "split": "b"}, out, progress=False)


def test_limit_asks_only_the_first_questions(image: Path) -> None:
    student = EchoStudent()
    result = evaluate(EvalSubject(student), Toy(image), "toy", limit=3, progress=False)
    assert sum(student.calls) == 3 and result.scores.metrics["answered"] == 3


def test_missing_image_names_the_question(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"toy: question 'q0': image '.*nope.png' does not exist"):
        evaluate(EvalSubject(EchoStudent()), Toy(tmp_path / "nope.png"), "toy", progress=False)


def test_embedded_image_bytes_reach_the_student() -> None:
    result = evaluate(EvalSubject(EchoStudent()), Toy(b"\x89PNG..."), "toy", progress=False)
    assert result.value == 100.0


def test_a_student_that_cannot_answer_is_refused(image: Path) -> None:
    with pytest.raises(EvaluationError, match="the object student does not answer them"):
        evaluate(EvalSubject(object()), Toy(image), "toy", progress=False)


def test_unknown_metric_suggests_the_closest() -> None:
    with pytest.raises(EvaluationError, match=r"eval.select: benchmark 'toy' has no metric 'acuracy' \(it produces: "
                                              r"accuracy, answered\); did you mean 'accuracy'\?"):
        check_metric("toy", Toy(None), "acuracy", "eval.select")

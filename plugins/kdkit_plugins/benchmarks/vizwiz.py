"""VizWiz VQA val as LLaVA-1.5 asks it, scored locally with VQA accuracy.

Reads the released ``val.json`` (a list of ``{image, question, answers: [{answer,
answer_confidence}] x 10, answer_type, answerable}``) and the images ``val/<image>``. A question's
id is its ``image`` name (VizWiz has one question per image and keys submissions by it). The prompt
is the capitalized question, LLaVA-1.5's "respond with 'Unanswerable'" line and its short-answer
instruction.

Scoring: VQA accuracy with the VQA answer processor on prediction and human answers
(:mod:`kdkit_plugins.benchmarks.vqa_answers`), overall and over the questions marked answerable /
unanswerable; details hold the accuracy per ``answer_type``. LLaVA-1.5's published VizWiz number is
on test-dev (evaluation server); this scores the val split, whose answers are released.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from kdkit import BuildContext, Example, Factory, PluginConfig, hookimpl
from kdkit.evaluation.files import expect_list, read_json, require_dir, require_fields
from kdkit.interfaces import Question, Scores
from kdkit_plugins.benchmarks import vqa_records as records
from kdkit_plugins.benchmarks.vqa_answers import (SHORT_ANSWER, check_prediction_ids, group_table, normalize_answer,
                                                  percent, soft_accuracy)

NAME = "vizwiz"
#: LLaVA-1.5's VizWiz line telling the model how to answer an unanswerable question.
UNANSWERABLE_HINT = "\nWhen the provided information is insufficient, respond with 'Unanswerable'."


class VizWizConfig(PluginConfig):
    """Where the VizWiz VQA release is."""

    kind: Literal["vizwiz"] = "vizwiz"
    root: str = Field("vizwiz", description="Folder of the VizWiz VQA release (relative paths are resolved against "
                                            "the data root).")
    annotations: str = Field("val.json", description="Annotations file of the split, relative to `root`.")
    images: str = Field("val", description="Folder of the split's images (named as the records' `image`), relative "
                                           "to `root`.")
    max_new_tokens: int = Field(16, ge=1, description="Longest answer to generate, in tokens.")


def prompt(question: str) -> str:
    """The question as LLaVA-1.5 asks it."""
    return question.capitalize() + UNANSWERABLE_HINT + SHORT_ANSWER


class VizWiz:
    """VizWiz questions and their VQA-accuracy scorer.

    Args:
        questions: The questions in file order.
        answers: Normalized human answers by question id.
        answerable: Whether each question is marked answerable.
        answer_types: Each question's ``answer_type``.
    """

    metrics: tuple[str, ...] = ("accuracy", "answerable", "unanswerable")
    primary: str = "accuracy"
    published: dict[str, float] = {"LLaVA-1.5 7B (paper)": 50.0, "HAWAII 7B (paper)": 53.9}

    def __init__(self, questions: list[Question], answers: dict[str, tuple[str, ...]], answerable: dict[str, bool],
                 answer_types: dict[str, str]) -> None:
        self._questions = questions
        self._answers = answers
        self._answerable = answerable
        self._answer_types = answer_types

    def questions(self) -> list[Question]:
        """Every question, in file order."""
        return list(self._questions)

    def score(self, predictions: Mapping[str, str]) -> Scores:
        """Raw answers by question id (all or some) -> ``accuracy``, ``answerable`` and ``unanswerable``
        (percent; a metric over no question of the subset is left out), per-question units, and
        counts and per-answer-type accuracy in details."""
        check_prediction_ids(NAME, predictions, self._answers)
        per_question = {qid: soft_accuracy(normalize_answer(text), self._answers[qid])
                        for qid, text in predictions.items()}
        groups = {"answerable": [v for q, v in per_question.items() if self._answerable[q]],
                  "unanswerable": [v for q, v in per_question.items() if not self._answerable[q]]}
        metrics = {name: percent(values) for name, values in
                   [("accuracy", list(per_question.values())), *groups.items()] if values}
        details: dict[str, Any] = {"count": len(per_question),
                                   **{f"{name}_count": len(values) for name, values in groups.items()},
                                   "per_answer_type": group_table(per_question, self._answer_types)}
        return Scores(metrics=metrics, units={qid: 100.0 * value for qid, value in per_question.items()},
                      details=details)


def _human_answers(path: Path, record: dict[str, Any], where: str) -> list[str]:
    """The ``answer`` strings of a record's ``answers`` objects."""
    value = record["answers"]
    if not isinstance(value, list) or not value:
        raise records.field_error(NAME, path, where, "answers", value, "a list of {answer, answer_confidence} objects")
    answers = []
    for index, item in enumerate(value):
        inner = f"{where} answers[{index}]"
        item = records.record_object(NAME, path, item, inner)
        require_fields(NAME, path, item, ["answer"], inner)
        if not isinstance(item["answer"], str):
            raise records.field_error(NAME, path, inner, "answer", item["answer"], "a string")
        answers.append(item["answer"])
    return answers


def read(config: VizWizConfig, context: BuildContext) -> VizWiz:
    """Read and check the annotations file; the image folder must exist (images are not opened)."""
    root = context.resolve(config.root)
    path = root / config.annotations
    data = expect_list(NAME, path, read_json(NAME, path, "annotations file"), "VizWiz question records")
    image_dir = require_dir(NAME, root / config.images, "image folder")
    questions: list[Question] = []
    answers: dict[str, tuple[str, ...]] = {}
    answerable: dict[str, bool] = {}
    answer_types: dict[str, str] = {}
    for index, value in enumerate(data):
        where = f"record {index}"
        record = records.record_object(NAME, path, value, where)
        require_fields(NAME, path, record, ["image", "question", "answers", "answer_type", "answerable"], where)
        qid = records.text(NAME, path, record, "image", where)
        where = f"record {index} (image {qid})"
        question = records.text(NAME, path, record, "question", where)
        human = _human_answers(path, record, where)
        if qid in answers:
            raise records.duplicate(NAME, path, "image", qid)
        answerable[qid] = records.flag(NAME, path, record, "answerable", where)
        answer_types[qid] = records.text(NAME, path, record, "answer_type", where)
        answers[qid] = tuple(normalize_answer(a) for a in human)
        questions.append(Question(id=qid, prompt=prompt(question), image=image_dir / qid,
                                  max_new_tokens=config.max_new_tokens))
    records.require_questions(NAME, path, len(questions))
    return VizWiz(questions, answers, answerable, answer_types)


def build(config: VizWizConfig, context: BuildContext) -> VizWiz:
    """The VizWiz benchmark read from the release under ``config.root``."""
    return read(config, context)


def example(tmp_dir: Path) -> Example:
    """A four-question VizWiz val release written under ``tmp_dir``."""
    from kdkit_plugins.fixtures.benchmarks_vqa import write_vizwiz

    root = write_vizwiz(Path(tmp_dir) / "vizwiz")
    return Example(config={"kind": NAME, "root": str(root)}, context=BuildContext(name="eval", data_root=Path(tmp_dir)))


@hookimpl
def kdkit_benchmarks() -> dict[str, Factory]:
    return {NAME: Factory(config=VizWizConfig, build=build, example=example)}

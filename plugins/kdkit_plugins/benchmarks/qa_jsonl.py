"""A generic question/answer benchmark in LLaVA's ``model_vqa`` question-file format.

Questions: JSON lines ``{"question_id", "image", "text", "category"?}`` (``image`` relative to an
image folder; ``category`` optional). Answers: JSON lines ``{"question_id", "answer"}`` where the
answer is a string or a list of accepted strings. A prediction is right when it matches one of the
accepted answers under the configured rule (:data:`MATCHES`); ``accuracy`` is the percent of right
answers, overall and per category (``accuracy/<category>``).
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from kdkit import BuildContext, Example, Factory, PluginConfig, hookimpl
from kdkit.evaluation.files import BenchmarkFileError, read_jsonl, require_fields
from kdkit.interfaces import Question, Scores
from kdkit_plugins.benchmarks.vqa_answers import check_prediction_ids, normalize_answer

NAME = "qa_jsonl"
_PUNCTUATION = str.maketrans("", "", string.punctuation)
IMAGE_TOKEN = "<image>"

Match = Literal["exact", "first_word", "vqa"]


class QaJsonlConfig(PluginConfig):
    """Questions and answers in LLaVA's JSON-lines question-file format, scored by answer match, per category."""

    kind: Literal["qa_jsonl"] = "qa_jsonl"
    questions: str = Field(description="JSON-lines question file: {question_id, image, text, category?} per line "
                                       "(relative paths are resolved against the data root).")
    answers: str = Field(description="JSON-lines answer file: {question_id, answer} per line, the answer a string "
                                     "or a list of accepted strings.")
    images: str = Field(description="Folder the questions' `image` paths are relative to.")
    suffix: str = Field("", description="Text appended to every question's `text` to make the prompt (e.g. "
                                        "'\\nAnswer the question using a single word or phrase.').")
    match: Match = Field("exact", description="How a prediction matches an accepted answer: 'exact' (whole texts "
                                              "equal once lower-cased, punctuation removed, spaces collapsed), "
                                              "'first_word' (the prediction's first word, so normalized, equals the "
                                              "normalized answer) or 'vqa' (equal after the official VQA answer "
                                              "normalization: numbers as digits, articles dropped...).")
    max_new_tokens: int = Field(16, ge=1, description="Longest answer to generate, in tokens.")


def normalize(text: str) -> str:
    """``" The Red  car."`` -> ``"the red car"``: lower-cased, punctuation removed, whitespace collapsed."""
    return " ".join(text.lower().translate(_PUNCTUATION).split())


def first_word(text: str) -> str:
    """The first word of :func:`normalize` ``(text)`` (empty when there is none)."""
    words = normalize(text).split()
    return words[0] if words else ""


#: Each matching rule: ``(prediction, accepted answer) -> right?``.
MATCHES: dict[str, Callable[[str, str], bool]] = {
    "exact": lambda prediction, answer: normalize(prediction) == normalize(answer),
    "first_word": lambda prediction, answer: first_word(prediction) == normalize(answer),
    "vqa": lambda prediction, answer: normalize_answer(prediction) == normalize_answer(answer),
}


@dataclass(frozen=True)
class QaItem:
    """One question with its accepted answers and category (None when the file gives none)."""

    question: Question
    answers: tuple[str, ...]
    category: str | None


class QaJsonl:
    """The questions of a question file and their scoring (see the module docstring).

    Attributes:
        metrics: ``accuracy``, then ``accuracy/<category>`` for each category in the file, in order
            of first appearance.
        primary: ``accuracy``.
        published: Empty (no paper numbers apply to arbitrary files).
    """

    primary = "accuracy"

    def __init__(self, items: Sequence[QaItem], match: str) -> None:
        self.items = {item.question.id: item for item in items}
        self.match = MATCHES[match]
        self.categories = tuple(dict.fromkeys(i.category for i in items if i.category is not None))
        self.metrics = ("accuracy", *(f"accuracy/{c}" for c in self.categories))
        self.published: dict[str, float] = {}

    def questions(self) -> list[Question]:
        """Every question in file order; ids are the files' ``question_id`` as strings."""
        return [item.question for item in self.items.values()]

    def is_right(self, question_id: str, prediction: str) -> bool:
        """Whether ``prediction`` matches one of the question's accepted answers."""
        return any(self.match(prediction, answer) for answer in self.items[question_id].answers)

    def score(self, predictions: Mapping[str, str]) -> Scores:
        """Answers by question id (all or some of :meth:`questions`) -> accuracy in percent.

        Units are the questions (100 right, 0 wrong); categories without any answered question are
        left out.

        Raises:
            BenchmarkFileError: an id that is not one of this benchmark's questions.
        """
        check_prediction_ids(NAME, predictions, self.items)
        units: dict[str, float] = {}
        for qid, text in predictions.items():
            units[qid] = 100.0 if self.is_right(qid, text) else 0.0
        by_category: dict[str, list[float]] = {}
        for qid, value in units.items():
            category = self.items[qid].category
            if category is not None:
                by_category.setdefault(category, []).append(value)
        metrics = {"accuracy": sum(units.values()) / len(units) if units else 0.0}
        table: dict[str, Any] = {}
        for category in self.categories:
            values = by_category.get(category)
            if values:
                metrics[f"accuracy/{category}"] = sum(values) / len(values)
                table[category] = {"questions": len(values), "right": round(sum(values) / 100),
                                   "accuracy": metrics[f"accuracy/{category}"]}
        details = {"questions": len(units), "right": round(sum(units.values()) / 100), "categories": table}
        return Scores(metrics=metrics, units=units, details=details)


def without_placeholder(text: str) -> str:
    """``text`` without LLaVA's ``<image>`` placeholder (and the line break beside it): the student
    places the image itself. Question files written for ``model_vqa`` have none."""
    for placeholder in (f"{IMAGE_TOKEN}\n", f"\n{IMAGE_TOKEN}", IMAGE_TOKEN):
        text = text.replace(placeholder, "")
    return text


def _accepted(path: Path, record: Mapping[str, Any], where: str) -> tuple[str, ...]:
    """The accepted answers of one answer record (a string or a non-empty list of strings)."""
    answer = record["answer"]
    values = [answer] if isinstance(answer, str) else answer
    if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
        raise BenchmarkFileError(f"{NAME}: {path} {where}: field 'answer' is {answer!r}, expected a string or a "
                                 "non-empty list of strings")
    return tuple(values)


def read_answers(path: Path) -> dict[str, tuple[str, ...]]:
    """Accepted answers by question id (as a string) from the answer file.

    Raises:
        BenchmarkFileError: a missing/unreadable file, a record without ``question_id``/``answer``, a
            malformed answer, or a question id given twice.
    """
    answers: dict[str, tuple[str, ...]] = {}
    for number, record in enumerate(read_jsonl(NAME, path, "answer file"), 1):
        require_fields(NAME, path, record, ("question_id", "answer"), f"record {number}")
        qid = str(record["question_id"])
        where = f"record {number} (question_id {qid})"
        if qid in answers:
            raise BenchmarkFileError(f"{NAME}: {path} {where}: field 'question_id' repeats an earlier record")
        answers[qid] = _accepted(path, record, where)
    return answers


def read_questions(path: Path, answers: Mapping[str, tuple[str, ...]], answers_path: Path, images: Path,
                   suffix: str, max_new_tokens: int) -> list[QaItem]:
    """The questions of the question file, each with its accepted answers.

    Raises:
        BenchmarkFileError: a missing/unreadable/empty file, a record without ``question_id``/``text``,
            a non-string ``image``/``text``/``category``, a repeated id, or a question without an answer.
    """
    records = read_jsonl(NAME, path, "question file")
    if not records:
        raise BenchmarkFileError(f"{NAME}: question file {path} holds no question")
    items: list[QaItem] = []
    seen: set[str] = set()
    for number, record in enumerate(records, 1):
        require_fields(NAME, path, record, ("question_id", "text"), f"record {number}")
        qid = str(record["question_id"])
        where = f"record {number} (question_id {qid})"
        for field, optional in (("text", False), ("image", True), ("category", True)):
            value = record.get(field)
            if not (isinstance(value, str) and value) and not (optional and value is None):
                raise BenchmarkFileError(f"{NAME}: {path} {where}: field {field!r} is {value!r}, expected a "
                                         "non-empty string")
        if qid in seen:
            raise BenchmarkFileError(f"{NAME}: {path} {where}: field 'question_id' repeats an earlier record")
        seen.add(qid)
        if qid not in answers:
            raise BenchmarkFileError(f"{NAME}: answer file {answers_path} has no answer for question_id {qid} "
                                     f"(record {number} of {path})")
        image = images / record["image"] if record.get("image") is not None else None
        question = Question(id=qid, prompt=without_placeholder(record["text"]) + suffix, image=image,
                            max_new_tokens=max_new_tokens)
        items.append(QaItem(question, answers[qid], record.get("category")))
    return items


def build(config: QaJsonlConfig, context: BuildContext) -> QaJsonl:
    """Read both files (errors at build, naming the file, record and field)."""
    answers_path = context.resolve(config.answers)
    answers = read_answers(answers_path)
    items = read_questions(context.resolve(config.questions), answers, answers_path, context.resolve(config.images),
                           config.suffix, config.max_new_tokens)
    return QaJsonl(items, config.match)


def example(tmp_dir: Path) -> Example:
    """The tiny files of :func:`kdkit_plugins.fixtures.benchmarks_yesno.write_qa_jsonl` (two categories)."""
    from kdkit_plugins.fixtures.benchmarks_yesno import write_qa_jsonl

    files = write_qa_jsonl(tmp_dir / "qa")
    config = {"kind": NAME, "questions": str(files.questions.relative_to(tmp_dir)),
              "answers": str(files.answers.relative_to(tmp_dir)), "images": str(files.images.relative_to(tmp_dir)),
              "match": "first_word", "max_new_tokens": 3}
    return Example(config=config, context=BuildContext(name="eval", data_root=tmp_dir))


@hookimpl
def kdkit_benchmarks() -> dict[str, Factory]:
    return {NAME: Factory(config=QaJsonlConfig, build=build, example=example)}

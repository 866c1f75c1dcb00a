"""GQA testdev-balanced as LLaVA-1.5 evaluates it: exact match of the short answer.

Reads the released ``testdev_balanced_questions.json`` (an object ``{question_id: {imageId,
question, answer, types: {structural, semantic, detailed}, isBalanced, ...}}``) and the images
``images/<imageId>.jpg``. The prompt is the question and LLaVA-1.5's short-answer instruction.

Scoring as LLaVA-1.5 + the official GQA ``eval.py``: the generated text, stripped, loses its trailing
periods and is lower-cased, then must equal the record's ``answer`` exactly. Questions with
``isBalanced: false`` are not asked (the official accuracy counts balanced questions only). Details
hold accuracy per structural and semantic type and over binary (non-``query``) / open (``query``)
questions, for records that carry ``types``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from kdkit import BuildContext, Example, Factory, PluginConfig, hookimpl
from kdkit.evaluation.files import expect_mapping, read_json, require_dir, require_fields
from kdkit.interfaces import Question, Scores
from kdkit_plugins.benchmarks import vqa_records as records
from kdkit_plugins.benchmarks.vqa_answers import SHORT_ANSWER, check_prediction_ids, group_table, percent

NAME = "gqa"


class GQAConfig(PluginConfig):
    """Where the GQA release is."""

    kind: Literal["gqa"] = "gqa"
    root: str = Field("gqa", description="Folder of the GQA release (relative paths are resolved against the data "
                                         "root).")
    questions: str = Field("testdev_balanced_questions.json", description="Questions file, relative to `root`.")
    images: str = Field("images", description="Folder of the images `<imageId>.jpg`, relative to `root`.")
    max_new_tokens: int = Field(16, ge=1, description="Longest answer to generate, in tokens.")


def prompt(question: str) -> str:
    """The question as LLaVA-1.5 asks it."""
    return question + SHORT_ANSWER


def normalize_prediction(text: str) -> str:
    """A generated answer as LLaVA-1.5 submits it to GQA's evaluation: stripped, trailing periods
    removed, lower-cased (``" Yes.\\n"`` -> ``"yes"``)."""
    return text.strip().rstrip(".").lower()


class GQA:
    """GQA questions and their exact-match scorer.

    Args:
        questions: The balanced questions in file order.
        answers: The gold answer by question id.
        types: ``{"structural": ..., "semantic": ...}`` by question id, for records that have them.
    """

    metrics: tuple[str, ...] = ("accuracy",)
    primary: str = "accuracy"
    published: dict[str, float] = {"LLaVA-1.5 7B (paper)": 62.0, "HAWAII 7B (paper)": 62.8}

    def __init__(self, questions: list[Question], answers: dict[str, str], types: dict[str, dict[str, str]]) -> None:
        self._questions = questions
        self._answers = answers
        self._types = types

    def questions(self) -> list[Question]:
        """Every balanced question, in file order."""
        return list(self._questions)

    def score(self, predictions: Mapping[str, str]) -> Scores:
        """Raw answers by question id (all or some) -> ``accuracy`` in percent, per-question units, and
        binary/open and per-type accuracy tables in details; no metric for no predictions."""
        check_prediction_ids(NAME, predictions, self._answers)
        correct = {qid: float(normalize_prediction(text) == self._answers[qid]) for qid, text in predictions.items()}
        details: dict[str, Any] = {"count": len(correct)}
        structural = {q: t["structural"] for q, t in self._types.items() if "structural" in t}
        semantic = {q: t["semantic"] for q, t in self._types.items() if "semantic" in t}
        if any(q in structural for q in correct):
            answer_kind = {q: "open" if kind == "query" else "binary" for q, kind in structural.items()}
            details["per_answer_kind"] = group_table(correct, answer_kind)
            details["per_structural_type"] = group_table(correct, structural)
        if any(q in semantic for q in correct):
            details["per_semantic_type"] = group_table(correct, semantic)
        accuracy = percent(list(correct.values()))
        metrics = {} if math.isnan(accuracy) else {"accuracy": accuracy}
        return Scores(metrics=metrics, units={qid: 100.0 * value for qid, value in correct.items()}, details=details)


def _types(path: Path, record: dict[str, Any], where: str) -> dict[str, str]:
    """The record's structural/semantic type names (those it has)."""
    value = record.get("types")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise records.field_error(NAME, path, where, "types", value, "an object of type names")
    found = {}
    for key in ("structural", "semantic"):
        if key in value:
            if not isinstance(value[key], str):
                raise records.field_error(NAME, path, where, f"types.{key}", value[key], "a string")
            found[key] = value[key]
    return found


def read(config: GQAConfig, context: BuildContext) -> GQA:
    """Read and check the questions file; the image folder must exist (images are not opened)."""
    root = context.resolve(config.root)
    path = root / config.questions
    data = expect_mapping(NAME, path, read_json(NAME, path, "questions file"), "question records by question id")
    image_dir = require_dir(NAME, root / config.images, "image folder")
    questions: list[Question] = []
    answers: dict[str, str] = {}
    types: dict[str, dict[str, str]] = {}
    for qid, value in data.items():
        where = f"question {qid!r}"
        record = records.record_object(NAME, path, value, where)
        require_fields(NAME, path, record, ["imageId", "question", "answer"], where)
        balanced = record.get("isBalanced", True)
        if not isinstance(balanced, bool):
            raise records.field_error(NAME, path, where, "isBalanced", balanced, "true or false")
        image = records.text(NAME, path, record, "imageId", where)
        question = records.text(NAME, path, record, "question", where)
        if not isinstance(record["answer"], str):
            raise records.field_error(NAME, path, where, "answer", record["answer"], "a string")
        kinds = _types(path, record, where)
        if not balanced:
            continue
        answers[qid] = record["answer"]
        if kinds:
            types[qid] = kinds
        questions.append(Question(id=qid, prompt=prompt(question), image=image_dir / f"{image}.jpg",
                                  max_new_tokens=config.max_new_tokens))
    records.require_questions(NAME, path, len(questions))
    return GQA(questions, answers, types)


def build(config: GQAConfig, context: BuildContext) -> GQA:
    """The GQA benchmark read from the release under ``config.root``."""
    return read(config, context)


def example(tmp_dir: Path) -> Example:
    """A five-question GQA testdev-balanced release written under ``tmp_dir``."""
    from kdkit_plugins.fixtures.benchmarks_vqa import write_gqa

    root = write_gqa(Path(tmp_dir) / "gqa")
    return Example(config={"kind": NAME, "root": str(root)}, context=BuildContext(name="eval", data_root=Path(tmp_dir)))


@hookimpl
def kdkit_benchmarks() -> dict[str, Factory]:
    return {NAME: Factory(config=GQAConfig, build=build, example=example)}

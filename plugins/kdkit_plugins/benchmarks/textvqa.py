"""TextVQA val (v0.5.1) as LLaVA-1.5 evaluates it: short answers scored with VQA accuracy.

Reads the released ``TextVQA_0.5.1_val.json`` (``{"data": [{question_id, question, image_id,
answers (10 strings), ocr_tokens, ...}]}``) and the images ``train_images/<image_id>.jpg`` (the val
questions are asked on Open Images train images). The prompt is the capitalized question and
LLaVA-1.5's short-answer instruction; with ``ocr_tokens`` the line ``Reference OCR token: <tokens
joined by ", ">`` goes between them (present even when a record has no tokens), as in LLaVA-1.5's
``llava_textvqa_val_v051_ocr.jsonl``, the file its published TextVQA numbers were measured with.

Scoring: prediction and human answers normalized by the VQA answer processor, then VQA accuracy
(:mod:`kdkit_plugins.benchmarks.vqa_answers`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field

from kdkit import BuildContext, Example, Factory, PluginConfig, hookimpl
from kdkit.evaluation.files import expect_mapping, read_json, require_dir, require_fields
from kdkit.interfaces import Question, Scores
from kdkit_plugins.benchmarks import vqa_records as records
from kdkit_plugins.benchmarks.vqa_answers import (SHORT_ANSWER, check_prediction_ids, normalize_answer, percent,
                                                  soft_accuracy)

NAME = "textvqa"
#: Label of the OCR line in LLaVA-1.5's TextVQA prompts.
OCR_PREFIX = "\nReference OCR token: "


class TextVQAConfig(PluginConfig):
    """Where the TextVQA release is and how its questions are asked."""

    kind: Literal["textvqa"] = "textvqa"
    root: str = Field("textvqa", description="Folder of the TextVQA release (relative paths are resolved against "
                                             "the data root).")
    annotations: str = Field("TextVQA_0.5.1_val.json", description="Annotations file, relative to `root`.")
    images: str = Field("train_images", description="Folder of the images `<image_id>.jpg`, relative to `root`.")
    ocr_tokens: bool = Field(True, description="Add the record's OCR tokens to the prompt (`Reference OCR token: "
                                               "a, b, c`), as LLaVA-1.5's TextVQA prompt file does: its published "
                                               "TextVQA numbers (and HAWAII's) were measured with them; false asks "
                                               "the bare question, as lmms-eval's default does.")
    max_new_tokens: int = Field(16, ge=1, description="Longest answer to generate, in tokens.")


def prompt(question: str, ocr_tokens: Sequence[str] | None = None) -> str:
    """The question as LLaVA-1.5 asks it; with ``ocr_tokens`` (even an empty list) the OCR line is added."""
    ocr = "" if ocr_tokens is None else OCR_PREFIX + ", ".join(ocr_tokens)
    return question.capitalize() + ocr + SHORT_ANSWER


class TextVQA:
    """TextVQA questions and their VQA-accuracy scorer.

    Args:
        questions: The questions in file order.
        answers: Normalized human answers by question id.
    """

    metrics: tuple[str, ...] = ("accuracy",)
    primary: str = "accuracy"
    published: dict[str, float] = {"LLaVA-1.5 7B (paper)": 58.2, "HAWAII 7B (paper)": 58.7}

    def __init__(self, questions: list[Question], answers: dict[str, tuple[str, ...]]) -> None:
        self._questions = questions
        self._answers = answers

    def questions(self) -> list[Question]:
        """Every question, in file order."""
        return list(self._questions)

    def score(self, predictions: Mapping[str, str]) -> Scores:
        """Raw answers by question id (all or some of the questions) -> ``accuracy`` in percent, the
        per-question accuracies as units, and the count in details; no metric for no predictions."""
        check_prediction_ids(NAME, predictions, self._answers)
        per_question = {qid: soft_accuracy(normalize_answer(text), self._answers[qid])
                        for qid, text in predictions.items()}
        if not per_question:
            return Scores(metrics={}, details={"count": 0})
        return Scores(metrics={"accuracy": percent(list(per_question.values()))},
                      units={qid: 100.0 * value for qid, value in per_question.items()},
                      details={"count": len(per_question)})


def read(config: TextVQAConfig, context: BuildContext) -> TextVQA:
    """Read and check the annotations file; the image folder must exist (images are not opened)."""
    root = context.resolve(config.root)
    path = root / config.annotations
    top = expect_mapping(NAME, path, read_json(NAME, path, "annotations file"), "dataset fields with 'data'")
    require_fields(NAME, path, top, ["data"], "top level")
    if not isinstance(top["data"], list):
        raise records.field_error(NAME, path, "top level", "data", top["data"], "a list of question records")
    image_dir = require_dir(NAME, root / config.images, "image folder")
    needed = ["question_id", "question", "image_id", "answers"] + (["ocr_tokens"] if config.ocr_tokens else [])
    questions: list[Question] = []
    answers: dict[str, tuple[str, ...]] = {}
    for index, value in enumerate(top["data"]):
        where = f"data[{index}]"
        record = records.record_object(NAME, path, value, where)
        require_fields(NAME, path, record, needed, where)
        qid = records.identifier(NAME, path, record, "question_id", where)
        where = f"data[{index}] (question_id {qid})"
        question = records.text(NAME, path, record, "question", where)
        image = records.text(NAME, path, record, "image_id", where)
        human = records.strings(NAME, path, record, "answers", where)
        ocr = records.strings(NAME, path, record, "ocr_tokens", where, allow_empty=True) if config.ocr_tokens else None
        if qid in answers:
            raise records.duplicate(NAME, path, "question_id", qid)
        answers[qid] = tuple(normalize_answer(a) for a in human)
        questions.append(Question(id=qid, prompt=prompt(question, ocr), image=image_dir / f"{image}.jpg",
                                  max_new_tokens=config.max_new_tokens))
    records.require_questions(NAME, path, len(questions))
    return TextVQA(questions, answers)


def build(config: TextVQAConfig, context: BuildContext) -> TextVQA:
    """The TextVQA benchmark read from the release under ``config.root``."""
    return read(config, context)


def example(tmp_dir: Path) -> Example:
    """A four-question TextVQA release written under ``tmp_dir``."""
    from kdkit_plugins.fixtures.benchmarks_vqa import write_textvqa

    root = write_textvqa(Path(tmp_dir) / "textvqa")
    return Example(config={"kind": NAME, "root": str(root)}, context=BuildContext(name="eval", data_root=Path(tmp_dir)))


@hookimpl
def kdkit_benchmarks() -> dict[str, Factory]:
    return {NAME: Factory(config=TextVQAConfig, build=build, example=example)}

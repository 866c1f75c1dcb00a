"""SEED-Bench (image part): four-option questions on images, scored by accuracy overall and per type.

Reads the official release: ``SEED-Bench.json`` holding ``questions`` (each ``{question_id, question,
choice_a..choice_d, answer, data_type, data_id, question_type_id}``) and ``question_type``
(name -> id), with the images at ``SEED-Bench-image/<data_id>``. Only ``data_type == "image"``
questions are asked (question types 1-9; the video ones are left out): the SEED-Bench-IMG number
LLaVA-1.5 reports.

The prompt is LLaVA-1.5's / lmms-eval's: the question, the options ``A. <choice_a>`` ... ``D.
<choice_d>`` one per line, then ``Answer with the option's letter from the given choices
directly.``. An answer is read back to a letter by
:func:`kdkit_plugins.benchmarks.choices.parse_choice` (LLaVA compares the whole answer to the letter,
lmms-eval its first character; both agree with it on answers that are a letter).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from kdkit import BuildContext, Example, Factory, PluginConfig, hookimpl
from kdkit.evaluation.files import (BenchmarkFileError, expect_list, expect_mapping, read_json, require_dir,
                                    require_fields)
from kdkit.interfaces import Question
from kdkit_plugins.benchmarks.choices import ChoiceBenchmark, ChoiceItem, choice_prompt, letter_of

NAME = "seedbench"
#: Longest answer generated: a letter, or a short sentence naming one.
MAX_NEW_TOKENS = 16
PUBLISHED = {"LLaVA-1.5 7B (paper)": 66.1, "HAWAII 7B (paper)": 67.5}
CHOICE_FIELDS = ("choice_a", "choice_b", "choice_c", "choice_d")
FIELDS = ("question_id", "question", *CHOICE_FIELDS, "answer", "data_id", "question_type_id")


class SeedBenchConfig(PluginConfig):
    """SEED-Bench's image questions (four options each), scored by accuracy."""

    kind: Literal["seedbench"] = "seedbench"
    root: str = Field("SEED-Bench", description="Folder of the SEED-Bench release (relative paths are resolved "
                                                "against the data root).")
    annotations: str = Field("SEED-Bench.json", description="Annotation file, under `root`, with `questions` and "
                                                            "`question_type`.")
    images: str = Field("SEED-Bench-image", description="Folder, under `root`, of the images named by the image "
                                                        "questions' `data_id`.")


def read_items(path: Path, images: Path) -> list[ChoiceItem]:
    """The image questions of the annotation file, in file order, tagged with their type's name.

    Raises:
        BenchmarkFileError: a missing or malformed file, a question lacking a field, an answer that is
            not A-D, a repeated question id (named by position and id).
    """
    data = expect_mapping(NAME, path, read_json(NAME, path, "annotation file"), "questions and question types")
    require_fields(NAME, path, data, ("questions", "question_type"), "top level")
    questions = expect_list(NAME, path, data["questions"], "questions")
    types = expect_mapping(NAME, path, data["question_type"], "question type ids by name")
    type_names = {str(type_id): name for name, type_id in types.items()}
    items: list[ChoiceItem] = []
    seen: set[str] = set()
    for number, record in enumerate(questions):
        where = f"question #{number}"
        if not isinstance(record, dict):
            raise BenchmarkFileError(f"{NAME}: {path} {where} is a {type(record).__name__}, expected an object")
        require_fields(NAME, path, record, ("data_type",), where)
        if record["data_type"] != "image":
            continue
        require_fields(NAME, path, record, FIELDS, where)
        qid = str(record["question_id"])
        where = f"{where} (question_id {qid})"
        if qid in seen:
            raise BenchmarkFileError(f"{NAME}: {path} {where}: question_id repeated")
        seen.add(qid)
        options = tuple(str(record[f]) for f in CHOICE_FIELDS)
        answer = letter_of(NAME, f"{path} {where}", record["answer"], len(options))
        type_id = str(record["question_type_id"])
        question = Question(id=qid, prompt=choice_prompt(str(record["question"]), options),
                            image=images / str(record["data_id"]), max_new_tokens=MAX_NEW_TOKENS)
        items.append(ChoiceItem(question, options, answer, {"question_type": type_names.get(type_id, type_id)}))
    return items


def build(config: SeedBenchConfig, context: BuildContext) -> ChoiceBenchmark:
    """The image questions (annotation file read and checked now; images when asked)."""
    root = require_dir(NAME, context.resolve(config.root), "release folder")
    items = read_items(root / config.annotations, root / config.images)
    if not items:
        raise BenchmarkFileError(f"{NAME}: {root / config.annotations} has no question with data_type 'image'")
    return ChoiceBenchmark(NAME, items, PUBLISHED)


def example(tmp_dir: Path) -> Example:
    """A release of 4 image questions of 3 types and one video question."""
    from kdkit_plugins.fixtures.benchmarks_choice import write_seedbench

    root = write_seedbench(tmp_dir)
    return Example(config={"kind": NAME, "root": str(root)},
                   context=BuildContext(name="eval", data_root=Path(tmp_dir)))


@hookimpl
def kdkit_benchmarks() -> dict[str, Factory]:
    return {NAME: Factory(config=SeedBenchConfig, build=build, example=example)}

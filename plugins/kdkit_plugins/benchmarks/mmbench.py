"""MMBench (dev, English) with circular evaluation, asked as LLaVA-1.5 does.

Reads the official TSV release ``mmbench_dev_20230712.tsv`` (columns ``index, question, hint, A, B, C,
D, answer, category, image`` (base64), ``source, l2-category, comment, split``). Circular evaluation:
a question counts as right only when it is answered right in every pass, one pass per rotation of
its options (as many passes as it has options). The released TSV already holds the passes: the
k-th rotation of question ``i`` is the row of index ``i + k * 1_000_000`` (options shifted, answer
letter following its option), so each row is asked once and rows are grouped by ``index %
1_000_000`` (or by their ``g_index`` column where a file has one), as MMBench's evaluator groups
them. A TSV without pass rows (every index below 1_000_000, no ``g_index``) is rotated here instead,
LLaVA's ``--all-rounds`` way: pass ``k`` shows the options shifted left by ``k`` places, with id
``<index>/r<k>``. The ``circular`` setting forces either way.

The prompt is LLaVA-1.5's (``model_vqa_mmbench.py --single-pred-prompt``): the hint on its own line
when it is set, the question, the options ``A. <text>`` one per line (up to the first empty option),
then ``Answer with the option's letter from the given choices directly.``. Answers are read back to
a letter by :func:`kdkit_plugins.benchmarks.choices.parse_choice`; MMBench's official evaluator asks
ChatGPT to match the answers its rules cannot, so free-text answers may score lower here.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field

from kdkit import BuildContext, Example, Factory, PluginConfig, hookimpl
from kdkit.evaluation.files import BenchmarkFileError, decode_base64_image, read_tsv, require_dir
from kdkit.interfaces import Question, Scores
from kdkit_plugins.benchmarks.choices import (ChoiceItem, Outcome, accuracy_scores, choice_prompt, letter_of,
                                              option_letters, require_known_ids)

NAME = "mmbench"
#: Index offset between a question and its circular passes in the released TSV.
PASS_OFFSET = 1_000_000
#: Longest answer generated: a letter, or a short sentence naming one.
MAX_NEW_TOKENS = 16
PUBLISHED = {"LLaVA-1.5 7B (paper)": 64.3, "HAWAII 7B (paper)": 66.9}
REQUIRED = ("index", "question", "A", "B", "answer", "image")
#: Image fields this short are the index of the row holding the image (later MMBench TSVs).
IMAGE_REFERENCE_CHARS = 64


class MMBenchConfig(PluginConfig):
    """MMBench's dev questions, scored by circular accuracy."""

    kind: Literal["mmbench"] = "mmbench"
    root: str = Field("mmbench", description="Folder of the MMBench release (relative paths are resolved against "
                                             "the data root).")
    annotations: str = Field("mmbench_dev_20230712.tsv", description="TSV file, under `root`, of the questions "
                                                                     "with base64 images and answers.")
    circular: Literal["auto", "file", "rotate"] = Field(
        "auto", description="Where the circular passes come from: `file` (its rows are the passes, grouped by the "
                            "`g_index` column or by index modulo 1000000), `rotate` (each row is rotated here), "
                            "`auto` (`file` when an index reaches 1000000 or a `g_index` column exists).")


def is_blank(value: str | None) -> bool:
    """Whether a TSV field is empty the way pandas reads it: nothing, ``nan`` or ``none``."""
    return value is None or value.strip().lower() in ("", "nan", "none")


def options_of(row: Mapping[str, str | None]) -> list[str]:
    """The row's option texts, ``A``, ``B``, ... up to the first empty one."""
    options = []
    for letter in string.ascii_uppercase:
        value = row.get(letter)
        if is_blank(value):
            break
        options.append(str(value))
    return options


def prompt_of(question: str, options: Sequence[str], hint: str | None) -> str:
    """LLaVA-1.5's MMBench prompt (the hint line only when the hint is set)."""
    return choice_prompt(question, options, preamble="" if is_blank(hint) else str(hint))


@dataclass(frozen=True)
class Group:
    """One MMBench question: the ids of its passes and its categories."""

    passes: tuple[str, ...]
    tags: Mapping[str, str] = field(default_factory=dict)


class MMBench:
    """MMBench passes and their circular scoring (see the module docstring).

    Attributes:
        metrics: ``("accuracy",)``: percent of questions right in every pass.
        primary: ``accuracy``.
        published: The papers' MMBench-dev accuracies of the 7B models.
    """

    metrics: tuple[str, ...] = ("accuracy",)
    primary = "accuracy"
    published = PUBLISHED

    def __init__(self, items: Sequence[ChoiceItem], groups: Mapping[str, Group], rotated: bool) -> None:
        """``items``: every pass, group after group; ``groups``: question index -> its passes."""
        self.items = {item.question.id: item for item in items}
        self.groups = dict(groups)
        self.rotated = rotated

    def questions(self) -> list[Question]:
        """Every pass, the passes of one question next to each other (so a ``--limit`` keeps whole
        questions)."""
        return [item.question for item in self.items.values()]

    def score(self, predictions: Mapping[str, str]) -> Scores:
        """Answers by pass id (all or some of :meth:`questions`) -> circular accuracy in percent.

        A question counts when all its passes were answered (others are left out; those with some
        passes answered are counted in ``incomplete``); it is right when every pass was answered
        with its answer letter. Units are the questions (by index); the details hold per-category
        and per-l2-category tables.

        Raises:
            BenchmarkFileError: an id that is not one of this benchmark's passes.
        """
        require_known_ids(NAME, predictions, self.items)
        outcomes, incomplete = [], 0
        for index, group in self.groups.items():
            if not all(p in predictions for p in group.passes):
                incomplete += any(p in predictions for p in group.passes)
                continue
            right = all(self.items[p].outcome(predictions[p]).correct for p in group.passes)
            outcomes.append(Outcome(index, right, group.tags))
        return accuracy_scores(outcomes, {"questions": len(self.groups), "passes": len(self.items),
                                          "incomplete": incomplete,
                                          "circular_passes": "rotated here" if self.rotated else "from the file"})


def _row_index(path: Path, number: int, row: Mapping[str, str | None]) -> int:
    value = row.get("index")
    try:
        index = int(str(value).strip())
    except ValueError:
        raise BenchmarkFileError(f"{NAME}: {path} row {number}: field 'index' is {value!r}, expected an "
                                 "integer") from None
    if index < 0:
        raise BenchmarkFileError(f"{NAME}: {path} row {number}: field 'index' is negative ({index})")
    return index


def read_rows(path: Path) -> dict[int, dict[str, str | None]]:
    """The TSV rows by index, checked: index an integer (unique), question and at least two options
    set, answer one of the option letters (errors name rows by number, the first after the header
    being row 1, and by index)."""
    rows: dict[int, dict[str, str | None]] = {}
    for number, row in enumerate(read_tsv(NAME, path, "question file", REQUIRED), start=1):
        index = _row_index(path, number, row)
        where = f"{path} row {number} (index {index})"
        if index in rows:
            raise BenchmarkFileError(f"{NAME}: {where}: index repeated")
        options = options_of(row)
        if len(options) < 2:
            raise BenchmarkFileError(f"{NAME}: {where}: fewer than two options in columns A, B, ...")
        if is_blank(row.get("question")):
            raise BenchmarkFileError(f"{NAME}: {where}: field 'question' is empty")
        if is_blank(row.get("image")):
            raise BenchmarkFileError(f"{NAME}: {where}: field 'image' is empty")
        letter_of(NAME, where, row.get("answer"), len(options))
        rows[index] = row
    if not rows:
        raise BenchmarkFileError(f"{NAME}: {path} has no question rows")
    return rows


def image_of(path: Path, rows: Mapping[int, Mapping[str, str | None]], index: int,
             cache: dict[str, bytes]) -> bytes:
    """The row's image bytes: its base64 field, or the field of the row it names by index."""
    field_value = str(rows[index]["image"]).strip()
    if len(field_value) <= IMAGE_REFERENCE_CHARS and field_value.isdigit() and int(field_value) in rows:
        field_value = str(rows[int(field_value)]["image"]).strip()
    if field_value not in cache:
        cache[field_value] = decode_base64_image(NAME, path, field_value, f"row of index {index}")
    return cache[field_value]


def group_of(path: Path, row: Mapping[str, str | None], index: int) -> int:
    """The question a row is a pass of: its ``g_index`` when the file has one, else ``index % 1_000_000``."""
    value = row.get("g_index")
    if value is None:
        return index % PASS_OFFSET
    try:
        return int(str(value).strip())
    except ValueError:
        raise BenchmarkFileError(f"{NAME}: {path} index {index}: field 'g_index' is {value!r}, expected an "
                                 "integer") from None


def build_items(path: Path, rows: Mapping[int, Mapping[str, str | None]], circular: str = "auto") -> MMBench:
    """The passes and their groups: the file's rows grouped by question (``circular`` ``file``), or
    every row rotated here (``rotate``); ``auto`` takes the file's passes when an index reaches
    1_000_000 or rows carry a ``g_index``."""
    if circular == "auto":
        sample = next(iter(rows.values()))
        circular = "file" if "g_index" in sample or any(index >= PASS_OFFSET for index in rows) else "rotate"
    rotated = circular == "rotate"
    grouped: dict[int, list[int]] = {}
    for index, row in rows.items():
        grouped.setdefault(index if rotated else group_of(path, row, index), []).append(index)
    cache: dict[str, bytes] = {}
    items: list[ChoiceItem] = []
    groups: dict[str, Group] = {}
    for key, members in grouped.items():
        members.sort()
        first = rows[members[0]]
        tags = {"category": str(first.get("category") or "unknown"),
                "l2_category": str(first.get("l2-category") or first.get("L2-category") or "unknown")}
        ids = []
        for index in members:
            row = rows[index]
            options = options_of(row)
            answer = option_letters(len(options)).index(str(row["answer"]).strip())
            image = image_of(path, rows, index, cache)
            for shift in range(len(options)) if rotated else (0,):
                shown = options[shift:] + options[:shift]
                qid = f"{index}/r{shift}" if rotated else str(index)
                question = Question(id=qid, prompt=prompt_of(str(row["question"]), shown, row.get("hint")),
                                    image=image, max_new_tokens=MAX_NEW_TOKENS)
                moved = option_letters(len(options))[(answer - shift) % len(options)]
                items.append(ChoiceItem(question, tuple(shown), moved, tags))
                ids.append(qid)
        groups[str(key)] = Group(tuple(ids), tags)
    return MMBench(items, groups, rotated)


def build(config: MMBenchConfig, context: BuildContext) -> MMBench:
    """The passes of every question (the TSV read, checked and its images decoded now)."""
    root = require_dir(NAME, context.resolve(config.root), "release folder")
    path = root / config.annotations
    return build_items(path, read_rows(path), config.circular)


def example(tmp_dir: Path) -> Example:
    """A TSV of 3 questions (4, 3 and 2 options) with their circular pass rows."""
    from kdkit_plugins.fixtures.benchmarks_choice import write_mmbench

    root = write_mmbench(tmp_dir)
    return Example(config={"kind": NAME, "root": str(root)},
                   context=BuildContext(name="eval", data_root=Path(tmp_dir)))


@hookimpl
def kdkit_benchmarks() -> dict[str, Factory]:
    return {NAME: Factory(config=MMBenchConfig, build=build, example=example)}

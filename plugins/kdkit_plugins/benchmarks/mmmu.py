"""MMMU (validation): college-level multiple-choice and open questions on images, scored by MMMU's rules.

Reads the official release: one parquet file per subject, ``<Subject>/validation-00000-of-00001.parquet``
with columns ``id, question, options`` (the Python text of a list), ``answer, question_type``
(``multiple-choice`` / ``open``) and ``image_1`` .. ``image_7`` (``{bytes, path}`` or empty). Only the
FIRST image of a question is shown (``image_1``, or the first non-empty one): the students evaluated
here take one image, as LLaVA-1.5 does; questions about several images are therefore harder than in
a multi-image evaluation. Reading parquet needs ``pyarrow``.

The prompt is lmms-eval's (what LLaVA-1.5's MMMU numbers use): a multiple-choice question is followed
by its options ``A. <text>`` one per line, a blank line and ``Answer with the option's letter from the
given choices directly.``; an open question by a blank line and ``Answer the question using a single
word or phrase.``. ``<image k>`` references stay in the text as released.

Scoring follows MMMU's ``eval_utils.py``: :func:`parse_multi_choice` (bracketed letter, then a letter
between spaces, then for answers longer than five words the option text; the last mention wins) and
:func:`parse_open` + :func:`eval_open` (key sub-answers after "is", "so", "=", ..., every number in
them, numbers compared rounded to 2 decimals, text by containment). Where MMMU picks a random letter
for an answer it cannot read, the guess here is drawn from a generator seeded by the question id, so
scores are reproducible (``guess_unparsed: false`` counts such answers wrong instead). The
generated text is stripped of surrounding whitespace first, as the generation scripts do.
"""

from __future__ import annotations

import ast
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from kdkit import BuildContext, Example, Factory, PluginConfig, hookimpl
from kdkit.errors import KdkitError
from kdkit.evaluation.files import BenchmarkFileError, require_dir, require_file
from kdkit.interfaces import Question, Scores
from kdkit_plugins.benchmarks.choices import (ANSWER_INSTRUCTION, Outcome, accuracy_scores, choice_prompt,
                                              option_letters, require_known_ids)

NAME = "mmmu"
OPEN_INSTRUCTION = "Answer the question using a single word or phrase."
#: Longest answer generated (lmms-eval's MMMU setting).
MAX_NEW_TOKENS = 16
PUBLISHED = {"LLaVA-1.5 7B (paper)": 34.7, "HAWAII 7B (paper)": 36.6}
COLUMNS = ("id", "question", "options", "answer", "question_type", "image_1")
IMAGE_COLUMNS = tuple(f"image_{k}" for k in range(1, 8))
QUESTION_TYPES = ("multiple-choice", "open")
#: MMMU's six disciplines and their subjects (the folder names of the release).
DISCIPLINES: dict[str, tuple[str, ...]] = {
    "Art and Design": ("Art", "Art_Theory", "Design", "Music"),
    "Business": ("Accounting", "Economics", "Finance", "Manage", "Marketing"),
    "Science": ("Biology", "Chemistry", "Geography", "Math", "Physics"),
    "Health and Medicine": ("Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine",
                            "Pharmacy", "Public_Health"),
    "Humanities and Social Science": ("History", "Literature", "Sociology", "Psychology"),
    "Tech and Engineering": ("Agriculture", "Architecture_and_Engineering", "Computer_Science", "Electronics",
                             "Energy_and_Power", "Materials", "Mechanical_Engineering"),
}
DISCIPLINE_OF = {subject: discipline for discipline, subjects in DISCIPLINES.items() for subject in subjects}


class MMMUConfig(PluginConfig):
    """MMMU's validation questions (first image only), scored by MMMU's answer parsing."""

    kind: Literal["mmmu"] = "mmmu"
    root: str = Field("MMMU", description="Folder of the MMMU release, one sub-folder per subject (relative "
                                          "paths are resolved against the data root).")
    file: str = Field("validation-00000-of-00001.parquet", description="Parquet file, in each subject's folder, "
                                                                       "of the evaluated split.")
    subjects: list[str] | None = Field(None, description="Subject folders to evaluate; by default every folder "
                                                         "of `root` that holds `file`.")
    guess_unparsed: bool = Field(True, description="A multiple-choice answer naming no option counts as a random "
                                                   "guess seeded by the question id, as MMMU's scorer guesses; "
                                                   "false counts it wrong.")


# ---------------------------------------------------------------- answer parsing (MMMU eval_utils rules)

def parse_multi_choice(response: str, options: Sequence[str]) -> str | None:
    """The option letter MMMU's rules read from ``response``, or None where MMMU would guess.

    ``,.!?;:'`` are stripped from both ends (one character kind after the other) and the text is
    padded with a space each side; candidates are the letters written ``(X)``, else those written
    `` X `` (between spaces), else, for a response of more than five words, the options whose text
    it contains (case ignored). Of several candidates the one mentioned last wins.
    """
    letters = option_letters(len(options))
    response = response.strip()
    for char in ",.!?;:'":
        response = response.strip(char)
    padded = f" {response} "
    lowered = padded.lower()
    # each rule: the mark of letter c in the response (searched as is, or lower-cased for option texts)
    rules = [(padded, lambda c: f"({c})"), (padded, lambda c: f" {c} ")]
    if len(padded.split()) > 5:
        rules.append((lowered, lambda c: options[letters.index(c)].lower()))
    for text, mark in rules:
        candidates = [c for c in letters if mark(c) in text]
        if candidates:
            # the last mentioned; of equal positions the first candidate, as numpy's argmax
            return max(candidates, key=lambda c: text.rfind(mark(c)))
    return None


def is_number(text: str) -> bool:
    """Whether ``text`` (thousands commas removed) reads as a float."""
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True


def normalize(text: str) -> list[str | float]:
    """MMMU's normal forms of an answer: a number rounded to 2 decimals, else the lower-case text
    (a one-character text as ``" x"`` and ``"x "``, so it only matches as a word)."""
    text = text.strip()
    if is_number(text):
        return [round(float(text.replace(",", "")), 2)]
    text = text.lower()
    return [f" {text}", f"{text} "] if len(text) == 1 else [text]


_WITH_COMMAS = re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b")
_SCIENTIFIC = re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+")
_SIMPLE = re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])")


def extract_numbers(text: str) -> list[str]:
    """Every number written in ``text``: with thousands commas, in scientific notation, plain."""
    return _WITH_COMMAS.findall(text) + _SCIENTIFIC.findall(text) + _SIMPLE.findall(text)


_KEY_MARKERS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")
_TRIVIAL = {":", ",", ".", "!", "?", ";", "'"}


def key_answers(response: str) -> list[str]:
    """The parts of a response that likely hold its answer: the response is lower-cased and split into
    sentences/lines; in each, the shortest tail after one of "could be", "so", "is", "thus",
    "therefore", "final", "answer", "result" (and "=" in the last one), trivial punctuation left out.
    The whole response when no part has one."""
    response = response.strip().strip(".").lower()
    parts = re.split(r"\.\s(?=[A-Z])|\n", response)
    keys = []
    for number, part in enumerate(parts):
        markers = _KEY_MARKERS + (("=",) if number == len(parts) - 1 else ())
        shortest = ""
        for marker in markers:  # an empty tail is replaced by the next one found, as MMMU does
            if marker in part:
                tail = part.split(marker)[-1].strip()
                if not shortest or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in _TRIVIAL:
            keys.append(shortest)
    return keys or [response]


def parse_open(response: str) -> list[str | float]:
    """MMMU's candidate answers of an open response: its key parts and every number in them, normalized."""
    keys = key_answers(response)
    raw = keys + [n for key in keys for n in extract_numbers(key)]
    return list(dict.fromkeys(form for text in raw for form in normalize(text)))


def eval_open(gold: str | Sequence[str], predicted: Sequence[str | float]) -> bool:
    """Whether a parsed open answer matches: a number equal to a numeric gold answer, or a text
    containing a textual gold answer (each of a list of gold answers counts)."""
    golds = [gold] if isinstance(gold, str) else list(gold)
    forms = [form for answer in golds for form in normalize(answer)]
    for pred in predicted:
        if isinstance(pred, str):
            if any(isinstance(form, str) and form in pred for form in forms):
                return True
        elif pred in forms:
            return True
    return False


def gold_answer(answer: str) -> str | list[str]:
    """A released answer: the text, or the list it writes (``"['6', '6.0']"``: any one counts)."""
    text = answer.strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return answer
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return value
    return answer


# ---------------------------------------------------------------- the benchmark

@dataclass(frozen=True)
class MMMUItem:
    """One MMMU question: as asked, its options (empty for open ones), answer and subject."""

    question: Question
    question_type: str
    options: tuple[str, ...]
    answer: str | list[str]
    subject: str

    def judge(self, text: str, guess: bool) -> tuple[bool, bool]:
        """``(right, guessed)`` for the generated answer ``text``."""
        if self.question_type == "open":
            return eval_open(self.answer, parse_open(text)), False
        letter = parse_multi_choice(text, self.options)
        guessed = letter is None
        if guessed and guess:
            letter = random.Random(f"{NAME}:{self.question.id}").choice(option_letters(len(self.options)))
        golds = [self.answer] if isinstance(self.answer, str) else self.answer
        return letter is not None and letter in [g.strip() for g in golds], guessed


class MMMU:
    """MMMU questions and their scoring (see the module docstring).

    Attributes:
        metrics: ``("accuracy",)``: percent of questions right (all subjects together).
        primary: ``accuracy``.
        published: The papers' MMMU-val accuracies of the 7B models.
    """

    metrics: tuple[str, ...] = ("accuracy",)
    primary = "accuracy"
    published = PUBLISHED

    def __init__(self, items: Sequence[MMMUItem], guess_unparsed: bool) -> None:
        self.items = {item.question.id: item for item in items}
        self.guess_unparsed = guess_unparsed

    def questions(self) -> list[Question]:
        """Every question, subject after subject in file order."""
        return [item.question for item in self.items.values()]

    def score(self, predictions: Mapping[str, str]) -> Scores:
        """Answers by question id (all or some of :meth:`questions`) -> accuracy in percent, with
        per-subject, per-discipline and per-question-type tables and the number of multiple-choice
        answers that named no option (``unparsed``).

        Raises:
            BenchmarkFileError: an id that is not one of this benchmark's questions.
        """
        require_known_ids(NAME, predictions, self.items)
        outcomes, unparsed = [], 0
        for qid, item in self.items.items():
            if qid not in predictions:
                continue
            right, guessed = item.judge(predictions[qid], self.guess_unparsed)
            unparsed += guessed
            tags = {"subject": item.subject, "discipline": DISCIPLINE_OF.get(item.subject, "other"),
                    "question_type": item.question_type}
            outcomes.append(Outcome(qid, right, tags))
        return accuracy_scores(outcomes, {"questions": len(self.items), "unparsed": unparsed,
                                          "unparsed_scored_as": "seeded guess" if self.guess_unparsed else "wrong"})


def prompt_of(question: str, question_type: str, options: Sequence[str]) -> str:
    """lmms-eval's MMMU prompt (see the module docstring)."""
    if question_type == "multiple-choice":
        return choice_prompt(question, options, instruction=ANSWER_INSTRUCTION, gap="\n\n")
    return f"{question}\n\n{OPEN_INSTRUCTION}"


def first_image(row: Mapping[str, Any]) -> bytes | None:
    """The bytes of the first non-empty ``image_k`` of a row (a ``{bytes, path}`` struct or bytes)."""
    for column in IMAGE_COLUMNS:
        value = row.get(column)
        if isinstance(value, dict):
            value = value.get("bytes")
        if isinstance(value, (bytes, bytearray)) and value:
            return bytes(value)
    return None


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of one subject's parquet file (the needed columns only)."""
    try:
        import pyarrow.parquet as pq
        from pyarrow import ArrowException
    except ImportError:
        raise KdkitError(f"{NAME}: reading the parquet release needs pyarrow (pip install pyarrow)") from None
    require_file(NAME, path, "parquet file")
    try:
        schema = pq.read_schema(path)
        missing = [c for c in COLUMNS if c not in schema.names]
        if missing:
            raise BenchmarkFileError(f"{NAME}: {path} has no column {', '.join(map(repr, missing))} (columns: "
                                     f"{', '.join(schema.names[:10])}); is this MMMU's parquet release?")
        wanted = [c for c in (*COLUMNS, *IMAGE_COLUMNS) if c in schema.names]
        return pq.read_table(path, columns=list(dict.fromkeys(wanted))).to_pylist()
    except (ArrowException, OSError) as exc:
        raise BenchmarkFileError(f"{NAME}: {path} is not a readable parquet file ({exc})") from None


def item_of(path: Path, subject: str, number: int, row: Mapping[str, Any]) -> MMMUItem:
    """One row as a question, checked (errors name the file, the row and the field)."""
    qid = row.get("id")
    where = f"{path} row {number} (id {qid!r})"
    for column in ("id", "question", "options", "answer", "question_type"):
        if not isinstance(row.get(column), str):
            raise BenchmarkFileError(f"{NAME}: {where}: field {column!r} is {row.get(column)!r}, expected text")
    question_type = row["question_type"]
    if question_type not in QUESTION_TYPES:
        raise BenchmarkFileError(f"{NAME}: {where}: field 'question_type' is {question_type!r}, expected one of "
                                 f"{', '.join(QUESTION_TYPES)}")
    try:
        options = ast.literal_eval(row["options"])
    except (ValueError, SyntaxError):
        options = None
    if not (isinstance(options, list) and all(isinstance(o, str) for o in options)):
        raise BenchmarkFileError(f"{NAME}: {where}: field 'options' is {row['options']!r}, expected the text of "
                                 "a list of strings")
    if question_type == "multiple-choice" and not options:
        raise BenchmarkFileError(f"{NAME}: {where}: field 'options' is empty for a multiple-choice question")
    question = Question(id=qid, prompt=prompt_of(row["question"], question_type, options), image=first_image(row),
                        max_new_tokens=MAX_NEW_TOKENS)
    return MMMUItem(question, question_type, tuple(options), gold_answer(row["answer"]), subject)


def subject_folders(root: Path, file: str, subjects: Sequence[str] | None) -> list[str]:
    """The subjects to read: the configured ones (each must hold ``file``) or every folder holding it."""
    if subjects is not None:
        for subject in subjects:
            require_file(NAME, root / subject / file, f"subject {subject!r} file")
        return list(subjects)
    found = sorted(p.name for p in root.iterdir() if (p / file).is_file())
    if not found:
        raise BenchmarkFileError(f"{NAME}: no <Subject>/{file} under {root}; is this MMMU's release folder?")
    return found


def build(config: MMMUConfig, context: BuildContext) -> MMMU:
    """Every question of the chosen subjects (parquet files read and checked now)."""
    root = require_dir(NAME, context.resolve(config.root), "release folder")
    items: list[MMMUItem] = []
    seen: set[str] = set()
    for subject in subject_folders(root, config.file, config.subjects):
        path = root / subject / config.file
        for number, row in enumerate(read_rows(path)):
            item = item_of(path, subject, number, row)
            if item.question.id in seen:
                raise BenchmarkFileError(f"{NAME}: {path} row {number}: id {item.question.id!r} repeated")
            seen.add(item.question.id)
            items.append(item)
    if not items:
        raise BenchmarkFileError(f"{NAME}: the {config.file} files under {root} hold no question")
    return MMMU(items, config.guess_unparsed)


def example(tmp_dir: Path) -> Example:
    """Two subjects, 4 questions: 2 multiple-choice (one whose first image is image_2), 2 open."""
    from kdkit_plugins.fixtures.benchmarks_choice import write_mmmu

    root = write_mmmu(tmp_dir)
    return Example(config={"kind": NAME, "root": str(root)},
                   context=BuildContext(name="eval", data_root=Path(tmp_dir)))


@hookimpl
def kdkit_benchmarks() -> dict[str, Factory]:
    return {NAME: Factory(config=MMMUConfig, build=build, example=example)}

"""MME (yes/no perception and cognition questions, two per image), scored as MME's ``calculation.py``.

Reads the official release folder ``MME_Benchmark_release_version/``: one folder per subtask, either
with ``images/`` and ``questions_answers_YN/`` (a ``.txt`` per image) or with each image and its
``.txt`` side by side. Every ``.txt`` line is ``question<TAB>answer`` (answer Yes/No). A subtask
scores ``acc + acc+`` (percent of questions right plus percent of images with all their questions
right, at most 200); ``perception`` sums the ten perception subtasks (at most 2000), ``cognition``
the four cognition ones (at most 800).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from kdkit import BuildContext, Example, Factory, PluginConfig, hookimpl
from kdkit.evaluation.files import BenchmarkFileError, require_dir
from kdkit.interfaces import Question, Scores
from kdkit_plugins.benchmarks.vqa_answers import SHORT_ANSWER, check_prediction_ids

NAME = "mme"
PERCEPTION: tuple[str, ...] = ("existence", "count", "position", "color", "posters", "celebrity", "scene",
                               "landmark", "artwork", "OCR")
COGNITION: tuple[str, ...] = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
SUBTASKS: tuple[str, ...] = PERCEPTION + COGNITION
#: MME's own answer instruction, which LLaVA-1.5 (and lmms-eval) remove from the question.
YES_NO = "Please answer yes or no."
#: Folder names of the "images + questions" layout.
IMAGES_DIR, QA_DIR = "images", "questions_answers_YN"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
#: Longest answer generated: the expected answer is one word.
MAX_NEW_TOKENS = 8
PUBLISHED = {"LLaVA-1.5 7B (paper)": 1510.7, "HAWAII 7B (paper)": 1540.2}

Subtask = Literal["existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork",
                  "OCR", "commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning"]


class MmeConfig(PluginConfig):
    """MME yes/no questions: perception (ten subtasks) and cognition (four), scored acc + acc+ per subtask."""

    kind: Literal["mme"] = "mme"
    root: str = Field("mme", description="Folder holding the MME release (relative paths are resolved against "
                                         "the data root).")
    release: str = Field("MME_Benchmark_release_version", description="The released folder, under `root`, with one "
                                                                      "folder per subtask.")
    subtasks: list[Subtask] = Field(default_factory=lambda: list(SUBTASKS), min_length=1,
                                    description="Subtasks to evaluate; `perception` and `cognition` sum the "
                                                "configured ones.")
    keep_yes_no: bool = Field(False, description="Keep MME's own 'Please answer yes or no.' in the prompt; "
                                                 "LLaVA-1.5 removes it and asks for a single word instead.")

    @field_validator("subtasks")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        repeated = sorted({s for s in value if value.count(s) > 1})
        if repeated:
            raise ValueError(f"subtask listed twice: {', '.join(repeated)}")
        return value


def parse_answer(text: str) -> str:
    """A generated answer -> ``"yes"``, ``"no"`` or ``"other"`` by MME's rule.

    The answer is stripped (as LLaVA's answer files hold it) and lower-cased; exactly "yes"/"no" is
    itself; otherwise its first four characters decide: containing "yes" -> yes, else containing
    "no" -> no (so "not sure" is no), else other (never right).
    """
    text = text.strip().lower()
    if text in ("yes", "no"):
        return text
    head = text[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def build_prompt(question: str, keep_yes_no: bool) -> str:
    """The prompt of one MME question: LLaVA-1.5's, i.e. without MME's yes/no instruction (unless
    ``keep_yes_no``), then the short-answer instruction on a new line."""
    if not keep_yes_no:
        question = question.replace(YES_NO, "").strip()
    return question + SHORT_ANSWER


@dataclass(frozen=True)
class MmeItem:
    """One question: the subtask, the image it belongs to (``<subtask>/<file>``) and the answer."""

    question: Question
    subtask: str
    image: str
    answer: str


@dataclass
class SubtaskTally:
    """Right answers of one subtask, by question and by image."""

    questions: int = 0
    right: int = 0
    images: int = 0
    images_right: int = 0

    def metrics(self) -> dict[str, float]:
        """``acc``, ``acc_plus`` (percent; 0 with nothing to count) and ``score`` = their sum."""
        acc = 100 * self.right / self.questions if self.questions else 0.0
        acc_plus = 100 * self.images_right / self.images if self.images else 0.0
        return {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus}


class Mme:
    """MME questions and their scoring (see the module docstring).

    Attributes:
        metrics: ``perception``, ``cognition``, ``total`` (sums of subtask scores), then each
            configured subtask's score under its name.
        primary: ``perception``.
        published: The papers' perception scores of the 7B models.
    """

    primary = "perception"
    published = PUBLISHED

    def __init__(self, items: Sequence[MmeItem], subtasks: Sequence[str]) -> None:
        self.items = {item.question.id: item for item in items}
        self.subtasks = tuple(subtasks)
        self.by_image: dict[str, list[str]] = defaultdict(list)
        for item in items:
            self.by_image[item.image].append(item.question.id)
        self.metrics = ("perception", "cognition", "total", *self.subtasks)

    def questions(self) -> list[Question]:
        """Every question: subtask by subtask, image files sorted by name, lines in file order.
        Ids are ``<subtask>/<image file>/<line number>``."""
        return [item.question for item in self.items.values()]

    def score(self, predictions: Mapping[str, str]) -> Scores:
        """Answers by question id (all or some of :meth:`questions`) -> MME points.

        An image counts for acc+ only when every one of its questions is answered; subtasks without
        any answered question are left out of the metrics and add nothing to the sums.

        Raises:
            BenchmarkFileError: an id that is not one of this benchmark's questions.
        """
        check_prediction_ids(NAME, predictions, self.items)
        correct = {qid: parse_answer(text) == self.items[qid].answer for qid, text in predictions.items()}
        tallies: dict[str, SubtaskTally] = {}
        for qid, right in correct.items():
            tally = tallies.setdefault(self.items[qid].subtask, SubtaskTally())
            tally.questions += 1
            tally.right += right
        for ids in self.by_image.values():
            if all(i in correct for i in ids):
                tally = tallies[self.items[ids[0]].subtask]
                tally.images += 1
                tally.images_right += all(correct[i] for i in ids)
        table = {s: {**vars(tallies[s]), **tallies[s].metrics()} for s in self.subtasks if s in tallies}
        perception = sum(row["score"] for s, row in table.items() if s in PERCEPTION)
        cognition = sum(row["score"] for s, row in table.items() if s in COGNITION)
        metrics = {"perception": perception, "cognition": cognition, "total": perception + cognition}
        metrics.update({s: row["score"] for s, row in table.items()})
        details: dict[str, Any] = {"subtasks": table, "evaluated_subtasks": list(table)}
        return Scores(metrics=metrics, details=details)


def subtask_folders(release: Path, subtask: str) -> tuple[Path, Path]:
    """``(image folder, question folder)`` of one subtask, whichever of the two layouts it has.

    Raises:
        BenchmarkFileError: the subtask folder is missing, or has ``images/`` but no ``questions_answers_YN/``.
    """
    folder = require_dir(NAME, release / subtask, f"subtask {subtask!r} folder")
    if (folder / IMAGES_DIR).is_dir():
        return folder / IMAGES_DIR, require_dir(NAME, folder / QA_DIR, f"subtask {subtask!r} question folder")
    return folder, folder


def read_questions(path: Path) -> list[tuple[str, str]]:
    """``(question, answer)`` pairs of one image's ``.txt`` (answers lower-cased), blank lines skipped.

    Raises:
        BenchmarkFileError: an unreadable file, no question, a line that is not ``question<TAB>answer``,
            or an answer other than yes/no.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise BenchmarkFileError(f"{NAME}: question file {path} is not UTF-8 text ({exc.reason})") from None
    pairs = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = line.strip().split("\t")
        if len(fields) != 2:
            raise BenchmarkFileError(f"{NAME}: {path} line {number} has {len(fields)} tab-separated field(s), "
                                     "expected 'question<TAB>answer'")
        question, answer = fields
        if answer.strip().lower() not in ("yes", "no"):
            raise BenchmarkFileError(f"{NAME}: {path} line {number}: answer is {answer!r}, expected Yes or No")
        pairs.append((question, answer.strip().lower()))
    if not pairs:
        raise BenchmarkFileError(f"{NAME}: question file {path} holds no question")
    return pairs


def read_subtask(release: Path, subtask: str, keep_yes_no: bool) -> list[MmeItem]:
    """The questions of one subtask folder (either layout), image files sorted by name.

    Raises:
        BenchmarkFileError: a missing folder, no question file, a question file without an image of
            the same name, or a malformed question file.
    """
    image_dir, qa_dir = subtask_folders(release, subtask)
    images: dict[str, str] = {}
    for name in sorted(p.name for p in image_dir.iterdir()):
        if Path(name).suffix.lower() in IMAGE_SUFFIXES:
            images.setdefault(Path(name).stem, name)
    texts = sorted(p for p in qa_dir.iterdir() if p.suffix == ".txt")
    if not texts:
        raise BenchmarkFileError(f"{NAME}: subtask {subtask!r} folder {qa_dir} holds no question file (.txt)")
    items = []
    for text in texts:
        image = images.get(text.stem)
        if image is None:
            raise BenchmarkFileError(f"{NAME}: question file {text} has no image of the same name "
                                     f"({'/'.join(IMAGE_SUFFIXES)}) in {image_dir}")
        for number, (question, answer) in enumerate(read_questions(text), 1):
            item_id = f"{subtask}/{image}/{number}"
            prompt = build_prompt(question, keep_yes_no)
            items.append(MmeItem(Question(id=item_id, prompt=prompt, image=image_dir / image,
                                          max_new_tokens=MAX_NEW_TOKENS), subtask, f"{subtask}/{image}", answer))
    return items


def build(config: MmeConfig, context: BuildContext) -> Mme:
    """Read every configured subtask's question files (errors at build, naming the file and line)."""
    release = require_dir(NAME, context.resolve(config.root) / config.release, "release folder")
    items: list[MmeItem] = []
    for subtask in config.subtasks:
        items += read_subtask(release, subtask, config.keep_yes_no)
    return Mme(items, config.subtasks)


def example(tmp_dir: Path) -> Example:
    """The tiny release of :func:`kdkit_plugins.fixtures.benchmarks_yesno.write_mme` (three subtasks,
    both folder layouts)."""
    from kdkit_plugins.fixtures.benchmarks_yesno import MME_FIXTURE_SUBTASKS, write_mme

    root = write_mme(tmp_dir / "mme")
    return Example(config={"kind": NAME, "root": str(root), "subtasks": list(MME_FIXTURE_SUBTASKS)},
                   context=BuildContext(name="eval", data_root=tmp_dir))


@hookimpl
def kdkit_benchmarks() -> dict[str, Factory]:
    return {NAME: Factory(config=MmeConfig, build=build, example=example)}

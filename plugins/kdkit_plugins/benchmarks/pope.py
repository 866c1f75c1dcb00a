"""POPE (object-hallucination yes/no questions on COCO val2014), scored as LLaVA-1.5's ``eval_pope.py``.

Reads the official release: one JSON-lines file per split, ``coco/coco_pope_<split>.json``, each
line ``{"question_id", "image", "text", "label"}`` with ``label`` "yes" or "no", the images being
COCO val2014 files in one folder. The answer is reduced to yes/no by the official rule (see
:func:`parse_answer`), then every split gets accuracy, precision, recall, F1 and the ratio of "yes"
answers; the headline ``f1`` is F1 averaged over the evaluated splits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from kdkit import BuildContext, Example, Factory, PluginConfig, hookimpl
from kdkit.evaluation.files import BenchmarkFileError, read_jsonl, require_dir, require_fields
from kdkit.interfaces import Question, Scores
from kdkit_plugins.benchmarks.vqa_answers import SHORT_ANSWER, check_prediction_ids

NAME = "pope"
#: The three negative-sampling settings of the release, in the order LLaVA-1.5 reports them.
SPLITS: tuple[str, ...] = ("adversarial", "popular", "random")
#: Per-split statistics, each also averaged over the splits under its bare name.
SPLIT_METRICS: tuple[str, ...] = ("f1", "accuracy", "precision", "recall", "yes_ratio")
#: Words that make an answer a "no" (matched case-sensitively, as the official script does).
NO_WORDS = frozenset({"No", "not", "no"})
#: Longest answer generated: the expected answer is one word.
MAX_NEW_TOKENS = 8
PUBLISHED = {"LLaVA-1.5 7B (paper)": 85.9, "HAWAII 7B (paper)": 87.3}

Split = Literal["adversarial", "popular", "random"]


class PopeConfig(PluginConfig):
    """POPE yes/no object-hallucination questions (COCO), scored by F1 as LLaVA-1.5 does."""

    kind: Literal["pope"] = "pope"
    root: str = Field("pope", description="Folder of the POPE files (relative paths are resolved against the "
                                          "data root).")
    annotations: str = Field("coco", description="Folder, under `root`, holding the released "
                                                 "coco_pope_<split>.json question files.")
    images: str = Field("val2014", description="Folder, under `root`, of the COCO val2014 images the questions "
                                               "name.")
    splits: list[Split] = Field(default_factory=lambda: list(SPLITS), min_length=1,
                                description="Splits to evaluate (each a negative-sampling setting); the headline "
                                            "F1 is averaged over them.")

    @field_validator("splits")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        repeated = sorted({s for s in value if value.count(s) > 1})
        if repeated:
            raise ValueError(f"split listed twice: {', '.join(repeated)}")
        return value


def parse_answer(text: str) -> str:
    """A generated answer -> ``"yes"`` or ``"no"`` by LLaVA-1.5's rule.

    The answer (surrounding whitespace stripped, as LLaVA's answer files hold it) is cut at its first
    period when it has one; commas are removed, the rest split on single spaces, and it is "no" when
    one of the words is exactly ``No``, ``not`` or ``no``; anything else, empty text included, is "yes".
    """
    text = text.strip()
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if NO_WORDS.intersection(words) else "yes"


@dataclass(frozen=True)
class SplitCounts:
    """Confusion counts of one split ("yes" is the positive class)."""

    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    def add(self, predicted: str, label: str) -> SplitCounts:
        """These counts plus one answer ``predicted`` to a question labelled ``label`` (both yes/no)."""
        if predicted == "yes":
            return SplitCounts(self.tp + (label == "yes"), self.fp + (label == "no"), self.tn, self.fn)
        return SplitCounts(self.tp, self.fp, self.tn + (label == "no"), self.fn + (label == "yes"))

    def metrics(self) -> dict[str, float]:
        """Accuracy, precision, recall, F1 and yes-ratio in percent.

        A ratio whose denominator is zero (no "yes" answers for precision, no "yes" labels for recall,
        both zero for F1) is 0; the official script stops with a division error there.
        """
        def ratio(num: float, den: float) -> float:
            return num / den if den else 0.0

        precision = ratio(self.tp, self.tp + self.fp)
        recall = ratio(self.tp, self.tp + self.fn)
        f1 = ratio(2 * precision * recall, precision + recall)
        return {"f1": 100 * f1, "accuracy": 100 * ratio(self.tp + self.tn, self.total),
                "precision": 100 * precision, "recall": 100 * recall,
                "yes_ratio": 100 * ratio(self.tp + self.fp, self.total)}


@dataclass(frozen=True)
class PopeItem:
    """One released question: its split, label and the question as asked."""

    question: Question
    split: str
    label: str


class Pope:
    """POPE questions and their scoring (see the module docstring).

    Attributes:
        metrics: ``f1``, ``accuracy``, ``precision``, ``recall``, ``yes_ratio`` averaged over the
            evaluated splits, then ``<split>_<metric>`` for every configured split.
        primary: ``f1``.
        published: The papers' averaged F1 of the 7B models.
    """

    primary = "f1"
    published = PUBLISHED

    def __init__(self, items: Sequence[PopeItem], splits: Sequence[str]) -> None:
        self.items = {item.question.id: item for item in items}
        self.splits = tuple(splits)
        self.metrics = (*SPLIT_METRICS, *(f"{s}_{m}" for s in self.splits for m in SPLIT_METRICS))

    def questions(self) -> list[Question]:
        """Every question, split by split in file order; ids ``<split>/<question_id>``."""
        return [item.question for item in self.items.values()]

    def score(self, predictions: Mapping[str, str]) -> Scores:
        """Answers by question id (all or some of :meth:`questions`) -> metrics in percent.

        Splits without any answered question are left out (of their own metrics and of the averages).

        Raises:
            BenchmarkFileError: an id that is not one of this benchmark's questions.
        """
        check_prediction_ids(NAME, predictions, self.items)
        counts: dict[str, SplitCounts] = {}
        for qid, text in predictions.items():
            item = self.items[qid]
            counts[item.split] = counts.get(item.split, SplitCounts()).add(parse_answer(text), item.label)
        evaluated = [s for s in self.splits if s in counts]
        per_split = {s: counts[s].metrics() for s in evaluated}
        metrics: dict[str, float] = {}
        for name in SPLIT_METRICS:
            values = [per_split[s][name] for s in evaluated]
            metrics[name] = sum(values) / len(values) if values else 0.0
        for split in evaluated:
            metrics.update({f"{split}_{name}": value for name, value in per_split[split].items()})
        details: dict[str, Any] = {
            "splits": {s: {"questions": counts[s].total, "TP": counts[s].tp, "FP": counts[s].fp, "TN": counts[s].tn,
                           "FN": counts[s].fn, **per_split[s]} for s in evaluated},
            "evaluated_splits": evaluated,
        }
        return Scores(metrics=metrics, details=details)


def read_split(path: Path, split: str, images: Path) -> list[PopeItem]:
    """The questions of one released split file (JSON lines), validated record by record.

    Raises:
        BenchmarkFileError: a missing/unreadable file, a record without one of the fields, a label
            that is not "yes"/"no", or a question id given twice.
    """
    records = read_jsonl(NAME, path, f"{split} question file")
    if not records:
        raise BenchmarkFileError(f"{NAME}: {split} question file {path} holds no question")
    items: list[PopeItem] = []
    seen: set[str] = set()
    for number, record in enumerate(records, 1):
        where = f"record {number}"
        require_fields(NAME, path, record, ("question_id", "image", "text", "label"), where)
        qid = str(record["question_id"])
        where = f"record {number} (question_id {qid})"
        label = record["label"]
        if label not in ("yes", "no"):
            raise BenchmarkFileError(f"{NAME}: {path} {where}: field 'label' is {label!r}, expected 'yes' or 'no'")
        for field in ("image", "text"):
            if not isinstance(record[field], str) or not record[field]:
                raise BenchmarkFileError(f"{NAME}: {path} {where}: field {field!r} is {record[field]!r}, "
                                         "expected a non-empty string")
        if qid in seen:
            raise BenchmarkFileError(f"{NAME}: {path} {where}: field 'question_id' repeats an earlier record")
        seen.add(qid)
        question = Question(id=f"{split}/{qid}", prompt=record["text"] + SHORT_ANSWER,
                            image=images / record["image"], max_new_tokens=MAX_NEW_TOKENS)
        items.append(PopeItem(question, split, label))
    return items


def build(config: PopeConfig, context: BuildContext) -> Pope:
    """Read the configured splits' question files (errors at build, naming the file and record)."""
    root = context.resolve(config.root)
    folder = require_dir(NAME, root / config.annotations, "annotation folder")
    images = root / config.images
    items: list[PopeItem] = []
    for split in config.splits:
        items += read_split(folder / f"coco_pope_{split}.json", split, images)
    return Pope(items, config.splits)


def example(tmp_dir: Path) -> Example:
    """The tiny three-split release of :func:`kdkit_plugins.fixtures.benchmarks_yesno.write_pope`."""
    from kdkit_plugins.fixtures.benchmarks_yesno import write_pope

    root = write_pope(tmp_dir / "pope")
    return Example(config={"kind": NAME, "root": str(root)}, context=BuildContext(name="eval", data_root=tmp_dir))


@hookimpl
def kdkit_benchmarks() -> dict[str, Factory]:
    return {NAME: Factory(config=PopeConfig, build=build, example=example)}

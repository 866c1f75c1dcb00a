"""Multiple-choice questions as LLaVA-1.5 asks them, and answers read back to an option letter.

Shared by the lettered-option benchmarks (ScienceQA, MMBench, SEED-Bench, MMMU):

- :func:`choice_prompt` writes a question, its options as ``A. <text>`` lines and LLaVA-1.5's
  instruction ``Answer with the option's letter from the given choices directly.``;
- :func:`parse_choice` reads a generated answer back to one option letter, or None when it names
  none (which scores as wrong);
- :func:`accuracy_scores` turns per-unit right/wrong into the accuracy, its units and per-tag tables.
"""

from __future__ import annotations

import re
import string
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from kdkit.evaluation.files import BenchmarkFileError
from kdkit.interfaces import Question, Scores

#: LLaVA-1.5's instruction for lettered multiple-choice questions (its ``--single-pred-prompt``).
ANSWER_INSTRUCTION = "Answer with the option's letter from the given choices directly."
#: Punctuation that may wrap or follow a letter ("(B)", "B.", "[B]", "B:"), read as spaces.
_WRAPPERS = re.compile(r"[.()\[\]{},:;!?*#\"'`]")
#: "the answer is B", "Answer: (B)", "The answer is option C" (a capital letter: "the answer is a
#: dog" states no letter).
_STATED = re.compile(r"\b(?i:answer)(?:\s+(?i:is)|\s*:)\s*(?:(?i:option)\s+)?\(?([A-Z])\b")


def option_letters(count: int) -> tuple[str, ...]:
    """The letters of ``count`` options: ``A``, ``B``, ... (at most 26)."""
    if not 0 <= count <= len(string.ascii_uppercase):
        raise ValueError(f"cannot letter {count} options (at most {len(string.ascii_uppercase)})")
    return tuple(string.ascii_uppercase[:count])


def format_options(options: Sequence[str]) -> str:
    """The options as lines ``A. <text>``, ``B. <text>``, ... joined by newlines."""
    return "\n".join(f"{letter}. {text}" for letter, text in zip(option_letters(len(options)), options, strict=True))


def choice_prompt(question: str, options: Sequence[str], *, preamble: str = "",
                  instruction: str = ANSWER_INSTRUCTION, gap: str = "\n") -> str:
    """The whole prompt of a lettered multiple-choice question.

    Args:
        question: The question text.
        options: The option texts, lettered ``A``, ``B``, ... in this order.
        preamble: Text on the line(s) before the question (a hint or context), left out when empty.
        instruction: The answer instruction after the options.
        gap: What separates the options from the instruction (one newline for LLaVA-1.5's
            evaluation scripts; lmms-eval's MMMU leaves a blank line).

    Returns:
        ``[preamble + "\\n"] + question + "\\n" + "A. ..\\nB. .." + gap + instruction``.
    """
    body = f"{question}\n{format_options(options)}"
    if preamble:
        body = f"{preamble}\n{body}"
    return f"{body}{gap}{instruction}"


def _normal(text: str) -> str:
    """Lower case, single spaces, no surrounding spaces or trailing period (for comparing texts)."""
    return " ".join(text.lower().split()).rstrip(".").strip()


def _names(said: str, text: str) -> bool:
    """Whether ``text`` occurs in ``said`` as whole words (``3`` is not in ``13``)."""
    return re.search(rf"(?<!\w){re.escape(text)}(?!\w)", said) is not None


def parse_choice(answer: str, options: Sequence[str]) -> str | None:
    """The option letter a generated answer names, or None when it names none (scored as wrong).

    Tried in order, the first that gives exactly one letter wins:

    1. the answer is a lone letter of an option, any case, maybe wrapped or followed by
       punctuation: ``B``, ``b``, ``(B)``, ``B.``, ``[b]``;
    2. a stated answer, ``The answer is B`` / ``answer: (C)``;
    3. the answer is an option's text (case, spacing and a final period ignored): ``louisiana``,
       ``A red square.`` for the option ``a red square``;
    4. one capital option letter standing alone among the words: ``B. Louisiana``,
       ``I pick C``; two different ones (``A or B``) give none;
    5. the answer contains exactly one option's text as whole words (an option contained in
       another contained option does not count, so ``dark red`` beats ``red``; ``3`` is not in
       ``13``).

    Letters beyond the question's options are not letters of it (``E`` of a four-option question).
    """
    letters = option_letters(len(options))
    words = _WRAPPERS.sub(" ", answer).split()
    if not words:
        return None
    if len(words) == 1 and words[0].upper() in letters:
        return words[0].upper()
    stated = set(_STATED.findall(answer)) & set(letters)
    if len(stated) == 1:
        return stated.pop()
    said = _normal(answer)
    texts = {letter: _normal(text) for letter, text in zip(letters, options, strict=True) if _normal(text)}
    exact = [letter for letter, text in texts.items() if text == said]
    if len(exact) == 1:
        return exact[0]
    standing = {w for w in words if w in letters}
    if len(standing) == 1:
        return standing.pop()
    within = {letter: text for letter, text in texts.items() if _names(said, text)}
    widest = [letter for letter, text in within.items()
              if not any(text != other and text in other for other in within.values())]
    return widest[0] if len(widest) == 1 else None


def letter_of(benchmark: str, where: str, answer: object, count: int) -> str:
    """A released answer letter, checked to be one of ``count`` options' letters (else an error
    naming ``where``, e.g. the file and record)."""
    letters = option_letters(count)
    if not isinstance(answer, str) or answer.strip() not in letters:
        raise BenchmarkFileError(f"{benchmark}: {where}: answer {answer!r} is not one of the option letters "
                                 f"{', '.join(letters)}")
    return answer.strip()


def require_known_ids(benchmark: str, predictions: Mapping[str, str], known: Collection[str]) -> None:
    """Every predicted id is one of the benchmark's question ids; else an error naming the first
    unknown one."""
    for qid in predictions:
        if qid not in known:
            raise BenchmarkFileError(f"{benchmark}: prediction for question id {qid!r}, which is not one of "
                                     f"its {len(known)} questions")


@dataclass(frozen=True)
class Outcome:
    """One scored unit (a question, or an MMBench circular group).

    Attributes:
        unit: The unit's id (the key of :attr:`Scores.units`).
        correct: Whether it was answered right.
        tags: Its categories by table name (``{"subject": "Biology"}``), tabulated in the details.
    """

    unit: str
    correct: bool
    tags: Mapping[str, str] = field(default_factory=dict)


def percent(hits: float, total: int) -> float:
    """``100 * hits / total``; 0.0 when nothing was scored."""
    return 100.0 * hits / total if total else 0.0


def accuracy_scores(outcomes: Iterable[Outcome], details: Mapping[str, object] | None = None) -> Scores:
    """Scores of right/wrong units: metric ``accuracy`` (percent), units 100/0 per unit (their mean
    is the accuracy), and in the details ``scored``, ``correct`` and one table per tag name,
    ``by_<tag>: {value: {"accuracy", "count"}}`` (values sorted), plus ``details`` as given."""
    outcomes = list(outcomes)
    tables: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for outcome in outcomes:
        for tag, value in outcome.tags.items():
            tables[tag][value].append(outcome.correct)
    correct = sum(o.correct for o in outcomes)
    extra: dict[str, object] = {"scored": len(outcomes), "correct": correct}
    for tag, groups in tables.items():
        extra[f"by_{tag}"] = {value: {"accuracy": percent(sum(hits), len(hits)), "count": len(hits)}
                              for value, hits in sorted(groups.items())}
    extra.update(details or {})
    return Scores(metrics={"accuracy": percent(correct, len(outcomes))},
                  units={o.unit: 100.0 if o.correct else 0.0 for o in outcomes},
                  details=extra)


@dataclass(frozen=True)
class ChoiceItem:
    """One lettered multiple-choice question.

    Attributes:
        question: The question as asked.
        options: Its option texts, lettered ``A``, ``B``, ... in this order.
        answer: The right option's letter.
        tags: Its categories by table name, tabulated in the score details.
    """

    question: Question
    options: tuple[str, ...]
    answer: str
    tags: Mapping[str, str] = field(default_factory=dict)

    def outcome(self, text: str) -> Outcome:
        """This question's outcome for the generated answer ``text``."""
        return Outcome(self.question.id, parse_choice(text, self.options) == self.answer, self.tags)


class ChoiceBenchmark:
    """Lettered multiple-choice questions, each one unit, scored by accuracy.

    Attributes:
        metrics: ``("accuracy",)``.
        primary: ``accuracy``.
        published: Published accuracies by label.
    """

    metrics: tuple[str, ...] = ("accuracy",)
    primary = "accuracy"

    def __init__(self, name: str, items: Sequence[ChoiceItem], published: Mapping[str, float],
                 details: Mapping[str, object] | None = None) -> None:
        """``items`` in asking order (ids unique); ``details`` are added to every score's details."""
        self.name = name
        self.items = {item.question.id: item for item in items}
        self.published = dict(published)
        self.details = dict(details or {})

    def questions(self) -> list[Question]:
        """Every question, in the release's order."""
        return [item.question for item in self.items.values()]

    def score(self, predictions: Mapping[str, str]) -> Scores:
        """Answers by question id (all or some of :meth:`questions`) -> accuracy in percent over the
        answered questions, their units, and per-tag tables.

        Raises:
            BenchmarkFileError: an id that is not one of this benchmark's questions.
        """
        require_known_ids(self.name, predictions, self.items)
        outcomes = [item.outcome(predictions[qid]) for qid, item in self.items.items() if qid in predictions]
        return accuracy_scores(outcomes, {**self.details, "questions": len(self.items)})

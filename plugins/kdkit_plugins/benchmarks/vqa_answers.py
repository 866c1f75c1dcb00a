"""Answer normalization and soft accuracy of the VQA family (TextVQA, VizWiz), and the bookkeeping
shared by the short-answer benchmarks (checking prediction ids, averaging per-question scores).

Normalization is the EvalAI answer processor, the one LLaVA-1.5's TextVQA/VizWiz scripts and
lmms-eval apply to both the prediction and the human answers. In order:

1. lower-case; delete every ``,`` and ``?``; write ``'s`` as `` 's``; strip; newlines and tabs become spaces;
2. :func:`strip_punctuation`: each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is deleted when
   it touches a space somewhere in the answer (or when a comma sits between two digits), else it becomes
   a space; then a period not followed by a digit is deleted (so ``3.5`` stays, ``cat.`` loses it);
3. per word: number words ``none``/``zero``..``ten`` become digits, the articles ``a an the`` are dropped,
   apostrophe-less contractions are restored (``isnt`` -> ``isn't``).

Because step 1 already deletes every comma, ``1,000`` becomes ``1000`` and ``red,blue`` becomes
``redblue`` (the digit-comma rule of step 2 then never applies; it matters only when
:func:`strip_punctuation` is used on its own).

Accuracy of one prediction against the human answers: for each human answer, the fraction
``min(1, matches among the other answers / 3)``, averaged over the human answers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence

from kdkit.evaluation.files import BenchmarkFileError

#: LLaVA-1.5's instruction appended to short-answer questions (TextVQA, VizWiz, GQA).
SHORT_ANSWER = "\nAnswer the question using a single word or phrase."

#: Marks handled by :func:`strip_punctuation` (the period has its own rule).
PUNCTUATION: tuple[str, ...] = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
                                "@", "`", ",", "?", "!")

#: Number words written as digits.
NUMBER_WORDS: dict[str, str] = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                                "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}

#: Dropped words.
ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})

#: Words written without their apostrophes, and how the VQA answer processor restores them. The
#: processor's table also has keys with capital letters ("Im", "Ive"...), which never match
#: lower-cased text and are left out here; ``somebody'd`` -> ``somebodyd`` is in it as is.
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}

_DIGIT_COMMA = re.compile(r"(?<=\d),+(?=\d)")
_PERIOD_NOT_DECIMAL = re.compile(r"\.(?!\d)")
# The reference processors pass ``re.UNICODE`` (32) where ``re.sub`` takes its count, so at most the
# first 32 such periods go; kept so long answers normalize identically.
_MAX_PERIODS = 32


def strip_punctuation(text: str) -> str:
    """``text`` with the VQA punctuation rules applied (step 2 of the module docstring).

    Whether a mark is deleted or replaced by a space is decided on ``text`` as given (not on the
    partly processed result), exactly as the reference processors do.
    """
    glued_digits = _DIGIT_COMMA.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        touches_space = f"{mark} " in text or f" {mark}" in text
        out = out.replace(mark, "" if touches_space or glued_digits else " ")
    return _PERIOD_NOT_DECIMAL.sub("", out, count=_MAX_PERIODS)


def normalize_words(text: str) -> str:
    """Lower-cased words of ``text`` with number words as digits, articles dropped, contractions
    restored, joined by single spaces (step 3)."""
    words = (NUMBER_WORDS.get(word, word) for word in text.lower().split())
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def normalize_answer(text: str) -> str:
    """The VQA-normalized form of an answer: ``"Two dogs!"`` -> ``"2 dogs"``, ``"the cat."`` -> ``"cat"``."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return normalize_words(strip_punctuation(text))


def soft_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy in [0, 1] of an already normalized ``prediction`` against normalized human ``answers``:
    the mean over answers ``i`` of ``min(1, #{j != i : answers[j] == prediction} / 3)``."""
    if not answers:
        raise ValueError("VQA accuracy needs at least one human answer")
    matches = sum(answer == prediction for answer in answers)
    # leaving out answer i removes one match exactly when answer i itself matches
    total = sum(min(1.0, (matches - (answer == prediction)) / 3) for answer in answers)
    return total / len(answers)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy in [0, 1] of a raw ``prediction`` against raw human ``answers`` (both normalized
    with :func:`normalize_answer` first)."""
    return soft_accuracy(normalize_answer(prediction), [normalize_answer(a) for a in answers])


def check_prediction_ids(benchmark: str, predictions: Mapping[str, str], known: Iterable[str]) -> None:
    """Every id of ``predictions`` is one of the benchmark's question ids; else an error naming the first
    unknown one."""
    known = known if isinstance(known, (set, frozenset, Mapping)) else set(known)
    for qid in predictions:
        if qid not in known:
            raise BenchmarkFileError(f"{benchmark}: prediction for question id {qid!r}, which is not one of the "
                                     "benchmark's questions")


def percent(values: Sequence[float]) -> float:
    """Mean of per-question scores in [0, 1] as a percentage (NaN for no values; callers leave such
    metrics out)."""
    return 100.0 * math.fsum(values) / len(values) if values else float("nan")


def group_table(scores: Mapping[str, float], groups: Mapping[str, str]) -> dict[str, dict[str, float | int]]:
    """Per-group ``{"accuracy": percent, "count": n}`` of per-question ``scores`` in [0, 1], grouped
    by ``groups[question id]`` (questions without a group are left out), groups in sorted order."""
    members: dict[str, list[float]] = {}
    for qid, value in scores.items():
        if qid in groups:
            members.setdefault(groups[qid], []).append(value)
    return {name: {"accuracy": percent(values), "count": len(values)} for name, values in sorted(members.items())}

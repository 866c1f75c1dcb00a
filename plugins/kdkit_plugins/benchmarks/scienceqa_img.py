"""ScienceQA-IMG: the test questions of ScienceQA that come with an image, asked as LLaVA-1.5 does.

Reads the official release: ``problems.json`` (pid -> ``{question, choices, answer (index), hint,
image, subject, grade, ...}``), ``pid_splits.json`` (split -> pids) and the images at
``images/test/<pid>/<image>``. Only the split's questions whose ``image`` is set are asked (2017 of
the 4241 test questions): the number LLaVA-1.5 reports as ScienceQA-IMG.

The prompt is LLaVA-1.5's (``llava_test_CQM-A.json`` with ``--single-pred-prompt``):
``Context: <hint>`` on the first line when the hint is not empty (no context line otherwise), the
question, the options ``A. <choice>`` one per line, then ``Answer with the option's letter from the
given choices directly.``. An answer is read back to a letter by
:func:`kdkit_plugins.benchmarks.choices.parse_choice` and is right when it is the answer's letter
(LLaVA's ``eval_science_qa.py`` takes a lone letter, a leading ``B. `` or ``The answer is B``; the
shared parser also takes ``(B)``, ``b`` or the option's text).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field

from kdkit import BuildContext, Example, Factory, PluginConfig, hookimpl
from kdkit.evaluation.files import (BenchmarkFileError, expect_list, expect_mapping, read_json, require_dir,
                                    require_fields)
from kdkit.interfaces import Question
from kdkit_plugins.benchmarks.choices import (ANSWER_INSTRUCTION, ChoiceBenchmark, ChoiceItem, choice_prompt,
                                              option_letters)

NAME = "scienceqa_img"
#: Longest answer generated: a letter, or a short sentence naming one.
MAX_NEW_TOKENS = 16
PUBLISHED = {"LLaVA-1.5 7B (paper)": 66.8, "HAWAII 7B (paper)": 70.5}
FIELDS = ("question", "choices", "answer", "hint", "image")


class ScienceQAImgConfig(PluginConfig):
    """ScienceQA's test questions with an image, multiple choice, scored by accuracy."""

    kind: Literal["scienceqa_img"] = "scienceqa_img"
    root: str = Field("scienceqa", description="Folder of the ScienceQA release (relative paths are resolved "
                                               "against the data root).")
    problems: str = Field("problems.json", description="Problems file, under `root`: pid -> question, choices, "
                                                       "answer index, hint, image.")
    splits: str = Field("pid_splits.json", description="Split file, under `root`: split name -> list of pids.")
    split: str = Field("test", description="Split whose image questions are asked (LLaVA-1.5 reports `test`).")
    images: str = Field("images/test", description="Folder, under `root`, holding `<pid>/<image>` for the "
                                                   "split's questions.")


def context_line(hint: str) -> str:
    """The line before the question: ``Context: <hint>``, or nothing for an empty hint."""
    return f"Context: {hint}" if hint.strip() else ""


def prompt_of(question: str, choices: Sequence[str], hint: str) -> str:
    """LLaVA-1.5's ScienceQA prompt: context line, question and options (the block's surrounding
    whitespace removed, as LLaVA's evaluation script does), then the answer instruction."""
    body = choice_prompt(question, choices, preamble=context_line(hint), instruction="", gap="").strip()
    return f"{body}\n{ANSWER_INSTRUCTION}"


def grade_band(grade: object) -> str:
    """``grade1``..``grade6`` -> ``1-6``, ``grade7``..``grade12`` -> ``7-12`` (ScienceQA's grade columns);
    anything else as given."""
    text = str(grade)
    number = text.removeprefix("grade")
    if number.isdigit():
        return "1-6" if int(number) <= 6 else "7-12"
    return text


def read_items(root: Path, problems_file: Path, splits_file: Path, split: str, images: Path) -> list[ChoiceItem]:
    """The image questions of ``split``, in ``pid_splits.json`` order.

    Raises:
        BenchmarkFileError: a missing or malformed file, an unknown split, a pid without problem, or
            a problem lacking a field or with choices/answer of the wrong kind (named by pid and field).
    """
    problems = expect_mapping(NAME, problems_file, read_json(NAME, problems_file, "problems file"),
                              "problems by pid")
    splits = expect_mapping(NAME, splits_file, read_json(NAME, splits_file, "split file"), "pid lists by split")
    if split not in splits:
        raise BenchmarkFileError(f"{NAME}: {splits_file} has no split {split!r} (splits: {', '.join(splits)})")
    pids = expect_list(NAME, splits_file, splits[split], f"pids of split {split!r}")
    items = []
    for pid in map(str, pids):
        if pid not in problems:
            raise BenchmarkFileError(f"{NAME}: {splits_file} lists pid {pid!r} in split {split!r}, "
                                     f"which {problems_file} does not hold")
        problem = problems[pid]
        where = f"problem {pid!r}"
        if not isinstance(problem, dict):
            raise BenchmarkFileError(f"{NAME}: {problems_file} {where} is a {type(problem).__name__}, "
                                     "expected an object")
        require_fields(NAME, problems_file, problem, FIELDS, where)
        if not problem["image"]:
            continue
        choices = problem["choices"]
        if not (isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) for c in choices)):
            raise BenchmarkFileError(f"{NAME}: {problems_file} {where}: field 'choices' is {choices!r}, "
                                     "expected a list of at least two strings")
        answer = problem["answer"]
        if not (isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices)):
            raise BenchmarkFileError(f"{NAME}: {problems_file} {where}: field 'answer' is {answer!r}, "
                                     f"expected an option index 0-{len(choices) - 1}")
        hint = problem["hint"] or ""
        if not isinstance(hint, str) or not isinstance(problem["question"], str):
            raise BenchmarkFileError(f"{NAME}: {problems_file} {where}: fields 'question' and 'hint' must be text")
        tags = {"subject": str(problem.get("subject", "unknown")), "grade": grade_band(problem.get("grade", "")),
                "context": "with hint" if hint.strip() else "no hint"}
        question = Question(id=pid, prompt=prompt_of(problem["question"], choices, hint),
                            image=images / pid / str(problem["image"]), max_new_tokens=MAX_NEW_TOKENS)
        items.append(ChoiceItem(question, tuple(choices), option_letters(len(choices))[answer], tags))
    return items


def build(config: ScienceQAImgConfig, context: BuildContext) -> ChoiceBenchmark:
    """The image questions of the configured split (files read and checked now; images when asked)."""
    root = require_dir(NAME, context.resolve(config.root), "release folder")
    items = read_items(root, root / config.problems, root / config.splits, config.split, root / config.images)
    if not items:
        raise BenchmarkFileError(f"{NAME}: split {config.split!r} of {root / config.splits} has no question "
                                 "with an image")
    return ChoiceBenchmark(NAME, items, PUBLISHED, {"split": config.split})


def example(tmp_dir: Path) -> Example:
    """A 6-problem release: 4 test questions with images, one text-only, one train."""
    from kdkit_plugins.fixtures.benchmarks_choice import write_scienceqa

    root = write_scienceqa(tmp_dir)
    return Example(config={"kind": NAME, "root": str(root)},
                   context=BuildContext(name="eval", data_root=Path(tmp_dir)))


@hookimpl
def kdkit_benchmarks() -> dict[str, Factory]:
    return {NAME: Factory(config=ScienceQAImgConfig, build=build, example=example)}

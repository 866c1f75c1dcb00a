"""Prompts and MMMU's open-answer scoring equal lmms-eval's task code, when lmms-eval is installed.

lmms-eval is not a dependency: these tests are skipped without it. Its MMMU open-answer functions
are copies of MMMU's official ``eval_utils.py``; its multiple-choice parser adds rules to MMMU's
(``X `` and ``X.`` without a space before), so it is not compared.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdkit import BuildContext
from kdkit_plugins.benchmarks import mmmu, scienceqa_img, seedbench
from kdkit_plugins.fixtures.benchmarks_choice import write_mmmu, write_scienceqa, write_seedbench

sqa_utils = pytest.importorskip("lmms_eval.tasks.scienceqa.utils")
seed_utils = pytest.importorskip("lmms_eval.tasks.seedbench.utils")
mmmu_utils = pytest.importorskip("lmms_eval.tasks.mmmu.utils")

SQA_KWARGS = {"format": "default", "pre_prompt": "",
              "post_prompt": "\nAnswer with the option's letter from the given choices directly."}
MMMU_KWARGS = {"prompt_type": "format",
               "multiple_choice_prompt": "Answer with the option's letter from the given choices directly.",
               "open_ended_prompt": "Answer the question using a single word or phrase."}


def test_scienceqa_prompts(tmp_path: Path) -> None:
    root = write_scienceqa(tmp_path)
    problems = json.loads((root / "problems.json").read_text())
    bench = scienceqa_img.build(scienceqa_img.ScienceQAImgConfig(root=root.name), BuildContext(data_root=tmp_path))
    for question in bench.questions():
        assert question.prompt == sqa_utils.sqa_doc_to_text(problems[question.id], SQA_KWARGS)


def test_seedbench_prompts(tmp_path: Path) -> None:
    root = write_seedbench(tmp_path)
    records = {str(r["question_id"]): r for r in json.loads((root / "SEED-Bench.json").read_text())["questions"]}
    bench = seedbench.build(seedbench.SeedBenchConfig(root=root.name), BuildContext(data_root=tmp_path))
    for question in bench.questions():
        assert question.prompt == seed_utils.seed_doc_to_text(records[question.id])


def test_mmmu_prompts(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    root = write_mmmu(tmp_path)
    bench = mmmu.build(mmmu.MMMUConfig(root=root.name), BuildContext(data_root=tmp_path))
    rows = {r["id"]: r for path in sorted(root.glob("*/*.parquet")) for r in pq.read_table(path).to_pylist()}
    for question in bench.questions():
        assert question.prompt == mmmu_utils.mmmu_doc_to_text(rows[question.id], MMMU_KWARGS)


RESPONSES = ["1234", "1,234", "The total is 1234 dollars.", "$1,234.00", "x = 2.50", "2.499", "5/2",
             "So x is 2.5. Then y is 3", "Therefore, the answer is 12,000,000.", "It could be -3.5e2 or 7",
             "The capital is paris.", "paris\nbut maybe london", "A", "a", "Result: 0.333", "", "   ", "n/a"]
GOLDS = ["1234", "2.5", "-350", "12000000", "paris", "a", "0.33", "7", ["6", "six"]]


@pytest.mark.parametrize("response", RESPONSES)
def test_mmmu_open_scoring(response: str) -> None:
    assert set(mmmu.parse_open(response)) == set(mmmu_utils.parse_open_response(response))
    for gold in GOLDS:
        assert mmmu.eval_open(gold, mmmu.parse_open(response)) == \
            mmmu_utils.eval_open(gold, mmmu_utils.parse_open_response(response))

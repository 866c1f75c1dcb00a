"""The exported tiny HAWAII twin evaluated by lmms-eval's own CLI (``--model kdkit``) on local tasks.

Two tasks read generated images and questions through HF ``datasets`` (``imagefolder``, offline):
a generation task scored by exact match, with a stop string, and a multiple-choice task scored by
log-likelihood. The answers and scores must equal what the exported student gives directly.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import kdkit
from kdkit.errors import CheckpointError

#: Questions of different lengths (left padding inside a batch) about images of different shapes.
QUESTIONS = ["what is in picture zero ?", "is the ring near ?", "how many brown shapes do you see in this one ?",
             "what color ?"]
MAX_NEW_TOKENS = 6
#: Generation documents whose target is set to the student's own answer (the others cannot match).
MATCHED = (0, 2)
#: Multiple-choice documents whose gold choice is the student's likeliest (the others get another).
AGREED = (1, 2)


@pytest.fixture(scope="module")
def lmms_eval_api() -> Any:
    """lmms-eval's model API, imported when a test needs it (not at collection); skips when it is missing."""
    return pytest.importorskip("lmms_eval.api.model", reason='lmms-eval is not importable (pip install "kdkit[lmms]")',
                               exc_type=ImportError)


needs_lmms = pytest.mark.usefixtures("lmms_eval_api")


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny HAWAII twin, trained one step per stage and exported."""
    from kdkit_plugins.fixtures.hawaii import export_tiny_hawaii

    return export_tiny_hawaii(tmp_path_factory.mktemp("lmms_twin"))


def write_images(folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for index in range(len(QUESTIONS)):
        pixels = (np.random.default_rng(index).random((20 + 6 * index, 36, 3)) * 255).astype(np.uint8)
        paths.append(folder / f"image{index}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def nll(student: Any, image: Path, question: str, continuation: str) -> float:
    """-log P(continuation | image, question) from the student's own training forward (its LM loss)."""
    from kdkit_plugins.students._llava_generate import prompt_ids

    prompt = prompt_ids(student, question)
    target = student.tokenizer(continuation, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + target])
    labels = torch.tensor([[-100] * len(prompt) + target])
    with torch.no_grad():
        out = student({"images": student.load_image(image), "input_ids": ids, "attention_mask": torch.ones_like(ids),
                       "labels": labels})
    return float(out.task_loss) * len(target)


@pytest.fixture(scope="module")
def tasks(export_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Task YAMLs over generated images, and what the exported student itself answers and scores."""
    root = tmp_path_factory.mktemp("lmms_tasks")
    images = write_images(root / "data")
    student = kdkit.load_student(export_dir)
    raw = [student.generate(student.load_image(p), [q], max_new_tokens=MAX_NEW_TOKENS)[0]
           for p, q in zip(images, QUESTIONS)]
    stop = next(a.split()[2] for a in raw if len(a.split()) > 2)  # a word after two others: answers are cut there
    answers = [a.split(stop, 1)[0] for a in raw]
    assert len({a.strip() for a in answers}) > 1, f"the tiny student gives one answer to every question: {answers}"
    words = [w for w in sorted(student.tokenizer.get_vocab()) if w.isalpha() and w.islower()][10:]
    choices = [[f"{words[6 * i]} {words[6 * i + 1]}", words[6 * i + 2], " ".join(words[6 * i + 3:6 * i + 6])]
               for i in range(len(QUESTIONS))]  # one, two and three tokens
    losses = [[nll(student, p, q, " " + c) for c in cs] for p, q, cs in zip(images, QUESTIONS, choices)]
    best = [int(np.argmin(row)) for row in losses]
    gold = [best[i] if i in AGREED else (best[i] + 1) % 3 for i in range(len(QUESTIONS))]
    rows = [{"file_name": p.name, "question": q, "answer": answers[i].strip() if i in MATCHED else "no such answer",
             "choices": choices[i], "gold": gold[i]} for i, (p, q) in enumerate(zip(images, QUESTIONS))]
    (root / "data" / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    common = {"dataset_path": "imagefolder", "test_split": "train", "doc_to_visual": "image", "doc_to_text": "question",
              "dataset_kwargs": {"data_dir": str(root / "data"), "cache_dir": str(root / "cache")}}
    generation = {"task": "kdkit_tiny_vqa", **common, "output_type": "generate_until", "doc_to_target": "answer",
                  "generation_kwargs": {"until": [stop], "max_new_tokens": MAX_NEW_TOKENS},
                  "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}]}
    choice = {"task": "kdkit_tiny_choice", **common, "output_type": "multiple_choice", "doc_to_choice": "choices",
              "doc_to_target": "gold",
              "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}
    for spec in (generation, choice):
        (root / f"{spec['task']}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return {"root": root, "answers": answers, "losses": losses}


def run_cli(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    """``python -m lmms_eval ARGS`` offline; ``--verbosity DEBUG`` makes a failed evaluation exit non-zero."""
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(home),
           "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "lmms_eval", *args, "--verbosity", "DEBUG"], env=env,
                          capture_output=True, text=True, timeout=600, check=False)


def samples(out: Path, task: str) -> list[dict[str, Any]]:
    (file,) = out.glob(f"*_samples_{task}.jsonl")
    rows = [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines()]
    return sorted(rows, key=lambda r: r["doc_id"])


@needs_lmms
def test_lmms_eval_scores_the_export_like_the_student(export_dir: Path, tasks: dict[str, Any], tmp_path: Path) -> None:
    assert any(ep.name == "kdkit" and ep.value == "kdkit.integrations.lmms_eval:manifest"
               for ep in metadata.entry_points(group="lmms_eval.models")), \
        "kdkit's lmms_eval.models entry point is not installed: reinstall kdkit (pip install -e .)"
    out = tmp_path / "out"
    done = run_cli(["--model", "kdkit", "--model_args", f"export={export_dir}",
                    "--tasks", "kdkit_tiny_vqa,kdkit_tiny_choice", "--include_path", str(tasks["root"]),
                    "--batch_size", "3", "--device", "cpu", "--output_path", str(out), "--log_samples"],
                   tmp_path / "hf")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    (results_file,) = out.glob("*_results.json")
    results = json.loads(results_file.read_text(encoding="utf-8"))
    count = len(QUESTIONS)
    assert results["n-samples"] == {t: {"original": count, "effective": count}
                                    for t in ("kdkit_tiny_vqa", "kdkit_tiny_choice")}
    assert results["results"]["kdkit_tiny_vqa"]["exact_match,none"] == pytest.approx(len(MATCHED) / count)
    assert results["results"]["kdkit_tiny_choice"]["acc,none"] == pytest.approx(len(AGREED) / count)

    generated = samples(out, "kdkit_tiny_vqa")
    # cut at the stop string by the model, stripped by the task
    assert [r["filtered_resps"] for r in generated] == [a.strip() for a in tasks["answers"]]
    assert [r["exact_match"] for r in generated] == [float(i in MATCHED) for i in range(count)]

    scored = samples(out, "kdkit_tiny_choice")
    for row, expected in zip(scored, tasks["losses"]):
        losses = [float(loss) for loss, _ in row["filtered_resps"]]  # the log stores each pair as text
        assert losses == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert [r["acc"] for r in scored] == [float(i in AGREED) for i in range(count)]


@needs_lmms
def test_an_export_without_its_mola_weights_is_refused(export_dir: Path, tmp_path: Path) -> None:
    from lmms_eval import models

    broken = tmp_path / "export"
    shutil.copytree(export_dir, broken)
    weights = broken / "adapters" / "mola" / "adapter.safetensors"
    weights.unlink()
    model = models.get_model("kdkit")  # resolved through the entry point, as the CLI does
    with pytest.raises(CheckpointError, match=re.escape(str(weights.parent)) + ".*adapter.safetensors"):
        model.create_from_arg_string(f"export={broken}", {"batch_size": 1, "device": "cpu"})


@needs_lmms
def test_model_arguments_are_checked(tmp_path: Path) -> None:
    from kdkit.errors import KdkitError
    from kdkit.integrations.lmms_eval import KdkitModel, cut

    with pytest.raises(KdkitError, match="give the export directory"):
        KdkitModel()
    with pytest.raises(KdkitError, match="unknown model_args pretrained"):
        KdkitModel(export=str(tmp_path), pretrained="x")
    with pytest.raises(KdkitError, match="batch_size='auto' is not a positive integer"):
        KdkitModel(export=str(tmp_path), batch_size="auto")
    with pytest.raises(CheckpointError, match="kdkit_student.yaml is missing"):
        KdkitModel(export=str(tmp_path), device="cpu")
    assert cut("a b. c\n\nd", ["\n\n", "."]) == "a b"
    assert cut("a b", []) == "a b"


def test_import_kdkit_does_not_need_lmms_eval_and_the_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    check = "import sys, kdkit, kdkit.integrations; assert not [m for m in sys.modules if m.startswith('lmms_eval')]"
    subprocess.run([sys.executable, "-c", check], check=True, timeout=120)
    for name in [m for m in sys.modules if m == "lmms_eval" or m.startswith("lmms_eval.")] or ["lmms_eval"]:
        monkeypatch.setitem(sys.modules, name, None)  # type: ignore[arg-type]
    monkeypatch.delitem(sys.modules, "kdkit.integrations.lmms_eval", raising=False)
    with pytest.raises(ImportError, match=re.escape('pip install "kdkit[lmms]"')) as raised:
        importlib.import_module("kdkit.integrations.lmms_eval")
    assert isinstance(raised.value, kdkit.KdkitError)

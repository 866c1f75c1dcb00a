"""Held-out evaluation of an exported student through kdkit's evaluation layer, and routing by content.

The held-out questions (of the ``val`` and ``test`` splits) are scored by the ``qa_jsonl`` benchmark plugin (``kdkit eval`` with the
same block gives the same numbers): greedy answers, first word lower-cased with punctuation
stripped, equal to the answer; accuracy per question type. Answers are written to the job's
``eval/`` directory as they come, so an interrupted evaluation resumes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from experiments.mini_hawaii.world import ASPECTS, WorldFiles, read_jsonl, read_scenes


def benchmark_block(files: WorldFiles, split: str = "test") -> dict[str, Any]:
    """The ``qa_jsonl`` block that scores the world's held-out questions of ``split`` (``val`` or ``test``)."""
    questions, answers = files.qa(split)
    return {"kind": "qa_jsonl", "questions": str(questions), "answers": str(answers),
            "images": str(files.path("images")), "match": "first_word", "max_new_tokens": 3}


def answer_questions(student: Any, files: WorldFiles, directory: Path | None = None, batch: int = 128,
                     split: str = "test") -> dict[str, Any]:
    """Every held-out question of ``split`` answered and scored: ``{"accuracy": {type: fraction, "overall":
    fraction}, "answers": [{question_id, category, raw, answer, correct}]}``."""
    from kdkit.evaluation import build_benchmark, evaluate
    from kdkit.interfaces import EvalSubject

    block = benchmark_block(files, split)
    result = evaluate(EvalSubject(student, dict(getattr(student, "kdkit_adapters", {}))), build_benchmark(block),
                      "qa_jsonl", block, directory, batch_size=batch, progress=False)
    metrics = result.scores.metrics
    table = {c: metrics[f"accuracy/{c}"] / 100 for c in ASPECTS if f"accuracy/{c}" in metrics}
    table["overall"] = metrics["accuracy"] / 100
    question_file, answer_file = files.qa(split)
    truth = {str(a["question_id"]): a["answer"] for a in read_jsonl(answer_file)}
    raw = _predictions(directory) if directory is not None else {}
    answers = [{"question_id": q["question_id"], "category": q["category"], "raw": raw.get(str(q["question_id"])),
                "answer": truth[str(q["question_id"])], "correct": result.scores.units[str(q["question_id"])] == 100.0}
               for q in read_jsonl(question_file)]
    return {"accuracy": table, "answers": answers}


def _predictions(directory: Path) -> dict[str, str]:
    return {str(r["question_id"]): r["prediction"] for r in read_jsonl(directory / "predictions.jsonl")}


@torch.no_grad()
def routing_by_content(student: Any, files: WorldFiles, batch: int = 128, split: str = "val") -> dict[str, Any] | None:
    """Fraction of image tokens the teacher-expert router sends to each teacher, by aspect value.

    Returns ``{"teachers": [...], "by_value": {aspect: {value: [fraction per teacher]}}, "blocks":
    {block: [fraction per teacher]}}`` over the images of ``split`` (all blocks and tokens pooled), or
    None for a student without teacher experts.
    """
    handles = [h for h in getattr(student, "kdkit_adapters", {}).values() if getattr(h, "teacher_names", ())]
    if not handles:
        return None
    handle = handles[0]
    teachers = list(handle.teacher_names)
    scenes = read_scenes(files, split)
    per_image: list[torch.Tensor] = []
    per_block: dict[str, torch.Tensor] = {}
    for start in range(0, len(scenes), batch):
        chunk = scenes[start:start + batch]
        images = torch.cat([student.load_image(files.path("images") / s["image"]) for s in chunk])
        student.select(images)
        counts = torch.zeros(len(chunk), len(teachers))
        for out in handle.router_outputs():
            if out.group != "teacher":
                continue
            choice = out.choice.reshape(len(chunk), -1)
            onehot = torch.nn.functional.one_hot(choice, len(teachers)).float()
            counts += onehot.sum(1)
            per_block[out.block] = per_block.get(out.block, torch.zeros(len(teachers))) + onehot.sum((0, 1))
        per_image.append(counts / counts.sum(-1, keepdim=True).clamp_min(1))
    fractions = torch.cat(per_image)
    by_value: dict[str, dict[str, list[float]]] = {}
    for aspect, values in ASPECTS.items():
        by_value[aspect] = {}
        for value in values:
            rows = [i for i, s in enumerate(scenes) if s[aspect] == value]
            if rows:
                by_value[aspect][value] = fractions[rows].mean(0).tolist()
    blocks = {b: (c / c.sum().clamp_min(1)).tolist() for b, c in per_block.items()}
    return {"teachers": teachers, "by_value": by_value, "blocks": blocks}


def evaluate(student: Any, data_root: Path, directory: Path | None = None,
             splits: tuple[str, ...] = ("val", "test")) -> dict[str, Any]:
    """Accuracy table and every answer per held-out split, and routing by image content (validation images)
    of one exported student; answers kept in ``directory/<split>`` when given."""
    files = WorldFiles(Path(data_root))
    results = {split: answer_questions(student, files, directory / split if directory is not None else None,
                                       split=split) for split in splits}
    return {"splits": results, "routing": routing_by_content(student, files, split=splits[0]),
            "types": [t for t in ASPECTS]}

"""Held-out evaluation of an exported student: greedy answers, exact match per question type, routing.

The questions come from the world's LLaVA-style question file; the answers file is read only to
score. An answer counts when its first word (lower-cased, punctuation stripped) equals the answer.
"""

from __future__ import annotations

import json
import string
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from experiments.mini_hawaii.world import ASPECTS, WorldFiles, read_scenes


def normalize(text: str) -> str:
    """``" Red."`` -> ``"red"``: the first word, lower-cased, without punctuation (empty if none)."""
    words = text.lower().translate(str.maketrans("", "", string.punctuation)).split()
    return words[0] if words else ""


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every record of a JSON-lines file."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def answer_questions(student: Any, files: WorldFiles, batch: int = 128, max_new_tokens: int = 3) -> list[dict[str, Any]]:
    """Every test question answered greedily by ``student.generate``: records with prediction and hit."""
    questions = read_jsonl(files.path("questions"))
    truth = {a["question_id"]: a["answer"] for a in read_jsonl(files.path("answers"))}
    images_dir = files.path("images")
    cache: dict[str, torch.Tensor] = {}
    results = []
    for start in range(0, len(questions), batch):
        chunk = questions[start:start + batch]
        for q in chunk:
            if q["image"] not in cache:
                cache[q["image"]] = student.load_image(images_dir / q["image"])
        images = torch.cat([cache[q["image"]] for q in chunk])
        answers = student.generate(images, [q["text"] for q in chunk], max_new_tokens=max_new_tokens)
        for q, raw in zip(chunk, answers, strict=True):
            predicted = normalize(raw)
            expected = truth[q["question_id"]]
            results.append({"question_id": q["question_id"], "category": q["category"], "raw": raw,
                            "prediction": predicted, "answer": expected, "correct": predicted == expected})
    return results


def accuracy(results: list[dict[str, Any]]) -> dict[str, float]:
    """Exact-match accuracy per question type and ``overall`` (mean over all questions)."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for r in results:
        hits[r["category"]].append(r["correct"])
    table = {c: sum(v) / len(v) for c, v in hits.items()}
    table["overall"] = sum(r["correct"] for r in results) / max(1, len(results))
    return table


@torch.no_grad()
def routing_by_content(student: Any, files: WorldFiles, batch: int = 128) -> dict[str, Any] | None:
    """Fraction of image tokens the teacher-expert router sends to each teacher, by aspect value.

    Returns ``{"teachers": [...], "by_value": {aspect: {value: [fraction per teacher]}}, "blocks":
    {block: [fraction per teacher]}}`` over the test images (all blocks and tokens pooled), or None
    for a student without teacher experts.
    """
    handles = [h for h in getattr(student, "kdkit_adapters", {}).values() if getattr(h, "teacher_names", ())]
    if not handles:
        return None
    handle = handles[0]
    teachers = list(handle.teacher_names)
    scenes = read_scenes(files, "test")
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


def evaluate(student: Any, data_root: Path) -> dict[str, Any]:
    """Accuracy table, every answer, and routing by image content of one exported student."""
    files = WorldFiles(Path(data_root))
    results = answer_questions(student, files)
    return {"accuracy": accuracy(results), "answers": results, "routing": routing_by_content(student, files),
            "types": [t for t in ASPECTS]}

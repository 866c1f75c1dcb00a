"""The model card (``README.md``) of an export directory, in the Hugging Face Hub's format (YAML
metadata, then Markdown): base model, teachers and their checkpoints' digests, recipe, training data,
evaluation results when ``kdkit eval`` wrote them, parameters at inference and how to load it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from kdkit.recipe.schema import Recipe

CARD = "README.md"
#: Config fields of a block that name what it loads (a local path, or a library's model name).
SOURCE_FIELDS = ("checkpoint", "model", "vision", "language_model")


def digest(path: Path) -> str:
    """``sha256:<hex>`` of a file, or of a directory (relative names and contents of its files, sorted)."""
    sha = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file != path:
            sha.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                sha.update(chunk)
    return f"sha256:{sha.hexdigest()}"


def sources(fields: dict[str, Any], data_root: Path) -> dict[str, Any]:
    """The loading fields of a block's config, each local path with its :func:`digest`."""
    found: dict[str, Any] = {}
    for key in SOURCE_FIELDS:
        value = fields.get(key)
        if not isinstance(value, str) or not value:
            continue
        path = Path(value) if Path(value).is_absolute() else data_root / value
        found[key] = {"value": value, "sha256": digest(path)} if path.exists() else {"value": value}
    return found


def provenance(recipe: Recipe, checkpoint: Path) -> dict[str, Any]:
    """What the card says about training, for the export manifest: recipe, base model, teachers, data."""
    root = Path(recipe.runtime.data_root)
    stages = {}
    for name, stage in recipe.stages.items():
        stages[name] = {"data": stage.data.config.model_dump(mode="json"), "trainable": list(stage.trainable),
                        "max_steps": stage.max_steps, "epochs": None if stage.max_steps else stage.epochs,
                        "global_batch": stage.batch.global_size, "lr": stage.optimizer.lr}
    return {
        "recipe": recipe.name,
        "description": recipe.description,
        "student": {"kind": recipe.student.kind, **sources(recipe.student.config.model_dump(mode="json"), root)},
        "teachers": {name: {"kind": block.kind, **sources(block.config.model_dump(mode="json"), root)}
                     for name, block in recipe.teachers.items()},
        "adapters": {name: block.kind for name, block in recipe.adapters.items()},
        "losses": {name: {"kind": block.kind, "weight": block.weight} for name, block in recipe.losses.items()},
        "stages": stages,
        "checkpoint": checkpoint.name,
    }


def eval_results(out_dir: Path) -> list[dict[str, Any]]:
    """Every ``eval/**/metrics.json`` under an export directory (``kdkit eval`` writes them), sorted by path."""
    rows = []
    for file in sorted((out_dir / "eval").glob("**/metrics.json")):
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and isinstance(data.get("metrics"), dict):
            rows.append({**data, "path": file.parent.relative_to(out_dir).as_posix()})
    return rows


def _value(source: dict[str, Any]) -> str:
    text = f"`{source['value']}`"
    return f"{text} (`{source['sha256']}`)" if "sha256" in source else text


def render(manifest: dict[str, Any], results: list[dict[str, Any]]) -> str:
    """The card's text from an export manifest (with its ``provenance``) and evaluation results."""
    facts = manifest.get("provenance") or {}
    student = facts.get("student", {})
    base = [s["value"] for k, s in student.items() if k != "kind"]
    meta: dict[str, Any] = {"library_name": "kdkit", "tags": ["knowledge-distillation", "kdkit"]}
    if manifest["student"].get("kind") == "llava":
        meta["pipeline_tag"] = "image-text-to-text"
    routed = [name for name, kind in facts.get("adapters", {}).items()]
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "",
             f"# {facts.get('recipe', 'kdkit student')}", ""]
    if facts.get("description"):
        lines += [facts["description"], ""]
    lines += ["A student distilled with kdkit from the teachers below.", "", "## Base model", ""]
    lines += [f"- {student.get('kind', manifest['student'].get('kind'))} student from "
              + (", ".join(f"`{b}`" for b in base) or "its plugin's defaults")]
    for key, source in student.items():
        if key != "kind":
            lines.append(f"  - {key}: {_value(source)}")
    lines += ["", "## Teachers", "", "| name | kind | loaded from |", "| --- | --- | --- |"]
    for name, teacher in facts.get("teachers", {}).items():
        loaded = "; ".join(f"{k}: {_value(s)}" for k, s in teacher.items() if k != "kind") or "plugin default"
        lines.append(f"| {name} | {teacher['kind']} | {loaded} |")
    lines += ["", "## Recipe", "", f"`kdkit_recipe.yaml` in this directory is the resolved recipe "
              f"`{facts.get('recipe', '?')}`; the weights are its checkpoint `{facts.get('checkpoint', '?')}`.", ""]
    if facts.get("losses"):
        lines.append("Losses: " + ", ".join(f"{n} ({l['kind']}, weight {l['weight']:g})" for n, l in facts["losses"].items()) + ".")
        lines.append("")
    lines += ["## Training data", "", "| stage | data | steps | global batch | lr | trainable |", "| --- | --- | --- | --- | --- | --- |"]
    for name, stage in facts.get("stages", {}).items():
        data = stage["data"]
        where = ", ".join(f"{k}={v}" for k, v in data.items() if k != "kind" and isinstance(v, (str, int, float)))
        steps = stage["max_steps"] if stage["max_steps"] else f"{stage['epochs']:g} epochs"
        lines.append(f"| {name} | {data.get('kind')}: {where} | {steps} | {stage['global_batch']} | {stage['lr']:g} | "
                     f"{', '.join(stage['trainable'])} |")
    lines += ["", "## Evaluation", ""]
    if results:
        lines += ["| benchmark | metric | value | questions | results |", "| --- | --- | --- | --- | --- |"]
        for row in results:
            primary = row.get("primary")
            value = row["metrics"].get(primary)
            limited = f"first {row['limit']}" if row.get("limit") else "all"
            shown = f"{value:.2f}" if isinstance(value, (int, float)) else str(value)
            lines.append(f"| {row['benchmark']} | {primary} | {shown} | {limited} | `{row['path']}/metrics.json` |")
    else:
        lines.append("No results yet: `kdkit eval EXPORT_DIR --benchmark NAME` writes them under `eval/` "
                     "and refreshes this card.")
    params = manifest.get("parameters", {})
    lines += ["", "## Parameters at inference", "", "| part | parameters |", "| --- | ---: |"]
    lines += [f"| {key} | {value:,} |" if isinstance(value, int) else f"| {key} | {value} |" for key, value in params.items()]
    lines += ["", "## How to load", ""]
    if manifest.get("student_dir") == ".":
        lines += ["This directory is a plain transformers model (the adapters are merged exactly into its weights):",
                  "", "```python", "from transformers import AutoProcessor, LlavaForConditionalGeneration", "",
                  'model = LlavaForConditionalGeneration.from_pretrained("EXPORT_DIR")',
                  'processor = AutoProcessor.from_pretrained("EXPORT_DIR")', "```"]
    else:
        lines += ["```python", "import kdkit", "", 'student = kdkit.load_student("EXPORT_DIR")  # adapters injected, routed',
                  "```", ""]
        if routed:
            lines += [f"The adapters ({', '.join(routed)}) are separate modules under `adapters/`; "
                      f"`{manifest.get('student_dir', 'student')}/` holds the base model WITHOUT them. Loading "
                      "that directory with plain transformers gives the base model, not this student; this "
                      "directory itself holds no model weights, so transformers refuses to load it as a model."]
        lines += ["", "`AutoProcessor.from_pretrained(\"EXPORT_DIR\")` gives the processor the student was trained with "
                  "(image preprocessing and chat template)."]
    return "\n".join(lines) + "\n"


def write_model_card(out_dir: str | Path) -> Path:
    """(Re)write ``README.md`` of the export directory ``out_dir`` from its manifest and ``eval/`` results."""
    from kdkit.export import read_manifest

    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    file = out_dir / CARD
    file.write_text(render(manifest, eval_results(out_dir)), encoding="utf-8")
    return file

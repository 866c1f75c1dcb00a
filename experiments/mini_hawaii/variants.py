"""The four ablation rows as recipes of ``recipes/demo/``, the student's starting files, and one job:
train a (variant, seed) through the engine, export its student, evaluate it on the held-out questions
(validation and test splits).
"""

from __future__ import annotations

import json
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Ablation rows, in table order: recipe name -> row label (the paper's Table 2 wording).
VARIANTS: dict[str, str] = {
    "baseline": "LLaVA baseline (no KD)",
    "fgkd": "+ FGKD (no token scoring)",
    "fgkd_scoring": "+ token scoring",
    "hawaii": "+ CGKD (= HAWAII)",
}
#: The demo recipes, next to the repository's other recipes.
RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "demo"

#: The student's CLIP tower: 32x32 input, 8x8 patches (a 4x4 grid of 16 visual tokens), 4 layers.
STUDENT_VISION: dict[str, Any] = {"image_size": 32, "patch_size": 8, "hidden_size": 64, "intermediate_size": 128,
                                  "num_hidden_layers": 4, "num_attention_heads": 4}
#: The student's Llama.
STUDENT_LLM: dict[str, Any] = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                               "num_attention_heads": 4, "num_key_value_heads": 4}


def student_dir(seed: int) -> str:
    """Where the student's starting files for ``seed`` live, relative to the data root."""
    return f"student/seed{seed}"


def write_student(data_root: Path, seed: int, words: list[str]) -> dict[str, str]:
    """Random-init student parts for ``seed`` (the 'weak tower' setting: nothing is pretrained).

    Writes a tokenizer knowing ``words``, a tiny CLIP vision tower and a tiny Llama (``save_pretrained``);
    returns the recipe overrides that point the student at them. Existing files are kept.
    """
    from kdkit_plugins.fixtures.llava import write_tiny_clip_vision, write_tiny_llm
    from kdkit_plugins.fixtures.tokenizer import write_tiny_tokenizer

    base = data_root / student_dir(seed)
    if not (base / "done").is_file():
        tokenizer = write_tiny_tokenizer(base / "tokenizer", extra_words=words)
        write_tiny_clip_vision(base / "vision", seed=seed, **STUDENT_VISION)
        write_tiny_llm(base / "llm", tokenizer_dir=tokenizer, seed=seed, **STUDENT_LLM)
        (base / "done").write_text("ok\n", encoding="utf-8")
    return {"student.vision": f"{student_dir(seed)}/vision", "student.language_model": f"{student_dir(seed)}/llm"}


@dataclass(frozen=True)
class Job:
    """One training run: a variant with a seed, and the settings every run of the demo shares."""

    variant: str
    seed: int
    data_root: Path
    runs_dir: Path
    pretrain_steps: int
    finetune_steps: int
    batch: int
    splits: tuple[str, ...] = ("val", "test")
    extra: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """Run name, e.g. ``hawaii-seed0``."""
        return f"{self.variant}-seed{self.seed}"

    @property
    def run_dir(self) -> Path:
        """The engine's run directory of this job."""
        return self.runs_dir / self.name

    def overrides(self, student: dict[str, str]) -> list[str]:
        """``--set`` overrides: seed, paths, the profile's step budget (the same for every variant), then ``extra``."""
        values = {
            "runtime.seed": self.seed, "runtime.data_root": str(self.data_root), "runtime.output_dir": str(self.run_dir),
            "stages.pretrain.max_steps": self.pretrain_steps, "stages.finetune.max_steps": self.finetune_steps,
            "stages.finetune.batch.global_size": self.batch, "stages.finetune.batch.per_device": self.batch,
            **student,
        }
        return [*(f"{key}={value}" for key, value in values.items()), *self.extra]


DONE = "job.json"


def cpu_seconds() -> float:
    """CPU time (user + system) this process has used: its wall time on a core of its own, with one thread."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_job(job: Job, words: list[str], threads: int = 1) -> dict[str, Any]:
    """Train, export and evaluate one job (resumes a half-done run); returns and saves its summary.

    A finished job (its ``job.json`` exists) is read back instead of being run again.
    """
    import torch

    from kdkit.engine.run import run_recipe
    from kdkit.export import export_run, load_student

    from experiments.mini_hawaii.evaluate import evaluate

    done = job.run_dir / DONE
    if done.is_file():
        return json.loads(done.read_text(encoding="utf-8"))
    torch.set_num_threads(threads)
    started = time.perf_counter()
    overrides = job.overrides(write_student(job.data_root, job.seed, words))
    resume = (job.run_dir / "checkpoints").is_dir()
    if resume and not any((job.run_dir / "checkpoints").iterdir()):
        resume = False
    if not resume and job.run_dir.exists():  # died before its first checkpoint: start it again
        shutil.rmtree(job.run_dir)
    run_recipe(RECIPES / f"{job.variant}.yaml", overrides, resume=resume, tensorboard=False, progress=False,
               report=False)
    trained = time.perf_counter()
    export = job.run_dir / "export"
    if export.exists():  # a job that died while exporting
        shutil.rmtree(export)
    export_run(job.run_dir, export)
    student = load_student(export)
    results = evaluate(student, job.data_root, job.run_dir / "eval", job.splits)
    (job.run_dir / "eval.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    summary = {
        "variant": job.variant, "seed": job.seed, "run_dir": str(job.run_dir),
        "accuracy": {split: r["accuracy"] for split, r in results["splits"].items()},
        "routing": results.get("routing"), "train_seconds": trained - started,
        "eval_seconds": time.perf_counter() - trained,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_seconds": cpu_seconds(),
        "resumed": resume,
    }
    done.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return summary

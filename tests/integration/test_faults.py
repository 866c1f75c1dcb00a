"""Fault injection through the ``kdkit`` command: every class of failure a user can meet ends with
exit code 1 and ONE ``error:`` line naming the culprit, no traceback, and nothing lost (complete
checkpoints intact, temporary files gone, ``--resume`` working once the cause is removed).

Classes: recipes that say what they mean, the run directory's lifecycle, filesystem faults,
non-finite values from the first step, plugin switches, labels against the student, library
failures, and the README's commands (pipes, quiet output).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kdkit.cli import main
from kdkit.engine import checkpoint as checkpoint_module
from kdkit.engine import monitor as monitor_module
from kdkit.engine.checkpoint import list_checkpoints
from kdkit.engine.monitor import read_metrics

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "tiny" / "timm_two_teachers.yaml"
KDKIT = Path(sys.executable).with_name("kdkit")
#: The tiny recipe in 2 + 2 steps of 2 samples, a checkpoint after every step.
FAST = ["stages.pretrain.max_steps=2", "stages.finetune.max_steps=2", "stages.pretrain.batch.global_size=2",
        "stages.pretrain.batch.per_device=2", "stages.finetune.batch.global_size=2",
        "stages.finetune.batch.per_device=2", "stages.pretrain.data.size=8", "stages.finetune.data.size=8",
        "runtime.checkpoint_every=1", "runtime.keep_last=10"]


def sets(*overrides: str) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def kdkit(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the command in this process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def refused(code: int, err: str, *fragments: str) -> str:
    """Assert the one-line refusal: exit 1, exactly one ``error:`` line holding every fragment, no traceback."""
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1, err
    assert "Traceback" not in err, err
    assert len(errors) == 1, err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def run_args(tiny_root: Path, run_dir: Path, *extra: str, recipe: Path = RECIPE) -> list[str]:
    return ["run", str(recipe), "--data-root", str(tiny_root), "--output-dir", str(run_dir), *sets(*FAST, *extra)]


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file of every complete checkpoint, by relative path."""
    root = run_dir / "checkpoints"
    return {str(p.relative_to(root)): p.read_bytes() for c in list_checkpoints(root) for p in c.rglob("*") if p.is_file()}


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(list_checkpoints(run_dir / "checkpoints")[-1] / "model.safetensors"))


@pytest.fixture(scope="module")
def straight(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fast recipe run from start to end without a fault."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    assert main(run_args(tiny_root, run_dir)) == 0
    return run_dir


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# 1. recipes that say what they mean ------------------------------------------------------------

def test_duplicate_key_names_both_lines(tmp_path: Path, capsys) -> None:
    text = RECIPE.read_text(encoding="utf-8").replace("  eva02:\n", "  clip:\n")
    lines = text.splitlines()
    first, second = [n for n, line in enumerate(lines, 1) if line == "  clip:"]
    code, out, err = kdkit(capsys, "validate", write(tmp_path, text))
    refused(code, err, f"duplicate key 'clip' in {tmp_path / 'r.yaml'}: line {first} and line {second}")
    assert "ok:" not in out


def test_unknown_key_gets_did_you_mean(capsys) -> None:
    code, _, err = kdkit(capsys, "validate", RECIPE, "--set", "stages.pretrain.optimizer.weight_decy=0.1")
    assert code == 1 and "Traceback" not in err
    assert "stages.pretrain.optimizer.weight_decy: unknown key (known: name, lr, weight_decay, betas, momentum, " \
           "grad_clip); did you mean 'weight_decay'?" in err


def test_set_with_a_parent_that_does_not_exist_is_refused(capsys) -> None:
    code, _, err = kdkit(capsys, "validate", RECIPE, "--set", "stages.main.max_steps=10")
    assert code == 1 and "Traceback" not in err
    assert "--set stages.main.max_steps: path does not exist: unknown key 'main' (known: finetune, pretrain)" in err


def test_empty_recipe_says_it_is_empty(tmp_path: Path, capsys) -> None:
    code, _, err = kdkit(capsys, "validate", write(tmp_path, "# only a comment\n\n"))
    assert code == 1 and "Traceback" not in err
    assert f"recipe file {tmp_path / 'r.yaml'} is empty (no recipe keys, only comments or blank lines)" in err


def test_validate_checks_teacher_names_in_plugin_settings(capsys) -> None:
    code, out, err = kdkit(capsys, "validate", RECIPE, "--set", "losses.fine.teachers=[clip, sam]")
    assert code == 1 and "ok:" not in out
    assert "losses.fine.teachers[1]: 'sam' is not a teacher of this recipe (teachers: clip, eva02)" in err


def test_validate_names_a_scorer_a_loss_needs_but_the_recipe_lacks(capsys) -> None:
    code, out, err = kdkit(capsys, "validate", RECIPE, "--set", "scorer=null")
    refused(code, err, "losses.fine: the 'fgkd' loss weights tokens by the recipe's scorer, but the recipe has no "
                       "scorer; add one (e.g. scorer: {kind: uniform})")
    assert "ok:" not in out
    assert kdkit(capsys, "validate", RECIPE, *sets("scorer=null", "losses.fine.scoring=none"))[0] == 0


def test_validate_build_refuses_what_run_refuses(tiny_root: Path, tmp_path: Path, capsys) -> None:
    """A trainable entry of the SECOND stage matching nothing: validate --build and run refuse it before step 1."""
    bad = "stages.finetune.trainable=[adapters, projector]"
    code, out, err = kdkit(capsys, "validate", "--build", RECIPE, *sets(f"runtime.data_root={tiny_root}", bad))
    refused(code, err, "stages.finetune.trainable[1] 'projector' matches no parameter")
    assert "ok:" not in out
    code, _, err = kdkit(capsys, *run_args(tiny_root, tmp_path / "run", bad))
    refused(code, err, "stages.finetune.trainable[1] 'projector' matches no parameter")
    assert read_metrics(tmp_path / "run") == [] and not list_checkpoints(tmp_path / "run" / "checkpoints")


def test_validate_build_checks_aligner_chains_against_the_student_grid(tiny_root: Path, capsys) -> None:
    chain = "teachers.eva02.align=[{kind: resample, size: [5, 5]}, {kind: mlp}]"
    assert kdkit(capsys, "validate", RECIPE, "--set", chain)[0] == 0  # shapes come from the build
    code, out, err = kdkit(capsys, "validate", "--build", RECIPE, *sets(f"runtime.data_root={tiny_root}", chain))
    refused(code, err, "teachers.eva02.align[1] (mlp): projects the 5x5 grid before it reaches the student grid 4x4")
    assert "ok:" not in out


def test_plain_validate_refuses_a_trainable_regex_run_refuses(tiny_root: Path, tmp_path: Path, capsys) -> None:
    """Without --build (no checkpoint read): the student's skeleton resolves every trainable entry as run does."""
    bad = r"stages.finetune.trainable=[adapters, 'student\.nowhere\..*']"
    code, out, err = kdkit(capsys, "validate", RECIPE, "--set", bad)
    line = refused(code, err, r"stages.finetune.trainable[1] 'student\\.nowhere\\..*' matches no parameter; groups: "
                              "adapters, routers, head, vision_base, kd_heads; or a regular expression on names such as "
                              "student.cls_token, student.pos_embed, student.patch_embed.proj.weight")
    assert "ok:" not in out
    code, _, err = kdkit(capsys, *run_args(tiny_root, tmp_path / "run", bad))
    assert line == f"error: {RECIPE}: " + refused(code, err).removeprefix("error: ")  # word for word what run says
    assert not (tmp_path / "run" / "checkpoints").exists() or not list_checkpoints(tmp_path / "run" / "checkpoints")
    # a group the student lacks, a KD-head regex naming no teacher: refused too; an unmodified recipe says what it checked
    code, _, err = kdkit(capsys, "validate", RECIPE, "--set", "stages.pretrain.trainable=[projector]")
    refused(code, err, "stages.pretrain.trainable[0] 'projector' matches no parameter; groups: adapters")
    code, _, err = kdkit(capsys, "validate", RECIPE, "--set", r"stages.pretrain.trainable=['heads\.aligners\.clipp\..*']")
    refused(code, err, r"stages.pretrain.trainable[0] 'heads\\.aligners\\.clipp\\..*' matches no parameter")
    code, out, _ = kdkit(capsys, "validate", RECIPE)
    assert code == 0
    assert out == (f"ok: {RECIPE} (timm_two_teachers: 2 teachers, 4 losses, stages pretrain, finetune; trainable lists "
                   "checked except 'kd_heads' (KD heads are built from the teachers: `kdkit validate --build`))\n")
    code, out, _ = kdkit(capsys, "validate", RECIPE, "--set", r"stages.pretrain.trainable=['heads\.aligners\.clip\..*']")
    assert code == 0 and r"checked except 'heads\\.aligners\\.clip\\..*', 'kd_heads' (KD heads" in out


def test_plain_validate_reads_no_student_weights(tiny_root: Path, tmp_path: Path, capsys) -> None:
    """A student checkpoint that is not even readable: plain validate checks the structure, --build refuses it."""
    garbage = tmp_path / "student.safetensors"
    garbage.write_bytes(b"\x00not safetensors")
    student = f"student.checkpoint={garbage}"
    code, out, err = kdkit(capsys, "validate", RECIPE, "--set", student)
    assert code == 0, err
    assert "trainable lists checked except 'kd_heads'" in out
    code, out, err = kdkit(capsys, "validate", "--build", RECIPE, *sets(student, f"runtime.data_root={tiny_root}"))
    refused(code, err, f"student checkpoint {str(garbage)!r} is not readable")


def test_plain_validate_of_a_llava_student_from_its_config_files(tmp_path: Path, capsys) -> None:
    """The tiny HAWAII twin: LLaVA assembled from config files on the meta device (weights truncated to 10 bytes),
    and, where the student's files are absent, ok with the reason the trainable lists were not checked."""
    from kdkit_plugins.fixtures.llava import write_tiny_clip_vision, write_tiny_llm

    recipe = ROOT / "recipes" / "tiny" / "hawaii" / "hawaii_7b.yaml"
    write_tiny_clip_vision(tmp_path / "models" / "clip", seed=1)
    write_tiny_llm(tmp_path / "models" / "llm", seed=2)
    for weights in (tmp_path / "models").rglob("*.safetensors"):
        weights.write_bytes(weights.read_bytes()[:10])
    root = f"runtime.data_root={tmp_path}"
    code, out, err = kdkit(capsys, "validate", recipe, "--set", root)
    assert code == 0, err
    assert out.endswith("stages pretrain, finetune; trainable lists checked except 'kd_heads' (KD heads are built "
                        "from the teachers: `kdkit validate --build`))\n")
    code, out, err = kdkit(capsys, "validate", recipe, *sets(root, r"stages.finetune.trainable=[llm, 'student\.model\.nothing.*']"))
    refused(code, err, r"stages.finetune.trainable[1] 'student\\.model\\.nothing.*' matches no parameter; groups: adapters, "
                       "routers, projector, vision_base, llm, kd_heads; or a regular expression on names such as "
                       "student.model.vision_tower.embeddings.class_embedding")
    code, out, err = kdkit(capsys, "validate", recipe, "--set", f"runtime.data_root={tmp_path / 'elsewhere'}")
    assert code == 0, err
    assert out.endswith(f"trainable lists not checked: student.vision: directory {str(tmp_path / 'elsewhere' / 'models' / 'clip')!r} "
                        "does not exist (relative paths resolve against runtime.data_root); run `kdkit validate --build` "
                        "where the student's files are)\n")


def test_validate_takes_a_directory_with_fragments_and_foreign_configs(capsys) -> None:
    code, out, err = kdkit(capsys, "validate", ROOT / "recipes")
    assert code == 0, err
    assert f"ok: {ROOT / 'recipes' / 'demo' / '_base.yaml'} (fragment holding" in out
    assert f"skipped: {ROOT / 'recipes' / 'torchdistill' / 'digits_kdkit_losses.yaml'} (not a kdkit recipe" in out
    code, _, err = kdkit(capsys, "validate", ROOT / "recipes" / "torchdistill" / "digits_kdkit_losses.yaml")
    assert code == 1  # named explicitly, another tool's config is an error


# 2. the run directory's lifecycle ----------------------------------------------------------------

@contextmanager
def live_process() -> Iterator[int]:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield process.pid
    finally:
        process.kill()
        process.wait()


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_live_lock_is_refused_and_a_stale_one_taken_over(straight: Path, tiny_root: Path, tmp_path: Path,
                                                           capsys) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(straight, run_dir)
    before = snapshot(run_dir)
    with live_process() as pid:
        (run_dir / "run.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "started": "t"}))
        code, _, err = kdkit(capsys, *run_args(tiny_root, run_dir), "--resume")
        refused(code, err, f"run directory {run_dir} is in use by another kdkit run (pid {pid} on this host")
    stale = dead_pid()
    (run_dir / "run.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": stale, "started": "t"}))
    code, _, err = kdkit(capsys, *run_args(tiny_root, run_dir), "--resume")
    assert code == 0, err
    assert f"taking over the stale lock {run_dir / 'run.lock'} (pid {stale}" in err
    assert not (run_dir / "run.lock").exists()  # released at the end
    assert snapshot(run_dir) == before  # the run was complete: nothing to add, nothing changed


def test_a_lock_from_another_host_is_refused_while_it_beats_then_taken_over(straight: Path, tiny_root: Path,
                                                                           tmp_path: Path, capsys) -> None:
    """A run on another host cannot be checked by its pid: its heartbeat decides (runtime.lock_timeout)."""
    run_dir = tmp_path / "run"
    shutil.copytree(straight, run_dir)
    before = snapshot(run_dir)
    lock_file = run_dir / "run.lock"
    owner = {"host": "node7", "pid": 4242, "started": "2026-01-01T00:00:00+0000"}
    lock_file.write_text(json.dumps({**owner, "heartbeat": time.time() - 30}))
    code, _, err = kdkit(capsys, *run_args(tiny_root, run_dir), "--resume")
    refused(code, err, f"error: run directory {run_dir} is in use by another kdkit run (pid 4242 on host node7 since "
                       "2026-01-01T00:00:00+0000, last heartbeat 30 s ago); wait for it to end or stop it (if it died, "
                       "its lock is taken over once its heartbeat is older than runtime.lock_timeout, 600 s; "
                       "`kdkit run --break-lock` takes it over now)")
    assert snapshot(run_dir) == before and json.loads(lock_file.read_text())["host"] == "node7"
    code, _, err = kdkit(capsys, *run_args(tiny_root, run_dir, "runtime.lock_timeout=20"), "--resume")
    assert code == 0, err
    assert (f"taking over the stale lock {lock_file} of pid 4242 on host node7 since 2026-01-01T00:00:00+0000, last "
            "heartbeat 30 s ago (over runtime.lock_timeout, 20 s)") in err.splitlines()
    assert not lock_file.exists() and snapshot(run_dir) == before
    lock_file.write_text(json.dumps({**owner, "heartbeat": time.time()}))
    code, _, err = kdkit(capsys, *run_args(tiny_root, run_dir), "--resume", "--break-lock")
    assert code == 0, err
    assert f"breaking the lock {lock_file} of pid 4242 on host node7" in err and "Traceback" not in err
    assert not lock_file.exists() and snapshot(run_dir) == before
    code, _, err = kdkit(capsys, "validate", RECIPE, "--set", "runtime.lock_timeout=0")
    refused(code, err, "runtime.lock_timeout")


def test_a_run_that_died_before_its_first_checkpoint_starts_again(tiny_root: Path, straight: Path, tmp_path: Path,
                                                                  capsys, monkeypatch) -> None:
    from kdkit.engine import state

    run_dir = tmp_path / "run"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as if killed while training the first step

    with monkeypatch.context() as patch:
        patch.setattr(state, "save", killed)
        assert kdkit(capsys, *run_args(tiny_root, run_dir))[0] == 130
    assert (run_dir / "recipe.yaml").is_file() and not list_checkpoints(run_dir / "checkpoints")
    for resume in ([], ["--resume"]):  # either way, nothing to delete by hand
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        code, _, err = kdkit(capsys, *run_args(tiny_root, run_dir), *resume)
        assert code == 0, err
        assert f"{run_dir} holds a run that stopped before its first checkpoint: starting it again from step 0" in err
    reference = final_weights(straight)
    assert all(torch.equal(final_weights(run_dir)[k], reference[k]) for k in reference)
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2, 3, 4]


def test_export_refusals(straight: Path, tmp_path: Path, capsys) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    code, _, err = kdkit(capsys, "export", straight, busy)
    refused(code, err, f"cannot export into {busy}: it is not empty (notes.txt) and is not an earlier export")
    assert (busy / "notes.txt").read_text() == "mine"
    young = tmp_path / "young"
    young.mkdir()
    shutil.copy(straight / "recipe.yaml", young / "recipe.yaml")
    code, _, err = kdkit(capsys, "export", young, tmp_path / "out")
    refused(code, err, f"run {young} has no checkpoint: it stopped before writing its first one")
    assert "resume" not in err


# 3. filesystem faults ----------------------------------------------------------------------------

def test_disk_full_during_a_checkpoint_keeps_every_complete_one(tiny_root: Path, straight: Path, tmp_path: Path,
                                                                capsys, monkeypatch) -> None:
    run_dir = tmp_path / "run"
    real = checkpoint_module.save_file
    calls = []

    def full_disk(tensors, path):  # the third checkpoint's optimizer file hits a full disk mid-write
        calls.append(path)
        if len(calls) == 6:
            Path(path).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real(tensors, path)

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint_module, "save_file", full_disk)
        code, _, err = kdkit(capsys, *run_args(tiny_root, run_dir))
    refused(code, err, f"cannot write checkpoint {run_dir / 'checkpoints' / 'step-00000003'}: No space left on device "
                       "(ENOSPC) (writing optimizer.safetensors); no complete checkpoint was touched")
    assert [c.name for c in list_checkpoints(run_dir / "checkpoints")] == ["step-00000001", "step-00000002"]
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".tmp-")]
    assert not (run_dir / "run.lock").exists()
    code, _, err = kdkit(capsys, *run_args(tiny_root, run_dir), "--resume")  # space freed
    assert code == 0, err
    reference = final_weights(straight)
    assert all(torch.equal(final_weights(run_dir)[k], reference[k]) for k in reference)
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2, 3, 4]


def test_disk_full_during_a_log_write_tears_a_line_that_resume_drops(tiny_root: Path, straight: Path,
                                                                     tmp_path: Path, capsys, monkeypatch) -> None:
    run_dir = tmp_path / "run"
    writes = []

    class FullDisk:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, text: str) -> int:
            writes.append(text)
            if len(writes) == 3:  # the third record: half of it reaches the disk
                self.handle.write(text[: len(text) // 2])
                self.handle.flush()
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.handle.write(text)

    with monkeypatch.context() as patch:
        patch.setattr(monitor_module, "open", lambda *a, **k: FullDisk(open(*a, **k)), raising=False)
        code, _, err = kdkit(capsys, *run_args(tiny_root, run_dir))
    refused(code, err, f"cannot append to {run_dir / 'metrics.jsonl'}: No space left on device (ENOSPC)")
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and not lines[-1].endswith("}")  # the torn line
    code, _, err = kdkit(capsys, *run_args(tiny_root, run_dir), "--resume")
    assert code == 0, err
    assert f"warning: dropped the torn last line 3 of {run_dir / 'metrics.jsonl'}" in err
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2, 3, 4]
    assert [r["losses"] for r in read_metrics(run_dir)] == [r["losses"] for r in read_metrics(straight)]


def test_output_path_that_is_a_file(tiny_root: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "taken").write_text("a file")
    code, _, err = kdkit(capsys, *run_args(tiny_root, tmp_path / "taken" / "run"))
    refused(code, err, f"cannot use {tmp_path / 'taken' / 'run'} as the run directory: {tmp_path / 'taken'} is a file")
    assert (tmp_path / "taken").read_text() == "a file"


def test_unwritable_output_location(tiny_root: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    from pathlib import Path as RealPath

    real = RealPath.write_bytes
    target = tmp_path / "ro" / "run"

    def read_only(self, data):  # what a read-only mount answers
        if str(self).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real(self, data)

    monkeypatch.setattr(RealPath, "write_bytes", read_only)
    code, _, err = kdkit(capsys, *run_args(tiny_root, target))
    refused(code, err, f"cannot write the run directory {target}: Read-only file system (EROFS)")


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_a_real_full_disk(tiny_root: Path, straight: Path, tmp_path: Path, capsys) -> None:
    """On a 600 KiB tmpfs (where root may mount one) the second checkpoint does not fit: one line, the first
    checkpoint intact, no temporary files; grown to 8 MiB, --resume finishes the run as if nothing happened."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "600k"):
        pytest.skip("cannot mount a tmpfs here (needs root); the patched full-disk tests cover the class")
    try:
        run_dir = disk / "run"
        code, _, err = kdkit(capsys, *run_args(tiny_root, run_dir, "runtime.checkpoint_every=1"))
        refused(code, err, "No space left on device (ENOSPC)")
        kept = list_checkpoints(run_dir / "checkpoints")
        assert kept, err
        for complete in kept:
            load_file(str(complete / "model.safetensors"))  # readable: every complete checkpoint intact
        assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".tmp-")]
        subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)
        code, _, err = kdkit(capsys, *run_args(tiny_root, run_dir), "--resume")
        assert code == 0, err
        reference = final_weights(straight)
        assert all(torch.equal(final_weights(run_dir)[k], reference[k]) for k in reference)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)  # lazy: never leave a mount behind


# 4. non-finite values from the first step --------------------------------------------------------

def test_a_broken_input_at_step_one_reaches_the_guard(tiny_root: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    from kdkit_plugins.data.synthetic import SyntheticImages

    real = SyntheticImages.__getitem__

    def broken(self, index):
        sample = real(self, index)
        return {**sample, "images": torch.full_like(sample["images"], float("nan"))}

    monkeypatch.setattr(SyntheticImages, "__getitem__", broken)
    code, _, err = kdkit(capsys, *run_args(tiny_root, tmp_path / "run"))
    refused(code, err, "non-finite loss at stage 'pretrain' step 1 (global step 1): rank 0: term 'task' on batch ids",
            "set runtime.on_nonfinite: skip")
    assert "does not require grad" not in err


def test_an_absurd_learning_rate_reaches_the_guard(tiny_root: Path, tmp_path: Path, capsys) -> None:
    code, _, err = kdkit(capsys, *run_args(tiny_root, tmp_path / "run", "stages.pretrain.optimizer.lr=1e30",
                                           "stages.pretrain.optimizer.grad_clip=null"))
    refused(code, err, "non-finite loss at stage 'pretrain' step 2 (global step 2)", "term 'task'")
    assert [c.name for c in list_checkpoints(tmp_path / "run" / "checkpoints")] == ["step-00000001"]


# 5. plugin switches --------------------------------------------------------------------------------

def test_disable_with_an_unknown_name_lists_the_known_ones(capsys) -> None:
    code, _, err = kdkit(capsys, "--disable", "teachers.timn", "plugins")
    refused(code, err, "--disable: unknown plugin 'teachers.timn' (known: ", "did you mean 'teachers.timm'?")


def test_a_kind_offered_only_by_a_disabled_plugin_says_so(capsys, monkeypatch) -> None:
    from kdkit import plugins

    monkeypatch.setattr(plugins, "_default", None)  # a fresh load that sees the switch
    monkeypatch.setattr(plugins, "DISABLED_BY_FLAG", set())
    monkeypatch.setenv(plugins.DISABLE_ENV, "")  # restored (to unset) after the test: the CLI writes it
    try:
        code, _, err = kdkit(capsys, "--disable", "teachers.timm", "validate", RECIPE)
        assert code == 1 and "Traceback" not in err
        assert ("teachers.eva02.kind: teacher 'timm' is offered only by a disabled plugin "
                "(plugin 'teachers.timm', disabled by --disable); enable it to use it") in err
        monkeypatch.setattr(plugins, "_default", None)
        monkeypatch.setattr(plugins, "DISABLED_BY_FLAG", set())
        monkeypatch.setenv(plugins.DISABLE_ENV, "teachers.timm")
        code, _, err = kdkit(capsys, "validate", RECIPE)
        assert "(plugin 'teachers.timm', disabled by KDKIT_DISABLE_PLUGINS)" in err
    finally:
        plugins._default = None  # noqa: SLF001 -- the next test loads every plugin again


# 6. every data plugin checks its labels against the student --------------------------------------

def test_more_classes_in_the_data_than_in_the_head(tiny_root: Path, tmp_path: Path, capsys) -> None:
    code, _, err = kdkit(capsys, *run_args(tiny_root, tmp_path / "run", "stages.finetune.data.num_classes=6"))
    refused(code, err, "stages.finetune.data: the synthetic data (num_classes) has 6 classes but the student's "
                       "classifier has 4 outputs; set student.model_kwargs.num_classes: 6")
    assert not list_checkpoints(tmp_path / "run" / "checkpoints")  # refused before the first stage trained


# 7. library failures translated ------------------------------------------------------------------

def test_open_clip_directory_without_its_config(tiny_root: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_root, data)
    (data / "teachers" / "clip" / "open_clip_config.json").unlink()
    code, _, err = kdkit(capsys, *run_args(data, tmp_path / "run"))
    refused(code, err, f"teacher 'clip': checkpoint '{data / 'teachers' / 'clip'}': has no open_clip_config.json")
    assert "FileNotFoundError" not in err


# 8. the README's commands -------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["schema | head", "plugins | head -1"])
def test_piped_into_head_ends_quietly(command: str) -> None:
    result = subprocess.run(["bash", "-o", "pipefail", "-c", f"{KDKIT} {command}"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.strip()


@pytest.mark.slow
def test_no_third_party_bars_or_root_warnings_unless_verbose(tmp_path: Path) -> None:
    from kdkit_plugins.fixtures.hawaii import write_tiny_hawaii

    data = write_tiny_hawaii(tmp_path / "data")
    recipe = ROOT / "recipes" / "tiny" / "hawaii" / "hawaii_7b.yaml"
    args = [str(KDKIT), "validate", "--build", str(recipe), "--set", f"runtime.data_root={data}"]
    from kdkit.third_party import QUIET_ENV

    env = {k: v for k, v in os.environ.items() if k not in QUIET_ENV}  # as a fresh shell has it
    quiet = subprocess.run(args, capture_output=True, text=True, env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
    loud = subprocess.run([args[0], "--verbose", *args[1:]], capture_output=True, text=True, env=env)
    assert "Loading weights" in loud.stderr  # transformers' bar is what --verbose lets through

"""The mini-HAWAII demo: world generator, bad input, and (slow) the quick profile end to end."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kdkit.errors import KdkitError

from experiments.mini_hawaii import __main__ as demo
from experiments.mini_hawaii.world import read_jsonl
from experiments.mini_hawaii.pipeline import PROFILES, prepare_output
from experiments.mini_hawaii.report import COLUMNS, mean_std
from experiments.mini_hawaii.world import ASPECTS, QUESTIONS, render, sample_scene, vocabulary_words, write_world


# world ------------------------------------------------------------------------------------------
def test_world_is_deterministic_and_splits_share_no_image(tmp_path: Path) -> None:
    a = write_world(tmp_path / "a", seed=3, train_images=12, test_images=6)
    b = write_world(tmp_path / "b", seed=3, train_images=12, test_images=6)
    for name in ("captions", "conversations", "questions", "answers", "scenes"):
        assert a.path(name).read_bytes() == b.path(name).read_bytes()
    assert (a.path("images") / "test/000005.png").read_bytes() == (b.path("images") / "test/000005.png").read_bytes()
    c = write_world(tmp_path / "c", seed=4, train_images=12, test_images=6)
    assert a.path("scenes").read_bytes() != c.path("scenes").read_bytes()
    train = {r["image"] for r in json.loads(a.path("conversations").read_text())}
    test = {q["image"] for q in read_jsonl(a.path("questions"))}
    assert len(train) == 12 and len(test) == 6 and not train & test


def test_val_and_expert_splits_are_disjoint_from_train_and_test(tmp_path: Path) -> None:
    import hashlib

    files = write_world(tmp_path / "a", seed=3, train_images=12, test_images=6, val_images=5, expert_images=7)
    scenes = json.loads(files.path("scenes").read_text())
    by_split = {split: [s["image"] for s in scenes if s["split"] == split] for split in ("train", "test", "val", "expert")}
    assert {k: len(v) for k, v in by_split.items()} == {"train": 12, "test": 6, "val": 5, "expert": 7}
    assert all(name.startswith(f"{split}/") for split, names in by_split.items() for name in names)
    pixels = {split: {hashlib.sha256((files.path("images") / n).read_bytes()).hexdigest() for n in names}
              for split, names in by_split.items()}
    assert sum(len(p) for p in pixels.values()) == 30  # no image twice, not even under another name
    val_questions, val_answers = files.qa("val")
    assert {q["image"] for q in read_jsonl(val_questions)} == set(by_split["val"])
    assert {q["image"] for q in read_jsonl(files.path("questions"))} == set(by_split["test"])
    trained = {r["image"] for r in json.loads(files.path("conversations").read_text())}
    assert trained == set(by_split["train"])  # the expert pool gives no conversation
    # each split has its own random stream: more training images change neither val, test nor the expert pool
    bigger = write_world(tmp_path / "b", seed=3, train_images=20, test_images=6, val_images=5, expert_images=7)
    for name in ("val/000004.png", "test/000005.png", "expert/000006.png"):
        assert (bigger.path("images") / name).read_bytes() == (files.path("images") / name).read_bytes()
    assert bigger.qa("val")[1].read_bytes() == val_answers.read_bytes()


def test_val_questions_use_the_test_formats(tmp_path: Path) -> None:
    files = write_world(tmp_path, seed=0, train_images=2, test_images=3, val_images=3)
    (val_q, val_a), (test_q, test_a) = files.qa("val"), files.qa("test")
    assert val_q.name == "val_questions.jsonl" and val_a.name == "val_answers.jsonl"
    assert (test_q, test_a) == (files.path("questions"), files.path("answers"))
    questions, answers = read_jsonl(val_q), read_jsonl(val_a)
    assert [set(q) for q in questions] == [set(q) for q in read_jsonl(test_q)]
    assert [q["question_id"] for q in questions] == [a["question_id"] for a in answers] == list(range(12))
    assert [q["text"] for q in questions] == [q["text"] for q in read_jsonl(test_q)]
    scenes = {s["image"]: s for s in json.loads(files.path("scenes").read_text())}
    assert all(a["answer"] == scenes[q["image"]][q["category"]] for q, a in zip(questions, answers, strict=True))
    with pytest.raises(ValueError, match=r"split 'train' has no question files \(held-out splits: val, test\)"):
        files.qa("train")


def test_world_files_use_the_llava_formats(tmp_path: Path) -> None:
    files = write_world(tmp_path, seed=0, train_images=4, test_images=2)
    captions = json.loads(files.path("captions").read_text())
    assert set(captions[0]) == {"id", "image", "conversations"}
    assert [t["from"] for t in captions[0]["conversations"]] == ["human", "gpt"]
    assert captions[0]["conversations"][0]["value"].count("<image>") == 1
    conversation = json.loads(files.path("conversations").read_text())[0]["conversations"]
    assert [t["from"] for t in conversation] == ["human", "gpt"] * len(QUESTIONS)
    assert conversation[0]["value"].startswith("<image>\n")
    assert sum(t["value"].count("<image>") for t in conversation) == 1
    answers = {t["value"] for t in conversation[1::2]}
    scene = json.loads(files.path("scenes").read_text())[0]
    assert answers == {scene[aspect] for aspect in QUESTIONS}
    questions = read_jsonl(files.path("questions"))
    assert {q["category"] for q in questions} == set(QUESTIONS) and len(questions) == 2 * len(QUESTIONS)


def test_scenes_respect_their_sector_and_do_not_overlap() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        scene = sample_scene(rng, 32)
        assert len(scene.objects) == ASPECTS["count"].index(scene.count) + 1
        for x, y, r in scene.objects:
            dx, dy = x - 15.5, y - 15.5
            along = {"left": -dx, "right": dx, "top": -dy, "bottom": dy}[scene.position]
            across = abs(dy) if scene.position in ("left", "right") else abs(dx)
            assert along > across, (scene, x, y)
            assert r <= x <= 32 - r and r <= y <= 32 - r
        for i, (x, y, r) in enumerate(scene.objects):
            for x2, y2, r2 in scene.objects[i + 1:]:
                assert np.hypot(x - x2, y - y2) > r + r2
    image = render(scene, 32, rng)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8


def test_every_word_of_the_world_is_known_to_the_tiny_tokenizer(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from kdkit_plugins.fixtures.tokenizer import write_tiny_tokenizer

    files = write_world(tmp_path, seed=0, train_images=8, test_images=2)
    tokenizer = AutoTokenizer.from_pretrained(write_tiny_tokenizer(tmp_path / "tok", extra_words=vocabulary_words()))
    texts = [t["value"].replace("<image>", "") for r in json.loads(files.path("conversations").read_text())
             for t in r["conversations"]]
    texts += [r["conversations"][1]["value"] for r in json.loads(files.path("captions").read_text())]
    for text in texts:
        assert tokenizer.unk_token_id not in tokenizer(text).input_ids, text


def test_world_rejects_an_image_side_out_of_range(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"image side 8 is out of range \[24, 128\]"):
        write_world(tmp_path, seed=0, train_images=1, test_images=1, side=8)


# scoring ----------------------------------------------------------------------------------------
def test_held_out_questions_are_scored_by_the_qa_jsonl_benchmark(tmp_path: Path) -> None:
    from experiments.mini_hawaii.evaluate import answer_questions

    class Says:  # answers " Red." to colour questions and "two circles" to the others
        def load_image(self, source):
            return torch.zeros(1, 3, 8, 8)

        def generate(self, images, prompts, max_new_tokens=32):
            return [" Red." if "color" in p.lower() else "two circles" for p in prompts]

    files = write_world(tmp_path, seed=0, train_images=0, test_images=4)
    out = answer_questions(Says(), files, tmp_path / "eval")
    truth = {a["question_id"]: a["answer"] for a in read_jsonl(files.path("answers"))}
    expected = [("red" if q["category"] == "color" else "two") == truth[q["question_id"]]
                for q in read_jsonl(files.path("questions"))]
    assert [a["correct"] for a in out["answers"]] == expected
    assert out["accuracy"]["overall"] == pytest.approx(sum(expected) / len(expected))
    assert (tmp_path / "eval" / "predictions.jsonl").is_file()


def test_mean_std() -> None:
    assert mean_std([0.5]) == (0.5, 0.0)
    assert mean_std([0.2, 0.4])[1] == pytest.approx(0.1414, abs=1e-4)


# bad input --------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0"], "--seeds must be in [1, 10], got 0"),
    (["--seeds", "many"], "--seeds must be an integer, got 'many'"),
    (["--train-images", "3"], "--train-images must be in [16, 20000], got 3"),
    (["--quick", "--full"], "not allowed with argument"),
])
def test_options_out_of_range_are_argparse_errors(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        demo.parser().parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_output_directory_under_a_file_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(KdkitError, match=r"cannot write to the output directory .*a_file/demo .*--output-dir"):
        prepare_output(blocker / "demo", PROFILES["quick"])


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="POSIX permissions (root ignores them)")
def test_read_only_output_directory_is_a_clear_error(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(KdkitError, match=r"cannot write to the output directory .*locked.*--output-dir"):
            prepare_output(locked / "demo", PROFILES["quick"])
    finally:
        locked.chmod(stat.S_IRWXU)


def test_cli_prints_a_user_error_without_traceback(tmp_path: Path, monkeypatch, capsys) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setattr(sys, "argv", ["mini_hawaii", "--quick", "--output-dir", str(blocker / "demo")])
    with pytest.raises(SystemExit) as exc:
        demo.cli()
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write to the output directory") and "Traceback" not in err


def test_output_directory_of_other_settings_or_foreign_content_is_refused(tmp_path: Path) -> None:
    prepare_output(tmp_path / "demo", PROFILES["quick"])
    prepare_output(tmp_path / "demo", PROFILES["quick"])  # same settings: resumable
    with pytest.raises(KdkitError, match=r"other settings \(.*seeds.*\)"):
        prepare_output(tmp_path / "demo", PROFILES["full"])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(KdkitError, match="not empty and holds no demo run"):
        prepare_output(tmp_path / "other", PROFILES["quick"])


# end to end -------------------------------------------------------------------------------------
NUMBER = re.compile(r"(\d+\.\d) ± (\d+\.\d)")


@pytest.mark.slow
def test_quick_profile_end_to_end_and_every_table_number_is_computed(tmp_path: Path) -> None:
    output = tmp_path / "demo"
    report = demo.main(["--quick", "--output-dir", str(output)])
    text = report.read_text()
    for heading in ("## The experts", "## Test accuracy", "## Paired differences on the test split",
                    "## Validation accuracy", "## Loss curves", "## Expert usage per block", "## Which teacher expert",
                    "## Time and memory"):
        assert heading in text
    for png in ("losses_baseline.png", "losses_hawaii.png", "routing_teacher.png"):
        assert (output / png).stat().st_size > 1000
    results = json.loads((output / "results.json").read_text())
    test_part, val_part = text.split("## Test accuracy")[1].split("## Validation accuracy")
    from experiments.mini_hawaii.variants import VARIANTS

    for split, part in (("test", test_part), ("val", val_part)):
        rows = {line.split("|")[1].strip(): line for line in part.splitlines() if line.startswith("|") and " ± " in line}
        for variant, label in VARIANTS.items():
            run = output / "runs" / f"{variant}-seed0"
            evaluation = json.loads((run / "eval.json").read_text())["splits"][split]
            cells = NUMBER.findall(rows[label])
            assert len(cells) == len(COLUMNS)
            for (mean, std), column in zip(cells, COLUMNS, strict=True):
                assert float(mean) == pytest.approx(100 * evaluation["accuracy"][column], abs=0.051)
                assert float(std) == 0.0
                assert results["table"][split][variant][column] == [evaluation["accuracy"][column]]
            hits = [a["correct"] for a in evaluation["answers"]]
            assert evaluation["accuracy"]["overall"] == pytest.approx(sum(hits) / len(hits))
            assert len(hits) == 4 * PROFILES["quick"].__dict__[f"{split}_images"]
    # one seed: every paired difference is reported without an interval, and said so
    assert "## Paired differences on the test split" in text
    assert text.count("no interval (one seed)") == 6
    base, hawaii = results["table"]["test"]["baseline"]["overall"][0], results["table"]["test"]["hawaii"]["overall"][0]
    row = next(line for line in text.splitlines() if line.startswith("| HAWAII − baseline |"))
    assert row.split("|")[-2].strip() == f"{100 * (hawaii - base):+.1f}"
    for expert in results["experts"]:
        assert f"| {expert['name']} | {expert['kind']} |" in text
    table_lines = [line for line in text.splitlines() if " ± " in line]
    # a rerun reuses every phase and reports the same table
    again = demo.main(["--quick", "--output-dir", str(output)])
    assert [line for line in again.read_text().splitlines() if " ± " in line] == table_lines
    # an interrupted job (trained, not evaluated) resumes from its checkpoint and gives the same answers
    hawaii = output / "runs" / "hawaii-seed0"
    for name in ("job.json", "eval.json"):
        (hawaii / name).unlink()
    shutil.rmtree(hawaii / "export")
    resumed = demo.main(["--quick", "--output-dir", str(output)])
    assert json.loads((hawaii / "job.json").read_text())["resumed"] is True
    assert [line for line in resumed.read_text().splitlines() if " ± " in line] == table_lines

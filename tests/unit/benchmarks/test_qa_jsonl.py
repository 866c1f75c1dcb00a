"""qa_jsonl: matching rules, per-category accuracy worked by hand, the miniature world's own evaluation
reproduced, prompts, and bad files."""

from __future__ import annotations

import json

import pytest

from kdkit import BuildContext
from kdkit.evaluation.files import BenchmarkFileError
from kdkit.testing import check_plugin
from kdkit_plugins.benchmarks import qa_jsonl
from kdkit_plugins.fixtures.benchmarks_yesno import QA_SUFFIX, write_qa_jsonl


def build(tmp_path, records=None, **overrides):
    files = write_qa_jsonl(tmp_path / "qa", records) if records is not None else write_qa_jsonl(tmp_path / "qa")
    config = qa_jsonl.QaJsonlConfig(questions="qa/questions.jsonl", answers="qa/answers.jsonl", images="qa/images",
                                    **overrides)
    return qa_jsonl.build(config, BuildContext(data_root=tmp_path)), files


@pytest.mark.parametrize(("text", "normalized", "first"), [
    (" Red.", "red", "red"),
    ("The  Red car!", "the red car", "the"),
    ("two-three", "twothree", "twothree"),     # punctuation deleted, not turned into spaces
    ("", "", ""),
    ("...", "", ""),
    ("Blue\nsquare", "blue square", "blue"),
])
def test_normalize_and_first_word(text, normalized, first) -> None:
    assert qa_jsonl.normalize(text) == normalized
    assert qa_jsonl.first_word(text) == first


# Fixture answers: 0 color red, 1 count two, 2 color blue, 3 count one|1, 4 color green, 5 count three.
PREDICTIONS = {"0": "Red.", "1": "two shapes", "2": "light blue", "3": "1", "4": "", "5": "Three!"}


def test_first_word_by_hand(tmp_path) -> None:
    bench, _ = build(tmp_path, match="first_word")
    scores = bench.score(PREDICTIONS)
    # right: 0 ("red"), 1 ("two"), 3 ("1" is accepted), 5 ("three"); wrong: 2 ("light"), 4 (empty)
    assert scores.units == {"0": 100.0, "1": 100.0, "2": 0.0, "3": 100.0, "4": 0.0, "5": 100.0}
    assert scores.metrics == pytest.approx({"accuracy": 400 / 6,            # 4 of 6
                                            "accuracy/color": 100 / 3,      # 1 of 3 (question 0)
                                            "accuracy/count": 100.0})       # 3 of 3
    assert scores.details == {"questions": 6, "right": 4, "categories": {
        "color": {"questions": 3, "right": 1, "accuracy": pytest.approx(100 / 3)},
        "count": {"questions": 3, "right": 3, "accuracy": 100.0}}}
    assert bench.metrics == ("accuracy", "accuracy/color", "accuracy/count")
    assert bench.primary == "accuracy"
    assert bench.published == {}


def test_exact_by_hand(tmp_path) -> None:
    bench, _ = build(tmp_path, match="exact")
    scores = bench.score(PREDICTIONS)
    # right: 0 ("red"), 3 ("1"), 5 ("three"); wrong: 1 ("two shapes" is not "two"), 2, 4
    assert scores.metrics == pytest.approx({"accuracy": 50.0, "accuracy/color": 100 / 3, "accuracy/count": 200 / 3})


def test_vqa_normalization(tmp_path) -> None:
    records = [(0, "a.png", "How many?", "count", "2"), (1, "a.png", "What is it?", "object", "dog"),
               (2, "a.png", "Which one?", "object", "tv")]
    bench, _ = build(tmp_path, records=records, match="vqa")
    # "Two." -> "2" right; "the dog" -> "dog" right (article dropped); "a television" -> "television" wrong
    scores = bench.score({"0": "Two.", "1": "the dog", "2": "a television"})
    assert scores.metrics == pytest.approx({"accuracy": 200 / 3, "accuracy/count": 100.0, "accuracy/object": 50.0})
    # the same answers under "exact": "two" != "2", "the dog" != "dog"
    exact, _ = build(tmp_path / "exact", records=records, match="exact")
    assert exact.score({"0": "Two.", "1": "the dog", "2": "a television"}).metrics["accuracy"] == 0.0


def test_questions_and_prompts(tmp_path) -> None:
    bench, files = build(tmp_path, suffix=" Be brief.", max_new_tokens=3)
    questions = bench.questions()
    assert [q.id for q in questions] == ["0", "1", "2", "3", "4", "5"]
    assert questions[0].prompt == "What color are the shapes?" + QA_SUFFIX + " Be brief."
    assert questions[0].prompt == ("What color are the shapes?\nAnswer the question using a single word or phrase."
                                   " Be brief.")
    assert questions[0].image == files.images / "test" / "000000.png"
    assert questions[0].max_new_tokens == 3


def test_image_placeholder_and_missing_image(tmp_path) -> None:
    records = [(7, "a.png", "<image>\nWhat color?", "color", "red")]
    files = write_qa_jsonl(tmp_path / "qa", records, suffix="")
    lines = [json.loads(line) for line in files.questions.read_text().splitlines()]
    del lines[0]["image"]
    files.questions.write_text("".join(json.dumps(line) + "\n" for line in lines))
    bench = qa_jsonl.build(qa_jsonl.QaJsonlConfig(questions=str(files.questions), answers=str(files.answers),
                                                  images=str(files.images)), BuildContext())
    (question,) = bench.questions()
    assert question.prompt == "What color?"
    assert question.image is None


def test_questions_without_category_count_only_overall(tmp_path) -> None:
    records = [(0, "a.png", "Q?", None, "yes"), (1, "a.png", "Q?", "kind", "no")]
    bench, _ = build(tmp_path, records=records)
    assert bench.metrics == ("accuracy", "accuracy/kind")
    # question 0 right, question 1 wrong: overall 1/2, kind 0/1
    assert bench.score({"0": "Yes", "1": "yes"}).metrics == {"accuracy": 50.0, "accuracy/kind": 0.0}


def test_subset_and_unknown_id(tmp_path) -> None:
    bench, _ = build(tmp_path, match="first_word")
    # only the first two questions (color right, count right): categories present in the subset only
    assert bench.score({"0": "red", "1": "three"}).metrics == {"accuracy": 50.0, "accuracy/color": 100.0,
                                                                "accuracy/count": 0.0}
    assert bench.score({"0": "red"}).metrics == {"accuracy": 100.0, "accuracy/color": 100.0}
    with pytest.raises(BenchmarkFileError, match=r"qa_jsonl: prediction for question id '9'"):
        bench.score({"0": "red", "9": "blue"})


def test_mini_world_evaluation_reproduced(tmp_path) -> None:
    """The miniature world's own rule (experiments/mini_hawaii/evaluate.py) and this benchmark with
    match="first_word" give the same right/wrong per question and the same per-type accuracy."""
    import string
    from collections import defaultdict

    from experiments.mini_hawaii.world import WorldFiles, read_jsonl, write_world

    def world_rule(text: str) -> str:  # the world's rule: first word, lower-cased, punctuation stripped
        words = text.lower().translate(str.maketrans("", "", string.punctuation)).split()
        return words[0] if words else ""

    files: WorldFiles = write_world(tmp_path, seed=3, train_images=0, test_images=5)
    config = qa_jsonl.QaJsonlConfig(questions=files.questions, answers=files.answers, images=files.images,
                                    match="first_word", max_new_tokens=3)
    bench = qa_jsonl.build(config, BuildContext(data_root=tmp_path))
    questions = read_jsonl(files.path("questions"))
    truth = {a["question_id"]: a["answer"] for a in read_jsonl(files.path("answers"))}
    # variants of the true answer, right or wrong under the first-word rule, cycling over the questions
    variants = [lambda a: f"{a.capitalize()}.", lambda a: f"the {a}", lambda a: f" {a} shapes!", lambda a: "",
                lambda a: a.upper(), lambda a: f"{a},", lambda a: "purple"]
    predictions, results = {}, []
    for k, q in enumerate(questions):
        raw = variants[k % len(variants)](truth[q["question_id"]])
        predictions[str(q["question_id"])] = raw
        predicted = world_rule(raw)
        results.append({"category": q["category"], "correct": predicted == truth[q["question_id"]]})
    assert len(results) == 20
    assert any(r["correct"] for r in results) and not all(r["correct"] for r in results)
    hits = defaultdict(list)
    for r in results:
        hits[r["category"]].append(r["correct"])
    table = {c: sum(v) / len(v) for c, v in hits.items()}
    table["overall"] = sum(r["correct"] for r in results) / len(results)
    scores = bench.score(predictions)
    assert scores.metrics["accuracy"] == pytest.approx(100 * table["overall"])
    for category in ("color", "shape", "count", "position"):
        assert scores.metrics[f"accuracy/{category}"] == pytest.approx(100 * table[category])
    assert [scores.units[str(q["question_id"])] == 100.0 for q in questions] == [r["correct"] for r in results]
    assert [q.prompt for q in bench.questions()] == [q["text"] for q in questions]
    assert [q.image for q in bench.questions()] == [files.path("images") / q["image"] for q in questions]


def rewrite(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.mark.parametrize(("which", "records", "message"), [
    ("answers", [{"question_id": 0, "answer": "red"}],
     r"qa_jsonl: answer file .*answers\.jsonl has no answer for question_id 1 \(record 2 of .*questions\.jsonl\)"),
    ("answers", [{"question_id": 0, "answers": ["red"]}],
     r"answers\.jsonl record 1 has no field 'answer'"),
    ("answers", [{"question_id": 0, "answer": 3}],
     r"answers\.jsonl record 1 \(question_id 0\): field 'answer' is 3, expected a string or a non-empty list"),
    ("answers", [{"question_id": 0, "answer": []}],
     r"answers\.jsonl record 1 \(question_id 0\): field 'answer' is \[\]"),
    ("answers", [{"question_id": 0, "answer": "a"}, {"question_id": 0, "answer": "b"}],
     r"answers\.jsonl record 2 \(question_id 0\): field 'question_id' repeats"),
    ("questions", [{"question_id": 0, "image": "a.png", "prompt": "Q?"}],
     r"questions\.jsonl record 1 has no field 'text'"),
    ("questions", [{"question_id": 0, "image": "a.png", "text": "Q?", "category": 4}],
     r"questions\.jsonl record 1 \(question_id 0\): field 'category' is 4, expected a non-empty string"),
    ("questions", [{"question_id": 0, "image": "a.png", "text": "Q?"}, {"question_id": 0, "image": "a.png",
                                                                        "text": "R?"}],
     r"questions\.jsonl record 2 \(question_id 0\): field 'question_id' repeats"),
    ("questions", [], r"qa_jsonl: question file .*questions\.jsonl holds no question"),
])
def test_bad_files(tmp_path, which, records, message) -> None:
    files = write_qa_jsonl(tmp_path / "qa")
    rewrite(getattr(files, which), records)
    with pytest.raises(BenchmarkFileError, match=message):
        qa_jsonl.build(qa_jsonl.QaJsonlConfig(questions=str(files.questions), answers=str(files.answers),
                                              images=str(files.images)), BuildContext())


def test_missing_file(tmp_path) -> None:
    with pytest.raises(BenchmarkFileError, match=r"qa_jsonl: answer file .*nope\.jsonl does not exist"):
        qa_jsonl.build(qa_jsonl.QaJsonlConfig(questions="q.jsonl", answers="nope.jsonl", images="."),
                       BuildContext(data_root=tmp_path))


def test_contract(tmp_path) -> None:
    check_plugin("benchmark", "qa_jsonl", qa_jsonl.kdkit_benchmarks()["qa_jsonl"], tmp_path)

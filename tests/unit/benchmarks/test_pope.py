"""POPE: LLaVA-1.5's yes/no parsing, per-split F1 arithmetic worked by hand, prompts, and bad files."""

from __future__ import annotations

import json

import pydantic
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from kdkit import BuildContext
from kdkit.evaluation.files import BenchmarkFileError
from kdkit.testing import check_plugin
from kdkit_plugins.benchmarks import pope
from kdkit_plugins.fixtures.benchmarks_yesno import POPE_RECORDS, write_pope

SUFFIX = "\nAnswer the question using a single word or phrase."


def build(tmp_path, **overrides):
    root = write_pope(tmp_path / "pope")
    config = pope.PopeConfig(root="pope", **overrides)
    return pope.build(config, BuildContext(data_root=tmp_path)), root


@pytest.mark.parametrize(("text", "expected"), [
    ("No, there is not.", "no"),           # comma removed -> "No" is a word
    ("Yes.", "yes"),
    ("There is a dog.", "yes"),            # no negative word -> yes
    ("not sure", "no"),                    # "not" counts as no
    ("", "yes"),                           # anything without a no-word is yes, empty included
    ("no", "no"),
    ("No.", "no"),
    ("NO", "yes"),                         # case-sensitive: only "No", "no", "not"
    ("Nope", "yes"),
    ("Yes. No.", "yes"),                   # only the first sentence is read
    ("Yes, no doubt.", "no"),              # ... and any no-word in it wins
    ("There is no dog in the image", "no"),
    ("No!", "yes"),                        # "No!" is not the word "No"
    ("\nNo", "no"),                        # surrounding whitespace stripped as in LLaVA's answer files
    ("I cannot tell", "yes"),
])
def test_parse_answer(text, expected) -> None:
    assert pope.parse_answer(text) == expected


# Answers to the fixture, by split, with the parsed answer and the label of each question:
ANSWERS = {
    # labels yes, no, yes, no; parsed yes, yes, no, no -> TP=1 FP=1 FN=1 TN=1
    "adversarial": ["Yes", "Yes.", "No, there is not.", "No"],
    # labels no, yes, yes; parsed yes, yes, yes -> FP=1 TP=2
    "popular": ["There is a person.", "yes", "Yes"],
    # labels no, yes, no; parsed no, yes, no -> TN=2 TP=1
    "random": ["No.", "Yes, there is a dining table.", "no"],
}


def predictions() -> dict[str, str]:
    return {f"{split}/{k}": text for split, texts in ANSWERS.items() for k, text in enumerate(texts, 1)}


def test_f1_by_hand(tmp_path) -> None:
    bench, _ = build(tmp_path)
    scores = bench.score(predictions())
    m = scores.metrics
    # adversarial: P = 1/2, R = 1/2, F1 = 1/2; accuracy 2/4; yes ratio 2/4
    assert m["adversarial_precision"] == pytest.approx(50.0)
    assert m["adversarial_recall"] == pytest.approx(50.0)
    assert m["adversarial_f1"] == pytest.approx(50.0)
    assert m["adversarial_accuracy"] == pytest.approx(50.0)
    assert m["adversarial_yes_ratio"] == pytest.approx(50.0)
    # popular: P = 2/3, R = 2/2, F1 = 2 (2/3)(1) / (2/3 + 1) = 4/5; accuracy 2/3; yes ratio 3/3
    assert m["popular_precision"] == pytest.approx(200 / 3)
    assert m["popular_recall"] == pytest.approx(100.0)
    assert m["popular_f1"] == pytest.approx(80.0)
    assert m["popular_accuracy"] == pytest.approx(200 / 3)
    assert m["popular_yes_ratio"] == pytest.approx(100.0)
    # random: P = 1/1, R = 1/1, F1 = 1; accuracy 3/3; yes ratio 1/3
    assert m["random_f1"] == pytest.approx(100.0)
    assert m["random_accuracy"] == pytest.approx(100.0)
    assert m["random_yes_ratio"] == pytest.approx(100 / 3)
    # headline: plain means over the three splits
    assert m["f1"] == pytest.approx((50 + 80 + 100) / 3)                 # 76.67
    assert m["accuracy"] == pytest.approx((50 + 200 / 3 + 100) / 3)      # 72.22
    assert m["yes_ratio"] == pytest.approx((50 + 100 + 100 / 3) / 3)     # 61.11
    assert set(m) == set(bench.metrics)
    assert scores.units == {}
    assert scores.details["splits"]["adversarial"] == {
        "questions": 4, "TP": 1, "FP": 1, "TN": 1, "FN": 1, **{k: m[f"adversarial_{k}"] for k in pope.SPLIT_METRICS}}
    assert bench.primary == "f1"
    assert bench.published == {"LLaVA-1.5 7B (paper)": 85.9, "HAWAII 7B (paper)": 87.3}


def test_metrics_agree_with_sklearn(tmp_path) -> None:
    bench, _ = build(tmp_path)
    m = bench.score(predictions()).metrics
    for split, texts in ANSWERS.items():
        labels = [label for _, _, label in POPE_RECORDS[split]]
        parsed = [pope.parse_answer(t) for t in texts]
        assert m[f"{split}_f1"] == pytest.approx(100 * f1_score(labels, parsed, pos_label="yes"))
        assert m[f"{split}_precision"] == pytest.approx(100 * precision_score(labels, parsed, pos_label="yes"))
        assert m[f"{split}_recall"] == pytest.approx(100 * recall_score(labels, parsed, pos_label="yes"))
        assert m[f"{split}_accuracy"] == pytest.approx(100 * accuracy_score(labels, parsed))


def test_questions_and_prompts(tmp_path) -> None:
    bench, root = build(tmp_path)
    questions = bench.questions()
    assert [q.id for q in questions] == [f"{s}/{k}" for s in ("adversarial", "popular", "random")
                                         for k in range(1, len(POPE_RECORDS[s]) + 1)]
    first = questions[0]
    assert first.prompt == "Is there a dog in the image?\nAnswer the question using a single word or phrase."
    assert first.image == root / "val2014" / "COCO_val2014_000000000042.jpg"
    assert first.max_new_tokens == 8
    assert questions[4].prompt == "Is there a person in the image?" + SUFFIX


def test_subset_leaves_out_unanswered_splits(tmp_path) -> None:
    bench, _ = build(tmp_path)
    # the first two adversarial questions (labels yes, no) both answered no: TP=0 FP=0 TN=1 FN=1;
    # precision and recall have zero denominators -> 0, F1 -> 0, accuracy 1/2, yes ratio 0
    scores = bench.score({"adversarial/1": "No", "adversarial/2": "no"})
    assert scores.metrics == {"f1": 0.0, "accuracy": 50.0, "precision": 0.0, "recall": 0.0, "yes_ratio": 0.0,
                              "adversarial_f1": 0.0, "adversarial_accuracy": 50.0, "adversarial_precision": 0.0,
                              "adversarial_recall": 0.0, "adversarial_yes_ratio": 0.0}
    assert scores.details["evaluated_splits"] == ["adversarial"]


def test_configured_splits_only(tmp_path) -> None:
    root = write_pope(tmp_path / "pope")
    (root / "coco" / "coco_pope_random.json").unlink()
    bench = pope.build(pope.PopeConfig(root=str(root), splits=["popular"]), BuildContext())
    assert [q.id for q in bench.questions()] == ["popular/1", "popular/2", "popular/3"]
    assert bench.metrics == ("f1", "accuracy", "precision", "recall", "yes_ratio", "popular_f1", "popular_accuracy",
                             "popular_precision", "popular_recall", "popular_yes_ratio")
    with pytest.raises(BenchmarkFileError, match=r"pope: random question file .*coco_pope_random\.json does not exist"):
        pope.build(pope.PopeConfig(root=str(root)), BuildContext())


def test_split_listed_twice_is_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="split listed twice: popular"):
        pope.PopeConfig(splits=["popular", "popular"])


def test_unknown_prediction_id(tmp_path) -> None:
    bench, _ = build(tmp_path)
    with pytest.raises(BenchmarkFileError, match=r"pope: prediction for question id '7', which is not one of the "
                                                 "benchmark's questions"):
        bench.score({"adversarial/1": "yes", "7": "no"})


def rewrite(root, split, records) -> None:
    (root / "coco" / f"coco_pope_{split}.json").write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.mark.parametrize(("records", "message"), [
    ([{"question_id": 1, "image": "a.jpg", "text": "Is there a dog?"}],
     r"coco_pope_popular\.json record 1 has no field 'label'"),
    ([{"question_id": 1, "image": "a.jpg", "text": "Is there a dog?", "label": "maybe"}],
     r"coco_pope_popular\.json record 1 \(question_id 1\): field 'label' is 'maybe', expected 'yes' or 'no'"),
    ([{"question_id": 1, "image": "a.jpg", "text": "Is there a dog?", "label": "yes"},
      {"question_id": 1, "image": "a.jpg", "text": "Is there a cat?", "label": "no"}],
     r"coco_pope_popular\.json record 2 \(question_id 1\): field 'question_id' repeats"),
    ([{"question_id": 1, "image": None, "text": "Is there a dog?", "label": "yes"}],
     r"record 1 \(question_id 1\): field 'image' is None"),
    # a GQA-style record: the file belongs to another benchmark
    ([{"imageId": "n1", "question": "Is it red?", "answer": "yes"}],
     r"coco_pope_popular\.json record 1 has no field 'question_id', 'image', 'text', 'label'"),
    ([], r"pope: popular question file .*coco_pope_popular\.json holds no question"),
])
def test_bad_records(tmp_path, records, message) -> None:
    root = write_pope(tmp_path / "pope")
    rewrite(root, "popular", records)
    with pytest.raises(BenchmarkFileError, match=message):
        pope.build(pope.PopeConfig(root=str(root)), BuildContext())


def test_json_array_file_is_refused(tmp_path) -> None:
    root = write_pope(tmp_path / "pope")
    (root / "coco" / "coco_pope_random.json").write_text(json.dumps([{"question_id": 1}]))
    with pytest.raises(BenchmarkFileError, match=r"coco_pope_random\.json line 1 is a list, expected a JSON object"):
        pope.build(pope.PopeConfig(root=str(root)), BuildContext())


def test_missing_annotation_folder(tmp_path) -> None:
    with pytest.raises(BenchmarkFileError, match=r"pope: annotation folder .*nowhere/coco does not exist"):
        pope.build(pope.PopeConfig(root="nowhere"), BuildContext(data_root=tmp_path))


def test_contract(tmp_path) -> None:
    check_plugin("benchmark", "pope", pope.kdkit_benchmarks()["pope"], tmp_path)

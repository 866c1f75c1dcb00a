"""MME: answer parsing as calculation.py, acc + acc+ worked by hand, both folder layouts, prompts, bad files."""

from __future__ import annotations

import shutil

import pytest

from kdkit import BuildContext
from kdkit.evaluation.files import BenchmarkFileError
from kdkit.testing import check_plugin
from kdkit_plugins.benchmarks import mme
from kdkit_plugins.fixtures.benchmarks_yesno import MME_FIXTURE_SUBTASKS, MME_RELEASE, write_mme

SUFFIX = "\nAnswer the question using a single word or phrase."


def build(tmp_path, **overrides):
    root = write_mme(tmp_path / "mme")
    config = mme.MmeConfig(root="mme", subtasks=list(MME_FIXTURE_SUBTASKS), **overrides)
    return mme.build(config, BuildContext(data_root=tmp_path)), root / MME_RELEASE


@pytest.mark.parametrize(("text", "expected"), [
    ("Yes", "yes"),
    ("no", "no"),
    ("YES", "yes"),                    # lower-cased first
    ("yes.", "yes"),                   # "yes" within the first four characters
    ("No, it is not.", "no"),
    ("not sure", "no"),                # "no" within "not "
    ("Nope", "no"),
    ("I don't know", "other"),         # neither in "i do"
    ("The answer is yes", "other"),    # "yes" too late
    ("", "other"),
    ("  no", "no"),                    # stripped first, as LLaVA's answer files hold it
    ("y", "other"),
])
def test_parse_answer(text, expected) -> None:
    assert mme.parse_answer(text) == expected


def test_questions_both_layouts(tmp_path) -> None:
    bench, release = build(tmp_path)
    questions = bench.questions()
    assert [q.id for q in questions] == [
        "existence/000000006040.jpg/1", "existence/000000006040.jpg/2",
        "existence/000000018150.jpg/1", "existence/000000018150.jpg/2",
        "artwork/10002.jpg/1", "artwork/10002.jpg/2",
        "code_reasoning/0001.png/1", "code_reasoning/0001.png/2",
    ]
    by_id = {q.id: q for q in questions}
    # image and .txt side by side
    assert by_id["existence/000000006040.jpg/1"].image == release / "existence" / "000000006040.jpg"
    # images/ + questions_answers_YN/
    assert by_id["artwork/10002.jpg/2"].image == release / "artwork" / "images" / "10002.jpg"
    assert by_id["code_reasoning/0001.png/1"].image == release / "code_reasoning" / "0001.png"
    # LLaVA-1.5's prompt: MME's "Please answer yes or no." removed, the short-answer instruction added
    assert by_id["existence/000000006040.jpg/1"].prompt == (
        "Is there a train in this image?\nAnswer the question using a single word or phrase.")
    assert by_id["artwork/10002.jpg/2"].prompt == "Does this artwork exist in the form of glassware?" + SUFFIX
    assert all(q.max_new_tokens == 8 for q in questions)
    assert bench.metrics == ("perception", "cognition", "total", "existence", "artwork", "code_reasoning")


def test_keep_yes_no_prompt(tmp_path) -> None:
    bench, _ = build(tmp_path, keep_yes_no=True)
    assert bench.questions()[0].prompt == (
        "Is there a train in this image? Please answer yes or no.\nAnswer the question using a single word or phrase.")


def test_scores_by_hand(tmp_path) -> None:
    bench, _ = build(tmp_path)
    predictions = {
        # existence image 1 (yes, no): both right
        "existence/000000006040.jpg/1": "Yes", "existence/000000006040.jpg/2": "No",
        # existence image 2 (yes, no): first right, second wrong
        "existence/000000018150.jpg/1": "yes", "existence/000000018150.jpg/2": "Yes",
        # artwork (yes, no): "yes, it is" -> yes (right); "I am not sure" -> other (wrong)
        "artwork/10002.jpg/1": "yes, it is", "artwork/10002.jpg/2": "I am not sure",
        # code_reasoning (yes, no): both right
        "code_reasoning/0001.png/1": "Yes", "code_reasoning/0001.png/2": "no",
    }
    scores = bench.score(predictions)
    # existence: acc 3/4 = 75, acc+ 1/2 images = 50 -> 125
    # artwork: acc 1/2 = 50, acc+ 0/1 (one of two right gives no acc+) -> 50
    # code_reasoning: acc 2/2 = 100, acc+ 1/1 = 100 -> 200
    assert scores.metrics == pytest.approx({"perception": 125 + 50, "cognition": 200, "total": 375,
                                            "existence": 125, "artwork": 50, "code_reasoning": 200})
    assert scores.details["subtasks"]["existence"] == {"questions": 4, "right": 3, "images": 2, "images_right": 1,
                                                       "acc": 75.0, "acc_plus": 50.0, "score": 125.0}
    assert scores.details["subtasks"]["artwork"]["acc_plus"] == 0.0
    assert scores.units == {}
    assert bench.primary == "perception"
    assert bench.published == {"LLaVA-1.5 7B (paper)": 1510.7, "HAWAII 7B (paper)": 1540.2}


def test_subset_drops_incomplete_images(tmp_path) -> None:
    bench, _ = build(tmp_path)
    scores = bench.score({
        "existence/000000006040.jpg/1": "Yes",                                        # right; its pair unanswered
        "existence/000000018150.jpg/1": "Yes", "existence/000000018150.jpg/2": "Yes",  # right, wrong
    })
    # existence: acc 2/3; acc+ over the one complete image: 0/1 -> 66.67; other subtasks left out
    assert scores.metrics == pytest.approx({"perception": 200 / 3, "cognition": 0.0, "total": 200 / 3,
                                            "existence": 200 / 3})
    assert scores.details["subtasks"]["existence"]["images"] == 1
    assert scores.details["evaluated_subtasks"] == ["existence"]


def test_unknown_prediction_id(tmp_path) -> None:
    bench, _ = build(tmp_path)
    message = r"mme: prediction for question id 'existence/x\.jpg', which is not one of the benchmark's questions"
    with pytest.raises(BenchmarkFileError, match=message):
        bench.score({"existence/x.jpg": "yes"})


def test_default_subtasks_need_every_folder(tmp_path) -> None:
    write_mme(tmp_path / "mme")
    assert mme.MmeConfig().subtasks == list(mme.PERCEPTION + mme.COGNITION)
    with pytest.raises(BenchmarkFileError, match=rf"mme: subtask 'count' folder .*{MME_RELEASE}/count does not exist"):
        mme.build(mme.MmeConfig(), BuildContext(data_root=tmp_path))


def test_missing_release_folder(tmp_path) -> None:
    with pytest.raises(BenchmarkFileError, match=rf"mme: release folder .*mme/{MME_RELEASE} does not exist"):
        mme.build(mme.MmeConfig(), BuildContext(data_root=tmp_path))


def test_images_without_question_folder(tmp_path) -> None:
    root = write_mme(tmp_path / "mme")
    shutil.rmtree(root / MME_RELEASE / "artwork" / "questions_answers_YN")
    with pytest.raises(BenchmarkFileError, match=r"mme: subtask 'artwork' question folder .*questions_answers_YN "
                                                 "does not exist"):
        mme.build(mme.MmeConfig(root=str(root), subtasks=["artwork"]), BuildContext())


def test_question_file_without_image(tmp_path) -> None:
    root = write_mme(tmp_path / "mme")
    (root / MME_RELEASE / "existence" / "000000018150.jpg").unlink()
    with pytest.raises(BenchmarkFileError, match=r"mme: question file .*existence/000000018150\.txt has no image"):
        mme.build(mme.MmeConfig(root=str(root), subtasks=["existence"]), BuildContext())


def test_subtask_without_question_files(tmp_path) -> None:
    root = write_mme(tmp_path / "mme")
    for txt in (root / MME_RELEASE / "code_reasoning").glob("*.txt"):
        txt.unlink()
    with pytest.raises(BenchmarkFileError, match=r"mme: subtask 'code_reasoning' folder .* holds no question file"):
        mme.build(mme.MmeConfig(root=str(root), subtasks=["code_reasoning"]), BuildContext())


@pytest.mark.parametrize(("content", "message"), [
    ("Is there a train in this image? Please answer yes or no. Yes\n",
     r"existence/000000006040\.txt line 1 has 1 tab-separated field\(s\), expected 'question<TAB>answer'"),
    ("Is there a train?\tYes\nIs there a bed?\tMaybe\n",
     r"existence/000000006040\.txt line 2: answer is 'Maybe', expected Yes or No"),
    ("\n\n", r"mme: question file .*existence/000000006040\.txt holds no question"),
])
def test_bad_question_file(tmp_path, content, message) -> None:
    root = write_mme(tmp_path / "mme")
    (root / MME_RELEASE / "existence" / "000000006040.txt").write_text(content)
    with pytest.raises(BenchmarkFileError, match=message):
        mme.build(mme.MmeConfig(root=str(root), subtasks=["existence"]), BuildContext())


def test_contract(tmp_path) -> None:
    check_plugin("benchmark", "mme", mme.kdkit_benchmarks()["mme"], tmp_path)

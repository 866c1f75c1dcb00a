"""kdkit probe: teachers ranked by linear-probe gain over the student's features, costs, budgeted recommendation."""

from __future__ import annotations

import json
import math

import pytest
import torch

from kdkit import cli
from kdkit.errors import DataError
from kdkit.probe import STUDENT, ProbeRow, labelled_images, pool_tokens, probe_sources, recommend, table


def sources_and_data(n: int = 120, classes: int = 4):
    """Images whose first pixel rows carry the label; three feature sources reading more or less of it."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % classes
    images = torch.rand(n, 3, 8, 8, generator=gen)
    images[:, 0, 0, :classes] = torch.nn.functional.one_hot(labels, classes).float()

    def knows(x: torch.Tensor) -> torch.Tensor:  # reads the label pixels: (B, 1, classes)
        return x[:, :1, 0, :classes].reshape(len(x), 1, classes) * 5

    def half(x: torch.Tensor) -> torch.Tensor:  # sees only whether the label is 0 or 1 vs 2 or 3
        return (x[:, 0, 0, :2].sum(-1, keepdim=True) * 5 + 0.0 * x[:, 1, 1, :1]).reshape(len(x), 1, 1)

    def noise(x: torch.Tensor) -> torch.Tensor:  # pixels that do not depend on the label
        return x[:, 1, 2:4, 2:6].reshape(len(x), 2, 4)

    return {STUDENT: noise, "half": half, "expert": knows}, images, labels


def test_the_teacher_that_holds_the_labels_ranks_first() -> None:
    sources, images, labels = sources_and_data()
    rows = probe_sources(sources, STUDENT, images, labels, timing_batch=4)
    assert [r.name for r in rows] == [STUDENT, "expert", "half"]
    student, expert, half = rows
    assert expert.accuracy == 100.0 and student.gain == 0.0
    assert expert.gain == pytest.approx(expert.accuracy - student.accuracy)
    assert 40.0 <= half.accuracy <= 60.0  # two of four classes told apart
    assert student.accuracy < 50.0
    assert [r.feature_dim for r in rows] == [8, 8, 2]
    assert all(r.ms > 0 and r.gflops >= 0 for r in rows)


def test_pool_is_mean_and_max_over_tokens() -> None:
    tokens = torch.tensor([[[1.0, -2.0], [3.0, 0.0]]])
    assert torch.equal(pool_tokens(tokens), torch.tensor([[2.0, -1.0, 3.0, 0.0]]))


def row(name: str, gain: float, gflops: float) -> ProbeRow:
    return ProbeRow(name, 50.0 + gain, gain, gflops, 1.0, 4)


def test_recommendation_follows_gain_within_the_budget() -> None:
    rows = [row(STUDENT, 0.0, 0.1), row("big", 9.0, 3.0), row("small", 5.0, 1.0), row("tiny", 1.0, 0.5),
            row("useless", -2.0, 0.1)]
    assert recommend(rows, None) == ["big", "small", "tiny"]
    assert recommend(rows, 1.6) == ["small", "tiny"]  # big does not fit; the next ones do
    assert recommend(rows, 0.2) == []
    lines = table(rows, 1.6)
    assert lines[2] == "| - | student (own features) | 50.00 | +0.00 | 0.1000 | 1.000 |"
    assert lines[3] == "| 1 | big | 59.00 | +9.00 | 3.0000 | 1.000 |"
    assert lines[-1] == "Recommended teachers for a budget of 1.6 GFLOPs/image: small, tiny"


def test_data_without_labels_is_refused() -> None:
    with pytest.raises(DataError, match=r"^probe: the data gives \['images'\]; it needs 'images' and 'labels'"):
        labelled_images([{"images": torch.zeros(3, 4, 4)}] * 2, "labels", 2, None)


def test_probe_command_on_the_tiny_recipe(tiny_root, capsys) -> None:
    assert cli.main(["probe", "recipes/tiny/timm_two_teachers.yaml", "--data-root", str(tiny_root), "--limit", "48",
                     "--json", "--budget-gflops", "1000"]) == 0
    found = json.loads(capsys.readouterr().out)
    names = [r["name"] for r in found["rows"]]
    assert names[0] == STUDENT and sorted(names[1:]) == ["clip", "eva02"]
    assert all(r["gflops"] > 0 and r["ms"] > 0 and math.isfinite(r["accuracy"]) for r in found["rows"])
    gains = [r["gain"] for r in found["rows"][1:]]
    assert gains == sorted(gains, reverse=True)
    assert cli.main(["probe", "recipes/tiny/timm_two_teachers.yaml", "--data-root", str(tiny_root), "--stage", "nope"]) == 1
    assert "--stage 'nope' is not a stage of timm_two_teachers (stages: pretrain, finetune)" in capsys.readouterr().err

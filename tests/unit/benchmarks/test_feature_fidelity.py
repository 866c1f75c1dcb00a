"""Feature fidelity: hand-computed cosines on a hand-made Distiller, 1.0 when the student reproduces
its targets, equality with a direct computation on a tiny run (with and without student heads),
the checkpoint's tensors loaded, and the errors for an export or a missing distiller."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdkit.engine.step import Distiller
from kdkit.errors import KdkitError
from kdkit.interfaces import BuildContext, EvalSubject, StepContext, TeacherOutput
from kdkit.testing import check_plugin
from kdkit_plugins.benchmarks.feature_fidelity import NEEDS_RUN, FeatureFidelity, build_distiller, subject_from_run
from kdkit_plugins.fixtures.benchmarks_model import IndexedImages, index_of, write_tiny_run


class Handle:
    """An adapter handle with teacher experts ``a`` and ``b`` (or none) recording the routing in force."""

    def __init__(self, teachers: tuple[str, ...] = ("a", "b")) -> None:
        self.teacher_names = teachers
        self.spec: object = None

    @contextlib.contextmanager
    def routing(self, spec: object):
        self.spec = spec
        yield
        self.spec = None


class Student:
    """Two tokens per image: forced through expert k, both tokens are the unit vector e_k; routed, (1, 1)."""

    def __init__(self, handle: Handle) -> None:
        self.model = nn.Linear(1, 1)
        self.handle = handle

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        spec = self.handle.spec
        if isinstance(spec, torch.Tensor):  # the forced passes as one batch
            rows = torch.eye(2)[spec]
        elif isinstance(spec, int):  # one forced pass per teacher (the engine's choice on a CPU)
            rows = torch.eye(2)[[spec] * len(images)]
        else:
            assert spec == "routed"
            rows = torch.ones(len(images), 2)
        return rows[:, None, :].repeat(1, 2, 1)


class Teacher(nn.Module):
    """Grid (1, 2) of identical tokens: ``vector(j)`` for image j."""

    def __init__(self, vector) -> None:
        super().__init__()
        self.vector = vector

    def forward(self, images: torch.Tensor) -> TeacherOutput:
        tokens = torch.stack([torch.tensor(self.vector(int(j)), dtype=torch.float32) for j in index_of(images)])
        return TeacherOutput(grid=tokens[:, None, None, :].repeat(1, 1, 2, 1))


class Flatten(nn.Module):
    """An align chain that only flattens the grid: tokens = aligned = ``(B, m, C)``."""

    def forward(self, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = grid.flatten(1, 2)
        return flat, flat


def hand_made(teacher_b, experts: tuple[str, ...] = ("a", "b")) -> EvalSubject:
    handle = Handle(experts)
    student = Student(handle)
    teachers = {"a": Teacher(lambda j: (1.0, 0.0)), "b": Teacher(teacher_b)}
    distiller = Distiller(student, {"mola": handle}, teachers, {"a": Flatten(), "b": Flatten()}, None, {})
    return EvalSubject(student=student, adapters={"mola": handle}, recipe=object(), extras={"distiller": distiller})


def test_cosines_by_hand() -> None:
    subject = hand_made(lambda j: (1.0, float(j)))
    scores = FeatureFidelity(IndexedImages([0] * 4), batch_size=3).evaluate(subject)  # batches of 3 and 1
    # a: student e_0 = (1, 0) vs (1, 0): cosine 1 on every token
    # b: student e_1 = (0, 1) vs (1, j): cosine j / sqrt(1 + j^2) = 0, 0.70711, 0.89443, 0.94868 for j = 0..3
    b = [j / math.sqrt(1 + j * j) for j in range(4)]
    assert scores.metrics["cosine/a"] == pytest.approx(1.0)
    assert scores.metrics["cosine/b"] == pytest.approx(sum(b) / 4)  # 0.63756
    assert scores.metrics["cosine_mean"] == pytest.approx((1.0 + sum(b) / 4) / 2)
    assert scores.units == pytest.approx({str(j): (1.0 + b[j]) / 2 for j in range(4)})
    assert scores.details["student"] == "forced" and scores.details["images"] == 4


def test_one_when_the_student_reproduces_every_target() -> None:
    scores = FeatureFidelity(IndexedImages([0] * 3)).evaluate(hand_made(lambda j: (0.0, 2.0 + j)))
    assert scores.metrics == {"cosine/a": 1.0, "cosine/b": 1.0, "cosine_mean": 1.0}
    assert set(scores.units.values()) == {1.0}


def test_without_teacher_experts_the_routed_features_are_compared() -> None:
    scores = FeatureFidelity(IndexedImages([0, 0])).evaluate(hand_made(lambda j: (1.0, 1.0), experts=()))
    # routed (1, 1) vs a's (1, 0): 1 / sqrt(2); vs b's (1, 1): 1
    assert scores.metrics["cosine/a"] == pytest.approx(1 / math.sqrt(2))
    assert scores.metrics["cosine/b"] == pytest.approx(1.0)
    assert scores.details["student"] == "routed"


def test_max_images_and_declared_teachers() -> None:
    bench = FeatureFidelity(IndexedImages([0] * 5), batch_size=2, max_images=3, teachers=("b",))
    assert bench.metrics == ("cosine/b", "cosine_mean")
    scores = bench.evaluate(hand_made(lambda j: (1.0, float(j))))
    assert list(scores.units) == ["0", "1", "2"] and set(scores.metrics) == {"cosine/b", "cosine_mean"}
    with pytest.raises(KdkitError, match=r"teacher 'c' is not in the run \(teachers: a, b\)"):
        FeatureFidelity(IndexedImages([0]), teachers=("c",)).evaluate(hand_made(lambda j: (1.0, 0.0)))


def test_an_export_subject_is_refused() -> None:
    subject = EvalSubject(student=object(), source=Path("exports/student"))
    with pytest.raises(KdkitError, match=rf"feature_fidelity: {NEEDS_RUN} \(exports/student is an export\)"):
        FeatureFidelity(IndexedImages([0])).evaluate(subject)
    with pytest.raises(KdkitError, match=r"the subject carries no distiller \(extras\['distiller'\]\); build it with "
                                         r"kdkit_plugins.benchmarks.feature_fidelity.build_distiller"):
        FeatureFidelity(IndexedImages([0])).evaluate(EvalSubject(student=object(), recipe=object()))


@pytest.fixture(scope="module", params=["none", "student_heads"])
def tiny_run(request, tmp_path_factory, registry) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp(f"run_{request.param}")
    return write_tiny_run(root, guard=request.param, registry=registry), request.param


def test_equals_a_direct_computation_on_a_tiny_run(tiny_run, registry) -> None:
    run_dir, guard = tiny_run
    subject = subject_from_run(run_dir, registry=registry)
    distiller = subject.extras["distiller"]
    bench = registry.build("benchmark", {"kind": "feature_fidelity", "data": {"kind": "synthetic", "size": 6},
                                         "batch_size": 4}, BuildContext(name="eval", teacher_names=("clip", "eva02")))
    assert bench.metrics == ("cosine/clip", "cosine/eva02", "cosine_mean")
    scores = bench.evaluate(subject)
    images = torch.stack([bench.dataset[i]["images"] for i in range(6)])
    step = StepContext(teacher_names=("clip", "eva02"))
    with torch.no_grad():
        distiller.teacher_pass(images, step)
        forced = distiller.forced_pass(images)
        for teacher in ("clip", "eva02"):
            if guard == "student_heads":  # the heads map the student onto the teacher's fixed tokens
                student, target = distiller.losses["fine"].heads[teacher](forced[teacher]), step.teacher_tokens[teacher]
            else:
                student, target = forced[teacher], step.teacher_aligned[teacher]
            direct = F.cosine_similarity(student, target, dim=-1).mean()
            assert scores.metrics[f"cosine/{teacher}"] == pytest.approx(float(direct), abs=1e-6)
    assert scores.metrics["cosine_mean"] == pytest.approx((scores.metrics["cosine/clip"] + scores.metrics["cosine/eva02"]) / 2)
    assert sum(scores.units.values()) / 6 == pytest.approx(scores.metrics["cosine_mean"])
    assert scores.details["compared"] == {"clip": f"loss 'fine' (guard {guard})", "eva02": f"loss 'fine' (guard {guard})"}


def test_the_checkpoints_tensors_are_loaded(tiny_run, registry) -> None:
    from kdkit.engine.checkpoint import latest_checkpoint, read_weights

    run_dir, _ = tiny_run
    saved = read_weights(latest_checkpoint(run_dir / "checkpoints"))
    live = build_distiller(run_dir, registry=registry).state_dict()
    moved = [n for n in saved if "lora_B" in n or n.startswith("heads.aligners.")]
    assert moved and all(torch.equal(live[n], saved[n]) for n in moved)
    assert all(torch.count_nonzero(saved[n]) for n in moved if "lora_B" in n)  # not the zero init


def test_build_distiller_refuses_an_export(tmp_path) -> None:
    (tmp_path / "kdkit_student.yaml").write_text("format: 1\n")
    with pytest.raises(KdkitError, match=rf"{NEEDS_RUN} \({tmp_path} is an export\)"):
        build_distiller(tmp_path)


def test_contract(registry, tmp_path) -> None:
    check_plugin("benchmark", "feature_fidelity", registry.factory("benchmark", "feature_fidelity"), tmp_path)

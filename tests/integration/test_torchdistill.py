"""kdkit losses inside torchdistill's own DistillationBox, on the digits data, one CPU process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kdkit import BuildContext, GridSpec, StepContext
from kdkit.errors import KdkitError

td = pytest.importorskip("kdkit.integrations.torchdistill")

CONFIG = Path(__file__).resolve().parents[2] / "recipes" / "torchdistill" / "digits_kdkit_losses.yaml"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, registry) -> Path:
    """A data root holding a (random-init) digits ViT teacher in timm's format, where the config expects it."""
    root = tmp_path_factory.mktemp("td")
    config = td.load_config(CONFIG)
    teacher = config["models"]["teacher_model"]["kwargs"]["student"]
    torch.manual_seed(1)
    built = registry.build("student", {"kind": "timm", "model": teacher["model"], "model_kwargs": teacher["model_kwargs"]},
                           BuildContext(name="student"))
    built.export(root / Path(teacher["checkpoint"]).parent)
    return root


@pytest.fixture
def box(data_root):
    config = td.load_config(CONFIG, data_root=data_root)
    config["train"]["train_data_loader"]["kwargs"]["batch_size"] = 8
    torch.manual_seed(0)
    return td.build_box(config)


def hooked(module: torch.nn.Module, seen: list) -> torch.utils.hooks.RemovableHandle:
    return module.register_forward_hook(lambda _m, _i, out: seen.append(out))


def test_kdkit_terms_in_torchdistill_equal_the_kdkit_losses_on_the_same_tensors(box, registry) -> None:
    sample, targets, supp = next(iter(box.train_data_loader))
    wrapper, teacher = box.student_model, box.teacher_model
    wrapper.eval()  # no dropout either way: both computations see the same network
    total = box.forward_process(sample, targets, supp)

    student_seen, teacher_seen = [], []
    handles = [hooked(wrapper.student_model.model.blocks[3], student_seen), hooked(teacher.model.blocks[5], teacher_seen)]
    with torch.no_grad():
        logits = wrapper(sample)
        teacher(sample)
    for handle in handles:
        handle.remove()
    student = wrapper.heads["to_teacher"](student_seen[0])[:, 1:]  # (B, 16, 96): prefix token dropped
    target = teacher_seen[0][:, 1:]
    context = BuildContext(name="hint", teacher_names=("teacher",), student_spec=GridSpec(4, 4, 96),
                           teacher_specs={"teacher": GridSpec(4, 4, 96)}, teacher_token_specs={"teacher": GridSpec(4, 4, 96)})
    step = StepContext(teacher_names=("teacher",), teacher_grids={"teacher": target.reshape(-1, 4, 4, 96)},
                       teacher_tokens={"teacher": target}, teacher_aligned={"teacher": target},
                       student_routed=student, student_forced={"teacher": student}, labels=targets)
    feature = registry.build("loss", {"kind": "feature", "metric": "cosine"}, context)(step)
    scorer = registry.build("scorer", {"kind": "hawaii", "use_text": False}, context)
    step.scores = {"teacher": scorer(step, "teacher")}
    fine = registry.build("loss", {"kind": "fgkd"}, context)(step)
    expected = F.cross_entropy(logits, targets) + 0.5 * feature + 0.5 * fine
    assert float(feature.detach()) > 0.1 and float(fine.detach()) > 0.0
    torch.testing.assert_close(total.detach(), expected, rtol=1e-5, atol=1e-6)


def test_a_few_steps_train_the_student_and_its_head_not_the_teacher(box) -> None:
    student = {k: v.clone() for k, v in box.student_model.state_dict().items()}
    teacher = {k: v.clone() for k, v in box.teacher_model.state_dict().items()}
    losses = td.train(box, max_steps=3)
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    after = box.student_model.state_dict()
    assert not torch.equal(after["heads.to_teacher.weight"], student["heads.to_teacher.weight"])
    assert not torch.equal(after["student_model.model.blocks.0.mlp.fc1.weight"], student["student_model.model.blocks.0.mlp.fc1.weight"])
    assert all(torch.equal(v, teacher[k]) for k, v in box.teacher_model.state_dict().items())


def io(path: str, value: torch.Tensor) -> dict:
    return {path: {"output": value}}


def test_learnable_parts_are_refused_because_torchdistill_would_not_train_them() -> None:
    source = {"module_path": "x", "layout": "tokens"}
    student, teacher = io("x", torch.randn(2, 4, 8)), io("x", torch.randn(2, 4, 8))
    learned = td.KdkitLoss({"kind": "feature"}, source, source, align=[{"kind": "mlp"}])
    with pytest.raises(KdkitError, match=r"^KdkitLoss: the aligner chain has \d+ learnable parameters, which torchdistill "
                                         r"would never optimise"):
        learned(student, teacher)
    coarse = td.KdkitLoss({"kind": "cgkd"}, source, source)
    with pytest.raises(KdkitError, match=r"^KdkitLoss: the 'cgkd' loss has \d+ learnable parameters"):
        coarse(student, teacher)


def test_missing_hook_names_the_config_field() -> None:
    loss = td.KdkitLoss({"kind": "feature"}, {"module_path": "a"}, {"module_path": "b"})
    with pytest.raises(KdkitError, match=r"^KdkitLoss: the teacher io dict has no 'output' of 'b' \(hooked: c\); "
                                         r"add 'b' to train.teacher.forward_hook.output$"):
        loss(io("a", torch.randn(1, 4, 2)), io("c", torch.randn(1, 4, 2)))


def test_grids_keep_their_orientation() -> None:
    maps = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)  # (B, C, H, W)
    grid = td.to_grid(maps, "x", layout="nchw")
    assert grid.shape == (2, 4, 5, 3) and torch.equal(grid[1, 2, 3], maps[1, :, 2, 3])
    tokens = torch.randn(2, 1 + 6, 3)
    grid = td.to_grid(tokens, "x", prefix_tokens=1, grid=(2, 3))
    assert torch.equal(grid[0, 1, 2], tokens[0, 1 + 1 * 3 + 2])

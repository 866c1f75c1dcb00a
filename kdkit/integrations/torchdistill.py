"""kdkit's feature-distillation losses and token scorers inside torchdistill (Matsubara, 2021).

Importing this module registers, in torchdistill 1.x's registries:

- mid-level losses ``KdkitLoss`` (any kdkit loss block) and ``kdkit_<name>`` for every kdkit loss
  plugin (``kdkit_feature``, ``kdkit_fgkd``...): they read the forward-hook outputs of one student
  and one teacher module from torchdistill's io dicts, run the teacher's through a kdkit aligner
  chain, score tokens with a kdkit scorer (``scorer: {kind: ...}``) and evaluate the kdkit loss;
- the auxiliary student wrapper ``KdkitStudentHeads``: trainable linear heads on hooked student
  features (torchdistill optimises the student's parameters only, so widths are matched there);
- the model ``kdkit_timm`` (a kdkit ``timm`` student block -> a module taking [0, 1] images) and the
  dataset ``KdkitData`` (a kdkit data block -> ``(image, label)`` pairs).

Everything is built through kdkit's plugin registry. :func:`load_config`, :func:`build_box` and
:func:`train` run a torchdistill YAML (read with ``yaml.safe_load``) through torchdistill's own
``DistillationBox``, in one process.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from einops import rearrange
from torch import Tensor, nn
from torch.utils.data import Dataset
from torchdistill.models.wrapper import AuxiliaryModelWrapper

from kdkit.align import build_aligner_chain
from kdkit.errors import KdkitError
from kdkit.interfaces import BuildContext, GridSpec, StepContext
from kdkit.plugins import get_registry

__all__ = ["KdkitData", "KdkitLoss", "KdkitStudentHeads", "TimmImageModel", "build_box", "load_config", "register", "train"]

#: Tensor layouts a hooked module may produce.
LAYOUTS = ("tokens", "nchw", "nhwc")


def to_grid(value: Any, where: str, layout: str = "tokens", prefix_tokens: int = 0,
            grid: tuple[int, int] | None = None) -> Tensor:
    """A hooked tensor -> ``(B, H, W, C)``.

    Args:
        value: The hooked input or output (a tensor, or a tuple whose first item is one).
        where: Which io-dict entry it is (for messages).
        layout: ``tokens`` ``(B, N, C)``, ``nchw`` or ``nhwc``.
        prefix_tokens: Leading tokens (CLS, registers) dropped from a ``tokens`` layout.
        grid: ``(H, W)`` of the tokens (default: a square).
    """
    if isinstance(value, (tuple, list)):
        value = value[0]
    if not isinstance(value, Tensor):
        raise KdkitError(f"{where}: the hooked value is a {type(value).__name__}, not a tensor")
    if layout == "nchw":
        return rearrange(value, "b c h w -> b h w c")
    if layout == "nhwc":
        return value
    if layout != "tokens":
        raise KdkitError(f"{where}: layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    tokens = value[:, prefix_tokens:]
    count = tokens.shape[1]
    height, width = grid or (round(count**0.5), round(count**0.5))
    if height * width != count:
        raise KdkitError(f"{where}: {count} tokens (after dropping {prefix_tokens} prefix tokens) do not form a "
                         f"{height}x{width} grid; set prefix_tokens or grid")
    return rearrange(tokens, "b (h w) c -> b h w c", h=height)


def _hooked(io_dict: Mapping[str, Any], source: Mapping[str, Any], side: str) -> Tensor:
    """The grid of the module that ``source`` (``module_path``, ``io``, ``layout``...) names."""
    path, io = source["module_path"], source.get("io", "output")
    if path not in io_dict or io not in io_dict[path]:
        raise KdkitError(f"KdkitLoss: the {side} io dict has no {io!r} of {path!r} (hooked: {', '.join(io_dict) or 'none'}); "
                         f"add {path!r} to train.{side}.forward_hook.{io}")
    grid = source.get("grid")
    return to_grid(io_dict[path][io], f"{side} {path!r}", source.get("layout", "tokens"), source.get("prefix_tokens", 0),
                   tuple(grid) if grid else None)


def _refuse_parameters(module: Any, what: str) -> None:
    """torchdistill never optimises a loss module's parameters: a learnable part would stay random."""
    count = sum(p.numel() for p in module.parameters()) if isinstance(module, nn.Module) else 0
    if count:
        raise KdkitError(
            f"KdkitLoss: {what} has {count} learnable parameters, which torchdistill would never optimise (it trains "
            "the student's parameters only); use parameter-free aligners (resample, pixel_unshuffle), match widths with "
            "a KdkitStudentHeads head on the student, or run the recipe with kdkit's own engine")


class KdkitLoss(nn.Module):
    """torchdistill mid-level loss: ``(student_io_dict, teacher_io_dict, targets) -> scalar`` from a kdkit loss.

    Args:
        loss: The kdkit loss block (``{kind: feature, metric: cosine}``...).
        student: ``module_path``, ``io`` (``output``), ``layout`` (``tokens``/``nchw``/``nhwc``),
            ``prefix_tokens``, ``grid`` of the hooked student feature.
        teacher: The same for the teacher.
        align: kdkit aligner blocks from the teacher's grid to the student's (parameter-free).
        scorer: A kdkit scorer block filling ``step.scores`` (e.g. ``{kind: hawaii, use_text: false}``).
        teacher_name: Name of the teacher in the step context.
        term: Name of the term (in messages).
    """

    def __init__(self, loss: Mapping[str, Any], student: Mapping[str, Any], teacher: Mapping[str, Any],
                 align: list[Mapping[str, Any]] | None = None, scorer: Mapping[str, Any] | None = None,
                 teacher_name: str = "teacher", term: str = "kdkit") -> None:
        super().__init__()
        self.blocks = {"loss": dict(loss), "align": [dict(b) for b in align or []],
                       "scorer": dict(scorer) if scorer else None}
        self.student_source, self.teacher_source = dict(student), dict(teacher)
        self.teacher_name, self.term = teacher_name, term
        self.registry = get_registry()
        self.registry.factory("loss", self.blocks["loss"].get("kind", ""))  # an unknown kind fails at config time
        self.parts: tuple[Any, Any, Any] | None = None

    def build_parts(self, student: Tensor, teacher: Tensor) -> tuple[Any, Any, Any]:
        """Aligner chain, scorer and loss, sized from the first batch's grids (none may have parameters)."""
        name = self.teacher_name
        student_spec = GridSpec(*student.shape[1:])
        context = BuildContext(name=self.term, teacher_names=(name,), student_spec=student_spec)
        chain = build_aligner_chain(self.registry, name, self.blocks["align"], GridSpec(*teacher.shape[1:]), context)
        context = dataclasses.replace(context, teacher_specs={name: chain.out_spec},
                                      teacher_token_specs={name: chain.token_spec})
        scorer = None
        if self.blocks["scorer"] is not None:
            scorer = self.registry.build("scorer", self.blocks["scorer"], dataclasses.replace(context, name="scorer"))
        loss = self.registry.build("loss", self.blocks["loss"], context)
        for part, what in ((chain, "the aligner chain"), (scorer, "the scorer"), (loss, f"the {self.blocks['loss']['kind']!r} loss")):
            _refuse_parameters(part, what)
        return chain.to(teacher.device), scorer, loss

    def step_context(self, student_io_dict: Mapping[str, Any], teacher_io_dict: Mapping[str, Any],
                     targets: Any = None) -> StepContext:
        """The kdkit step context of one batch, built from torchdistill's io dicts."""
        student = _hooked(student_io_dict, self.student_source, "student")
        teacher = _hooked(teacher_io_dict, self.teacher_source, "teacher").detach()
        if self.parts is None:
            self.parts = self.build_parts(student, teacher)
        chain, scorer, _ = self.parts
        tokens, aligned = chain(teacher.float())
        features = rearrange(student, "b h w c -> b (h w) c")
        name = self.teacher_name
        step = StepContext(teacher_names=(name,), teacher_grids={name: teacher}, teacher_tokens={name: tokens},
                           teacher_aligned={name: aligned}, student_routed=features, student_forced={name: features},
                           labels=targets if isinstance(targets, Tensor) else None)
        if scorer is not None:
            step.scores = {name: scorer(step, name)}
        return step

    def forward(self, student_io_dict: Mapping[str, Any], teacher_io_dict: Mapping[str, Any], targets: Any = None,
                *args: Any, **kwargs: Any) -> Tensor:
        """Scalar: the kdkit loss on this batch's hooked features."""
        step = self.step_context(student_io_dict, teacher_io_dict, targets)
        assert self.parts is not None
        return self.parts[2](step)

    def __str__(self) -> str:
        return f"KdkitLoss({self.blocks['loss']})"


class TimmImageModel(nn.Module):
    """``(B, 3, H, W)`` images in [0, 1] -> a kdkit ``timm`` student's logits (resized and normalised inside).

    Hook paths inside the timm model start with ``model.`` (``model.blocks.3``).
    """

    def __init__(self, student: Any) -> None:
        super().__init__()
        self.model = student.model
        self.plugin = student

    def forward(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B, classes)``."""
        return self.model(self.plugin.pixels(images))


def kdkit_timm(student: Mapping[str, Any], root: str = ".") -> TimmImageModel:
    """A kdkit ``timm`` student block (relative checkpoint paths resolve against ``root``) as a torchdistill model."""
    built = get_registry().build("student", {"kind": "timm", **dict(student)},
                                 BuildContext(name="student", data_root=Path(root)))
    return TimmImageModel(built)


class KdkitData(Dataset):
    """A kdkit data block (``{kind: digits, split: train}``) as torchdistill's ``(image, label)`` pairs."""

    def __init__(self, data: Mapping[str, Any], root: str = ".") -> None:
        self.dataset = get_registry().build("data", dict(data), BuildContext(name="train", data_root=Path(root)))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        sample = self.dataset[index]
        return sample["images"], sample["labels"]


class KdkitStudentHeads(AuxiliaryModelWrapper):
    """Auxiliary student wrapper: a trainable linear head per hooked student feature (last axis, or channels).

    Args:
        student_model: The student.
        heads: ``{name: {path, io, in_features, out_features, layout}}``; hook ``heads.<name>`` to read a head's output.
        kwargs: What torchdistill passes besides (device, distributed...; unused on one process).
    """

    def __init__(self, student_model: nn.Module, heads: Mapping[str, Mapping[str, Any]], **kwargs: Any) -> None:
        super().__init__()
        self.student_model = student_model
        self.heads = nn.ModuleDict({n: nn.Linear(int(h["in_features"]), int(h["out_features"])) for n, h in heads.items()})
        self.sources = {n: (h["path"], h.get("io", "output"), h.get("layout", "tokens")) for n, h in heads.items()}

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.student_model(*args, **kwargs)

    def secondary_forward(self, io_dict: Mapping[str, Any]) -> None:
        """Run every head on its hooked feature (forward hooks on ``heads.<name>`` record the outputs)."""
        for name, (path, io, layout) in self.sources.items():
            value = io_dict[path][io]
            value = value[0] if isinstance(value, (tuple, list)) else value
            if layout == "nchw":
                self.heads[name](rearrange(value, "b c h w -> b h w c"))
            else:
                self.heads[name](value)

    def post_epoch_process(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to do between epochs."""


def register() -> None:
    """Register kdkit's losses, student heads, model and dataset in torchdistill's registries (idempotent)."""
    from torchdistill.datasets.registry import DATASET_DICT, register_dataset
    from torchdistill.losses.registry import MIDDLE_LEVEL_LOSS_DICT, register_mid_level_loss
    from torchdistill.models.registry import AUXILIARY_MODEL_WRAPPER_DICT, MODEL_DICT, register_auxiliary_model_wrapper, register_model

    if "KdkitLoss" in MIDDLE_LEVEL_LOSS_DICT:
        return
    register_mid_level_loss(KdkitLoss, key="KdkitLoss")
    for name in get_registry().names("loss"):
        def make(*, _kind: str = name, student: Mapping[str, Any], teacher: Mapping[str, Any],
                 align: list[Mapping[str, Any]] | None = None, scorer: Mapping[str, Any] | None = None,
                 teacher_name: str = "teacher", **fields: Any) -> KdkitLoss:
            return KdkitLoss({"kind": _kind, **fields}, student, teacher, align, scorer, teacher_name, term=_kind)

        register_mid_level_loss(make, key=f"kdkit_{name}")
    register_auxiliary_model_wrapper(KdkitStudentHeads, key="KdkitStudentHeads")
    register_model(kdkit_timm, key="kdkit_timm")
    register_dataset(KdkitData, key="KdkitData")
    assert "kdkit_timm" in MODEL_DICT and "KdkitData" in DATASET_DICT and "KdkitStudentHeads" in AUXILIARY_MODEL_WRAPPER_DICT


def load_config(path: str | Path, data_root: str | Path | None = None) -> dict[str, Any]:
    """A torchdistill YAML read with ``yaml.safe_load`` (no code-running tags).

    Sampler classes may be given by name (``class_or_func: RandomSampler``); with ``data_root``,
    every ``root`` argument of the kdkit model and dataset entries is replaced by it.
    """
    config = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if data_root is not None:
        entries = [*config.get("datasets", {}).values(), *config.get("models", {}).values()]
        for entry in entries:
            if entry.get("key") in ("KdkitData", "kdkit_timm"):
                entry.setdefault("kwargs", {})["root"] = str(data_root)
    for loader in ("train_data_loader", "val_data_loader"):
        sampler = config.get("train", {}).get(loader, {}).get("sampler")
        if sampler and isinstance(sampler.get("class_or_func"), str):
            name = sampler["class_or_func"]
            if not name.endswith("Sampler") or not hasattr(torch.utils.data, name):
                raise KdkitError(f"train.{loader}.sampler.class_or_func: {name!r} is not a torch.utils.data sampler")
            sampler["class_or_func"] = getattr(torch.utils.data, name)
    return config


def build_box(config: Mapping[str, Any], device: str | torch.device = "cpu") -> Any:
    """Models, datasets and torchdistill's ``DistillationBox`` for ``config``, in one process.

    torchdistill's own distributed set-up assumes CUDA; this never initialises a process group.
    """
    from torchdistill.core.distillation import get_distillation_box
    from torchdistill.datasets.registry import get_dataset
    from torchdistill.models.registry import get_model

    register()
    device = torch.device(device)
    models = config["models"]
    teacher = get_model(models["teacher_model"]["key"], **models["teacher_model"].get("kwargs", {})).to(device).eval()
    student = get_model(models["student_model"]["key"], **models["student_model"].get("kwargs", {})).to(device)
    datasets = {name: get_dataset(entry["key"])(**entry.get("kwargs", {})) for name, entry in config["datasets"].items()}
    return get_distillation_box(teacher, student, datasets, config["train"], device, None, False, 1)


def train(box: Any, max_steps: int | None = None, epochs: int = 1) -> list[float]:
    """torchdistill's epoch/step protocol on ``box``; returns the total loss of every step."""
    losses: list[float] = []
    for epoch in range(epochs):
        box.pre_epoch_process(epoch=epoch)
        for sample, targets, supp in box.train_data_loader:
            sample, targets = sample.to(box.device), targets.to(box.device)
            box.pre_forward_process(sample, targets, supp)
            loss = box.forward_process(sample, targets, supp)
            box.post_forward_process(loss=loss)
            losses.append(float(loss.detach()))
            if max_steps is not None and len(losses) >= max_steps:
                break
        box.post_epoch_process()
        if max_steps is not None and len(losses) >= max_steps:
            break
    return losses


register()

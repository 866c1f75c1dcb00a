"""Contract kit: checks every plugin must pass, for kdkit's own tests and plugin authors' CI.

Usage in a plugin package's tests::

    from kdkit.testing import check_plugin
    from my_plugin import my_factory

    def test_contract(tmp_path):
        check_plugin("teacher", "my_teacher", my_factory, tmp_path)
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydantic

from kdkit.errors import PluginError
from kdkit.interfaces import BuildContext, Example, GridSpec, StepContext
from kdkit.registry import Factory, check_factory

__all__ = ["ContractError", "check_plugin"]


class ContractError(AssertionError):
    """A plugin breaks the contract; the message says which check and why."""


def _fail(kind: str, name: str, message: str) -> ContractError:
    return ContractError(f"{kind} {name!r}: {message}")


def _default_example(kind: str, name: str) -> Example:
    """Defaults plus a tiny generic context, for plugins that need nothing else."""
    spec = GridSpec(4, 4, 8)
    context = BuildContext(
        name="t0",
        teacher_names=("t0", "t1"),
        teacher_specs={"t0": spec, "t1": spec},
        in_spec=spec,
        student_spec=GridSpec(4, 4, 16),
        text_dim=12,
    )
    return Example(config={"kind": name}, context=context)


def _tensors(value: Any) -> list[Any]:
    """Every tensor inside a (nested) output, in a stable order."""
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for k in sorted(value) for t in _tensors(value[k])]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def _probe(kind: str, name: str, built: Any, example: Example) -> Any:
    """Run the built object once and check its declared output shape. Returns the output."""
    import torch

    ctx = example.context
    if kind == "teacher":
        spec = built.out_spec
        if built.training:
            raise _fail(kind, name, "is in train mode after build; teachers must stay in eval mode")
        built.train()
        if built.training or any(m.training for m in built.modules()):
            raise _fail(kind, name, "left eval mode after .train(); override train() to stay frozen")
        if any(p.requires_grad for p in built.parameters()):
            raise _fail(kind, name, "has parameters with requires_grad=True")
        (images,) = example.inputs
        out = built(images)
        expected = (images.shape[0], spec.height, spec.width, spec.channels)
        if tuple(out.grid.shape) != expected:
            raise _fail(kind, name, f"grid shape {tuple(out.grid.shape)} != declared out_spec {expected}")
        if out.grid.requires_grad:
            raise _fail(kind, name, "output requires grad; run the teacher under no_grad")
        return out
    if kind == "aligner":
        spec_in = ctx.in_spec
        assert spec_in is not None, "aligner examples need context.in_spec"
        (grid,) = example.inputs
        out = built(grid)
        spec = built.out_spec
        expected = (grid.shape[0], spec.height, spec.width, spec.channels)
        if tuple(out.shape) != expected:
            raise _fail(kind, name, f"output shape {tuple(out.shape)} != declared out_spec {expected}")
        return out
    if kind == "scorer":
        if not example.inputs:
            raise _fail(kind, name, "scorer examples must give inputs (step_context, teacher_name)")
        step, teacher = example.inputs
        out = built(step, teacher)
        tokens = step.teacher_aligned[teacher]
        if tuple(out.shape) != tuple(tokens.shape[:2]):
            raise _fail(kind, name, f"scores shape {tuple(out.shape)} != (B, m) {tuple(tokens.shape[:2])}")
        if not torch.allclose(out.sum(-1), torch.ones_like(out.sum(-1)), atol=1e-5) or (out < 0).any():
            raise _fail(kind, name, "scores are not a distribution over tokens (rows must be >= 0, sum to 1)")
        return out
    if kind == "loss":
        if not example.inputs or not isinstance(example.inputs[0], StepContext):
            raise _fail(kind, name, "loss examples must give inputs (step_context,)")
        out = built(*example.inputs)
        if not isinstance(out, torch.Tensor) or out.ndim != 0:
            raise _fail(kind, name, f"must return a scalar tensor, got {type(out).__name__} {getattr(out, 'shape', '')}")
        if not torch.isfinite(out):
            raise _fail(kind, name, f"returned a non-finite loss {out.item()}")
        return out
    if kind == "adapter":
        if ctx.model is None or not example.inputs:
            raise _fail(kind, name, "adapter examples must give context.model and its inputs")
        return ctx.model(*example.inputs)
    if kind == "student":
        (images,) = example.inputs
        features = built.encode(images)
        spec = built.feature_spec
        expected = (images.shape[0], spec.tokens, spec.channels)
        if tuple(features.shape) != expected:
            raise _fail(kind, name, f"encode() shape {tuple(features.shape)} != declared feature_spec {expected}")
        return features
    if kind == "benchmark":
        return _probe_benchmark(name, built, example.inputs)
    if kind == "logger":
        return _probe_logger(name, built, example)
    if kind == "data":
        if len(built) == 0:
            raise _fail(kind, name, "built an empty dataset from its example")
        return _probe_data(name, built)
    return None


def _probe_data(name: str, built: Any) -> Any:
    """A sample carries ``ids``: one int64 per sample, the same each time the sample is read (the sample-id rule)."""
    import torch

    sample = built[0]
    ids = sample.get("ids") if isinstance(sample, dict) else None
    if not isinstance(ids, torch.Tensor) or ids.dim() != 0 or ids.dtype != torch.int64:
        raise _fail("data", name, "samples must carry 'ids', a 0-dim int64 tensor stable for the sample's content "
                    "(the teacher cache keys stored outputs by it)")
    if int(built[0]["ids"]) != int(ids):
        raise _fail("data", name, "reading sample 0 twice gave two different 'ids'; ids must be stable")
    return sample


def _probe_logger(name: str, built: Any, example: Example) -> None:
    """A logger takes a run's start, a training record, an evaluation record and its close."""
    from kdkit.loggers import RunLogger

    if not isinstance(built, RunLogger):
        raise _fail("logger", name, "does not implement start, log, log_eval and close (kdkit.loggers.RunLogger)")
    run_dir = example.context.data_root
    built.start(run_dir, {"name": "probe", "stages": {"main": {"optimizer": {"lr": 0.1}}}}, False)
    built.log({"step": 1, "stage": "main", "stage_step": 1, "lr": 0.1, "loss": 2.0, "losses": {"task": 2.0},
               "grad_norm": 1.0, "samples_per_s": 8.0, "routing": {"teacher": {"blocks.0": [0.25, 0.75]}}})
    built.log_eval({"step": 1, "stage": "main", "stage_step": 1, "benchmark": "probe", "eval": {"accuracy": 50.0}})
    built.close()
    return None


def _probe_benchmark(name: str, built: Any, example_inputs: tuple[Any, ...] | None = None) -> None:
    """Declarations hold; a generative benchmark's questions are well formed and empty answers score
    every declared metric (finite); an unknown question id is refused."""
    import math

    from kdkit.errors import DataError
    from kdkit.interfaces import Benchmark, GenerativeBenchmark, ModelBenchmark, Question

    kind = "benchmark"
    if not isinstance(built, Benchmark):
        raise _fail(kind, name, "does not declare metrics, primary and published")
    if built.primary not in built.metrics:
        raise _fail(kind, name, f"primary metric {built.primary!r} is not among its metrics {built.metrics}")
    if isinstance(built, ModelBenchmark):
        if example_inputs:  # an example subject: every declared metric comes back finite
            scores = built.evaluate(*example_inputs)
            for metric in built.metrics:
                value = scores.metrics.get(metric)
                if value is None or not math.isfinite(value):
                    raise _fail(kind, name, f"evaluate() gave metric {metric!r} = {value!r}; every declared metric "
                                            "must be finite")
        return None
    if not isinstance(built, GenerativeBenchmark):
        raise _fail(kind, name, "has neither questions()+score() nor evaluate()")
    questions = list(built.questions())
    if not questions:
        raise _fail(kind, name, "its example has no questions")
    ids = [q.id for q in questions]
    if len(set(ids)) != len(ids) or not all(isinstance(q, Question) and isinstance(q.id, str) for q in questions):
        raise _fail(kind, name, "questions must be kdkit Question objects with unique string ids")
    if any("<image>" in q.prompt or not q.prompt.strip() for q in questions):
        raise _fail(kind, name, "prompts must be non-empty and must not hold an <image> placeholder")
    scores = built.score({q.id: "" for q in questions})
    for metric in built.metrics:
        value = scores.metrics.get(metric)
        if value is None or not math.isfinite(value):
            raise _fail(kind, name, f"empty answers gave metric {metric!r} = {value!r}; every declared metric must be finite")
    try:
        built.score({**{q.id: "" for q in questions}, "__not_a_question__": ""})
    except DataError:
        pass
    else:
        raise _fail(kind, name, "score() accepted a question id that is not one of its questions")
    return None


def _stateful_module(kind: str, built: Any, example: Example) -> Any:
    """The module whose state dict the round-trip check uses (None when stateless)."""
    from torch import nn

    if kind == "adapter":
        return example.context.model
    if kind == "student":
        return built.model
    return built if isinstance(built, nn.Module) else None


def _eval(module: Any) -> None:
    """Eval mode for the round trip: running statistics must not move between two probes."""
    if module is not None:
        module.eval()


def _perturb(module: Any, seed: int) -> None:
    """Add noise to every floating parameter/buffer so a round trip cannot pass by accident."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # only what a state dict carries (not non-persistent buffers)
        for tensor in module.state_dict(keep_vars=True).values():
            if tensor.is_floating_point() and tensor.numel():
                tensor.add_(0.05 * torch.randn(tensor.shape, generator=gen).to(tensor))


def _check_skeleton(kind: str, name: str, factory: Factory, built: Any, example: Example) -> None:
    """The factory's skeleton has the built object's parameter names and shapes, every one on the meta device."""
    import torch

    config = factory.config.model_validate(copy.deepcopy(example.config))
    with torch.device("meta"):
        skeleton = factory.skeleton(config, example.context)  # type: ignore[misc]
    real, meta = (_stateful_module(kind, b, example) for b in (built, skeleton))
    if real is None or meta is None:
        raise _fail(kind, name, "skeleton or build gives no module to compare")
    shapes = {n: tuple(p.shape) for n, p in real.named_parameters()}
    if {n: tuple(p.shape) for n, p in meta.named_parameters()} != shapes:
        raise _fail(kind, name, "skeleton's parameter names or shapes differ from the build's")
    on_disk = [n for n, p in meta.named_parameters() if not p.is_meta]
    if on_disk:
        raise _fail(kind, name, f"skeleton holds parameters off the meta device: {on_disk[:3]}")
    if getattr(built, "feature_spec", None) != getattr(skeleton, "feature_spec", None):
        raise _fail(kind, name, "skeleton's feature_spec differs from the build's")


def check_plugin(kind: str, name: str, factory: Factory, tmp_path: Path | str) -> None:
    """Check one plugin against the contract of its kind.

    Checks: the factory is well formed (strict config, ``kind`` equal to ``name``); an unknown
    config key is rejected; the JSON schema renders; it builds from its example (or from defaults
    on a tiny context); the declared output shape holds; a state-dict round trip into a second
    build reproduces the output; a factory's ``skeleton`` has the build's parameter names and
    shapes, on the meta device.

    Raises:
        ContractError: with the failing check in the message.
    """
    import torch

    try:
        check_factory(kind, name, factory, plugin="under test")
    except PluginError as exc:
        raise ContractError(str(exc)) from None
    factory.config.model_json_schema()
    try:
        factory.config.model_validate({"kind": name, "__not_a_field__": 1})
    except pydantic.ValidationError as exc:
        if not any(e["type"] == "extra_forbidden" for e in exc.errors()):
            raise _fail(kind, name, "config does not reject unknown keys with extra_forbidden") from None
    else:
        raise _fail(kind, name, "config accepted an unknown key; set extra='forbid'")

    tmp_path = Path(tmp_path)
    make_example: Callable[[Path], Example] = factory.example or (lambda _p: _default_example(kind, name))

    def build(seed: int) -> tuple[Any, Example]:
        directory = tmp_path / f"build{seed}"
        directory.mkdir(parents=True, exist_ok=True)
        example = make_example(directory)
        config = factory.config.model_validate(copy.deepcopy(example.config))
        torch.manual_seed(seed)
        return factory.build(config, example.context), example

    first, example1 = build(0)
    if factory.skeleton is not None:
        _check_skeleton(kind, name, factory, first, make_example(tmp_path / "build0"))
    if kind != "teacher":  # a teacher must be in eval mode by itself: the probe checks it
        _eval(_stateful_module(kind, first, example1))
    example1 = _with_default_inputs(kind, example1)
    out1 = _probe(kind, name, first, example1)
    module1 = _stateful_module(kind, first, example1)
    if module1 is None:
        return
    _perturb(module1, seed=123)
    out1 = _probe(kind, name, first, example1)
    state = {k: v.detach().clone() for k, v in module1.state_dict().items()}

    second, example2 = build(1)
    module2 = _stateful_module(kind, second, example2)
    if kind != "teacher":
        _eval(module2)
    module2.load_state_dict(state, strict=True)
    if kind != "adapter":  # an adapter's inputs belong to its example's own model
        example2 = Example(example2.config, example2.context, inputs=example1.inputs)
    out2 = _probe(kind, name, second, _with_default_inputs(kind, example2))
    for a, b in zip(_tensors(out1), _tensors(out2), strict=True):
        if a.shape != b.shape or not torch.allclose(a.float(), b.float(), atol=1e-5, rtol=1e-4):
            raise _fail(kind, name, "state-dict round trip into a fresh build changed the output")


def _with_default_inputs(kind: str, example: Example) -> Example:
    """``example`` with seeded default probe inputs where it gives none."""
    import torch

    if example.inputs is not None:
        return example
    gen = torch.Generator().manual_seed(0)
    spec = example.context.in_spec
    if kind == "teacher":
        inputs: tuple[Any, ...] | None = (torch.rand(2, 3, 64, 64, generator=gen),)
    elif kind == "aligner" and spec is not None:
        inputs = (torch.randn(2, spec.height, spec.width, spec.channels, generator=gen),)
    elif kind == "student":
        inputs = (torch.rand(2, 3, 32, 32, generator=gen),)
    else:
        inputs = None
    return Example(example.config, example.context, inputs=inputs)

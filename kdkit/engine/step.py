"""One distillation step: teachers, aligner chains, routed and forced student passes, scorer, losses.

:class:`Distiller` is the one trainable module of a run (student + KD heads; never the teachers):
its ``forward`` turns a batch into a :class:`~kdkit.interfaces.StepContext` and a dict of NAMED,
UNWEIGHTED losses. :func:`weighted_total` is the one place the recipe's weights are applied.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from einops import rearrange, repeat
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from kdkit.align import AlignerChain
from kdkit.engine.capabilities import Capabilities, capabilities_of
from kdkit.engine.teacher_pass import Absent, NoDistilledSamples, OnlineTeachers, teacher_pass
from kdkit.errors import KdkitError, NonFiniteError
from kdkit.interfaces import RoutingControl, StepContext, TeacherExperts, TeacherSource


def weighted_total(losses: Mapping[str, Tensor], weights: Mapping[str, float]) -> Tensor:
    """The total loss: ``sum_k weights[k] * losses[k]`` (scalar, float32)."""
    terms = [weights[name] * loss.float() for name, loss in losses.items()]
    if not terms:
        raise KdkitError("the stage has no active loss term; list at least one in stages.<name>.losses")
    return torch.stack(terms).sum()


class ForcedFeatures(Mapping[str, Tensor]):
    """``I_i^S`` by teacher, computed by ONE batched forced pass on first access (lazily).

    Losses that never read :attr:`StepContext.student_forced` cost nothing; the first that does
    runs the student once on the images repeated ``N_t`` times, each copy forced through one
    teacher's expert.
    """

    def __init__(self, compute: Callable[[], dict[str, Tensor]]) -> None:
        self._compute = compute
        self._features: dict[str, Tensor] | None = None

    def _get(self) -> dict[str, Tensor]:
        if self._features is None:
            self._features = self._compute()
        return self._features

    def __getitem__(self, teacher: str) -> Tensor:
        return self._get()[teacher]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


@contextlib.contextmanager
def routing(adapters: Sequence[Any], spec: Any, experts_only: bool = False) -> Iterator[None]:
    """Every adapter with routing control (with teacher experts only, when ``experts_only``) follows ``spec`` inside."""
    with contextlib.ExitStack() as stack:
        for handle in adapters:
            if experts_only and not (isinstance(handle, TeacherExperts) and handle.teacher_names):
                continue
            if isinstance(handle, RoutingControl):
                stack.enter_context(handle.routing(spec))
        yield


def checkpoint_context(adapters: Sequence[Any]) -> Callable[[], tuple[Any, Any]] | None:
    """``context_fn`` for activation checkpointing that replays every adapter's route, or None.

    ``adapters``: the adapters that replay routes (:attr:`Capabilities.replay`).
    """
    handles = list(adapters)
    if not handles:
        return None

    def context_fn() -> tuple[Any, Any]:
        pairs = [h.checkpoint_context() for h in handles]
        return _Joined([p[0] for p in pairs]), _Joined([p[1] for p in pairs])

    return context_fn


class _Joined(contextlib.AbstractContextManager):
    """Several context managers entered and left as one."""

    def __init__(self, managers: list[Any]) -> None:
        self.managers = managers
        self.stack = contextlib.ExitStack()

    def __enter__(self) -> _Joined:
        for manager in self.managers:
            self.stack.enter_context(manager)
        return self

    def __exit__(self, *exc: object) -> bool | None:
        return self.stack.__exit__(*exc)


#: Key of :attr:`StepContext.extras` holding ``{teacher: N_t / k}`` when only a random ``k`` of the
#: ``N_t`` teachers' forced passes ran this step (``runtime.forced_teachers``).
FORCED_WEIGHTS = "forced_weights"


def forced_batching(device: torch.device) -> bool:
    """Whether the ``N_t`` forced passes run as one batch on ``device`` (else one pass per teacher).

    Batching saves kernel launches, which bound small passes on a GPU; on a CPU every pass
    already runs near peak, and one ``N_t``-times larger batch measured slower than ``N_t``
    passes (``python -m benchmarks.mola``). Both give the same features.
    """
    return device.type != "cpu"


class Distiller(nn.Module):
    """Student (with adapters) + KD heads; teachers are held but never registered.

    Args:
        student: The student plugin object (its ``model`` becomes the ``student`` sub-module).
        adapters: Adapter handles by name, already injected into the student.
        teachers: Frozen teachers by name, in recipe order.
        chains: Aligner chain per teacher (trainable).
        scorer: Token scorer, or None for uniform weights.
        losses: Loss terms by name.
        source: Where teacher outputs come from (default: the teachers, online).
        capabilities: The student's and adapters' optional capabilities (default: checked here).
    """

    def __init__(self, student: Any, adapters: Mapping[str, Any], teachers: Mapping[str, nn.Module],
                 chains: Mapping[str, nn.Module], scorer: Any, losses: Mapping[str, Callable[[StepContext], Tensor]],
                 source: TeacherSource | None = None, capabilities: Capabilities | None = None) -> None:
        super().__init__()
        self.student = student.model
        heads = nn.ModuleDict({"aligners": nn.ModuleDict(dict(chains))})
        if isinstance(scorer, nn.Module):
            heads["scorer"] = scorer
        heads["losses"] = nn.ModuleDict({n: m for n, m in losses.items() if isinstance(m, nn.Module)})
        self.heads = heads
        # plain attributes: not sub-modules, so never in the optimizer, DDP buckets or checkpoints
        self.plugin = student
        self.adapters = dict(adapters)
        self.capabilities = capabilities or capabilities_of(student, self.adapters)
        self.forced_teachers: int | None = None  # runtime.forced_teachers: k teachers' forced passes per step
        self.checkpoint_forced = False  # runtime.checkpoint_forced_passes: keep only each forced pass's output
        self.source: TeacherSource = source if source is not None else OnlineTeachers(teachers)
        self.teacher_order: tuple[str, ...] = tuple(chains)
        self.chains = dict(chains)
        object.__setattr__(self, "scorer", scorer)  # registered once, as heads.scorer
        self.losses = dict(losses)
        self.active: tuple[str, ...] = tuple(losses)

    def train(self, mode: bool = True) -> Distiller:
        """Switch the student and the KD heads to train mode (``mode``) or eval mode; never the teachers.

        The whole student module switches, its frozen parts included, as transformers' Trainer
        does: a checkpoint loaded with ``from_pretrained`` comes back in eval mode, and
        transformers recomputes a layer under activation checkpointing only while
        ``module.training`` holds. Train mode changes nothing else in a frozen part without
        dropout or batch norm (LLaVA-1.5's CLIP tower and Llama have neither by default).
        Teachers are plain attributes, not sub-modules, and stay in eval mode
        (:class:`~kdkit.teacher.FrozenTeacher` also refuses ``train()``).

        :meth:`kdkit.engine.trainer.Trainer.optimizer_step` puts the model in train mode before
        every optimizer step, and :meth:`~kdkit.engine.trainer.Trainer.fit` back in eval mode at
        the end.
        """
        return super().train(mode)

    @property
    def teachers(self) -> dict[str, nn.Module]:
        """The loaded teachers by name (a teacher served wholly from a cache is not loaded)."""
        return self.source.teachers

    @teachers.setter
    def teachers(self, teachers: Mapping[str, nn.Module]) -> None:
        self.source = OnlineTeachers(teachers)

    def teacher_pass(self, images: Tensor, step: StepContext, ids: Tensor | None = None) -> None:
        """Teacher outputs (online or cached, by sample ``ids``) and aligner chains -> grids, tokens ``I_i^T``,
        aligned ``Î_i^T`` (see :func:`kdkit.engine.teacher_pass.teacher_pass`)."""
        teacher_pass(self.source, self.chains, images, ids, step)

    def enable_checkpointing(self, forced_passes: bool = True) -> None:
        """Activation checkpointing: the student recomputes its layers in the backward (MoLA routes
        replayed), every aligner chain keeps only its outputs, and, when ``forced_passes``, each
        forced pass keeps only its output features.

        A forced pass under layer checkpointing still keeps every tower layer's input for the
        backward (``N_t`` passes x ``L_v`` layers x ``(B, m + 1, D)``); with ``forced_passes`` it
        keeps its ``(B, m, D)`` output and runs its forward once more in the backward, one teacher
        at a time, so at most one pass's layer inputs are alive then.

        Raises:
            KdkitError: the student cannot recompute its layers.
        """
        student = self.capabilities.checkpointing
        if student is None:
            raise KdkitError("activation checkpointing: the student does not support it (it has no "
                             "enable_gradient_checkpointing)")
        student.enable_gradient_checkpointing(checkpoint_context(self.capabilities.replay))
        for chain in self.chains.values():
            if isinstance(chain, AlignerChain):
                chain.checkpointed = True
        self.checkpoint_forced = forced_passes

    def forced_pass(self, images: Tensor, teachers: Sequence[str] | None = None) -> dict[str, Tensor]:
        """``(B, 3, H, W)`` -> ``{teacher: (B, m, D)}`` for every teacher expert (or those in ``teachers``):
        one pass over ``N_t * B`` images, or one pass per teacher where that is faster (:func:`forced_batching`)."""
        handles = list(self.capabilities.experts)
        if not handles:
            raise KdkitError("a loss reads step.student_forced (the student forced through each teacher's expert), "
                             "but no adapter has teacher experts; add a mola adapter or drop that loss")
        names = tuple(handles[0].teacher_names)
        experts = [k for k, name in enumerate(names) if teachers is None or name in teachers]
        order = tuple(names[k] for k in experts)
        if not forced_batching(images.device):
            return {names[k]: self._forced_encode(images, handles, k) for k in experts}
        batch = images.shape[0]
        index = torch.tensor(experts, device=images.device).repeat_interleave(batch)
        features = self._forced_encode(repeat(images, "b c h w -> (t b) c h w", t=len(order)), handles, index)
        chunks = rearrange(features, "(t b) m d -> t b m d", t=len(order))
        return {name: chunks[k] for k, name in enumerate(order)}

    def _forced_encode(self, images: Tensor, handles: list[Any], spec: int | Tensor) -> Tensor:
        """``(N, 3, H, W)`` -> ``(N, m, D)`` with every expert adapter forced by ``spec``; recomputed in the
        backward instead of kept when forced passes are checkpointed (:meth:`enable_checkpointing`)."""

        def encode(pixels: Tensor) -> Tensor:
            with routing(handles, spec):
                return self.plugin.encode(pixels)

        if self.checkpoint_forced and torch.is_grad_enabled():
            return checkpoint(encode, images, use_reentrant=False)
        return encode(images)

    def sample_forced(self) -> dict[str, float] | None:
        """This step's random ``k`` of the ``N_t`` teacher experts (``runtime.forced_teachers``), each with
        its weight ``N_t / k``, or None when every teacher's forced pass runs.

        Each teacher is drawn with probability ``k / N_t`` (uniform subsets, the global RNG), so a
        loss that sums ``N_t / k`` times its sampled teachers' terms is an unbiased estimate of its
        sum over all of them.
        """
        handles = list(self.capabilities.experts)
        if self.forced_teachers is None or not handles:
            return None
        names = tuple(handles[0].teacher_names)
        if self.forced_teachers >= len(names):
            return None
        chosen = torch.randperm(len(names))[: self.forced_teachers].sort().values.tolist()
        return {names[k]: len(names) / self.forced_teachers for k in chosen}

    def forward(self, batch: Mapping[str, Any]) -> tuple[dict[str, Tensor], StepContext]:
        """Batch -> (``{term: unweighted scalar}`` of the active losses, step context)."""
        images = batch["images"]
        step = StepContext(batch=batch, teacher_names=self.teacher_order, labels=batch.get("labels"))
        step.rows = distilled_rows(batch)
        kd_images = images if step.rows is None else images[step.rows]
        ids = batch.get("ids")
        kd_ids = ids if ids is None or step.rows is None else ids[step.rows.to(ids.device)]
        some = kd_images.shape[0] > 0
        if some:
            self.teacher_pass(kd_images, step, kd_ids)
        else:  # no teacher work at all; terms that read teacher outputs count 0 below
            step.teacher_grids = step.teacher_tokens = step.teacher_aligned = Absent()  # type: ignore[assignment]
            step.teacher_prefix = step.teacher_logits = step.scores = Absent()  # type: ignore[assignment]
        with routing(self.capabilities.routed, "routed"):
            out = self.plugin(batch)
        step.routers = [r for h in self.capabilities.routers for r in h.router_outputs()]
        step.task_loss, step.logits = out.task_loss, out.logits
        step.student_routed, step.text, step.text_mask = (
            t if t is None or step.rows is None else t[step.rows] for t in (out.features, out.text, out.text_mask))
        sampled = self.sample_forced()
        if sampled is not None:
            step.extras[FORCED_WEIGHTS] = sampled
        step.student_forced = (ForcedFeatures(lambda: self.forced_pass(kd_images, sampled)) if some  # type: ignore[assignment]
                               else Absent())
        if self.scorer is not None and some:
            step.scores = {name: self.scorer(step, name) for name in step.teacher_names}
        losses: dict[str, Tensor] = {}
        for name in self.active:
            try:
                losses[name] = self.losses[name](step)
            except NoDistilledSamples:  # a distillation term on a batch without any distilled sample
                losses[name] = torch.zeros((), device=images.device)
            except NonFiniteError as exc:  # the term found its own value non-finite: the guard decides
                step.extras.setdefault("nonfinite", {})[name] = str(exc)
                losses[name] = torch.full((), float("nan"), device=images.device)
        return losses, step


def distilled_rows(batch: Mapping[str, Any]) -> Tensor | None:
    """``(B_kd,)`` indices of the samples that get teacher work, or None when every sample does.

    A sample is distilled unless the batch marks it as having no image (``has_image`` False: a
    text-only conversation, whose placeholder image would only make blank-image targets).
    """
    has_image = batch.get("has_image")
    if has_image is None or bool(has_image.all()):
        return None
    return torch.nonzero(has_image, as_tuple=True)[0]

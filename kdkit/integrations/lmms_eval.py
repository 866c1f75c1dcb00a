"""The lmms-eval model ``kdkit``: a ``kdkit export`` student evaluated by lmms-eval (LMMs-Lab, 0.7.x).

lmms-eval finds the model through the ``lmms_eval.models`` entry point of kdkit's distribution
(:func:`manifest`); importing this module also registers it in lmms-eval's own model registry::

    lmms-eval --model kdkit --model_args export=runs/hawaii_7b/export --tasks textvqa_val --batch_size 8

``model_args``: ``export`` (the export directory, read with :func:`kdkit.load_student`),
``device`` (default: ``cuda`` when available, else ``cpu``), ``batch_size`` (default 1) and
``max_new_tokens`` (when given it replaces each task's own ``max_new_tokens``; a task without one
gets 32). lmms-eval's ``--batch_size`` and ``--device`` flags are passed to the model as the
same arguments: give each in one place only.

The student answers greedily through its ``generate`` (the feature path it was trained on), one
image per question: a document without an image gets the padding-colour image, a document with
several uses its first. ``loglikelihood`` scores the continuation's tokens (tokenized on their own,
as the ``llava_json`` data plugin tokenizes answers) after the conversation prompt of the context,
and returns their summed NEGATIVE log-likelihood: lmms-eval 0.7's ``multiple_choice`` tasks pick the
choice with the smallest value (its built-in models return a loss), so ``acc`` and ``acc_norm`` keep
their usual meaning. Its ``perplexity`` aggregation expects log-likelihoods instead: do not use it.

lmms-eval is an optional dependency: ``pip install "kdkit[lmms]"``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from kdkit.errors import KdkitError

#: How to install what this module needs.
INSTALL_HINT = 'pip install "kdkit[lmms]"'
#: The model name lmms-eval knows this model by (``--model kdkit``).
MODEL_NAME = "kdkit"
#: New tokens per answer when neither the model arguments nor the task give a number.
DEFAULT_MAX_NEW_TOKENS = 32


class MissingExtraError(KdkitError, ImportError):
    """An optional dependency of a kdkit integration is not installed."""


try:
    from lmms_eval.api import instance as _instance
    from lmms_eval.api.instance import Instance
    from lmms_eval.api.model import lmms
    from lmms_eval.api.registry import register_model
except ImportError as exc:
    raise MissingExtraError(f"the lmms-eval integration needs lmms-eval 0.7 ({exc}); "
                            f"install it with: {INSTALL_HINT}") from exc


def _scores_survive_evaluator() -> bool:
    """Whether lmms-eval's evaluator stores a ``(float, bool)`` model output as it is.

    lmms-eval 0.7.x passes every output through ``unwrap_generation_output``, which turns anything
    but text into ``str(output)``: multiple-choice scoring then fails on the string. A
    ``GenerationResult`` is unwrapped to its ``text`` untouched, so scores travel inside one there.
    """
    unwrap = getattr(_instance, "unwrap_generation_output", None)
    return unwrap is None or unwrap((0.0, True))[0] == (0.0, True)


#: Whether :meth:`KdkitModel.loglikelihood` returns plain pairs (else pairs inside ``GenerationResult``).
PLAIN_SCORES = _scores_survive_evaluator()


def _response(score: tuple[float, bool]) -> Any:
    """A loglikelihood pair as the installed evaluator keeps it intact (see :data:`PLAIN_SCORES`)."""
    return score if PLAIN_SCORES else _instance.GenerationResult(text=score)  # type: ignore[arg-type]


def manifest() -> Any:
    """The ``lmms_eval.models`` entry point: lmms-eval's manifest of the ``kdkit`` model."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, simple_class_path=f"{__name__}.KdkitModel")


def _positive_int(name: str, value: Any) -> int:
    """A model argument that must be a positive integer (lmms-eval passes strings or ints)."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or str(value).strip() != str(number):
        raise KdkitError(f"lmms-eval model kdkit: {name}={value!r} is not a positive integer")
    return number


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@register_model(MODEL_NAME)
class KdkitModel(lmms):
    """A student exported by ``kdkit export`` as an lmms-eval model (single process).

    Args:
        export: The export directory.
        device: Torch device the student runs on.
        batch_size: Questions (or continuations) per forward pass.
        max_new_tokens: When given, the answer length of every generation task.
        max_batch_size: Accepted for lmms-eval's ``--max_batch_size``; unused (no automatic batch size).

    Raises:
        CheckpointError: a missing or broken export (the message names the file), e.g. missing MoLA weights.
        KdkitError: a bad argument, or a student that cannot answer questions.
    """

    def __init__(self, export: str | None = None, device: str | None = None, batch_size: int | str | None = 1,
                 max_new_tokens: int | str | None = None, max_batch_size: int | None = None, **unknown: Any) -> None:
        super().__init__()
        del max_batch_size
        if unknown:
            raise KdkitError(f"lmms-eval model kdkit: unknown model_args {', '.join(sorted(unknown))} "
                             "(known: export, device, batch_size, max_new_tokens)")
        if not export:
            raise KdkitError("lmms-eval model kdkit: give the export directory, --model_args export=DIR "
                             "(written by `kdkit export RUN_DIR DIR`)")
        from kdkit.export import load_student

        self._device = torch.device(device or _default_device())
        self.batch_size = _positive_int("batch_size", 1 if batch_size is None else batch_size)
        self.max_new_tokens = None if max_new_tokens is None else _positive_int("max_new_tokens", max_new_tokens)
        self.export = Path(export)
        self.student = load_student(self.export, device=str(self._device))
        missing = [m for m in ("generate", "load_image") if not callable(getattr(self.student, m, None))]
        if missing:
            raise KdkitError(f"lmms-eval model kdkit: the student of {self.export} has no {' or '.join(missing)}: "
                             "only students that answer questions about images (llava) can be evaluated")
        self._warned: set[str] = set()

    @property
    def device(self) -> torch.device:
        """The device the student runs on."""
        return self._device

    # inputs -----------------------------------------------------------------------------------
    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            from loguru import logger

            logger.warning(f"kdkit: {message}")

    def _view(self, visual: Any, task: str) -> Tensor:
        """What ``doc_to_visual`` returned -> the student's view ``(1, 3, S, S)`` of its (first) image."""
        images = list(visual) if isinstance(visual, (list, tuple)) else [] if visual is None else [visual]
        if not images:
            self._warn_once(f"blank:{task}", f"{task}: documents without an image are answered with the "
                            "padding-colour image")
            return self._blank()
        if len(images) > 1:
            self._warn_once(f"many:{task}", f"{task}: the student takes one image per question; documents with "
                            f"several (here {len(images)}) use the first")
        return self._image(images[0], task)

    def _image(self, image: Any, task: str) -> Tensor:
        from PIL import Image

        if isinstance(image, (str, Path)) and Path(image).is_file():
            return self.student.load_image(image)
        if not isinstance(image, Image.Image):
            raise KdkitError(f"lmms-eval model kdkit: task {task} gives a {type(image).__name__} visual; "
                             "the student reads images only")
        buffer = io.BytesIO()  # lossless: the student prepares it exactly as it prepares an image file
        image.convert("RGB").save(buffer, format="PNG", compress_level=1)
        return self.student.load_image(buffer.getvalue())

    def _blank(self) -> Tensor:
        """The padding-colour image, as the data plugin gives text-only samples."""
        from kdkit_plugins.data._images import blank_image, color_bytes

        return blank_image(int(self.student.image_size), color_bytes(self.student.mean)).unsqueeze(0)

    def _doc(self, task: str, split: str, doc_id: int) -> Any:
        return self.task_dict[task][split][doc_id]

    # generation -------------------------------------------------------------------------------
    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Greedy answers, ``batch_size`` questions at a time, each cut at the first of its ``until`` strings."""
        answers: list[str | None] = [None] * len(requests)
        groups: dict[int, list[int]] = {}
        settings: list[tuple[int, list[str]]] = []
        for index, request in enumerate(requests):
            _, gen_kwargs, _, _, task, _ = request.args
            settings.append(self._generation_settings(dict(gen_kwargs or {}), task))
            groups.setdefault(settings[-1][0], []).append(index)
        progress = _progress(len(requests), "kdkit generate_until", self.rank)
        for max_new_tokens, indices in groups.items():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start:start + self.batch_size]
                views, prompts = [], []
                for index in chunk:
                    context, _, doc_to_visual, doc_id, task, split = requests[index].args
                    views.append(self._view(doc_to_visual(self._doc(task, split, doc_id)), task))
                    prompts.append(context)
                texts = self.student.generate(torch.cat(views).to(self.device), prompts, max_new_tokens=max_new_tokens)
                for index, text in zip(chunk, texts, strict=True):
                    answers[index] = cut(text, settings[index][1])
                    self.cache_hook.add_partial("generate_until", requests[index].args[:2], answers[index])
                progress.update(len(chunk))
        progress.close()
        return [a if a is not None else "" for a in answers]

    def _generation_settings(self, gen_kwargs: dict[str, Any], task: str) -> tuple[int, list[str]]:
        """A task's ``generation_kwargs`` -> (new tokens, stop strings); sampling settings are ignored."""
        until = gen_kwargs.get("until") or []
        if isinstance(until, str):
            until = [until]
        if not isinstance(until, (list, tuple)):
            raise KdkitError(f"lmms-eval model kdkit: {task}: until must be a string or a list, not {until!r}")
        sampling = float(gen_kwargs.get("temperature") or 0) > 0 or int(gen_kwargs.get("num_beams") or 1) > 1
        if gen_kwargs.get("do_sample") or sampling:
            self._warn_once(f"greedy:{task}", f"{task} asks for sampling or beam search; the student decodes greedily")
        if self.max_new_tokens is not None:
            tokens = self.max_new_tokens
        else:
            tokens = _positive_int("max_new_tokens", gen_kwargs.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
        return tokens, [str(s) for s in until if s]

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        """Not supported: the student answers one question per image and turn."""
        raise NotImplementedError("lmms-eval model kdkit: multi-round generation (generate_until_multi_round) is not "
                                  "supported; the student answers single-turn questions (generate_until) and scores "
                                  "continuations (loglikelihood)")

    # scoring ----------------------------------------------------------------------------------
    def loglikelihood(self, requests: list[Instance]) -> list[Any]:
        """``(-log P(continuation | image, context), continuation is the greedy one)`` per request, batched.

        The negative log-likelihood (a loss, smaller is likelier) is what lmms-eval 0.7's multiple-choice
        scoring expects: it takes the choice with the smallest value. Each pair comes inside a
        ``GenerationResult`` where the evaluator would otherwise turn it into text (:data:`PLAIN_SCORES`).
        """
        from kdkit_plugins.students.llava import LlavaStudent

        if not isinstance(self.student, LlavaStudent):
            raise NotImplementedError(f"lmms-eval model kdkit: loglikelihood needs a llava student, not "
                                      f"{type(self.student).__name__}")
        results: list[Any] = []
        progress = _progress(len(requests), "kdkit loglikelihood", self.rank)
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start:start + self.batch_size]
            views, contexts, continuations = [], [], []
            for request in chunk:
                view, context, continuation = self._scoring_inputs(request.args)
                views.append(view)
                contexts.append(context)
                continuations.append(continuation)
            scores = continuation_logprobs(self.student, torch.cat(views).to(self.device), contexts, continuations)
            losses = [(-logprob, greedy) for logprob, greedy in scores]
            for request, loss in zip(chunk, losses, strict=True):
                self.cache_hook.add_partial("loglikelihood", request.args[:2], loss)
            results += [_response(loss) for loss in losses]
            progress.update(len(chunk))
        progress.close()
        return results

    def _scoring_inputs(self, args: Sequence[Any]) -> tuple[Tensor, str, str]:
        """A loglikelihood request's arguments -> (view, context, continuation)."""
        if len(args) == 2:  # acc_mutual_info's unconditional request: no document, no image
            return self._blank(), str(args[0]), str(args[1])
        context, target, doc_to_visual, doc_id, task, split = args
        doc = self._doc(task, split, doc_id)
        continuation = target if isinstance(target, str) else target(doc)
        if isinstance(continuation, (list, tuple)):
            continuation = continuation[0]
        return self._view(doc_to_visual(doc), task), context, str(continuation)


def cut(text: str, until: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any stop string (all of it when none occurs)."""
    for stop in until:
        text = text.split(stop, 1)[0]
    return text


@torch.no_grad()
def continuation_logprobs(student: Any, views: Tensor, contexts: Sequence[str],
                          continuations: Sequence[str]) -> list[tuple[float, bool]]:
    """Views ``(B, 3, S, S)`` + contexts + continuations -> (sum of the continuation's token log-probs, greedy?).

    The context becomes the student's conversation prompt (``generate``'s); the continuation is
    tokenized on its own (no special tokens) and appended. Rows are left-padded, so only the last
    ``max(len(continuation)) + 1`` positions' logits are computed.
    """
    from kdkit_plugins.students._llava_generate import left_pad, pad_id, prompt_ids

    tokenizer = student.tokenizer
    targets = [list(tokenizer(c, add_special_tokens=False)["input_ids"]) if c else [] for c in continuations]
    rows = [prompt_ids(student, context) + target for context, target in zip(contexts, targets, strict=True)]
    ids, mask = left_pad(rows, pad_id(tokenizer), views.device)
    has_image = torch.ones(len(rows), dtype=torch.bool, device=views.device)
    _, embeds = student.embed(student.select(views), ids, has_image)
    keep = max(len(t) for t in targets) + 1
    position_ids = (mask.cumsum(-1) - 1).clamp_min(0)
    logits = student.model(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids,
                           logits_to_keep=keep).logits.float()
    logprobs = logits[:, -keep:].log_softmax(-1)
    results = []
    for row, target in enumerate(targets):
        if not target:
            results.append((0.0, True))
            continue
        span = logprobs[row, keep - len(target) - 1:keep - 1]  # position t predicts token t + 1
        wanted = torch.tensor(target, device=span.device)
        total = span.gather(-1, wanted[:, None]).sum()
        results.append((float(total), bool(torch.equal(span.argmax(-1), wanted))))
    return results


def _progress(total: int, description: str, rank: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=description, disable=rank != 0)


__all__ = ["DEFAULT_MAX_NEW_TOKENS", "INSTALL_HINT", "KdkitModel", "MODEL_NAME", "MissingExtraError", "PLAIN_SCORES",
           "continuation_logprobs", "cut", "manifest"]


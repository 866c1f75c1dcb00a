"""What the model benchmarks share: data blocks built through the registry, batches of labelled
images, and the student's routed, gradient-free passes (logits, pooled backbone features).

Used by ``classification``, ``knn_probe`` / ``linear_probe`` and ``feature_fidelity``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from kdkit.errors import DataError, KdkitError
from kdkit.interfaces import BuildContext, EvalSubject

#: How backbone tokens ``(B, m, D)`` become one vector per image.
Pool = Literal["mean", "cls", "none"]


def registry_of(context: BuildContext) -> Any:
    """The registry an engine passed in ``context.extras["registry"]``, else every installed plugin."""
    registry = context.extras.get("registry")
    if registry is not None:
        return registry
    from kdkit.plugins import get_registry

    return get_registry()


def build_data(benchmark: str, field: str, block: Mapping[str, Any], context: BuildContext) -> Dataset:
    """The dataset a data block names (e.g. ``{"kind": "digits", "split": "test"}``), built without a student.

    Args:
        benchmark: The benchmark's name (for messages).
        field: The config field holding the block (``data``, ``train``, ``test``).
        block: The data-plugin block.
        context: The benchmark's build context (its ``data_root`` resolves the block's paths).

    Raises:
        DataError: the block builds an empty dataset.
    """
    data_context = BuildContext(name=f"{benchmark}.{field}", data_root=context.data_root, device=context.device)
    dataset = registry_of(context).build("data", dict(block), data_context)
    if len(dataset) == 0:
        raise DataError(f"{benchmark}: {field} data block {dict(block)} holds no sample")
    return dataset


def labelled_batches(benchmark: str, dataset: Dataset, batch_size: int, device: str) -> Iterator[tuple[Tensor, Tensor]]:
    """``(images (B, 3, H, W) on device, labels (B,) long on the CPU)`` in dataset order.

    Raises:
        DataError: a batch without ``images`` or ``labels``.
    """
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=getattr(dataset, "collate", None))
    for batch in loader:
        for key in ("images", "labels"):
            if not isinstance(batch, Mapping) or key not in batch:
                held = ", ".join(batch) if isinstance(batch, Mapping) else type(batch).__name__
                raise DataError(f"{benchmark}: the data yields batches without {key!r} (holds: {held}); "
                                "use a labelled image data plugin (digits, synthetic, image_folder...)")
        yield batch["images"].to(device), torch.as_tensor(batch["labels"]).long().cpu()


@contextlib.contextmanager
def routed(subject: EvalSubject) -> Iterator[None]:
    """Inside: no gradients, the student's model in eval mode, every adapter routing every token."""
    from kdkit.engine.step import routing

    model = getattr(subject.student, "model", None)
    if model is not None:
        model.eval()
    with torch.no_grad(), routing(list(subject.adapters.values()), "routed"):
        yield


def logits_of(benchmark: str, subject: EvalSubject, images: Tensor) -> Tensor:
    """``(B, K)`` float logits of ``subject.student({"images": images})`` (call inside :func:`routed`).

    Raises:
        KdkitError: the student returns no logits, or not one row per image.
    """
    logits = subject.student({"images": images}).logits
    if logits is None:
        raise KdkitError(f"{benchmark}: the {type(subject.student).__name__} student returns no logits; "
                         "classification needs a classifier student (e.g. timm with model_kwargs.num_classes)")
    if logits.ndim != 2 or logits.shape[0] != images.shape[0]:
        raise KdkitError(f"{benchmark}: the student's logits have shape {tuple(logits.shape)}, expected "
                         f"({images.shape[0]}, classes)")
    return logits.float()


def pool_tokens(benchmark: str, tokens: Tensor, pool: Pool, prefix_tokens: int = 0, grid_tokens: int | None = None) -> Tensor:
    """Backbone output -> one vector per image ``(B, D')``.

    Args:
        benchmark: The benchmark's name (for messages).
        tokens: ``(B, m, D)`` tokens (or ``(B, D)``: already one vector per image, kept as it is).
        pool: ``mean``: mean over the grid tokens (prefix tokens left out when the output holds
            them); ``cls``: the first prefix token; ``none``: every token concatenated ``(B, m*D)``.
        prefix_tokens: Prefix tokens (CLS, registers) the student declares in its feature grid.
        grid_tokens: Grid tokens it declares (``height * width``), when known.

    Raises:
        KdkitError: ``cls`` on an output without a CLS token, or an output that is not 2-D / 3-D.
    """
    if tokens.ndim == 2:
        if pool == "cls":
            raise KdkitError(f"{benchmark}: pool 'cls' needs tokens, but the student's encode returns one vector "
                             f"per image {tuple(tokens.shape)}; use pool 'mean' or 'none'")
        return tokens
    if tokens.ndim != 3:
        raise KdkitError(f"{benchmark}: the student's encode returns shape {tuple(tokens.shape)}, expected (B, m, D)")
    holds_prefix = prefix_tokens > 0 and grid_tokens is not None and tokens.shape[1] == grid_tokens + prefix_tokens
    if pool == "cls":
        if not holds_prefix:
            raise KdkitError(f"{benchmark}: pool 'cls' needs a CLS token, but the student's encode returns "
                             f"{tokens.shape[1]} tokens and declares {prefix_tokens} prefix tokens over a grid of "
                             f"{grid_tokens}; use pool 'mean'")
        return tokens[:, 0]
    if pool == "none":
        return tokens.flatten(1)
    return (tokens[:, prefix_tokens:] if holds_prefix else tokens).mean(1)


def features_of(benchmark: str, subject: EvalSubject, dataset: Dataset, batch_size: int, pool: Pool) -> tuple[Tensor, Tensor]:
    """Frozen backbone features of every sample: ``(N, D')`` float32 and labels ``(N,)``, on the CPU.

    ``subject.student.encode(images)`` with the adapters routed, pooled by :func:`pool_tokens`.
    """
    spec = getattr(subject.student, "feature_spec", None)
    prefix = int(getattr(spec, "prefix_tokens", 0) or 0)
    grid = int(spec.tokens) if spec is not None else None
    features, labels = [], []
    with routed(subject):
        for images, batch_labels in labelled_batches(benchmark, dataset, batch_size, subject.device):
            tokens = subject.student.encode(images)
            features.append(pool_tokens(benchmark, tokens, pool, prefix, grid).float().cpu())
            labels.append(batch_labels)
    return torch.cat(features), torch.cat(labels)

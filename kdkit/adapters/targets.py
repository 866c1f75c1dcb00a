"""Find injection targets by ``re.fullmatch`` on module names, replace them, freeze the rest."""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from kdkit.errors import KdkitError

_LISTED = 24  # candidate names shown in an error message


def _candidates(model: nn.Module, kind: type[nn.Module] | None = None) -> str:
    """Module names (of one type, when given) with layer numbers folded to ``N``, for errors."""
    names = [n for n, m in model.named_modules() if n and (kind is None or isinstance(m, kind))]
    names = list(dict.fromkeys(re.sub(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.|$)", "N", n) for n in names))
    shown = ", ".join(names[:_LISTED])
    more = f", ... ({len(names) - _LISTED} more)" if len(names) > _LISTED else ""
    return shown + more if names else "none"


def match_modules(model: nn.Module, patterns: Sequence[str], *, what: str = "target") -> list[str]:
    """Names of the sub-modules of ``model`` whose full name matches one of ``patterns``.

    Args:
        model: The model to search.
        patterns: Regular expressions, each matched with :func:`re.fullmatch` against module
            names as :meth:`nn.Module.named_modules` gives them (``encoder.layers.0.mlp``).
        what: How the error message calls a match (``"block"``, ``"target"``).

    Raises:
        KdkitError: an invalid pattern, or nothing matches (the message lists candidate names).
    """
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise KdkitError(f"{what} pattern {pattern!r} is not a valid regular expression: {exc}") from None
    names = [n for n, _ in model.named_modules() if n and any(c.fullmatch(n) for c in compiled)]
    if not names:
        raise KdkitError(
            f"no module of {type(model).__name__} matches the {what} patterns {list(patterns)} "
            f"(re.fullmatch on full names); candidates: {_candidates(model)}"
        )
    return names


def match_linears(model: nn.Module, patterns: Sequence[str], *, what: str = "target") -> list[str]:
    """Like :func:`match_modules`, but every match must be an :class:`nn.Linear`.

    Raises:
        KdkitError: nothing matches, or a match is not an ``nn.Linear`` (its type is named and
            the Linear modules of the model are listed).
    """
    names = match_modules(model, patterns, what=what)
    for name in names:
        module = model.get_submodule(name)
        if not isinstance(module, nn.Linear):
            raise KdkitError(
                f"{what} {name!r} is a {type(module).__name__}, not an nn.Linear; narrow the patterns "
                f"{list(patterns)} to Linear layers, e.g. one of: {_candidates(model, nn.Linear)}"
            )
    return names


def child_linear(block: nn.Module, block_name: str, patterns: Sequence[str], *, role: str) -> str:
    """Name (relative to ``block``) of the ONE Linear child of a block matching ``patterns``.

    Raises:
        KdkitError: no match, several matches, or a match that is not an ``nn.Linear``.
    """
    compiled = [re.compile(p) for p in patterns]
    names = [n for n, _ in block.named_modules() if n and any(c.fullmatch(n) for c in compiled)]
    if len(names) != 1:
        found = "nothing" if not names else f"{len(names)} modules ({', '.join(names)})"
        raise KdkitError(
            f"{role} patterns {list(patterns)} match {found} in block {block_name!r}; they must match "
            f"exactly one Linear; the block's modules are: {_candidates(block)}"
        )
    module = block.get_submodule(names[0])
    if not isinstance(module, nn.Linear):
        raise KdkitError(
            f"{role} {block_name}.{names[0]} is a {type(module).__name__}, not an nn.Linear; "
            f"the block's Linear modules are: {_candidates(block, nn.Linear)}"
        )
    return names[0]


def check_rank(rank: int, in_features: int, out_features: int, name: str) -> None:
    """Raise :class:`KdkitError` unless ``0 < rank <= min(in_features, out_features)``."""
    width = min(in_features, out_features)
    if not 0 < rank <= width:
        raise KdkitError(
            f"rank {rank} does not fit {name!r} ({in_features} -> {out_features}); "
            f"use a rank between 1 and {width}"
        )


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at the dotted path ``name`` inside ``model`` (the root itself cannot be replaced)."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def freeze(model: nn.Module) -> None:
    """Set ``requires_grad=False`` on every parameter of ``model`` (the base, before injection)."""
    for param in model.parameters():
        param.requires_grad_(False)


def unwrap(module: nn.Module) -> nn.Module:
    """The original module inside an injected wrapper, with wrappers nested in it unwrapped too.

    A wrapper keeps the module it replaced as ``base_layer`` (peft's convention); the original is
    returned with its current weights (merged LoRA weights stay merged). A module that is no
    wrapper comes back itself, its wrapped children restored in place.
    """
    for name, child in list(module.named_children()):
        restored = unwrap(child)
        if restored is not child:
            setattr(module, name, restored)
    base = getattr(module, "base_layer", None)
    return base if isinstance(base, nn.Module) else module

"""Safe checkpoint reading for frozen teachers: safetensors or ``torch.load(weights_only=True)``.

Every failure (missing file, corrupt file, a pickle that would run code, a state dict of another
architecture or size) raises :class:`~kdkit.errors.CheckpointError` naming the teacher, the file
and the reason, so a user sees at once which recipe value to fix.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdkit.errors import CheckpointError

if TYPE_CHECKING:
    from torch import Tensor, nn

    from kdkit.interfaces import BuildContext

__all__ = ["checkpoint_error", "find_checkpoint", "load_into", "mismatch_report", "read_state_dict", "require_path",
           "resolve_checkpoint", "strip_prefix"]

#: Keys under which training scripts commonly nest the weights of a checkpoint.
_NESTING_KEYS = ("state_dict", "model", "module", "model_state_dict")
#: File suffixes searched for in a checkpoint directory, most preferred first.
_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
#: How many mismatching keys a report lists.
_SHOWN = 5


def checkpoint_error(teacher: str, path: Path | str, reason: str) -> CheckpointError:
    """A :class:`CheckpointError` whose message names the teacher, the file and the reason."""
    return CheckpointError(f"teacher {teacher!r}: checkpoint {str(path)!r}: {reason}")


def resolve_checkpoint(value: str, context: BuildContext) -> Path:
    """The recipe's ``checkpoint`` resolved against the data root; it must be set and exist."""
    if not value.strip():
        raise CheckpointError(f"teacher {context.name!r}: no `checkpoint` given; set it to the local weights "
                              "file or model directory (relative paths are resolved against the data root)")
    return require_path(context.resolve(value), context.name)


def require_path(path: Path | str, teacher: str) -> Path:
    """``path`` as a :class:`Path`; :class:`CheckpointError` when nothing is there."""
    path = Path(path)
    if not path.exists():
        raise checkpoint_error(teacher, path, "no such file or directory; check the teacher's `checkpoint` "
                               "(relative paths are resolved against the data root)")
    return path


def find_checkpoint(directory: Path, teacher: str) -> Path:
    """The single weights file in ``directory`` (safetensors preferred over pickles)."""
    for suffix in _SUFFIXES:
        found = sorted(directory.glob(f"*{suffix}"))
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise checkpoint_error(teacher, directory, f"holds several {suffix} files ({names}); name one")
    raise checkpoint_error(teacher, directory, f"holds no weights file ({', '.join(_SUFFIXES)})")


def read_state_dict(path: Path | str, teacher: str) -> dict[str, Tensor]:
    """Read a flat ``{name: tensor}`` state dict from a file, refusing anything unsafe.

    Safetensors files are read with :mod:`safetensors`; anything else with
    ``torch.load(weights_only=True)``, which refuses pickles that need code execution. Weights
    nested under ``state_dict``/``model``/``module`` are unwrapped and a DDP ``module.`` prefix
    is removed.

    Raises:
        CheckpointError: missing, corrupt, unsafe or not holding tensors.
    """
    path = require_path(path, teacher)
    if path.is_dir():
        path = find_checkpoint(path, teacher)
    raw = _read_safetensors(path, teacher) if path.suffix == ".safetensors" else _read_pickle(path, teacher)
    return _flatten(raw, path, teacher)


def _read_safetensors(path: Path, teacher: str) -> Any:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types and OSError
        raise checkpoint_error(teacher, path, f"not a readable safetensors file ({exc}); the file is "
                               "corrupt or truncated, re-download or re-save it") from None


def _read_pickle(path: Path, teacher: str) -> Any:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        detail = next((line for line in lines if "GLOBAL" in line or "Unsupported global" in line), None)
        if detail is not None:  # the pickle names a class or function it would import and call
            raise checkpoint_error(teacher, path, "refused: this pickle needs to run code to load "
                                   f"({detail.strip()}). kdkit reads checkpoints with weights_only=True "
                                   "only; re-save the weights as a plain state dict "
                                   "(torch.save(model.state_dict(), ...)) or as safetensors") from None
        reason = next((line for line in lines if "Unsupported" in line), lines[0]).strip()
        raise checkpoint_error(teacher, path, f"not a readable PyTorch checkpoint ({reason}); the file is corrupt "
                               "or was not written by torch.save, re-download or re-save it") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise checkpoint_error(teacher, path, f"not a readable PyTorch checkpoint ({reason}); the file is "
                               "corrupt or truncated, re-download or re-save it") from None


def _flatten(raw: Any, path: Path, teacher: str) -> dict[str, Tensor]:
    import torch

    while isinstance(raw, Mapping) and not _all_tensors(raw.values()):
        nested = [k for k in _NESTING_KEYS if isinstance(raw.get(k), Mapping)]
        if not nested:
            break
        raw = raw[nested[0]]
    if not isinstance(raw, Mapping) or not raw:
        raise checkpoint_error(teacher, path, f"holds a {type(raw).__name__}, not a state dict of tensors")
    state = {str(k): v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise checkpoint_error(teacher, path, "holds no tensors")
    if all(k.startswith("module.") for k in state):  # saved from a DistributedDataParallel wrapper
        state = strip_prefix(state, "module.")
    return state


def _all_tensors(values: Iterable[Any]) -> bool:
    import torch

    return all(isinstance(v, torch.Tensor) for v in values)


def strip_prefix(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of ``state`` under ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def mismatch_report(module: nn.Module, state: Mapping[str, Tensor]) -> str | None:
    """Missing keys, unexpected keys and shape mismatches of ``state`` against ``module``, or None."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    parts = []
    for label, items in (("shape mismatches", shapes), ("missing keys", missing), ("unexpected keys", unexpected)):
        if items:
            more = f" (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
            parts.append(f"{len(items)} {label}: " + "; ".join(items[:_SHOWN]) + more)
    return "; ".join(parts) if parts else None


def load_into(module: nn.Module, state: Mapping[str, Tensor], teacher: str, path: Path | str,
              hint: str = "") -> None:
    """Load ``state`` into ``module`` strictly, or explain precisely why it does not fit.

    Args:
        module: The freshly built model.
        state: Its weights, e.g. from :func:`read_state_dict`.
        teacher: The teacher's name (for the message).
        path: The file the weights came from (for the message).
        hint: What the user may have got wrong (e.g. ``"model='ViT-L-14-336'"``).

    Raises:
        CheckpointError: keys or shapes differ (the first mismatches are listed).
    """
    report = mismatch_report(module, state)
    if report is not None:
        where = f" built with {hint}" if hint else ""
        raise checkpoint_error(teacher, path, f"does not fit the model{where} -- is it a checkpoint of "
                               f"another architecture or size? {report}")
    module.load_state_dict(dict(state), strict=True)

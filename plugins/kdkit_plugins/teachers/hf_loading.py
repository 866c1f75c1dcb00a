"""Loading transformers vision encoders from local ``save_pretrained`` directories, strictly.

``from_pretrained`` only warns when weights are missing (they are silently random-initialised);
a teacher must never run on random weights, so every missing or mismatched key is an error here.
A directory of a larger model (a full ``CLIPModel``, a Pix2Struct image-to-text model) works: the
prefix its vision part lives under is found from the key names and mapped away.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from torch import nn

from kdkit.weights import checkpoint_error

_SHOWN = 5


def _vision_prefix(missing: Iterable[str], unexpected: Iterable[str]) -> str | None:
    """The prefix ``p`` such that every missing key ``k`` is present as ``p + k``, or None."""
    missing, unexpected = sorted(missing), set(unexpected)
    if not missing:
        return None
    key = missing[0]
    for candidate in sorted({u[: -len(key)] for u in unexpected if u.endswith(key) and u != key}, key=len):
        if all(candidate + k in unexpected for k in missing):
            return candidate
    return None


def read_json_file(directory: Path, name: str, teacher: str, what: str) -> dict[str, Any]:
    """``directory/name`` parsed, or a :class:`CheckpointError` naming the directory and the expected file."""
    path = directory / name
    if not path.is_file():
        raise checkpoint_error(teacher, directory, f"has no {name} ({what}); give the folder written by "
                               "save_pretrained (config.json + weights)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise checkpoint_error(teacher, path, f"is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise checkpoint_error(teacher, path, f"must hold a JSON object, not {type(data).__name__}")
    return data


def load_vision_model(model_class: Any, directory: Path, teacher: str) -> nn.Module:
    """``model_class.from_pretrained(directory)`` offline, raising :class:`CheckpointError` on any bad key."""
    from transformers.utils import logging as hf_logging

    if not directory.is_dir():
        raise checkpoint_error(teacher, directory, f"must be a directory written by {model_class.__name__}"
                               ".save_pretrained (config.json + weights)")
    read_json_file(directory, "config.json", teacher, "the model's configuration")

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report is replaced by the strict check below
    try:
        model, info = model_class.from_pretrained(directory, local_files_only=True, output_loading_info=True)
        prefix = _vision_prefix(info["missing_keys"], info["unexpected_keys"])
        if prefix:
            mapping = {f"^{re.escape(prefix)}": ""}
            model, info = model_class.from_pretrained(directory, local_files_only=True, output_loading_info=True,
                                                      key_mapping=mapping)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError) as exc:  # a config of another model
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise checkpoint_error(teacher, directory, f"not a loadable {model_class.__name__} directory ({reason}); "
                               "give the folder written by save_pretrained (config.json + weights)") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    problems = []
    for label in ("mismatched_keys", "missing_keys"):
        keys = sorted(str(k) for k in info.get(label, ()))
        if keys:
            more = f" (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
            problems.append(f"{len(keys)} {label.replace('_', ' ')}: " + "; ".join(keys[:_SHOWN]) + more)
    if problems:
        raise checkpoint_error(teacher, directory, f"does not fit {model_class.__name__} -- is it a checkpoint of "
                               "another architecture or size? " + "; ".join(problems))
    return model


def processor_settings(directory: Path, teacher: str = "teacher") -> dict[str, Any]:
    """The ``preprocessor_config.json`` saved beside the model, or ``{}``; a broken one is an error naming it."""
    if not (directory / "preprocessor_config.json").is_file():
        return {}
    return read_json_file(directory, "preprocessor_config.json", teacher, "image preprocessing")

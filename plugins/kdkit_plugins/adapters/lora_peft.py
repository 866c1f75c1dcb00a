"""A plain LoRA adapter in peft's on-disk format (``adapter_config.json`` + ``adapter_model.safetensors``),
so ``peft.PeftModel.from_pretrained(base_model, directory)`` applies it to the exported base model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from kdkit.errors import KdkitError


def module_prefix(root: nn.Module, part: nn.Module) -> str:
    """The dotted name of ``part`` inside ``root`` followed by ``"."`` (``""`` when ``part`` is ``root``)."""
    for name, module in root.named_modules():
        if module is part:
            return f"{name}." if name else ""
    raise KdkitError(f"peft export: the adapted {type(part).__name__} is not a sub-module of {type(root).__name__}")


def save_peft(handle: Any, root: nn.Module, directory: str | Path, base_model: str | None = None) -> Path:
    """Write ``handle`` (a plain LoRA, injected into a sub-module of ``root``) in peft's format.

    peft names a target ``base_model.model.<module path in root>`` and stores ``lora_A.weight``
    ``(r, in)`` and ``lora_B.weight`` ``(out, r)`` (kdkit keeps ``lora_B`` as ``(r, out)``); its
    scaling is ``lora_alpha / r`` as here.

    Args:
        handle: The LoRA adapter handle (modules still injected).
        root: The model peft will wrap (e.g. the whole ``LlavaForConditionalGeneration``).
        directory: Where to write (created).
        base_model: Recorded as ``base_model_name_or_path``.
    """
    from safetensors.torch import save_file

    prefix = module_prefix(root, handle.model)
    config = handle.config
    alpha = config.alpha if config.alpha is not None else float(config.rank)
    tensors, targets = {}, []
    for name, module in handle.modules.items():
        full = prefix + name
        targets.append(full)
        tensors[f"base_model.model.{full}.lora_A.weight"] = module.lora_A.detach().cpu().contiguous()
        tensors[f"base_model.model.{full}.lora_B.weight"] = module.lora_B.detach().t().cpu().contiguous()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})
    peft_config = {"peft_type": "LORA", "r": config.rank, "lora_alpha": alpha, "lora_dropout": config.dropout,
                   "target_modules": sorted(targets), "bias": "none", "fan_in_fan_out": False,
                   "base_model_name_or_path": base_model, "task_type": None, "inference_mode": True}
    (directory / "adapter_config.json").write_text(json.dumps(peft_config, indent=2), encoding="utf-8")
    return directory

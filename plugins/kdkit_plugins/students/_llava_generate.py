"""Answering questions about images with a LLaVA student: prompts in the student's conversation
template (the ``llava_json`` templates), the training feature path, greedy decoding (Liu et al., 2024).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from einops import rearrange
from torch import Tensor

from kdkit.errors import DataError

if TYPE_CHECKING:
    from kdkit_plugins.students.llava import LlavaStudent

IMAGE = "<image>"


def prompt_ids(student: LlavaStudent, question: str) -> list[int]:
    """One question -> token ids of the template's prompt up to where the answer starts (image expanded).

    The question gets LLaVA's ``"<image>\\n"`` in front when it has no placeholder.
    """
    from kdkit_plugins.data.conversation import get_template

    if IMAGE not in question:
        question = f"{IMAGE}\n{question}"
    pieces = get_template(student.template).format([("human", question), ("gpt", "")], True)
    answer = next((i for i, piece in enumerate(pieces) if piece.train), len(pieces))
    tokenizer = student.tokenizer
    ids: list[int] = []
    for piece in pieces[:answer]:
        if piece.kind == "bos":
            ids.append(tokenizer.bos_token_id)
        elif piece.kind == "eos":
            ids.append(tokenizer.eos_token_id)
        elif piece.kind == "image":
            ids += [student.image_token_id] * student.image_tokens
        else:
            ids += tokenizer(piece.text, add_special_tokens=False).input_ids
    return ids


def load_image(path: str | Path, size: int, pad_color: tuple[float, ...]) -> Tensor:
    """An image file -> ``(1, 3, size, size)`` in [0, 1], padded to square with ``pad_color`` (LLaVA-1.5's "pad")."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"cannot read image {str(path)!r}: {exc}") from None
    side = max(image.size)
    square = Image.new("RGB", (side, side), tuple(round(255 * c) for c in pad_color))
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    square = square.resize((size, size), Image.Resampling.BICUBIC)
    pixels = torch.frombuffer(bytearray(square.tobytes()), dtype=torch.uint8).view(size, size, 3)
    return rearrange(pixels, "h w c -> 1 c h w").float() / 255


def left_pad(rows: list[list[int]], pad: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Token rows -> left-padded ids ``(B, L)`` and attention mask ``(B, L)`` (generation continues on the right)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long, device=device)
        mask[i, width - len(row):] = 1
    return ids, mask


@torch.no_grad()
def greedy(student: LlavaStudent, images: Tensor, prompts: list[str], max_new_tokens: int = 32) -> list[str]:
    """``(B, 3, S, S)`` views in [0, 1] + B questions -> B answers, greedy, stopping at ``</s>``."""
    if images.shape[0] != len(prompts):
        raise ValueError(f"generate: {images.shape[0]} images but {len(prompts)} prompts")
    tokenizer = student.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids, mask = left_pad([prompt_ids(student, p) for p in prompts], pad, images.device)
    has_image = torch.ones(len(prompts), dtype=torch.bool, device=images.device)
    _, embeds = student.embed(student.select(images), ids, has_image)
    position_ids = (mask.cumsum(-1) - 1).clamp_min(0)
    generated: Any = student.model.generate(
        inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, max_new_tokens=max_new_tokens,
        do_sample=False, num_beams=1, eos_token_id=tokenizer.eos_token_id, pad_token_id=pad)
    return [text.strip() for text in tokenizer.batch_decode(generated, skip_special_tokens=True)]

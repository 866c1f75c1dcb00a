"""Answering questions about images with a LLaVA student: prompts in the student's conversation
template (the ``llava_json`` templates), the training feature path, greedy decoding (Liu et al., 2024).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from kdkit.errors import DataError

if TYPE_CHECKING:
    from kdkit_plugins.students.llava import LlavaStudent


def prompt_ids(student: LlavaStudent, question: str) -> list[int]:
    """One question -> token ids of the template's prompt up to where the answer starts (image expanded).

    The pieces are the ``llava_json`` templates' generation prompt, tokenized exactly as that data
    plugin tokenizes training samples (``<image>`` goes first, added when the question has none).
    """
    from kdkit_plugins.data._encoding import Vocabulary
    from kdkit_plugins.data.conversation import get_template, prompt_pieces

    tokenizer = student.tokenizer
    vocab = Vocabulary(tokenizer, tokenizer.bos_token_id, tokenizer.eos_token_id, pad_id(tokenizer),
                       student.image_token_id, student.image_tokens)
    pieces = prompt_pieces(get_template(student.template), question, has_image=True)
    return [i for piece in pieces for i in vocab.ids(piece)]


def pad_id(tokenizer: Any) -> int:
    """The tokenizer's pad id (its eos id when it has none)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def load_image(source: str | Path | bytes, size: int, pad_color: tuple[float, float, float]) -> Tensor:
    """An image file (path or encoded bytes) -> ``(1, 3, size, size)`` in [0, 1], padded to square with
    ``pad_color`` like training data."""
    import io

    from kdkit_plugins.data._images import color_bytes
    from kdkit_plugins.data._images import load_image as load

    if isinstance(source, bytes):
        return load(io.BytesIO(source), size, color_bytes(pad_color)).unsqueeze(0)  # type: ignore[arg-type]
    if not Path(source).is_file():
        raise DataError(f"image {str(source)!r} does not exist")
    return load(Path(source), size, color_bytes(pad_color)).unsqueeze(0)


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
    pad = pad_id(tokenizer)
    ids, mask = left_pad([prompt_ids(student, p) for p in prompts], pad, images.device)
    has_image = torch.ones(len(prompts), dtype=torch.bool, device=images.device)
    _, embeds = student.embed(student.select(images), ids, has_image)
    position_ids = (mask.cumsum(-1) - 1).clamp_min(0)
    generated: Any = student.model.generate(
        inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, max_new_tokens=max_new_tokens,
        do_sample=False, num_beams=1, eos_token_id=tokenizer.eos_token_id, pad_token_id=pad)
    return [text.strip() for text in tokenizer.batch_decode(generated, skip_special_tokens=True)]

"""Template pieces -> token ids, labels and instruction mask, one piece at a time (LLaVA-1.5 masking).

Each piece is tokenized on its own, so which tokens are labels or instruction is known exactly,
without LLaVA's count-the-tokens-of-each-round bookkeeping.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from kdkit_plugins.data.conversation import Piece

IGNORE = -100


@dataclass(frozen=True)
class Vocabulary:
    """The token ids the encoder needs.

    Attributes:
        tokenizer: A transformers tokenizer (only ``__call__`` with ``add_special_tokens=False`` is used).
        bos: Beginning-of-sequence id (None: the tokenizer has none and sequences start without it).
        eos: End-of-sequence id.
        pad: Padding id.
        image: Id of the image placeholder token.
        image_tokens: Copies of ``image`` one ``<image>`` becomes.
    """

    tokenizer: Any
    bos: int | None
    eos: int
    pad: int
    image: int
    image_tokens: int

    def ids(self, piece: Piece) -> list[int]:
        """Token ids of one piece."""
        if piece.kind == "bos":
            return [] if self.bos is None else [self.bos]
        if piece.kind == "eos":
            return [self.eos]
        if piece.kind == "image":
            return [self.image] * self.image_tokens
        return list(self.tokenizer(piece.text, add_special_tokens=False)["input_ids"])


def encode(pieces: Sequence[Piece], vocab: Vocabulary, max_length: int | None) -> dict[str, torch.Tensor]:
    """Pieces -> ``input_ids``, ``labels`` (``-100`` off the trained pieces), ``instruction_mask`` ``(L,)``.

    Truncation keeps the first ``max_length`` tokens (LLaVA cuts the end too). An image block
    that would be cut keeps none of its tokens, and ``has_image`` becomes False.
    """
    ids: list[int] = []
    labels: list[int] = []
    instruction: list[bool] = []
    has_image = False
    for piece in pieces:
        tokens = vocab.ids(piece)
        if max_length is not None and len(ids) + len(tokens) > max_length:
            if piece.kind == "image":
                break
            tokens = tokens[:max_length - len(ids)]
        has_image |= piece.kind == "image"
        ids += tokens
        labels += tokens if piece.train else [IGNORE] * len(tokens)
        instruction += [piece.instruction] * len(tokens)
        if max_length is not None and len(ids) >= max_length:
            break
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "instruction_mask": torch.tensor(instruction, dtype=torch.bool),
        "has_image": torch.tensor(has_image),
    }


def image_block_end(pieces: Sequence[Piece], vocab: Vocabulary) -> int | None:
    """Number of tokens up to the end of the first image block, or None without one."""
    count = 0
    for piece in pieces:
        count += len(vocab.ids(piece))
        if piece.kind == "image":
            return count
    return None

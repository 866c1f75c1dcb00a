"""Length-grouped batch order, after LLaVA-1.5's length- and modality-grouped sampling (Liu et al., 2023).

Indices are cut into mega-batches, each sorted by length and cut into batches, so a batch holds
samples of similar length and pads little; batches of one modality (image or text-only) stay apart.
"""

from __future__ import annotations

import random
from collections.abc import Sequence


def _sorted_batches(indices: list[int], lengths: Sequence[int], group: int, mega: int) -> tuple[list[list[int]], list[int]]:
    """Full batches of ``group`` from length-sorted mega-batches, and the indices left over."""
    batches: list[list[int]] = []
    rest: list[int] = []
    size = group * mega
    for start in range(0, len(indices), size):
        chunk = sorted(indices[start:start + size], key=lambda i: -lengths[i])  # stable: ties keep their order
        for first in range(0, len(chunk), group):
            batch = chunk[first:first + group]
            if len(batch) == group:
                batches.append(batch)
            else:
                rest.extend(batch)
    return batches, rest


def length_grouped_order(indices: Sequence[int], lengths: Sequence[int], group: int, mega: int, seed: int,
                         modalities: Sequence[bool] | None = None) -> list[int]:
    """A permutation of ``indices`` whose consecutive ``group`` s are batches of similar length.

    Args:
        indices: Dataset positions in their (already shuffled) order.
        lengths: Estimated length of each dataset position.
        group: Batch size.
        mega: Batches per length-sorted mega-batch.
        seed: Seed of the batch shuffle.
        modalities: Whether each dataset position has an image; when given, no batch mixes the two
            kinds except the single leftover batch at the end.

    Returns:
        Full batches in a seeded random order, then the leftovers.
    """
    indices = list(indices)
    kinds = [indices] if modalities is None else [[i for i in indices if modalities[i]],
                                                    [i for i in indices if not modalities[i]]]
    batches: list[list[int]] = []
    rest: list[int] = []
    for part in kinds:
        full, left = _sorted_batches(part, lengths, group, mega)
        batches += full
        rest += left
    random.Random(seed).shuffle(batches)
    return [i for batch in batches for i in batch] + rest

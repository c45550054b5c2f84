"""Inputs padded to a fixed-length signature: the shortest that holds them, the rest masked."""

from __future__ import annotations

import numpy as np


def padded(ids: list[int], length: int) -> tuple[np.ndarray, np.ndarray]:
    """tokens and attention_mask, int32 [1, length], the ids first and zeros (masked) after."""
    tokens, mask = np.zeros((1, length), np.int32), np.zeros((1, length), np.int32)
    tokens[0, : len(ids)], mask[0, : len(ids)] = ids, 1
    return tokens, mask


def smallest_length(count: int, lengths: list[int]) -> int:
    """The shortest signature length holding `count` tokens (the longest when none does)."""
    return min((n for n in lengths if n >= count), default=max(lengths))

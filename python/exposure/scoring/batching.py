"""Length-bucketed batches under a token budget, right-padded."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def plan_batches(lengths: np.ndarray, batch_tokens: int) -> list[np.ndarray]:
    """Split sequence indices into batches of similar length with ``rows * longest <= batch_tokens``.

    Sequences are taken longest first (so the largest batch comes first and an out-of-memory error shows at
    once); a sequence longer than ``batch_tokens`` gets a batch of its own. Returns int64 index arrays; every
    index appears exactly once.
    """
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens must be positive, got {batch_tokens}")
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    batches: list[np.ndarray] = []
    i = 0
    while i < len(order):
        rows = max(1, batch_tokens // int(lengths[order[i]]))
        batches.append(order[i : i + rows])
        i += rows
    return batches


@dataclass(frozen=True)
class Batch:
    """``input_ids`` int64 ``[b, T]`` right-padded with ``pad_id``; ``lengths`` int64 ``[b]`` real lengths."""

    index: np.ndarray
    input_ids: np.ndarray
    lengths: np.ndarray

    def attention_mask(self) -> np.ndarray:
        width = self.input_ids.shape[1]
        return (np.arange(width)[None, :] < self.lengths[:, None]).astype(np.int64)


def make_batch(sequences: list[np.ndarray], index: np.ndarray, prefix_id: int, pad_id: int) -> Batch:
    """Batch ``[prefix_id] + sequences[k]`` for ``k`` in ``index``, right-padded with ``pad_id``."""
    lengths = np.fromiter((len(sequences[k]) + 1 for k in index), dtype=np.int64, count=len(index))
    ids = np.full((len(index), int(lengths.max())), pad_id, dtype=np.int64)
    ids[:, 0] = prefix_id
    for row, k in enumerate(index):
        ids[row, 1 : lengths[row]] = sequences[k]
    return Batch(np.asarray(index, dtype=np.int64), ids, lengths)

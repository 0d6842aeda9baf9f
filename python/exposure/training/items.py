"""Training items (token sequences) in training order, and how a step's items become a batch.

The training loop only needs an :class:`ItemSource`: ``len()`` and ``items(start, stop)`` giving the
token arrays of items ``[start, stop)``. :class:`IndexItems` reads them from an ``exposure.Index`` (one
``tokens()`` call per batch); :class:`ArrayItems` holds them in memory (already tokenized data).

Step ``i`` of a run consumes the items ``[i*B, (i+1)*B)`` of the (possibly repeated) item sequence: with
more than one pass over the data, item ``g`` of the run is item ``g % len(source)`` of the source.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

IGNORE_INDEX = -100
"""Label of padding positions (ignored by the loss)."""


@runtime_checkable
class ItemSource(Protocol):
    """Items in training order."""

    def __len__(self) -> int: ...

    def items(self, start: int, stop: int) -> list[np.ndarray]:
        """Token arrays (1-D, integer) of items ``[start, stop)``."""
        ...


class ArrayItems:
    """Items held in memory: a sequence of 1-D integer arrays (or lists)."""

    def __init__(self, items: Sequence[Sequence[int] | np.ndarray]) -> None:
        self._items = [np.asarray(x) if len(x) else np.zeros(0, dtype=np.int64) for x in items]
        for i, x in enumerate(self._items):
            if x.ndim != 1 or not np.issubdtype(x.dtype, np.integer):
                raise ValueError(f"item {i}: expected a 1-D integer sequence, got shape {x.shape} dtype {x.dtype}")

    def __len__(self) -> int:
        return len(self._items)

    def items(self, start: int, stop: int) -> list[np.ndarray]:
        _check_range(start, stop, len(self))
        return self._items[start:stop]


class IndexItems:
    """The items of an ``exposure.Index``, in index (= training) order."""

    def __init__(self, index: Any) -> None:
        self.index = index
        self._n = int(index.num_items)

    def __len__(self) -> int:
        return self._n

    def bounds(self, i: int) -> tuple[int, int]:
        start, end = self.index.item_bounds(int(i))
        return int(start), int(end)

    def items(self, start: int, stop: int) -> list[np.ndarray]:
        _check_range(start, stop, self._n)
        if start == stop:
            return []
        bounds = [self.bounds(i) for i in range(start, stop)]
        lo, hi = bounds[0][0], bounds[-1][1]
        contiguous = all(bounds[k][1] == bounds[k + 1][0] for k in range(len(bounds) - 1))
        if not contiguous:
            return [np.asarray(self.index.tokens(a, b)) for a, b in bounds]
        stream = np.asarray(self.index.tokens(lo, hi))
        if stream.shape != (hi - lo,):
            raise ValueError(f"index returned {stream.shape[0]} tokens for stream range [{lo}, {hi}), expected {hi - lo}")
        return [stream[a - lo : b - lo] for a, b in bounds]

    def max_item_length(self) -> int:
        """Length of the longest item (the manifest's fixed item length, else every item's bounds)."""
        fixed = (getattr(self.index, "manifest", None) or {}).get("items", {}).get("length")
        if fixed is not None and self._n > 0:
            return min(int(fixed), int(self.index.num_tokens))
        best = 0
        for i in range(self._n):
            a, b = self.bounds(i)
            best = max(best, b - a)
        return best


def _check_range(start: int, stop: int, n: int) -> None:
    if not 0 <= start <= stop <= n:
        raise IndexError(f"item range [{start}, {stop}) is outside [0, {n})")


def run_items(source: ItemSource, start: int, stop: int) -> list[np.ndarray]:
    """Items ``[start, stop)`` of the run's item sequence (the source repeated as often as needed)."""
    n = len(source)
    if n == 0:
        raise ValueError("no items to train on")
    out: list[np.ndarray] = []
    g = start
    while g < stop:
        a = g % n
        take = min(stop - g, n - a)
        out.extend(source.items(a, a + take))
        g += take
    return out


def step_item_range(step: int, items_per_step: int, total_items: int) -> tuple[int, int]:
    """Run-item range ``[start, stop)`` of optimizer step ``step`` (the last step may be short)."""
    start = step * items_per_step
    return start, min(start + items_per_step, total_items)


@dataclass(frozen=True)
class Batch:
    """A padded batch: ``input_ids`` = item[:-1], ``labels`` = item[1:] (``IGNORE_INDEX`` on padding)."""

    input_ids: np.ndarray  # int64 [b, t]
    labels: np.ndarray  # int64 [b, t]

    @property
    def num_targets(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())


def collate(items: Sequence[np.ndarray], *, pad_id: int, context_length: int, first_item: int = 0) -> Batch:
    """Right-padded inputs and labels of ``items``. The first token of an item is context only.

    Raises ``ValueError`` for an item longer than ``context_length + 1`` (``first_item`` numbers the
    items in the message) or with a negative token id.
    """
    lengths = [len(x) for x in items]
    for k, n in enumerate(lengths):
        if n > context_length + 1:
            raise ValueError(
                f"item {first_item + k} has {n} tokens, more than the model's context ({context_length}) + 1; "
                f"use a larger context_length or an index with shorter items"
            )
    t = max([n - 1 for n in lengths] + [1])
    ids = np.full((len(items), t), pad_id, dtype=np.int64)
    labels = np.full((len(items), t), IGNORE_INDEX, dtype=np.int64)
    for k, x in enumerate(items):
        n = len(x)
        if n < 2:
            continue
        arr = np.asarray(x, dtype=np.int64)
        if arr.min() < 0:
            raise ValueError(f"item {first_item + k} holds a negative token id")
        ids[k, : n - 1] = arr[:-1]
        labels[k, : n - 1] = arr[1:]
    return Batch(ids, labels)


__all__ = [
    "IGNORE_INDEX",
    "ArrayItems",
    "Batch",
    "IndexItems",
    "ItemSource",
    "collate",
    "run_items",
    "step_item_range",
]

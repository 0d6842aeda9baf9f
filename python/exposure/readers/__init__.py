"""Readers of pre-training corpora, each yielding the token stream in training order, in whole items.

* :mod:`exposure.readers.pythia` — GPT-NeoX / Megatron ``.bin`` + ``.idx`` (one file or byte shards)
* :mod:`exposure.readers.olmo` — OLMo token files + ``global_indices.npy``
* :mod:`exposure.readers.text` — ``.txt`` / ``.jsonl`` (optionally ``.gz``/``.zst``) / ``.parquet``,
  tokenized and packed into fixed-length items

Every reader has ``dtype`` (``np.uint16`` or ``np.uint32``), ``num_tokens``, ``num_items``,
``source_files`` and ``chunks(max_tokens)``, which yields :class:`Chunk` objects holding whole items, in
stream order, from a memory map (nothing is loaded whole).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class CorpusError(ValueError):
    """A corpus file that is malformed or inconsistent; the message names the file (and line)."""


@dataclass
class Chunk:
    """Whole items of the stream: ``tokens`` holds them back to back.

    Exactly one of ``item_length`` (every item has that many tokens) and ``item_lengths`` is set.
    """

    tokens: np.ndarray
    item_length: int | None = None
    item_lengths: np.ndarray | None = None

    @property
    def num_items(self) -> int:
        if self.item_length is not None:
            return len(self.tokens) // self.item_length
        assert self.item_lengths is not None
        return len(self.item_lengths)


class Reader(Protocol):
    dtype: type[np.unsignedinteger[Any]]

    @property
    def num_tokens(self) -> int: ...

    @property
    def num_items(self) -> int: ...

    @property
    def source_files(self) -> list[Path]: ...

    def chunks(self, max_tokens: int) -> Iterator[Chunk]: ...

    def describe(self) -> dict[str, Any]: ...


def index_dtype_for(max_id: int) -> type[np.unsignedinteger[Any]]:
    """The narrowest index token dtype that holds ids up to ``max_id``."""
    if max_id < 1 << 16:
        return np.uint16
    if max_id < 1 << 32:
        return np.uint32
    raise CorpusError(f"token id {max_id} does not fit in 32 bits")


__all__ = ["Chunk", "CorpusError", "Reader", "index_dtype_for"]

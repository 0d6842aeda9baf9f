"""GPT-NeoX / Megatron ``MMapIndexedDataset`` (``NAME.bin`` + ``NAME.idx``), as Pythia ships it.

``.idx`` layout (little-endian): magic ``MMIDIDX\\x00\\x00`` (9 bytes), version uint64 = 1, dtype code
uint8, N uint64 items, D uint64 doc_idx entries, sizes int32[N], pointers int64[N] (byte offset of each
item in ``.bin``, not aligned), doc_idx int64[D]. ``.bin`` is the items' tokens back to back.

The ``.bin`` may be given as byte shards (Pythia's ``document-00000-of-00020.bin`` …
``document-00019-of-00020.bin`` with one ``document.idx``): the shards are read as the concatenation of
their bytes in shard order, without joining them on disk. Everything is read by memory map.

The items are the training order (Pythia's "preshuffled" files): item i is the i-th training sequence.
"""

from __future__ import annotations

import mmap
import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exposure.readers import Chunk, CorpusError

MAGIC = b"MMIDIDX\x00\x00"
HEADER_BYTES = 34

DTYPE_CODES: dict[int, np.dtype[Any]] = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.int8),
    3: np.dtype(np.int16),
    4: np.dtype(np.int32),
    5: np.dtype(np.int64),
    6: np.dtype(np.float32),
    7: np.dtype(np.float64),
    8: np.dtype(np.uint16),
}
"""Megatron's dtype codes (``.idx`` byte 17)."""

_SHARD = re.compile(r"^(?P<stem>.+)-(?P<i>\d+)-of-(?P<n>\d+)\.bin$")


@dataclass(frozen=True)
class IdxFile:
    """A parsed ``.idx``: sizes / pointers / doc_idx are read-only views of a memory map."""

    path: Path
    dtype_code: int
    dtype: np.dtype[Any]
    sizes: np.ndarray
    pointers: np.ndarray
    doc_idx: np.ndarray

    @property
    def num_items(self) -> int:
        return len(self.sizes)

    @property
    def num_tokens(self) -> int:
        return int(self.sizes.sum(dtype=np.int64))

    @property
    def bin_bytes(self) -> int:
        return self.num_tokens * self.dtype.itemsize


def read_idx(path: str | Path) -> IdxFile:
    """Parse and check an ``.idx`` file. Raises :class:`CorpusError` naming the file on any problem."""
    path = Path(path)
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise CorpusError(f"{path}: {size} bytes is too short for an MMIDIDX header ({HEADER_BYTES} bytes)")
    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)
    if head[:9] != MAGIC:
        raise CorpusError(f"{path}: not a Megatron MMIDIDX index (magic {head[:9]!r}, expected {MAGIC!r})")
    (version,) = struct.unpack_from("<Q", head, 9)
    if version != 1:
        raise CorpusError(f"{path}: unsupported MMIDIDX version {version} (expected 1)")
    code = head[17]
    if code not in DTYPE_CODES:
        raise CorpusError(f"{path}: unknown dtype code {code} at byte 17 (known: {sorted(DTYPE_CODES)})")
    dtype = DTYPE_CODES[code]
    if dtype.kind == "f":
        raise CorpusError(f"{path}: dtype code {code} ({dtype}) is a float type; token ids must be integers")
    n, d = struct.unpack_from("<QQ", head, 18)
    expected = HEADER_BYTES + 12 * n + 8 * d
    if size != expected:
        raise CorpusError(
            f"{path}: file is {size} bytes but its header (N={n} items, D={d} doc_idx entries) implies {expected}"
        )
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    sizes = mm[HEADER_BYTES : HEADER_BYTES + 4 * n].view("<i4")
    pointers = mm[HEADER_BYTES + 4 * n : HEADER_BYTES + 12 * n].view("<i8")
    doc_idx = mm[HEADER_BYTES + 12 * n : expected].view("<i8")
    return IdxFile(path, code, dtype, sizes, pointers, doc_idx)


def _check_layout(idx: IdxFile, block: int = 1 << 22) -> None:
    """Sizes non-negative and pointers contiguous (item i starts where item i-1 ends), in blocks."""
    isz = idx.dtype.itemsize
    expect_next = 0
    for lo in range(0, idx.num_items, block):
        s = np.asarray(idx.sizes[lo : lo + block], dtype=np.int64)
        p = np.asarray(idx.pointers[lo : lo + block], dtype=np.int64)
        if (s < 0).any():
            i = lo + int(np.argmax(s < 0))
            raise CorpusError(f"{idx.path}: item {i} has negative size {int(idx.sizes[i])}")
        expected = expect_next + np.concatenate([[0], np.cumsum(s[:-1] * isz)])
        bad = p != expected
        if bad.any():
            i = int(np.argmax(bad))
            raise CorpusError(
                f"{idx.path}: pointer of item {lo + i} is {int(p[i])} but the items before it end at byte "
                f"{int(expected[i])}; only contiguous .bin files are supported"
            )
        expect_next = int(expected[-1] + s[-1] * isz)


class ConcatBytes:
    """Several files read as the concatenation of their bytes (memory-mapped)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)
        self.sizes = [p.stat().st_size for p in self.paths]
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self._maps: list[mmap.mmap | None] = [None] * len(self.paths)

    @property
    def size(self) -> int:
        return int(self.starts[-1])

    def _map(self, i: int) -> mmap.mmap:
        m = self._maps[i]
        if m is None:
            with open(self.paths[i], "rb") as f:
                m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._maps[i] = m
        return m

    def read(self, start: int, stop: int) -> np.ndarray:
        """Bytes ``[start, stop)`` of the concatenation as a uint8 array (a copy)."""
        out = np.empty(stop - start, dtype=np.uint8)
        pos = start
        k = int(np.searchsorted(self.starts, start, side="right")) - 1
        while pos < stop:
            fs, fe = int(self.starts[k]), int(self.starts[k + 1])
            lo, hi = pos - fs, min(stop, fe) - fs
            if hi > lo:
                out[pos - start : pos - start + hi - lo] = np.frombuffer(self._map(k), dtype=np.uint8, count=hi - lo, offset=lo)
            pos = fs + hi
            k += 1
        return out

    def close(self) -> None:
        for i, m in enumerate(self._maps):
            if m is not None:
                m.close()
                self._maps[i] = None


def resolve_pythia_sources(sources: Sequence[str | Path]) -> tuple[Path, list[Path]]:
    """Find the ``.idx`` and the ``.bin`` file(s) among ``sources``.

    Accepted: ``NAME.bin`` (its ``NAME.idx`` beside it), ``NAME.idx``, a prefix ``NAME``, a directory
    holding one dataset, or shard files ``STEM-000NN-of-000MM.bin`` plus ``STEM.idx`` (all shards must be
    present; they are ordered by shard number).
    """
    files: list[Path] = []
    for s in sources:
        p = Path(s)
        if p.is_dir():
            files.extend(sorted(q for q in p.iterdir() if q.suffix in (".bin", ".idx")))
        elif p.exists():
            files.append(p)
        elif Path(f"{p}.idx").exists():
            files.extend([Path(f"{p}.idx"), Path(f"{p}.bin")])
        else:
            raise FileNotFoundError(f"{p}: no such file, directory or NAME.bin/NAME.idx prefix")
    idxs = [f for f in files if f.suffix == ".idx"]
    bins = [f for f in files if f.suffix == ".bin"]
    others = [f for f in files if f.suffix not in (".idx", ".bin")]
    if others:
        raise CorpusError(f"{others[0]}: not a .bin or .idx file (pythia format takes NAME.bin + NAME.idx)")
    if not idxs:
        if len(bins) == 1 and bins[0].with_suffix(".idx").exists():
            idxs = [bins[0].with_suffix(".idx")]
        elif bins and all(_SHARD.match(b.name) for b in bins):
            stem = _SHARD.match(bins[0].name)["stem"]  # type: ignore[index]
            cand = bins[0].parent / f"{stem}.idx"
            if not cand.exists():
                raise FileNotFoundError(f"{cand}: the .idx for shards {bins[0].name}, … is missing")
            idxs = [cand]
        else:
            raise FileNotFoundError(f"no .idx file among {[str(b) for b in bins]}")
    if len(set(idxs)) != 1:
        raise CorpusError(f"one dataset at a time: got several .idx files {[str(i) for i in idxs]}")
    idx = idxs[0]
    if not bins:
        b = idx.with_suffix(".bin")
        if b.exists():
            bins = [b]
        else:
            shards = sorted(idx.parent.glob(f"{idx.stem}-*-of-*.bin"))
            if not shards:
                raise FileNotFoundError(f"{b}: missing (and no {idx.stem}-NNNNN-of-NNNNN.bin shards beside {idx})")
            bins = shards
    bins = list(dict.fromkeys(bins))
    if len(bins) > 1:
        matches = [_SHARD.match(b.name) for b in bins]
        if not all(matches):
            bad = next(b for b, m in zip(bins, matches) if not m)
            raise CorpusError(f"{bad}: several .bin files must be shards named STEM-NNNNN-of-NNNNN.bin")
        totals = {int(m["n"]) for m in matches if m}
        if len(totals) != 1:
            raise CorpusError(f"shards disagree on their count: {sorted(totals)}")
        total = totals.pop()
        order = sorted(zip((int(m["i"]) for m in matches if m), bins))
        numbers = [i for i, _ in order]
        if numbers != list(range(total)):
            missing = sorted(set(range(total)) - set(numbers))
            raise CorpusError(f"shards of {idx.stem}: expected 0..{total - 1}, missing {missing or 'none'}, got {numbers}")
        bins = [b for _, b in order]
    return idx, bins


class PythiaReader:
    """Tokens of a Megatron dataset in item (training) order, read by memory map."""

    def __init__(self, sources: Sequence[str | Path]) -> None:
        self.idx_path, self.bin_paths = resolve_pythia_sources(sources)
        self.idx = read_idx(self.idx_path)
        self.data = ConcatBytes(self.bin_paths)
        what = self.bin_paths[0] if len(self.bin_paths) == 1 else f"{len(self.bin_paths)} shards {self.bin_paths[0].name}…"
        if self.data.size != self.idx.bin_bytes:
            raise CorpusError(
                f"{what}: .bin is {self.data.size} bytes but {self.idx_path} describes {self.idx.num_items} items of "
                f"{self.idx.num_tokens} {self.idx.dtype} tokens = {self.idx.bin_bytes} bytes"
            )
        _check_layout(self.idx)
        self.dtype = np.uint32 if self.idx.dtype.itemsize >= 4 else np.uint16
        lengths_view = self.idx.sizes
        first = int(lengths_view[0]) if self.idx.num_items else 0
        self._fixed: int | None = first if self.idx.num_items and bool((lengths_view == first).all()) else None

    @property
    def num_tokens(self) -> int:
        return self.idx.num_tokens

    @property
    def num_items(self) -> int:
        return int(np.count_nonzero(self.idx.sizes)) if self._fixed is None else self.idx.num_items

    @property
    def item_length(self) -> int | None:
        """The common item length, or None when items differ in length."""
        return self._fixed

    @property
    def source_files(self) -> list[Path]:
        return [*self.bin_paths, self.idx_path]

    def describe(self) -> dict[str, Any]:
        return {
            "idx": str(self.idx_path),
            "bins": [str(b) for b in self.bin_paths],
            "dtype_code": self.idx.dtype_code,
            "source_dtype": str(self.idx.dtype),
            "items": self.idx.num_items,
            "doc_idx_entries": len(self.idx.doc_idx),
            "item_length": self._fixed,
        }

    def _convert(self, raw: np.ndarray, first_item: int) -> np.ndarray:
        vals = raw.view(self.idx.dtype.newbyteorder("<"))
        if self.idx.dtype.kind == "i" and vals.size and int(vals.min()) < 0:
            pos = int(np.argmax(vals < 0))
            raise CorpusError(f"{self.idx_path}: negative token id {int(vals[pos])} in item ≥ {first_item}")
        if self.idx.dtype.itemsize == 8 and vals.size and int(vals.max()) >= 1 << 32:
            raise CorpusError(f"{self.idx_path}: token id {int(vals.max())} does not fit in 32 bits (item ≥ {first_item})")
        return vals.astype(self.dtype, copy=False) if vals.dtype != self.dtype else vals

    def chunks(self, max_tokens: int) -> Iterator[Chunk]:
        """Whole items, about ``max_tokens`` tokens per chunk (at least one item), in item order."""
        isz = self.idx.dtype.itemsize
        n = self.idx.num_items
        i = 0
        probe = 1 << 20
        while i < n:
            if self._fixed is not None:
                per = max(1, max_tokens // max(1, self._fixed))
                j = min(n, i + per)
                lengths = None
            else:
                s = np.asarray(self.idx.sizes[i : i + probe], dtype=np.int64)
                cs = np.cumsum(s)
                k = max(1, int(np.searchsorted(cs, max_tokens, side="right")))
                j = i + k
                lengths = s[:k]
            start = int(self.idx.pointers[i])
            stop = int(self.idx.pointers[j - 1]) + int(self.idx.sizes[j - 1]) * isz
            tokens = self._convert(self.data.read(start, stop), i)
            if lengths is None:
                yield Chunk(tokens, item_length=self._fixed)
            else:
                nz = lengths[lengths > 0]
                if len(nz):
                    yield Chunk(tokens, item_lengths=nz)
            i = j

    def close(self) -> None:
        self.data.close()


__all__ = ["DTYPE_CODES", "MAGIC", "ConcatBytes", "IdxFile", "PythiaReader", "read_idx", "resolve_pythia_sources"]

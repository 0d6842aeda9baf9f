"""The exposure index: build it from a token stream in training order, open it, query it.

The heavy lifting (suffix sorting, searching, range minima, wavelet histograms) is C++ in
:mod:`exposure._core`; this module handles the manifest, sharding, resumption and validation.

Positions are *stream offsets*: offsets into the concatenated token stream exactly as given to
the builder. An occurrence of a phrase never crosses an item boundary.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import errno
import fcntl
import json
import os
import re
import resource
import shutil
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np

from exposure import _core

FORMAT = "exposure-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARD_META = "shard.json"
_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
_WINDOW_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# Bytes of memory per text token while a shard is built, beyond the text itself: the suffix array
# (32-bit entries; 64-bit for texts of 2^32 - 1 tokens or more), SA-IS type bits, and the
# window-structure scratch.
_SA_OVERHEAD = 4.3
_SA_OVERHEAD_WIDE = 8.3
_MAX_NARROW_TEXT = 2**32 - 2  # the longest shard text sorted with 32-bit entries
_FIXED_OVERHEAD = 96 << 20
_MIN_PARALLEL_SHARD = 16 << 20

IndexFileError = _core.IndexFileError
"""Raised when an index directory is missing, truncated, foreign or of another format version."""

PhraseLike = Sequence[int] | np.ndarray


@dataclass(frozen=True)
class Context:
    """Tokens around an occurrence, clipped to the item that holds it."""

    tokens: np.ndarray
    start: int  # stream offset of tokens[0]
    offset: int  # the occurrence asked about
    item: int
    item_start: int
    item_end: int


def peak_rss_bytes() -> int:
    """This process's peak resident memory (VmHWM; ru_maxrss would include the memory of a
    parent that forked us)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _resolve_threads(threads: int | None) -> int:
    """``threads``, or every core for None; 0 and negative counts are refused (not read as "all cores")."""
    if threads is None:
        return os.cpu_count() or 1
    if int(threads) < 1:
        raise ValueError(f"threads must be a positive number (or None for all cores), got {threads}")
    return int(threads)


_HELD: dict[str, list[int]] = {}  # OUT.partial -> [directory fd, holders in this process]
_HELD_MU = threading.Lock()


def _partial_dir(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def acquire_build_lock(out: str | os.PathLike[str]) -> None:
    """Creates ``OUT.partial`` if need be and takes an exclusive lock on it (``flock``, non-blocking) for the
    length of a build: a second build of the same ``OUT`` in another process fails at once, saying so, instead
    of interleaving its files with the first's. Re-entrant within a process (the ingest path holds it while
    tokenizing, then the builder takes it again). Released by :func:`release_build_lock`."""
    partial = _partial_dir(Path(out))
    key = str(partial.resolve())
    with _HELD_MU:
        if key in _HELD:
            _HELD[key][1] += 1
            return
        partial.mkdir(parents=True, exist_ok=True)
        fd = os.open(partial, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FileExistsError(
                f"another build is writing to {partial}; wait for it to finish, or build into another directory"
            ) from None
        _HELD[key] = [fd, 1]


def release_build_lock(out: str | os.PathLike[str]) -> None:
    """Undoes one :func:`acquire_build_lock`; the last one unlocks, and removes ``OUT.partial`` if it is empty (a
    build refused before writing anything leaves nothing behind)."""
    partial = _partial_dir(Path(out))
    key = str(partial.resolve())
    with _HELD_MU:
        if key not in _HELD:
            return
        _HELD[key][1] -= 1
        if _HELD[key][1] > 0:
            return
        fd = _HELD.pop(key)[0]
        with contextlib.suppress(OSError):  # gone (installed as OUT), not empty, or another build's by now
            if os.stat(partial).st_ino == os.fstat(fd).st_ino:
                partial.rmdir()
        os.close(fd)


@contextlib.contextmanager
def build_lock(out: str | os.PathLike[str]) -> Iterator[None]:
    acquire_build_lock(out)
    try:
        yield
    finally:
        release_build_lock(out)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, obj: Any, *, indent: int = 1, sort_keys: bool = False) -> None:
    """Writes JSON to a temporary file, fsyncs, renames it into place and fsyncs the directory."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=indent, sort_keys=sort_keys)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _check_boundaries(boundaries: Iterable[int] | np.ndarray, what: str = "window boundaries") -> np.ndarray:
    b = np.asarray(boundaries)
    if b.ndim != 1:
        raise ValueError(f"{what} must be a 1-D sequence of stream offsets")
    if b.size and not np.issubdtype(b.dtype, np.integer):
        raise ValueError(f"{what} must be integers")
    if b.size and b.min() < 0:
        raise ValueError(f"{what} must be non-negative")
    out = b.astype(np.uint64)
    if np.any(np.diff(out.astype(np.int64)) <= 0):
        raise ValueError(f"{what} must be strictly increasing")
    return out


def _windows_arg(windows: Mapping[str, Any] | None) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, bounds in (windows or {}).items():
        if not _WINDOW_NAME.match(name):
            raise ValueError(f"window structure name {name!r} must match {_WINDOW_NAME.pattern}")
        b = _check_boundaries(bounds)
        if b.size < 2:
            raise ValueError(f"window structure {name!r} needs at least two boundaries")
        out[name] = b
    return out


def parse_size(text: str | int) -> int:
    """'8G', '512M', '64K' or a plain number of bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ValueError(f"cannot read a size from {text!r} (try 8G, 512M)")
    scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2).upper()]
    return int(float(m.group(1)) * scale)


# --------------------------------------------------------------------------------------------
# Building



_FAST_PHRASE_TOKENS = 64


def _single_offsets(length: int) -> np.ndarray:
    """Read-only ``[0, length]`` offsets of a one-phrase batch."""
    offsets = np.array([0, length], dtype=np.int64)
    offsets.flags.writeable = False
    return offsets


# Made once: a single-phrase query must not pay for building its offsets.
_SINGLE_OFFSETS = tuple(_single_offsets(k) for k in range(_FAST_PHRASE_TOKENS + 1))
# Phrase arrays the engine takes as they are: non-negative ids that uint32 holds (it checks the
# vocabulary itself).
_ENGINE_ID_DTYPES = tuple(np.dtype(t) for t in (np.uint16, np.uint32, np.uint8))  # the usual first
_U16 = _ENGINE_ID_DTYPES[0]  # ids the engine's ``*_u16`` calls take without a numpy conversion

class IndexBuilder:
    """Builds an index from a stream fed in training order, chunk by chunk.

    The stream is cut into shards that fit ``memory_budget_bytes``; each shard is built in RAM
    (``threads`` shards at once) and written as a self-contained directory. Shards are cut at item
    boundaries; only an item longer than a whole shard is cut inside, and then the shard keeps an
    overlap tail of ``max_phrase_tokens - 1`` tokens so phrases up to that length are still found.

    Given the stream's length (``total_tokens`` and ``total_items``), it plans balanced shards, as few as the
    budget allows (and at least ``threads`` for a long stream); without it, each shard fills the budget.

    Everything is written under ``OUT.partial/``; the manifest is written last and the directory
    renamed to ``OUT`` only when the build is complete, so an interrupted build never opens as an
    index. Re-running the same build reuses every shard that was finished.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        *,
        dtype: Any = np.uint16,
        vocab_size: int,
        memory_budget_bytes: int | str = 8 << 30,
        threads: int | None = None,
        windows: Mapping[str, Any] | None = None,
        max_phrase_tokens: int = 1024,
        total_tokens: int | None = None,
        total_items: int | None = None,
        overwrite: bool = False,
        progress: bool = True,
        shard_tokens: int | None = None,
        stream_start: int = 0,
    ) -> None:
        self.out = Path(out_dir)
        if stream_start < 0:
            raise ValueError("stream_start must be non-negative")
        self.stream_start = int(stream_start)
        self.dtype = np.dtype(dtype).newbyteorder("<")
        if self.dtype.name not in _DTYPES:
            raise ValueError(f"token dtype must be uint16 or uint32, not {np.dtype(dtype).name}")
        self.vocab_size = int(vocab_size)
        if self.vocab_size < 1:
            raise ValueError(f"vocab_size must be positive, got {vocab_size}")
        if self.vocab_size > np.iinfo(self.dtype).max:
            hint = "; use uint32" if self.dtype.name == "uint16" and self.vocab_size <= np.iinfo(np.uint32).max else ""
            raise ValueError(
                f"vocab_size {vocab_size} does not fit {self.dtype.name} with a spare separator id "
                f"(at most {np.iinfo(self.dtype).max}){hint}"
            )
        self.sep = self.vocab_size
        self.threads = _resolve_threads(threads)
        self.budget = parse_size(memory_budget_bytes)
        if self.budget <= 0:
            raise ValueError(f"memory_budget_bytes must be positive, got {memory_budget_bytes!r}")
        self.windows = _windows_arg(windows)
        if max_phrase_tokens < 1:
            raise ValueError("max_phrase_tokens must be at least 1")
        self.overlap = int(max_phrase_tokens) - 1
        self.overwrite = overwrite
        self.partial = _partial_dir(self.out)
        self._check_target()

        self.parallel = self.threads
        usable = max(self.budget - _FIXED_OVERHEAD, 1 << 20)
        per_shard = usable / self.parallel
        text = int(per_shard / (self.dtype.itemsize + _SA_OVERHEAD))  # the longest shard text that fits
        if text > _MAX_NARROW_TEXT:  # a longer text sorts with 64-bit entries
            text = max(_MAX_NARROW_TEXT, int(per_shard / (self.dtype.itemsize + _SA_OVERHEAD_WIDE)))
        cap = text - self.overlap
        if cap < 1024 and shard_tokens is None:
            raise ValueError(
                f"memory budget of {self.budget} bytes is too small for {self.parallel} parallel shard builds "
                f"with a {self.overlap}-token overlap; raise it or lower threads"
            )
        if total_tokens:
            # Known length: balanced shards, as few as the budget allows (text = tokens plus one
            # separator per item).
            text = int(total_tokens) + int(total_items or 0)
            # A shard ends at its last whole item, so it may hold up to an item less than its share: one item
            # of slack (the mean item, separator included) keeps the rest from spilling into a tiny extra shard.
            # Items that are not small against a shard get none (a shard longer than an item cuts inside it).
            item = -(-text // int(total_items)) if total_items else 0
            slack = item if item <= cap // 16 else 0
            n_shards = max(1, -(-text // (cap - slack)))
            # Suffix sorting is sequential, so with T threads a large stream gets at least T shards
            # (of at least _MIN_PARALLEL_SHARD tokens) that build side by side. threads=1 keeps
            # one shard where the budget allows.
            n_shards = max(n_shards, min(self.parallel, text // _MIN_PARALLEL_SHARD))
            # (The buffer holds cap + overlap tokens, and the overlap tail is only used when a cut falls inside an
            # item, so the slack may take its place.)
            cap = min(cap, -(-text // n_shards) + 1 + slack - min(self.overlap, slack))
        if shard_tokens is not None:  # explicit shard size (tests, or matching a cluster's layout)
            if shard_tokens < 1:
                raise ValueError("shard_tokens must be positive")
            cap = int(shard_tokens)
        self.cap = cap
        self.buf_len = cap + self.overlap
        self._buffers: list[np.ndarray | None] = [None] * self.parallel
        self._futures: list[cf.Future[dict[str, Any]] | None] = [None] * self.parallel
        self._pool = cf.ThreadPoolExecutor(max_workers=self.parallel) if self.parallel > 1 else None
        self._cur = 0
        self._fill = 0
        self._stream_pos = self.stream_start  # stream offset of the current buffer's first token
        self._shards: list[dict[str, Any]] = []
        self._cut_inside_item = False
        self._n_items = 0
        self._item_length: int | None = None  # uniform item length so far (last item may be shorter)
        self._last_item_short = False
        self._starts_file: Path | None = None
        self._t0 = time.perf_counter()
        self._reused = 0
        self._added = 0
        self._stream_hash = _core.Xxh64()  # the stream's identity: its tokens in order, however they are sharded
        self._open_len = 0  # tokens of an item that the next chunk continues
        self._next_start = self.stream_start
        acquire_build_lock(self.out)  # last: nothing above can fail with the lock held
        self._locked = True
        self._bar = None
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_tokens, unit="tok", unit_scale=True, desc=f"indexing {self.out.name}")
        self._finished = False

    # -- public ------------------------------------------------------------------------------

    def __enter__(self) -> IndexBuilder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._shutdown()
        if self._locked:
            self._locked = False
            release_build_lock(self.out)

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def add(
        self,
        tokens: np.ndarray,
        *,
        item_length: int | None = None,
        item_lengths: Sequence[int] | np.ndarray | None = None,
        item_continues: bool = False,
    ) -> None:
        """Appends items. ``tokens`` holds items back to back; give either their common
        ``item_length`` (the chunk's last item may be shorter) or the ``item_lengths``. With
        neither, the chunk is one item. The next chunk starts a new item, unless
        ``item_continues``: then the chunk's last item goes on in the next chunk (a long item fed
        in pieces). An index whose items all have one length (the last may be shorter) records
        just that length; any other records every item's start."""
        if self._finished:
            raise RuntimeError("the builder is finished")
        arr = np.asarray(tokens)
        if arr.ndim != 1:
            raise ValueError("tokens must be a 1-D array")
        if arr.size == 0:
            return
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"tokens must be integers, not {arr.dtype}")
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= self.vocab_size:
            bad = lo if lo < 0 else hi
            where = int(np.flatnonzero(arr == bad)[0])
            raise ValueError(
                f"token id {bad} (at offset {self._added + where} of the stream) is outside "
                f"the vocabulary [0, {self.vocab_size})"
            )
        n = arr.size
        if item_lengths is not None and item_length is not None:
            raise ValueError("give item_length or item_lengths, not both")
        if item_lengths is not None:
            lengths = np.asarray(item_lengths, dtype=np.int64)
            if lengths.ndim != 1 or (lengths.size and lengths.min() <= 0) or int(lengths.sum()) != n:
                raise ValueError("item_lengths must be positive and sum to the number of tokens")
        elif item_length is not None:
            if item_length <= 0:
                raise ValueError("item_length must be positive")
            full, rest = divmod(n, int(item_length))
            lengths = np.full(full + (rest > 0), int(item_length), dtype=np.int64)
            if rest:
                lengths[-1] = rest
        else:
            lengths = np.array([n], dtype=np.int64)
        ends = np.cumsum(lengths)
        tokens_here = np.ascontiguousarray(arr, dtype=self.dtype)
        self._stream_hash.update(tokens_here)
        text = np.insert(tokens_here, ends[:-1] if item_continues else ends, self.dtype.type(self.sep))
        whole = lengths.copy()
        whole[0] += self._open_len
        if item_continues:
            self._open_len = int(whole[-1])
            whole = whole[:-1]
        else:
            self._open_len = 0
        if whole.size:
            self._record_items(whole)
        self._append_text(text)
        self._added += n
        if self._bar is not None:
            self._bar.update(n)

    def finish(self, metadata: Mapping[str, Any] | None = None) -> Index | None:
        """Builds the last shard, writes the manifest and moves the index into place. Returns
        the opened index, or None for a part (``stream_start`` > 0) that ``assemble_index``
        will gather."""
        if self._finished:
            raise RuntimeError("the builder is finished")
        if self._open_len:
            self._record_items(np.array([self._open_len], dtype=np.int64))
            self._open_len = 0
        if self._fill > 0:
            self._submit(self._fill, self._fill)
        for k in range(self.parallel):
            self._wait(k)
        self._finished = True
        self._shutdown()
        try:  # the lock is held until the index is in place
            if not self._shards:
                raise ValueError("no tokens were added: an index needs a non-empty stream")
            items = self._items_manifest()
            total = self._shards[-1]["stream_end"] - self.stream_start
            stale = sorted(
                p for p in self.partial.glob("shard-*") if p.name not in {s["dir"] for s in self._shards}
            )
            for p in stale:  # shards of an earlier, longer attempt
                shutil.rmtree(p)
            files_bytes = sum(f["bytes"] for s in self._shards for f in s["files"].values())
            if items.get("starts_file"):
                files_bytes += (self.partial / items["starts_file"]).stat().st_size
            seconds = time.perf_counter() - self._t0
            manifest = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "token_dtype": self.dtype.name,
                "stream_start": self.stream_start,
                "token_count": total,
                "stream_xxh64": f"{self._stream_hash.digest():016x}",
                "vocab_size": self.vocab_size,
                "separator": self.sep,
                "items": items,
                "max_phrase_tokens": self.overlap + 1 if self._cut_inside_item else None,
                "shards": self._shards,
                "windows": {name: {"boundaries": [int(x) for x in b]} for name, b in self.windows.items()},
                "build": {
                    "seconds": round(seconds, 3),
                    "tokens_per_second": round(total / seconds, 1) if seconds > 0 else None,
                    "peak_rss_bytes": peak_rss_bytes(),
                    "bytes_on_disk": files_bytes,
                    "bytes_per_token": round(files_bytes / total, 4),
                    "threads": self.threads,
                    "memory_budget_bytes": self.budget,
                    "shards_reused": self._reused,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                },
                "metadata": dict(metadata or {}),
            }
            write_json_atomic(self.partial / MANIFEST, manifest)
            self._install()
        finally:
            self.close()
        return Index(self.out) if self.stream_start == 0 else None

    # -- internals ---------------------------------------------------------------------------

    def _check_target(self) -> None:
        if self.out.exists():
            if not self.overwrite:
                raise FileExistsError(f"{self.out} already exists (pass overwrite=True / --overwrite to replace it)")

    def _install(self) -> None:
        old = None
        if self.out.exists():
            if not self.overwrite:
                raise FileExistsError(f"{self.out} already exists")
            old = self.out.with_name(self.out.name + ".old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(self.out, old)
        os.replace(self.partial, self.out)
        _fsync_dir(self.out.parent)
        if old is not None:
            shutil.rmtree(old)

    def _record_items(self, lengths: np.ndarray) -> None:
        if self._item_length is None and self._n_items == 0 and self._starts_file is None:
            self._item_length = int(lengths[0])
        uniform = self._starts_file is None and self._item_length is not None
        if uniform:
            body = lengths[:-1]
            if not self._last_item_short and np.all(body == self._item_length) and lengths[-1] <= self._item_length:
                self._last_item_short = bool(lengths[-1] < self._item_length)
                self._n_items += lengths.size
                self._next_start += int(lengths.sum())
                return
            # Switch to explicit item starts, backfilling the uniform prefix (only its last item can be short,
            # so every start is a multiple of the length; the next start is where the items so far end).
            self._starts_file = self.partial / "items.tmp"
            prefix = self.stream_start + np.arange(self._n_items, dtype=np.int64) * self._item_length
            with open(self._starts_file, "wb") as f:
                prefix.tofile(f)
            self._item_length = None
            self._last_item_short = False
        starts = self._next_start + np.concatenate([[0], np.cumsum(lengths[:-1])]).astype(np.int64)
        with open(self._starts_file, "ab") as f:
            starts.tofile(f)
        self._next_start += int(lengths.sum())
        self._n_items += lengths.size

    def _items_manifest(self) -> dict[str, Any]:
        if self._starts_file is None:
            return {"count": self._n_items, "length": self._item_length}
        starts = np.fromfile(self._starts_file, dtype=np.int64)
        np.save(self.partial / "items.npy", starts)
        self._starts_file.unlink()
        return {"count": self._n_items, "starts_file": "items.npy"}

    def _buffer(self) -> np.ndarray:
        """The buffer being filled (waiting first for a build still reading it)."""
        self._wait(self._cur)
        buf = self._buffers[self._cur]
        if buf is None:
            buf = np.empty(self.buf_len, dtype=self.dtype)
            self._buffers[self._cur] = buf
        return buf

    def _append_text(self, text: np.ndarray) -> None:
        pos = 0
        while pos < text.size:
            buf = self._buffer()
            take = min(text.size - pos, self.buf_len - self._fill)
            buf[self._fill : self._fill + take] = text[pos : pos + take]
            self._fill += take
            pos += take
            if self._fill == self.buf_len:
                self._cut()

    def _cut(self) -> None:
        buf = self._buffer()
        seps = np.flatnonzero(buf[: self._fill] == self.sep)
        if seps.size:
            end = int(seps[-1]) + 1
            self._submit(end, end)
        else:  # one item longer than a shard: cut inside it, keep an overlap tail
            self._cut_inside_item = True
            self._submit(self._fill, self.cap)

    def _submit(self, text_end: int, owned_end: int) -> None:
        """Builds buffer[:text_end] as the next shard and moves buffer[owned_end:fill] to the
        next buffer."""
        k = self._cur
        buf = self._buffer()
        text = buf[:text_end]
        owned_tokens = int(owned_end - np.count_nonzero(text[:owned_end] == self.sep))
        shard_no = len(self._shards)
        record = {
            "dir": f"shard-{shard_no:05d}",
            "stream_start": self._stream_pos,
            "stream_end": self._stream_pos + owned_tokens,
            "owned_text": int(owned_end),
            "text_tokens": int(text_end),
            "input_xxh64": f"{_core.xxh64(text):016x}",
            "vocab_size": self.vocab_size,  # the same tokens under another vocabulary are another shard
            "windows": {n: f"{_core.xxh64(b):016x}" for n, b in self.windows.items()},
        }
        self._shards.append(record)
        rest = buf[owned_end : self._fill]
        self._stream_pos += owned_tokens
        if self._pool is None:
            carry = rest.copy()
            self._build_one(record, text)
            buf[: carry.size] = carry
        else:
            # The shard builds from this buffer in the background; the next buffer (once its own
            # build is done) takes the carried-over tokens.
            self._futures[k] = self._pool.submit(self._build_one, record, text)
            self._cur = (k + 1) % self.parallel
            if rest.size:
                self._buffer()[: rest.size] = rest
        self._fill = rest.size

    def _wait(self, k: int) -> None:
        fut = self._futures[k]
        if fut is not None:
            self._futures[k] = None
            fut.result()

    def _build_one(self, record: dict[str, Any], text: np.ndarray) -> dict[str, Any]:
        shard_dir = self.partial / record["dir"]
        meta_path = shard_dir / SHARD_META
        if meta_path.exists():
            try:
                old = json.loads(meta_path.read_text())
                same = all(old.get(k) == record[k] for k in ("stream_start", "stream_end", "owned_text",
                                                             "text_tokens", "input_xxh64", "vocab_size", "windows"))
                if same and _files_ok(shard_dir, old["files"]):
                    record.update(old)
                    self._reused += 1
                    return record
            except (ValueError, KeyError, OSError):
                pass
        if shard_dir.exists():
            shutil.rmtree(shard_dir)
        shard_dir.mkdir()
        res = _core.build_shard(
            text,
            str(shard_dir),
            record["stream_start"],
            record["owned_text"],
            self.vocab_size,
            list(self.windows.items()),
        )
        record.update(
            sa_width=res["sa_width"],
            suffixes=res["suffixes"],
            seconds_sa=round(res["seconds_sa"], 3),
            seconds_windows=round(res["seconds_windows"], 3),
            seconds=round(res["seconds_total"], 3),
            files={f["name"]: {"bytes": f["bytes"], "xxh64": f"{f['xxh64']:016x}"} for f in res["files"]},
        )
        write_json_atomic(meta_path, record)
        return record


def _files_ok(shard_dir: Path, files: Mapping[str, Mapping[str, Any]]) -> bool:
    for name, rec in files.items():
        p = shard_dir / name
        if not p.is_file() or p.stat().st_size != rec["bytes"]:
            return False
    return True


class _RawTokens:
    """A raw little-endian token file read in slices (not memory-mapped, so reading it does
    not add the whole file to the build's resident memory)."""

    def __init__(self, path: Path, dtype: np.dtype, size: int) -> None:
        self.path, self.dtype, self.size = path, dtype, size

    def __getitem__(self, sl: slice) -> np.ndarray:
        a, b, _ = sl.indices(self.size)
        with open(self.path, "rb") as f:
            f.seek(a * self.dtype.itemsize)
            out = np.fromfile(f, dtype=self.dtype, count=max(0, b - a))
        if out.size != max(0, b - a):
            raise ValueError(f"{self.path} ended early (was it modified during the build?)")
        return out

    def max_token(self, chunk: int = 1 << 24) -> int:
        return max(int(self[a : a + chunk].max()) for a in range(0, self.size, chunk))


def build_index(
    tokens: np.ndarray | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    dtype: Any = None,
    vocab_size: int | None = None,
    item_length: int | None = None,
    item_starts: Sequence[int] | np.ndarray | None = None,
    memory_budget_bytes: int | str = 8 << 30,
    threads: int | None = None,
    windows: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    max_phrase_tokens: int = 1024,
    overwrite: bool = False,
    progress: bool = True,
    chunk_tokens: int = 1 << 24,
    shard_tokens: int | None = None,
) -> Index:
    """Builds an index over a whole token stream (a 1-D uint16/uint32 array, or a raw
    little-endian file of ``dtype``) with items of ``item_length`` tokens, or starting at
    ``item_starts`` (stream offsets, the first 0), or a single item if neither is given."""
    if isinstance(tokens, (str, os.PathLike)):
        if dtype is None:
            raise ValueError("dtype is required to read a raw token file")
        path = Path(tokens)
        if not path.is_file():
            raise FileNotFoundError(f"token file {path} does not exist")
        dt = np.dtype(dtype).newbyteorder("<")
        size = path.stat().st_size
        if size % dt.itemsize:
            raise ValueError(f"{path} has {size} bytes, not a whole number of {dt.name} tokens")
        stream = _RawTokens(path, dt, size // dt.itemsize)
    else:
        stream = np.asarray(tokens)
        if stream.ndim != 1:
            raise ValueError("tokens must be a 1-D array")
        if dtype is None:
            dtype = stream.dtype if stream.dtype in (np.uint16, np.uint32) else np.uint32
    if stream.size == 0:
        raise ValueError("the token stream is empty")
    if vocab_size is None:
        vocab_size = stream.max_token() + 1 if isinstance(stream, _RawTokens) else int(stream.max()) + 1
    if item_length is not None and item_starts is not None:
        raise ValueError("give item_length or item_starts, not both")
    if item_length is not None and item_length <= 0:
        raise ValueError(f"item_length must be positive, got {item_length}")
    n = int(stream.size)
    starts: np.ndarray | None = None
    if item_starts is not None:
        starts = np.asarray(item_starts, dtype=np.int64)
        if starts.ndim != 1 or starts.size == 0 or starts[0] != 0:
            raise ValueError("item_starts must be a 1-D array of stream offsets starting with 0")
        if np.any(np.diff(starts) <= 0) or starts[-1] >= n:
            raise ValueError("item_starts must be strictly increasing and inside the stream")
    with IndexBuilder(
        out_dir,
        dtype=dtype,
        vocab_size=vocab_size,
        memory_budget_bytes=memory_budget_bytes,
        threads=threads,
        windows=windows,
        max_phrase_tokens=max_phrase_tokens,
        total_tokens=n,
        total_items=starts.size if starts is not None else (-(-n // item_length) if item_length else 1),
        overwrite=overwrite,
        progress=progress,
        shard_tokens=shard_tokens,
    ) as builder:
        if starts is not None:
            ends = np.append(starts[1:], n)
            i = 0
            while i < starts.size:  # chunks of whole items
                j = int(np.searchsorted(starts, starts[i] + chunk_tokens, side="left"))
                j = max(j, i + 1)
                a, b = int(starts[i]), int(ends[j - 1])
                builder.add(stream[a:b], item_lengths=ends[i:j] - starts[i:j])
                i = j
        elif item_length is not None:
            step = max(1, chunk_tokens // item_length) * item_length
            for a in range(0, n, step):
                builder.add(stream[a : a + step], item_length=item_length)
        else:
            for a in range(0, n, chunk_tokens):
                builder.add(stream[a : a + chunk_tokens], item_continues=a + chunk_tokens < n)
        return builder.finish(metadata)


def assemble_index(parts: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str]) -> Index:
    """Gathers index parts built separately (e.g. on many machines, each with an
    ``IndexBuilder(..., stream_start=...)`` over consecutive whole items of one stream) under one
    manifest. The parts' shard directories are moved into ``out_dir`` (so the parts must be on its file
    system); the parts must be contiguous, start at stream offset 0 and agree on dtype, vocabulary and window
    structures. A failed or interrupted assemble moves the shards back to their parts (the next attempt does,
    after a kill), so it can be run again."""
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out} already exists")
    loaded = []
    for p in parts:
        mpath = Path(p) / MANIFEST
        if not mpath.is_file():
            raise IndexFileError(f"{p} is not a finished index part: {MANIFEST} is missing")
        m = json.loads(mpath.read_text())
        if m.get("format") != FORMAT or m.get("format_version") != FORMAT_VERSION:
            raise IndexFileError(f"{mpath} is not an exposure index of format version {FORMAT_VERSION}")
        loaded.append((Path(p), m))
    if not loaded:
        raise ValueError("no parts given")
    loaded.sort(key=lambda pm: pm[1].get("stream_start", 0))
    first = loaded[0][1]
    expect = 0
    for path, m in loaded:
        for key in ("token_dtype", "vocab_size", "separator", "windows"):
            if m[key] != first[key]:
                raise ValueError(f"part {path} differs from {loaded[0][0]} in {key}")
        if m.get("stream_start", 0) != expect:
            raise ValueError(f"part {path} starts at stream offset {m.get('stream_start', 0)}, expected {expect} "
                             "(parts must be contiguous and start at 0)")
        expect += m["token_count"]
    lengths = {m["items"].get("length") for _, m in loaded}
    whole = all(m["token_count"] % m["items"]["length"] == 0 for _, m in loaded[:-1]) if None not in lengths else False
    with build_lock(out):  # not while another build writes OUT; what an earlier attempt left is cleared
        partial = _partial_dir(out)
        journal = partial / _ASSEMBLE_JOURNAL
        if journal.is_file():  # an attempt killed while moving shards: they go back to their parts first
            _move_back([(Path(a), Path(b)) for a, b in json.loads(journal.read_text())])
        for stale in partial.iterdir():
            if stale.is_dir():
                shutil.rmtree(stale)
            else:
                stale.unlink()
        if len(lengths) == 1 and None not in lengths and whole:
            items: dict[str, Any] = {"count": sum(m["items"]["count"] for _, m in loaded), "length": lengths.pop()}
        else:
            starts = []
            for path, m in loaded:
                it = m["items"]
                if it.get("starts_file"):
                    starts.append(np.load(path / it["starts_file"]))
                else:
                    starts.append(m.get("stream_start", 0) + np.arange(it["count"], dtype=np.int64) * it["length"])
            np.save(partial / "items.npy", np.concatenate(starts))
            items = {"count": int(sum(s.size for s in starts)), "starts_file": "items.npy"}
        shards, moves = [], []
        for path, m in loaded:
            for rec in m["shards"]:
                name = f"shard-{len(shards):05d}"
                moves.append((path / rec["dir"], partial / name))
                shards.append({**rec, "dir": name})
        write_json_atomic(journal, [[str(a), str(b)] for a, b in moves])
        try:
            for src, dst in moves:
                os.replace(src, dst)
        except BaseException as exc:
            _move_back(moves)  # the moves not made are left be
            journal.unlink()
            if isinstance(exc, OSError) and exc.errno == errno.EXDEV:
                raise OSError(errno.EXDEV, f"cannot move {src} into {partial}: the parts must be on the file system "
                              "of OUT (their shards are moved, not copied)") from exc
            raise
        cuts = [m["max_phrase_tokens"] for _, m in loaded if m.get("max_phrase_tokens")]
        manifest = {
            **{k: first[k] for k in ("format", "format_version", "token_dtype", "vocab_size", "separator", "windows")},
            "stream_start": 0,
            "token_count": expect,
            "items": items,
            "max_phrase_tokens": min(cuts) if cuts else None,
            "shards": shards,
            "build": {
                "assembled_from": [str(p) for p, _ in loaded],
                "seconds": round(sum(m["build"]["seconds"] for _, m in loaded), 3),
                "peak_rss_bytes": max(m["build"]["peak_rss_bytes"] for _, m in loaded),
                "bytes_on_disk": sum(f["bytes"] for s in shards for f in s["files"].values()),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
            "metadata": first.get("metadata", {}),
        }
        manifest["build"]["bytes_per_token"] = round(manifest["build"]["bytes_on_disk"] / max(expect, 1), 4)
        write_json_atomic(partial / MANIFEST, manifest)
        os.replace(partial, out)
        _fsync_dir(out.parent)
        (out / _ASSEMBLE_JOURNAL).unlink()
    return Index(out)


_ASSEMBLE_JOURNAL = "assemble-moves.json"  # (part shard, OUT.partial shard) pairs, written before the moves


def _move_back(moves: Sequence[tuple[Path, Path]]) -> None:
    """Returns moved shard directories to their parts (last first); a move not made, or a part's directory taken
    again, is left be."""
    for src, dst in reversed(moves):
        if dst.exists() and not src.exists():
            os.replace(dst, src)


# --------------------------------------------------------------------------------------------
# Querying


def _reopen(path: str, threads: int) -> Index:
    return Index(path, threads=threads)


class _ClosedCore:
    """Stands in for the engine object of a closed :class:`Index`: any use says so (the open path pays nothing)."""

    def __init__(self, path: Path) -> None:
        self.message = f"index {path} is closed"

    def __getattr__(self, name: str) -> Any:
        raise ValueError(self.message)


class Index:
    """A built index, memory-mapped read-only. Safe to share between threads and processes (it pickles as its
    path: a process that unpickles it opens the same files)."""

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None, verify: bool = False) -> None:
        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not self.path.is_dir():
            partial = self.path.with_name(self.path.name + ".partial")
            hint = " (an unfinished build is in " + str(partial) + "; re-run the build)" if partial.exists() else ""
            raise IndexFileError(f"{self.path} is not an index directory{hint}")
        if not mpath.is_file():
            raise IndexFileError(f"{self.path} is not an exposure index: {MANIFEST} is missing")
        try:
            manifest = json.loads(mpath.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise IndexFileError(f"{mpath} is not valid JSON: {e}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise IndexFileError(f"{mpath} is not an exposure index manifest")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise IndexFileError(
                f"{mpath} has format version {manifest.get('format_version')}, this version of exposure reads "
                f"version {FORMAT_VERSION}: rebuild the index"
            )
        if manifest.get("stream_start", 0) != 0:
            raise IndexFileError(
                f"{self.path} is a part of an index (stream offsets from {manifest['stream_start']}): gather the "
                "parts with exposure.assemble_index"
            )
        try:
            self.manifest: dict[str, Any] = manifest
            self.dtype = _DTYPES[manifest["token_dtype"]]
            self.vocab_size = int(manifest["vocab_size"])
            self.num_tokens = int(manifest["token_count"])
            self.max_phrase_tokens: int | None = manifest.get("max_phrase_tokens")
            # Longest phrase that skips the general validation (see _batch).
            self._fast_len = min(_FAST_PHRASE_TOKENS, self.max_phrase_tokens or _FAST_PHRASE_TOKENS)
            items = manifest["items"]
            self.num_items = int(items["count"])
            self._item_length: int | None = items.get("length")
            self._item_starts: np.ndarray | None = None
            if items.get("starts_file"):
                self._item_starts = np.load(self.path / items["starts_file"], mmap_mode="r")
                if self._item_starts.shape != (self.num_items,):
                    raise IndexFileError(f"{self.path / items['starts_file']} does not match the manifest")
            shards = manifest["shards"]
        except KeyError as e:
            raise IndexFileError(f"{mpath} lacks the field {e}") from None
        for s in shards:
            for name, rec in s["files"].items():
                f = self.path / s["dir"] / name
                if not f.is_file():
                    raise IndexFileError(f"index file {f} is missing")
                size = f.stat().st_size
                if size != rec["bytes"]:
                    raise IndexFileError(f"index file {f} is truncated or altered: {size} bytes, the manifest says {rec['bytes']}")
                if verify and f"{_core.hash_file(str(f)):016x}" != rec["xxh64"]:
                    raise IndexFileError(f"index file {f} fails its checksum")
        self._core = _core.Index([str(self.path / s["dir"]) for s in shards], self.vocab_size,
                                 self.dtype.itemsize, _resolve_threads(threads))
        if self._core.num_tokens != self.num_tokens:
            raise IndexFileError(f"{mpath}: shards hold {self._core.num_tokens} tokens, the manifest says {self.num_tokens}")

    # -- description ---------------------------------------------------------------------------

    @property
    def metadata(self) -> dict[str, Any]:
        return self.manifest.get("metadata", {})

    @property
    def stream_id(self) -> str | None:
        """The token stream's identity, ``"DTYPE:XXH64"`` of its tokens in order (the same however the index was
        sharded or resumed; another shuffle seed or other sources give another), or None for an index assembled
        from parts or built before it was recorded. Splits tables and reference runs carry it, so that
        ``exposure eval`` can tell that a run was trained on the stream the pairs were counted in."""
        digest = self.manifest.get("stream_xxh64")
        return None if digest is None else f"{self.dtype.name}:{digest}"

    @property
    def num_shards(self) -> int:
        return len(self.manifest["shards"])

    @property
    def windows(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v["boundaries"], dtype=np.int64) for k, v in self.manifest.get("windows", {}).items()}

    @property
    def threads(self) -> int:
        return int(self._core.threads)

    @threads.setter
    def threads(self, n: int) -> None:
        self._core.threads = _resolve_threads(n)

    def close(self) -> None:
        """Unmaps the index files now (otherwise when the object is collected); later queries raise
        ``ValueError``. Also ``with exposure.Index(path) as idx: ...``. Closing twice is fine."""
        self._core = _ClosedCore(self.path)
        self._item_starts = None

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return isinstance(self._core, _ClosedCore)

    def _check_open(self) -> None:
        if isinstance(self._core, _ClosedCore):
            raise ValueError(self._core.message)

    def __reduce__(self) -> tuple[Any, ...]:
        self._check_open()
        # Pickled as its path (e.g. sent to worker processes): the other process maps the same files, nothing is
        # copied. The path is made absolute, since a worker may not share the working directory.
        return (_reopen, (str(self.path.absolute()), self.threads))

    def __repr__(self) -> str:
        if self.closed:
            return f"Index({str(self.path)!r}, closed)"
        return (f"Index({str(self.path)!r}: {self.num_tokens:,} {self.dtype.name} tokens, {self.num_items:,} items, "
                f"vocabulary {self.vocab_size:,}, {self.num_shards} shard(s))")

    # -- queries -----------------------------------------------------------------------------

    def _batch(self, phrases: Iterable[PhraseLike]) -> tuple[np.ndarray, np.ndarray]:
        """Flattens phrases to (tokens, int64 offsets), validating them all at once. Tokens are uint32,
        except one short unsigned array, passed on as it is (see ``count``)."""
        if type(phrases) is list and len(phrases) == 1:  # one short phrase: per-call latency matters there
            p = phrases[0]
            if type(p) is np.ndarray and p.ndim == 1 and p.dtype in _ENGINE_ID_DTYPES and 0 < p.size <= self._fast_len:
                return p, _SINGLE_OFFSETS[p.size]
            fast = self._one_phrase(p)
            if fast is not None:
                return fast
        if isinstance(phrases, np.ndarray) and phrases.ndim == 1:
            raise ValueError("pass a list of phrases (wrap a single phrase in a list)")
        arrays = [np.asarray(p) for p in phrases]
        offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
        if not arrays:
            return np.zeros(0, dtype=np.uint32), offsets
        lengths = np.fromiter((a.size for a in arrays), dtype=np.int64, count=len(arrays))
        np.cumsum(lengths, out=offsets[1:])
        if lengths.min() == 0 or any(a.ndim != 1 for a in arrays):
            i = next(i for i, a in enumerate(arrays) if a.ndim != 1 or a.size == 0)
            raise ValueError(f"phrase {i} is empty" if arrays[i].size == 0 else f"phrase {i} must be a 1-D sequence of token ids")
        flat = np.concatenate(arrays)
        if not np.issubdtype(flat.dtype, np.integer):
            i = next(i for i, a in enumerate(arrays) if not np.issubdtype(a.dtype, np.integer))
            raise ValueError(f"phrase {i} must hold integer token ids, not {arrays[i].dtype}")
        lo, hi = int(flat.min()), int(flat.max())
        if lo < 0 or hi >= self.vocab_size:
            bad = lo if lo < 0 else hi
            i = int(np.searchsorted(offsets, int(np.flatnonzero(flat == bad)[0]), side="right")) - 1
            raise ValueError(f"phrase {i} has token id {bad}, outside the vocabulary [0, {self.vocab_size})")
        if self.max_phrase_tokens is not None and lengths.max() > self.max_phrase_tokens:
            i = int(np.argmax(lengths))
            raise ValueError(f"phrase {i} has {lengths[i]} tokens; this index answers phrases of at most "
                             f"{self.max_phrase_tokens} (it was cut inside an item)")
        return np.ascontiguousarray(flat, dtype=np.uint32), offsets

    def _one_phrase(self, phrase: PhraseLike) -> tuple[np.ndarray, np.ndarray] | None:
        """(tokens, offsets) of one short phrase without numpy reductions (they cost more than the whole
        query for a few tokens), checked in plain Python. None sends it down the general path (and its
        errors). Unsigned arrays of up to 32-bit ids do not come here: ``_batch`` passes them on as they are."""
        if type(phrase) is np.ndarray:
            if phrase.ndim != 1 or phrase.dtype.kind != "i" or not 0 < phrase.size <= _FAST_PHRASE_TOKENS:
                return None
            values = phrase.tolist()
        elif type(phrase) is list and 0 < len(phrase) <= _FAST_PHRASE_TOKENS and all(type(t) is int for t in phrase):
            values = phrase
        else:
            return None
        if min(values) < 0 or max(values) >= self.vocab_size:
            return None
        if self.max_phrase_tokens is not None and len(values) > self.max_phrase_tokens:
            return None
        return np.array(values, dtype=np.uint32), _SINGLE_OFFSETS[len(values)]

    def count(self, phrases: Iterable[PhraseLike]) -> np.ndarray:
        """Number of occurrences of each phrase (int64)."""
        tokens, offsets = self._batch(phrases)
        # Written out in each query (a helper costs ~0.4 us of a ~4 us call): the ``_u16`` form
        # takes uint16 ids without a numpy conversion; any other dtype is converted to uint32.
        return (self._core.count_u16 if tokens.dtype is _U16 else self._core.count)(tokens, offsets)

    def first_position(self, phrases: Iterable[PhraseLike]) -> np.ndarray:
        """Smallest stream offset at which each phrase occurs, -1 when it never does."""
        tokens, offsets = self._batch(phrases)
        return (self._core.first_position_u16 if tokens.dtype is _U16 else self._core.first_position)(tokens, offsets)

    def window_counts(self, phrases: Iterable[PhraseLike], boundaries: Iterable[int] | np.ndarray) -> np.ndarray:
        """Occurrences of each phrase with start offset in each window [b_k, b_k+1): int64
        array of shape (phrases, len(boundaries) - 1). Fast (independent of the number of
        occurrences) when a stored window structure's boundaries include these; see add_windows."""
        b = np.asarray(boundaries)
        if b.ndim != 1 or (b.size and b.dtype.kind not in "iu"):
            raise ValueError("window boundaries must be a 1-D sequence of integer stream offsets")
        if b.dtype.kind == "u" and b.size and int(b.max()) > np.iinfo(np.int64).max:
            raise ValueError("window boundaries must be below 2**63")
        tokens, offsets = self._batch(phrases)
        # The engine checks that they are non-negative and strictly increasing: a check here
        # would cost more than the query.
        wc = self._core.window_counts_u16 if tokens.dtype is _U16 else self._core.window_counts
        return wc(tokens, offsets, b.astype(np.int64, copy=False))

    def add_windows(self, name: str, boundaries: Iterable[int] | np.ndarray) -> None:
        """Builds and stores a window structure so window_counts over these boundaries (or any
        subset of them) costs the same however often a phrase occurs. The suffix arrays are
        untouched; an existing structure of the same name is replaced."""
        b = _windows_arg({name: boundaries})[name]
        records = self._core.add_windows(name, b)
        manifest = json.loads((self.path / MANIFEST).read_text())
        for shard, rec in zip(manifest["shards"], records):
            shard["files"][rec["name"]] = {"bytes": rec["bytes"], "xxh64": f"{rec['xxh64']:016x}"}
            meta = self.path / shard["dir"] / SHARD_META
            if meta.exists():
                sm = json.loads(meta.read_text())
                sm["files"] = shard["files"]
                write_json_atomic(meta, sm)
        manifest.setdefault("windows", {})[name] = {"boundaries": [int(x) for x in b]}
        write_json_atomic(self.path / MANIFEST, manifest)
        self.manifest = manifest
        self._core = _core.Index([str(self.path / s["dir"]) for s in manifest["shards"]], self.vocab_size,
                                 self.dtype.itemsize, self.threads)

    def positions(self, phrase: PhraseLike, limit: int | None = None) -> np.ndarray:
        """Sorted stream offsets of the phrase's occurrences (the first ``limit`` of them)."""
        tokens, _ = self._batch([phrase])
        if limit is not None and limit < 0:
            raise ValueError("limit must be non-negative")
        return self._core.positions(tokens, np.iinfo(np.uint64).max if limit is None else int(limit))

    def tokens(self, start: int, stop: int) -> np.ndarray:
        """Stream tokens [start, stop)."""
        if not 0 <= start <= stop <= self.num_tokens:
            raise ValueError(f"range [{start}, {stop}) is outside the stream [0, {self.num_tokens})")
        return self._core.copy_stream(int(start), int(stop)).astype(self.dtype)

    @overload
    def item_of(self, offset: int) -> int: ...
    @overload
    def item_of(self, offset: Sequence[int] | np.ndarray) -> np.ndarray: ...
    def item_of(self, offset: int | Sequence[int] | np.ndarray) -> int | np.ndarray:
        """The item holding each stream offset: an int for an int, an int64 array for an array (e.g. of
        :meth:`positions`)."""
        self._check_open()
        arr = np.asarray(offset)
        if arr.dtype.kind not in "iu" and arr.size:
            raise ValueError(f"offsets must be integers, not {arr.dtype}")
        arr = arr.astype(np.int64)
        outside = (arr < 0) | (arr >= self.num_tokens)
        if np.any(outside):
            raise ValueError(f"offset {int(arr[outside].flat[0])} is outside the stream [0, {self.num_tokens})")
        if self._item_starts is not None:
            items = np.searchsorted(self._item_starts, arr, side="right") - 1
        else:
            assert self._item_length is not None
            items = arr // self._item_length
        return int(items) if items.ndim == 0 else items.astype(np.int64)

    def item_bounds(self, i: int) -> tuple[int, int]:
        """(start, end) stream offsets of item i."""
        self._check_open()
        if not 0 <= i < self.num_items:
            raise ValueError(f"item {i} is outside [0, {self.num_items})")
        if self._item_starts is not None:
            start = int(self._item_starts[i])
            end = int(self._item_starts[i + 1]) if i + 1 < self.num_items else self.num_tokens
            return start, end
        assert self._item_length is not None
        return i * self._item_length, min((i + 1) * self._item_length, self.num_tokens)

    def context(self, offset: int, before: int = 16, after: int = 16) -> Context:
        """The tokens around stream offset ``offset``, within its item: stream offsets
        ``[offset - before, offset + after)`` clipped to the item, so ``after`` counts from the occurrence itself
        (its first token included)."""
        if before < 0 or after < 0:
            raise ValueError(f"before and after must be non-negative, got {before} and {after}")
        item = self.item_of(offset)
        a, b = self.item_bounds(item)
        start, stop = max(a, offset - before), min(b, offset + after)
        return Context(self.tokens(start, stop), start, offset, item, a, b)

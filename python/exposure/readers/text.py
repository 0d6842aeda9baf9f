"""Raw text corpora, tokenized and packed into fixed-length items the way a simple training loop does.

Documents:

* ``.txt`` (optionally ``.gz`` / ``.zst``): with ``unit="line"`` (default) every line that is not blank
  is one document, kept verbatim without its line break (WikiText, the Gutenberg corpus and CHILDES
  utterances are one paragraph / utterance per line); with ``unit="paragraph"`` a document is a run of
  non-blank lines, joined with ``"\\n"``, between blank lines.
* ``.jsonl`` (optionally ``.gz`` / ``.zst``): one JSON object per line, the document is its
  ``text_field`` (default ``"text"``); blank lines are skipped; a line that is not JSON, not an object,
  or lacks the field is an error naming the file and line.
* ``.parquet``: the ``text_field`` column; null values are skipped.

Documents whose text is empty or only whitespace are skipped everywhere.

Packing (recorded in the index metadata, so a model trained on the index's items has a known order):

1. every document is tokenized without special tokens and followed by one EOS token;
2. the documents are put in a seeded order (:func:`shuffle_order`), or kept in file order when the seed
   is None; files are read in the order given;
3. the documents are concatenated and cut into items of ``item_length`` tokens; the remainder that does
   not fill a last item is dropped (``dropped_tokens`` in the metadata).

A training loop that reads the index's items in order, ``items_per_step`` consecutive items per step,
then trains in exactly the schedule's order.
"""

from __future__ import annotations

import gzip
import io
import itertools
import json
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from tqdm import tqdm

from exposure.readers import Chunk, CorpusError, index_dtype_for
from exposure.tokenizer import LoadedTokenizer

TEXT_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
UNITS = ("line", "paragraph")

def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def shuffle_order(n_docs: int, seed: int | None) -> np.ndarray:
    """The document order for ``seed``: documents sorted by ``key(i) = splitmix64(splitmix64(seed) + i)``
    (uint64, wrapping; ties keep file order). None keeps file order. Independent of numpy's RNG, so
    the order can be reproduced from the seed alone."""
    if seed is None:
        return np.arange(n_docs, dtype=np.int64)
    base = _splitmix64(np.array([int(seed) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
    with np.errstate(over="ignore"):
        keys = _splitmix64(np.arange(n_docs, dtype=np.uint64) + base)
    return np.argsort(keys, kind="stable").astype(np.int64)


def _strip_compression(path: Path) -> tuple[str, str | None]:
    name = path.name.lower()
    for comp in (".gz", ".zst"):
        if name.endswith(comp):
            return Path(name[: -len(comp)]).suffix, comp
    return path.suffix.lower(), None


def text_kind(path: str | Path) -> str:
    """``txt``, ``jsonl`` or ``parquet`` for a source path (compression suffixes allowed for txt/jsonl)."""
    p = Path(path)
    suffix, comp = _strip_compression(p)
    if suffix == ".parquet" and comp is None:
        return "parquet"
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    if suffix == ".txt":
        return "txt"
    raise CorpusError(f"{p}: not a .txt, .jsonl (optionally .gz/.zst) or .parquet file")


class ReadPosition:
    """Bytes of the source files consumed so far (compressed bytes for .gz/.zst), for progress bars."""

    def __init__(self) -> None:
        self.done = 0  # bytes of the files already finished
        self._current: Any = None  # callable -> bytes of the current file consumed

    def now(self) -> int:
        cur = self._current
        try:
            return self.done + (int(cur()) if cur is not None else 0)
        except (OSError, ValueError):
            return self.done


def _open_binary(path: Path) -> tuple[IO[bytes], IO[bytes]]:
    """(decompressed stream, underlying raw file)."""
    _, comp = _strip_compression(path)
    raw = open(path, "rb")
    if comp == ".gz":
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw
    if comp == ".zst":
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw), buffer_size=1 << 20), raw
    return raw, raw


def _lines(path: Path, position: ReadPosition | None = None) -> Iterator[tuple[int, str]]:
    """(line number, decoded line without its line break); undecodable UTF-8 names file and line."""
    try:
        f, raw = _open_binary(path)
        with raw, f:
            if position is not None:
                position._current = raw.tell
            for lineno, line_bytes in enumerate(f, 1):
                try:
                    line = line_bytes.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise CorpusError(f"{path}:{lineno}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
                if line.endswith("\n"):
                    line = line[:-2] if line.endswith("\r\n") else line[:-1]
                if lineno == 1 and line.startswith("\ufeff"):  # a byte-order mark (Windows editors) is not text
                    line = line[1:]
                yield lineno, line
    except CorpusError:
        raise
    except FileNotFoundError:
        raise
    except Exception as exc:  # OSError, EOFError, gzip.BadGzipFile, zstandard.ZstdError, ...
        raise CorpusError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from None
    finally:
        if position is not None:
            position._current = None
    if position is not None:
        position.done += path.stat().st_size


def iter_documents(
    path: str | Path, unit: str = "line", text_field: str = "text", position: ReadPosition | None = None
) -> Iterator[str]:
    """The documents of one source file, in file order (see the module docstring)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    kind = text_kind(p)
    if unit not in UNITS:
        raise ValueError(f"unknown text unit {unit!r}; use one of {UNITS}")
    if kind == "txt":
        if unit == "line":
            for _, line in _lines(p, position):
                if line.strip():
                    yield line
        else:
            para: list[str] = []
            for _, line in _lines(p, position):
                if line.strip():
                    para.append(line)
                elif para:
                    yield "\n".join(para)
                    para = []
            if para:
                yield "\n".join(para)
    elif kind == "jsonl":
        for lineno, line in _lines(p, position):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorpusError(f"{p}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(rec, dict):
                raise CorpusError(f"{p}:{lineno}: expected a JSON object, got {type(rec).__name__}")
            if text_field not in rec:
                raise CorpusError(f"{p}:{lineno}: no {text_field!r} field (fields: {', '.join(list(rec)[:8])})")
            text = rec[text_field]
            if not isinstance(text, str):
                raise CorpusError(f"{p}:{lineno}: field {text_field!r} is {type(text).__name__}, not a string")
            if text.strip():
                yield text
    else:
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(p)
        except Exception as exc:
            raise CorpusError(f"{p}: not a readable parquet file ({exc})") from None
        names = pf.schema_arrow.names
        if text_field not in names:
            raise CorpusError(f"{p}: no column {text_field!r} (columns: {', '.join(names)}); use --text-field")
        size, rows, done = p.stat().st_size, max(1, pf.metadata.num_rows), 0
        for batch in pf.iter_batches(columns=[text_field], batch_size=8192):
            done += batch.num_rows
            if position is not None:
                position._current = lambda d=done: size * d // rows
            col = batch.column(0)
            for value in col.to_pylist():
                if value is None:
                    continue
                if not isinstance(value, str):
                    raise CorpusError(f"{p}: column {text_field!r} holds {type(value).__name__} values, not strings")
                if value.strip():
                    yield value
        if position is not None:
            position._current = None
            position.done += size


def _batches(paths: Sequence[Path], unit: str, text_field: str, batch_chars: int) -> Iterator[tuple[list[str], int]]:
    """Documents in batches of about ``batch_chars`` characters, with the source bytes consumed so far."""
    docs: list[str] = []
    chars = 0
    position = ReadPosition()
    for path in paths:
        for doc in iter_documents(path, unit, text_field, position):
            docs.append(doc)
            chars += len(doc)
            if chars >= batch_chars:
                yield docs, position.now()
                docs, chars = [], 0
    if docs:
        yield docs, position.now()


def _prefetch(it: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """Run ``it`` in a background thread (reading and decompressing overlap tokenizing)."""
    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for x in it:
                while not stop.is_set():
                    try:
                        q.put(("item", x), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(("done", None))
        except BaseException as exc:  # handed to the consumer
            q.put(("error", exc))

    t = threading.Thread(target=work, daemon=True)
    t.start()
    try:
        while True:
            kind, x = q.get()
            if kind == "done":
                return
            if kind == "error":
                raise x
            yield x
    finally:
        stop.set()
        t.join(timeout=5)


@dataclass
class TokenizedCorpus:
    """Pass 1 output: documents (each followed by EOS) back to back in file order."""

    tokens_path: Path
    doc_lengths: np.ndarray  # int64, tokens per document including its EOS
    dtype: type[np.unsignedinteger[Any]]

    @property
    def num_docs(self) -> int:
        return len(self.doc_lengths)

    @property
    def num_tokens(self) -> int:
        return int(self.doc_lengths.sum(dtype=np.int64))


def tokenize_corpus(
    paths: Sequence[str | Path],
    tokenizer: LoadedTokenizer,
    tokens_path: str | Path,
    *,
    unit: str = "line",
    text_field: str = "text",
    batch_chars: int = 1 << 20,
    progress: bool = True,
) -> TokenizedCorpus:
    """Tokenize every document (no special tokens) + EOS, in file order, appending to ``tokens_path``.

    Uses the tokenizer's batched encoder (Rust threads on all cores; ``RAYON_NUM_THREADS`` limits them).
    """
    if tokenizer.eos_id is None:
        raise CorpusError(f"tokenizer {tokenizer.name} ({tokenizer.path}) has no EOS token to put between documents")
    srcs = [Path(p) for p in paths]
    for p in srcs:
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such file")
        text_kind(p)
    # the index keeps the id just above the vocabulary as its item separator, so that id must fit too
    dtype = index_dtype_for(max(tokenizer.vocab_size, tokenizer.eos_id + 1))
    eos = tokenizer.eos_id
    lengths: list[np.ndarray] = []
    total_bytes = sum(p.stat().st_size for p in srcs)
    # progress in source bytes (so the bar has an ETA), with the token rate alongside
    bar = tqdm(
        total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc="tokenize",
        disable=not progress, dynamic_ncols=True,
    )
    t0 = time.perf_counter()
    n_tokens = 0
    with open(tokens_path, "wb") as out:
        for docs, read_bytes in _prefetch(_batches(srcs, unit, text_field, batch_chars)):
            encs = tokenizer.tokenizer.encode_batch_fast(docs, add_special_tokens=False)
            ids = [e.ids for e in encs]
            lens = np.fromiter((len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))
            n = int(lens.sum())
            flat = np.fromiter(
                itertools.chain.from_iterable(itertools.chain(x, (eos,)) for x in ids), dtype=dtype, count=n
            )
            out.write(flat.tobytes())
            lengths.append(lens)
            n_tokens += n
            bar.update(max(0, min(read_bytes, total_bytes) - bar.n))
            rate = n_tokens / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix_str(f"{n_tokens:,} tok, {rate:,.0f} tok/s", refresh=False)
    bar.update(total_bytes - bar.n)
    bar.close()
    doc_lengths = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
    return TokenizedCorpus(Path(tokens_path), doc_lengths, dtype)


class PackedTextReader:
    """A tokenized corpus in the seeded document order, cut into items of ``item_length`` tokens."""

    def __init__(self, corpus: TokenizedCorpus, item_length: int, seed: int | None, sources: Sequence[Path] = ()) -> None:
        if item_length <= 0:
            raise ValueError(f"item length must be positive, got {item_length}")
        self.corpus = corpus
        self.L = int(item_length)
        self.seed = seed
        self.dtype = corpus.dtype
        self._sources = [Path(s) for s in sources]
        self.order = shuffle_order(corpus.num_docs, seed)
        total = corpus.num_tokens
        self.total_doc_tokens = total
        self._num_items = total // self.L
        self.dropped_tokens = total - self._num_items * self.L
        self.starts = np.concatenate([[0], np.cumsum(corpus.doc_lengths)]).astype(np.int64)

    @property
    def num_items(self) -> int:
        return self._num_items

    @property
    def num_tokens(self) -> int:
        return self._num_items * self.L

    @property
    def item_length(self) -> int:
        return self.L

    @property
    def source_files(self) -> list[Path]:
        return list(self._sources)

    def describe(self) -> dict[str, Any]:
        return {
            "documents": self.corpus.num_docs,
            "document_tokens": self.total_doc_tokens,
            "item_length": self.L,
            "items": self._num_items,
            "dropped_tokens": self.dropped_tokens,
            "remainder": "dropped",
            "shuffle_seed": self.seed,
            "shuffle": "documents sorted by splitmix64(splitmix64(seed) + document number)" if self.seed is not None else "file order",
        }

    def chunks(self, max_tokens: int) -> Iterator[Chunk]:
        """Whole items of the packed stream, about ``max_tokens`` tokens each."""
        if self._num_items == 0:
            return
        per_chunk = max(1, max_tokens // self.L) * self.L
        limit = self.num_tokens
        src = np.memmap(self.corpus.tokens_path, dtype=self.dtype, mode="r") if self.corpus.num_tokens else None
        lens = self.corpus.doc_lengths
        buf = np.empty(0, dtype=self.dtype)
        emitted = 0
        d = 0
        n_docs = len(self.order)
        while emitted < limit:
            # gather documents until the buffer holds a chunk (or the documents run out)
            need = min(per_chunk, limit - emitted)
            parts = [buf]
            have = len(buf)
            while have < need and d < n_docs:
                # take a block of documents at once (vectorized gather from the memmap)
                cs = np.cumsum(lens[self.order[d : d + 65536]])
                k = int(np.searchsorted(cs, need - have, side="left")) + 1
                k = min(k, len(cs))
                docs = self.order[d : d + k]
                dl = lens[docs]
                starts = self.starts[docs]
                total = int(dl.sum())
                rel = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(dl) - dl, dl)
                assert src is not None
                parts.append(np.asarray(src[np.repeat(starts, dl) + rel]))
                have += total
                d += k
            buf = np.concatenate(parts) if len(parts) > 1 else buf
            take = min(need, len(buf)) // self.L * self.L
            if take == 0:
                break
            yield Chunk(buf[:take].copy(), item_length=self.L)
            buf = buf[take:]
            emitted += take


def text_sources(sources: Sequence[str | Path]) -> list[Path]:
    """Expand directories (their text files, sorted by name) and check every file's kind."""
    out: list[Path] = []
    for s in sources:
        p = Path(s)
        if p.is_dir():
            found = []
            for q in sorted(p.iterdir()):
                if q.is_file():
                    try:
                        text_kind(q)
                    except CorpusError:
                        continue
                    found.append(q)
            if not found:
                raise CorpusError(f"{p}: directory holds no .txt/.jsonl/.parquet files")
            out.extend(found)
        elif p.is_file():
            text_kind(p)
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or directory")
    return out


__all__ = [
    "PackedTextReader",
    "TokenizedCorpus",
    "iter_documents",
    "shuffle_order",
    "text_kind",
    "text_sources",
    "tokenize_corpus",
]

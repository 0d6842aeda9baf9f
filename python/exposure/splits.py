"""Proxy-train / proxy-validation splits of BLiMP pairs at every checkpoint.

A pair is **proxy-train at checkpoint S** when its good sentence's critical phrase occurred in the
tokens trained on before S (``0 <= first_step_good < S``, checkpoint S having been trained on steps
0 … S−1), otherwise **proxy-validation**; pairs move from validation to train as their phrase appears.

Every surface variant of a phrase (see :func:`exposure.critical.surface_variants`) is queried; a pair's
count and per-window exposures are the sums over its variants and its first step the earliest of them.
The bad sentence's phrase is counted the same way: corpora contain errors, and how often the model saw
the ungrammatical phrase is worth knowing. A pair without a critical phrase has count 0, first step -1
and is validation at every checkpoint (``has_phrase`` tells them apart).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from exposure.schedule import Schedule
from exposure.tokenizer import TokenizerMismatchError

PHRASE_COLUMNS: tuple[str, ...] = (
    "pair_uid",
    "uid",
    "pair_id",
    "phenomenon",
    "sentence_good",
    "sentence_bad",
    "rule",
    "has_phrase",
    "phrase_good",
    "phrase_bad",
    "good_critical_start",
    "good_critical_token",
    "good_context_token",
    "bad_critical_start",
    "bad_critical_token",
    "bad_context_token",
    "query_good",
    "query_bad",
)
"""Columns a phrases table (``exposure phrases``) must have for :func:`make_splits`."""

TRAIN = "train"
VALIDATION = "validation"


class _Index(Protocol):
    """The part of :class:`exposure.Index` the splits need."""

    @property
    def num_tokens(self) -> int: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def metadata(self) -> dict[str, Any]: ...

    def count(self, phrases: Sequence[Sequence[int]]) -> np.ndarray: ...

    def first_position(self, phrases: Sequence[Sequence[int]]) -> np.ndarray: ...

    def window_counts(self, phrases: Sequence[Sequence[int]], bounds: np.ndarray) -> np.ndarray: ...


def read_phrases(path: str | Path) -> pa.Table:
    """Read a phrases table written by ``exposure phrases``; refuse files that lack its columns."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no phrases table at {p}")
    try:
        table = pq.read_table(p)
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise ValueError(f"{p}: not a readable Parquet file ({exc})") from None
    check_phrase_table(table, str(p))
    return table


def check_phrase_table(table: pa.Table, where: str = "phrases table") -> None:
    missing = [c for c in PHRASE_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{where}: not a phrases table from `exposure phrases` (missing {', '.join(missing)})")


def _meta(table: pa.Table) -> dict[str, str]:
    raw = table.schema.metadata or {}
    return {k.decode(): v.decode() for k, v in raw.items()}


def check_tokenizer(phrases: pa.Table, index: _Index) -> None:
    """Refuse a phrases table tokenized with another tokenizer than the index's (when the index records
    one), and any token id outside the index's vocabulary."""
    sha = _meta(phrases).get("exposure.tokenizer_sha256")
    rec = (index.metadata or {}).get("tokenizer") or {}
    if sha and rec.get("sha256") and rec["sha256"] != sha:
        raise TokenizerMismatchError(
            f"the phrases were tokenized with tokenizer sha256 {sha[:12]}… but the index was built with "
            f"{rec.get('name')!r} (sha256 {str(rec['sha256'])[:12]}…); rerun `exposure phrases --index` "
            f"with this index"
        )
    for col in ("query_good", "query_bad"):
        flat = phrases.column(col).combine_chunks().flatten().flatten()
        if len(flat):
            top = int(np.max(flat.to_numpy(zero_copy_only=False)))
            if top >= int(index.vocab_size):
                raise TokenizerMismatchError(
                    f"{col} holds token id {top}, outside the index's vocabulary of {index.vocab_size}: "
                    f"the phrases were tokenized with another tokenizer"
                )


def row_queries(table: pa.Table, col: str) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """For every variant query of every row: its row number, and the query's tokens."""
    rows: list[int] = []
    queries: list[tuple[int, ...]] = []
    for r, qs in enumerate(table.column(col).to_pylist()):
        for q in qs or ():
            rows.append(r)
            queries.append(tuple(int(t) for t in q))
    return np.asarray(rows, dtype=np.int64), queries


def exposure_of(
    index: _Index,
    schedule: Schedule,
    columns: Sequence[tuple[np.ndarray, list[tuple[int, ...]]]],
    n_rows: int,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Count, first step and per-window exposures per row, summed over each row's variant queries.

    ``columns`` holds, per table column, the pair (row numbers, queries) of :func:`row_queries`.
    Every distinct query is sent to the index once.
    """
    uniq: dict[tuple[int, ...], int] = {}
    for _rows, queries in columns:
        for q in queries:
            uniq.setdefault(q, len(uniq))
    phrases = [list(q) for q in uniq]
    k = len(schedule.checkpoints)
    if phrases:
        counts = np.asarray(index.count(phrases), dtype=np.int64)
        first = np.asarray(schedule.first_step(index, phrases), dtype=np.int64)
        expo = np.asarray(schedule.exposures(index, phrases), dtype=np.int64)
    else:
        counts = np.zeros(0, dtype=np.int64)
        first = np.zeros(0, dtype=np.int64)
        expo = np.zeros((0, k), dtype=np.int64)
    never = np.iinfo(np.int64).max
    out = []
    for rows, queries in columns:
        qid = np.asarray([uniq[q] for q in queries], dtype=np.int64)
        c = np.zeros(n_rows, dtype=np.int64)
        f = np.full(n_rows, never, dtype=np.int64)
        e = np.zeros((n_rows, k), dtype=np.int64)
        if len(qid):
            np.add.at(c, rows, counts[qid])
            np.minimum.at(f, rows, np.where(first[qid] >= 0, first[qid], never))
            np.add.at(e, rows, expo[qid])
        f[f == never] = -1
        out.append((c, f, e))
    return out


def split_labels(first_step: np.ndarray, checkpoints: Sequence[int]) -> np.ndarray:
    """bool ``[n, len(checkpoints)]``: proxy-train at each checkpoint (``0 <= first_step < S``)."""
    fs = np.asarray(first_step, dtype=np.int64)[:, None]
    ck = np.asarray(checkpoints, dtype=np.int64)[None, :]
    return (fs >= 0) & (fs < ck)


def _list_array(values: np.ndarray, typ: pa.DataType) -> pa.Array:
    """``[n, k]`` array as a list array of n rows of k values."""
    n, k = values.shape
    offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
    flat = pa.array(values.reshape(-1), type=typ)
    if isinstance(flat, pa.ChunkedArray):  # pyarrow chunks large numpy string arrays (~10^6 labels and more)
        flat = pa.concat_arrays(flat.chunks)
    return pa.ListArray.from_arrays(offsets, flat)


def make_splits(phrases: pa.Table, index: _Index, schedule: Schedule, index_path: str | None = None) -> pa.Table:
    """The splits table: the phrases table plus, per pair, ``count_good``, ``first_step_good``,
    ``first_checkpoint_good``, ``exposures_good`` (per checkpoint window), the same for ``bad``, and
    ``split`` (``"train"``/``"validation"`` per checkpoint).

    Table metadata: ``exposure.checkpoints`` (JSON list of steps), ``exposure.tokenizer_sha256``,
    ``exposure.schedule`` (JSON), ``exposure.index``, ``exposure.index_tokens``, ``exposure.index_stream``
    (:attr:`exposure.Index.stream_id`, empty when unknown).
    """
    check_phrase_table(phrases)
    check_tokenizer(phrases, index)
    schedule.check_index(index)
    n = phrases.num_rows
    (cg, fg, eg), (cb, fb, eb) = exposure_of(
        index, schedule, [row_queries(phrases, "query_good"), row_queries(phrases, "query_bad")], n
    )
    ck = schedule.checkpoints
    train = split_labels(fg, ck)
    labels = np.where(train, TRAIN, VALIDATION)
    out = phrases
    for name, arr in (
        ("count_good", pa.array(cg, type=pa.int64())),
        ("first_step_good", pa.array(fg, type=pa.int64())),
        ("first_checkpoint_good", pa.array(schedule.first_checkpoint(fg), type=pa.int64())),
        ("exposures_good", _list_array(eg, pa.int64())),
        ("count_bad", pa.array(cb, type=pa.int64())),
        ("first_step_bad", pa.array(fb, type=pa.int64())),
        ("first_checkpoint_bad", pa.array(schedule.first_checkpoint(fb), type=pa.int64())),
        ("exposures_bad", _list_array(eb, pa.int64())),
        ("split", _list_array(labels, pa.string())),
    ):
        if name in out.column_names:
            out = out.drop_columns([name])
        out = out.append_column(name, arr)
    meta = _meta(phrases)
    meta.update(
        {
            "exposure.checkpoints": json.dumps(list(ck)),
            "exposure.schedule": json.dumps(schedule.to_dict()),
            "exposure.index": str(index_path if index_path is not None else getattr(index, "path", "")),
            "exposure.index_tokens": str(int(index.num_tokens)),
            "exposure.index_stream": getattr(index, "stream_id", None) or "",
        }
    )
    meta.setdefault("exposure.tokenizer_sha256", "")
    return out.replace_schema_metadata(meta)


def checkpoints_of(table: pa.Table) -> tuple[int, ...]:
    """The checkpoint steps a splits table was made for (its ``exposure.checkpoints`` metadata)."""
    raw = _meta(table).get("exposure.checkpoints")
    if raw is None:
        raise ValueError("not a splits table: no exposure.checkpoints metadata")
    return tuple(int(x) for x in json.loads(raw))


def summarize(table: pa.Table, max_checkpoints: int = 6) -> str:
    """Per phenomenon: pairs, pairs with a phrase, and proxy-train pairs at a few checkpoints (the
    first, the last, and evenly spaced ones in between)."""
    ck = checkpoints_of(table)
    if len(ck) <= max_checkpoints:
        show = list(range(len(ck)))
    else:
        show = sorted({round(i * (len(ck) - 1) / (max_checkpoints - 1)) for i in range(max_checkpoints)})
    phen = table.column("phenomenon").to_pylist()
    has = np.asarray(table.column("has_phrase").to_pylist(), dtype=bool)
    fg = table.column("first_step_good").to_numpy()
    fb = table.column("first_step_bad").to_numpy()
    train = split_labels(fg, ck)
    names = sorted(set(phen))
    width = max([len(p) for p in names] + [10])
    head = f"{'phenomenon':<{width}} {'pairs':>6} {'phrase':>6} {'bad seen':>8}  " + " ".join(
        f"{'S=' + str(ck[i]):>9}" for i in show
    )
    lines = [head, " " * (width + 32) + "proxy-train pairs at checkpoint S"]
    ph = np.asarray(phen, dtype=object)
    for name in names + ["total"]:
        m = np.ones(len(ph), dtype=bool) if name == "total" else ph == name
        row = f"{name:<{width}} {int(m.sum()):>6} {int((m & has).sum()):>6} {int((m & (fb >= 0)).sum()):>8}  "
        row += " ".join(f"{int(train[m, i].sum()):>9}" for i in show)
        lines.append(row)
    return "\n".join(lines)


__all__ = [
    "PHRASE_COLUMNS",
    "TRAIN",
    "VALIDATION",
    "check_phrase_table",
    "check_tokenizer",
    "checkpoints_of",
    "exposure_of",
    "make_splits",
    "read_phrases",
    "row_queries",
    "split_labels",
    "summarize",
]

"""The engine's queries against a brute-force numpy oracle, on random, adversarial and
hypothesis-generated streams, with and without item boundaries, in one and several shards."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import exposure
from exposure import _core


# ------------------------------------------------------------------------------------- oracle
class Oracle:
    """Brute force over the stream: an occurrence is a start offset whose match lies in one item."""

    def __init__(self, stream: np.ndarray, item_starts: np.ndarray | None) -> None:
        self.t = np.asarray(stream, dtype=np.int64)
        n = self.t.size
        starts = np.array([0]) if item_starts is None else np.asarray(item_starts)
        self.item_of = np.searchsorted(starts, np.arange(n), side="right") - 1

    def positions(self, p: np.ndarray) -> np.ndarray:
        p = np.asarray(p, dtype=np.int64)
        m, n = p.size, self.t.size
        if m > n:
            return np.zeros(0, dtype=np.int64)
        win = np.lib.stride_tricks.sliding_window_view(self.t, m)
        hit = np.all(win == p, axis=1)
        idx = np.flatnonzero(hit)
        same = self.item_of[idx] == self.item_of[idx + m - 1]
        return idx[same]

    def count(self, p) -> int:
        return int(self.positions(p).size)

    def first(self, p) -> int:
        pos = self.positions(p)
        return int(pos[0]) if pos.size else -1

    def windows(self, p, bounds) -> np.ndarray:
        pos = self.positions(p)
        b = np.asarray(bounds, dtype=np.int64)
        col = np.searchsorted(b, pos, side="right") - 1
        ok = (col >= 0) & (col < b.size - 1)
        return np.bincount(col[ok], minlength=b.size - 1)[: b.size - 1]


def phrases_for(stream: np.ndarray, rng: np.random.Generator, n: int, vocab: int, max_len: int = 6) -> list[np.ndarray]:
    out = []
    for _ in range(n):
        m = int(rng.integers(1, max_len + 1))
        if rng.random() < 0.7 and stream.size > m:
            s = int(rng.integers(0, stream.size - m + 1))
            out.append(stream[s : s + m].astype(np.int64))
        else:
            out.append(rng.integers(0, vocab, size=m))
    return out


def check_all(idx: exposure.Index, oracle: Oracle, phrases, bounds_list) -> None:
    np.testing.assert_array_equal(idx.count(phrases), [oracle.count(p) for p in phrases])
    np.testing.assert_array_equal(idx.first_position(phrases), [oracle.first(p) for p in phrases])
    for bounds in bounds_list:
        got = idx.window_counts(phrases, bounds)
        want = np.array([oracle.windows(p, bounds) for p in phrases]).reshape(len(phrases), len(bounds) - 1)
        np.testing.assert_array_equal(got, want)
    for p in phrases[:10]:
        # one phrase per call takes a fast path; every form of a phrase gives the oracle's answer
        forms = [p, np.asarray(p, dtype=np.uint32), np.asarray(p, dtype=np.int64), [int(t) for t in p]]
        if int(np.max(p)) < 2**16:
            forms.append(np.asarray(p, dtype=np.uint16))
        for form in forms:
            assert idx.count([form])[0] == oracle.count(p)
            assert idx.first_position([form])[0] == oracle.first(p)
            np.testing.assert_array_equal(idx.window_counts([form], bounds_list[0])[0], oracle.windows(p, bounds_list[0]))
        np.testing.assert_array_equal(idx.positions(p), oracle.positions(p))
        np.testing.assert_array_equal(idx.positions(p, limit=3), oracle.positions(p)[:3])


def build(tmp_path: Path, stream, name="ix", **kw) -> exposure.Index:
    kw.setdefault("progress", False)
    kw.setdefault("threads", 2)
    return exposure.build_index(stream, tmp_path / name, **kw)


# ------------------------------------------------------------------------------ random corpora
@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
@pytest.mark.parametrize("items", ["none", "fixed", "variable"])
@pytest.mark.parametrize("shard_tokens", [None, 700])
def test_random_corpora(tmp_path, dtype, items, shard_tokens):
    rng = np.random.default_rng(hash((np.dtype(dtype).name, items, shard_tokens)) % 2**32)
    vocab = 7 if dtype == np.uint16 else 70_000
    n = 5000
    base = rng.integers(0, min(vocab, 7), size=n)
    if dtype == np.uint32:
        base = base * 9_000 + 3  # large ids spread over a vocabulary beyond uint16
    stream = base.astype(dtype)
    kw: dict = {"vocab_size": vocab}
    starts = None
    if items == "fixed":
        kw["item_length"] = 97
        starts = np.arange(0, n, 97)
    elif items == "variable":
        starts = np.concatenate([[0], np.sort(rng.choice(np.arange(1, n), size=60, replace=False))])
        kw["item_starts"] = starts
    bounds_store = np.unique(np.concatenate([[0, n], rng.integers(0, n, size=20)]))
    idx = build(tmp_path, stream, shard_tokens=shard_tokens, windows={"w": bounds_store}, max_phrase_tokens=8, **kw)
    if shard_tokens:
        assert idx.num_shards > 1
    oracle = Oracle(stream, starts)
    phrases = phrases_for(stream, rng, 150, 7 if dtype == np.uint16 else 7, max_len=8)
    if dtype == np.uint32:
        phrases = [p if p.max() >= 9000 or rng.random() < 0.5 else p * 9_000 + 3 for p in phrases]
    subset = bounds_store[::3]
    check_all(idx, oracle, phrases, [bounds_store, subset, [0, 1234, 2500, n], [n // 3, n // 2]])
    assert idx.num_tokens == n


def test_many_shards_small_batches(tmp_path):
    """Over 128 shards a batch too small to occupy the threads is split by shards instead of phrases
    (count, window_counts); both splits, and one thread, give the oracle's answers."""
    rng = np.random.default_rng(8)
    n = 5000
    stream = rng.integers(0, 4, size=n).astype(np.uint16)
    bounds = np.unique(np.concatenate([[0, n], rng.integers(0, n, size=12)]))
    idx = build(tmp_path, stream, vocab_size=4, item_length=97, shard_tokens=35, max_phrase_tokens=6,
                windows={"w": bounds})
    assert idx.num_shards >= 128
    oracle = Oracle(stream, np.arange(0, n, 97))
    phrases = phrases_for(stream, rng, 300, 4, max_len=6)
    for threads in (1, 2, 3):
        idx.threads = threads
        for batch in (phrases[:5], phrases[5:90], phrases):  # by shards (threads > 1), by shards or phrases, by phrases
            check_all(idx, oracle, batch, [bounds, [0, 1000, 4000]])


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_sampled_keys_narrow_the_search_exactly(tmp_path, dtype):
    """Buckets far wider than the key stride: phrases of 2-7 tokens (shorter, as long as and longer
    than the key), present and absent, at the text's end and across item boundaries, against the
    oracle; an index without key files (built before they existed) answers the same."""
    rng = np.random.default_rng(21)
    n = 40_000
    ids = np.array([3, 7, 9]) if dtype == np.uint16 else np.array([3, 70_007, 140_009])  # 33-bit keys too
    stream = ids[rng.integers(0, 3, size=n)].astype(dtype)
    starts = np.concatenate([[0], np.sort(rng.choice(np.arange(1, n), 300, replace=False))])
    idx = build(tmp_path, stream, vocab_size=int(ids.max()) + 1, item_starts=starts, shard_tokens=15_000)
    assert idx.num_shards > 1
    assert all((tmp_path / "ix" / s["dir"] / "keys.bin").exists() for s in idx.manifest["shards"])
    oracle = Oracle(stream, starts)
    phrases = [stream[i : i + m] for m in range(2, 8) for i in rng.integers(0, n - m, 10)]
    phrases += [stream[-m:] for m in range(2, 8)]  # suffixes that run into the end of the text
    phrases += [ids[rng.integers(0, 3, size=m)].astype(dtype) for m in range(2, 8) for _ in range(6)]
    phrases += [np.array([ids[0], ids[0] + 1], dtype=dtype), np.array([ids[2], 0, ids[1]], dtype=dtype)]  # absent
    assert any(oracle.count(p) == 0 for p in phrases) and any(oracle.count(p) > 500 for p in phrases)
    check_all(idx, oracle, phrases, [[0, n // 3, n]])
    # the same index without its key files: the plain search
    old = tmp_path / "old"
    shutil.copytree(tmp_path / "ix", old)
    manifest = json.loads((old / "manifest.json").read_text())
    for s in manifest["shards"]:
        (old / s["dir"] / "keys.bin").unlink()
        del s["files"]["keys.bin"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    plain = exposure.Index(old)
    np.testing.assert_array_equal(plain.count(phrases), idx.count(phrases))
    np.testing.assert_array_equal(plain.first_position(phrases), idx.first_position(phrases))
    for p in phrases[:20]:
        assert plain.count([p])[0] == idx.count([p])[0]


def test_windows_fast_path_agrees_with_scan(tmp_path):
    """The wavelet path (frequent phrases, stored boundaries) and the scan path (no stored
    structure) give identical counts."""
    rng = np.random.default_rng(5)
    stream = rng.integers(0, 3, size=20_000).astype(np.uint16)
    bounds = np.unique(np.concatenate([[0, 20_000], rng.integers(1, 20_000, size=150)]))
    with_w = build(tmp_path, stream, "a", item_length=101, windows={"ckpt": bounds})
    without = build(tmp_path, stream, "b", item_length=101)
    phrases = [[0], [1], [2], [0, 1], [1, 1, 2]]
    assert with_w.count(phrases).min() > 256  # above the scan cut-off: the wavelet path
    np.testing.assert_array_equal(with_w.window_counts(phrases, bounds), without.window_counts(phrases, bounds))
    oracle = Oracle(stream, np.arange(0, 20_000, 101))
    np.testing.assert_array_equal(with_w.window_counts(phrases, bounds), [oracle.windows(p, bounds) for p in phrases])


def test_add_windows_later(tmp_path):
    rng = np.random.default_rng(11)
    stream = rng.integers(0, 4, size=6000).astype(np.uint16)
    idx = build(tmp_path, stream, item_length=50, shard_tokens=2000)
    bounds = np.arange(0, 6001, 250)
    before = idx.window_counts([[1], [2, 3]], bounds)
    sa_before = {p.name: p.read_bytes() for p in (tmp_path / "ix").glob("shard-*/sa.bin")}
    idx.add_windows("steps", bounds)
    assert "steps" in exposure.Index(tmp_path / "ix").windows
    np.testing.assert_array_equal(idx.window_counts([[1], [2, 3]], bounds), before)
    assert {p.name: p.read_bytes() for p in (tmp_path / "ix").glob("shard-*/sa.bin")} == sa_before
    exposure.Index(tmp_path / "ix", verify=True)  # checksums of the new files are recorded


# --------------------------------------------------------------------------- adversarial corpora
@pytest.mark.parametrize(
    "kind", ["one_token", "repeated_document", "period_3", "fibonacci", "two_halves"]
)
def test_adversarial(tmp_path, kind):
    rng = np.random.default_rng(3)
    if kind == "one_token":
        stream = np.full(30_000, 5, dtype=np.uint16)
    elif kind == "repeated_document":
        stream = np.tile(rng.integers(0, 50, size=500), 40).astype(np.uint16)
    elif kind == "period_3":
        stream = np.tile(np.array([1, 2, 3], dtype=np.uint16), 7000)
    elif kind == "fibonacci":
        a, b = [0], [0, 1]
        while len(b) < 20_000:
            a, b = b, b + a
        stream = np.array(b[:20_000], dtype=np.uint16)
    else:
        half = rng.integers(0, 3, size=8000)
        stream = np.concatenate([half, half]).astype(np.uint16)
    oracle = Oracle(stream, None)
    idx = build(tmp_path, stream, vocab_size=int(stream.max()) + 1)
    phrases = [stream[:m] for m in (1, 2, 3, 7, 50)] + [stream[-m:] for m in (1, 5, 40)]
    check_all(idx, oracle, phrases, [[0, 1000, 5000, stream.size]])
    # the same stream cut into shards inside its single item (overlap tails)
    idx2 = build(tmp_path, stream, "sharded", vocab_size=int(stream.max()) + 1, shard_tokens=3000, max_phrase_tokens=64)
    assert idx2.num_shards > 3 and idx2.max_phrase_tokens == 64
    check_all(idx2, oracle, phrases, [[0, 1000, 5000, stream.size]])
    with pytest.raises(ValueError, match="at most 64"):
        idx2.count([stream[:65]])
    # below the single-phrase fast path's length limit, the index's own limit still holds
    idx3 = build(tmp_path, stream, "short", vocab_size=int(stream.max()) + 1, shard_tokens=3000, max_phrase_tokens=8)
    assert idx3.max_phrase_tokens == 8
    for form in (stream[:9], stream[:9].astype(np.uint32), stream[:9].astype(np.int64), stream[:9].tolist()):
        with pytest.raises(ValueError, match="at most 8"):
            idx3.count([form])
    assert idx3.count([stream[:8]])[0] == oracle.count(stream[:8])


def test_processes_query_one_index_at_once(tmp_path):
    # An Index pickles as its path, so worker processes (spawned: nothing inherited) open the same files.
    import operator
    import pickle
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    rng = np.random.default_rng(5)
    stream = rng.integers(0, 6, size=6000).astype(np.uint16)
    idx = build(tmp_path, stream, item_length=100, shard_tokens=2000)
    idx.threads = 1
    clone = pickle.loads(pickle.dumps(idx))
    assert (clone.path, clone.threads, clone.num_shards) == (idx.path.absolute(), 1, idx.num_shards)
    oracle = Oracle(stream, np.arange(0, 6000, 100))
    phrases = phrases_for(stream, rng, 50, 6)
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        answers = list(pool.map(operator.methodcaller("first_position", phrases), [idx] * 4))
    for got in answers:
        np.testing.assert_array_equal(got, [oracle.first(p) for p in phrases])


def test_match_never_crosses_items(tmp_path):
    # "1 2" occurs only across the boundary between item 0 and item 1.
    stream = np.array([0, 0, 1, 2, 0, 0], dtype=np.uint16)
    idx = build(tmp_path, stream, item_starts=[0, 3])
    assert idx.count([[1, 2]])[0] == 0
    assert idx.count([[1], [2], [0, 0]]).tolist() == [1, 1, 2]
    assert idx.first_position([[2, 0, 0]]).tolist() == [3]


# --------------------------------------------------------------------------------- hypothesis
@st.composite
def corpora(draw):
    sigma = draw(st.integers(1, 4))
    n = draw(st.integers(1, 300))
    stream = np.array(draw(st.lists(st.integers(0, sigma - 1), min_size=n, max_size=n)), dtype=np.uint16)
    cuts = draw(st.lists(st.integers(1, max(1, n - 1)), max_size=6, unique=True)) if n > 1 else []
    starts = np.array(sorted({0, *cuts}), dtype=np.int64)
    phrases = draw(st.lists(st.lists(st.integers(0, sigma - 1), min_size=1, max_size=5), min_size=1, max_size=8))
    shard = draw(st.sampled_from([None, 40]))
    return stream, starts, phrases, shard, sigma


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(corpora())
def test_hypothesis_against_oracle(tmp_path_factory, case):
    stream, starts, phrases, shard, sigma = case
    tmp = tmp_path_factory.mktemp("h")
    idx = build(tmp, stream, vocab_size=sigma, item_starts=starts, shard_tokens=shard, threads=1,
                windows={"w": [0, stream.size // 2 + 1, stream.size + 1]}, max_phrase_tokens=6)
    oracle = Oracle(stream, starts)
    phrases = [np.array(p) for p in phrases]
    check_all(idx, oracle, phrases, [[0, stream.size // 2 + 1, stream.size + 1], [0, 1, stream.size + 5]])
    for off in range(0, stream.size, max(1, stream.size // 5)):
        ctx = idx.context(off, before=3, after=3)
        item = int(np.searchsorted(starts, off, side="right") - 1)
        assert ctx.item == item
        np.testing.assert_array_equal(ctx.tokens, stream[ctx.start : ctx.start + ctx.tokens.size])
        assert ctx.item_start <= ctx.start <= off < ctx.start + ctx.tokens.size <= ctx.item_end


# ------------------------------------------------------------------------------ streaming build
def test_shard_size_fits_the_memory_budget(tmp_path):
    """The planned shard text, at the bytes per token its suffix sort takes (32-bit entries, 64-bit
    from 2^32 - 1 tokens on), fits the budget shared by the shards built side by side, and one token
    more would not (or the text is at the 32-bit limit, where 64-bit entries would fit fewer)."""
    from exposure.engine import _FIXED_OVERHEAD, _MAX_NARROW_TEXT, _SA_OVERHEAD, _SA_OVERHEAD_WIDE

    for budget, threads, dtype, at_limit in [("8G", 2, np.uint16, False), ("30G", 1, np.uint16, True),
                                             ("200G", 1, np.uint16, False), ("200G", 4, np.uint32, False),
                                             ("1T", 3, np.uint16, False)]:
        with exposure.IndexBuilder(tmp_path / f"{budget}-{threads}", dtype=dtype, vocab_size=5, progress=False,
                                   memory_budget_bytes=budget, threads=threads, max_phrase_tokens=16) as b:
            def need(tokens: int) -> float:
                per_token = np.dtype(dtype).itemsize + (_SA_OVERHEAD if tokens <= _MAX_NARROW_TEXT else _SA_OVERHEAD_WIDE)
                return tokens * per_token * threads

            usable = b.budget - _FIXED_OVERHEAD
            assert need(b.buf_len) <= usable  # buf_len: the cap plus the overlap tail
            assert (b.buf_len == _MAX_NARROW_TEXT) == at_limit
            assert at_limit or need(b.buf_len + 1) > usable


@pytest.mark.parametrize(("item_length", "n_items", "threads"), [(2049, 700, 1), (2049, 700, 2), (1500, 1111, 2),
                                                                  (100, 9000, 2), (3000, 301, 1)])
def test_known_length_streams_get_balanced_shards(tmp_path, item_length, n_items, threads):
    # With the length known, shards are balanced. Each ends at its last whole item, so it may hold up to an item
    # less than its share; the builder plans one item of slack, so the rest does not spill into a small extra shard.
    from exposure.engine import _FIXED_OVERHEAD, _SA_OVERHEAD

    stream = np.random.default_rng(item_length).integers(0, 50, size=item_length * n_items).astype(np.uint16)
    idx = build(tmp_path, stream, vocab_size=50, item_length=item_length, threads=threads,
                memory_budget_bytes=_FIXED_OVERHEAD + (1 << 20))
    sizes = [s["stream_end"] - s["stream_start"] for s in idx.manifest["shards"]]
    assert len(sizes) > threads  # the budget, not the threads, sets the count
    assert min(sizes) >= max(sizes) // 2, sizes  # no spill into a small extra shard
    assert sum(sizes) == stream.size and idx.count([stream[-5:]])[0] >= 1
    # one long item (no boundaries to cut at): as few shards as the budget allows, cut inside the item
    whole = build(tmp_path, stream, "whole", vocab_size=50, threads=threads,
                  memory_budget_bytes=_FIXED_OVERHEAD + (1 << 20))
    per_shard = (1 << 20) / threads / (2 + _SA_OVERHEAD) - 1023  # the budget's shard text, less the overlap tail
    assert whole.num_shards == -(-(stream.size + 1) // int(per_shard))


def test_builder_streams_chunks_and_long_items(tmp_path):
    rng = np.random.default_rng(8)
    stream = rng.integers(0, 5, size=4000).astype(np.uint16)
    with exposure.IndexBuilder(tmp_path / "s", dtype=np.uint16, vocab_size=5, progress=False,
                               shard_tokens=900, threads=2, max_phrase_tokens=16) as b:
        b.add(stream[:1000], item_length=100)  # items 0..9
        b.add(stream[1000:1500], item_continues=True)  # one long item in three pieces
        b.add(stream[1500:2600], item_continues=True)
        b.add(stream[2600:3000])
        b.add(stream[3000:4000], item_lengths=[10, 990])
        idx = b.finish({"who": "test"})
    starts = np.concatenate([np.arange(0, 1000, 100), [1000, 3000, 3010]])
    assert idx.num_items == starts.size
    assert [idx.item_bounds(i) for i in (9, 10, 11, 12)] == [(900, 1000), (1000, 3000), (3000, 3010), (3010, 4000)]
    assert idx.metadata == {"who": "test"}
    np.testing.assert_array_equal(idx.tokens(0, 4000), stream)
    oracle = Oracle(stream, starts)
    check_all(idx, oracle, phrases_for(stream, rng, 80, 5, max_len=12), [[0, 1000, 2000, 4000]])


@st.composite
def chunked_feeds(draw):
    """A stream fed in chunks, each with one of add()'s ways of saying where items start."""
    chunks = []
    for _ in range(draw(st.integers(1, 6))):
        n = draw(st.integers(1, 40))
        mode = draw(st.sampled_from(["length", "lengths", "one"]))
        kw: dict = {}
        if mode == "length":
            kw["item_length"] = draw(st.integers(1, 12))
        elif mode == "lengths":
            cuts = sorted(set(draw(st.lists(st.integers(1, n - 1), max_size=4)))) if n > 1 else []
            kw["item_lengths"] = np.diff([0, *cuts, n]).tolist()
        kw["item_continues"] = draw(st.booleans())
        chunks.append((n, kw))
    return chunks


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunked_feeds(), st.integers(0, 2**32 - 1))
def test_hypothesis_chunked_builder_records_every_item(tmp_path_factory, chunks, seed):
    # Model: each chunk's items start where the previous chunk ended, except its first, which goes on with the
    # previous chunk's last item when that one was marked to continue. (Before the fix, an item_length chunk
    # ending in a short item followed by any chunk shifted every later item start: the switch to explicit starts
    # assumed the short item was whole.)
    rng = np.random.default_rng(seed)
    stream = rng.integers(0, 3, size=sum(n for n, _ in chunks)).astype(np.uint16)
    starts: list[int] = []
    pos, open_item = 0, False
    with exposure.IndexBuilder(tmp_path_factory.mktemp("c") / "ix", vocab_size=3, threads=1, shard_tokens=50,
                               max_phrase_tokens=8, progress=False) as b:
        for n, kw in chunks:
            b.add(stream[pos : pos + n], **kw)
            if "item_length" in kw:
                full, rest = divmod(n, kw["item_length"])
                lengths = [kw["item_length"]] * full + ([rest] if rest else [])
            else:
                lengths = kw.get("item_lengths", [n])
            for k, length in enumerate(lengths):
                if not (k == 0 and open_item):
                    starts.append(pos)
                pos += length
            open_item = kw["item_continues"]
        idx = b.finish()
    ends = [*starts[1:], pos]
    assert idx.num_items == len(starts)
    assert [idx.item_bounds(i) for i in range(idx.num_items)] == list(zip(starts, ends))
    want_items = np.searchsorted(starts, np.arange(pos), "right") - 1
    np.testing.assert_array_equal([idx.item_of(o) for o in range(pos)], want_items)
    np.testing.assert_array_equal(idx.item_of(np.arange(pos)), want_items)
    phrases = phrases_for(stream, rng, 20, 3, max_len=6)
    check_all(idx, Oracle(stream, np.array(starts)), phrases, [[0, pos // 2 + 1, pos + 1]])


def test_item_of_takes_one_offset_or_an_array(tmp_path):
    stream = np.array([1, 2, 3, 1, 2, 3, 4, 1, 2], dtype=np.uint16)
    uniform = exposure.build_index(stream, tmp_path / "u", vocab_size=5, item_length=4, progress=False)
    ragged = exposure.build_index(stream, tmp_path / "r", vocab_size=5, item_starts=[0, 2, 7], progress=False)
    for idx, want in ((uniform, [0, 0, 0, 0, 1, 1, 1, 1, 2]), (ragged, [0, 0, 1, 1, 1, 1, 1, 2, 2])):
        items = idx.item_of(np.arange(9, dtype=np.uint32))
        assert items.dtype == np.int64
        np.testing.assert_array_equal(items, want)
        found = idx.positions([1, 2])
        assert len(found) == (1 if idx is uniform else 3)
        np.testing.assert_array_equal(idx.item_of(found), np.array(want)[found])
        assert [type(idx.item_of(o)) for o in (3, np.int64(3))] == [int, int]
        assert idx.item_of(np.int64(8)) == want[8]
        assert idx.item_of([]).shape == (0,)
        with pytest.raises(ValueError, match=r"offset 9 is outside the stream \[0, 9\)"):
            idx.item_of([0, 9])
        with pytest.raises(ValueError, match="offset -1 is outside"):
            idx.item_of(-1)
        with pytest.raises(ValueError, match="offsets must be integers, not float64"):
            idx.item_of([1.0])


def test_a_closed_index_says_so(tmp_path):
    stream = np.array([1, 2, 3, 1, 2, 3, 4, 1, 2], dtype=np.uint16)
    exposure.build_index(stream, tmp_path / "ix", vocab_size=5, item_starts=[0, 2, 7], progress=False)
    def mapped() -> bool:  # the index's files among this process's memory maps
        return str(tmp_path / "ix") in Path("/proc/self/maps").read_text()

    with exposure.Index(tmp_path / "ix") as idx:
        assert idx.count([[1, 2]]).tolist() == [3]
        assert mapped()
    assert not mapped()
    assert idx.closed and repr(idx).endswith("closed)")
    calls = [lambda: idx.count([[1, 2]]), lambda: idx.first_position([[1]]), lambda: idx.window_counts([[1]], [0, 9]),
             lambda: idx.positions([1]), lambda: idx.tokens(0, 2), lambda: idx.context(3), lambda: idx.item_of(3),
             lambda: idx.item_bounds(0), lambda: idx.add_windows("w", [0, 4]), lambda: idx.threads,
             lambda: pickle.dumps(idx)]
    for call in calls:
        with pytest.raises(ValueError, match=f"index {re.escape(str(tmp_path / 'ix'))} is closed"):
            call()
    idx.close()  # twice is fine
    assert idx.num_tokens == 9 and idx.metadata == {}  # the description stays


def test_vocabulary_size_errors_say_what_is_wrong(tmp_path):
    one = np.array([1], dtype=np.uint16)
    with pytest.raises(ValueError, match="vocab_size must be positive, got 0"):
        exposure.build_index(one, tmp_path / "a", vocab_size=0, progress=False)
    with pytest.raises(ValueError, match=r"does not fit uint16 .*\(at most 65535\); use uint32"):
        exposure.build_index(one, tmp_path / "b", vocab_size=70_000, progress=False)
    with pytest.raises(ValueError, match=r"does not fit uint32 .*\(at most 4294967295\)$"):
        exposure.build_index(one.astype(np.uint32), tmp_path / "c", vocab_size=2**32, progress=False)


# ------------------------------------------------------------------------------ errors, integrity
def test_invalid_phrases(tmp_path):
    idx = build(tmp_path, np.arange(10, dtype=np.uint16) % 4, vocab_size=6)
    cases = [([[]], "empty"), ([[-1]], "outside"), ([[6]], "outside"), ([[1.5]], "integer"),
             ([np.array([2, -1])], "outside"), ([np.array([2**40])], "outside"),
             ([np.array([1, 7], dtype=np.uint16)], "outside"), ([np.array([9], dtype=np.uint8)], "outside"),
             ([np.array([2**33], dtype=np.uint64)], "outside"), ([np.array([], dtype=np.uint32)], "empty"),
             ([[2, True]], None), ([np.zeros((1, 1), dtype=np.uint32)], "1-D")]
    for bad, msg in cases:
        if msg is None:  # bools are integers to numpy: accepted as ids 0/1
            assert idx.count(bad)[0] == idx.count([[2, 1]])[0]
            continue
        with pytest.raises(ValueError, match=msg):
            idx.count(bad)
        with pytest.raises(ValueError, match=msg):
            idx.first_position(bad)
        with pytest.raises(ValueError, match=msg):
            idx.window_counts(bad, [0, 5])
    bad_bounds = [([5, 5, 6], "increasing"), ([6, 5], "increasing"), ([-1, 5], "non-negative"),
                  (np.array([0, 2**63 + 5], dtype=np.uint64), "below 2"), ([0.0, 5.0], "integer"),
                  ([[0, 5]], "1-D")]
    for bounds, msg in bad_bounds:
        with pytest.raises(ValueError, match=msg):
            idx.window_counts([[1]], bounds)
    for dtype in (np.int32, np.uint64, np.int64):  # any integer dtype: same answer
        np.testing.assert_array_equal(idx.window_counts([[1], [2]], np.array([0, 5, 10], dtype=dtype)),
                                      idx.window_counts([[1], [2]], [0, 5, 10]))
    assert idx.count([]).shape == (0,)


def test_invalid_build_and_inspection_arguments(tmp_path):
    stream = np.arange(100, dtype=np.uint16) % 7
    bad_builds = [(dict(item_length=0), "item_length must be positive"),
                  (dict(item_length=-5), "item_length must be positive"),
                  (dict(threads=0), "threads must be a positive number"),
                  (dict(threads=-1), "threads must be a positive number"),
                  (dict(memory_budget_bytes=0), "memory_budget_bytes must be positive")]
    for kwargs, msg in bad_builds:
        with pytest.raises(ValueError, match=msg):
            exposure.build_index(stream, tmp_path / "ix", vocab_size=7, progress=False, **kwargs)
        assert not list(tmp_path.iterdir())  # nothing written, not even ix.partial
    idx = build(tmp_path, stream, vocab_size=7, item_length=10)
    assert idx.context(15, 2, 3).tokens.tolist() == stream[13:18].tolist()
    for before, after in ((-1, 3), (2, -1)):
        with pytest.raises(ValueError, match="before and after must be non-negative"):
            idx.context(15, before, after)
    with pytest.raises(ValueError, match="threads must be a positive number"):
        exposure.Index(tmp_path / "ix", threads=0)
    with pytest.raises(ValueError, match="threads must be a positive number"):
        idx.threads = 0
    idx.threads = 1
    assert idx.threads == 1


def test_a_second_build_of_the_same_output_is_refused(tmp_path):
    """Another process building the same OUT holds OUT.partial's lock: a second build fails at once, saying so,
    leaves the first's files alone, and succeeds once the first is done."""
    import subprocess
    import sys

    out = tmp_path / "ix"
    script = (
        "import sys, pathlib, exposure.engine as e\n"
        "e.acquire_build_lock(sys.argv[1])\n"
        "(pathlib.Path(sys.argv[1] + '.partial') / 'theirs').write_text('x')\n"
        "print('held', flush=True)\n"
        "sys.stdin.readline()\n"
        "e.release_build_lock(sys.argv[1])\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", script, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        stream = np.arange(5000, dtype=np.uint16) % 11
        with pytest.raises(FileExistsError, match="another build is writing to .*ix.partial"):
            exposure.build_index(stream, out, vocab_size=11, item_length=100, progress=False)
        assert (tmp_path / "ix.partial" / "theirs").read_text() == "x" and not out.exists()
    finally:
        holder.communicate("\n", timeout=30)
    (tmp_path / "ix.partial" / "theirs").unlink()
    idx = exposure.build_index(stream, out, vocab_size=11, item_length=100, progress=False)
    assert idx.count([[3, 4]])[0] == Oracle(stream, np.arange(0, 5000, 100)).count(np.array([3, 4]))
    assert not (tmp_path / "ix.partial").exists()


def test_tokens_outside_vocabulary_at_build(tmp_path):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        build(tmp_path, np.array([1, 2, 9], dtype=np.uint16), vocab_size=5)
    assert not (tmp_path / "ix").exists()


def test_truncated_and_foreign_files(tmp_path):
    idx = build(tmp_path, np.random.default_rng(0).integers(0, 9, 5000).astype(np.uint16), item_length=100)
    shard = tmp_path / "ix" / "shard-00000"
    del idx
    sa = shard / "sa.bin"
    data = sa.read_bytes()
    sa.write_bytes(data[:-7])
    with pytest.raises(exposure.IndexFileError, match="sa.bin.*truncated"):
        exposure.Index(tmp_path / "ix")
    sa.write_bytes(b"\0" * len(data))  # right size, foreign content
    with pytest.raises(exposure.IndexFileError, match="not an exposure index file"):
        exposure.Index(tmp_path / "ix")
    with pytest.raises(exposure.IndexFileError, match="checksum"):
        exposure.Index(tmp_path / "ix", verify=True)
    # the sampled keys: truncated, or another shard's
    stream = np.random.default_rng(1).integers(0, 9, 5000).astype(np.uint16)
    build(tmp_path, stream, "k", item_length=100, shard_tokens=2000)
    keys = tmp_path / "k" / "shard-00000" / "keys.bin"
    data = keys.read_bytes()
    keys.write_bytes(data[:-3])
    with pytest.raises(exposure.IndexFileError, match="keys.bin.*truncated"):
        exposure.Index(tmp_path / "k")
    other = (shard / "keys.bin").read_bytes()  # the one-shard index's
    assert len(other) != len(data)
    keys.write_bytes(other)
    with pytest.raises(exposure.IndexFileError, match="keys.bin is truncated or altered"):
        exposure.Index(tmp_path / "k")  # the manifest's size
    manifest = tmp_path / "k" / "manifest.json"
    m = json.loads(manifest.read_text())
    m["shards"][0]["files"]["keys.bin"]["bytes"] = len(other)
    manifest.write_text(json.dumps(m))
    with pytest.raises(exposure.IndexFileError, match="keys.bin does not match its suffix array"):
        exposure.Index(tmp_path / "k")  # the engine's own check


def test_version_mismatch_and_missing_manifest(tmp_path):
    build(tmp_path, np.arange(100, dtype=np.uint16) % 7)
    m = tmp_path / "ix" / "manifest.json"
    text = m.read_text()
    m.write_text(text.replace('"format_version": 1', '"format_version": 99'))
    with pytest.raises(exposure.IndexFileError, match="version 99"):
        exposure.Index(tmp_path / "ix")
    m.unlink()
    with pytest.raises(exposure.IndexFileError, match="manifest.json is missing"):
        exposure.Index(tmp_path / "ix")
    with pytest.raises(exposure.IndexFileError, match="not an index directory"):
        exposure.Index(tmp_path / "nowhere")


def test_binary_header_version_mismatch(tmp_path):
    build(tmp_path, np.arange(100, dtype=np.uint16) % 7)
    rmq = tmp_path / "ix" / "shard-00000" / "rmq.bin"
    raw = bytearray(rmq.read_bytes())
    raw[8:12] = (7).to_bytes(4, "little")
    rmq.write_bytes(bytes(raw))
    with pytest.raises(exposure.IndexFileError, match="rmq.bin has format version 7"):
        exposure.Index(tmp_path / "ix")


def _crash_at_shard(monkeypatch, k: int):
    """Makes the k-th shard build raise KeyboardInterrupt (a simulated crash); returns the real build_shard."""
    real = _core.build_shard
    calls = {"n": 0}

    def failing(*args, **kw):
        calls["n"] += 1
        if calls["n"] == k:
            raise KeyboardInterrupt("simulated crash")
        return real(*args, **kw)

    monkeypatch.setattr(_core, "build_shard", failing)
    return real


def test_interrupted_build_leaves_no_index_and_resumes(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    stream = rng.integers(0, 6, size=8000).astype(np.uint16)
    real = _crash_at_shard(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path, stream, item_length=100, shard_tokens=2000, threads=1)
    assert not (tmp_path / "ix").exists()
    with pytest.raises(exposure.IndexFileError, match="unfinished build"):
        exposure.Index(tmp_path / "ix")
    monkeypatch.setattr(_core, "build_shard", real)
    idx = build(tmp_path, stream, item_length=100, shard_tokens=2000, threads=1)
    assert idx.manifest["build"]["shards_reused"] == 2
    assert not (tmp_path / "ix.partial").exists()
    oracle = Oracle(stream, np.arange(0, 8000, 100))
    check_all(idx, oracle, phrases_for(stream, rng, 40, 6), [[0, 4000, 8000]])


def test_resumed_build_with_another_vocabulary_rebuilds_its_shards(tmp_path, monkeypatch):
    # One long item: the finished shards hold no separator (the id that depends on the vocabulary), so their
    # tokens hash the same under either vocabulary. They used to be reused, and the finished index would not open
    # ("built for vocabulary size 6, the manifest says 7").
    stream = np.random.default_rng(3).integers(0, 6, size=8000).astype(np.uint16)
    real = _crash_at_shard(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path, stream, vocab_size=6, shard_tokens=2000, threads=1, max_phrase_tokens=8)
    monkeypatch.setattr(_core, "build_shard", real)
    idx = build(tmp_path, stream, vocab_size=7, shard_tokens=2000, threads=1, max_phrase_tokens=8)
    assert idx.manifest["build"]["shards_reused"] == 0
    assert exposure.Index(tmp_path / "ix").vocab_size == 7
    check_all(idx, Oracle(stream, None), phrases_for(stream, np.random.default_rng(4), 30, 7), [[0, 4000, 8000]])


def test_the_stream_identity_is_its_tokens_in_order(tmp_path, monkeypatch):
    # One identity for one stream however it is sharded, chunked, threaded or resumed; another order, another one.
    rng = np.random.default_rng(5)
    stream = rng.integers(0, 6, size=8000).astype(np.uint16)
    one = build(tmp_path, stream, "one", item_length=100)
    assert one.stream_id == f"uint16:{_core.xxh64(stream):016x}"
    assert build(tmp_path, stream, "sharded", item_length=100, shard_tokens=1500, threads=1).stream_id == one.stream_id
    with exposure.IndexBuilder(tmp_path / "chunked", vocab_size=6, threads=2, shard_tokens=2000, progress=False) as b:
        for a in range(0, 8000, 700):
            b.add(stream[a : a + 700].astype(np.int64), item_lengths=[min(700, 8000 - a)])
        assert b.finish().stream_id == one.stream_id
    real = _crash_at_shard(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path, stream, "resumed", item_length=100, shard_tokens=2000, threads=1)
    monkeypatch.setattr(_core, "build_shard", real)
    resumed = build(tmp_path, stream, "resumed", item_length=100, shard_tokens=2000, threads=1)
    assert resumed.manifest["build"]["shards_reused"] == 2 and resumed.stream_id == one.stream_id
    shuffled = build(tmp_path, stream.reshape(80, 100)[rng.permutation(80)].ravel(), "shuffled", item_length=100)
    assert shuffled.stream_id != one.stream_id
    assert build(tmp_path, stream.astype(np.uint32), "wide", item_length=100).stream_id.startswith("uint32:")
    # parts gathered by assemble_index have no identity of the whole (each part hashed only its own tokens)
    for k, a in enumerate([0, 4000]):
        with exposure.IndexBuilder(tmp_path / f"p{k}", vocab_size=6, stream_start=a, progress=False, threads=1) as b:
            b.add(stream[a : a + 4000], item_length=100)
            b.finish()
    assert exposure.assemble_index([tmp_path / "p0", tmp_path / "p1"], tmp_path / "all").stream_id is None


def test_xxh64_matches_reference():
    xxhash = pytest.importorskip("xxhash")
    rng = np.random.default_rng(0)
    for n in (0, 1, 3, 4, 7, 8, 31, 32, 33, 100, 1000):
        data = rng.integers(0, 256, size=n, dtype=np.uint8)
        assert _core.xxh64(data) == xxhash.xxh64_intdigest(data.tobytes())


def test_manifest_records_sizes_and_checksums(tmp_path):
    idx = build(tmp_path, np.random.default_rng(1).integers(0, 50, 3000).astype(np.uint16), item_length=128,
                windows={"pythia": [0, 1000, 2000, 3000]})
    m = idx.manifest
    assert m["token_dtype"] == "uint16" and m["token_count"] == 3000 and m["items"] == {"count": 24, "length": 128}
    for s in m["shards"]:
        assert set(s["files"]) == {"tokens.bin", "sa.bin", "buckets.bin", "rmq.bin", "separators.bin", "keys.bin",
                                   "windows-pythia.bin"}
        for name, rec in s["files"].items():
            assert (tmp_path / "ix" / s["dir"] / name).stat().st_size == rec["bytes"]
            assert f"{_core.hash_file(str(tmp_path / 'ix' / s['dir'] / name)):016x}" == rec["xxh64"]
    assert s["sa_width"] == 2  # 3000 + 24 separators < 2^16: two-byte pointers


def test_page_cache_writes_equal_direct_writes(tmp_path, monkeypatch):
    """EXPOSURE_DIRECT_IO=0 (the path taken where the file system refuses direct I/O) writes the same files."""
    stream = np.random.default_rng(4).integers(0, 3000, 1_500_001).astype(np.uint16)  # files of ~1.5-6 MB, odd tails
    kw = dict(vocab_size=3000, item_length=2049, shard_tokens=900_000, windows={"w": [0, 10**5, 10**6]})
    direct = build(tmp_path, stream, "direct", **kw)
    monkeypatch.setenv("EXPOSURE_DIRECT_IO", "0")
    cached = build(tmp_path, stream, "cached", **kw)
    assert [s["files"] for s in cached.manifest["shards"]] == [s["files"] for s in direct.manifest["shards"]]
    for s in direct.manifest["shards"]:
        for name in s["files"]:
            a, b = (tmp_path / d / s["dir"] / name for d in ("direct", "cached"))
            assert a.read_bytes() == b.read_bytes(), name
    phrase = [stream[5:8]]
    assert cached.count(phrase)[0] == direct.count(phrase)[0] >= 1


# --------------------------------------------------------------------------- distributed build
@pytest.mark.parametrize("variable_items", [False, True])
def test_parts_built_separately_assemble_into_one_index(tmp_path, variable_items):
    rng = np.random.default_rng(21)
    stream = rng.integers(0, 6, size=9000).astype(np.uint16)
    cuts = [0, 3000, 6000, 9000]  # whole items of 100 tokens in each part
    windows = {"w": [0, 2500, 7000, 9000]}
    for k, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        with exposure.IndexBuilder(tmp_path / f"part{k}", dtype=np.uint16, vocab_size=6, stream_start=a,
                                   windows=windows, progress=False, threads=1, shard_tokens=1300) as builder:
            if variable_items:
                builder.add(stream[a:b], item_lengths=[50, b - a - 50])
            else:
                builder.add(stream[a:b], item_length=100)
            result = builder.finish()
            assert (result is None) == (a > 0)  # a later part is not an index on its own
    with pytest.raises(exposure.IndexFileError, match="part of an index"):
        exposure.Index(tmp_path / "part1")
    idx = exposure.assemble_index([tmp_path / "part2", tmp_path / "part0", tmp_path / "part1"], tmp_path / "all")
    assert idx.num_tokens == 9000 and idx.num_shards >= 6
    starts = (np.concatenate([[a, a + 50] for a in cuts[:-1]]) if variable_items else np.arange(0, 9000, 100))
    assert idx.num_items == starts.size
    oracle = Oracle(stream, starts)
    check_all(idx, oracle, phrases_for(stream, rng, 60, 6), [windows["w"], [0, 9000]])
    exposure.Index(tmp_path / "all", verify=True)


def test_a_failed_assemble_leaves_the_parts_whole(tmp_path, monkeypatch):
    # The parts' shards are moved, not copied. A move that failed half-way (say, a part on another file system)
    # left the earlier parts' shards in OUT.partial, and the next attempt cleared OUT.partial: they were lost.
    stream = (np.arange(900, dtype=np.uint16) * 7) % 5
    for k, a in enumerate([0, 300, 600]):
        with exposure.IndexBuilder(tmp_path / f"p{k}", dtype=np.uint16, vocab_size=5, stream_start=a,
                                   progress=False, threads=1, shard_tokens=160) as b:
            b.add(stream[a : a + 300], item_length=100)
            b.finish()
    parts = [tmp_path / f"p{k}" for k in range(3)]
    real_replace = os.replace

    def failing(src, dst):  # type: ignore[no-untyped-def]
        if Path(src).parent == parts[1]:
            raise OSError(18, "Invalid cross-device link")
        return real_replace(src, dst)

    monkeypatch.setattr(exposure.engine.os, "replace", failing)
    with pytest.raises(OSError, match="the parts must be on the file system of OUT"):
        exposure.assemble_index(parts, tmp_path / "all")
    monkeypatch.undo()
    assert not (tmp_path / "all").exists()
    exposure.Index(parts[0], verify=True)  # every shard back in its part
    idx = exposure.assemble_index(parts, tmp_path / "all")
    assert not (tmp_path / "all" / "assemble-moves.json").exists()
    check_all(idx, Oracle(stream, np.arange(0, 900, 100)), phrases_for(stream, np.random.default_rng(3), 30, 5),
              [[0, 450, 900]])


def test_an_assemble_killed_while_moving_is_undone_by_the_next(tmp_path):
    stream = (np.arange(600, dtype=np.uint16) * 3) % 5
    for k, a in enumerate([0, 300]):
        with exposure.IndexBuilder(tmp_path / f"p{k}", dtype=np.uint16, vocab_size=5, stream_start=a,
                                   progress=False, threads=1, shard_tokens=160) as b:
            b.add(stream[a : a + 300], item_length=100)
            b.finish()
    parts = [tmp_path / "p0", tmp_path / "p1"]
    # what a kill after the first move leaves: the journal of the moves, one shard moved
    partial = tmp_path / "all.partial"
    partial.mkdir()
    shard = json.loads((parts[0] / "manifest.json").read_text())["shards"][0]["dir"]
    (partial / "assemble-moves.json").write_text(json.dumps([[str(parts[0] / shard), str(partial / "shard-00000")]]))
    os.replace(parts[0] / shard, partial / "shard-00000")
    idx = exposure.assemble_index(parts, tmp_path / "all")
    check_all(idx, Oracle(stream, np.arange(0, 600, 100)), phrases_for(stream, np.random.default_rng(4), 30, 5),
              [[0, 600]])


def test_assemble_rejects_gaps(tmp_path):
    stream = np.arange(400, dtype=np.uint16) % 5
    for k, a in enumerate([0, 300]):  # the second part should start at 200
        with exposure.IndexBuilder(tmp_path / f"p{k}", dtype=np.uint16, vocab_size=5, stream_start=a,
                                   progress=False, threads=1) as b:
            b.add(stream[a : a + 200] if a == 0 else stream[200:400], item_length=100)
            b.finish()
    with pytest.raises(ValueError, match="expected 200"):
        exposure.assemble_index([tmp_path / "p0", tmp_path / "p1"], tmp_path / "all")

"""Attention heads: attention planted in two heads must be found, measured as concentrated, and tracked."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from exposure.analysis import heads as hd
from exposure.analysis.report import dominant_heads, summarize_heads
from exposure.analysis.stats import gini, top_k_share

L, H = 4, 8


def _attention(n: int, planted: list[tuple[int, int]], rng: np.random.Generator, weight: float = 0.5) -> np.ndarray:
    att = rng.uniform(0.0, 0.01, size=(n, 2, L, H)).astype(np.float32)
    for layer, head in planted:
        att[:, :, layer, head] = weight + rng.uniform(-0.05, 0.05, size=(n, 2))
    return att


def test_gini_and_share_known_values() -> None:
    assert gini(np.ones(10)) == pytest.approx(0.0)
    assert gini(np.array([1.0, 0, 0, 0])) == pytest.approx(0.75)
    assert gini(np.array([1.0, 1.0, 0, 0])) == pytest.approx(0.5)
    assert top_k_share(np.array([5.0, 3.0, 1.0, 1.0]), 2) == pytest.approx(0.8)
    assert np.isnan(gini(np.zeros(4)))
    x = np.random.default_rng(9).exponential(size=37)
    brute = np.abs(x[:, None] - x[None, :]).sum() / (2 * len(x) ** 2 * x.mean())
    assert gini(x) == pytest.approx(brute)
    with pytest.raises(ValueError):
        gini(np.array([1.0, -1.0]))


def test_two_planted_heads_are_recovered_and_tracked() -> None:
    rng = np.random.default_rng(0)
    n = 50
    early, late = [(1, 2), (3, 5)], [(1, 2), (2, 0)]
    arrays = {0: _attention(n, early, rng), 100: _attention(n, early, rng), 1000: _attention(n, late, rng),
              5000: _attention(n, late, rng)}
    res = hd.analyze_heads({s: (lambda a=a: a) for s, a in arrays.items()}, np.array(["x"] * n, dtype=object),
                           top_k=2)
    assert res is not None
    assert res.top_set("ALL", 0) == set(early) and res.top_set("ALL", 1) == set(early)
    assert res.top_set("ALL", 2) == set(late) and res.top_set("ALL", 3) == set(late)
    # two heads at 0.5 vs 30 at 0.005 on average: share 1.0 / 1.15 = 0.87 (a uniform spread: 2/32 = 6%)
    np.testing.assert_allclose(res.share["ALL"], 1.0 / 1.15, atol=0.02)
    assert np.all(res.gini["ALL"] > 0.75)  # uniform attention gives < 0.05 (below)
    np.testing.assert_allclose(res.jaccard_previous["ALL"][1:], [1.0, 1 / 3, 1.0])
    np.testing.assert_allclose(res.jaccard_final["ALL"], [1 / 3, 1 / 3, 1.0, 1.0])
    assert res.means["ALL"][0, 1, 2] == pytest.approx(arrays[0][:, :, 1, 2].mean(), rel=1e-5)
    assert dominant_heads(res.means["ALL"][3]) in ([(1, 2), (2, 0)], [(2, 0), (1, 2)])
    text = " ".join(summarize_heads(res, [100, 1000]))
    assert "the dominant set changes 1 time(s): at step 1,000" in text
    assert "At step 100: top-2 share" in text


def test_a_single_head_is_not_ranked() -> None:
    # A one-head model was reported as "the top 1 of 1 heads carry 100% ... (a uniform spread would give 100%)",
    # with Jaccard overlaps and top-set changes of that one head.
    rng = np.random.default_rng(2)
    arrays = {0: rng.uniform(0.1, 0.2, size=(20, 2, 1, 1)), 50: rng.uniform(0.3, 0.4, size=(20, 2, 1, 1))}
    res = hd.analyze_heads({s: (lambda a=a: a.astype(np.float32)) for s, a in arrays.items()},
                           np.array(["x"] * 20, dtype=object))
    assert res is not None
    (text,) = summarize_heads(res, [0, 50])
    assert text.startswith("The model has a single attention head (L0H0): nothing to rank.")
    assert f"{arrays[50].mean():.3f} at the last checkpoint (step 50), {arrays[0].mean():.3f} at the first" in text


def test_uniform_attention_is_not_concentrated() -> None:
    rng = np.random.default_rng(1)
    att = rng.uniform(0.09, 0.11, size=(40, 2, L, H)).astype(np.float32)
    res = hd.analyze_heads({7: lambda: att}, np.array(["x"] * 40, dtype=object), top_k=2)
    assert res.gini["ALL"][0] < 0.05
    assert res.share["ALL"][0] == pytest.approx(2 / (L * H), abs=0.01)


def test_per_phenomenon_heads_and_excluded_pairs(tmp_path) -> None:
    rng = np.random.default_rng(2)
    a = _attention(30, [(0, 1), (0, 2)], rng)
    b = _attention(30, [(3, 6), (2, 7)], rng)
    junk = np.full((5, 2, L, H), np.nan, np.float32)
    junk[:, :, 1, 1] = 100.0  # pairs without a context token: must not count
    att = np.concatenate([a, b, junk])
    phen = np.array(["a"] * 30 + ["b"] * 30 + [None] * 5, dtype=object)
    res = hd.analyze_heads({10: lambda: att, 20: lambda: att}, phen, top_k=2)
    assert res.top_set("a", 0) == {(0, 1), (0, 2)}
    assert res.top_set("b", 0) == {(3, 6), (2, 7)}
    assert res.top_set("ALL", 0) <= {(0, 1), (0, 2), (3, 6), (2, 7)}
    assert res.n_pairs == {"ALL": 60, "a": 30, "b": 30}
    assert np.nanmax(res.means["ALL"]) < 1.0
    for name, table in hd.tables(res).items():
        pq.write_table(table, tmp_path / f"{name}.parquet")
    top = pq.read_table(tmp_path / "top_heads.parquet").to_pylist()
    a_top = {(r["layer"], r["head"]) for r in top if r["phenomenon"] == "a" and r["step"] == 10}
    assert a_top == {(0, 1), (0, 2)}
    heads_table = pq.read_table(tmp_path / "head_attention.parquet")
    assert heads_table.num_rows == 3 * 2 * L * H


def test_no_attention_and_bad_shapes() -> None:
    assert hd.analyze_heads({}, np.array(["x"], dtype=object)) is None
    rng = np.random.default_rng(3)
    with pytest.raises(ValueError, match="shape"):
        hd.analyze_heads({1: lambda: rng.random((3, 2, 4, 4)), 2: lambda: rng.random((3, 2, 4, 5))},
                         np.array(["x"] * 3, dtype=object))
    for top_k in (0, 16, 17):  # 4 layers × 4 heads: between 1 and 15 top heads
        with pytest.raises(ValueError, match="--top-k"):
            hd.analyze_heads({1: lambda: rng.random((3, 2, 4, 4))}, np.array(["x"] * 3, dtype=object), top_k=top_k)
    # by default 5, and fewer for a model with few heads (a 2 x 2 model: 3)
    for shape, k in (((4, 4), 5), ((2, 2), 3), ((1, 1), 1)):
        res = hd.analyze_heads({1: lambda shape=shape: rng.random((3, 2, *shape))}, np.array(["x"] * 3, dtype=object))
        assert res is not None and res.top_k == k

"""Concept vectors: planted one-dimensional vs many-dimensional concepts and a planted probe signal."""

from __future__ import annotations

import numpy as np
import pytest

from exposure.analysis import concepts as con
from exposure.analysis.stats import bootstrap_counts, paired_permutation_test, participation_ratio


def _diffs(n: int, dims: int, d: int, rng: np.random.Generator, noise: float = 0.0) -> np.ndarray:
    basis = np.linalg.qr(rng.normal(size=(d, dims)))[0].T
    if dims == 1:
        coef = rng.uniform(1.0, 3.0, size=(n, 1))  # same direction, varying magnitude
    else:
        coef = rng.normal(size=(n, dims))
    return coef @ basis + noise * rng.normal(size=(n, d))


def test_dimension_recovers_one_vs_many_directions() -> None:
    rng = np.random.default_rng(0)
    one = con.unit_differences(_diffs(300, 1, 64, rng, noise=0.02), np.zeros((300, 64)))
    many = con.unit_differences(_diffs(300, 16, 64, rng), np.zeros((300, 64)))
    pr1, k1 = con.difference_dimension(one)
    pr16, k16 = con.difference_dimension(many)
    assert pr1 < 1.1 and k1 == 1
    assert 12 < pr16 <= 16.5 and 12 <= k16 <= 16
    # exactly isotropic in k directions -> PR = k, and k directions for 90%
    eye = np.repeat(np.eye(8, 32), 10, axis=0)
    assert con.difference_dimension(eye) == (pytest.approx(8.0), 8)
    # identical good/bad states -> nothing to measure
    same = rng.normal(size=(5, 8))
    pr, k = con.difference_dimension(con.unit_differences(same, same))
    assert np.isnan(pr) and k == 0


def test_bootstrap_participation_matches_explicit_resampling() -> None:
    rng = np.random.default_rng(1)
    d = con.unit_differences(_diffs(40, 5, 12, rng), np.zeros((40, 12)))
    boot = con.bootstrap_participation([d], 4, np.random.default_rng(9))
    counts = next(bootstrap_counts(40, 4, np.random.default_rng(9)))
    for b in range(4):
        resampled = np.repeat(d, counts[b].astype(int), axis=0)
        s = np.linalg.svd(resampled, compute_uv=False)
        assert boot[b, 0] == pytest.approx(participation_ratio(s**2), rel=1e-9)


def test_probe_finds_a_planted_signal_and_not_a_missing_one() -> None:
    rng = np.random.default_rng(2)
    n, d = 150, 20
    base = rng.normal(size=(n, d))
    v = np.zeros(d)
    v[3] = 1.0
    good = base + 2.5 * v
    bad = base - 2.5 * v
    res = con.probe(good, bad)
    assert res.accuracy > 0.95 and res.auc > 0.98
    assert set(np.unique(res.per_pair)) <= {0.0, 0.5, 1.0}
    noise_good = base + rng.normal(size=(n, d))
    noise_bad = base + rng.normal(size=(n, d))
    null = con.probe(noise_good, noise_bad)
    assert 0.35 < null.accuracy < 0.65 and 0.35 < null.auc < 0.65
    tiny = con.probe(good[:3], bad[:3])
    assert np.isnan(tiny.accuracy)


def test_folds_keep_a_pairs_sentences_together() -> None:
    for n in (4, 7, 50):
        folds = con.probe_folds(n)
        assert len(folds) == n
        assert len(np.unique(folds)) == min(5, n)
    # the probe's own split: every pair is scored in exactly one held-out fold for both sentences
    rng = np.random.default_rng(3)
    res = con.probe(rng.normal(size=(23, 5)), rng.normal(size=(23, 5)))
    assert res.folds.shape == (23,)


def test_permutation_test() -> None:
    rng = np.random.default_rng(4)
    assert paired_permutation_test(np.zeros(30), 500, rng) == 1.0
    assert paired_permutation_test(np.ones(30), 2000, rng) < 0.001
    # exact enumeration for small n: all 6 differences positive -> p = 2 / 64
    assert paired_permutation_test(np.ones(6), 0, rng) == pytest.approx(2 / 64)
    assert paired_permutation_test(rng.normal(size=200), 2000, rng) > 0.01


def test_choose_checkpoints() -> None:
    avail = [0, 16, 512, 1000, 2000, 8000]
    c = con.choose_checkpoints(avail, 2000)
    assert (c.before, c.after) == (1000, 2000) and c.comparable
    c = con.choose_checkpoints(avail, 1500)
    assert (c.before, c.after) == (1000, 2000)
    c = con.choose_checkpoints(avail, None)
    assert (c.before, c.after) == (0, 8000) and "never reached" in c.reason
    c = con.choose_checkpoints(avail, 0)  # transition at the first checkpoint: nothing before it
    assert (c.before, c.after) == (0, 8000) and "no hidden states on both sides" in c.reason
    c = con.choose_checkpoints(avail, 2000, before=16)
    assert (c.before, c.after) == (16, 2000)
    c = con.choose_checkpoints(avail, 2000, after=8000)
    assert (c.before, c.after) == (1000, 8000)
    c = con.choose_checkpoints(avail, None, before=512, after=1000)
    assert (c.before, c.after) == (512, 1000)
    with pytest.raises(ValueError, match="no hidden states at step 5"):
        con.choose_checkpoints(avail, 2000, before=5)
    with pytest.raises(ValueError, match="earlier step"):
        con.choose_checkpoints(avail, 2000, before=1000, after=512)
    one = con.choose_checkpoints([300], 2000)
    assert not one.comparable and one.steps == [300]
    none = con.choose_checkpoints([], 2000)
    assert none.steps == [] and "no hidden states" in none.reason


def _planted_states(n_per: int, phenomena: tuple[str, ...], rng: np.random.Generator, layers: int = 4, d: int = 16,
                    concept_layer: int = 2) -> tuple[dict[int, np.ndarray], np.ndarray]:
    n = n_per * len(phenomena)
    phen = np.repeat(np.array(phenomena), n_per)
    base = rng.normal(size=(n, layers, d))
    states = {}
    v = rng.normal(size=d)
    v /= np.linalg.norm(v)
    spread = np.linalg.qr(rng.normal(size=(d, 10)))[0].T
    for step, after in ((100, False), (200, True)):
        arr = np.empty((n, 2, layers, d), np.float32)
        arr[:, 0] = base + 0.5 * rng.normal(size=base.shape)
        arr[:, 1] = base + 0.5 * rng.normal(size=base.shape)
        diff = rng.uniform(4, 6, size=(n, 1)) * v if after else 3 * rng.normal(size=(n, 10)) @ spread
        arr[:, 0, concept_layer] = base[:, concept_layer] + diff / 2
        arr[:, 1, concept_layer] = base[:, concept_layer] - diff / 2
        states[step] = arr.astype(np.float16)
    return states, phen


def test_before_after_change_is_recovered_and_tested() -> None:
    rng = np.random.default_rng(5)
    states, phen = _planted_states(80, ("p1", "p2"), rng)
    # a third phenomenon with too few pairs for a test
    small_states, _ = _planted_states(6, ("tiny",), rng)
    states = {s: np.concatenate([states[s], small_states[s]]) for s in states}
    phen = np.concatenate([phen, np.array(["tiny"] * 6)])
    choice = con.CheckpointChoice(100, 200, "test")
    res = con.analyze_concepts(states, phen, choice, n_boot=300, rng=np.random.default_rng(0))
    rows = res.changes.to_pylist()
    by = {(r["phenomenon"], r["layer"]): r for r in rows}
    for name in ("ALL", "p1", "p2"):
        r = by[(name, 2)]
        assert r["probe_accuracy_change"] > 0.25 and r["probe_significant"], r
        assert r["participation_ratio_change"] < -5 and r["participation_ratio_significant"], r
        assert r["components_90_change"] < -5
        for layer in (0, 1, 3):  # no planted change elsewhere
            assert abs(by[(name, layer)]["probe_accuracy_change"]) < 0.15
    assert not any(by[("ALL", layer)]["probe_significant"] for layer in (0, 1, 3))
    tiny = [r for r in rows if r["phenomenon"] == "tiny"]
    assert tiny and all(not r["tested"] and r["probe_p"] is None and not r["probe_significant"] for r in tiny)
    assert any("Too few pairs" in note and "tiny" in note for note in res.notes)
    layers = {(r["phenomenon"], r["when"], r["layer"]): r for r in res.layers.to_pylist()}
    after = layers[("ALL", "after", 2)]
    assert after["components_90"] == 1 and after["participation_ratio"] < 1.2
    assert after["probe_accuracy_ci_low"] <= after["probe_accuracy"] <= after["probe_accuracy_ci_high"]
    assert layers[("ALL", "before", 2)]["components_90"] >= 8


def test_single_checkpoint_and_caps() -> None:
    rng = np.random.default_rng(6)
    states, phen = _planted_states(30, ("p1",), rng)
    choice = con.CheckpointChoice(None, 200, "one checkpoint")
    res = con.analyze_concepts({200: states[200]}, phen, choice, n_boot=50, max_pairs=20, rng=np.random.default_rng(0))
    assert res.changes.num_rows == 0
    rows = res.layers.to_pylist()
    assert {r["when"] for r in rows} == {"only"} and {r["n_pairs"] for r in rows} == {20}
    assert any("20 of its pairs" in n for n in res.notes)
    empty = con.analyze_concepts({}, phen, con.CheckpointChoice(None, None, "no states"), n_boot=10)
    assert empty.layers.num_rows == 0 and empty.notes == ["no states"]


def test_non_finite_states_are_left_out() -> None:
    rng = np.random.default_rng(8)
    states, phen = _planted_states(20, ("p1",), rng)
    states[100][0, 0, 0, 0] = np.inf
    res = con.analyze_concepts(states, phen, con.CheckpointChoice(100, 200, "t"), n_boot=20)
    assert any("non-finite" in n for n in res.notes)
    assert {r["n_pairs"] for r in res.layers.to_pylist()} == {19}

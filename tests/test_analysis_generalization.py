"""Delayed generalization: planted transitions, delays and per-pair lags must be recovered."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from exposure.analysis import generalization as gen
from exposure.analysis.report import delay_sentence, summarize_generalization
from exposure.analysis.synthetic import SyntheticSpec, planted_correct

STEPS = np.array([0, 16, 64, 128, 256, 512, 1000, 2000, 3000, 4000, 6000, 8000])


def _planted(n_per: int = 80, seed: int = 1, **kw) -> tuple[np.ndarray, np.ndarray, np.ndarray, SyntheticSpec]:
    rng = np.random.default_rng(seed)
    spec = SyntheticSpec(phenomena=("a", "b"), pairs_per_phenomenon=n_per, steps=tuple(STEPS), **kw)
    n = 2 * n_per
    first = rng.choice(STEPS, size=n) + rng.integers(0, 3, size=n)
    first[rng.random(n) < 0.2] = -1
    phen = np.repeat(np.array(["a", "b"]), n_per)
    return first, phen, planted_correct(spec, first), spec


def test_membership_matches_definition() -> None:
    first = np.array([-1, 0, 5, 16, 16, 100])
    steps = np.array([0, 16, 17, 200])
    m = gen.group_membership(first, steps)
    for i, f in enumerate(first):
        for k, s in enumerate(steps):
            assert m["train"][i, k] == (0 <= f < s)
            assert m["validation"][i, k] == (f >= s >= 0 and f >= 0)
            assert m["never"][i, k] == (f == -1)
            assert m["train"][i, k] + m["validation"][i, k] + m["never"][i, k] == 1


def test_planted_transition_and_delay_recovered() -> None:
    first, phen, correct, spec = _planted()
    uid = np.array([f"p/{i}" for i in range(len(first))])
    res = gen.analyze_generalization(uid, phen, first, correct, STEPS, n_boot=300, rng=np.random.default_rng(0))
    for name in ("ALL", "a", "b"):
        d = res.delays[name]
        assert d.train.step == spec.train_transition, name
        assert d.validation.step == spec.validation_transition, name
        assert d.delay == spec.validation_transition - spec.train_transition
    d = res.overall
    # the planted curves are sharp, so the bootstrap interval must hold the planted delay
    assert d.ci_low <= 1488 <= d.ci_high
    assert d.boot_defined > 0.95
    # the never-exposed control stays at chance: no threshold step, flagged as not above chance
    assert d.never.step is None and not d.never.above_chance
    assert abs(res.curves["ALL"].accuracy["never"][-1] - 0.5) < 0.1
    text = delay_sentence(d, 0.9)
    assert "step 512" in text and "step 2,000" in text and "delay of 1,488 steps" in text
    assert any("not above chance" in s for s in summarize_generalization(res))


def test_never_control_that_learns_is_reported() -> None:
    first, phen, correct, _ = _planted(never_transition=3000)
    uid = np.array([f"p/{i}" for i in range(len(first))])
    res = gen.analyze_generalization(uid, phen, first, correct, STEPS, n_boot=100, rng=np.random.default_rng(0))
    assert res.overall.never.step == 3000
    assert any("Control: the never-exposed pairs rose too" in s and "after" in s for s in summarize_generalization(res))


def test_threshold_is_configurable_on_a_gradual_curve() -> None:
    # accuracy of a fixed group of 200 pairs rises 0.5 -> 1.0 linearly over the checkpoints
    steps = np.arange(11) * 100
    n = 200
    frac = np.linspace(0.5, 1.0, 11)
    correct = np.zeros((n, 11), bool)
    for k, f in enumerate(frac):
        correct[: round(f * n), k] = True
    first = np.full(n, -1)  # never group: a fixed set
    res9 = gen.analyze_generalization(np.arange(n).astype(str), np.full(n, "x"), first, correct, steps,
                                      threshold=0.9, n_boot=50, rng=np.random.default_rng(0))
    res6 = gen.analyze_generalization(np.arange(n).astype(str), np.full(n, "x"), first, correct, steps,
                                      threshold=0.6, n_boot=50, rng=np.random.default_rng(0))
    # 0.9 * 1.0 = 0.9 first reached at index 8 (0.9); 0.6 at index 2 (0.6)
    assert res9.overall.never.step == 800
    assert res6.overall.never.step == 200
    with pytest.raises(ValueError, match="threshold"):
        gen.analyze_generalization(np.arange(n).astype(str), np.full(n, "x"), first, correct, steps, threshold=0)


def test_bootstrap_interval_has_the_right_width() -> None:
    rng = np.random.default_rng(3)
    n = 400
    correct = np.zeros((n, 2), bool)
    correct[rng.permutation(n)[:280], :] = True  # accuracy exactly 0.7
    cs = gen.accuracy_curves(correct, np.full(n, -1), np.array([0, 10]), phenomenon="x", n_boot=2000,
                             rng=np.random.default_rng(0))
    acc, low, high = cs.accuracy["never"][0], cs.ci_low["never"][0], cs.ci_high["never"][0]
    assert acc == pytest.approx(0.7)
    expected = 2 * 1.96 * np.sqrt(0.7 * 0.3 / n)  # normal approximation: 0.0898
    assert low < 0.7 < high
    assert high - low == pytest.approx(expected, rel=0.2)


def test_small_groups_do_not_define_the_threshold() -> None:
    # proxy-train has only 2 pairs (both correct) at steps 1 and 16 -- too few to count with min_pairs=5
    steps = np.array([1, 16, 64, 128])
    first = np.array([0, 0] + [50] * 20 + [-1] * 10)
    correct = np.zeros((len(first), 4), bool)
    correct[:2, :] = True
    correct[2:, 2:] = True  # the 20 pairs exposed at 50 are correct from step 64 on
    correct[2:12, :2] = True  # and half of them before (chance)
    res = gen.analyze_generalization(np.arange(len(first)).astype(str), np.full(len(first), "x"), first, correct, steps,
                                     n_boot=100, rng=np.random.default_rng(0))
    assert res.overall.train.step == 64
    res1 = gen.analyze_generalization(np.arange(len(first)).astype(str), np.full(len(first), "x"), first, correct, steps,
                                      min_pairs=1, n_boot=100, rng=np.random.default_rng(0))
    assert res1.overall.train.step == 1  # with min_pairs=1 the two lucky pairs define it


def test_learned_at_and_lags_recovered() -> None:
    rng = np.random.default_rng(7)
    steps = np.array([0, 10, 20, 40, 80, 160, 320])
    n = 300
    learned_idx = rng.integers(1, len(steps), size=n)  # planted: wrong just before, correct from here on
    correct = rng.random((n, len(steps))) < 0.5
    for i, k in enumerate(learned_idx):
        correct[i, k - 1] = False
        correct[i, k:] = True
    correct[:10, -1] = False  # never learned
    correct[10:20, :] = True  # correct throughout: learned at step 0, left-censored
    first = rng.choice(steps, size=n) + 1
    first[-30:] = -1
    learned, censored = gen.learned_at(correct, steps)
    expect = steps[learned_idx].copy()
    expect[:10] = -1
    expect[10:20] = 0
    np.testing.assert_array_equal(learned, expect)
    assert censored[10:20].all() and not censored[20:].any()
    lg = gen.lag_summary(np.arange(n).astype(str), np.full(n, "x"), first, correct, steps, n_boot=200,
                         rng=np.random.default_rng(0))
    ok = (first >= 0) & (expect >= 0)
    np.testing.assert_array_equal(lg.has_lag, ok)
    np.testing.assert_array_equal(lg.lag[ok], expect[ok] - first[ok])
    assert lg.median_lag == np.median(expect[ok] - first[ok])
    assert lg.median_ci_low <= lg.median_lag <= lg.median_ci_high
    assert lg.n_before_exposure == int(np.sum(expect[ok] - first[ok] <= 0))
    assert lg.n_never_learned_exposed == int(np.sum((first >= 0) & (expect < 0)))
    assert lg.n_control == 30


def test_edge_cases_do_not_crash(tmp_path) -> None:
    # one checkpoint only; a phenomenon with no validation pairs; a phenomenon with no pairs learned
    steps = np.array([100])
    first = np.array([0, 5, 7, 9, 11, 13, -1, -1, 200, 300])
    phen = np.array(["tr"] * 6 + ["ctl"] * 2 + ["val"] * 2)
    correct = np.array([[True]] * 6 + [[False]] * 4)
    res = gen.analyze_generalization(phen.astype(object).astype(str), phen, first, correct, steps, n_boot=50,
                                     rng=np.random.default_rng(0))
    assert res.delays["tr"].validation.n_distinct == 0
    assert res.delays["tr"].validation.step is None
    assert res.delays["tr"].delay is None
    assert "no pairs" in delay_sentence(res.delays["tr"], 0.9)
    assert res.delays["tr"].train.step == 100 and res.delays["tr"].train.at_first_point
    assert res.delays["val"].validation.step is None  # two pairs < min_pairs
    summarize_generalization(res)
    for name, table in gen.tables(res).items():
        pq.write_table(table, tmp_path / f"{name}.parquet")
        back = pq.read_table(tmp_path / f"{name}.parquet")
        assert back.num_rows == table.num_rows
    delays = pq.read_table(tmp_path / "delays.parquet").to_pylist()
    assert {r["phenomenon"]: r["delay"] for r in delays}["tr"] is None
    # no bootstrap at all still works
    res0 = gen.analyze_generalization(phen, phen, first, correct, steps, n_boot=0)
    assert res0.delays["tr"].train.step == 100


def test_chance_sentence_quotes_the_interval() -> None:
    # 40 pairs per group; proxy-validation (first seen after the last checkpoint) ends at 22/40 correct,
    # whose 95% CI includes 0.5
    steps = np.array([10, 20, 40])
    first = np.array([0] * 40 + [50] * 40)
    correct = np.zeros((80, 3), bool)
    correct[:40, 1:] = True
    correct[40:62, 2] = True
    res = gen.analyze_generalization(np.arange(80).astype(str), np.full(80, "x"), first, correct, steps,
                                     n_boot=200, rng=np.random.default_rng(0))
    d = res.overall
    assert d.delay is None and not d.validation.above_chance
    text = delay_sentence(d, 0.9)
    low, high = d.validation.final_ci_low, d.validation.final_ci_high
    assert low <= 0.5 <= high
    assert f"ends indistinguishable from chance (accuracy 0.55, 95% CI {low:.2f}–{high:.2f} includes 0.5)" in text


def test_final_point_reports_its_own_pair_count(tmp_path) -> None:
    # 30 pairs are first seen at step 5 (proxy-validation at step 0 only), 8 at step 25 (proxy-validation
    # until step 20): the proxy-validation curve ends at step 20 with 8 pairs, out of 38 over the run
    steps = np.array([0, 10, 20, 30])
    first = np.array([5] * 30 + [25] * 8)
    correct = np.ones((38, 4), bool)
    res = gen.analyze_generalization(np.arange(38).astype(str), np.full(38, "x"), first, correct, steps,
                                     min_pairs=5, n_boot=50, rng=np.random.default_rng(0))
    v = res.overall.validation
    assert (v.n_distinct, v.final_step, v.final_n) == (38, 20, 8)
    assert v.final_n == res.curves["ALL"].n["validation"][2]
    assert (res.overall.train.final_step, res.overall.train.final_n) == (30, 38)
    assert any("(38 pairs over the run) ends at accuracy 1.00" in s and "n = 8) at step 20" in s
               for s in summarize_generalization(res))
    rows = {(r["phenomenon"], r["group"]): r for r in gen.tables(res)["transitions"].to_pylist()}
    assert rows[("ALL", "validation")]["final_n_pairs"] == 8 and rows[("ALL", "validation")]["n_pairs"] == 38

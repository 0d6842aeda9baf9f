"""Schedules: presets, step arithmetic at step/item boundaries, and first exposures / windows through the
real engine on a hand-written stream (expected values worked out by hand in the comments)."""

from __future__ import annotations

from pathlib import Path

import exposure
import numpy as np
import pytest
from _corpus_files import small_index
from exposure.schedule import (
    PRESET_NAMES,
    Schedule,
    every_checkpoints,
    log_checkpoints,
    parse_checkpoints,
)

# ---------------------------------------------------------------- pure arithmetic


def test_pythia_preset() -> None:
    s = Schedule.preset("pythia")
    assert (s.item_length, s.items_per_step, s.tokens_per_step) == (2049, 1024, 2049 * 1024)
    assert len(s.checkpoints) == 154
    assert s.checkpoints[:12] == (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000)
    assert s.checkpoints[-2:] == (142000, 143000) and s.num_steps == 143000
    assert s.window_boundaries()[:3].tolist() == [0, 2049 * 1024, 2 * 2049 * 1024]


def test_olmo_presets() -> None:
    expect = {
        "olmo-1b": (2048, 2048, 739_328),
        "olmo-7b": (2048, 2160, 557_000),
        "olmo2-1b": (4096, 512, 1_907_349),
        "olmo2-7b": (4096, 1024, 928_646),
    }
    for name, (L, B, steps) in expect.items():
        s = Schedule.preset(name)
        assert (s.item_length, s.items_per_step, s.num_steps) == (L, B, steps)
        assert s.checkpoints[:3] == (0, 1000, 2000) and s.checkpoints[-1] == steps
    assert set(PRESET_NAMES) == {"pythia", *expect}
    with pytest.raises(ValueError, match="unknown schedule preset 'gpt5'"):
        Schedule.preset("gpt5")


def test_step_boundaries() -> None:
    s = Schedule.preset("pythia")
    T = 2049 * 1024
    # last token of step 0 / first of step 1; last of step 511 / first of step 512
    offsets = [0, T - 1, T, 2 * T - 1, 512 * T - 1, 512 * T, 999 * T + 5, 1000 * T]
    steps = s.step_of(offsets)
    assert steps.tolist() == [0, 0, 1, 1, 511, 512, 999, 1000]
    # checkpoint S has seen steps 0..S-1: step 0 -> step1, step 1 -> step2, step 511 -> step512, 512 -> step1000
    assert s.first_checkpoint(steps).tolist() == [1, 1, 2, 2, 512, 1000, 1000, 2000]
    assert s.first_checkpoint([142999, 143000, -1]).tolist() == [143000, -1, -1]
    # item boundaries inside a step: items 1023 and 1024 are the last of step 0 and the first of step 1
    assert s.step_of([1023 * 2049, 1024 * 2049 - 1, 1024 * 2049]).tolist() == [0, 0, 1]
    with pytest.raises(ValueError, match="offsets must be >= 0"):
        s.step_of([-1])


def test_dict_round_trip_and_validation() -> None:
    s = Schedule("mine", 4, 2, (0, 1, 2, 4), epoch_items=8, total_steps=5)
    d = s.to_dict()
    assert d["tokens_per_step"] == 8
    assert Schedule.from_dict(d) == s
    assert Schedule.from_dict(Schedule.preset("pythia").to_dict()) == Schedule.preset("pythia")
    with pytest.raises(ValueError, match="strictly increasing"):
        Schedule("bad", 4, 2, (0, 2, 2))
    with pytest.raises(ValueError, match="positive"):
        Schedule("bad", 0, 2, (0,))
    with pytest.raises(ValueError, match="not a schedule description: no 'item_length' field"):
        Schedule.from_dict({"name": "x"})
    with pytest.raises(ValueError, match="expected an object .* got list"):
        Schedule.from_dict([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a schedule description: invalid literal"):
        Schedule.from_dict({**d, "items_per_step": "many"})


def test_checkpoint_helpers() -> None:
    assert log_checkpoints(10) == (0, 1, 2, 4, 8, 10)
    assert log_checkpoints(8) == (0, 1, 2, 4, 8)
    assert log_checkpoints(1) == (0, 1)
    assert every_checkpoints(1000, 2500) == (0, 1000, 2000, 2500)
    assert parse_checkpoints("0,1,2,4") == (0, 1, 2, 4)
    assert parse_checkpoints("0:100:25, 150") == (0, 25, 50, 75, 100, 150)
    with pytest.raises(ValueError, match="bad checkpoint list entry 'x'"):
        parse_checkpoints("0,x")
    with pytest.raises(ValueError, match="bad checkpoint"):
        parse_checkpoints("0:10:0")
    s = Schedule.custom(4, 2, num_steps=10)
    assert s.checkpoints == (0, 1, 2, 4, 8, 10) and s.num_steps == 10


# ---------------------------------------------------------------- through the engine

# Items of L=4 tokens, B=2 items per step (8 tokens per step). Offsets, by item:
#   step 0: item0 [7 8 0 7]  item1 [8 0 0 5]
#   step 1: item2 [6 0 7 8]  item3 [0 0 0 0]
#   step 2: item4 [7 8 0 0]  item5 [0 0 0 0]
#   step 3: item6 [0 0 7 8]  item7 [0 6 0 0]
STREAM = [7, 8, 0, 7, 8, 0, 0, 5, 6, 0, 7, 8, 0, 0, 0, 0, 7, 8, 0, 0, 0, 0, 0, 0, 0, 0, 7, 8, 0, 6, 0, 0]
P = [7, 8]  # at 0 (step 0), 10 (step 1), 16 (step 2), 26 (step 3); offsets 3-4 cross items 0|1: no match
A = [5]  # at 7: the last token of step 0
B = [6]  # at 8 (the first token of step 1) and 29 (step 3)
Q = [8, 0]  # at 1, 4, 17; 11-12 and 27-28 cross an item boundary: no match
LATE = [0, 6]  # only at 28 (step 3)
NEVER = [9]


@pytest.fixture(scope="module")
def toy_index(tmp_path_factory: pytest.TempPathFactory) -> exposure.Index:
    out = tmp_path_factory.mktemp("sched") / "idx"
    return small_index(STREAM, out, vocab_size=20, item_length=4)


def test_first_step_and_seen_by(toy_index: exposure.Index) -> None:
    s = Schedule("toy", 4, 2, (0, 1, 2, 4))
    phrases = [P, A, B, Q, LATE, NEVER]
    assert toy_index.count(phrases).tolist() == [4, 1, 2, 3, 1, 0]
    assert s.first_step(toy_index, phrases).tolist() == [0, 0, 1, 0, 3, -1]
    assert s.seen_by(toy_index, phrases, 1).tolist() == [True, True, False, True, False, False]
    assert s.seen_by(toy_index, phrases, 2).tolist() == [True, True, True, True, False, False]
    assert s.seen_by(toy_index, phrases, 4).tolist() == [True, True, True, True, True, False]
    # a run that stops after 2 steps never trained on LATE (step 3)
    short = Schedule("toy", 4, 2, (0, 1, 2))
    assert short.first_step(toy_index, [LATE, B]).tolist() == [-1, 1]


def test_exposures_per_window(toy_index: exposure.Index) -> None:
    s = Schedule("toy", 4, 2, (0, 1, 2, 4))
    # windows: [0,0) | steps 0 | step 1 | steps 2-3
    got = s.exposures(toy_index, [P, A, B, Q, LATE, NEVER])
    assert got.tolist() == [[0, 1, 1, 2], [0, 1, 0, 0], [0, 0, 1, 1], [0, 2, 0, 1], [0, 0, 0, 1], [0, 0, 0, 0]]
    # a first checkpoint after step 0 makes window 0 = steps [0, c0)
    s2 = Schedule("toy", 4, 2, (2, 3, 4))
    assert s2.exposures(toy_index, [P, B]).tolist() == [[2, 1, 1], [1, 0, 1]]


def test_exposures_second_pass(toy_index: exposure.Index) -> None:
    # one pass = the 8 items (4 steps); the run goes on for 8 steps, so every occurrence is trained again
    # 4 steps later: P at steps 0,1,2,3 and 4,5,6,7; B at 1,3 and 5,7
    s = Schedule("toy", 4, 2, (0, 1, 2, 4, 6, 8), epoch_items=8)
    got = s.exposures(toy_index, [P, B, A])
    assert got.tolist() == [[0, 1, 1, 2, 2, 2], [0, 0, 1, 1, 1, 1], [0, 1, 0, 0, 1, 0]]
    assert s.first_step(toy_index, [P, B]).tolist() == [0, 1]  # first pass
    # a pass that is not a whole number of steps: 12 tokens per step, one pass = 32 tokens, run = 6 steps.
    # P at 0,10,16,26 -> steps 0,0,1,2; pass 2 (+32) -> 2,3,4,4; pass 3 (+64) -> 5,6,6,7 (only step 5 < 6)
    s3 = Schedule("toy3", 4, 3, (0, 2, 4, 6), epoch_items=8)
    assert s3.exposures(toy_index, [P]).tolist() == [[0, 3, 3, 3]]


def _oracle_exposures(index: exposure.Index, s: Schedule, phrase: list[int], run_items: int) -> list[int]:
    """Independent count: every occurrence, every pass, placed in its window by a plain loop; the run reads
    ``run_items`` items in all."""
    out = [0] * len(s.checkpoints)
    ep = s.epoch_tokens
    for t in index.positions(phrase).tolist():
        passes = [0] if ep is None else range(0, 1000)
        for p in passes:
            v = t + p * (ep or 0)
            step = v // s.tokens_per_step
            if step >= s.checkpoints[-1] or v // s.item_length >= run_items:
                break
            k = next(i for i, c in enumerate(s.checkpoints) if c > step)
            out[k] += 1
    return out


def test_exposures_match_oracle_on_random_streams(tmp_path: Path) -> None:
    rng = np.random.default_rng(1234)
    for trial in range(3):
        L = int(rng.integers(3, 9))
        n_items = int(rng.integers(20, 60))
        tokens = rng.integers(0, 4, size=L * n_items).astype(np.uint16)
        idx = small_index(tokens, tmp_path / f"r{trial}", vocab_size=4, item_length=L)
        B = int(rng.integers(1, 5))
        steps = -(-n_items // B)
        ckpts = tuple(sorted({0, *rng.integers(1, 3 * steps, size=6).tolist()}))
        # a run whose last step is partial reads fewer items than its steps hold (and no further pass in it)
        partial = (ckpts[-1] - 1) * B + int(rng.integers(1, B + 1))
        for epoch, total_items in ((None, None), (n_items, None), (n_items, partial), (None, partial)):
            s = Schedule("r", L, B, ckpts, epoch_items=epoch, total_items=total_items)
            run_items = ckpts[-1] * B if total_items is None else total_items
            phrases = [[int(a)] for a in range(4)] + [rng.integers(0, 4, size=k).tolist() for k in (2, 2, 3)]
            got = s.exposures(idx, phrases)
            for ph, row in zip(phrases, got.tolist()):
                assert row == _oracle_exposures(idx, s, ph, run_items), (trial, epoch, total_items, ph)
            # first_step agrees with the smallest position
            fs = s.first_step(idx, phrases)
            for ph, f in zip(phrases, fs.tolist()):
                pos = idx.positions(ph).tolist()
                trained = pos and pos[0] // s.tokens_per_step < s.num_steps and pos[0] // L < run_items
                assert f == (pos[0] // s.tokens_per_step if trained else -1)


def test_a_one_pass_run_with_a_partial_last_step_trains_each_occurrence_once(toy_index: exposure.Index) -> None:
    # 8 items at 3 per step: 3 steps (12 tokens each), the last reading items 6 and 7 only; P at 0, 10, 16, 26
    # -> steps 0, 0, 1, 2; Q at 1, 4, 17 -> 0, 0, 1. Before total_items, the third step
    # was taken to go on into a second pass (items 0, then 1, ...), so the last window counted P and A again.
    s = Schedule.custom(4, 3, num_steps=3, epoch_items=8, total_items=8)
    assert (s.total_items, s.trained_tokens, s.num_steps) == (8, 32, 3)
    phrases = [P, A, B, Q, LATE, NEVER]
    got = s.exposures(toy_index, phrases)
    assert got.sum(axis=1).tolist() == toy_index.count(phrases).tolist()
    assert got.tolist() == [[0, 2, 1, 1], [0, 1, 0, 0], [0, 1, 0, 1], [0, 2, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]]
    assert "8 items in all (the last step partial)" in s.describe()
    assert Schedule.from_dict(s.to_dict()) == s
    # total_items is kept in one form: the default (every step whole) is None
    assert Schedule.custom(4, 2, num_steps=4, total_items=8).total_items is None
    with pytest.raises(ValueError, match="total_items 6 does not end in the last of its 3 steps of 3 items"):
        Schedule.custom(4, 3, num_steps=3, total_items=6)
    with pytest.raises(ValueError, match="total_items 10 does not end"):
        Schedule.custom(4, 3, num_steps=3, total_items=10)


def test_an_index_of_items_of_varying_length_takes_no_schedule(tmp_path: Path) -> None:
    # Steps are counted in tokens (item_length x items_per_step): over items of varying length every step would be
    # wrong. check_index used to let such an index pass (it compared a uniform item length only).
    ragged = exposure.build_index(np.arange(40, dtype=np.uint16) % 7, tmp_path / "ragged", vocab_size=7,
                                  item_starts=[0, 3, 20], progress=False)
    with pytest.raises(ValueError, match="has items of varying length, so no step schedule applies"):
        Schedule("s", 4, 2, (0, 1)).check_index(ragged)
    uniform = small_index(list(range(7)) * 4, tmp_path / "uniform", vocab_size=7, item_length=4)
    Schedule("s", 4, 2, (0, 1)).check_index(uniform)
    with pytest.raises(ValueError, match="has items of 4"):
        Schedule("s", 5, 2, (0, 1)).check_index(uniform)


def test_window_structures_for_persisting(toy_index: exposure.Index) -> None:
    s = Schedule("toy", 4, 2, (0, 1, 2, 4, 6, 8), epoch_items=8)
    # virtual boundaries 0,8,16,32,48,64 modulo the 32-token pass: 0,8,16,0,16,0, plus the pass end 32
    assert list(s.window_structures(toy_index.num_tokens)) == ["toy"]
    w = s.window_structures(toy_index.num_tokens)["toy"]
    assert w.tolist() == [0, 8, 16, 32]
    toy_index.window_counts([P], w)  # accepted by the engine (strictly increasing)
    # many passes (a tiny corpus under the Pythia schedule) still need one window_counts call
    pythia = Schedule.preset("pythia", item_length=4, items_per_step=2).with_epoch(8)
    got = pythia.exposures(toy_index, [P])[0]
    # one pass = 4 steps, so checkpoint c has seen c/4 passes: window (c_{k-1}, c_k] gets (c_k - c_{k-1})/4 passes
    # of P's 4 occurrences (one per step of the pass) -> exactly (c_k - c_{k-1}) occurrences
    ck = pythia.checkpoints
    assert got.tolist() == [c - p for p, c in zip((0,) + ck[:-1], ck)]


def test_for_index_requires_schedule(toy_index: exposure.Index) -> None:
    with pytest.raises(ValueError, match="records no schedule"):
        Schedule.for_index(small_index)

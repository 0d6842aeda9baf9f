"""Delayed generalization: accuracy curves by exposure group, threshold steps, delays, per-pair lags.

Groups at checkpoint ``S`` (re-evaluated at every checkpoint; ``f`` = ``first_step_good``):

* ``train``      — proxy-train: ``0 <= f < S`` (the critical phrase was already trained on);
* ``validation`` — proxy-validation: ``f >= S`` (not yet seen, but seen later in the run);
* ``never``      — ``f == -1``: never seen in the whole run, the same pairs at every checkpoint (control).

The three groups are disjoint. Confidence intervals come from a bootstrap over pairs (a pair is
resampled as a whole, with all its checkpoints, so a curve's points and the two curves of one
resample stay consistent).

*Threshold step* of a curve: the first checkpoint at which its accuracy reaches ``threshold`` × its
final accuracy (the accuracy at its last checkpoint). Only checkpoints where the group has at least
``min_pairs`` pairs count, for the threshold and for "final", so a curve cannot "reach" it on two lucky
pairs. A curve that ends at chance (final accuracy's 95% CI includes 0.5) never reaches it: it has
learned nothing, and "90% of chance" would be met at once.

*Learned at* (per pair): the first checkpoint from which the pair is scored correct at that checkpoint
and every later one; "never" when it is wrong at the last checkpoint. A pair correct at every checkpoint
is learned at the first checkpoint and flagged ``left_censored`` (it may have been learned earlier).
*Lag* = learned_at − first_step_good for exposed pairs; lag <= 0 means the pair was learned before
the checkpoint that first trained on its critical phrase (checkpoint S has trained on steps < S).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from .stats import bootstrap_counts, percentile_ci

GROUPS: tuple[str, ...] = ("train", "validation", "never")
GROUP_LABELS: dict[str, str] = {
    "train": "proxy-train (seen before S)",
    "validation": "proxy-validation (first seen at or after S)",
    "never": "never exposed (control)",
}
ALL = "ALL"


def group_membership(first_step: np.ndarray, steps: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean ``[n_pairs, n_steps]`` membership of each group at each checkpoint."""
    f = np.asarray(first_step, dtype=np.int64)[:, None]
    s = np.asarray(steps, dtype=np.int64)[None, :]
    exposed = f >= 0
    return {
        "train": exposed & (f < s),
        "validation": exposed & (f >= s),
        "never": np.broadcast_to(~exposed, (f.shape[0], s.shape[1])).copy(),
    }


@dataclass
class CurveSet:
    """Accuracy curves of the three groups for one phenomenon (or ``ALL``)."""

    phenomenon: str
    steps: np.ndarray
    n: dict[str, np.ndarray]
    accuracy: dict[str, np.ndarray]
    ci_low: dict[str, np.ndarray]
    ci_high: dict[str, np.ndarray]
    boot: dict[str, np.ndarray]
    n_distinct: dict[str, int]


def accuracy_curves(
    correct: np.ndarray,
    first_step: np.ndarray,
    steps: np.ndarray,
    *,
    phenomenon: str,
    n_boot: int,
    rng: np.random.Generator,
) -> CurveSet:
    """Accuracy of each group at each checkpoint with bootstrap (over pairs) 95% intervals."""
    correct = np.asarray(correct, dtype=bool)
    steps = np.asarray(steps, dtype=np.int64)
    members = group_membership(first_step, steps)
    n_pairs, n_steps = correct.shape
    n: dict[str, np.ndarray] = {}
    acc: dict[str, np.ndarray] = {}
    m_f: dict[str, np.ndarray] = {}
    h_f: dict[str, np.ndarray] = {}
    for g, m in members.items():
        n[g] = m.sum(axis=0).astype(np.int64)
        hits = (m & correct).sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            acc[g] = np.where(n[g] > 0, hits / np.maximum(n[g], 1), np.nan)
        m_f[g] = m.astype(np.float32)
        h_f[g] = (m & correct).astype(np.float32)
    boot = {g: np.full((n_boot, n_steps), np.nan) for g in GROUPS}
    row = 0
    for w in bootstrap_counts(n_pairs, n_boot, rng):
        w32 = w.astype(np.float32)
        for g in GROUPS:
            den = w32 @ m_f[g]
            num = w32 @ h_f[g]
            with np.errstate(invalid="ignore", divide="ignore"):
                boot[g][row : row + len(w)] = np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)
        row += len(w)
    low: dict[str, np.ndarray] = {}
    high: dict[str, np.ndarray] = {}
    for g in GROUPS:
        if n_boot > 0:
            low[g], high[g] = percentile_ci(boot[g], axis=0)
        else:
            low[g] = np.full(n_steps, np.nan)
            high[g] = np.full(n_steps, np.nan)
        low[g] = np.where(n[g] > 0, low[g], np.nan)
        high[g] = np.where(n[g] > 0, high[g], np.nan)
    n_distinct = {g: int(members[g].any(axis=1).sum()) for g in GROUPS}
    return CurveSet(phenomenon, steps, n, acc, low, high, boot, n_distinct)


def first_reach(acc: np.ndarray, valid: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``acc`` (``[..., T]``): (index of the first valid point >= threshold × final, final).

    ``final`` is the accuracy at the last valid index. Index -1 when never reached or no valid point.
    """
    acc = np.asarray(acc, dtype=np.float64)
    valid = np.asarray(valid, dtype=bool)
    idx_valid = np.flatnonzero(valid)
    shape = acc.shape[:-1]
    if len(idx_valid) == 0:
        return np.full(shape, -1, dtype=np.int64), np.full(shape, np.nan)
    final = acc[..., idx_valid[-1]]
    target = threshold * final
    with np.errstate(invalid="ignore"):
        hit = (acc >= target[..., None]) & valid
    hit &= np.isfinite(acc)
    any_hit = hit.any(axis=-1)
    first = np.where(any_hit, hit.argmax(axis=-1), -1).astype(np.int64)
    return first, final


@dataclass
class Crossing:
    """When one curve first reached ``threshold`` × its final accuracy."""

    phenomenon: str
    group: str
    n_distinct: int
    final_step: int | None
    final_n: int
    final_accuracy: float
    final_ci_low: float
    final_ci_high: float
    above_chance: bool
    threshold_accuracy: float
    step: int | None
    step_ci_low: float
    step_ci_high: float
    boot_defined: float
    at_first_point: bool
    boot_steps: np.ndarray = field(repr=False)


def crossing(curves: CurveSet, group: str, threshold: float, min_pairs: int) -> Crossing:
    """Threshold step of one group's curve, with a bootstrap interval.

    A curve whose final accuracy is not above chance (its 95% interval includes 0.5; without a
    bootstrap: final <= 0.5) has not learned anything, so it gets no threshold step ("never"); the same
    holds for each bootstrap resample whose final accuracy is <= 0.5.
    """
    steps = curves.steps
    valid = curves.n[group] >= max(1, min_pairs)
    boot = curves.boot[group]
    idx, final = first_reach(curves.accuracy[group], valid, threshold)
    valid_idx = np.flatnonzero(valid)
    final_idx = int(valid_idx[-1]) if len(valid_idx) else -1
    if final_idx >= 0 and boot.shape[0] > 0:
        f_low, f_high = percentile_ci(boot[:, final_idx])
    else:
        f_low, f_high = np.nan, np.nan
    above = bool(f_low > 0.5) if np.isfinite(f_low) else bool(np.isfinite(final) and final > 0.5)
    boot_idx, boot_final = first_reach(boot, valid, threshold)
    if not above:
        idx = -1
        boot_idx = np.full_like(boot_idx, -1)
    boot_idx = np.where(boot_final > 0.5, boot_idx, -1)
    idx = int(idx)
    boot_steps = np.where(boot_idx >= 0, steps[np.maximum(boot_idx, 0)], -1).astype(np.int64)
    defined = boot_steps >= 0
    if defined.any():
        low, high = percentile_ci(boot_steps[defined].astype(np.float64))
    else:
        low, high = np.nan, np.nan
    return Crossing(
        phenomenon=curves.phenomenon,
        group=group,
        n_distinct=curves.n_distinct[group],
        final_step=int(steps[final_idx]) if final_idx >= 0 else None,
        final_n=int(curves.n[group][final_idx]) if final_idx >= 0 else 0,
        final_accuracy=float(final),
        final_ci_low=float(f_low),
        final_ci_high=float(f_high),
        above_chance=above,
        threshold_accuracy=float(threshold * final) if np.isfinite(final) else float("nan"),
        step=int(steps[idx]) if idx >= 0 else None,
        step_ci_low=float(low),
        step_ci_high=float(high),
        boot_defined=float(defined.mean()) if len(defined) else float("nan"),
        at_first_point=bool(idx >= 0 and len(valid_idx) and idx == valid_idx[0]),
        boot_steps=boot_steps,
    )


@dataclass
class Delay:
    """Gap between the proxy-validation and the proxy-train threshold steps of one phenomenon."""

    phenomenon: str
    train: Crossing
    validation: Crossing
    never: Crossing
    delay: int | None
    ci_low: float
    ci_high: float
    boot_defined: float


def delay_between(train: Crossing, validation: Crossing, never: Crossing) -> Delay:
    delay = None
    if train.step is not None and validation.step is not None:
        delay = validation.step - train.step
    both = (train.boot_steps >= 0) & (validation.boot_steps >= 0)
    if both.any():
        diffs = (validation.boot_steps[both] - train.boot_steps[both]).astype(np.float64)
        low, high = percentile_ci(diffs)
    else:
        low, high = np.nan, np.nan
    return Delay(
        phenomenon=train.phenomenon,
        train=train,
        validation=validation,
        never=never,
        delay=delay,
        ci_low=float(low),
        ci_high=float(high),
        boot_defined=float(both.mean()) if len(both) else float("nan"),
    )


def learned_at(correct: np.ndarray, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pair: (first checkpoint from which it stays correct, -1 if wrong at the last; left-censored)."""
    correct = np.asarray(correct, dtype=bool)
    steps = np.asarray(steps, dtype=np.int64)
    n_steps = correct.shape[1]
    wrong = ~correct
    any_wrong = wrong.any(axis=1)
    last_wrong = np.where(any_wrong, n_steps - 1 - np.argmax(wrong[:, ::-1], axis=1), -1)
    first_ok = last_wrong + 1
    learned = np.where(first_ok < n_steps, steps[np.minimum(first_ok, n_steps - 1)], -1).astype(np.int64)
    return learned, ~any_wrong


@dataclass
class LagSummary:
    """Per-pair learned-at steps and the lag behind first exposure."""

    phenomenon: np.ndarray
    pair_uid: np.ndarray
    first_step: np.ndarray
    learned_at: np.ndarray
    left_censored: np.ndarray
    lag: np.ndarray
    has_lag: np.ndarray
    median_lag: float
    median_ci_low: float
    median_ci_high: float
    n_exposed: int
    n_learned_exposed: int
    n_before_exposure: int
    n_never_learned_exposed: int
    n_censored: int
    n_control_learned: int
    n_control: int


def lag_summary(
    pair_uid: np.ndarray,
    phenomenon: np.ndarray,
    first_step: np.ndarray,
    correct: np.ndarray,
    steps: np.ndarray,
    *,
    n_boot: int,
    rng: np.random.Generator,
) -> LagSummary:
    learned, censored = learned_at(correct, steps)
    first_step = np.asarray(first_step, dtype=np.int64)
    exposed = first_step >= 0
    has_lag = exposed & (learned >= 0)
    lag = np.where(has_lag, learned - first_step, 0).astype(np.int64)
    lags = lag[has_lag].astype(np.float64)
    if len(lags):
        median = float(np.median(lags))
        meds = []
        for start in range(0, n_boot, 200):
            b = min(200, n_boot - start)
            idx = rng.integers(0, len(lags), size=(b, len(lags)))
            meds.append(np.median(lags[idx], axis=1))
        low, high = percentile_ci(np.concatenate(meds)) if meds else (np.nan, np.nan)
    else:
        median, low, high = float("nan"), np.nan, np.nan
    return LagSummary(
        phenomenon=np.asarray(phenomenon),
        pair_uid=np.asarray(pair_uid),
        first_step=first_step,
        learned_at=learned,
        left_censored=censored,
        lag=lag,
        has_lag=has_lag,
        median_lag=median,
        median_ci_low=float(low),
        median_ci_high=float(high),
        n_exposed=int(exposed.sum()),
        n_learned_exposed=int(has_lag.sum()),
        n_before_exposure=int(np.sum(has_lag & (lag <= 0))),
        n_never_learned_exposed=int(np.sum(exposed & (learned < 0))),
        n_censored=int(np.sum(has_lag & censored)),
        n_control_learned=int(np.sum(~exposed & (learned >= 0))),
        n_control=int((~exposed).sum()),
    )


@dataclass
class GeneralizationResult:
    threshold: float
    min_pairs: int
    curves: dict[str, CurveSet]
    delays: dict[str, Delay]
    lags: LagSummary

    @property
    def overall(self) -> Delay:
        return self.delays[ALL]


def analyze_generalization(
    pair_uid: np.ndarray,
    phenomenon: np.ndarray,
    first_step: np.ndarray,
    correct: np.ndarray,
    steps: np.ndarray,
    *,
    threshold: float = 0.9,
    min_pairs: int = 5,
    n_boot: int = 1000,
    rng: np.random.Generator | None = None,
    progress: bool = False,
) -> GeneralizationResult:
    """Curves, threshold steps and delays per phenomenon and overall (``ALL``), and per-pair lags."""
    from tqdm import tqdm

    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    rng = rng if rng is not None else np.random.default_rng(0)
    phenomenon = np.asarray(phenomenon).astype(str)
    first_step = np.asarray(first_step, dtype=np.int64)
    names = [ALL] + sorted(set(phenomenon.tolist()))
    curves: dict[str, CurveSet] = {}
    delays: dict[str, Delay] = {}
    for name in tqdm(names, desc="accuracy curves", unit="phenomenon", disable=not progress):
        mask = np.ones(len(phenomenon), bool) if name == ALL else phenomenon == name
        cs = accuracy_curves(correct[mask], first_step[mask], steps, phenomenon=name, n_boot=n_boot, rng=rng)
        curves[name] = cs
        cross = {g: crossing(cs, g, threshold, min_pairs) for g in GROUPS}
        delays[name] = delay_between(cross["train"], cross["validation"], cross["never"])
    lags = lag_summary(pair_uid, phenomenon, first_step, correct, steps, n_boot=n_boot, rng=rng)
    return GeneralizationResult(threshold, min_pairs, curves, delays, lags)


CURVES_SCHEMA = pa.schema(
    [
        ("phenomenon", pa.string()),
        ("group", pa.string()),
        ("step", pa.int64()),
        ("n_pairs", pa.int64()),
        ("accuracy", pa.float64()),
        ("ci_low", pa.float64()),
        ("ci_high", pa.float64()),
    ]
)

TRANSITIONS_SCHEMA = pa.schema(
    [
        ("phenomenon", pa.string()),
        ("group", pa.string()),
        ("n_pairs", pa.int64()),
        ("final_step", pa.int64()),
        ("final_n_pairs", pa.int64()),
        ("final_accuracy", pa.float64()),
        ("final_ci_low", pa.float64()),
        ("final_ci_high", pa.float64()),
        ("final_above_chance", pa.bool_()),
        ("threshold_accuracy", pa.float64()),
        ("reached_step", pa.int64()),
        ("reached_ci_low", pa.float64()),
        ("reached_ci_high", pa.float64()),
        ("reached_in_bootstrap", pa.float64()),
        ("reached_at_first_point", pa.bool_()),
    ]
)

DELAYS_SCHEMA = pa.schema(
    [
        ("phenomenon", pa.string()),
        ("train_step", pa.int64()),
        ("validation_step", pa.int64()),
        ("never_step", pa.int64()),
        ("delay", pa.int64()),
        ("delay_ci_low", pa.float64()),
        ("delay_ci_high", pa.float64()),
        ("delay_in_bootstrap", pa.float64()),
    ]
)

PAIRS_SCHEMA = pa.schema(
    [
        ("pair_uid", pa.string()),
        ("phenomenon", pa.string()),
        ("first_step_good", pa.int64()),
        ("learned_at", pa.int64()),
        ("left_censored", pa.bool_()),
        ("lag", pa.int64()),
    ]
)


def _nan_to_none(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def tables(result: GeneralizationResult) -> dict[str, pa.Table]:
    """The result as Parquet-ready tables: curves, transitions, delays, pair_learning."""
    curve_rows = []
    for name, cs in result.curves.items():
        for g in GROUPS:
            for k, step in enumerate(cs.steps):
                curve_rows.append(
                    {
                        "phenomenon": name,
                        "group": g,
                        "step": int(step),
                        "n_pairs": int(cs.n[g][k]),
                        "accuracy": _nan_to_none(cs.accuracy[g][k]),
                        "ci_low": _nan_to_none(cs.ci_low[g][k]),
                        "ci_high": _nan_to_none(cs.ci_high[g][k]),
                    }
                )
    trans_rows = []
    delay_rows = []
    for name, d in result.delays.items():
        for c in (d.train, d.validation, d.never):
            trans_rows.append(
                {
                    "phenomenon": name,
                    "group": c.group,
                    "n_pairs": c.n_distinct,
                    "final_step": c.final_step,
                    "final_n_pairs": c.final_n,
                    "final_accuracy": _nan_to_none(c.final_accuracy),
                    "final_ci_low": _nan_to_none(c.final_ci_low),
                    "final_ci_high": _nan_to_none(c.final_ci_high),
                    "final_above_chance": c.above_chance,
                    "threshold_accuracy": _nan_to_none(c.threshold_accuracy),
                    "reached_step": c.step,
                    "reached_ci_low": _nan_to_none(c.step_ci_low),
                    "reached_ci_high": _nan_to_none(c.step_ci_high),
                    "reached_in_bootstrap": _nan_to_none(c.boot_defined),
                    "reached_at_first_point": c.at_first_point,
                }
            )
        delay_rows.append(
            {
                "phenomenon": name,
                "train_step": d.train.step,
                "validation_step": d.validation.step,
                "never_step": d.never.step,
                "delay": d.delay,
                "delay_ci_low": _nan_to_none(d.ci_low),
                "delay_ci_high": _nan_to_none(d.ci_high),
                "delay_in_bootstrap": _nan_to_none(d.boot_defined),
            }
        )
    lg = result.lags
    pairs = pa.table(
        {
            "pair_uid": pa.array(lg.pair_uid.astype(str)),
            "phenomenon": pa.array(lg.phenomenon.astype(str)),
            "first_step_good": pa.array(lg.first_step),
            "learned_at": pa.array(np.where(lg.learned_at >= 0, lg.learned_at, 0), mask=lg.learned_at < 0),
            "left_censored": pa.array(lg.left_censored),
            "lag": pa.array(lg.lag, mask=~lg.has_lag),
        },
        schema=PAIRS_SCHEMA,
    )
    return {
        "curves": pa.Table.from_pylist(curve_rows, schema=CURVES_SCHEMA),
        "transitions": pa.Table.from_pylist(trans_rows, schema=TRANSITIONS_SCHEMA),
        "delays": pa.Table.from_pylist(delay_rows, schema=DELAYS_SCHEMA),
        "pair_learning": pairs,
    }

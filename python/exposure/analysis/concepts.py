"""Concept vectors before vs after generalization: linear probes and the dimension of good − bad.

For a checkpoint and a layer, with ``g_i``/``b_i`` the hidden states at the critical token of the good
and the bad sentence of pair ``i``:

* **Probe**: logistic regression (standardized features) predicting good (1) vs bad (0) from one
  sentence's state; cross-validated with ``GroupKFold`` grouped by pair, so a pair's two sentences are
  always in the same fold. Out-of-fold accuracy and ROC AUC; a 95% interval for the accuracy from a
  bootstrap over pairs.
* **Dimension** of the difference vectors ``(g_i − b_i) / ||g_i − b_i||`` (unit length, so every pair
  counts once; pairs whose two states are identical contribute nothing): eigenvalues λ of their
  *uncentred* second-moment matrix, i.e. the subspace the differences span. Participation ratio
  ``(Σλ)² / Σλ²`` (1 = a single direction) and the number of principal directions for 90% of Σλ.

Before → after, per phenomenon and layer, over the same pairs:

* probe: paired sign-flip permutation test on per-pair out-of-fold correctness (exact for ≤ 16 pairs);
* participation ratio: paired bootstrap over pairs (same resample at both checkpoints), interval and
  two-sided bootstrap p-value.

p-values are corrected for the many phenomenon × layer tests with Benjamini–Hochberg (q-values); with
fewer than ``MIN_TEST_PAIRS`` pairs no test is made and the change is reported as untested.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import ThreadpoolController

from .generalization import ALL
from .stats import (
    benjamini_hochberg,
    bootstrap_counts,
    bootstrap_p_value,
    components_for_variance,
    paired_permutation_test,
    participation_ratio,
    percentile_ci,
)

MIN_PROBE_PAIRS = 4
_THREADPOOLS: ThreadpoolController | None = None


def _single_threaded_blas():
    """Limit BLAS to one thread: multi-threaded BLAS makes these many small fits several times slower."""
    global _THREADPOOLS
    if _THREADPOOLS is None:
        _THREADPOOLS = ThreadpoolController()
    return _THREADPOOLS.limit(limits=1, user_api="blas")
MIN_TEST_PAIRS = 10
SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class CheckpointChoice:
    """The checkpoints compared: ``before`` and ``after`` (either may be None) and why."""

    before: int | None
    after: int | None
    reason: str

    @property
    def steps(self) -> list[int]:
        return [s for s in (self.before, self.after) if s is not None]

    @property
    def comparable(self) -> bool:
        return self.before is not None and self.after is not None and self.before != self.after


def check_user_checkpoints(available: Iterable[int], before: int | None, after: int | None) -> list[int]:
    """Refuses a ``before``/``after`` without hidden states, or not in that order; returns the sorted steps."""
    avail = sorted(int(s) for s in available)
    for name, value in (("before", before), ("after", after)):
        if value is not None and value not in avail:
            raise ValueError(
                f"--{name} {value}: the evaluation has no hidden states at step {value} "
                f"(steps with states: {avail if avail else 'none'})"
            )
    if before is not None and after is not None and before >= after:
        raise ValueError(f"--before ({before}) must be an earlier step than --after ({after})")
    return avail


def choose_checkpoints(
    available: list[int],
    transition_step: int | None,
    *,
    before: int | None = None,
    after: int | None = None,
) -> CheckpointChoice:
    """Checkpoints just before and at/after the proxy-validation transition, among ``available``.

    ``before`` = the last available checkpoint before the transition step, ``after`` = the first at or
    after it. User choices are validated and take precedence. Without a usable transition the first and
    last available checkpoints are compared, and ``reason`` says so.
    """
    avail = check_user_checkpoints(available, before, after)
    if not avail:
        return CheckpointChoice(None, None, "the evaluation output has no hidden states (states/step{S}.npy)")
    if before is not None and after is not None:
        return CheckpointChoice(before, after, f"chosen by the user: step {before} vs step {after}")
    if len(avail) == 1:
        only = avail[0]
        return CheckpointChoice(
            None, only, f"hidden states exist at one checkpoint only (step {only}): no before/after comparison"
        )
    auto_before: int | None = None
    auto_after: int | None = None
    if transition_step is not None:
        earlier = [s for s in avail if s < transition_step]
        later = [s for s in avail if s >= transition_step]
        if earlier and later:
            auto_before, auto_after = earlier[-1], later[0]
            reason = (
                f"proxy-validation reached its threshold at step {transition_step}: comparing the last "
                f"checkpoint with hidden states before it (step {auto_before}) with the first at or after "
                f"it (step {auto_after})"
            )
        else:
            reason = (
                f"proxy-validation reached its threshold at step {transition_step}, but there are no hidden "
                "states on both sides of it: comparing the first and last checkpoints with hidden states"
            )
    else:
        reason = (
            "proxy-validation never reached its threshold (no transition): comparing the first and last "
            "checkpoints with hidden states"
        )
    if auto_before is None:
        auto_before, auto_after = avail[0], avail[-1]
    if before is not None:
        later = [s for s in avail if s > before]
        auto_after = auto_after if auto_after is not None and auto_after > before else (later[0] if later else None)
        if auto_after is None:
            raise ValueError(f"--before {before}: no checkpoint with hidden states after it to compare with")
        return CheckpointChoice(before, auto_after, f"before chosen by the user (step {before}); after: step {auto_after}")
    if after is not None:
        earlier = [s for s in avail if s < after]
        auto_before = auto_before if auto_before is not None and auto_before < after else (earlier[-1] if earlier else None)
        if auto_before is None:
            raise ValueError(f"--after {after}: no checkpoint with hidden states before it to compare with")
        return CheckpointChoice(auto_before, after, f"after chosen by the user (step {after}); before: step {auto_before}")
    return CheckpointChoice(auto_before, auto_after, reason)


@dataclass
class ProbeResult:
    accuracy: float
    auc: float
    per_pair: np.ndarray  # mean out-of-fold correctness of the pair's two sentences, in {0, 0.5, 1}
    folds: np.ndarray  # fold of each pair


def probe_folds(n_pairs: int, n_splits: int = 5) -> np.ndarray:
    """Fold of each pair under ``GroupKFold`` over the 2·n sentences grouped by pair."""
    groups = np.concatenate([np.arange(n_pairs), np.arange(n_pairs)])
    k = min(n_splits, n_pairs)
    fold_of_sentence = np.empty(2 * n_pairs, dtype=np.int64)
    for f, (_, test) in enumerate(GroupKFold(n_splits=k).split(np.zeros(2 * n_pairs), groups=groups)):
        fold_of_sentence[test] = f
    if np.any(fold_of_sentence[:n_pairs] != fold_of_sentence[n_pairs:]):
        raise AssertionError("GroupKFold put a pair's two sentences in different folds")
    return fold_of_sentence[:n_pairs]


def probe(good: np.ndarray, bad: np.ndarray, n_splits: int = 5) -> ProbeResult:
    """Cross-validated (grouped by pair) logistic probe for good vs bad."""
    n = len(good)
    if n < MIN_PROBE_PAIRS:
        return ProbeResult(float("nan"), float("nan"), np.full(n, np.nan), np.zeros(n, np.int64))
    x = np.concatenate([good, bad]).astype(np.float32, copy=False)
    y = np.concatenate([np.ones(n, np.int64), np.zeros(n, np.int64)])
    folds = probe_folds(n, n_splits)
    fold_all = np.concatenate([folds, folds])
    scores = np.empty(2 * n, dtype=np.float64)
    with _single_threaded_blas():
        for f in np.unique(folds):
            test = fold_all == f
            model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
            model.fit(x[~test], y[~test])
            scores[test] = model.decision_function(x[test])
    right = (scores > 0).astype(np.int64) == y
    auc = float(roc_auc_score(y, scores))
    return ProbeResult(float(right.mean()), auc, (right[:n].astype(float) + right[n:]) / 2.0, folds)


def unit_differences(good: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """``(g − b) / ||g − b||`` per pair (float64); zero rows where the two states are identical."""
    d = good.astype(np.float64) - bad.astype(np.float64)
    norm = np.linalg.norm(d, axis=1, keepdims=True)
    return np.divide(d, norm, out=np.zeros_like(d), where=norm > 0)


def difference_dimension(d: np.ndarray, fraction: float = 0.9) -> tuple[float, int]:
    """(participation ratio, components for ``fraction`` of the variance) of the rows of ``d``."""
    if len(d) == 0 or not np.any(d):
        return float("nan"), 0
    s = np.linalg.svd(d, compute_uv=False)
    lam = s**2
    return participation_ratio(lam), components_for_variance(lam, fraction)


def bootstrap_participation(ds: list[np.ndarray], n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_boot, len(ds)]`` participation ratios under the same pair resamples for every ``d``.

    With counts ``w`` and Gram matrix ``G = D Dᵀ``: Σλ = Σ w_i G_ii and Σλ² = wᵀ (G∘G) w.
    """
    n = len(ds[0])
    out = np.full((n_boot, len(ds)), np.nan)
    grams = [(d @ d.T) for d in ds]
    diag = [np.diag(g) for g in grams]
    sq = [g * g for g in grams]
    row = 0
    for w in bootstrap_counts(n, n_boot, rng):
        for j in range(len(ds)):
            tr = w @ diag[j]
            fro = np.sum((w @ sq[j]) * w, axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[row : row + len(w), j] = np.where(fro > 0, tr**2 / np.where(fro > 0, fro, 1), np.nan)
        row += len(w)
    return out


@dataclass
class ConceptResult:
    choice: CheckpointChoice
    n_layers: int
    layers: pa.Table
    changes: pa.Table
    notes: list[str]

    def rows(self, table: str) -> list[dict]:
        return getattr(self, table).to_pylist()


LAYERS_SCHEMA = pa.schema(
    [
        ("phenomenon", pa.string()),
        ("step", pa.int64()),
        ("when", pa.string()),
        ("layer", pa.int64()),
        ("n_pairs", pa.int64()),
        ("probe_accuracy", pa.float64()),
        ("probe_accuracy_ci_low", pa.float64()),
        ("probe_accuracy_ci_high", pa.float64()),
        ("probe_auc", pa.float64()),
        ("participation_ratio", pa.float64()),
        ("participation_ratio_ci_low", pa.float64()),
        ("participation_ratio_ci_high", pa.float64()),
        ("components_90", pa.int64()),
    ]
)

CHANGES_SCHEMA = pa.schema(
    [
        ("phenomenon", pa.string()),
        ("layer", pa.int64()),
        ("before_step", pa.int64()),
        ("after_step", pa.int64()),
        ("n_pairs", pa.int64()),
        ("probe_accuracy_change", pa.float64()),
        ("probe_auc_change", pa.float64()),
        ("probe_p", pa.float64()),
        ("probe_q", pa.float64()),
        ("probe_significant", pa.bool_()),
        ("participation_ratio_change", pa.float64()),
        ("participation_ratio_change_ci_low", pa.float64()),
        ("participation_ratio_change_ci_high", pa.float64()),
        ("participation_ratio_p", pa.float64()),
        ("participation_ratio_q", pa.float64()),
        ("participation_ratio_significant", pa.bool_()),
        ("components_90_change", pa.int64()),
        ("tested", pa.bool_()),
    ]
)


def _f(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def analyze_concepts(
    states: dict[int, np.ndarray],
    phenomenon: np.ndarray,
    choice: CheckpointChoice,
    *,
    n_boot: int = 1000,
    max_pairs: int = 1000,
    rng: np.random.Generator | None = None,
    progress: bool = False,
) -> ConceptResult:
    """Probe and dimension per phenomenon (and ``ALL``) × layer at the chosen checkpoints, and the change.

    ``states[step]`` is ``[n_pairs, 2, n_layers + 1, d]`` for the pairs to analyse (eligible pairs only,
    aligned with ``phenomenon``). At most ``max_pairs`` pairs (a fixed random sample) per phenomenon and
    for ``ALL``.
    """
    from tqdm import tqdm

    rng = rng if rng is not None else np.random.default_rng(0)
    notes: list[str] = []
    steps = choice.steps
    if not steps:
        empty_l = LAYERS_SCHEMA.empty_table()
        return ConceptResult(choice, 0, empty_l, CHANGES_SCHEMA.empty_table(), [choice.reason])
    phenomenon = np.asarray(phenomenon).astype(str)
    shapes = {tuple(states[s].shape[1:]) for s in steps}
    if len(shapes) != 1:
        raise ValueError(f"hidden states differ in shape between checkpoints {steps}: {sorted(shapes)}")
    n_layers = int(states[steps[0]].shape[2])

    # Sample first, then read only the sampled pairs' states (a full states file can be many GB).
    names = [ALL] + sorted(set(phenomenon.tolist()))
    samples: dict[str, np.ndarray] = {}
    for name in names:
        idx = np.flatnonzero((phenomenon == name) if name != ALL else np.ones(len(phenomenon), bool))
        if len(idx) > max_pairs:
            idx = np.sort(rng.choice(idx, size=max_pairs, replace=False))
            notes.append(f"{name}: {max_pairs} of its pairs (random sample) were used for probes and dimensions.")
        samples[name] = idx
    union = np.unique(np.concatenate([samples[n] for n in names]))
    loaded = {s: np.asarray(states[s][union]) for s in steps}  # [m, 2, L+1, d], float16
    finite = np.ones(len(union), dtype=bool)
    for s in steps:
        finite &= np.isfinite(loaded[s].reshape(len(union), -1)).all(axis=1)
    if not finite.all():
        notes.append(
            f"{int((~finite).sum())} sampled pair(s) with non-finite hidden states (no critical token, or float16 "
            "overflow) at the compared checkpoints are left out of the concept analysis."
        )
    rows_of = {}
    for name in names:
        rows = np.searchsorted(union, samples[name])
        rows_of[name] = rows[finite[rows]]

    when = {choice.before: "before", choice.after: "after"} if choice.comparable else {steps[0]: "only"}
    layer_rows: list[dict] = []
    change_rows: list[dict] = []
    jobs = [(name, layer) for name in names for layer in range(n_layers)]
    for name, layer in tqdm(jobs, desc="concept probes", unit="layer", disable=not progress):
        rows = rows_of[name]
        n = len(rows)
        probes: dict[int, ProbeResult] = {}
        diffs: dict[int, np.ndarray] = {}
        dims: dict[int, tuple[float, int]] = {}
        for s in steps:
            good = loaded[s][rows, 0, layer].astype(np.float32)
            bad = loaded[s][rows, 1, layer].astype(np.float32)
            probes[s] = probe(good, bad)
            diffs[s] = unit_differences(good, bad)
            dims[s] = difference_dimension(diffs[s])
        boot_pr = (
            bootstrap_participation([diffs[s] for s in steps], n_boot, rng)
            if n >= 2 and n_boot > 0
            else np.full((0, len(steps)), np.nan)
        )
        for j, s in enumerate(steps):
            pp = probes[s].per_pair
            if n >= MIN_PROBE_PAIRS and n_boot > 0:
                idx = rng.integers(0, n, size=(n_boot, n))
                acc_low, acc_high = percentile_ci(pp[idx].mean(axis=1))
            else:
                acc_low, acc_high = np.nan, np.nan
            pr_low, pr_high = percentile_ci(boot_pr[:, j]) if len(boot_pr) else (np.nan, np.nan)
            layer_rows.append(
                {
                    "phenomenon": name,
                    "step": s,
                    "when": when[s],
                    "layer": layer,
                    "n_pairs": n,
                    "probe_accuracy": _f(probes[s].accuracy),
                    "probe_accuracy_ci_low": _f(acc_low),
                    "probe_accuracy_ci_high": _f(acc_high),
                    "probe_auc": _f(probes[s].auc),
                    "participation_ratio": _f(dims[s][0]),
                    "participation_ratio_ci_low": _f(pr_low),
                    "participation_ratio_ci_high": _f(pr_high),
                    "components_90": dims[s][1],
                }
            )
        if not choice.comparable:
            continue
        b, a = choice.before, choice.after
        tested = n >= MIN_TEST_PAIRS
        probe_p = paired_permutation_test(probes[a].per_pair - probes[b].per_pair, max(n_boot, 1000), rng) if tested else np.nan
        d_pr = dims[a][0] - dims[b][0]
        if tested and len(boot_pr):
            d_boot = boot_pr[:, 1] - boot_pr[:, 0]
            pr_low, pr_high = percentile_ci(d_boot)
            pr_p = bootstrap_p_value(d_boot) if np.isfinite(d_pr) else np.nan
        else:
            pr_low, pr_high, pr_p = np.nan, np.nan, np.nan
        change_rows.append(
            {
                "phenomenon": name,
                "layer": layer,
                "before_step": b,
                "after_step": a,
                "n_pairs": n,
                "probe_accuracy_change": _f(probes[a].accuracy - probes[b].accuracy),
                "probe_auc_change": _f(probes[a].auc - probes[b].auc),
                "probe_p": _f(probe_p),
                "participation_ratio_change": _f(d_pr),
                "participation_ratio_change_ci_low": _f(pr_low),
                "participation_ratio_change_ci_high": _f(pr_high),
                "participation_ratio_p": _f(pr_p),
                "components_90_change": dims[a][1] - dims[b][1],
                "tested": tested,
            }
        )
    if change_rows:
        for key in ("probe", "participation_ratio"):
            q = benjamini_hochberg(np.array([np.nan if r[f"{key}_p"] is None else r[f"{key}_p"] for r in change_rows]))
            for r, qv in zip(change_rows, q):
                r[f"{key}_q"] = _f(qv)
                r[f"{key}_significant"] = bool(np.isfinite(qv) and qv < SIGNIFICANCE)
        untested = sorted({r["phenomenon"] for r in change_rows if not r["tested"]})
        if untested:
            notes.append(
                f"Too few pairs (< {MIN_TEST_PAIRS}) for a before/after test in: {', '.join(untested)} "
                "(reported as not tested, hence not significant)."
            )
    return ConceptResult(
        choice,
        n_layers,
        pa.Table.from_pylist(layer_rows, schema=LAYERS_SCHEMA),
        pa.Table.from_pylist(change_rows, schema=CHANGES_SCHEMA),
        notes,
    )

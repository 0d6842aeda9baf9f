"""Small statistics helpers: pair bootstrap, percentile intervals, permutation tests, BH, Gini, PR."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np

CI_LEVEL = 0.95


def bootstrap_counts(n: int, n_boot: int, rng: np.random.Generator, chunk: int = 200) -> Iterator[np.ndarray]:
    """Yield chunks of bootstrap resampling counts, each ``[b, n]`` (rows sum to ``n``).

    Resampling ``n`` units with replacement is the same as multinomial counts over the units; a
    statistic that is a weighted sum over units is then one matrix product per chunk.
    """
    if n <= 0:
        return
    p = np.full(n, 1.0 / n)
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        yield rng.multinomial(n, p, size=b).astype(np.float64)
        done += b


def percentile_ci(samples: np.ndarray, axis: int = 0, level: float = CI_LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of bootstrap ``samples`` along ``axis``, ignoring NaN (NaN if all NaN)."""
    alpha = (1.0 - level) / 2.0
    samples = np.asarray(samples, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices give NaN, as documented
        low = np.nanquantile(samples, alpha, axis=axis)
        high = np.nanquantile(samples, 1.0 - alpha, axis=axis)
    return low, high


def paired_permutation_test(diff: np.ndarray, n_perm: int, rng: np.random.Generator) -> float:
    """Two-sided sign-flip permutation p-value for ``mean(diff) == 0`` (paired differences).

    Exact (all 2^n sign patterns) for ``n <= 16``; otherwise ``n_perm`` random sign patterns with the
    usual +1 correction. Returns NaN for no data and 1.0 when every difference is zero.
    """
    diff = np.asarray(diff, dtype=np.float64)
    diff = diff[np.isfinite(diff)]
    n = len(diff)
    if n == 0:
        return float("nan")
    observed = abs(diff.mean())
    if observed == 0.0:
        return 1.0
    tol = 1e-12 * max(1.0, observed)
    if n <= 16:
        codes = np.arange(2**n, dtype=np.int64)[:, None]
        signs = 1.0 - 2.0 * ((codes >> np.arange(n)) & 1)
        stats = np.abs(signs @ diff) / n
        return float(np.mean(stats >= observed - tol))
    count = 0
    done = 0
    while done < n_perm:
        b = min(1000, n_perm - done)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(b, n))
        count += int(np.sum(np.abs(signs @ diff) / n >= observed - tol))
        done += b
    return float((count + 1) / (n_perm + 1))


def bootstrap_p_value(samples: np.ndarray) -> float:
    """Two-sided bootstrap p-value for "the statistic is 0" from its bootstrap distribution."""
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[np.isfinite(samples)]
    if len(samples) == 0:
        return float("nan")
    below = (np.sum(samples <= 0) + 1) / (len(samples) + 1)
    above = (np.sum(samples >= 0) + 1) / (len(samples) + 1)
    return float(min(1.0, 2.0 * min(below, above)))


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg q-values (NaN p-values stay NaN and do not count as tests)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    m = int(ok.sum())
    if m == 0:
        return q
    vals = p[ok]
    order = np.argsort(vals)
    ranked = vals[order] * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(ranked, 1.0)
    q[ok] = out
    return q


def gini(values: np.ndarray) -> float:
    """Gini coefficient of non-negative values: 0 = all equal, (n-1)/n = all mass in one."""
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    x = x[np.isfinite(x)]
    if np.any(x < 0):
        raise ValueError("gini: values must be non-negative")
    if len(x) == 0 or x.sum() <= 0:
        return float("nan")
    n = len(x)
    ranks = np.arange(1, n + 1)
    return float(np.sum((2 * ranks - n - 1) * x) / (n * x.sum()))


def top_k_share(values: np.ndarray, k: int) -> float:
    """Share of the total carried by the ``k`` largest values."""
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    total = x.sum()
    if len(x) == 0 or total <= 0:
        return float("nan")
    k = max(0, min(k, len(x)))
    return float(np.sort(x)[::-1][:k].sum() / total)


def participation_ratio(eigenvalues: np.ndarray) -> float:
    """(Σλ)² / Σλ²: 1 for one direction, d for d equal directions."""
    lam = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0.0, None)
    denom = np.sum(lam**2)
    if denom <= 0:
        return float("nan")
    return float(lam.sum() ** 2 / denom)


def components_for_variance(eigenvalues: np.ndarray, fraction: float = 0.9) -> int:
    """Smallest number of principal directions whose eigenvalues add up to ``fraction`` of the total."""
    lam = np.sort(np.clip(np.asarray(eigenvalues, dtype=np.float64), 0.0, None))[::-1]
    total = lam.sum()
    if total <= 0:
        return 0
    cum = np.cumsum(lam) / total
    return int(np.searchsorted(cum, fraction - 1e-12) + 1)

"""Attention heads: how much each layer × head attends from the critical token to the context token.

Per checkpoint and phenomenon (and ``ALL``): the mean attention weight critical → context over pairs
and both sentences (good and bad) for every (layer, head); its concentration across heads as the share
of the total carried by the ``top_k`` heads (against the ``top_k / n_heads_total`` of a uniform spread)
and the Gini coefficient over all heads (0 = spread evenly); and the top heads at each checkpoint with
the Jaccard overlap of the top-k set with the previous checkpoint's and the final checkpoint's.
Pairs without a context token are left out; NaN entries are ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .generalization import ALL
from .stats import gini, top_k_share


@dataclass
class HeadResult:
    steps: np.ndarray
    top_k: int
    means: dict[str, np.ndarray]  # name -> [n_steps, n_layers, n_heads]
    n_pairs: dict[str, int]
    top: dict[str, np.ndarray]  # name -> [n_steps, top_k, 2] (layer, head), best first
    share: dict[str, np.ndarray]  # name -> [n_steps]
    gini: dict[str, np.ndarray]  # name -> [n_steps]
    jaccard_previous: dict[str, np.ndarray]
    jaccard_final: dict[str, np.ndarray]

    @property
    def n_layers(self) -> int:
        return int(self.means[ALL].shape[1])

    @property
    def n_heads(self) -> int:
        return int(self.means[ALL].shape[2])

    def top_set(self, name: str, step_index: int) -> set[tuple[int, int]]:
        """The top-k heads of ``name`` at checkpoint ``steps[step_index]`` as {(layer, head)}."""
        return {(int(layer), int(head)) for layer, head in self.top[name][step_index]}


def top_heads(means: np.ndarray, k: int) -> np.ndarray:
    """``[k, 2]`` (layer, head) of the ``k`` largest entries of ``[n_layers, n_heads]``, largest first."""
    flat = np.nan_to_num(means, nan=-np.inf).ravel()
    k = min(k, flat.size)
    order = np.argsort(-flat, kind="stable")[:k]
    return np.stack(np.unravel_index(order, means.shape), axis=1).astype(np.int64)


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    sa = {tuple(x) for x in a.tolist()}
    sb = {tuple(x) for x in b.tolist()}
    union = sa | sb
    return float(len(sa & sb) / len(union)) if union else float("nan")


DEFAULT_TOP_K = 5


def resolve_top_k(top_k: int | None, n_layers: int, n_heads: int) -> int:
    """``top_k``, checked against the model's heads: at least 1 and fewer than all of them (else every share is
    100 %), one head excepted. None: :data:`DEFAULT_TOP_K`, or fewer for a model with few heads."""
    total = n_layers * n_heads
    most = max(1, total - 1)
    if top_k is None:
        return min(DEFAULT_TOP_K, most)
    if not 1 <= top_k <= most:
        raise ValueError(
            f"--top-k {top_k}: the model has {total} heads ({n_layers} layers × {n_heads}); "
            f"the top heads must be at least 1 and fewer than all of them (at most {most})"
        )
    return top_k


def analyze_heads(
    attention: dict[int, Callable[[], np.ndarray]],
    phenomenon: np.ndarray,
    *,
    top_k: int | None = None,
    progress: bool = False,
) -> HeadResult | None:
    """Head statistics over the checkpoints in ``attention`` (step -> loader of ``[n, 2, L, H]``).

    ``phenomenon`` is aligned with the arrays' first axis and holds the pairs to use (others: None).
    Returns None when there is no attention at all.
    """
    from tqdm import tqdm

    steps = np.array(sorted(attention), dtype=np.int64)
    if len(steps) == 0:
        return None
    phenomenon = np.asarray(phenomenon, dtype=object)
    use = np.array([p is not None for p in phenomenon])
    names = [ALL] + sorted({str(p) for p in phenomenon[use]})
    masks = {name: use & ((phenomenon == name) if name != ALL else True) for name in names}
    rows = np.flatnonzero(use)
    select = {name: np.searchsorted(rows, np.flatnonzero(masks[name])) for name in names}
    means: dict[str, list[np.ndarray]] = {n: [] for n in names}
    shape: tuple[int, ...] | None = None
    for step in tqdm(steps, desc="attention heads", unit="ckpt", disable=not progress):
        arr = attention[int(step)]()
        if shape is None:
            shape = arr.shape[2:]
            top_k = resolve_top_k(top_k, *shape)
        elif arr.shape[2:] != shape:
            raise ValueError(f"attention at step {step} has shape {arr.shape}, earlier steps had [*, 2, {shape}]")
        block = np.asarray(arr[rows], dtype=np.float32)  # [m, 2, L, H]
        for name in names:
            vals = block[select[name]].reshape(-1, *shape)
            with np.errstate(invalid="ignore"):
                count = np.isfinite(vals).sum(axis=0)
                total = np.nansum(vals, axis=0)
                means[name].append(np.where(count > 0, total / np.maximum(count, 1), np.nan))
    out_means = {n: np.stack(v) for n, v in means.items()}
    top: dict[str, np.ndarray] = {}
    share: dict[str, np.ndarray] = {}
    gin: dict[str, np.ndarray] = {}
    jprev: dict[str, np.ndarray] = {}
    jfin: dict[str, np.ndarray] = {}
    for name, m in out_means.items():
        top[name] = np.stack([top_heads(m[t], top_k) for t in range(len(steps))])
        share[name] = np.array([top_k_share(m[t], top_k) for t in range(len(steps))])
        gin[name] = np.array([gini(np.clip(np.nan_to_num(m[t]), 0, None)) for t in range(len(steps))])
        jprev[name] = np.array(
            [np.nan] + [_jaccard(top[name][t], top[name][t - 1]) for t in range(1, len(steps))]
        )
        jfin[name] = np.array([_jaccard(top[name][t], top[name][-1]) for t in range(len(steps))])
    return HeadResult(
        steps=steps,
        top_k=top_k,
        means=out_means,
        n_pairs={n: int(masks[n].sum()) for n in names},
        top=top,
        share=share,
        gini=gin,
        jaccard_previous=jprev,
        jaccard_final=jfin,
    )


def _f(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


HEADS_SCHEMA = pa.schema(
    [
        ("phenomenon", pa.string()),
        ("step", pa.int64()),
        ("layer", pa.int64()),
        ("head", pa.int64()),
        ("mean_attention", pa.float64()),
    ]
)
CONCENTRATION_SCHEMA = pa.schema(
    [
        ("phenomenon", pa.string()),
        ("step", pa.int64()),
        ("n_pairs", pa.int64()),
        ("top_k", pa.int64()),
        ("top_k_share", pa.float64()),
        ("uniform_share", pa.float64()),
        ("gini", pa.float64()),
        ("jaccard_previous", pa.float64()),
        ("jaccard_final", pa.float64()),
    ]
)
TOP_SCHEMA = pa.schema(
    [
        ("phenomenon", pa.string()),
        ("step", pa.int64()),
        ("rank", pa.int64()),
        ("layer", pa.int64()),
        ("head", pa.int64()),
        ("mean_attention", pa.float64()),
        ("share", pa.float64()),
    ]
)


def tables(result: HeadResult) -> dict[str, pa.Table]:
    """head_attention (long form), head_concentration and top_heads tables."""
    _, n_layers, n_heads = result.means[ALL].shape
    cols: dict[str, list] = {k: [] for k in HEADS_SCHEMA.names}
    conc = []
    top_rows = []
    grid_l, grid_h = np.meshgrid(np.arange(n_layers), np.arange(n_heads), indexing="ij")
    for name, m in result.means.items():
        for t, step in enumerate(result.steps):
            cols["phenomenon"].extend([name] * (n_layers * n_heads))
            cols["step"].extend([int(step)] * (n_layers * n_heads))
            cols["layer"].extend(grid_l.ravel().tolist())
            cols["head"].extend(grid_h.ravel().tolist())
            cols["mean_attention"].extend([_f(v) for v in m[t].ravel()])
            conc.append(
                {
                    "phenomenon": name,
                    "step": int(step),
                    "n_pairs": result.n_pairs[name],
                    "top_k": result.top_k,
                    "top_k_share": _f(result.share[name][t]),
                    "uniform_share": min(1.0, result.top_k / (n_layers * n_heads)),
                    "gini": _f(result.gini[name][t]),
                    "jaccard_previous": _f(result.jaccard_previous[name][t]),
                    "jaccard_final": _f(result.jaccard_final[name][t]),
                }
            )
            total = np.nansum(m[t])
            for rank, (layer, head) in enumerate(result.top[name][t]):
                value = m[t][layer, head]
                top_rows.append(
                    {
                        "phenomenon": name,
                        "step": int(step),
                        "rank": rank + 1,
                        "layer": int(layer),
                        "head": int(head),
                        "mean_attention": _f(value),
                        "share": _f(value / total) if total > 0 else None,
                    }
                )
    return {
        "head_attention": pa.table(cols, schema=HEADS_SCHEMA),
        "head_concentration": pa.Table.from_pylist(conc, schema=CONCENTRATION_SCHEMA),
        "top_heads": pa.Table.from_pylist(top_rows, schema=TOP_SCHEMA),
    }

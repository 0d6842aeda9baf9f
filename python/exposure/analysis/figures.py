"""Matplotlib (Agg) figures of the analyses; every figure has a title, labelled axes and a legend.

Checkpoint steps are plotted as ``step + 1`` on a log axis (so step 0 can be shown); the axis labels
say so.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .concepts import ConceptResult  # noqa: E402
from .generalization import ALL, GROUP_LABELS, GROUPS, CurveSet, Delay, LagSummary  # noqa: E402
from .heads import HeadResult  # noqa: E402

COLORS = {"train": "#1f77b4", "validation": "#d62728", "never": "#7f7f7f"}
STEP_LABEL = "checkpoint step + 1 (log scale)"
DPI = 110


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _log_steps(ax: plt.Axes) -> None:
    ax.set_xscale("log")
    ax.set_xlabel(STEP_LABEL)


def _draw_curves(ax: plt.Axes, cs: CurveSet, delay: Delay, min_pairs: int, *, legend: bool) -> None:
    x = cs.steps + 1
    crossings = {"train": delay.train, "validation": delay.validation, "never": delay.never}
    for g in GROUPS:
        if not np.any(cs.n[g] > 0):
            continue
        acc = cs.accuracy[g]
        ax.plot(x, acc, marker="o", ms=3, color=COLORS[g], label=f"{GROUP_LABELS[g]} (n≤{int(cs.n[g].max())})")
        few = (cs.n[g] > 0) & (cs.n[g] < min_pairs)
        if few.any():
            ax.plot(x[few], acc[few], ls="none", marker="o", ms=6, mfc="white", mec=COLORS[g])
        ax.fill_between(x, cs.ci_low[g], cs.ci_high[g], color=COLORS[g], alpha=0.18, linewidth=0)
        c = crossings[g]
        if c.step is not None and c.above_chance:
            ax.axvline(c.step + 1, color=COLORS[g], ls="--", lw=1)
    ax.axhline(0.5, color="black", lw=0.7, ls=":", label="chance (0.5)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("accuracy (fraction of pairs correct)")
    _log_steps(ax)
    ax.grid(alpha=0.3)
    if legend:
        ax.plot([], [], color="black", ls="--", lw=1, label="threshold step (curves above chance)")
        ax.plot([], [], ls="none", marker="o", ms=6, mfc="white", mec="black",
                label=f"fewer than {min_pairs} pairs (not used for the threshold)")
        ax.legend(fontsize=8, loc="lower right")


def plot_accuracy(cs: CurveSet, delay: Delay, path: Path, threshold: float, min_pairs: int) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.8))
    _draw_curves(ax, cs, delay, min_pairs, legend=True)
    ax.set_title(
        f"Accuracy by exposure group, {cs.phenomenon if cs.phenomenon != ALL else 'all phenomena'} "
        f"(shaded: bootstrap 95% CI; dashed: first step at {threshold:.0%} of final accuracy)",
        fontsize=10,
    )
    return _save(fig, path)


def plot_accuracy_grid(curves: dict[str, CurveSet], delays: dict[str, Delay], path: Path, min_pairs: int) -> Path:
    names = [n for n in curves if n != ALL]
    cols = min(3, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    for ax, name in zip(axes.ravel(), names):
        _draw_curves(ax, curves[name], delays[name], min_pairs, legend=False)
        ax.set_title(name, fontsize=10)
    for ax in axes.ravel()[len(names) :]:
        ax.axis("off")
    handles = [Patch(color=COLORS[g], label=GROUP_LABELS[g]) for g in GROUPS]
    fig.legend(handles=handles, loc="upper center", ncol=3, fontsize=9, bbox_to_anchor=(0.5, 1.0))
    fig.suptitle("Accuracy by exposure group, per phenomenon (shaded: bootstrap 95% CI)", y=1.04)
    fig.tight_layout()
    return _save(fig, path)


def plot_threshold_steps(delays: dict[str, Delay], path: Path, threshold: float) -> Path:
    names = list(delays)
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.8))
    offsets = {"train": -0.2, "validation": 0.0, "never": 0.2}
    plotted = set()
    for i, name in enumerate(names):
        d = delays[name]
        for g, c in (("train", d.train), ("validation", d.validation), ("never", d.never)):
            if c.step is None:
                continue
            y = i + offsets[g]
            lo = c.step_ci_low if np.isfinite(c.step_ci_low) else c.step
            hi = c.step_ci_high if np.isfinite(c.step_ci_high) else c.step
            ax.errorbar(
                c.step + 1,
                y,
                xerr=[[max(0.0, c.step - lo)], [max(0.0, hi - c.step)]],
                fmt="o",
                color=COLORS[g],
                capsize=3,
                label=GROUP_LABELS[g] if g not in plotted else None,
            )
            plotted.add(g)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=8)
    ax.invert_yaxis()
    _log_steps(ax)
    ax.set_ylabel("phenomenon")
    ax.grid(alpha=0.3, axis="x")
    ax.set_title(f"Step at which each curve first reaches {threshold:.0%} of its final accuracy (bars: 95% CI)")
    if plotted:
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3)
    else:
        ax.text(0.5, 0.5, "no curve reached its threshold", transform=ax.transAxes, ha="center")
    return _save(fig, path)


def plot_learned_vs_exposure(lags: LagSummary, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.5, 6))
    ok = lags.has_lag
    x = lags.first_step[ok] + 1
    y = lags.learned_at[ok] + 1
    cens = lags.left_censored[ok]
    if ok.any():
        rng = np.random.default_rng(0)
        jitter = np.exp(rng.normal(0, 0.04, size=(2, int(ok.sum()))))
        ax.scatter(x[~cens] * jitter[0][~cens], y[~cens] * jitter[1][~cens], s=8, alpha=0.5,
                   color=COLORS["train"], label="pair (learned at a later checkpoint)")
        if cens.any():
            ax.scatter(x[cens] * jitter[0][cens], y[cens] * jitter[1][cens], s=8, alpha=0.5, marker="^",
                       color="#2ca02c", label="pair correct from the first checkpoint (left-censored)")
        lo = min(x.min(), y.min()) * 0.8
        hi = max(x.max(), y.max()) * 1.2
        ax.plot([lo, hi], [lo, hi], color="black", lw=1, ls="--", label="learned at = first exposure")
        ax.legend(fontsize=8, loc="upper left")
    else:
        ax.text(0.5, 0.5, "no exposed pair was learned", transform=ax.transAxes, ha="center")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("first exposure step + 1 (log scale)")
    ax.set_ylabel("learned-at checkpoint step + 1 (log scale)")
    ax.set_title("Per pair: learned at vs first exposure\n(below the diagonal = learned before exposure)")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_lag_distribution(lags: LagSummary, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    lag = lags.lag[lags.has_lag].astype(np.float64)
    if len(lag):
        top = max(1.0, float(np.abs(lag).max()))
        pos = np.unique(np.concatenate([[0.5], np.geomspace(1, top * 1.01 + 1, 20)]))
        edges = np.concatenate([-pos[::-1], pos])
        ax.hist(lag[lag > 0], bins=edges, color=COLORS["train"], alpha=0.8, label="learned after exposure (lag > 0)")
        ax.hist(lag[lag <= 0], bins=edges, color=COLORS["validation"], alpha=0.8,
                label="learned at/before exposure (lag ≤ 0)")
        if np.isfinite(lags.median_lag):
            ax.axvline(lags.median_lag, color="black", ls="--", lw=1, label=f"median lag = {lags.median_lag:g} steps")
        ax.set_xscale("symlog", linthresh=1.0)
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no exposed pair was learned: no lags", transform=ax.transAxes, ha="center")
    ax.set_xlabel("lag = learned-at step − first exposure step (steps, symmetric log scale)")
    ax.set_ylabel("number of pairs")
    ax.set_title("Distribution of the per-pair lag between first exposure and learning")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _layer_rows(concepts: ConceptResult, name: str = ALL) -> dict[str, dict[str, np.ndarray]]:
    rows = [r for r in concepts.layers.to_pylist() if r["phenomenon"] == name]
    out: dict[str, dict[str, np.ndarray]] = {}
    for when in ("before", "after", "only"):
        sub = sorted((r for r in rows if r["when"] == when), key=lambda r: r["layer"])
        if not sub:
            continue
        out[when] = {
            k: np.array([np.nan if r[k] is None else r[k] for r in sub], dtype=np.float64)
            for k in sub[0]
            if k not in ("phenomenon", "when")
        }
    return out


def plot_concept_layers(concepts: ConceptResult, path: Path) -> Path:
    data = _layer_rows(concepts)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    colors = {"before": "#9467bd", "after": "#ff7f0e", "only": "#1f77b4"}
    panels = [
        ("probe_accuracy", "probe accuracy (fraction of sentences)", "probe_accuracy_ci_low", "probe_accuracy_ci_high"),
        ("probe_auc", "probe ROC AUC (0.5 = chance)", None, None),
        ("participation_ratio", "participation ratio of good − bad (dimensions)", "participation_ratio_ci_low",
         "participation_ratio_ci_high"),
        ("components_90", "principal directions for 90% of variance (count)", None, None),
    ]
    for ax, (key, label, lo, hi) in zip(axes.ravel(), panels):
        for when, d in data.items():
            step = int(d["step"][0])
            ax.plot(d["layer"], d[key], marker="o", ms=3, color=colors[when], label=f"{when}: step {step}")
            if lo is not None:
                ax.fill_between(d["layer"], d[lo], d[hi], color=colors[when], alpha=0.2, linewidth=0)
        if key in ("probe_accuracy", "probe_auc"):
            ax.axhline(0.5, color="black", lw=0.7, ls=":", label="chance")
        ax.set_xlabel("layer (0 = embeddings)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Acceptability concept at the critical token, all phenomena, by layer (shaded: 95% CI)")
    fig.tight_layout()
    return _save(fig, path)


def plot_concept_change(concepts: ConceptResult, path: Path) -> Path:
    rows = concepts.changes.to_pylist()
    names = sorted({r["phenomenon"] for r in rows}, key=lambda n: (n != ALL, n))
    n_layers = concepts.n_layers
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.42 * len(names) + 2.6))
    specs = [
        ("probe_accuracy_change", "probe_significant", "Δ probe accuracy (after − before)"),
        ("participation_ratio_change", "participation_ratio_significant", "Δ participation ratio (after − before)"),
    ]
    for ax, (key, sig, label) in zip(axes, specs):
        grid = np.full((len(names), n_layers), np.nan)
        stars = np.zeros((len(names), n_layers), dtype=bool)
        for r in rows:
            i = names.index(r["phenomenon"])
            grid[i, r["layer"]] = np.nan if r[key] is None else r[key]
            stars[i, r["layer"]] = bool(r[sig])
        vmax = np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 1.0
        vmax = vmax if vmax > 0 else 1.0
        im = ax.imshow(grid, aspect="auto", cmap="coolwarm", vmin=-vmax, vmax=vmax)
        for i, j in zip(*np.nonzero(stars)):
            ax.text(j, i, "*", ha="center", va="center", fontsize=12, color="black")
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(names, fontsize=8)
        ax.set_xticks(range(n_layers))
        ax.set_xlabel("layer (0 = embeddings)")
        ax.set_ylabel("phenomenon")
        ax.set_title(label, fontsize=10)
        fig.colorbar(im, ax=ax, label=label)
    axes[0].legend(handles=[Patch(color="white", label="* significant (BH q < 0.05)")], loc="upper right", fontsize=8)
    c = concepts.choice
    fig.suptitle(f"Concept change from step {c.before} to step {c.after}, per phenomenon and layer")
    fig.tight_layout()
    return _save(fig, path)


def plot_head_heatmaps(
    heads: HeadResult, step_indices: list[int], path: Path, name: str = ALL, labels: dict[int, str] | None = None
) -> Path:
    m = heads.means[name]
    vmax = float(np.nanmax(m)) if np.isfinite(m).any() else 1.0
    fig, axes = plt.subplots(1, len(step_indices), figsize=(4.4 * len(step_indices) + 1, 0.3 * heads.n_layers + 2.5),
                             squeeze=False, layout="constrained")
    im = None
    for ax, t in zip(axes[0], step_indices):
        im = ax.imshow(m[t], aspect="auto", cmap="viridis", vmin=0, vmax=vmax, origin="lower")
        for layer, head in heads.top[name][t]:
            ax.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, ec="red", lw=1.5))
        label = labels.get(int(heads.steps[t]), "") if labels else ""
        ax.set_title(f"step {int(heads.steps[t])}{f' ({label})' if label else ''}", fontsize=10)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0][0].legend(handles=[Patch(fill=False, ec="red", label=f"top-{heads.top_k} heads")], loc="upper right",
                      fontsize=8)
    fig.colorbar(im, ax=axes[0].tolist(), label="mean attention weight critical → context (0–1)")
    fig.suptitle(f"Attention from the critical to the context token by layer × head ({'all phenomena' if name == ALL else name})")
    return _save(fig, path)


def plot_head_concentration(heads: HeadResult, path: Path, name: str = ALL) -> Path:
    x = heads.steps + 1
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.3))
    uniform = heads.top_k / (heads.n_layers * heads.n_heads)
    axes[0].plot(x, heads.share[name], marker="o", ms=3, label=f"share of the top {heads.top_k} heads")
    axes[0].axhline(min(1.0, uniform), color="black", ls=":", lw=1, label=f"uniform spread ({uniform:.3f})")
    axes[0].set_ylabel(f"top-{heads.top_k} share of total attention (fraction)")
    axes[0].set_title("Concentration: share carried by the top heads")
    axes[1].plot(x, heads.gini[name], marker="o", ms=3, color="#2ca02c", label="Gini over all heads")
    axes[1].set_ylabel("Gini coefficient (0 = even, 1 = one head)")
    axes[1].set_title("Concentration: Gini coefficient")
    for ax in axes:
        _log_steps(ax)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Attention concentration across checkpoints ({'all phenomena' if name == ALL else name})")
    fig.tight_layout()
    return _save(fig, path)


def plot_top_head_trajectories(heads: HeadResult, path: Path, name: str = ALL, max_lines: int = 10) -> Path:
    """Mean attention over checkpoints of the heads that are dominant (> 2 × the average head) at any
    checkpoint, plus the top-k of the last checkpoint; at most ``max_lines``, the strongest first."""
    from .report import dominant_heads

    m = heads.means[name]
    chosen: set[tuple[int, int]] = set()
    for t in range(len(heads.steps)):
        chosen.update(dominant_heads(m[t]))
    chosen.update((int(layer), int(head)) for layer, head in heads.top[name][-1])
    ranked = sorted(chosen, key=lambda lh: -float(np.nanmax(m[:, lh[0], lh[1]])))[:max_lines]
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    x = heads.steps + 1
    for layer, head in ranked:
        ax.plot(x, m[:, layer, head], marker="o", ms=3, label=f"layer {layer}, head {head}")
    _log_steps(ax)
    ax.set_ylabel("mean attention weight critical → context (0–1)")
    ax.set_title(f"Trajectories of the dominant heads and the last checkpoint's top {heads.top_k}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    return _save(fig, path)

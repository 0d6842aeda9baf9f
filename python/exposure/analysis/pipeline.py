"""``analyze``: run every analysis on a splits table + evaluation directory, write tables, figures, report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from . import concepts as concepts_mod
from . import figures
from . import generalization as gen_mod
from . import heads as heads_mod
from .generalization import ALL
from .io import RowSubset, load_eval
from .report import (
    Section,
    concept_table,
    delay_table,
    render_html,
    summarize_concepts,
    summarize_generalization,
    summarize_heads,
)


def analyze(
    splits_path: str | Path,
    eval_dir: str | Path,
    out_dir: str | Path,
    *,
    threshold: float = 0.9,
    before: int | None = None,
    after: int | None = None,
    top_k: int | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = True,
    min_pairs: int = 5,
    max_concept_pairs: int = 1000,
) -> Path:
    """Analyse an evaluation run; returns the path of the self-contained ``report.html`` in ``out_dir``.

    Writes to ``out_dir``: Parquet tables (curves, transitions, delays, pair_learning, concept_layers,
    concept_changes, head_attention, head_concentration, top_heads — the last five only when the
    evaluation has hidden states / attention), PNG figures under ``figures/``, ``summary.json`` (the
    text findings and the chosen checkpoints) and ``report.html``.

    ``threshold``: fraction of a curve's final accuracy that defines its threshold step.
    ``before``/``after``: checkpoints for the concept comparison (default: around the proxy-validation
    transition). ``top_k``: heads counted as "top" (default 5, fewer for a model with few heads).
    ``n_boot``: bootstrap resamples (also the number of random permutations, at least 1000). ``min_pairs``: a
    checkpoint counts for a curve's threshold only with at least this many pairs. ``max_concept_pairs``: cap on
    pairs per phenomenon for probes.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"--threshold must be in (0, 1], got {threshold}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {top_k}")
    if n_boot < 0:
        raise ValueError(f"--n-boot must be >= 0, got {n_boot}")
    if min_pairs < 1:
        raise ValueError(f"--min-pairs must be >= 1, got {min_pairs}")
    if max_concept_pairs < 2:
        raise ValueError(f"--max-concept-pairs must be >= 2, got {max_concept_pairs}")
    if seed < 0:
        raise ValueError(f"--seed must be >= 0, got {seed}")
    data = load_eval(splits_path, eval_dir, progress=progress)
    concepts_mod.check_user_checkpoints(data.state_files, before, after)  # before anything is written
    if data.attention_files:
        top_k = heads_mod.resolve_top_k(top_k, *data.attention(min(data.attention_files)).shape[2:])
    elif top_k is None:
        top_k = heads_mod.DEFAULT_TOP_K
    out = Path(out_dir)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written: list[str] = []

    def save(name: str, table) -> None:
        pq.write_table(table, out / f"{name}.parquet")
        written.append(f"{name}.parquet")

    idx = np.flatnonzero(data.eligible)
    g = gen_mod.analyze_generalization(
        data.pair_uids[idx],
        data.phenomenon[idx],
        data.first_step[idx],
        data.correct[idx],
        data.steps,
        threshold=threshold,
        min_pairs=min_pairs,
        n_boot=n_boot,
        rng=rng,
        progress=progress,
    )
    for name, table in gen_mod.tables(g).items():
        save(name, table)

    transition = g.overall.validation.step
    choice = concepts_mod.choose_checkpoints(list(data.state_files), transition, before=before, after=after)
    states = {s: RowSubset(data.states(s), idx) for s in choice.steps}
    concepts = concepts_mod.analyze_concepts(
        states,
        data.phenomenon[idx],
        choice,
        n_boot=n_boot,
        max_pairs=max_concept_pairs,
        rng=rng,
        progress=progress,
    )
    if choice.steps:
        save("concept_layers", concepts.layers)
        save("concept_changes", concepts.changes)

    ctx_phen = np.where(data.has_context, data.phenomenon, None).astype(object)
    loaders = {s: (lambda s=s: data.attention(s)) for s in data.attention_files}
    heads = heads_mod.analyze_heads(loaders, ctx_phen, top_k=top_k, progress=progress)
    if heads is not None:
        for name, table in heads_mod.tables(heads).items():
            save(name, table)

    def fig(name: str) -> Path:
        written.append(f"figures/{name}")
        return fig_dir / name

    pct = f"{threshold:.0%}"
    gen_section = Section(
        "Delayed generalization",
        summarize_generalization(g),
        figures=[
            (figures.plot_accuracy(g.curves[ALL], g.overall, fig("accuracy_overall.png"), threshold, min_pairs),
             "Accuracy over checkpoints for proxy-train, proxy-validation and the never-exposed control, all phenomena; "
             f"shaded bands are bootstrap 95% CIs over pairs; dashed lines mark the first step at {pct} of final accuracy."),
        ],
        tables=[delay_table(g)],
    )
    if len(g.curves) > 1:
        gen_section.figures.append(
            (figures.plot_accuracy_grid(g.curves, g.delays, fig("accuracy_by_phenomenon.png"), min_pairs),
             "The same curves per phenomenon.")
        )
    gen_section.figures += [
        (figures.plot_threshold_steps(g.delays, fig("threshold_steps.png"), threshold),
         f"Threshold step (first checkpoint at {pct} of final accuracy) of each curve per phenomenon with 95% CIs."),
        (figures.plot_learned_vs_exposure(g.lags, fig("learned_vs_exposure.png")),
         "Per pair: the checkpoint from which it stays correct vs the step its critical phrase was first trained on."),
        (figures.plot_lag_distribution(g.lags, fig("lag_distribution.png")),
         "Distribution of the per-pair lag (learned-at − first exposure)."),
    ]
    if len(data.steps) == 1:
        gen_section.notes.append(
            f"Only one checkpoint (step {int(data.steps[0])}) was evaluated: there are no curves over time, and "
            "every threshold step is that checkpoint."
        )
    for name, d in g.delays.items():
        if name != ALL and d.validation.n_distinct == 0:
            gen_section.notes.append(f"{name}: no proxy-validation pairs at any checkpoint.")

    con_section = Section("Concept vectors before vs after generalization", summarize_concepts(concepts),
                          notes=list(concepts.notes) if choice.steps else [])
    if choice.steps:
        con_section.figures.append(
            (figures.plot_concept_layers(concepts, fig("concept_layers.png")),
             "Per layer, all phenomena: grouped-by-pair cross-validated probe accuracy and AUC, and the dimension of the "
             "good − bad difference vectors (participation ratio; principal directions for 90% of variance).")
        )
    if choice.comparable:
        con_section.figures.append(
            (figures.plot_concept_change(concepts, fig("concept_change.png")),
             "Before → after change per phenomenon and layer; * = significant after Benjamini–Hochberg correction.")
        )
        table = concept_table(concepts)
        if table is not None:
            con_section.tables.append(table)

    head_section = Section("Attention heads", summarize_heads(heads, choice.steps))
    if heads is not None:
        step_labels = {int(heads.steps[0]): "first", int(heads.steps[-1]): "last"}
        if choice.before is not None:
            step_labels[choice.before] = "before"
        if choice.after is not None:
            step_labels[choice.after] = "after"
        show = sorted({0, len(heads.steps) - 1} | {int(i) for s in choice.steps for i in np.flatnonzero(heads.steps == s)})
        head_section.figures += [
            (figures.plot_head_heatmaps(heads, show, fig("head_heatmaps.png"), labels=step_labels),
             "Mean attention from the critical to the context token per layer × head (red boxes: top heads)."),
            (figures.plot_head_concentration(heads, fig("head_concentration.png")),
             "Concentration of that attention across heads over checkpoints."),
            (figures.plot_top_head_trajectories(heads, fig("top_heads.png")),
             "Mean attention over checkpoints of the dominant heads (above twice the average head at some checkpoint) "
             "and of the last checkpoint's top heads."),
        ]

    meta = [
        f"Model: {data.model}; evaluation: {data.eval_dir}; splits: {splits_path}",
        f"{data.n_pairs} evaluated pairs ({len(idx)} with a critical phrase) in {len(g.curves) - 1} phenomena; "
        f"{len(data.steps)} checkpoints (steps {int(data.steps[0]):,}–{int(data.steps[-1]):,}); hidden states at "
        f"{len(data.state_files)}, attention at {len(data.attention_files)} of them.",
        f"Threshold {pct} of final accuracy; {n_boot} bootstrap resamples; seed {seed}.",
    ]
    methods = [
        "Groups at checkpoint S (re-evaluated at every checkpoint, f = first_step_good): proxy-train 0 ≤ f < S; "
        "proxy-validation f ≥ S (seen later in the run); never exposed f = −1 (the same pairs throughout: a fixed control). "
        "Checkpoint S has trained on steps < S.",
        "95% confidence intervals: percentile bootstrap over pairs (a pair is resampled with all its checkpoints).",
        f"Threshold step: the first checkpoint at which a curve reaches {pct} of its accuracy at its last checkpoint, "
        f"counting only checkpoints where the group has at least {min_pairs} pairs. Delay = proxy-validation step − "
        "proxy-train step.",
        "Learned at (per pair): the first checkpoint from which the pair is correct at every later checkpoint "
        "(never, if wrong at the last). Lag = learned at − first exposure step; lag ≤ 0 = learned before exposure.",
        "The composition of proxy-validation changes over checkpoints (late points hold the pairs seen late); compare "
        "with the fixed never-exposed control.",
        "Probe: standardized logistic regression, good vs bad sentence from the hidden state at the critical token, "
        "GroupKFold (5 folds, grouped by pair: a pair's two sentences are never split across folds); out-of-fold "
        f"accuracy and ROC AUC; at most {max_concept_pairs} pairs per phenomenon.",
        "Dimension: unit-normalised good − bad difference vectors; eigenvalues of their uncentred second-moment "
        "matrix; participation ratio (Σλ)²/Σλ² and the number of directions for 90% of Σλ.",
        "Before/after tests per phenomenon and layer on the same pairs: probe — paired sign-flip permutation test on "
        "per-pair out-of-fold correctness; participation ratio — paired bootstrap. Benjamini–Hochberg over all "
        f"phenomenon × layer tests (q < 0.05 = significant); no test with fewer than {concepts_mod.MIN_TEST_PAIRS} pairs.",
        f"Heads: mean attention weight critical → context over pairs and both sentences; concentration = share of "
        f"the top {top_k} heads and the Gini coefficient over all heads; top-set stability = Jaccard overlap; "
        "dominant heads = mean attention above twice the average head.",
        "A pair correct only at the last checkpoint counts as learned there; at chance that is half of the pairs, "
        "so compare per-pair counts with the never-exposed control.",
    ]
    sections = [gen_section, con_section, head_section]
    if data.notes:
        sections.insert(0, Section("Input notes", list(data.notes)))

    summary = {
        "model": data.model,
        "threshold": threshold,
        "before": choice.before,
        "after": choice.after,
        "checkpoint_choice": choice.reason,
        "overall": {
            "train_step": g.overall.train.step,
            "validation_step": g.overall.validation.step,
            "never_step": g.overall.never.step,
            "delay": g.overall.delay,
            "delay_ci": [None if not np.isfinite(v) else v for v in (g.overall.ci_low, g.overall.ci_high)],
            "median_lag": None if not np.isfinite(g.lags.median_lag) else g.lags.median_lag,
        },
        "findings": {s.title: s.summary for s in sections},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    written.append("summary.json")
    written.append("report.html")
    report = out / "report.html"
    report.write_text(
        render_html(f"Exposure analysis — {data.model}", meta, sections, methods, written), encoding="utf-8"
    )
    return report

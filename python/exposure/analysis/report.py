"""Text summaries built from the numbers, and the self-contained HTML report (PNGs embedded as base64)."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .concepts import MIN_TEST_PAIRS, ConceptResult
from .generalization import ALL, GROUP_LABELS, Crossing, Delay, GeneralizationResult
from .heads import HeadResult


def _step(x: int | None) -> str:
    return "never" if x is None else f"step {x:,}"


def _num(x: float | None, digits: int = 2) -> str:
    if x is None or not np.isfinite(x):
        return "n/a"
    return f"{x:.{digits}f}"


def _ci(low: float | None, high: float | None, digits: int = 0, unit: str = "") -> str:
    if low is None or high is None or not (np.isfinite(low) and np.isfinite(high)):
        return "95% CI n/a"
    sep = " to " if min(low, high) < 0 else "–"
    if digits == 0:
        return f"95% CI {low:,.0f}{sep}{high:,.0f}{unit}"
    return f"95% CI {low:.{digits}f}{sep}{high:.{digits}f}{unit}"


def _boot_share(share: float | None, verb: str) -> str:
    """", reached in 97% of bootstrap resamples"; nothing without resamples (--n-boot 0)."""
    if share is None or not np.isfinite(share):
        return ""
    return f", {verb} in {share:.0%} of bootstrap resamples"


def _p(p: float | None) -> str:
    if p is None or not np.isfinite(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _p_is(p: float | None) -> str:
    """' < 0.001' or ' = 0.023' (for running text)."""
    text = _p(p)
    return f" {text}" if text.startswith("<") else f" = {text}"


def _crossing_text(c: Crossing, threshold: float, min_pairs: int) -> str:
    label = GROUP_LABELS[c.group]
    if c.final_step is None:
        if c.n_distinct == 0:
            return f"{label} has no pairs"
        return f"{label} never has ≥ {min_pairs} pairs at a checkpoint, so it has no threshold step"
    head = (
        f"{label} ({c.n_distinct:,} pairs over the run) ends at accuracy {_num(c.final_accuracy)} "
        f"({_ci(c.final_ci_low, c.final_ci_high, 2)}, n = {c.final_n:,}) at step {c.final_step:,}"
    )
    if c.step is None and not c.above_chance:
        text = f"{head}: not above chance, so it has no threshold step (never learned)"
    elif c.step is None:
        text = f"{head} and never reached {threshold:.0%} of it"
    else:
        text = (
            f"{head} and first reached {threshold:.0%} of it at step {c.step:,} "
            f"({_ci(c.step_ci_low, c.step_ci_high)}{_boot_share(c.boot_defined, 'reached')})"
        )
    caveats = []
    if c.at_first_point:
        caveats.append(f"it was already at the threshold at its first checkpoint with ≥ {min_pairs} pairs: no transition is seen")
    if caveats:
        text += " — note: " + "; ".join(caveats)
    return text


def delay_sentence(d: Delay, threshold: float) -> str:
    """The headline: when each curve reached the threshold and the gap between them."""
    who = "All phenomena" if d.phenomenon == ALL else d.phenomenon
    if d.delay is None:
        reasons = []
        for c in (d.train, d.validation):
            name = GROUP_LABELS[c.group].split(" (")[0]
            if c.n_distinct == 0:
                reasons.append(f"{name} has no pairs")
            elif c.final_step is None:
                reasons.append(f"{name} never has enough pairs at a checkpoint")
            elif not c.above_chance:
                reasons.append(
                    f"{name} ends indistinguishable from chance (accuracy {_num(c.final_accuracy)}, "
                    f"{_ci(c.final_ci_low, c.final_ci_high, 2)} includes 0.5)"
                )
            elif c.step is None:
                reasons.append(f"{name} never reached {threshold:.0%} of its final accuracy")
        return f"{who}: no delay can be measured because {' and '.join(reasons)}."
    direction = "later" if d.delay > 0 else ("earlier" if d.delay < 0 else "at the same checkpoint")
    text = (
        f"{who}: proxy-train reached {threshold:.0%} of its final accuracy at step {d.train.step:,}, "
        f"proxy-validation at step {d.validation.step:,}: a delay of {d.delay:,} steps "
        f"({_ci(d.ci_low, d.ci_high)}{_boot_share(d.boot_defined, 'defined')}); "
        f"proxy-validation generalised {direction}"
        + ("" if d.delay == 0 else " than proxy-train")
        + "."
    )
    return text


def summarize_generalization(g: GeneralizationResult) -> list[str]:
    out = [delay_sentence(g.overall, g.threshold)]
    d = g.overall
    for c in (d.train, d.validation, d.never):
        text = _crossing_text(c, g.threshold, g.min_pairs)
        out.append(text[0].upper() + text[1:] + ".")
    nv, va = d.never, d.validation
    if nv.n_distinct == 0:
        out.append("There are no never-exposed pairs, so there is no fixed control.")
    elif not nv.above_chance:
        out.append(
            f"Control: the never-exposed pairs end at accuracy {_num(nv.final_accuracy)}, not above chance: "
            "without exposure there is no learning to compare with."
        )
    elif nv.step is not None and va.step is not None and not nv.at_first_point:
        rel = "before" if nv.step < va.step else ("at the same step as" if nv.step == va.step else "after")
        out.append(
            f"Control: the never-exposed pairs rose too and reached their threshold at step {nv.step:,}, {rel} "
            f"proxy-validation (step {va.step:,}); what they share with proxy-validation is not caused by exposure."
        )
    else:
        out.append(
            f"Control: the never-exposed pairs end above chance (accuracy {_num(nv.final_accuracy)}) "
            + ("and were already there at the first checkpoint." if nv.at_first_point else "without reaching their threshold.")
        )
    per = [x for name, x in g.delays.items() if name != ALL]
    measured = [x for x in per if x.delay is not None]
    if per:
        text = f"{len(measured)} of {len(per)} phenomena have a measurable delay"
        if measured:
            pos = [x for x in measured if x.delay > 0]
            sig = [x for x in measured if np.isfinite(x.ci_low) and x.ci_low > 0]
            largest = max(measured, key=lambda x: x.delay)
            text += (
                f"; it is positive in {len(pos)} and its 95% CI excludes 0 (delay > 0) in {len(sig)}; the largest is "
                f"{largest.phenomenon} ({largest.delay:,} steps, {_ci(largest.ci_low, largest.ci_high)})"
            )
        out.append(text + ".")
    lg = g.lags
    if lg.n_exposed == 0:
        out.append("No pair was exposed during the run, so there are no per-pair lags.")
    else:
        text = (
            f"Per pair: of {lg.n_exposed} exposed pairs, {lg.n_learned_exposed} are learned (correct from some checkpoint "
            f"to the end)"
        )
        if lg.n_learned_exposed:
            text += (
                f", with a median lag (learned at − first exposure) of {lg.median_lag:,.0f} steps "
                f"({_ci(lg.median_ci_low, lg.median_ci_high)}); {lg.n_before_exposure} "
                f"({lg.n_before_exposure / lg.n_learned_exposed:.0%}) were learned at or before their first exposure"
            )
        text += f"; {lg.n_never_learned_exposed} are wrong at the last checkpoint (never learned)"
        if lg.n_censored:
            text += f"; {lg.n_censored} are correct from the first checkpoint on (left-censored: their lag is an upper bound)"
        out.append(text + ".")
    if lg.n_control:
        out.append(
            f"Of the {lg.n_control} never-exposed pairs, {lg.n_control_learned} "
            f"({lg.n_control_learned / lg.n_control:.0%}) count as learned by the last checkpoint; a pair at chance is "
            "correct at the last checkpoint half the time, so read this next to the control's final accuracy "
            f"({_num(d.never.final_accuracy)})."
        )
    return out


def summarize_concepts(c: ConceptResult) -> list[str]:
    out = [f"Checkpoints: {c.choice.reason}."]
    rows = [r for r in c.layers.to_pylist() if r["phenomenon"] == ALL]
    if not rows:
        return out
    for when in ("before", "after", "only"):
        sub = [r for r in rows if r["when"] == when and r["probe_accuracy"] is not None]
        if not sub:
            continue
        best = max(sub, key=lambda r: r["probe_accuracy"])
        flat = min((r for r in sub if r["participation_ratio"] is not None), key=lambda r: r["participation_ratio"], default=None)
        text = (
            f"At step {best['step']:,} ({when}), the probe is most accurate at layer {best['layer']}: accuracy "
            f"{_num(best['probe_accuracy'])} ({_ci(best['probe_accuracy_ci_low'], best['probe_accuracy_ci_high'], 2)}), "
            f"AUC {_num(best['probe_auc'])}, n = {best['n_pairs']} pairs"
        )
        if flat is not None:
            text += (
                f"; the good − bad differences are most concentrated at layer {flat['layer']}: participation ratio "
                f"{_num(flat['participation_ratio'], 1)}, {flat['components_90']} direction(s) for 90% of the variance"
            )
        out.append(text + ".")
    ch = [r for r in c.changes.to_pylist() if r["phenomenon"] == ALL]
    if ch:
        tested = [r for r in ch if r["tested"] and r["probe_accuracy_change"] is not None]
        if not tested:
            out.append(f"All phenomena together have fewer than {MIN_TEST_PAIRS} pairs: the change is not tested.")
        else:
            big = max(tested, key=lambda r: abs(r["probe_accuracy_change"]))
            verdict = "significant" if big["probe_significant"] else "not significant"
            out.append(
                f"Largest probe change, all phenomena: layer {big['layer']}, {big['probe_accuracy_change']:+.2f} accuracy "
                f"(paired permutation p{_p_is(big['probe_p'])}, BH q{_p_is(big['probe_q'])}: {verdict}); "
                f"{sum(r['probe_significant'] for r in ch)} of {len(ch)} layers change significantly."
            )
            prs = [r for r in tested if r["participation_ratio_change"] is not None]
            if prs:
                big = max(prs, key=lambda r: abs(r["participation_ratio_change"]))
                verdict = "significant" if big["participation_ratio_significant"] else "not significant"
                way = "fewer dimensions (more one-dimensional)" if big["participation_ratio_change"] < 0 else "more dimensions"
                out.append(
                    f"Largest change in dimension: layer {big['layer']}, participation ratio "
                    f"{big['participation_ratio_change']:+.1f} → {way} "
                    f"({_ci(big['participation_ratio_change_ci_low'], big['participation_ratio_change_ci_high'], 1)}, "
                    f"bootstrap p{_p_is(big['participation_ratio_p'])}, BH q{_p_is(big['participation_ratio_q'])}: {verdict})."
                )
    per = [r for r in c.changes.to_pylist() if r["phenomenon"] != ALL]
    if per:
        names = sorted({r["phenomenon"] for r in per})
        sig = sorted({r["phenomenon"] for r in per if r["probe_significant"]})
        sig_pr = sorted({r["phenomenon"] for r in per if r["participation_ratio_significant"]})
        untested = sorted({r["phenomenon"] for r in per if not r["tested"]})
        text = (
            f"Per phenomenon: the probe changes significantly (BH q < 0.05) at some layer in {len(sig)} of {len(names)}"
            + (f" ({', '.join(sig)})" if sig else "")
            + f"; the participation ratio in {len(sig_pr)}"
            + (f" ({', '.join(sig_pr)})" if sig_pr else "")
        )
        if untested:
            text += f"; not tested for too few pairs (< {MIN_TEST_PAIRS}): {', '.join(untested)}"
        out.append(text + ".")
    out.append(
        "Caveat: the good and bad sentences often differ in the critical word itself, so a probe on the critical "
        "token can partly detect word identity rather than acceptability."
    )
    return out


def _head_name(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def dominant_heads(means: np.ndarray, factor: float = 2.0) -> list[tuple[int, int]]:
    """(layer, head) of the heads whose mean attention exceeds ``factor`` × the average head, largest first."""
    m = np.nan_to_num(np.asarray(means, dtype=np.float64))
    avg = m.mean()
    if avg <= 0:
        return []
    idx = np.argwhere(m > factor * avg)
    order = np.argsort(-m[idx[:, 0], idx[:, 1]], kind="stable")
    return [(int(a), int(b)) for a, b in idx[order]]


def summarize_heads(h: HeadResult | None, before_after: list[int]) -> list[str]:
    if h is None:
        return ["The evaluation output has no attention (attention/step{S}.npy): no head analysis."]
    name = ALL
    last = len(h.steps) - 1
    if h.n_layers * h.n_heads == 1:  # shares, Gini and top sets of one head say nothing
        mean = h.means[name][:, 0, 0]
        return [
            f"The model has a single attention head (L0H0): nothing to rank. Its mean critical → context attention "
            f"is {mean[last]:.3f} at the last checkpoint (step {int(h.steps[last]):,})"
            + (f", {mean[0]:.3f} at the first (step {int(h.steps[0]):,})." if last else ".")
        ]
    uniform = h.top_k / (h.n_layers * h.n_heads)
    tops = ", ".join(
        f"{_head_name(int(layer), int(head))} ({h.means[name][last, layer, head]:.3f})" for layer, head in h.top[name][last]
    )
    out = [
        f"At the last checkpoint (step {int(h.steps[last]):,}), the top {h.top_k} of {h.n_layers * h.n_heads} heads carry "
        f"{h.share[name][last]:.0%} of the mean critical → context attention (a uniform spread would give "
        f"{min(1.0, uniform):.0%}); Gini coefficient {_num(h.gini[name][last])}. Top heads (mean attention): {tops}."
    ]
    dominant = [dominant_heads(h.means[name][t]) for t in range(len(h.steps))]
    out.append(
        f"Dominant heads (mean attention above twice the average head) at step {int(h.steps[last]):,}: "
        + (", ".join(_head_name(*x) for x in dominant[last]) or "none")
        + "."
    )
    if len(h.steps) > 1:
        first = h.top_set(name, 0)
        final = h.top_set(name, last)
        entered = sorted(final - first)
        left = sorted(first - final)
        out.append(
            f"From step {int(h.steps[0]):,} to step {int(h.steps[last]):,} the top-{h.top_k} set overlaps by Jaccard "
            f"{h.jaccard_final[name][0]:.2f}; the share of the top heads went from {h.share[name][0]:.0%} to "
            f"{h.share[name][last]:.0%} and the Gini coefficient from {_num(h.gini[name][0])} to {_num(h.gini[name][last])}."
            + (f" Entered the top {h.top_k}: {', '.join(_head_name(*x) for x in entered)}." if entered else "")
            + (f" Left the top {h.top_k}: {', '.join(_head_name(*x) for x in left)}." if left else "")
        )
        changes = int(np.sum(h.jaccard_previous[name][1:] < 1.0))
        dom_changes = [t for t in range(1, len(h.steps)) if set(dominant[t]) != set(dominant[t - 1])]
        text = (
            f"The top-{h.top_k} set changes between {changes} of {len(h.steps) - 1} consecutive checkpoints (heads near "
            f"the noise floor swap easily); the dominant set changes {len(dom_changes)} time(s)"
        )
        if dom_changes:
            text += ": " + "; ".join(
                f"at step {int(h.steps[t]):,} "
                + (", ".join(_head_name(*x) for x in dominant[t - 1]) or "none")
                + " → "
                + (", ".join(_head_name(*x) for x in dominant[t]) or "none")
                for t in dom_changes[:6]
            )
            if len(dom_changes) > 6:
                text += f"; and {len(dom_changes) - 6} more"
        out.append(text + ".")
    for step in before_after:
        idx = np.flatnonzero(h.steps == step)
        if len(idx):
            t = int(idx[0])
            out.append(
                f"At step {step:,}: top-{h.top_k} share {h.share[name][t]:.0%}, Gini {_num(h.gini[name][t])}, top heads "
                + ", ".join(_head_name(int(layer), int(head)) for layer, head in h.top[name][t])
                + "."
            )
    return out


@dataclass
class Section:
    title: str
    summary: list[str]
    figures: list[tuple[Path, str]] = field(default_factory=list)
    tables: list[tuple[str, list[str], list[list[str]]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


CSS = """
body { font-family: -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif; max-width: 1180px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
ul.summary li { margin: .35em 0; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .9em; color: #555; }
table { border-collapse: collapse; font-size: .85em; margin: 1em 0; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; } th { background: #f4f4f4; }
td:first-child, th:first-child { text-align: left; }
.notes { background: #fff8e1; border-left: 4px solid #f0c040; padding: .5em 1em; }
.meta { color: #555; font-size: .9em; }
"""


def _img(path: Path, caption: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    alt = html.escape(caption, quote=True)
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{alt}" data-file="{html.escape(Path(path).name)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _table(title: str, header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<h3>{html.escape(title)}</h3><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(title: str, meta: list[str], sections: list[Section], methods: list[str], files: list[str]) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        '<p class="meta">' + "<br>".join(html.escape(m) for m in meta) + "</p>",
    ]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        parts.append('<ul class="summary">' + "".join(f"<li>{html.escape(t)}</li>" for t in s.summary) + "</ul>")
        if s.notes:
            parts.append('<div class="notes"><ul>' + "".join(f"<li>{html.escape(n)}</li>" for n in s.notes) + "</ul></div>")
        for path, caption in s.figures:
            parts.append(_img(path, caption))
        for t in s.tables:
            parts.append(_table(*t))
    parts.append("<h2>Methods</h2><ul>" + "".join(f"<li>{html.escape(m)}</li>" for m in methods) + "</ul>")
    parts.append("<h2>Output files</h2><ul>" + "".join(f"<li><code>{html.escape(f)}</code></li>" for f in files) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def delay_table(g: GeneralizationResult) -> tuple[str, list[str], list[list[str]]]:
    header = ["phenomenon", "pairs (train/val/never, max)", "proxy-train step", "proxy-validation step",
              "never-exposed step", "delay (steps)", "delay 95% CI"]
    rows = []
    for name, d in g.delays.items():
        cs = g.curves[name]
        sizes = "/".join(str(int(cs.n[k].max())) if len(cs.n[k]) else "0" for k in ("train", "validation", "never"))
        rows.append(
            [
                name,
                sizes,
                _step(d.train.step).replace("step ", ""),
                _step(d.validation.step).replace("step ", ""),
                _step(d.never.step).replace("step ", ""),
                "n/a" if d.delay is None else f"{d.delay:,}",
                _ci(d.ci_low, d.ci_high).replace("95% CI ", ""),
            ]
        )
    return ("Threshold steps and delays per phenomenon", header, rows)


def concept_table(c: ConceptResult) -> tuple[str, list[str], list[list[str]]] | None:
    rows = [r for r in c.changes.to_pylist()]
    if not rows:
        return None
    best: dict[str, dict] = {}
    for r in rows:
        if r["probe_accuracy_change"] is None:
            continue
        cur = best.get(r["phenomenon"])
        if cur is None or abs(r["probe_accuracy_change"]) > abs(cur["probe_accuracy_change"]):
            best[r["phenomenon"]] = r
    header = ["phenomenon", "pairs", "layer (largest Δ)", "Δ probe accuracy", "p", "q", "Δ participation ratio",
              "q (PR)", "verdict"]
    out = []
    for name in sorted(best, key=lambda n: (n != ALL, n)):
        r = best[name]
        if not r["tested"]:
            verdict = f"not tested (< {MIN_TEST_PAIRS} pairs)"
        else:
            verdict = "significant" if r["probe_significant"] else "not significant"
        out.append(
            [
                name,
                str(r["n_pairs"]),
                str(r["layer"]),
                f"{r['probe_accuracy_change']:+.2f}",
                _p(r["probe_p"]),
                _p(r["probe_q"]),
                "n/a" if r["participation_ratio_change"] is None else f"{r['participation_ratio_change']:+.1f}",
                _p(r["participation_ratio_q"]),
                verdict,
            ]
        )
    return ("Largest probe change per phenomenon (before → after)", header, out)

"""``exposure demo``: the whole pipeline on the bundled data (see :mod:`exposure.demo`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from exposure.cli import positive_int


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the whole method on the bundled data: index, phrases, splits, training, eval, report",
        description=(
            "Tokenizes the bundled English corpus, builds an exposure index, finds the critical phrase of "
            "BLiMP pairs of five phenomena and splits them into proxy-train / proxy-validation at every "
            "checkpoint, trains a small GPT-NeoX model on the index in index order (so exposure is known "
            "exactly), scores the pairs at every checkpoint, and writes an HTML report. Finished stages are "
            "reused when re-run with the same settings (other settings need another --out). About 5-10 minutes "
            "on 2 CPU cores."
        ),
    )
    p.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    p.add_argument("--pairs-per-paradigm", type=positive_int, default=100, help="BLiMP pairs per paradigm (default 100)")
    p.add_argument("--eval-every", type=positive_int, default=1, help="evaluate every k-th checkpoint (default: all)")
    p.add_argument("--threads", type=positive_int, default=None, help="threads for indexing (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: Any) -> int:
    from exposure.demo import DemoConfig, run_demo

    cfg = DemoConfig(out=Path(args.out), pairs_per_paradigm=args.pairs_per_paradigm, eval_every=args.eval_every,
                     threads=args.threads, progress=not args.no_progress)
    result = run_demo(cfg)
    print(format_result(result))
    return 0


def format_result(result: Any) -> str:
    s = result.summary
    lines = [
        "",
        "exposure demo: what it found",
        f"  pairs scored: {s['pairs']:,} ({s['with_phrase']:,} with a critical phrase), "
        f"checkpoints: {len(s['checkpoints'])} (steps {s['checkpoints'][0]}..{s['checkpoints'][-1]})",
        f"  at the last checkpoint: proxy-train {s['proxy_train_at_last_checkpoint']:,}, "
        f"proxy-validation {s['proxy_validation_at_last_checkpoint']:,} "
        f"(of which never exposed in the whole run: {s['never_exposed']:,})",
    ]
    analysis = s.get("analysis", {})
    overall = analysis.get("overall", {})
    if overall.get("delay") is not None:  # otherwise the findings below say why there is none
        lines.append(
            f"  delay (overall): proxy-train reached {analysis.get('threshold', 0.9):.0%} of its final accuracy at step "
            f"{overall['train_step']:,}, proxy-validation at step {overall['validation_step']:,}: "
            f"delay {overall['delay']:,} steps"
        )
    for section, texts in (analysis.get("findings") or {}).items():
        lines.append(f"  {section}:")
        for text in (texts if isinstance(texts, list) else [texts])[:4]:
            lines.append(f"    - {text}")
    lines.append("  stage times (s): " + ", ".join(f"{k} {v}" for k, v in result.seconds.items()))
    lines.append(f"  report: {result.report.resolve()}")
    return "\n".join(lines)

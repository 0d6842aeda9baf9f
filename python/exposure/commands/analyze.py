"""``exposure analyze``: findings, figures and an HTML report from a splits table and an evaluation."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "analyze",
        help="analyse an evaluation: delayed generalization, concept vectors, attention heads; HTML report",
        description=(
            "Turn an `exposure eval` output into findings: accuracy curves of proxy-train / proxy-validation / "
            "never-exposed pairs with bootstrap CIs, the generalization delay, per-pair lags, linear probes and "
            "the dimension of good - bad hidden-state differences before vs after the transition, and "
            "critical -> context attention heads. Writes Parquet tables, PNG figures and a self-contained report.html."
        ),
    )
    p.add_argument("--splits", required=True, type=Path, help="splits table (splits.parquet from `exposure splits`)")
    p.add_argument("--eval", required=True, type=Path, dest="eval_dir", help="evaluation output directory")
    p.add_argument("--out", required=True, type=Path, help="output directory (created)")
    p.add_argument("--threshold", type=float, default=0.9,
                   help="fraction of a curve's final accuracy that defines its threshold step (default 0.9)")
    p.add_argument("--before", type=int, default=None, help="checkpoint step 'before' for the concept comparison")
    p.add_argument("--after", type=int, default=None, help="checkpoint step 'after' for the concept comparison")
    p.add_argument("--top-k", type=int, default=None,
                   help="number of top attention heads (default 5, fewer for a model with few heads)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--min-pairs", type=int, default=5,
                   help="a checkpoint counts for a curve's threshold only with at least this many pairs (default 5)")
    p.add_argument("--max-concept-pairs", type=int, default=1000,
                   help="at most this many pairs per phenomenon for probes (random sample; default 1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from exposure.analysis import analyze
    from exposure.cli import UserError

    if not args.splits.is_file():
        raise UserError(f"--splits {args.splits}: no such file")
    if not args.eval_dir.is_dir():
        raise UserError(f"--eval {args.eval_dir}: no such directory")
    try:  # the options are checked by analyze, before it writes anything
        report = analyze(
            args.splits,
            args.eval_dir,
            args.out,
            threshold=args.threshold,
            before=args.before,
            after=args.after,
            top_k=args.top_k,
            n_boot=args.n_boot,
            seed=args.seed,
            progress=not args.no_progress,
            min_pairs=args.min_pairs,
            max_concept_pairs=args.max_concept_pairs,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    print(report)
    return 0

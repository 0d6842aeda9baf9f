"""``exposure eval``: score the pairs at every checkpoint of a run (see :mod:`exposure.evaluate`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from exposure.cli import positive_int


def _steps(text: str) -> list[int]:
    try:
        steps = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"checkpoints must be comma-separated integers, got {text!r}") from exc
    if not steps:
        raise argparse.ArgumentTypeError("no checkpoints given")
    return steps


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="score the pairs at every checkpoint of a run (log-probs, critical-token states and attention)",
        description=(
            "Score the minimal pairs of an `exposure splits` table at every checkpoint of a pre-training run: "
            "summed log-probabilities (lm-evaluation-harness convention), critical-token log-probabilities, "
            "hidden states at the critical token and attention critical -> context token. Results are written "
            "per checkpoint; rerunning with the same --out resumes and never recomputes a finished checkpoint. "
            "The run's tokenizer must be the pairs' one; a run of `exposure train-reference` must have been "
            "trained on the index (and tokens per step) the splits were made with."
        ),
    )
    parser.add_argument("--pairs", required=True, type=Path, help="pairs table (splits.parquet)")
    parser.add_argument(
        "--run", required=True, help="directory of step{S}/ checkpoint folders, or a hub model id (revisions step{S})"
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory (created; resumed if present)")
    parser.add_argument(
        "--checkpoints", type=_steps, default=None,
        help="comma-separated steps (default: every step{S}/ folder; for a hub id, the pairs' checkpoints)",
    )
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
        help="model dtype (auto: bf16 on GPU, fp32 on CPU)",
    )
    parser.add_argument(
        "--batch-tokens", type=positive_int, default=None,
        help="padded tokens per forward pass (default: 16384 on GPU; on CPU 393216 / model width, e.g. 512 for Pythia-160M)",
    )
    parser.add_argument(
        "--tokenizer", type=Path, default=None,
        help="the original tokenizer.json of the pairs, when the run's copy is re-serialized (checked for equivalence)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from exposure.cli import UserError
    from exposure.evaluate import EvalError, evaluate_run

    try:
        results = evaluate_run(
            args.pairs,
            args.run,
            args.out,
            checkpoints=args.checkpoints,
            device=args.device,
            dtype=args.dtype,
            batch_tokens=args.batch_tokens,
            progress=not args.no_progress,
            reference_tokenizer=args.tokenizer,
        )
    except EvalError as exc:
        raise UserError(str(exc)) from exc
    steps = list(results.checkpoints)
    shown = steps if len(steps) <= 6 else steps[:3] + steps[-3:]
    accuracy = []
    for step in shown:
        correct = results.scores(step).column("correct").to_numpy(zero_copy_only=False)
        accuracy.append(f"step{step} {correct.mean():.4f}")
    if len(shown) < len(steps):
        accuracy.insert(3, "...")
    print(f"{results.path}: {len(steps)} checkpoint(s) scored; pair accuracy: " + ", ".join(accuracy))
    return 0

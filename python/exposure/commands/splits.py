"""``exposure splits``: proxy-train / proxy-validation split of BLiMP pairs at every checkpoint."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from exposure.cli import UserError


def register(subparsers: Any) -> None:
    from exposure.schedule import PRESET_NAMES

    p = subparsers.add_parser(
        "splits",
        help="split BLiMP pairs into proxy-train / proxy-validation at every checkpoint by their critical phrase",
        description=(
            "Join the critical phrases (from `exposure phrases`) with an index and a training schedule: for "
            "every pair the count of its critical phrase, the first step that trained on it, its exposures "
            "per checkpoint window, the same for the ungrammatical phrase, and its split at every "
            "checkpoint: train when the good phrase was trained on before that checkpoint "
            "(0 <= first_step_good < S), else validation. Writes one Parquet row per pair."
        ),
    )
    p.add_argument("--phrases", default=None,
                   help="phrases table from `exposure phrases` (default: compute it for the bundled BLiMP "
                        "paradigms with the index's tokenizer)")
    p.add_argument("--index", required=True, help="index directory")
    p.add_argument(
        "--schedule", default="from-index",
        help=f"the schedule: from-index (the one stored in the index, default), a preset "
             f"({', '.join(PRESET_NAMES)}), or a JSON file holding a schedule description",
    )
    p.add_argument("--blimp", default=None, help="without --phrases: BLiMP folder (default: the bundled copy)")
    p.add_argument("--out", required=True, help="Parquet file to write")
    p.add_argument("--quiet", action="store_true", help="no summary table")
    p.set_defaults(func=run)


def resolve_schedule(spec: str, index: Any) -> Any:
    """The schedule named on the command line."""
    from exposure.schedule import PRESET_NAMES, Schedule

    if spec == "from-index":
        try:
            return Schedule.for_index(index)
        except ValueError as exc:
            raise UserError(
                f"{exc}; or pass --schedule with a preset ({', '.join(PRESET_NAMES)}) or a JSON file"
            ) from None
    if spec in PRESET_NAMES:
        return Schedule.preset(spec)
    path = Path(spec)
    if path.is_file():
        try:
            return Schedule.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not JSON ({exc})") from None
    raise UserError(f"unknown schedule {spec!r}: use from-index, one of {', '.join(PRESET_NAMES)}, or a JSON file")


def run(args: Any) -> int:
    import pyarrow.parquet as pq

    import exposure
    from exposure.splits import make_splits, read_phrases, summarize

    t0 = time.perf_counter()
    try:
        index = exposure.Index(args.index)
    except exposure.IndexFileError as exc:
        raise UserError(str(exc)) from None
    schedule = resolve_schedule(args.schedule, index)
    if args.phrases is not None:
        phrases = read_phrases(args.phrases)
    else:
        from exposure.commands.phrases import build_phrases
        from exposure.tokenizer import tokenizer_for_index

        tok = tokenizer_for_index(index)
        phrases = build_phrases(args.blimp, None, tok, None, None, False, progress=not args.quiet)
    table = make_splits(phrases, index, schedule, index_path=str(args.index))
    out = Path(args.out)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    if not args.quiet:
        print(summarize(table))
    print(f"wrote {out}: {table.num_rows:,} pairs × {len(schedule.checkpoints)} checkpoints "
          f"({schedule.name}; {time.perf_counter() - t0:.1f}s)")
    return 0

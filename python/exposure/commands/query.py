"""``exposure query``: count, first-exposure step and checkpoint windows of phrases in an index."""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from exposure.cli import UserError, positive_int


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "query",
        help="when did the model see these phrases? (count, first step, exposures per checkpoint window)",
        description=(
            "Tokenize each phrase with the index's own tokenizer and report how often it occurs in the "
            "training data, the first optimizer step that trained on it, the first checkpoint that has seen "
            "it (checkpoint S has been trained on steps 0..S-1), and the new exposures in each checkpoint "
            "window ('trained': their sum, every pass over the data counted, so above 'count' when the run "
            "read the data more than once). A phrase is looked up as it appears inside running text, i.e. after a space "
            "(' these dogs'), unless it starts with whitespace or --as-written is given."
        ),
    )
    p.add_argument("index", help="index directory")
    p.add_argument("phrases", nargs="*", metavar="PHRASE")
    p.add_argument("--file", metavar="PATH", default=None,
                   help="also look up the phrases in PATH, one per line, blank lines skipped ('-': standard input)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--as-written", action="store_true", help="tokenize each phrase exactly as typed (no leading space)")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json to use (must be the index's own)")
    p.add_argument("--windows", type=positive_int, default=8, help="table: show at most this many non-empty windows (default 8)")
    p.set_defaults(func=run)


def query_phrases(index: Any, phrases: list[str], *, tokenizer: Any = None, as_written: bool = False) -> dict[str, Any]:
    """The answers for ``phrases`` as a JSON-able dict (what ``--json`` prints)."""
    from exposure.schedule import Schedule
    from exposure.tokenizer import tokenizer_for_index

    tok = tokenizer if tokenizer is not None and not isinstance(tokenizer, str) else tokenizer_for_index(index, tokenizer)
    for p in phrases:
        if not p.strip():
            raise ValueError(f"empty phrase {p!r}: give the words to look up, e.g. \"these dogs\"")
    texts = [p if as_written or p[:1].isspace() else " " + p for p in phrases]
    ids = [tok.encode(t) for t in texts]
    for p, t in zip(phrases, ids):
        if not t:
            raise UserError(f"phrase {p!r} tokenizes to nothing")
    counts = index.count(ids)
    first_pos = index.first_position(ids)
    sched_dict = (index.metadata or {}).get("schedule")
    sched = Schedule.from_dict(sched_dict) if sched_dict else None
    results: list[dict[str, Any]] = []
    if sched is not None:
        first_step = sched.first_step(index, ids)
        first_ckpt = sched.first_checkpoint(first_step)
        exposures = sched.exposures(index, ids)
    for i, phrase in enumerate(phrases):
        r: dict[str, Any] = {
            "phrase": phrase,
            "text": texts[i],
            "token_ids": [int(x) for x in ids[i]],
            "tokens": tok.pieces(ids[i]),
            "count": int(counts[i]),
            "first_position": int(first_pos[i]),
        }
        if first_pos[i] >= 0:
            ctx = index.context(int(first_pos[i]), before=0, after=len(ids[i]))
            r["first_item"] = int(ctx.item)
        if sched is not None:
            r["first_step"] = int(first_step[i])
            r["first_checkpoint"] = int(first_ckpt[i])
            r["exposures"] = [int(x) for x in exposures[i]]
            r["trained_exposures"] = int(exposures[i].sum())
        results.append(r)
    return {
        "index": str(index.path),
        "tokenizer": {"name": tok.name, "sha256": tok.sha256},
        "schedule": sched.to_dict() if sched is not None else None,
        "checkpoints": list(sched.checkpoints) if sched is not None else None,
        "convention": "checkpoint S has been trained on steps 0..S-1; exposures[k] = occurrences trained in steps [checkpoints[k-1], checkpoints[k])",
        "results": results,
    }


def _table(answer: dict[str, Any], max_windows: int) -> str:
    rows = [("phrase", "tokens", "count", "first step", "first ckpt", "trained", "new exposures per checkpoint window")]
    ck = answer["checkpoints"]
    for r in answer["results"]:
        toks = " ".join(str(t) for t in r["token_ids"])
        if ck is None:
            rows.append((r["phrase"], toks, f"{r['count']:,}", "-", "-", "-", "(index has no schedule)"))
            continue
        nz = [k for k, v in enumerate(r["exposures"]) if v]
        parts = []
        for k in nz[:max_windows]:
            lo = ck[k - 1] if k > 0 else 0
            parts.append(f"step{ck[k]}: +{r['exposures'][k]:,} (steps {lo}..{ck[k] - 1})")
        if len(nz) > max_windows:
            parts.append(f"… {len(nz) - max_windows} more windows")
        rows.append((
            r["phrase"],
            toks,
            f"{r['count']:,}",
            "never" if r["first_step"] < 0 else f"{r['first_step']:,}",
            "-" if r["first_checkpoint"] < 0 else f"step{r['first_checkpoint']}",
            f"{r['trained_exposures']:,}",
            "; ".join(parts) if parts else "-",
        ))
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]) - 1)]
    lines = []
    for j, row in enumerate(rows):
        cells = [row[c].ljust(widths[c]) if c == 0 or c == 1 else row[c].rjust(widths[c]) for c in range(len(widths))]
        lines.append("  ".join(cells + [row[-1]]))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * len(row[-1]))
    head = f"index {answer['index']}  tokenizer {answer['tokenizer']['name']}"
    if answer["schedule"]:
        s = answer["schedule"]
        head += f"  schedule {s['name']} ({s['tokens_per_step']:,} tokens/step; checkpoint S has seen steps 0..S-1)"
    return head + "\n" + "\n".join(lines)


def read_phrases(path: str) -> list[str]:
    """The non-blank lines of ``path`` (``-``: standard input), without their line ends."""
    import sys
    from pathlib import Path

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read phrases from {path}: {exc}") from None
    text = text.removeprefix("\ufeff")  # a byte-order mark (Windows editors) is not part of the first phrase
    return [line for line in text.splitlines() if line.strip()]


def run(args: argparse.Namespace) -> int:
    from exposure.engine import Index, IndexFileError
    from exposure.tokenizer import TokenizerMismatchError

    phrases = list(args.phrases) + (read_phrases(args.file) if args.file is not None else [])
    if not phrases:
        raise UserError("no phrases: give them as arguments or with --file PATH")
    try:
        index = Index(args.index)
        answer = query_phrases(index, phrases, tokenizer=args.tokenizer, as_written=args.as_written)
    except (IndexFileError, TokenizerMismatchError) as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print(json.dumps(answer, indent=1, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else str(o)))
    else:
        print(_table(answer, args.windows))
    return 0

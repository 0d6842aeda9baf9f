"""Critical phrases for all 67,000 BLiMP pairs: wall time and per-paradigm coverage.

    PYTHONPATH=python .venv/bin/python benchmarks/bench_phrases.py
    ... bench_phrases.py --blimp ../shared/data/blimp --tokenizer ../shared/data/tokenizers/gpt2 --out phrases.parquet

Times the same work as ``exposure phrases --all`` (read the jsonl files and the vocabulary, find every
pair's phrase, tokenize the sentences and every surface variant, build the table), stage by stage, and
prints the coverage table (pairs per paradigm that got a phrase). ``--repeat`` runs it several times and
reports the fastest (a fresh vocabulary each time, so no memo is carried over).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("EXPOSURE_SHARED_DATA", HERE.parents[1] / "shared" / "data"))


def run_once(blimp: Path, tokenizer: Path, workers: int | None) -> tuple[dict[str, float], object]:
    """One run; with one worker the rules and the tokenization/table are timed apart."""
    from exposure.blimp import find_vocabulary, load_blimp, read_vocabulary
    from exposure.critical import critical_phrases, find_critical_phrases, phrase_table
    from exposure.tokenizer import load_tokenizer

    t: dict[str, float] = {}
    t0 = time.perf_counter()
    pairs = load_blimp(blimp)
    vocab = read_vocabulary(find_vocabulary(blimp))
    tok = load_tokenizer(tokenizer)
    t["load"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    if workers == 1:
        results = find_critical_phrases(pairs, vocab)
        t["rules"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        table = phrase_table(results, tok)
        t["tokens+table"] = time.perf_counter() - t2
    else:
        table = critical_phrases(pairs, vocab, tok, workers=workers)
        t["phrases"] = time.perf_counter() - t1
    t["total"] = time.perf_counter() - t0
    return t, table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--blimp", type=Path, default=SHARED / "blimp", help="BLiMP folder (default: the shared copy)")
    ap.add_argument("--tokenizer", type=Path, default=SHARED / "tokenizers" / "gpt-neox-20b",
                    help="tokenizer.json or its folder (default: GPT-NeoX-20B)")
    ap.add_argument("--repeat", type=int, default=1, help="runs; the fastest is reported (default 1)")
    ap.add_argument("--workers", type=int, default=None,
                    help="processes (default: as `exposure phrases`, one per core); 1 times the stages apart")
    ap.add_argument("--out", type=Path, default=None, help="also write the phrases table here")
    ap.add_argument("--json", type=Path, default=None, help="write timings and coverage as JSON here")
    args = ap.parse_args(argv)

    import pyarrow.parquet as pq

    from exposure.critical import coverage, format_coverage

    best: dict[str, float] | None = None
    table = None
    for _ in range(max(1, args.repeat)):
        t, table = run_once(args.blimp, args.tokenizer, args.workers)
        if best is None or t["total"] < best["total"]:
            best = t
    assert best is not None and table is not None
    rows = coverage(table)  # type: ignore[arg-type]
    print(format_coverage(rows))
    n = sum(r.pairs for r in rows)
    got = sum(r.with_phrase for r in rows)
    with_rule = [r for r in rows if r.rule != "none"]
    print(
        f"\n{n:,} pairs in {len(rows)} paradigms; {got:,} with a critical phrase "
        f"({len(with_rule)} paradigms have a rule: {sum(r.with_phrase for r in with_rule):,} / "
        f"{sum(r.pairs for r in with_rule):,} of their pairs)"
    )
    print(
        "time: " + ", ".join(f"{k} {v:.2f}s" for k, v in best.items())
        + f"  ({os.cpu_count()} cores, workers {args.workers or 'default'}, {args.tokenizer.name} tokenizer, "
        f"best of {max(1, args.repeat)})"
    )
    if args.out is not None:
        pq.write_table(table, args.out)  # type: ignore[arg-type]
    if args.json is not None:
        args.json.write_text(json.dumps({
            "timings_s": best,
            "pairs": n,
            "with_phrase": got,
            "paradigms": [dict(uid=r.uid, phenomenon=r.phenomenon, rule=r.rule, pairs=r.pairs,
                               with_phrase=r.with_phrase) for r in rows],
        }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

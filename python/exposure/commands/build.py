"""``exposure build``: index a corpus in training order (see :mod:`exposure.ingest`)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from exposure.cli import UserError, non_negative_int, positive_int
from exposure.readers import CorpusError
from exposure.schedule import PRESET_NAMES, parse_checkpoints


def _size(text: str) -> int:
    from exposure.engine import parse_size

    try:
        size = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if size <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive size (8G, 512M), got {text!r}")
    return size


def _checkpoints(text: str) -> tuple[int, ...]:
    try:
        return parse_checkpoints(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "build",
        help="index a corpus (Pythia .bin/.idx, OLMo token files, or text) in training order",
        description=(
            "Build an exposure index over a pre-training corpus in the order the model saw it. The manifest "
            "records the tokenizer (name, sha256), the schedule and every source file (size, sha256). "
            "Interrupted and re-run with the same arguments, it reuses the finished shards."
        ),
        epilog=(
            "formats: pythia: NAME.bin + NAME.idx, a directory, or the document-000NN-of-000MM.bin shards "
            "with their one .idx. olmo: an OLMo training config (.yaml, data.paths), a list file (.txt, one "
            "path per line) or the token files in order, with --global-indices. text: .txt / .jsonl "
            "(optionally .gz/.zst) / .parquet files or directories, tokenized with --tokenizer, one document "
            "per non-blank line (or --text-unit paragraph), EOS after each document, documents shuffled by "
            "--seed, packed into items of --item-length tokens (the remainder is dropped)."
        ),
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="input files or directories")
    p.add_argument("--format", required=True, choices=["pythia", "olmo", "text"], dest="fmt", help="input format")
    p.add_argument("--out", required=True, help="index directory to write")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json (or its directory); required for text")
    p.add_argument(
        "--schedule", default=None,
        help=f"training schedule: {', '.join(PRESET_NAMES)}, custom (with --items-per-step, --checkpoints) or none "
             "(default: pythia for pythia, the config's batch size for olmo, custom for text)",
    )
    p.add_argument("--memory-budget", type=_size, default="8G", help="memory for building shards (8G, 512M; default 8G)")
    p.add_argument("--threads", type=positive_int, default=None, help="threads (default: all cores)")
    p.add_argument("--item-length", type=positive_int, default=None,
                   help="tokens per item: text packing length (default 2049, or the schedule's), OLMo sequence length")
    p.add_argument("--items-per-step", type=positive_int, default=None, help="custom schedule: items per optimizer step")
    p.add_argument("--checkpoints", type=_checkpoints, default=None,
                   help="custom schedule: checkpoint steps, e.g. '0,1,2,4,8' or '0:1000:100' (default 0,1,2,4,…,last)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--seed", type=non_negative_int, default=0, help="text: document shuffle seed (default 0)")
    g.add_argument("--no-shuffle", action="store_true", help="text: keep documents in file order")
    p.add_argument("--text-field", default="text", help="jsonl field / parquet column holding the text (default text)")
    p.add_argument("--text-unit", choices=["line", "paragraph"], default="line",
                   help="text: a document is a non-blank line (default) or a blank-line-separated paragraph")
    p.add_argument("--global-indices", default=None, help="olmo: global_indices.npy (the training order of instances)")
    p.add_argument("--token-dtype", choices=["uint16", "uint32"], default=None,
                   help="olmo: token file dtype (default: the config's memmap_dtype, uint32 for olmo2-* schedules, else uint16)")
    p.add_argument("--drop-repetitive", action="store_true",
                   help="olmo: leave OLMo-2's masked repetitive instances out of exposure counts (they keep their slot)")
    p.add_argument("--data-root", default=None, help="olmo: local directory that stands for the config's remote URLs")
    p.add_argument("--vocab-size", type=positive_int, default=None,
                   help="token ids the data may hold (default: the tokenizer's vocabulary)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing index at --out")
    p.add_argument("--no-hash", action="store_true", help="record source sizes without sha256 (faster for huge corpora)")
    p.add_argument("--shard-tokens", type=positive_int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from exposure.ingest import build
    from exposure.tokenizer import TokenizerMismatchError

    t0 = time.perf_counter()
    try:
        idx = build(
            args.sources,
            args.fmt,
            args.out,
            tokenizer=args.tokenizer,
            schedule=args.schedule,
            memory_budget_bytes=args.memory_budget,
            threads=args.threads,
            item_length=args.item_length,
            seed=None if args.no_shuffle else args.seed,
            progress=not args.no_progress,
            items_per_step=args.items_per_step,
            checkpoints=args.checkpoints,
            text_field=args.text_field,
            text_unit=args.text_unit,
            global_indices=args.global_indices,
            token_dtype=args.token_dtype,
            drop_repetitive=args.drop_repetitive,
            data_root=args.data_root,
            vocab_size=args.vocab_size,
            overwrite=args.overwrite,
            hash_files=not args.no_hash,
            shard_tokens=args.shard_tokens,
        )
    except (CorpusError, TokenizerMismatchError, FileExistsError) as exc:
        raise UserError(str(exc)) from None
    seconds = time.perf_counter() - t0
    meta = idx.metadata
    sched = meta.get("schedule")
    print(
        f"built {idx.path}: {idx.num_tokens:,} tokens in {idx.num_items:,} items, {idx.num_shards} shard(s), "
        f"{seconds:.1f} s ({idx.num_tokens / max(seconds, 1e-9):,.0f} tokens/s end to end)"
    )
    if sched:
        from exposure.schedule import Schedule

        print(f"schedule {Schedule.from_dict(sched).describe()}")
    reused = idx.manifest.get("build", {}).get("shards_reused")
    if reused:
        print(f"resumed: reused {reused} finished shard(s)")
    return 0

"""``exposure phrases``: the critical phrase of every BLiMP pair, tokenized for querying an index."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from exposure.cli import UserError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "phrases",
        help="find the critical phrase of every BLiMP minimal pair (e.g. 'these dogs' / 'these dog')",
        description=(
            "For every BLiMP minimal pair, find its critical phrase in both sentences: the smallest "
            "contiguous span holding the grammatical contrast and the word it depends on (a rule per "
            "paradigm; paradigms without one are listed with the reason). Writes one Parquet row per pair "
            "with the phrase, its character and token spans, the critical and context tokens, the rule, "
            "and the token ids of every surface variant (leading space or not, sentence-initial "
            "capitalization or not) for `exposure splits`. Prints how many pairs of each paradigm got a "
            "phrase."
        ),
        epilog=(
            "By default the five phenomena determiner_noun_agreement, subject_verb_agreement, "
            "anaphor_agreement, irregular_forms and npi_licensing are used, from the BLiMP copy bundled with "
            "the package; --blimp points at another copy (a folder of the original *.jsonl files or of the "
            "Hugging Face parquet layout) and --all / --paradigms / --phenomena choose others."
        ),
    )
    p.add_argument("--blimp", default=None, help="BLiMP folder or file (default: the bundled copy)")
    p.add_argument("--vocabulary", default=None,
                   help="the BLiMP generator's vocabulary.csv (default: vocabulary.csv next to the BLiMP files)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--tokenizer", default=None, help="tokenizer.json (or its folder) to tokenize with")
    g.add_argument("--index", default=None, help="tokenize with this index's own tokenizer")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--paradigms", nargs="+", metavar="UID", default=None, help="BLiMP paradigms (UIDs) to use")
    sel.add_argument("--phenomena", nargs="+", metavar="TERM", default=None,
                     help="BLiMP phenomena (linguistics_term) to use")
    sel.add_argument("--all", action="store_true", help="all paradigms found in --blimp")
    p.add_argument("--out", default=None, help="Parquet file to write (required unless --rules)")
    p.add_argument("--quiet", action="store_true", help="no progress bars and no coverage table")
    p.add_argument("--rules", action="store_true",
                   help="list every paradigm's rule (or why it has none) and exit")
    p.set_defaults(func=run)


def load_tokenizer_for(tokenizer: str | None, index: str | None) -> Any:
    """The tokenizer named by --tokenizer, or the one recorded in --index."""
    from exposure.tokenizer import load_tokenizer, tokenizer_for_index

    if tokenizer is not None:
        return load_tokenizer(tokenizer)
    if index is not None:
        import exposure

        return tokenizer_for_index(exposure.Index(index))
    raise UserError("give --tokenizer (a tokenizer.json) or --index (use the index's own tokenizer)")


def build_phrases(
    blimp: str | None,
    vocabulary: str | None,
    tok: Any,
    paradigms: list[str] | None,
    phenomena: list[str] | None,
    all_paradigms: bool,
    progress: bool,
) -> Any:
    """The phrases table for the chosen pairs (see :func:`exposure.critical.phrase_table`)."""
    from exposure.blimp import DEFAULT_PHENOMENA, find_vocabulary, load_blimp, read_vocabulary
    from exposure.critical import critical_phrases

    if paradigms is None and phenomena is None and not all_paradigms:
        phenomena = list(DEFAULT_PHENOMENA)
    pairs = load_blimp(blimp, paradigms=paradigms, phenomena=phenomena, progress=progress)
    if not pairs:
        raise UserError(f"no BLiMP pairs found in {blimp or 'the bundled copy'}")
    vocab = read_vocabulary(find_vocabulary(blimp, vocabulary))
    return critical_phrases(pairs, vocab, tok, progress=progress)


def format_rules() -> str:
    """Every BLiMP paradigm with its phenomenon and rule, or the reason it has none."""
    from exposure.blimp import PARADIGMS
    from exposure.critical import RULES

    lines = []
    for uid in sorted(PARADIGMS, key=lambda u: (PARADIGMS[u], u)):
        rule = RULES[uid]
        lines.append(f"{uid}  [{PARADIGMS[uid]}]  {rule.name}\n    {rule.description}")
    return "\n".join(lines)


def run(args: Any) -> int:
    import pyarrow.parquet as pq

    from exposure.critical import coverage, format_coverage

    if args.rules:
        print(format_rules())
        return 0
    if args.out is None:
        raise UserError("--out is required (the Parquet file to write)")
    t0 = time.perf_counter()
    tok = load_tokenizer_for(args.tokenizer, args.index)
    table = build_phrases(
        args.blimp, args.vocabulary, tok, args.paradigms, args.phenomena, args.all, progress=not args.quiet
    )
    out = Path(args.out)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    if not args.quiet:
        print(format_coverage(coverage(table)))
    got = sum(table.column("has_phrase").to_pylist())
    print(
        f"wrote {out}: {table.num_rows:,} pairs, {got:,} with a critical phrase, tokenizer {tok.name} "
        f"({time.perf_counter() - t0:.1f}s)",
        file=sys.stderr if args.quiet else sys.stdout,
    )
    return 0

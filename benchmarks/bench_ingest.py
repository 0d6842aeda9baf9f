"""Ingestion throughput of the text path (``exposure build --format text``) on the real shared corpora.

    PYTHONPATH=python .venv/bin/python benchmarks/bench_ingest.py                 # all corpora
    PYTHONPATH=python .venv/bin/python benchmarks/bench_ingest.py --corpora wikitext-2 --json out.json

Runs :func:`exposure.ingest.build` end to end (hash sources -> tokenize with the GPT-NeoX tokenizer +
EOS -> seeded shuffle -> pack into 2049-token items -> suffix-array index) and reports tokens per second
for the whole build and for its phases: hashing (timed separately, on the same files), indexing (the
engine's own timing from the manifest), and tokenizing + packing (the rest).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CORPORA_DIR = REPO.parent / "shared" / "data" / "corpora"
TOKENIZER = REPO.parent / "shared" / "data" / "tokenizers" / "gpt-neox-20b" / "tokenizer.json"

CORPORA: dict[str, list[str]] = {
    "wikitext-2": ["wikitext-2/train.txt", "wikitext-2/valid.txt", "wikitext-2/test.txt"],
    "gutenberg-children": ["gutenberg-children/train.txt.gz", "gutenberg-children/valid.txt.gz", "gutenberg-children/test.txt.gz"],
    "aochildes": ["aochildes-partial/utterances_age_ordered.txt.gz"],
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpora", nargs="+", choices=sorted(CORPORA), default=sorted(CORPORA))
    ap.add_argument("--item-length", type=int, default=2049)
    ap.add_argument("--items-per-step", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--memory-budget", default="8G")
    ap.add_argument("--work-dir", type=Path, default=None, help="where to write the index (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the index")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(REPO / "python"))
    from exposure.ingest import build, hash_sources

    files = [CORPORA_DIR / f for name in args.corpora for f in CORPORA[name]]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        print(f"missing corpus files: {missing}", file=sys.stderr)
        return 2
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    work.mkdir(parents=True, exist_ok=True)
    out = work / "index"
    if out.exists():
        shutil.rmtree(out)

    t = time.perf_counter()
    hash_sources(files, threads=args.threads, progress=False)
    hash_s = time.perf_counter() - t

    t0 = time.perf_counter()
    idx = build(files, "text", out, tokenizer=TOKENIZER, item_length=args.item_length, items_per_step=args.items_per_step,
                seed=0, memory_budget_bytes=args.memory_budget, threads=args.threads, progress=not args.no_progress)
    total_s = time.perf_counter() - t0
    reader = idx.metadata["reader"]
    index_s = float(idx.manifest["build"]["seconds"])
    doc_tokens = int(reader["document_tokens"])
    tok_s = max(total_s - index_s - hash_s, 1e-9)
    result = {
        "corpora": args.corpora,
        "source_bytes": sum(f.stat().st_size for f in files),
        "documents": reader["documents"],
        "document_tokens": doc_tokens,
        "index_tokens": idx.num_tokens,
        "items": idx.num_items,
        "item_length": args.item_length,
        "seconds_total": round(total_s, 2),
        "seconds_hash": round(hash_s, 2),
        "seconds_tokenize_and_pack": round(tok_s, 2),
        "seconds_index": round(index_s, 2),
        "tokens_per_second_end_to_end": round(doc_tokens / total_s),
        "tokens_per_second_tokenize": round(doc_tokens / tok_s),
        "tokens_per_second_index": round(idx.num_tokens / index_s) if index_s > 0 else None,
        "index_bytes": idx.manifest["build"].get("bytes_on_disk"),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }
    print(f"text ingestion of {', '.join(args.corpora)}: {doc_tokens:,} tokens ({result['source_bytes'] / 1e6:.1f} MB of files) "
          f"on {os.cpu_count()} cores")
    print(f"  end to end        {total_s:8.1f} s  {result['tokens_per_second_end_to_end']:>12,} tokens/s")
    print(f"  hash sources      {hash_s:8.1f} s")
    print(f"  tokenize + pack   {tok_s:8.1f} s  {result['tokens_per_second_tokenize']:>12,} tokens/s")
    print(f"  index (engine)    {index_s:8.1f} s  {result['tokens_per_second_index'] or 0:>12,} tokens/s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

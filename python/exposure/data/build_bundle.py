"""Maintainer script: rebuild the bundled demo data in this folder from the project's shared data.

Not used at run time (the package ships its output). Run from the repository root::

    PYTHONPATH=python python -m exposure.data.build_bundle /work/shared/data

It writes, deterministically (same input -> byte-identical output):

* ``corpus.txt.gz``  -- whole books from the Gutenberg children's-literature corpus (one paragraph per
  line, books separated by one empty line), chosen by title from ``manifest.tsv`` (:data:`BOOKS`);
* ``blimp/*.jsonl.gz`` -- the BLiMP paradigms of :data:`PHENOMENA`, byte copies, gzip-compressed;
* ``tokenizer.json`` -- a byte-level BPE tokenizer (:data:`VOCAB_SIZE` ids) trained on ``corpus.txt.gz``;
* ``MANIFEST.json`` -- name, bytes and sha256 of every file above.

Every gzip file is written with level 9 and no name or timestamp in the header (like ``gzip -9 -n``).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from exposure.data import DEFAULT_PHENOMENA

HERE = Path(__file__).resolve().parent

PHENOMENA: tuple[str, ...] = DEFAULT_PHENOMENA
"""BLiMP ``linguistics_term`` values bundled: every paradigm with one of these terms."""

BOOKS: tuple[tuple[str, str], ...] = (
    ("Carroll, Lewis", "Alice's Adventures in Wonderland"),
    ("Baum, L. Frank (Lyman Frank)", "The Wonderful Wizard of Oz"),
    ("Baum, L. Frank (Lyman Frank)", "The Land of Oz"),
    ("Barrie, J. M. (James Matthew)", "Peter Pan"),
    ("Burnett, Frances Hodgson", "The Secret Garden"),
    ("Montgomery, L. M. (Lucy Maud)", "Anne of Green Gables"),
    ("Nesbit, E. (Edith)", "Five Children and It"),
    ("Nesbit, E. (Edith)", "The Railway Children"),
    ("Nesbit, E. (Edith)", "The Phoenix and the Carpet"),
    ("Grimm, Jacob", "Grimm's Fairy Tales"),
)
"""(author, title) of the books in the corpus, in corpus order (exact ``manifest.tsv`` values, train split)."""

VOCAB_SIZE = 8192
SPECIAL_TOKENS = ("<|endoftext|>", "<|padding|>")  # ids 0 and 1, as in the Pythia tokenizer


def _gzip_bytes(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as f:
        f.write(data)
    return buf.getvalue()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def select_books(shared: Path, books: Sequence[tuple[str, str]] = BOOKS) -> tuple[str, list[dict[str, object]]]:
    """The corpus text (books in ``books`` order) and one record per book."""
    root = shared / "corpora" / "gutenberg-children"
    rows = (root / "manifest.tsv").read_text(encoding="utf-8").split("\n")
    header = rows[0].split("\t")
    table = [dict(zip(header, r.split("\t"))) for r in rows[1:] if r]
    with gzip.open(root / "train.txt.gz", "rt", encoding="utf-8", newline="\n") as f:
        lines = f.read().split("\n")
    parts: list[str] = []
    records: list[dict[str, object]] = []
    for author, title in books:
        match = [r for r in table if r["split"] == "train" and r["author"] == author and r["title"] == title]
        if len(match) != 1:
            raise SystemExit(f"{author} / {title}: {len(match)} rows in manifest.tsv (expected exactly 1)")
        r = match[0]
        start, count = int(r["line_start"]), int(r["line_count"])
        book = lines[start - 1 : start - 1 + count]
        if any(not line.strip() for line in book):
            raise SystemExit(f"{title}: empty line inside the book (manifest and text disagree)")
        parts.append("\n".join(book))
        records.append(
            {
                "author": author,
                "title": title,
                "train_line_start": start,
                "lines": count,
                "words": sum(len(line.split()) for line in book),
                "source_path": r["source_path"],
                "source_blob": r["source_blob"],
            }
        )
    return "\n\n".join(parts) + "\n", records


def blimp_files(shared: Path, phenomena: Sequence[str] = PHENOMENA) -> list[Path]:
    """The BLiMP paradigm files whose ``linguistics_term`` is one of ``phenomena``, sorted by name."""
    out = []
    for p in sorted((shared / "blimp").glob("*.jsonl")):
        with p.open(encoding="utf-8") as f:
            term = json.loads(f.readline())["linguistics_term"]
        if term in phenomena:
            out.append(p)
    found = set()
    for p in out:
        with p.open(encoding="utf-8") as f:
            found.add(json.loads(f.readline())["linguistics_term"])
    missing = set(phenomena) - found
    if missing:
        raise SystemExit(f"no BLiMP paradigm for {sorted(missing)}")
    return out


def train_tokenizer(corpus_text: str, vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """Byte-level BPE like GPT-2/Pythia (NFC, no prefix space), special tokens first; deterministic."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corpus.txt"
        path.write_text(corpus_text, encoding="utf-8")
        tok.train([str(path)], trainer)
    return tok


def build(shared: Path, out: Path = HERE) -> dict[str, Any]:
    shared = shared.resolve()
    text, books = select_books(shared)
    files: dict[str, bytes] = {"corpus.txt.gz": _gzip_bytes(text.encode("utf-8"))}
    blimp_records = []
    for p in blimp_files(shared):
        raw = p.read_bytes()
        files[f"blimp/{p.name}.gz"] = _gzip_bytes(raw)
        blimp_records.append({"file": p.name, "bytes": len(raw), "sha256": _sha256(raw)})
    tok = train_tokenizer(text)
    files["tokenizer.json"] = (tok.to_str(pretty=False) + "\n").encode("utf-8")
    (out / "blimp").mkdir(parents=True, exist_ok=True)
    for stale in (out / "blimp").glob("*.jsonl.gz"):
        if f"blimp/{stale.name}" not in files:
            stale.unlink()
    for name, data in files.items():
        (out / name).write_bytes(data)
    manifest = {
        "corpus": {
            "file": "corpus.txt.gz",
            "source": "gutenberg-children/train.txt.gz",
            "books": books,
            "lines": text.count("\n"),
            "words": len(text.split()),
            "bytes_uncompressed": len(text.encode("utf-8")),
            "sha256_uncompressed": _sha256(text.encode("utf-8")),
        },
        "blimp": {"phenomena": list(PHENOMENA), "paradigms": blimp_records},
        "tokenizer": {"file": "tokenizer.json", "type": "byte-level BPE", "vocab_size": tok.get_vocab_size(),
                      "special_tokens": list(SPECIAL_TOKENS), "trained_on": "corpus.txt.gz"},
        "files": {name: {"bytes": len(data), "sha256": _sha256(data)} for name, data in sorted(files.items())},
    }
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("shared_data", type=Path, help="the shared data folder (holds blimp/ and corpora/)")
    ap.add_argument("--out", type=Path, default=HERE, help="output folder (default: this package folder)")
    args = ap.parse_args(argv)
    files: dict[str, dict[str, Any]] = build(args.shared_data, args.out)["files"]
    total = sum(int(f["bytes"]) for f in files.values())
    print(f"wrote {len(files)} files, {total / 1e6:.2f} MB, to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

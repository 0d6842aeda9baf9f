"""The bundled demo data (python/exposure/data): present, intact, small, reproducible, and fit for the demo."""

from __future__ import annotations

import collections
import gzip
import hashlib
import json
import re
from pathlib import Path

import pytest
from exposure import data
from exposure.data import build_bundle
from exposure.tokenizer import load_tokenizer

from _corpus_files import SHARED  # noqa: E402
PACKAGE_FILES = ("corpus.txt.gz", "tokenizer.json", "MANIFEST.json", "ATTRIBUTION.md", "__init__.py", "build_bundle.py")


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def test_files_exist_and_match_the_manifest() -> None:
    m = data.manifest()
    for name, rec in m["files"].items():
        raw = (data.DATA_DIR / name).read_bytes()
        assert len(raw) == rec["bytes"] and _sha(raw) == rec["sha256"], name
    for name in PACKAGE_FILES:
        assert (data.DATA_DIR / name).is_file(), name
    assert data.corpus_path().name == "corpus.txt.gz"
    assert data.tokenizer_path().name == "tokenizer.json"
    assert len(data.blimp_files()) == 25
    total = sum(p.stat().st_size for p in data.DATA_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert total < 8_000_000, f"bundled data is {total / 1e6:.1f} MB"


def test_blimp_paradigms_are_the_five_default_phenomena() -> None:
    terms: collections.Counter[str] = collections.Counter()
    records = {r["file"]: r for r in data.manifest()["blimp"]["paradigms"]}
    for p in data.blimp_files():
        raw = gzip.decompress(p.read_bytes())
        rec = records[p.name[: -len(".gz")]]
        assert _sha(raw) == rec["sha256"] and len(raw) == rec["bytes"]
        rows = [json.loads(line) for line in raw.decode("utf-8").splitlines()]
        assert len(rows) == 1000
        assert {r["UID"] for r in rows} == {p.name[: -len(".jsonl.gz")]}
        assert [r["pairID"] for r in rows] == [str(i) for i in range(1000)]
        terms.update(r["linguistics_term"] for r in rows)
    assert set(terms) == set(data.DEFAULT_PHENOMENA)
    assert terms["determiner_noun_agreement"] == 8000 and terms["subject_verb_agreement"] == 6000
    assert terms["anaphor_agreement"] == 2000 and terms["irregular_forms"] == 2000 and terms["npi_licensing"] == 7000


def _corpus_text() -> str:
    with gzip.open(data.corpus_path(), "rt", encoding="utf-8", newline="\n") as f:
        return f.read()


def test_corpus_is_the_listed_books() -> None:
    text = _corpus_text()
    c = data.manifest()["corpus"]
    assert _sha(text.encode("utf-8")) == c["sha256_uncompressed"]
    books = text.rstrip("\n").split("\n\n")
    assert len(books) == len(c["books"]) == len(build_bundle.BOOKS)
    for book, rec in zip(books, c["books"]):
        assert book.count("\n") + 1 == rec["lines"]
    assert 3_000_000 < len(text.encode("utf-8")) < 4_500_000
    assert "Alice" in books[0] and "Dorothy" in books[1]


def _critical_bigrams(uid: str) -> list[tuple[str, str]]:
    """(determiner or subject noun, noun or verb) of each pair's good sentence, from BLiMP's prefix fields."""
    out = []
    with gzip.open(data.blimp_dir() / f"{uid}.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r["one_prefix_method"]:
                out.append((r["one_prefix_prefix"].split()[-1], r["one_prefix_word_good"].split()[0]))
            else:
                out.append((r["two_prefix_prefix_good"].split()[-1], r["two_prefix_word"].split()[0]))
    return out


def test_corpus_has_seen_and_unseen_critical_phrases() -> None:
    """Many BLiMP critical phrases occur in the corpus and many do not: both proxy splits exist."""
    words = re.findall(r"[A-Za-z]+(?:'[a-z]+)?", _corpus_text())
    bigrams = collections.Counter(zip(words, words[1:]))
    for uids, lo, hi in (
        (["determiner_noun_agreement_1", "determiner_noun_agreement_2",
          "determiner_noun_agreement_irregular_1", "determiner_noun_agreement_irregular_2"], 0.10, 0.60),
        (["regular_plural_subject_verb_agreement_1", "regular_plural_subject_verb_agreement_2",
          "irregular_plural_subject_verb_agreement_1", "irregular_plural_subject_verb_agreement_2"], 0.03, 0.60),
    ):
        pairs = [bg for u in uids for bg in _critical_bigrams(u)]
        seen = sum(bigrams[bg] > 0 for bg in pairs) / len(pairs)
        assert lo < seen < hi, (uids[0], seen)
    assert bigrams[("these", "children")] > 0 and bigrams[("this", "children")] == 0


def test_tokenizer() -> None:
    tok = load_tokenizer(data.tokenizer_path())
    assert tok.vocab_size == 8192 and tok.eos_id == 0
    assert tok.tokenizer.token_to_id("<|padding|>") == 1
    assert len(tok.encode(" these dogs")) == 2
    sample = _corpus_text()[:20_000]
    assert tok.decode(tok.encode(sample)) == sample
    ids = tok.encode(sample)
    assert len(sample) / len(ids) > 3.5  # ~4 characters per token on this text


@pytest.mark.skipif(not (SHARED / "blimp").is_dir(), reason="needs the project's shared data folder")
def test_bundle_rebuilds_byte_identically(tmp_path: Path) -> None:
    m = build_bundle.build(SHARED, tmp_path)
    shipped = data.manifest()
    assert m == shipped
    for name in m["files"]:  # type: ignore[union-attr]
        assert (tmp_path / name).read_bytes() == (data.DATA_DIR / name).read_bytes(), name
    expected = sorted(p.name for p in (SHARED / "blimp").glob("*.jsonl")
                      if json.loads(p.open(encoding="utf-8").readline())["linguistics_term"] in data.DEFAULT_PHENOMENA)
    assert [p.name[: -len(".gz")] for p in data.blimp_files()] == expected

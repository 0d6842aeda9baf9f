"""Bundled demo data (package data; sources and licences in ``ATTRIBUTION.md`` next to this file).

* :func:`corpus_path` -- ``corpus.txt.gz``: twelve classic children's books from Project Gutenberg
  (public domain), one paragraph per line, books separated by an empty line (3.7 MB of text);
* :func:`blimp_dir` -- ``blimp/*.jsonl.gz``: the 25 BLiMP paradigms (CC BY 4.0) of the five default
  phenomena (:data:`DEFAULT_PHENOMENA`), byte-identical to BLiMP's jsonl files once decompressed;
* :func:`tokenizer_path` -- ``tokenizer.json``: a byte-level BPE tokenizer with 8,192 ids trained on the
  corpus (``<|endoftext|>`` = 0, ``<|padding|>`` = 1, as in Pythia), for fast CPU demos.

``build_bundle.py`` (maintainers only) regenerates all of it from the project's shared data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent

DEFAULT_PHENOMENA: tuple[str, ...] = (
    "determiner_noun_agreement",
    "subject_verb_agreement",
    "anaphor_agreement",
    "irregular_forms",
    "npi_licensing",
)
"""BLiMP ``linguistics_term`` values whose paradigms are bundled."""


def _existing(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(
            f"bundled data file {path} is missing: the exposure package was installed without its data files"
        )
    return path


def corpus_path() -> Path:
    """The bundled English corpus (gzip-compressed UTF-8 text, one paragraph per line)."""
    return _existing(DATA_DIR / "corpus.txt.gz")


def blimp_dir() -> Path:
    """Folder of the bundled BLiMP paradigms, one ``{UID}.jsonl.gz`` per paradigm."""
    return _existing(DATA_DIR / "blimp")


def blimp_files() -> list[Path]:
    """The bundled BLiMP paradigm files, sorted by name."""
    return sorted(blimp_dir().glob("*.jsonl.gz"))


def tokenizer_path() -> Path:
    """The bundled demo tokenizer (Hugging Face ``tokenizer.json``)."""
    return _existing(DATA_DIR / "tokenizer.json")


def manifest() -> dict[str, Any]:
    """``MANIFEST.json``: the corpus's books, the BLiMP files, the tokenizer, and every file's sha256."""
    return json.loads(_existing(DATA_DIR / "MANIFEST.json").read_text(encoding="utf-8"))


__all__ = [
    "DATA_DIR",
    "DEFAULT_PHENOMENA",
    "blimp_dir",
    "blimp_files",
    "corpus_path",
    "manifest",
    "tokenizer_path",
]

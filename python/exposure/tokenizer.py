"""Load a Hugging Face ``tokenizer.json`` and identify it by the sha256 of its bytes.

An index records the tokenizer it was built with (``metadata["tokenizer"]``: name, sha256, vocab size,
EOS id, and the file name of the copy kept inside the index directory). Phrases must be tokenized with
that same tokenizer; :meth:`LoadedTokenizer.check_matches` refuses any other.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

TOKENIZER_FILE = "tokenizer.json"
"""File name of the tokenizer copy kept inside an index directory."""

_EOS_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>", "[SEP]")


class TokenizerMismatchError(ValueError):
    """A tokenizer other than the one an index was built with."""


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


@dataclass(frozen=True)
class LoadedTokenizer:
    """A loaded ``tokenizers.Tokenizer`` plus what identifies it."""

    tokenizer: Tokenizer
    name: str
    sha256: str
    path: Path
    eos_id: int | None
    vocab_size: int

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` as written (no special tokens added)."""
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of many texts (batched, on all cores), no special tokens added."""
        encs = self.tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)
        return [list(e.ids) for e in encs]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def pieces(self, ids: Sequence[int]) -> list[str]:
        return [self.tokenizer.id_to_token(int(i)) or f"<{int(i)}>" for i in ids]

    def to_metadata(self) -> dict[str, Any]:
        """What an index records about its tokenizer."""
        return {
            "name": self.name,
            "sha256": self.sha256,
            "vocab_size": self.vocab_size,
            "eos_id": self.eos_id,
            "file": TOKENIZER_FILE,
            "source_path": str(self.path),
        }

    def check_matches(self, index_metadata: dict[str, Any] | None) -> None:
        """Raise :class:`TokenizerMismatchError` unless this is the tokenizer the index was built with.

        ``index_metadata`` is the index's ``metadata`` (``Index.metadata``) or its ``"tokenizer"`` entry.
        An index built from pre-tokenized data without a tokenizer accepts any tokenizer whose ids fit.
        """
        meta = index_metadata or {}
        rec = meta.get("tokenizer", meta if "sha256" in meta else None)
        if rec is None:
            vocab = meta.get("vocab_size")
            if vocab is not None and self.vocab_size > int(vocab):
                raise TokenizerMismatchError(
                    f"tokenizer {self.name} ({self.path}) has {self.vocab_size} ids but the index's vocabulary is {vocab}"
                )
            return
        if rec.get("sha256") != self.sha256:
            raise TokenizerMismatchError(
                f"tokenizer {self.name} ({self.path}, sha256 {self.sha256[:12]}…) is not the index's tokenizer "
                f"{rec.get('name')!r} (sha256 {str(rec.get('sha256'))[:12]}…); token ids would not match. "
                f"Use the index's own tokenizer (leave out --tokenizer)"
            )


def _read_eos(tok: Tokenizer, json_path: Path) -> int | None:
    cfg = json_path.parent / "tokenizer_config.json"
    if cfg.is_file():
        try:
            eos = json.loads(cfg.read_text(encoding="utf-8")).get("eos_token")
        except (OSError, json.JSONDecodeError):
            eos = None
        if isinstance(eos, dict):
            eos = eos.get("content")
        if isinstance(eos, str) and tok.token_to_id(eos) is not None:
            return int(tok.token_to_id(eos))
    for cand in _EOS_CANDIDATES:
        tid = tok.token_to_id(cand)
        if tid is not None:
            return int(tid)
    return None


def load_tokenizer(path_or_dir: str | os.PathLike[str]) -> LoadedTokenizer:
    """Load ``tokenizer.json`` (a file, or a directory holding one).

    ``name`` is the directory name for a file called ``tokenizer.json`` (``.../gpt-neox-20b/tokenizer.json``
    -> ``gpt-neox-20b``), otherwise the file's stem. ``sha256`` is that of the JSON file's bytes.
    """
    p = Path(path_or_dir)
    if p.is_dir():
        p = p / TOKENIZER_FILE
    if not p.is_file():
        raise FileNotFoundError(f"no tokenizer file at {p} (give a tokenizer.json or a directory holding one)")
    try:
        tok = Tokenizer.from_file(str(p))
    except Exception as exc:  # tokenizers raises a plain Exception on malformed JSON
        raise ValueError(f"{p}: not a Hugging Face tokenizer.json ({exc})") from None
    name = p.parent.name if p.name == TOKENIZER_FILE else p.stem
    return LoadedTokenizer(
        tokenizer=tok,
        name=name or p.stem,
        sha256=sha256_file(p),
        path=p.resolve(),
        eos_id=_read_eos(tok, p),
        vocab_size=int(tok.get_vocab_size(with_added_tokens=True)),
    )


def check_matches(tokenizer: LoadedTokenizer, index_metadata: dict[str, Any] | None) -> None:
    """Function form of :meth:`LoadedTokenizer.check_matches`."""
    tokenizer.check_matches(index_metadata)


def tokenizer_for_index(index: Any, override: str | os.PathLike[str] | None = None) -> LoadedTokenizer:
    """The tokenizer to use for queries on ``index`` (an ``exposure.Index``).

    Without ``override``: the copy stored in the index directory (checked against the recorded sha256),
    else the recorded source path. With ``override``: that tokenizer, refused unless it matches.
    """
    meta = dict(getattr(index, "metadata", None) or {})
    meta.setdefault("vocab_size", getattr(index, "vocab_size", None))
    if override is not None:
        tok = load_tokenizer(override)
        tok.check_matches(meta)
        return tok
    rec = meta.get("tokenizer")
    if rec is None:
        raise ValueError(
            f"index {getattr(index, 'path', '?')} was built without a tokenizer; pass --tokenizer to say which one to use"
        )
    candidates = [Path(index.path) / rec.get("file", TOKENIZER_FILE)]
    if rec.get("source_path"):
        candidates.append(Path(rec["source_path"]))
    for cand in candidates:
        if cand.is_file():
            tok = load_tokenizer(cand)
            tok.check_matches(meta)
            return dataclasses.replace(tok, name=str(rec.get("name") or tok.name))
    raise FileNotFoundError(
        f"index {index.path}: its tokenizer {rec.get('name')!r} is neither in the index directory nor at "
        f"{rec.get('source_path')}; pass --tokenizer"
    )


__all__ = [
    "TOKENIZER_FILE",
    "LoadedTokenizer",
    "TokenizerMismatchError",
    "check_matches",
    "load_tokenizer",
    "sha256_file",
    "tokenizer_for_index",
]

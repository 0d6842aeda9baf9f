"""The pairs table (``exposure splits`` output): reading, validation, tokenization, the tokenizer check."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tokenizers import Tokenizer

SIDES = ("good", "bad")
INDEX_FIELDS = ("critical_start", "critical_token", "context_token")
REQUIRED_COLUMNS = ("pair_uid", "sentence_good", "sentence_bad") + tuple(
    f"{side}_{field}" for side in SIDES for field in INDEX_FIELDS
)
TOKENIZER_SHA_KEY = b"exposure.tokenizer_sha256"
CHECKPOINTS_KEY = b"exposure.checkpoints"


class EvalError(ValueError):
    """A user-facing problem with the inputs of ``exposure eval`` (bad table, wrong tokenizer, missing step, ...)."""


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class PairsSource:
    """The pairs table as read, plus where it came from (``path``/``sha256`` are ``None`` for an in-memory table)."""

    table: pa.Table
    path: Path | None
    sha256: str | None

    @property
    def metadata(self) -> dict[bytes, bytes]:
        return dict(self.table.schema.metadata or {})

    @property
    def tokenizer_sha256(self) -> str | None:
        value = self.metadata.get(TOKENIZER_SHA_KEY)
        return value.decode() if value else None

    @property
    def checkpoints(self) -> tuple[int, ...] | None:
        value = self.metadata.get(CHECKPOINTS_KEY)
        return tuple(int(s) for s in json.loads(value)) if value else None


def read_pairs(pairs: str | Path | pa.Table) -> PairsSource:
    """Read a pairs table from a Parquet file (or take a ``pyarrow.Table``) and check its columns."""
    if isinstance(pairs, pa.Table):
        source = PairsSource(pairs, None, None)
    else:
        path = Path(pairs)
        if not path.is_file():
            raise FileNotFoundError(f"pairs table {path} does not exist")
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise EvalError(f"{path} is not a readable Parquet pairs table: {exc}") from exc
        source = PairsSource(table, path.resolve(), file_sha256(path))
    missing = [c for c in REQUIRED_COLUMNS if c not in source.table.column_names]
    if missing:
        raise EvalError(
            f"pairs table lacks column(s) {', '.join(missing)} (see docs/CONTRACTS.md, 'Pairs / splits table')"
        )
    if source.table.num_rows == 0:
        raise EvalError("pairs table has no rows")
    uids = source.table.column("pair_uid").to_pylist()
    if len(set(uids)) != len(uids):
        raise EvalError("pairs table has duplicate pair_uid values")
    return source


def content_sha256(table: pa.Table) -> str:
    """Fingerprint of what scoring reads (uids, sentences, token indices), independent of the file's encoding."""
    digest = hashlib.sha256()
    for name in REQUIRED_COLUMNS:
        values = table.column(name).to_pylist()
        digest.update(name.encode())
        digest.update(json.dumps(values, ensure_ascii=False).encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class EncodedPairs:
    """Tokenized pairs. Sequence ``2*i + side`` is pair ``i``'s good (side 0) or bad (side 1) sentence.

    ``tokens[k]``: the sentence's token ids (no prefix, no special tokens). Index arrays are int64 ``[n, 2]``
    of token indices into ``tokens`` (``-1`` = none); model position = index + 1 (after the prefix token).
    ``prefix_id`` / ``next_id``: int64, one entry per sentence token (sequence by sequence, as :meth:`offsets`): the
    id of the prefix that predicts the token (``tokens[k][:t]`` after the prefix token; 0 = the prefix token alone)
    and of that prefix extended by the token (``tokens[k][:t + 1]``). Equal prefixes share an id across all
    sentences (the good and bad sentence up to their first difference, and every sentence at its first token), so
    the next-token distribution is computed once per prefix and a token's log-probability once per ``next_id``.
    ``n_prefixes``: ids in use.
    """

    pair_uid: list[str]
    tokens: list[np.ndarray]
    critical_start: np.ndarray
    critical_token: np.ndarray
    context_token: np.ndarray
    prefix_id: np.ndarray
    next_id: np.ndarray
    n_prefixes: int

    @property
    def n_pairs(self) -> int:
        return len(self.pair_uid)

    def lengths(self) -> np.ndarray:
        """int64 ``[2n]`` sentence lengths in tokens (without the prefix)."""
        return np.fromiter((len(t) for t in self.tokens), dtype=np.int64, count=len(self.tokens))

    def offsets(self) -> np.ndarray:
        """int64 ``[2n + 1]``: sentence ``k``'s tokens are entries ``offsets[k]:offsets[k + 1]`` of flat arrays."""
        return np.concatenate([[0], np.cumsum(self.lengths())])


def prefix_ids(sequences: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, int]:
    """Ids of the prefix before and after each token of each sequence (nodes of a trie over all sequences): two
    flat int64 arrays in sequence order, 0 for the empty prefix; equal prefixes get equal ids. Returns
    (ids before, ids after, number of ids)."""
    children: dict[tuple[int, int], int] = {}
    before: list[int] = []
    after: list[int] = []
    for seq in sequences:
        node = 0
        for tok in seq.tolist():
            before.append(node)
            node = children.setdefault((node, tok), len(children) + 1)
            after.append(node)
    return np.asarray(before, dtype=np.int64), np.asarray(after, dtype=np.int64), len(children) + 1


def _index_array(table: pa.Table, field: str) -> np.ndarray:
    columns = []
    for side in SIDES:
        column = table.column(f"{side}_{field}")
        if column.null_count:
            raise EvalError(f"column {side}_{field} has nulls; use -1 for 'no token'")
        columns.append(column.to_numpy().astype(np.int64))
    return np.stack(columns, axis=1)


def encode_pairs(table: pa.Table, tokenizer: Tokenizer) -> EncodedPairs:
    """Tokenize both sentences of every pair (no special tokens) and check the token indices against them."""
    uids = [str(u) for u in table.column("pair_uid").to_pylist()]
    good = table.column("sentence_good").to_pylist()
    bad = table.column("sentence_bad").to_pylist()
    sentences: list[str] = []
    for uid, g, b in zip(uids, good, bad, strict=True):
        if not isinstance(g, str) or not isinstance(b, str) or not g or not b:
            raise EvalError(f"pair {uid}: both sentences must be non-empty strings")
        sentences += [g, b]
    encodings = tokenizer.encode_batch(sentences, add_special_tokens=False)
    tokens = [np.asarray(e.ids, dtype=np.int64) for e in encodings]
    start, crit, ctx = (_index_array(table, f) for f in INDEX_FIELDS)
    lengths = np.fromiter((len(t) for t in tokens), dtype=np.int64, count=len(tokens)).reshape(-1, 2)
    if (lengths == 0).any():
        row = int(np.argwhere(lengths == 0)[0, 0])
        raise EvalError(f"pair {uids[row]}: a sentence encodes to no tokens")
    has_crit = crit >= 0
    bad_rows = (
        (crit < -1)
        | (has_crit & ((start < 0) | (start > crit) | (crit >= lengths)))
        | (~has_crit & (start != -1))
        | (ctx < -1)
        | (ctx >= lengths)
    )
    if bad_rows.any():
        row, side = (int(v) for v in np.argwhere(bad_rows)[0])
        name = SIDES[side]
        raise EvalError(
            f"pair {uids[row]}: {name} token indices (critical_start={start[row, side]}, "
            f"critical_token={crit[row, side]}, context_token={ctx[row, side]}) do not fit the "
            f"{lengths[row, side]} tokens of {sentences[2 * row + side]!r}; were the pairs built with another "
            f"tokenizer? ({int(bad_rows.any(axis=1).sum())} pair(s) affected)"
        )
    before, after, n_ids = prefix_ids(tokens)
    return EncodedPairs(uids, tokens, start, crit, ctx, before, after, n_ids)


def check_tokenizer(
    run_tokenizer: Path,
    expected_sha256: str | None,
    sentences: list[str],
    reference: Path | None = None,
) -> str:
    """Check the run's ``tokenizer.json`` against the one the pairs were built with; return how it was checked.

    * ``"sha256"``: the run's file is byte-identical to the pairs' tokenizer (``exposure.tokenizer_sha256``).
    * ``"equivalent"``: it is not (transformers re-serializes tokenizers when saving a checkpoint), but the
      ``reference`` file is the pairs' tokenizer, and the run's tokenizer has the same vocabulary and encodes
      every sentence of the pairs to the same ids.
    * ``"unchecked"``: the pairs carry no tokenizer fingerprint and no reference was given.

    Anything else raises :class:`EvalError`.
    """
    run_sha = file_sha256(run_tokenizer)
    if expected_sha256 is not None and run_sha == expected_sha256:
        return "sha256"
    if reference is None:
        if expected_sha256 is None:
            return "unchecked"
        raise EvalError(
            f"tokenizer mismatch: the run's {run_tokenizer} has sha256 {run_sha}, but the pairs were built with a "
            f"tokenizer of sha256 {expected_sha256} (pairs metadata exposure.tokenizer_sha256). Score them with the "
            "model they were built for. If the run's tokenizer is only a re-serialized copy of the same tokenizer, "
            "pass the original file with --tokenizer to check equivalence by vocabulary and encodings."
        )
    reference = Path(reference)
    if not reference.is_file():
        raise FileNotFoundError(f"reference tokenizer {reference} does not exist")
    ref_sha = file_sha256(reference)
    if expected_sha256 is not None and ref_sha != expected_sha256:
        raise EvalError(
            f"the reference tokenizer {reference} (sha256 {ref_sha}) is not the one the pairs were built with "
            f"(sha256 {expected_sha256})"
        )
    try:
        ours, theirs = Tokenizer.from_file(str(run_tokenizer)), Tokenizer.from_file(str(reference))
    except Exception as exc:  # the tokenizers library raises a plain Exception on bad files
        raise EvalError(f"cannot load tokenizer: {exc}") from exc
    if ours.get_vocab(with_added_tokens=True) != theirs.get_vocab(with_added_tokens=True):
        raise EvalError(
            f"tokenizer mismatch: the run's {run_tokenizer} and the reference {reference} have different vocabularies"
        )
    a = ours.encode_batch(sentences, add_special_tokens=False)
    b = theirs.encode_batch(sentences, add_special_tokens=False)
    for sentence, x, y in zip(sentences, a, b, strict=True):
        if x.ids != y.ids:
            raise EvalError(
                f"tokenizer mismatch: the run's tokenizer encodes {sentence!r} as {x.ids}, the reference as {y.ids}"
            )
    return "equivalent"

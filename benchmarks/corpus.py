"""Synthetic but realistic token streams for the engine benchmarks.

Tokens follow a Zipf law; text is built from a Zipf-distributed inventory of multi-token phrases
(so n-grams recur the way they do in real text: Markov structure at the phrase level); documents
have log-normal lengths and a share of them (7 % by default) are exact copies of earlier
documents, as in web crawls.
"""

from __future__ import annotations

import numpy as np


def zipf_ids(rng: np.random.Generator, n: int, vocab: int, a: float = 1.1) -> np.ndarray:
    ranks = np.arange(1, vocab + 1, dtype=np.float64)
    p = ranks**-a
    p /= p.sum()
    return rng.choice(vocab, size=n, p=p)


def realistic_stream(n_tokens: int, vocab: int = 50_000, dup_share: float = 0.07, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Phrase inventory: 2-8 Zipf tokens each.
    n_phr = 400_000
    plen = rng.integers(2, 9, size=n_phr)
    pstart = np.concatenate([[0], np.cumsum(plen)[:-1]])
    inventory = zipf_ids(rng, int(plen.sum()), vocab).astype(np.uint32)
    # Sample phrases (Zipf over the inventory) until enough tokens.
    n_pick = int(n_tokens / plen.mean() * 1.1) + 16
    picks = zipf_ids(rng, n_pick, n_phr, a=1.05)
    lens = plen[picks]
    ends = np.cumsum(lens)
    starts = pstart[picks]
    idx = np.arange(int(ends[-1])) - np.repeat(ends - lens, lens) + np.repeat(starts, lens)
    text = inventory[idx][:n_tokens]
    # Documents: log-normal lengths; replace dup_share of them by copies of earlier documents.
    doc_lens = np.maximum(20, rng.lognormal(6.5, 1.0, size=n_tokens // 200 + 16).astype(np.int64))
    doc_ends = np.cumsum(doc_lens)
    doc_ends = doc_ends[doc_ends < n_tokens]
    doc_starts = np.concatenate([[0], doc_ends[:-1]])
    out = text.copy()
    n_docs = doc_starts.size
    dups = rng.choice(np.arange(1, n_docs), size=int(dup_share * n_docs), replace=False)
    for d in np.sort(dups):
        src = rng.integers(0, d)
        length = min(doc_ends[d] - doc_starts[d], doc_ends[src] - doc_starts[src])
        out[doc_starts[d] : doc_starts[d] + length] = out[doc_starts[src] : doc_starts[src] + length]
    dtype = np.uint16 if vocab <= 65535 else np.uint32
    return out.astype(dtype)


def sample_phrases(stream: np.ndarray, n: int, seed: int = 1, lengths: tuple[int, int] = (1, 6)) -> list[np.ndarray]:
    """Phrases taken from the stream (so most occur), lengths uniform in [lo, hi]."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        m = int(rng.integers(lengths[0], lengths[1] + 1))
        s = int(rng.integers(0, stream.size - m))
        out.append(stream[s : s + m].copy())
    return out

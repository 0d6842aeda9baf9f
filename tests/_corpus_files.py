"""Writers of small corpus files in the exact on-disk layouts of /work/shared/FORMATS.md, for the tests.

These write bytes with ``struct`` / raw numpy ``tofile`` independently of the readers under test.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from exposure.data import blimp_dir, corpus_path, tokenizer_path

# the project's shared data folder sits beside the repository (CI: beside the fresh clone)
SHARED = Path(os.environ.get("EXPOSURE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
NEOX_TOKENIZER = SHARED / "tokenizers" / "gpt-neox-20b" / "tokenizer.json"
GPT2_TOKENIZER = SHARED / "tokenizers" / "gpt2" / "tokenizer.json"
needs_tokenizers = pytest.mark.skipif(  # for tests that hold token ids worked out by hand for these two
    not (NEOX_TOKENIZER.is_file() and GPT2_TOKENIZER.is_file()), reason=f"shared tokenizers not found under {SHARED}"
)

CODE_DTYPES = {1: "<u1", 2: "<i1", 3: "<i2", 4: "<i4", 5: "<i8", 6: "<f4", 7: "<f8", 8: "<u2"}


def idx_bytes(sizes: Sequence[int], dtype_code: int, doc_idx: Sequence[int] | None = None, pointers: Sequence[int] | None = None) -> bytes:
    """The bytes of a Megatron MMIDIDX ``.idx`` (version 1) for items of ``sizes`` tokens."""
    itemsize = np.dtype(CODE_DTYPES.get(dtype_code, "<u2")).itemsize
    if pointers is None:
        pointers, pos = [], 0
        for s in sizes:
            pointers.append(pos)
            pos += s * itemsize
    if doc_idx is None:
        doc_idx = list(range(len(sizes) + 1))
    out = bytearray(b"MMIDIDX\x00\x00")
    out += struct.pack("<Q", 1)
    out += struct.pack("<B", dtype_code)
    out += struct.pack("<Q", len(sizes))
    out += struct.pack("<Q", len(doc_idx))
    out += struct.pack(f"<{len(sizes)}i", *sizes)
    out += struct.pack(f"<{len(pointers)}q", *pointers)
    out += struct.pack(f"<{len(doc_idx)}q", *doc_idx)
    return bytes(out)


def write_mmidx(prefix: Path, items: Sequence[Sequence[int]], dtype_code: int = 8) -> tuple[Path, Path]:
    """Write ``prefix.bin`` + ``prefix.idx`` holding ``items`` (token lists) in order."""
    dt = CODE_DTYPES[dtype_code]
    data = b"".join(np.asarray(it, dtype=dt).tobytes() for it in items)
    bin_path, idx_path = Path(f"{prefix}.bin"), Path(f"{prefix}.idx")
    bin_path.write_bytes(data)
    idx_path.write_bytes(idx_bytes([len(it) for it in items], dtype_code))
    return bin_path, idx_path


def write_mmidx_shards(
    directory: Path, items: Sequence[Sequence[int]], cuts: Sequence[int], stem: str = "document", dtype_code: int = 8
) -> tuple[list[Path], Path]:
    """Pythia's sharded layout: the joined ``.bin`` bytes split at byte offsets ``cuts`` into
    ``STEM-0000i-of-0000n.bin`` files, plus one ``STEM.idx`` for the joined file."""
    dt = CODE_DTYPES[dtype_code]
    data = b"".join(np.asarray(it, dtype=dt).tobytes() for it in items)
    edges = [0, *cuts, len(data)]
    n = len(edges) - 1
    paths = []
    for i in range(n):
        p = directory / f"{stem}-{i:05d}-of-{n:05d}.bin"
        p.write_bytes(data[edges[i] : edges[i + 1]])
        paths.append(p)
    idx = directory / f"{stem}.idx"
    idx.write_bytes(idx_bytes([len(it) for it in items], dtype_code))
    return paths, idx


def write_raw(path: Path, tokens: Sequence[int] | np.ndarray, dtype: str) -> Path:
    """A headerless little-endian token array (OLMo's ``.npy``-named files, ``global_indices.npy``)."""
    np.asarray(tokens, dtype=np.dtype(dtype).newbyteorder("<")).tofile(path)
    return path


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` as UTF-8, gzip- or zstd-compressed according to the suffix."""
    raw = text.encode("utf-8")
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(raw))
    elif path.name.endswith(".zst"):
        import zstandard

        path.write_bytes(zstandard.ZstdCompressor().compress(raw))
    else:
        path.write_bytes(raw)
    return path


def write_jsonl(path: Path, records: Sequence[object]) -> Path:
    return write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def write_parquet(path: Path, column: str, values: Sequence[str | None]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({column: pa.array(list(values), type=pa.string()), "n": list(range(len(values)))}), path)
    return path


def small_index(tokens: Sequence[int] | np.ndarray, out: Path, vocab_size: int, item_length: int):
    """A real engine index over a tiny stream (fed to IndexBuilder directly: ``build_index`` balances its
    shards by the total token count, which it refuses below 1024 tokens per shard)."""
    import exposure

    arr = np.asarray(tokens, dtype=np.uint16)
    with exposure.IndexBuilder(out, dtype=np.uint16, vocab_size=vocab_size, memory_budget_bytes=1 << 30, threads=1, progress=False) as b:
        b.add(arr, item_length=item_length)
        return b.finish({})


def small_bpe_tokenizer(path: Path, vocab_size: int = 1000, lines: int = 2000) -> Path:
    """A byte-level BPE tokenizer (``<|endoftext|>`` = 0) trained on the start of the bundled corpus, written to
    ``path`` and removed at exit: a second tokenizer, unlike the bundled one, where the shared ones are absent."""
    import atexit
    import shutil

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    with gzip.open(corpus_path(), "rt", encoding="utf-8") as handle:
        text = [line for _, line in zip(range(lines), handle)]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(text, trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    atexit.register(shutil.rmtree, path.parent, True)
    return path


# Two different tokenizers for tests that work with any: the shared GPT-NeoX and GPT-2 ones, else (a user's
# machine) the bundled demo tokenizer and a small BPE made here.
if NEOX_TOKENIZER.is_file() and GPT2_TOKENIZER.is_file():
    TOKENIZER, OTHER_TOKENIZER = NEOX_TOKENIZER, GPT2_TOKENIZER
else:
    TOKENIZER = tokenizer_path()
    OTHER_TOKENIZER = small_bpe_tokenizer(Path(tempfile.mkdtemp(prefix="exposure-tests-")) / "tokenizer.json")
# BLiMP: the shared copy (all 67 paradigms), else the one bundled with the package (the default phenomena's 25)
BLIMP = SHARED / "blimp" if (SHARED / "blimp").is_dir() else blimp_dir()

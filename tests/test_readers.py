"""Readers: Pythia .bin/.idx (single and sharded), OLMo token files + global indices, text corpora.

Every file is written by the test in the exact layout of FORMATS.md (tests/_corpus_files.py) and the
expected streams are written out by hand.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from _corpus_files import (
    NEOX_TOKENIZER,
    TOKENIZER,
    idx_bytes,
    needs_tokenizers,
    write_jsonl,
    write_mmidx,
    write_mmidx_shards,
    write_parquet,
    write_raw,
    write_text,
)
from exposure.readers import CorpusError
from exposure.readers.olmo import (
    OlmoReader,
    check_permutation,
    config_data_paths,
    localize,
    read_global_indices,
    repetitive_rows,
)
from exposure.readers.pythia import PythiaReader, read_idx, resolve_pythia_sources
from exposure.readers.text import (
    PackedTextReader,
    iter_documents,
    shuffle_order,
    text_sources,
    tokenize_corpus,
)
from exposure.tokenizer import load_tokenizer


def _stream(reader, max_tokens):
    chunks = list(reader.chunks(max_tokens))
    return chunks, (np.concatenate([c.tokens for c in chunks]) if chunks else np.zeros(0))


# ---------------------------------------------------------------- Pythia


ITEMS5 = [[10, 11, 12, 13, 14], [20, 21, 22, 23, 24], [30, 31, 32, 33, 34], [40, 41, 42, 43, 44],
          [50, 51, 52, 53, 54], [60, 61, 62, 63, 64], [65535, 0, 1, 2, 3]]


def test_pythia_single_file_fixed_items(tmp_path: Path) -> None:
    write_mmidx(tmp_path / "data", ITEMS5)
    r = PythiaReader([tmp_path / "data.bin"])
    assert (r.num_items, r.num_tokens, r.item_length, r.dtype) == (7, 35, 5, np.uint16)
    chunks, stream = _stream(r, 12)  # 12 tokens -> 2 whole items per chunk
    assert [len(c.tokens) for c in chunks] == [10, 10, 10, 5]
    assert all(c.item_length == 5 and c.item_lengths is None for c in chunks)
    assert stream.tolist() == [t for it in ITEMS5 for t in it]
    assert stream.dtype == np.uint16
    # the same dataset named by prefix, by .idx, or by directory
    for src in ([tmp_path / "data"], [tmp_path / "data.idx"], [tmp_path]):
        assert _stream(PythiaReader(src), 1000)[1].tolist() == stream.tolist()


def test_pythia_variable_items_and_empty_item(tmp_path: Path) -> None:
    items = [[1, 2, 3], [4], [5, 6, 7, 8], [], [9, 10]]
    write_mmidx(tmp_path / "v", items)
    r = PythiaReader([tmp_path / "v.bin"])
    assert r.item_length is None and r.num_items == 4 and r.num_tokens == 10
    chunks, stream = _stream(r, 5)
    # a chunk takes items while its total stays <= 5: [3, 1] (4), then [4, 0] (the empty item is left
    # out of the lengths), then [2]
    assert [c.item_lengths.tolist() for c in chunks] == [[3, 1], [4], [2]]
    assert stream.tolist() == list(range(1, 11))


def test_pythia_shards_split_mid_token(tmp_path: Path) -> None:
    # uint16 bytes cut at odd offsets: shard boundaries fall inside tokens and inside items
    paths, idx = write_mmidx_shards(tmp_path, ITEMS5, cuts=[1, 7, 13, 69])
    assert len(paths) == 5
    expected = [t for it in ITEMS5 for t in it]
    for src in (paths + [idx], [idx], paths, [tmp_path], list(reversed(paths)) + [idx]):
        r = PythiaReader(src)
        assert r.bin_paths == paths
        assert _stream(r, 7)[1].tolist() == expected


def test_pythia_missing_shard(tmp_path: Path) -> None:
    paths, idx = write_mmidx_shards(tmp_path, ITEMS5, cuts=[20, 40])
    paths[1].unlink()
    with pytest.raises(CorpusError, match=r"missing \[1\]"):
        resolve_pythia_sources([tmp_path])


@pytest.mark.parametrize(
    "code,values,out_dtype",
    [(1, [[0, 255, 7]], np.uint16), (2, [[0, 127, 5]], np.uint16), (3, [[0, 32767, 1]], np.uint16),
     (4, [[0, 2**31 - 1, 9]], np.uint32), (5, [[0, 2**32 - 1, 3]], np.uint32)],
)
def test_pythia_integer_dtype_codes(tmp_path: Path, code: int, values, out_dtype) -> None:
    write_mmidx(tmp_path / "d", values, dtype_code=code)
    r = PythiaReader([tmp_path / "d.bin"])
    assert r.dtype == out_dtype
    assert _stream(r, 100)[1].tolist() == values[0]


def test_pythia_negative_and_too_large_ids(tmp_path: Path) -> None:
    write_mmidx(tmp_path / "neg", [[1, -2, 3]], dtype_code=3)
    with pytest.raises(CorpusError, match="negative token id -2"):
        _stream(PythiaReader([tmp_path / "neg.bin"]), 100)
    write_mmidx(tmp_path / "big", [[1, 2**32]], dtype_code=5)
    with pytest.raises(CorpusError, match="does not fit in 32 bits"):
        _stream(PythiaReader([tmp_path / "big.bin"]), 100)


def test_pythia_bin_size_disagrees_with_idx(tmp_path: Path) -> None:
    bin_path, idx_path = write_mmidx(tmp_path / "d", ITEMS5)
    bin_path.write_bytes(bin_path.read_bytes() + b"\x00\x00")
    with pytest.raises(CorpusError, match=r"d\.bin: \.bin is 72 bytes but .*d\.idx describes 7 items of 35 uint16 tokens = 70 bytes"):
        PythiaReader([bin_path])
    bin_path.write_bytes(bin_path.read_bytes()[:60])
    with pytest.raises(CorpusError, match="60 bytes"):
        PythiaReader([bin_path])


def test_pythia_bad_idx_files(tmp_path: Path) -> None:
    bin_path, idx_path = write_mmidx(tmp_path / "d", ITEMS5)
    good = idx_path.read_bytes()
    idx_path.write_bytes(good[:17] + bytes([9]) + good[18:])
    with pytest.raises(CorpusError, match=r"d\.idx: unknown dtype code 9 at byte 17"):
        read_idx(idx_path)
    idx_path.write_bytes(good[:17] + bytes([6]) + good[18:])
    with pytest.raises(CorpusError, match="float"):
        read_idx(idx_path)
    idx_path.write_bytes(b"NOTMAGIC!" + good[9:])
    with pytest.raises(CorpusError, match="not a Megatron MMIDIDX"):
        read_idx(idx_path)
    idx_path.write_bytes(good[:-8])
    with pytest.raises(CorpusError, match="implies"):
        read_idx(idx_path)
    idx_path.write_bytes(good[:10])
    with pytest.raises(CorpusError, match="too short"):
        read_idx(idx_path)
    # pointers that skip bytes
    idx_path.write_bytes(idx_bytes([5] * 7, 8, pointers=[0, 10, 20, 30, 42, 50, 60]))
    with pytest.raises(CorpusError, match="pointer of item 4 is 42 but the items before it end at byte 40"):
        PythiaReader([bin_path])


def test_pythia_idx_fields(tmp_path: Path) -> None:
    _, idx_path = write_mmidx(tmp_path / "d", [[1, 2], [3, 4, 5]])
    idx = read_idx(idx_path)
    assert idx.dtype_code == 8 and idx.sizes.tolist() == [2, 3]
    assert idx.pointers.tolist() == [0, 4] and idx.doc_idx.tolist() == [0, 1, 2]


# ---------------------------------------------------------------- OLMo


def _olmo_files(tmp_path: Path, dtype: str = "uint16") -> list[Path]:
    a = write_raw(tmp_path / "part-000-00000.npy", [1, 2, 3, 4, 5, 6, 7, 8, 9, 99], dtype)  # 3 instances of 3, 1 dropped
    b = write_raw(tmp_path / "part-001-00000.npy", [11, 12, 13, 14, 15, 16, 98], dtype)  # 2 instances, 1 dropped
    return [a, b]


def test_olmo_global_indices_order(tmp_path: Path) -> None:
    files = _olmo_files(tmp_path)
    gi = write_raw(tmp_path / "global_indices.npy", [3, 0, 4, 2, 1], "uint32")
    r = OlmoReader(files, sequence_length=3, dtype="uint16", global_indices=gi)
    assert (r.num_items, r.num_tokens, r.dtype) == (5, 15, np.uint16)
    chunks, stream = _stream(r, 7)  # 2 instances per chunk
    assert [len(c.tokens) for c in chunks] == [6, 6, 3]
    # instances: 0=[1,2,3] 1=[4,5,6] 2=[7,8,9] 3=[11,12,13] 4=[14,15,16]
    assert stream.tolist() == [11, 12, 13, 1, 2, 3, 14, 15, 16, 7, 8, 9, 4, 5, 6]
    # without global indices: instance-id order
    r0 = OlmoReader(files, sequence_length=3)
    assert _stream(r0, 100)[1].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15, 16]


def test_olmo_uint32_and_npy_global_indices(tmp_path: Path) -> None:
    a = write_raw(tmp_path / "a.npy", [70000, 1, 100277, 5], "uint32")
    gi = tmp_path / "gi.npy"
    np.save(gi, np.array([1, 0], dtype=np.uint32))
    r = OlmoReader([a], sequence_length=2, dtype="uint32", global_indices=gi)
    assert r.dtype == np.uint32
    assert _stream(r, 100)[1].tolist() == [100277, 5, 70000, 1]
    assert read_global_indices(gi).tolist() == [1, 0]


@pytest.mark.parametrize(
    "indices,message",
    [([0, 1, 2, 3], "holds 4 indices but the token files give 5 instances"),
     ([0, 1, 2, 3, 3], "instance 3 appears more than once"),
     ([0, 1, 2, 3, 7], "entry 4 is 7, outside the 5 instances")],
)
def test_olmo_global_indices_not_a_permutation(tmp_path: Path, indices, message) -> None:
    files = _olmo_files(tmp_path)
    gi = write_raw(tmp_path / "gi.npy", indices, "uint32")
    with pytest.raises(CorpusError, match=message):
        OlmoReader(files, sequence_length=3, global_indices=gi)


def test_check_permutation_across_blocks() -> None:
    check_permutation(np.array([4, 2, 0, 1, 3]), 5, "x", block=2)
    with pytest.raises(CorpusError, match="instance 2 appears more than once"):
        check_permutation(np.array([4, 2, 0, 2, 3]), 5, "x", block=2)


def test_olmo_bad_token_file_size(tmp_path: Path) -> None:
    p = tmp_path / "odd.npy"
    p.write_bytes(b"\x01\x00\x02")
    with pytest.raises(CorpusError, match=r"odd\.npy: 3 bytes is not a whole number of uint16 tokens"):
        OlmoReader([p], sequence_length=1)


def _distinct(n: int, start: int = 1000) -> list[int]:
    return list(range(start, start + n))


def test_repetitive_rows_thresholds() -> None:
    L = 200
    rows = []
    # period 3 pattern repeated exactly 32 times -> masked
    rows.append(_distinct(50) + [7, 8, 9] * 32 + _distinct(L - 50 - 96, 2000))
    # repeated 31 times (plus a partial copy) -> kept
    rows.append(_distinct(50) + [7, 8, 9] * 31 + [7, 8] + _distinct(L - 50 - 95, 2000))
    # a single token repeated 32 times (period 1) -> masked
    rows.append(_distinct(10) + [5] * 32 + _distinct(L - 42, 2000))
    # period 14 repeated 14 times -> kept (period above 13)
    rows.append(_distinct(14, 500) * 14 + _distinct(L - 196, 3000))
    # nothing repeated -> kept
    rows.append(_distinct(L))
    x = np.array(rows, dtype=np.uint32)
    assert repetitive_rows(x).tolist() == [True, False, True, False, False]


def test_olmo_drop_repetitive_keeps_slot(tmp_path: Path) -> None:
    L = 80
    normal = _distinct(L)
    rep = [3, 4] * 40  # period 2 repeated 40 >= 32 times
    a = write_raw(tmp_path / "a.npy", normal + rep + normal, "uint16")
    gi = write_raw(tmp_path / "gi.npy", [1, 2, 0], "uint32")
    r = OlmoReader([a], sequence_length=L, global_indices=gi, drop_repetitive=True, filler_id=50277)
    stream = _stream(r, 1000)[1]
    assert stream.tolist() == [50277] * L + normal + normal
    assert r.masked_instances == 1 and r.describe()["masked_instances"] == 1


def test_olmo_config_paths(tmp_path: Path) -> None:
    cfg = tmp_path / "OLMo-1B.yaml"
    cfg.write_text(
        "model:\n  max_sequence_length: 2048\nglobal_train_batch_size: 2048\n"
        "data:\n  memmap_dtype: uint32\n  paths:\n    - r2://olmo-data/preprocessed/a/part-0.npy\n    - rel/part-1.npy\n"
    )
    paths, settings = config_data_paths(cfg)
    assert paths == ["r2://olmo-data/preprocessed/a/part-0.npy", "rel/part-1.npy"]
    assert settings == {"dtype": "uint32", "sequence_length": 2048, "batch_size": 2048}
    assert localize(paths[0], tmp_path / "root") == tmp_path / "root/preprocessed/a/part-0.npy"
    assert localize(paths[1], None, relative_to=tmp_path) == tmp_path / "rel/part-1.npy"
    with pytest.raises(CorpusError, match="--data-root"):
        localize(paths[0], None)
    cfg2 = tmp_path / "mix.yml"
    cfg2.write_text("data:\n  datasets:\n    wiki: [w0.npy, w1.npy]\n    books: [b0.npy]\n")
    assert config_data_paths(cfg2)[0] == ["b0.npy", "w0.npy", "w1.npy"]  # labels sorted, as OLMo does
    lst = tmp_path / "files.txt"
    lst.write_text("# my files\na.npy\n\nb.npy  # second\n")
    assert config_data_paths(lst) == (["a.npy", "b.npy"], {})


# ---------------------------------------------------------------- text


def test_txt_documents_line_and_paragraph(tmp_path: Path) -> None:
    p = write_text(tmp_path / "c.txt", " = Title = \n \nfirst para\r\nsecond line\n\n\nthird\n   \nlast no newline")
    assert list(iter_documents(p)) == [" = Title = ", "first para", "second line", "third", "last no newline"]
    assert list(iter_documents(p, unit="paragraph")) == [" = Title = ", "first para\nsecond line", "third", "last no newline"]


def test_compressed_text_equals_plain(tmp_path: Path) -> None:
    text = "alpha beta\n\ngamma\n"
    plain = write_text(tmp_path / "a.txt", text)
    for name in ("a.txt.gz", "a.txt.zst"):
        assert list(iter_documents(write_text(tmp_path / name, text))) == list(iter_documents(plain)) == ["alpha beta", "gamma"]
    recs = [{"text": "one"}, {"text": "two", "id": 2}]
    for name in ("r.jsonl", "r.jsonl.gz", "r.jsonl.zst"):
        assert list(iter_documents(write_jsonl(tmp_path / name, recs))) == ["one", "two"]


def test_jsonl_fields_and_errors(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "r.jsonl", [{"body": "x y"}, {"body": ""}, {"body": "z"}])
    assert list(iter_documents(p, text_field="body")) == ["x y", "z"]
    bad = write_text(tmp_path / "bad.jsonl", '{"text": "ok"}\n\n{"text": "broken\n{"text": "fine"}\n')
    with pytest.raises(CorpusError, match=r"bad\.jsonl:3: not valid JSON"):
        list(iter_documents(bad))
    missing = write_text(tmp_path / "missing.jsonl", '{"text": "ok"}\n{"txt": "no"}\n')
    with pytest.raises(CorpusError, match=r"missing\.jsonl:2: no 'text' field"):
        list(iter_documents(missing))
    notobj = write_text(tmp_path / "list.jsonl.gz", '["a"]\n')
    with pytest.raises(CorpusError, match=r"list\.jsonl\.gz:1: expected a JSON object"):
        list(iter_documents(notobj))
    notstr = write_text(tmp_path / "num.jsonl", '{"text": 5}\n')
    with pytest.raises(CorpusError, match=r"num\.jsonl:1: field 'text' is int"):
        list(iter_documents(notstr))
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"fine\ncaf\xe9\n")
    with pytest.raises(CorpusError, match=r"latin\.txt:2: not UTF-8"):
        list(iter_documents(latin))


def test_parquet_documents(tmp_path: Path) -> None:
    p = write_parquet(tmp_path / "t.parquet", "content", ["first doc", None, "  ", "second doc"])
    assert list(iter_documents(p, text_field="content")) == ["first doc", "second doc"]
    with pytest.raises(CorpusError, match="no column 'text'"):
        list(iter_documents(p))


def test_text_sources_and_kinds(tmp_path: Path) -> None:
    write_text(tmp_path / "b.txt", "x\n")
    write_text(tmp_path / "a.jsonl.gz", "")
    (tmp_path / "notes.md").write_text("skip me")
    assert [p.name for p in text_sources([tmp_path])] == ["a.jsonl.gz", "b.txt"]
    with pytest.raises(CorpusError, match="not a .txt"):
        text_sources([tmp_path / "notes.md"])


def _splitmix64_reference(x: int) -> int:
    """Plain-Python splitmix64 (an independent implementation for the test)."""
    m = (1 << 64) - 1
    z = (x + 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def test_shuffle_order_matches_reference() -> None:
    assert shuffle_order(5, None).tolist() == [0, 1, 2, 3, 4]
    for seed in (0, 1, 12345, 2**63 + 5):
        base = _splitmix64_reference(seed)
        keys = [_splitmix64_reference((base + i) & ((1 << 64) - 1)) for i in range(50)]
        expected = sorted(range(50), key=lambda i: keys[i])
        assert shuffle_order(50, seed).tolist() == expected
    assert shuffle_order(50, 1).tolist() != shuffle_order(50, 2).tolist()


@needs_tokenizers
def test_tokenize_and_pack_hand_computed(tmp_path: Path) -> None:
    tok = load_tokenizer(NEOX_TOKENIZER)
    assert tok.eos_id == 0
    src = write_text(tmp_path / "c.txt.gz", "Hello world\nthese dogs\n\nHello world\n")
    corpus = tokenize_corpus([src], tok, tmp_path / "tokens.bin", progress=False)
    # FORMATS: "Hello world" -> [12092, 1533], "these dogs" -> [20513, 9097]; EOS (id 0) after each document
    assert corpus.doc_lengths.tolist() == [3, 3, 3]
    assert np.fromfile(tmp_path / "tokens.bin", dtype=np.uint16).tolist() == [12092, 1533, 0, 20513, 9097, 0, 12092, 1533, 0]
    r = PackedTextReader(corpus, item_length=4, seed=None, sources=[src])
    assert (r.num_items, r.num_tokens, r.dropped_tokens) == (2, 8, 1)
    chunks, stream = _stream(r, 4)
    assert [len(c.tokens) for c in chunks] == [4, 4]
    assert stream.tolist() == [12092, 1533, 0, 20513, 9097, 0, 12092, 1533]
    # seeded order: the reference permutation of the three documents
    order = shuffle_order(3, 7).tolist()
    docs = [[12092, 1533, 0], [20513, 9097, 0], [12092, 1533, 0]]
    expected = [t for d in order for t in docs[d]][:8]
    assert _stream(PackedTextReader(corpus, 4, seed=7), 3)[1].tolist() == expected


def test_packing_chunks_cover_whole_items(tmp_path: Path) -> None:
    tok = load_tokenizer(TOKENIZER)
    lines = [f"document number {i} " + "word " * (i % 7) for i in range(300)]
    src = write_text(tmp_path / "many.txt", "\n".join(lines) + "\n")
    corpus = tokenize_corpus([src], tok, tmp_path / "t.bin", batch_chars=500, progress=False)
    all_tokens = np.fromfile(tmp_path / "t.bin", dtype=np.uint16)
    starts = np.concatenate([[0], np.cumsum(corpus.doc_lengths)])
    order = shuffle_order(corpus.num_docs, 3)
    full = np.concatenate([all_tokens[starts[d] : starts[d + 1]] for d in order])
    for L, max_tokens in ((7, 20), (64, 64), (5, 10_000)):
        r = PackedTextReader(corpus, L, seed=3)
        chunks, stream = _stream(r, max_tokens)
        assert all(len(c.tokens) % L == 0 and len(c.tokens) <= max(max_tokens, L) for c in chunks)
        n = len(full) // L * L
        assert stream.tolist() == full[:n].tolist()
        assert r.dropped_tokens == len(full) - n


def test_tokenize_jsonl_error_names_line(tmp_path: Path) -> None:
    tok = load_tokenizer(TOKENIZER)
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(gzip.compress(b'{"text": "fine"}\n{"text": oops}\n'))
    with pytest.raises(CorpusError, match=r"bad\.jsonl\.gz:2: not valid JSON"):
        tokenize_corpus([bad], tok, tmp_path / "t.bin", progress=False)

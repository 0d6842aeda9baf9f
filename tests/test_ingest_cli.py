"""`exposure build` / `query` / `info` end to end on small files written in the real layouts.

Expected steps, windows and counts are worked out by hand from where the tests put the phrases.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import exposure
import pytest
from tokenizers import Tokenizer
from _corpus_files import (
    OTHER_TOKENIZER,
    TOKENIZER,
    write_jsonl,
    write_mmidx,
    write_mmidx_shards,
    write_raw,
    write_text,
)
from exposure.cli import main
from exposure.readers.pythia import PythiaReader
from exposure.schedule import Schedule

# GPT-NeoX's (the shared data's) where present, else the bundled demo tokenizer's
_TK = Tokenizer.from_file(str(TOKENIZER))
THESE_DOGS = _TK.encode(" these dogs").ids  # [841, 9097] in GPT-NeoX
THIS_DOG = _TK.encode(" this dog").ids  # [436, 4370]
VOCAB = _TK.get_vocab_size()  # 50277
TOKENIZER_NAME = TOKENIZER.parent.name  # the index records the folder's name: "gpt-neox-20b"
FILL = 50
assert len(THESE_DOGS) == len(THIS_DOG) == 2 and FILL not in THESE_DOGS + THIS_DOG  # where the tests plant them
L = 2049


def _pythia_items(n: int = 6) -> list[list[int]]:
    items = [[FILL] * L for _ in range(n)]
    items[1][L - 2 :] = THESE_DOGS  # last two tokens of item 1: step 0 (2 items per step)
    items[2][:2] = THESE_DOGS  # first two tokens of item 2: step 1
    items[3][L - 1] = THESE_DOGS[0]  # item 3 | item 4 boundary: not an occurrence
    items[4][0] = THESE_DOGS[1]
    items[4][100:102] = THIS_DOG  # step 2
    items[5][7:9] = THESE_DOGS  # step 2
    return items


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _query(capsys: pytest.CaptureFixture[str], index: Path, *phrases: str, extra: tuple[str, ...] = ()) -> dict:
    capsys.readouterr()
    assert main(["query", str(index), *phrases, "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def _build_pythia(tmp_path: Path) -> Path:
    """``exposure build`` of :func:`_pythia_items` in the Pythia layout, 2 items per step, checkpoints 0-3."""
    write_mmidx(tmp_path / "pile", _pythia_items())
    out = tmp_path / "idx"
    assert main(["build", str(tmp_path / "pile.bin"), "--format", "pythia", "--out", str(out), "--tokenizer",
                 str(TOKENIZER), "--schedule", "custom", "--item-length", str(L), "--items-per-step", "2",
                 "--checkpoints", "0,1,2,3", "--no-progress"]) == 0
    return out


def test_pythia_build_query_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _build_pythia(tmp_path)
    ans = _query(capsys, out, "these dogs", "this dog", "these cats")
    r = {x["phrase"]: x for x in ans["results"]}
    assert r["these dogs"]["token_ids"] == THESE_DOGS
    assert r["these dogs"]["count"] == 3
    assert r["these dogs"]["first_position"] == 2 * L - 2 and r["these dogs"]["first_item"] == 1
    assert r["these dogs"]["first_step"] == 0 and r["these dogs"]["first_checkpoint"] == 1
    # windows: [0,0) | step 0 | step 1 | step 2
    assert r["these dogs"]["exposures"] == [0, 1, 1, 1]
    assert r["this dog"]["first_step"] == 2 and r["this dog"]["exposures"] == [0, 0, 0, 1]
    assert r["these cats"]["count"] == 0 and r["these cats"]["first_step"] == -1 and r["these cats"]["first_checkpoint"] == -1
    assert ans["checkpoints"] == [0, 1, 2, 3]

    # the table form names the step windows
    assert main(["query", str(out), "these dogs"]) == 0
    table = capsys.readouterr().out
    assert "step1: +1 (steps 0..0)" in table and "step3: +1 (steps 2..2)" in table

    # the manifest records tokenizer, schedule and every source file with its hash
    meta = exposure.Index(out).metadata
    assert meta["tokenizer"]["name"] == TOKENIZER_NAME and meta["tokenizer"]["sha256"] == _sha(TOKENIZER)
    assert {Path(s["path"]).name: (s["bytes"], s["sha256"]) for s in meta["sources"]} == {
        "pile.bin": (6 * L * 2, _sha(tmp_path / "pile.bin")),
        "pile.idx": ((tmp_path / "pile.idx").stat().st_size, _sha(tmp_path / "pile.idx")),
    }
    assert Schedule.from_dict(meta["schedule"]) == Schedule("custom", L, 2, (0, 1, 2, 3), epoch_items=6, total_steps=3)
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert TOKENIZER_NAME in info and "custom: 2049 tokens/item × 2 items/step" in info and "pile.bin" in info
    assert "6 items of 2,049 tokens each" in info
    assert main(["info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["items"] == 6


def test_query_phrases_from_a_file_or_stdin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = _build_pythia(tmp_path)
    expected = _query(capsys, out, "these cats", "these dogs", "this dog")["results"]
    (tmp_path / "phrases.txt").write_text("these dogs\n\n  \nthis dog\n", encoding="utf-8")
    assert _query(capsys, out, "these cats", extra=("--file", str(tmp_path / "phrases.txt")))["results"] == expected
    monkeypatch.setattr("sys.stdin", io.StringIO("these dogs\nthis dog"))
    assert _query(capsys, out, "these cats", extra=("--file", "-"))["results"] == expected
    # a file saved with a byte-order mark and CRLF line ends (Windows editors): the mark was taken for a part of
    # the first phrase, which then was never found
    (tmp_path / "windows.txt").write_bytes("\ufeffthese dogs\r\nthis dog\r\n".encode("utf-8"))
    assert _query(capsys, out, "these cats", extra=("--file", str(tmp_path / "windows.txt")))["results"] == expected
    assert main(["query", str(out)]) == 2
    assert "no phrases: give them as arguments or with --file PATH" in capsys.readouterr().err
    assert main(["query", str(out), "--file", str(tmp_path / "missing.txt")]) == 2
    err = capsys.readouterr().err
    assert f"cannot read phrases from {tmp_path / 'missing.txt'}" in err


def test_pythia_shards_and_default_schedule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    items = _pythia_items()
    paths, idx_path = write_mmidx_shards(tmp_path, items, cuts=[4097, 9001, 20001])
    out = tmp_path / "idx"
    assert main(["build", *map(str, paths), str(idx_path), "--format", "pythia", "--out", str(out),
                 "--tokenizer", str(TOKENIZER), "--no-progress"]) == 0
    index = exposure.Index(out)
    assert index.tokens(0, index.num_tokens).tolist() == [t for it in items for t in it]
    ans = _query(capsys, out, "these dogs")
    r = ans["results"][0]
    # the Pythia schedule puts all 6 items in step 0; the run passes over the 6 items (12,294 tokens)
    # again and again: checkpoint 1 has seen step 0 = 2,098,176 tokens = 170 passes + 8,196 tokens, and
    # each pass holds the phrase at offsets 4096, 4098 and 10252 (2 of them below 8,196)
    assert r["first_step"] == 0 and r["first_checkpoint"] == 1
    per_pass, E, T = [4096, 4098, 10252], 6 * L, L * 1024
    assert r["exposures"][:3] == [0, 170 * 3 + 2, (2 * T // E) * 3 + sum(o < 2 * T % E for o in per_pass) - (170 * 3 + 2)]
    assert ans["schedule"]["name"] == "pythia" and ans["schedule"]["epoch_items"] == 6
    assert len(ans["checkpoints"]) == 154


def test_text_build_records_packing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write_text(tmp_path / "a.txt.gz", "The cat sat.\n\nI saw these dogs today.\n")
    b = write_jsonl(tmp_path / "b.jsonl.zst", [{"text": "this dog runs"}, {"text": "And these dogs bark."}])
    out = tmp_path / "idx"
    assert main(["build", str(a), str(b), "--format", "text", "--out", str(out), "--tokenizer",
                 str(TOKENIZER.parent), "--item-length", "6", "--items-per-step", "2", "--no-shuffle",
                 "--no-progress"]) == 0
    docs = ["The cat sat.", "I saw these dogs today.", "this dog runs", "And these dogs bark."]
    stream = [t for d in docs for t in _TK.encode(d, add_special_tokens=False).ids + [0]]
    n = len(stream) // 6 * 6
    index = exposure.Index(out)
    assert index.num_tokens == n and index.tokens(0, n).tolist() == stream[:n]
    meta = index.metadata
    assert meta["reader"]["dropped_tokens"] == len(stream) - n and meta["reader"]["shuffle_seed"] is None
    assert meta["build"]["item_length"] == 6 and meta["build"]["eos_id"] == 0
    assert [Path(s["path"]).name for s in meta["sources"]] == ["a.txt.gz", "b.jsonl.zst"]
    assert meta["sources"][1]["sha256"] == _sha(b)
    # " these dogs" first occurs inside document 2; its step is its offset // 12
    first = next(i for i in range(n) if stream[i : i + 2] == THESE_DOGS and i // 6 == (i + 1) // 6)
    r = _query(capsys, out, "these dogs")["results"][0]
    assert r["first_position"] == first and r["first_step"] == first // 12
    assert (out / "tokenizer.json").read_bytes() == TOKENIZER.read_bytes()
    assert not (tmp_path / "idx.tokenized").exists() and not (tmp_path / "idx.partial").exists()


def test_one_pass_with_a_partial_last_step_trains_each_occurrence_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Items that are not a whole number of steps: the last step reads what is left. It used to be taken to go on
    # into a second pass, so `exposure query` reported occurrences in the first items trained twice ("trained"
    # above "count" on a one-pass corpus) and the splits' exposure columns counted them twice.
    text = "".join(f"I saw these dogs today, said person {k}.\n" for k in range(10))
    out = tmp_path / "idx"
    assert main(["build", str(write_text(tmp_path / "a.txt", text)), "--format", "text", "--out", str(out),
                 "--tokenizer", str(TOKENIZER), "--item-length", "5", "--items-per-step", "3", "--no-shuffle",
                 "--no-progress"]) == 0
    index = exposure.Index(out)
    schedule = Schedule.for_index(index)
    assert index.num_items % 3 != 0 and schedule.total_items == index.num_items
    answer = _query(capsys, out, "saw these", "dogs today", "person")
    for r in answer["results"]:
        assert r["count"] > 0 and r["trained_exposures"] == r["count"] == sum(r["exposures"]), r


def test_a_stream_that_fits_one_shard_is_one_shard(tmp_path: Path) -> None:
    # The readers did not pass the item count, so the builder planned shards for the tokens without their item
    # separators, and the bundled corpus (818,505 tokens in 6,345 items) came out as 813,216 + 5,289 tokens.
    from exposure import data

    out = tmp_path / "idx"
    assert main(["build", str(data.corpus_path()), "--format", "text", "--out", str(out), "--tokenizer",
                 str(data.tokenizer_path()), "--item-length", "129", "--items-per-step", "8", "--threads", "2",
                 "--no-progress"]) == 0
    index = exposure.Index(out)
    assert index.num_items > 6000 and index.num_shards == 1


def test_text_seed_recorded_and_changes_order(tmp_path: Path) -> None:
    from exposure.readers.text import shuffle_order
    from exposure.schedule import log_checkpoints

    lines = [f"line number {i}" for i in range(40)]
    src = write_text(tmp_path / "c.txt", "".join(x + "\n" for x in lines))
    docs = [_TK.encode(x, add_special_tokens=False).ids + [0] for x in lines]
    for seed in (1, 2):
        idx = exposure.ingest.build([src], "text", tmp_path / f"s{seed}", tokenizer=TOKENIZER, item_length=8,
                                    items_per_step=1, seed=seed, progress=False)
        assert idx.metadata["reader"]["shuffle_seed"] == seed
        stream = [t for d in shuffle_order(40, seed) for t in docs[d]]
        n = len(stream) // 8 * 8
        assert idx.num_tokens == n and idx.tokens(0, n).tolist() == stream[:n]
        s = Schedule.from_dict(idx.metadata["schedule"])
        assert s.items_per_step == 1 and s.checkpoints == log_checkpoints(n // 8) and s.epoch_items == n // 8
    assert shuffle_order(40, 1).tolist() != shuffle_order(40, 2).tolist()


def test_tokenizer_mismatch_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_text(tmp_path / "c.txt", "these dogs are here and there\n" * 4)
    out = tmp_path / "idx"
    assert main(["build", str(src), "--format", "text", "--out", str(out), "--tokenizer", str(TOKENIZER),
                 "--item-length", "4", "--items-per-step", "1", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["query", str(out), "these dogs", "--tokenizer", str(OTHER_TOKENIZER)]) == 2
    err = capsys.readouterr().err
    assert f"is not the index's tokenizer {TOKENIZER_NAME!r}" in err
    assert main(["query", str(out), "these dogs", "--tokenizer", str(TOKENIZER)]) == 0


def _assert_nothing_written(out: Path) -> None:
    for suffix in ("", ".partial", ".tokenized", ".tokenized.tmp"):
        assert not out.with_name(out.name + suffix).exists(), suffix


def test_bad_inputs_fail_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "idx"
    # a .bin whose size disagrees with its .idx
    bin_path, idx_path = write_mmidx(tmp_path / "p", _pythia_items()[:2])
    bin_path.write_bytes(bin_path.read_bytes()[:-2])
    assert main(["build", str(bin_path), "--format", "pythia", "--out", str(out), "--no-progress"]) == 2
    assert "p.bin: .bin is 8194 bytes but" in capsys.readouterr().err
    _assert_nothing_written(out)
    # an unknown dtype code
    write_mmidx(tmp_path / "q", _pythia_items()[:2])
    raw = bytearray((tmp_path / "q.idx").read_bytes())
    raw[17] = 11
    (tmp_path / "q.idx").write_bytes(bytes(raw))
    assert main(["build", str(tmp_path / "q.bin"), "--format", "pythia", "--out", str(out), "--no-progress"]) == 2
    assert "q.idx: unknown dtype code 11" in capsys.readouterr().err
    _assert_nothing_written(out)
    # an unreadable jsonl line
    bad = write_text(tmp_path / "bad.jsonl", '{"text": "fine"}\n{"text": "fine too"}\n{"text": nope\n')
    assert main(["build", str(bad), "--format", "text", "--out", str(out), "--tokenizer", str(TOKENIZER),
                 "--items-per-step", "1", "--item-length", "2", "--no-progress"]) == 2
    assert "bad.jsonl:3: not valid JSON" in capsys.readouterr().err
    _assert_nothing_written(out)
    # a global-indices file that is not a permutation of the instances
    tok = write_raw(tmp_path / "part-0.npy", list(range(1, 13)), "uint16")
    gi = write_raw(tmp_path / "gi.npy", [0, 1, 1], "uint32")
    assert main(["build", str(tok), "--format", "olmo", "--global-indices", str(gi), "--out", str(out),
                 "--item-length", "4", "--schedule", "custom", "--items-per-step", "1", "--no-progress"]) == 2
    assert "gi.npy: instance 1 appears more than once" in capsys.readouterr().err
    _assert_nothing_written(out)
    # a text corpus without a schedule is refused before any tokenization
    src = write_text(tmp_path / "ok.txt", "a b c d e f g h\n")
    monkeypatch.setattr("exposure.ingest._tokenized_text", _must_not_run)
    assert main(["build", str(src), "--format", "text", "--out", str(out), "--tokenizer", str(TOKENIZER),
                 "--item-length", "2", "--no-progress"]) == 2
    assert "say how the run batched the items" in capsys.readouterr().err
    _assert_nothing_written(out)
    monkeypatch.undo()
    # a text file starting with a byte-order mark: the mark is not text (it became tokens of the first document)
    marked = write_text(tmp_path / "marked.txt", "\ufeffthese dogs bark\n")
    plain = write_text(tmp_path / "plain.txt", "these dogs bark\n")
    def build_text(source: Path, dest: Path, *extra: str) -> int:
        return main(["build", str(source), "--format", "text", "--out", str(dest), "--tokenizer", str(TOKENIZER),
                     "--item-length", "2", "--items-per-step", "1", "--no-progress", *extra])

    for name, text in (("marked", marked), ("plain", plain)):
        assert build_text(text, tmp_path / name, "--item-length", "3") == 0
    assert exposure.Index(tmp_path / "marked").tokens(0, 3).tolist() == exposure.Index(tmp_path / "plain").tokens(0, 3).tolist()
    # a zero memory budget is an argument error (it said "memory_budget_bytes must be positive")
    with pytest.raises(SystemExit) as exited:
        build_text(src, out, "--memory-budget", "0")
    assert exited.value.code == 2
    assert "argument --memory-budget: expected a positive size (8G, 512M), got '0'" in capsys.readouterr().err
    _assert_nothing_written(out)
    # a corpus of blank lines holds no text (it was told to use a smaller --item-length)
    assert build_text(write_text(tmp_path / "blank.txt", "\n  \n\n"), out) == 2
    assert "the text sources (1 file(s)) hold no text" in capsys.readouterr().err
    _assert_nothing_written(out)
    # an existing index is not overwritten without --overwrite
    args = ["build", str(src), "--format", "text", "--out", str(out), "--tokenizer", str(TOKENIZER),
            "--item-length", "2", "--items-per-step", "1", "--no-progress"]
    assert main(args) == 0
    assert main(args) == 2 and "already exists" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0


def _must_not_run(*args: object, **kwargs: object) -> None:
    raise AssertionError("tokenized before the arguments were checked")


def test_exit_status_from_the_shell(tmp_path: Path) -> None:
    bad = write_text(tmp_path / "bad.jsonl", '{"text": 1}\n')
    proc = subprocess.run(
        [sys.executable, "-m", "exposure", "build", str(bad), "--format", "text", "--out", str(tmp_path / "i"),
         "--tokenizer", str(TOKENIZER), "--items-per-step", "1", "--no-progress"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert "bad.jsonl:1: field 'text' is int, not a string" in proc.stderr


def test_olmo_config_global_indices_and_masking(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Lo = 64
    root = tmp_path / "root"
    (root / "preprocessed").mkdir(parents=True)
    inst = [list(range(100 + 64 * i, 164 + 64 * i)) for i in range(6)]  # no repeats
    inst[0][10:12] = THESE_DOGS
    inst[4][:2] = THESE_DOGS
    inst[5] = [3] * Lo  # a single token repeated 64 times: OLMo-2 masks it
    inst[5][20:22] = THESE_DOGS  # the run after it is still 42 >= 32 repeats long
    write_raw(root / "preprocessed/part-0.npy", [t for x in inst[:4] for t in x] + [7, 7], "uint32")
    write_raw(root / "preprocessed/part-1.npy", [t for x in inst[4:] for t in x], "uint32")
    gi = write_raw(tmp_path / "global_indices.npy", [5, 2, 4, 1, 0, 3], "uint32")
    cfg = tmp_path / "OLMo-tiny.yaml"
    cfg.write_text(
        "model:\n  max_sequence_length: 64\nglobal_train_batch_size: 2\n"
        "data:\n  memmap_dtype: uint32\n  paths:\n"
        "    - s3://bucket/preprocessed/part-0.npy\n    - s3://bucket/preprocessed/part-1.npy\n"
    )
    out = tmp_path / "idx"
    assert main(["build", str(cfg), "--format", "olmo", "--global-indices", str(gi), "--data-root", str(root),
                 "--out", str(out), "--tokenizer", str(TOKENIZER), "--no-progress"]) == 0
    index = exposure.Index(out)
    # stream = instances 5,2,4,1,0,3; batch of 2 per step: step0 = (5,2), step1 = (4,1), step2 = (0,3)
    assert index.tokens(0, Lo).tolist() == inst[5]
    r = _query(capsys, out, "these dogs")["results"][0]
    assert r["count"] == 3 and r["first_position"] == 20 and r["first_step"] == 0
    assert index.metadata["schedule"]["name"] == "olmo-config" and index.metadata["schedule"]["items_per_step"] == 2
    # the same with masking: instance 5 keeps its slot (step 0) but no longer matches
    out2 = tmp_path / "idx2"
    assert main(["build", str(cfg), "--format", "olmo", "--global-indices", str(gi), "--data-root", str(root),
                 "--out", str(out2), "--tokenizer", str(TOKENIZER), "--drop-repetitive", "--no-progress"]) == 0
    r2 = _query(capsys, out2, "these dogs")["results"][0]
    assert r2["count"] == 2 and r2["first_position"] == 2 * Lo and r2["first_step"] == 1
    meta2 = exposure.Index(out2).metadata
    assert meta2["reader"]["masked_instances"] == 1 and meta2["build"]["filler_id"] == VOCAB
    assert exposure.Index(out2).tokens(0, 3).tolist() == [VOCAB] * 3


def test_interrupted_build_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    items = [[FILL + (i % 7)] * L for i in range(12)]
    items[9][5:7] = THESE_DOGS
    write_mmidx(tmp_path / "pile", items)
    out = tmp_path / "idx"
    args = ["build", str(tmp_path / "pile.bin"), "--format", "pythia", "--out", str(out), "--tokenizer",
            str(TOKENIZER), "--threads", "1", "--shard-tokens", "4096", "--no-progress"]
    original = PythiaReader.chunks

    def interrupted(self: PythiaReader, max_tokens: int):
        for k, chunk in enumerate(original(self, 2 * L)):
            if k == 4:
                raise KeyboardInterrupt
            yield chunk

    monkeypatch.setattr(PythiaReader, "chunks", interrupted)
    assert main(args) == 130
    assert not out.exists() and (tmp_path / "idx.partial").is_dir()
    monkeypatch.setattr(PythiaReader, "chunks", lambda self, m: original(self, 2 * L))
    capsys.readouterr()
    assert main(args) == 0
    assert "resumed: reused" in capsys.readouterr().out
    index = exposure.Index(out)
    assert index.manifest["build"]["shards_reused"] >= 2 and index.num_shards >= 4
    assert index.tokens(0, index.num_tokens).tolist() == [t for it in items for t in it]
    assert index.first_position([THESE_DOGS]).tolist() == [9 * L + 5]


def test_interrupted_text_build_keeps_tokenized_corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import exposure.readers.text as text

    src = write_text(tmp_path / "c.txt", "".join(f"these dogs number {i}\n" for i in range(200)))
    out = tmp_path / "idx"
    kwargs = dict(tokenizer=TOKENIZER, item_length=16, items_per_step=4, seed=5, progress=False)
    original = text.PackedTextReader.chunks

    def interrupted(self, max_tokens):
        yield next(original(self, 64))
        raise KeyboardInterrupt

    monkeypatch.setattr(text.PackedTextReader, "chunks", interrupted)
    with pytest.raises(KeyboardInterrupt):
        exposure.ingest.build([src], "text", out, **kwargs)
    assert (tmp_path / "idx.tokenized" / "state.json").is_file() and not out.exists()
    monkeypatch.setattr(text.PackedTextReader, "chunks", original)

    def no_tokenizing(*a, **k):
        raise AssertionError("the tokenized corpus should have been reused")

    monkeypatch.setattr(text, "tokenize_corpus", no_tokenizing)
    idx = exposure.ingest.build([src], "text", out, **kwargs)
    assert not (tmp_path / "idx.tokenized").exists()
    monkeypatch.undo()
    fresh = exposure.ingest.build([src], "text", tmp_path / "fresh", **kwargs)
    assert idx.num_tokens == fresh.num_tokens > 0
    assert idx.tokens(0, idx.num_tokens).tolist() == fresh.tokens(0, fresh.num_tokens).tolist()

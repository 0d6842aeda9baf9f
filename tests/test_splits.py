"""Splits on a small corpus built by the test: phrases planted at known stream offsets, so every count,
first-exposure step, window exposure and split is known in advance. Real engine, real tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import exposure
from exposure.blimp import PARADIGMS, BlimpPair, read_vocabulary
from exposure.cli import main
from exposure.critical import find_critical_phrases, phrase_table
from exposure.schedule import Schedule
from exposure.splits import _list_array, checkpoints_of, make_splits, read_phrases, split_labels, summarize
from exposure.tokenizer import TokenizerMismatchError, load_tokenizer

TOKENIZER = Path(exposure.__file__).resolve().parent / "data" / "tokenizer.json"
ITEM = 32  # tokens per item
PER_STEP = 2  # items per step -> 64 tokens per step
CHECKPOINTS = (0, 1, 2, 4, 8, 16)  # windows: [0,0) [0,1) [1,2) [2,4) [4,8) [8,16)
N_STEPS_IN_INDEX = 20  # the index holds 20 steps of data; the run (16 steps) trains on the first 16

VOCAB_CSV = (
    "expression,category,category_2,noun,sg,pl,properNoun,verb,pluralform,singularform,gender\r\n"
    "sketch,N,N,1,1,0,0,,sketches,,\r\n"
    "dog,N,N,1,1,0,0,,dogs,,\r\n"
    "art galleries,N,N,1,0,1,0,,,art gallery,\r\n"
    "this,(S/(S\\NP))/N,D,,,,,,,,\r\n"
    "these,(S/(S\\NP))/N,D,,,,,,,,\r\n"
    "the,(S/(S\\NP))/N,D,,,,,,,,\r\n"
    "Katherine,N,N,1,1,0,1,,,,f\r\n"
    "Raymond,N,N,1,1,0,1,,,,m\r\n"
    "Tracy,N,N,1,1,0,1,,,,f\r\n"
    "herself,,refl,,,,,,,,\r\n"
    "himself,,refl,,,,,,,,\r\n"
    "bark,S\\NP,IV,,,,,1,,,\r\n"
    "is,(S\\NP)/(S[bare]\\NP),aux,,,,,,,,\r\n"
    "selling,(S\\NP)/NP,TV,,,,,1,,,"
)

PAIRS = [
    ("determiner_noun_agreement_1", "Raymond is selling this sketch.", "Raymond is selling this sketches."),
    ("determiner_noun_agreement_2", "Tracy passed these art galleries.", "Tracy passed this art galleries."),
    ("anaphor_gender_agreement", "Katherine can't help herself.", "Katherine can't help himself."),
    ("regular_plural_subject_verb_agreement_2", "The dogs bark.", "The dog bark."),
    ("wh_island", "Who have those men revealed they helped?", "Who have those men revealed who helped?"),
]


def offset(step: int, item: int, pos: int) -> int:
    return step * PER_STEP * ITEM + item * ITEM + pos


# (pair index, side, variant text, stream offset)
PLANTS = [
    (0, "good", " this sketch", offset(3, 0, 5)),
    (0, "good", " this sketch", offset(3, 1, 2)),
    (0, "good", "This sketch", offset(9, 0, 0)),
    (0, "bad", " this sketches", offset(0, 1, 4)),
    (1, "good", " these art galleries", offset(17, 0, 3)),  # after the run's last step: never trained on
    (1, "bad", " this art galleries", offset(2, 0, 10)),
    (2, "good", "Katherine can't help herself", offset(5, 0, 0)),
    (2, "good", " Katherine can't help herself", offset(7, 0, ITEM - 3)),  # crosses an item boundary
    (3, "good", " dogs bark", offset(0, 0, 20)),
    (3, "good", "Dogs bark", offset(12, 1, 0)),
]

# what the plan above gives, worked out by hand
EXPECTED = {
    # pair: (count_good, first_step_good, exposures_good, count_bad, first_step_bad, exposures_bad)
    0: (3, 3, [0, 0, 0, 2, 0, 1], 1, 0, [0, 1, 0, 0, 0, 0]),
    1: (1, -1, [0, 0, 0, 0, 0, 0], 1, 2, [0, 0, 0, 1, 0, 0]),
    2: (1, 5, [0, 0, 0, 0, 1, 0], 0, -1, [0, 0, 0, 0, 0, 0]),
    3: (2, 0, [0, 1, 0, 0, 0, 1], 0, -1, [0, 0, 0, 0, 0, 0]),
    4: (0, -1, [0, 0, 0, 0, 0, 0], 0, -1, [0, 0, 0, 0, 0, 0]),
}
V, T = "validation", "train"
EXPECTED_SPLIT = {
    0: [V, V, V, T, T, T],  # first step 3: seen by checkpoints 4, 8, 16
    1: [V] * 6,
    2: [V, V, V, V, T, T],  # first step 5: seen by checkpoints 8 and 16
    3: [V, T, T, T, T, T],  # first step 0: seen by every checkpoint after step 0
    4: [V] * 6,  # no critical phrase
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    if not TOKENIZER.is_file():
        pytest.skip("no bundled tokenizer")
    root = tmp_path_factory.mktemp("splits")
    tok = load_tokenizer(TOKENIZER)
    (root / "vocabulary.csv").write_text(VOCAB_CSV)
    vocab = read_vocabulary(root / "vocabulary.csv")
    pairs = [BlimpPair(u, i, PARADIGMS[u], "", g, b) for i, (u, g, b) in enumerate(PAIRS)]
    phrases = phrase_table(find_critical_phrases(pairs, vocab), tok)
    rows = phrases.to_pylist()
    assert [r["phrase_good"] for r in rows] == [
        "this sketch", "these art galleries", "Katherine can't help herself", "dogs bark", None,
    ]
    all_queries = [tuple(q) for r in rows for side in ("good", "bad") for q in r[f"query_{side}"]]
    filler = next(t for t in range(3, tok.vocab_size) if all(t not in q for q in all_queries))
    stream = np.full(N_STEPS_IN_INDEX * PER_STEP * ITEM, filler, dtype=np.uint16)
    for pi, side, text, off in PLANTS:
        ids = tok.encode(text)
        assert list(ids) in rows[pi][f"query_{side}"], (pi, side, text)
        stream[off : off + len(ids)] = ids
        # the plan is only right if a planted phrase holds no other query
        for q in all_queries:
            if tuple(ids) != q:
                assert not any(tuple(ids[k : k + len(q)]) == q for k in range(len(ids) - len(q) + 1)), (text, q)
    sched = Schedule("test", ITEM, PER_STEP, CHECKPOINTS, total_steps=CHECKPOINTS[-1])
    idx = exposure.build_index(
        stream, root / "index", vocab_size=tok.vocab_size, item_length=ITEM, progress=False,
        metadata={"schedule": sched.to_dict(), "tokenizer": tok.to_metadata()},
    )
    blimp = root / "blimp"
    blimp.mkdir()
    for i, (u, g, b) in enumerate(PAIRS):
        rec = {"sentence_good": g, "sentence_bad": b, "UID": u, "pairID": str(i), "linguistics_term": PARADIGMS[u]}
        with open(blimp / f"{u}.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
    (blimp / "vocabulary.csv").write_text(VOCAB_CSV)
    return dict(root=root, tok=tok, phrases=phrases, index=idx, schedule=sched, blimp=blimp)


def check_table(t: pa.Table) -> None:
    rows = {r["pair_id"]: r for r in t.to_pylist()}
    assert sorted(rows) == list(range(len(PAIRS)))
    for pid, (cg, fg, eg, cb, fb, eb) in EXPECTED.items():
        r = rows[pid]
        got = (r["count_good"], r["first_step_good"], r["exposures_good"],
               r["count_bad"], r["first_step_bad"], r["exposures_bad"])
        assert got == (cg, fg, eg, cb, fb, eb), (pid, r["phrase_good"])
        assert r["split"] == EXPECTED_SPLIT[pid], pid
    assert rows[4]["has_phrase"] is False
    assert rows[0]["first_checkpoint_good"] == 4 and rows[2]["first_checkpoint_good"] == 8
    assert rows[1]["first_checkpoint_good"] == -1
    assert checkpoints_of(t) == CHECKPOINTS


def test_make_splits_known_answers(world) -> None:
    t = make_splits(world["phrases"], world["index"], world["schedule"])
    check_table(t)
    meta = {k.decode(): v.decode() for k, v in t.schema.metadata.items()}
    assert json.loads(meta["exposure.checkpoints"]) == list(CHECKPOINTS)
    assert meta["exposure.tokenizer_sha256"] == world["tok"].sha256
    assert json.loads(meta["exposure.schedule"])["tokens_per_step"] == PER_STEP * ITEM
    assert meta["exposure.index_stream"] == world["index"].stream_id and meta["exposure.index_stream"].startswith("uint")
    # contract types
    assert t.schema.field("good_critical_token").type == pa.int32()
    assert t.schema.field("first_step_good").type == pa.int64()
    assert t.schema.field("exposures_good").type == pa.list_(pa.int64())
    assert t.schema.field("split").type == pa.list_(pa.string())
    assert t.schema.field("pair_id").type == pa.int64()
    assert t.column("pair_uid").to_pylist()[0] == "determiner_noun_agreement_1/0"
    text = summarize(t)
    assert "determiner_noun_agreement" in text and "total" in text


def test_exposures_sum_to_counts_within_the_run(world) -> None:
    """Summed window exposures equal the count of occurrences trained on (offsets before step 16)."""
    t = make_splits(world["phrases"], world["index"], world["schedule"])
    tok = world["tok"]
    for r in t.to_pylist():
        for side in ("good", "bad"):
            in_run = sum(
                1 for pi, sd, text, off in PLANTS
                if pi == r["pair_id"] and sd == side and off // (PER_STEP * ITEM) < CHECKPOINTS[-1]
                and (off % ITEM) + len(tok.encode(text)) <= ITEM  # a match never crosses an item boundary
            )
            assert sum(r[f"exposures_{side}"]) == in_run, (r["pair_id"], side)


def test_split_labels_convention() -> None:
    lab = split_labels(np.array([-1, 0, 3, 4]), (0, 1, 4, 5))
    assert lab.tolist() == [
        [False, False, False, False],
        [False, True, True, True],
        [False, False, True, True],
        [False, False, False, True],
    ]


def test_split_column_at_pythia_scale() -> None:
    """13,000 pairs x 154 checkpoints of labels: pyarrow converts such a numpy string array in chunks."""
    rng = np.random.default_rng(0)
    labels = np.where(rng.random((13_000, 154)) < 0.3, "train", "validation")
    column = _list_array(labels, pa.string())
    assert len(column) == 13_000 and column.type == pa.list_(pa.string())
    assert column[4].as_py() == labels[4].tolist() and column[-1].as_py() == labels[-1].tolist()


def test_tokenizer_mismatch_is_refused(world) -> None:
    meta = dict(world["phrases"].schema.metadata)
    meta[b"exposure.tokenizer_sha256"] = b"0" * 64
    other = world["phrases"].replace_schema_metadata(meta)
    with pytest.raises(TokenizerMismatchError, match="tokenized with tokenizer sha256 000000000000"):
        make_splits(other, world["index"], world["schedule"])
    bad_ids = world["phrases"].drop_columns(["query_good"]).append_column(
        "query_good", pa.array([[[99999]]] * len(PAIRS), type=pa.list_(pa.list_(pa.int32())))
    )
    meta.pop(b"exposure.tokenizer_sha256")
    with pytest.raises(TokenizerMismatchError, match="token id 99999, outside the index's vocabulary"):
        make_splits(bad_ids.replace_schema_metadata(meta), world["index"], world["schedule"])


def test_cli_phrases_then_splits(world, capsys) -> None:
    root = world["root"]
    out_p = root / "phrases.parquet"
    rc = main(["phrases", "--blimp", str(world["blimp"]), "--tokenizer", str(TOKENIZER), "--all",
               "--out", str(out_p), "--quiet"])
    assert rc == 0
    p = read_phrases(out_p)
    assert p.column("phrase_bad").to_pylist() == [
        "Katherine can't help himself", "this sketches", "this art galleries", "dog bark", None,
    ]  # sorted by paradigm
    out_s = root / "splits.parquet"
    rc = main(["splits", "--phrases", str(out_p), "--index", str(root / "index"), "--out", str(out_s)])
    assert rc == 0
    check_table(pq.read_table(out_s))
    assert "proxy-train pairs at checkpoint S" in capsys.readouterr().out
    # --index instead of --tokenizer: the index's own tokenizer
    rc = main(["phrases", "--blimp", str(world["blimp"]), "--index", str(root / "index"),
               "--paradigms", "determiner_noun_agreement_1", "--out", str(root / "p2.parquet"), "--quiet"])
    assert rc == 0 and pq.read_table(root / "p2.parquet").num_rows == 1
    # a preset schedule whose items are not the index's (Pythia: 2049 tokens, here 32) is refused: its steps
    # would be wrong (it used to put everything at step 0)
    rc = main(["splits", "--phrases", str(out_p), "--index", str(root / "index"), "--schedule", "pythia",
               "--out", str(root / "s2.parquet"), "--quiet"])
    assert rc == 2 and not (root / "s2.parquet").exists()
    assert f"schedule 'pythia' has items of 2049 tokens but the index {root / 'index'} has items of {ITEM}" in (
        capsys.readouterr().err)
    # another schedule over the same items: twice the items per step halves every step
    other = Schedule("double", ITEM, 2 * PER_STEP, (0, 1, 2, 4, 8), total_steps=8)
    (root / "double.json").write_text(json.dumps(other.to_dict()))
    rc = main(["splits", "--phrases", str(out_p), "--index", str(root / "index"), "--schedule",
               str(root / "double.json"), "--out", str(root / "s2.parquet"), "--quiet"])
    assert rc == 0
    t1, t2 = pq.read_table(out_s).to_pylist(), pq.read_table(root / "s2.parquet").to_pylist()
    assert checkpoints_of(pq.read_table(root / "s2.parquet")) == (0, 1, 2, 4, 8)
    assert [r["first_step_good"] // 2 if r["first_step_good"] >= 0 else -1 for r in t1] == [
        r["first_step_good"] for r in t2]


def test_cli_user_errors(world, capsys) -> None:
    root = world["root"]
    assert main(["phrases", "--blimp", str(world["blimp"]), "--out", str(root / "x.parquet")]) == 2
    assert "give --tokenizer" in capsys.readouterr().err
    assert main(["splits", "--phrases", str(root / "missing.parquet"), "--index", str(root / "index"),
                 "--out", str(root / "x.parquet")]) == 2
    assert "no phrases table" in capsys.readouterr().err
    assert main(["splits", "--phrases", str(root / "phrases.parquet"), "--index", str(root / "index"),
                 "--schedule", "nonsense", "--out", str(root / "x.parquet")]) == 2
    assert "unknown schedule 'nonsense'" in capsys.readouterr().err
    pq.write_table(pa.table({"a": [1]}), root / "notphrases.parquet")
    assert main(["splits", "--phrases", str(root / "notphrases.parquet"), "--index", str(root / "index"),
                 "--out", str(root / "x.parquet")]) == 2
    assert "not a phrases table" in capsys.readouterr().err

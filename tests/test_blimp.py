"""Loading BLiMP (original jsonl, gzip'd jsonl, Hugging Face parquet layout) and the generator's vocabulary."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from exposure.blimp import (
    DEFAULT_PHENOMENA,
    PARADIGMS,
    PHENOMENA,
    BlimpPair,
    default_blimp_dir,
    find_vocabulary,
    load_blimp,
    paradigms_for,
    read_jsonl,
    read_vocabulary,
)

from _corpus_files import SHARED  # noqa: E402
BLIMP = SHARED / "blimp"

REC_DNA = {
    "sentence_good": "Raymond is selling this sketch.",
    "sentence_bad": "Raymond is selling this sketches.",
    "one_prefix_prefix": "Raymond is selling this",
    "one_prefix_word_good": "sketch",
    "one_prefix_word_bad": "sketches",
    "field": "morphology",
    "linguistics_term": "determiner_noun_agreement",
    "UID": "determiner_noun_agreement_1",
    "simple_LM_method": True,
    "one_prefix_method": True,
    "two_prefix_method": False,
    "lexically_identical": True,
    "pairID": "0",
}
REC_NPI = {
    "sentence_good": "Had Bruce ever played?",
    "sentence_bad": "Bruce had ever played.",
    "field": "syntax/semantics",
    "linguistics_term": "npi_licensing",
    "UID": "matrix_question_npi_licensor_present",
    "pairID": "7",
}


def write_jsonl(path: Path, records: list[dict], gz: bool = False) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in records)
    if gz:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def test_registry_lists_67_paradigms_in_13_phenomena() -> None:
    assert len(PARADIGMS) == 67
    assert len(PHENOMENA) == 13
    assert set(DEFAULT_PHENOMENA) <= set(PHENOMENA)
    # the five default phenomena hold 25 paradigms: 8 + 6 + 2 + 2 + 7
    assert len(paradigms_for(phenomena=DEFAULT_PHENOMENA) or ()) == 25


def test_paradigms_for_union_and_errors() -> None:
    got = paradigms_for(paradigms=["npi_present_1"], phenomena=["anaphor_agreement"])
    assert got == ("npi_present_1", "anaphor_gender_agreement", "anaphor_number_agreement")
    assert paradigms_for() is None
    with pytest.raises(ValueError, match="unknown BLiMP paradigm 'npi_present_9'"):
        paradigms_for(paradigms=["npi_present_9"])
    with pytest.raises(ValueError, match="unknown BLiMP phenomenon"):
        paradigms_for(phenomena=["agreement"])
    # a name of the other kind says which option takes it
    with pytest.raises(ValueError, match="'npi_present_1' is a BLiMP paradigm, not a phenomenon: choose it with --paradigms"):
        paradigms_for(phenomena=["npi_present_1"])
    with pytest.raises(ValueError, match="'npi_licensing' is a BLiMP phenomenon, not a paradigm: choose it with --phenomena"):
        paradigms_for(paradigms=["npi_licensing"])


def test_read_jsonl_fields_and_normalized_field(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "determiner_noun_agreement_1.jsonl", [REC_DNA])
    (p,) = read_jsonl(f)
    assert p == BlimpPair(
        "determiner_noun_agreement_1", 0, "determiner_noun_agreement", "morphology",
        "Raymond is selling this sketch.", "Raymond is selling this sketches.",
    )
    assert p.pair_uid == "determiner_noun_agreement_1/0"
    assert p.extras["one_prefix_word_bad"] == "sketches"
    g = write_jsonl(tmp_path / "matrix_question_npi_licensor_present.jsonl", [REC_NPI])
    (q,) = read_jsonl(g)
    assert q.field == "syntax_semantics"  # principle_A_case_2's "syntax/semantics" quirk, normalized
    assert q.pair_id == 7
    # a byte-order mark before the first record (it read as "not valid JSON" at line 1)
    marked = tmp_path / "bom" / "determiner_noun_agreement_1.jsonl"
    marked.parent.mkdir()
    marked.write_bytes(b"\xef\xbb\xbf" + f.read_bytes())
    assert read_jsonl(marked) == [p]


def test_malformed_jsonl_names_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "npi_present_1.jsonl"
    f.write_text(json.dumps(REC_DNA) + "\n" + '{"sentence_good": "A", \n')
    with pytest.raises(ValueError, match=r"npi_present_1\.jsonl:2: not valid JSON"):
        read_jsonl(f)
    f.write_text(json.dumps({**REC_DNA, "pairID": "x1"}) + "\n")
    with pytest.raises(ValueError, match=r"npi_present_1\.jsonl:1: missing or non-integer pair id"):
        read_jsonl(f)
    f.write_text(json.dumps({k: v for k, v in REC_DNA.items() if k != "sentence_bad"}) + "\n")
    with pytest.raises(ValueError, match=r":1: missing or non-string field 'sentence_bad'"):
        read_jsonl(f)
    f.write_text("[1, 2]\n")
    with pytest.raises(ValueError, match=r":1: expected a JSON object"):
        read_jsonl(f)


def test_uid_falls_back_to_file_name(tmp_path: Path) -> None:
    rec = {k: v for k, v in REC_NPI.items() if k != "UID"}
    (p,) = read_jsonl(write_jsonl(tmp_path / "matrix_question_npi_licensor_present.jsonl.gz", [rec], gz=True))
    assert p.uid == "matrix_question_npi_licensor_present"


def test_load_directory_selects_sorts_and_checks(tmp_path: Path) -> None:
    recs = [dict(REC_DNA, pairID=str(i), sentence_good=f"G{i}.") for i in (2, 0, 1)]
    write_jsonl(tmp_path / "determiner_noun_agreement_1.jsonl", recs)
    write_jsonl(tmp_path / "matrix_question_npi_licensor_present.jsonl.gz", [REC_NPI], gz=True)
    pairs = load_blimp(tmp_path)
    assert [p.pair_uid for p in pairs] == [
        "determiner_noun_agreement_1/0", "determiner_noun_agreement_1/1", "determiner_noun_agreement_1/2",
        "matrix_question_npi_licensor_present/7",
    ]
    # npi_licensing selects 7 paradigms and only one is here
    with pytest.raises(ValueError, match="no pairs for paradigm"):
        load_blimp(tmp_path, phenomena=["npi_licensing"])
    only = load_blimp(tmp_path, paradigms=["matrix_question_npi_licensor_present"])
    assert [p.pair_uid for p in only] == ["matrix_question_npi_licensor_present/7"]
    write_jsonl(tmp_path / "dup.jsonl", [dict(REC_DNA, pairID="1")])
    with pytest.raises(ValueError, match="determiner_noun_agreement_1/1 occurs more than once"):
        load_blimp(tmp_path)


def test_huggingface_parquet_layout(tmp_path: Path) -> None:
    """nyu-mll/blimp: one folder per paradigm, int32 pair_id, no prefix fields; both branch layouts."""
    for uid, sub in (("determiner_noun_agreement_1", "train-00000-of-00001.parquet"),
                     ("matrix_question_npi_licensor_present", "train/0000.parquet")):
        src = REC_DNA if uid.startswith("determiner") else REC_NPI
        t = pa.table({
            "sentence_good": [src["sentence_good"]],
            "sentence_bad": [src["sentence_bad"]],
            "field": [src["field"]],
            "linguistics_term": [src["linguistics_term"]],
            "UID": [uid],
            "simple_LM_method": [True],
            "one_prefix_method": [False],
            "two_prefix_method": [False],
            "lexically_identical": [False],
            "pair_id": pa.array([int(src["pairID"])], type=pa.int32()),
        })
        path = tmp_path / uid / sub
        path.parent.mkdir(parents=True)
        pq.write_table(t, path)
    pairs = load_blimp(tmp_path)
    assert [(p.uid, p.pair_id, p.sentence_bad) for p in pairs] == [
        ("determiner_noun_agreement_1", 0, "Raymond is selling this sketches."),
        ("matrix_question_npi_licensor_present", 7, "Bruce had ever played."),
    ]
    # without a UID column the paradigm comes from the folder name
    t = pq.read_table(tmp_path / "determiner_noun_agreement_1" / "train-00000-of-00001.parquet").drop_columns(["UID"])
    pq.write_table(t, tmp_path / "determiner_noun_agreement_1" / "train-00000-of-00001.parquet")
    assert load_blimp(tmp_path)[0].uid == "determiner_noun_agreement_1"


def test_missing_directory_and_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_blimp(tmp_path / "nope")
    with pytest.raises(ValueError, match="no BLiMP"):
        load_blimp(tmp_path)


VOCAB_CSV = (
    "expression,category,category_2,noun,sg,pl,properNoun,verb,pluralform,singularform,gender\r\n"
    "sketch,N,N,1,1,0,0,,sketches,,\r\n"
    "face,N,N,1,1,0,0,,faces,,\r\n"
    "this,(S/(S\\NP))/N,D,,,,,,,,\r\n"
    "Katherine,N,N,1,1,0,1,,,,f\r\n"
    "grocery store,N,N,1,1,0,0,,grocery stores,,\r\n"
    "herself,,refl,,,,,,,,\r\n"
    "has,(S\\NP)/(S[bare]\\NP),aux,,,,,,,,\r\n"
    "sister of,N/NP,RelN,1,1,0,0,,,,f"
)


def test_vocabulary_features_and_derived_forms(tmp_path: Path) -> None:
    f = tmp_path / "vocabulary.csv"
    f.write_text(VOCAB_CSV)
    v = read_vocabulary(f)
    assert v.is_noun("sketch") and v.is_noun("sketches")  # plural derived from the pluralform cell
    assert v.is_noun("faces") and not v.is_noun("this")
    assert v.is_determiner("This")  # sentence-initial lookup falls back to lowercase
    assert v.is_proper_noun("Katherine") and not v.is_proper_noun("sketch")
    assert v.is_reflexive("herself") and v.is_auxiliary("has")
    assert not v.is_noun("sister of")  # relational noun written with its preposition
    assert set(v.nominal_multiword["grocery"]) == {("grocery", "store"), ("grocery", "stores")}
    assert v.is_noun("grocery stores")
    g = tmp_path / "vocabulary.csv.gz"
    g.write_bytes(gzip.compress(VOCAB_CSV.encode()))
    assert read_vocabulary(g).entries.keys() == v.entries.keys()


def test_vocabulary_errors(tmp_path: Path) -> None:
    f = tmp_path / "v.csv"
    f.write_text("word,category\r\nx,N\r\n")
    with pytest.raises(ValueError, match=r"v\.csv:1: not the BLiMP vocabulary"):
        read_vocabulary(f)
    f.write_text("expression,category\r\nx,N,extra\r\n")
    with pytest.raises(ValueError, match=r"v\.csv:2: 3 cells, the header has 2"):
        read_vocabulary(f)


def test_find_vocabulary_next_to_blimp(tmp_path: Path) -> None:
    (tmp_path / "vocabulary.csv").write_text(VOCAB_CSV)
    assert find_vocabulary(tmp_path) == tmp_path / "vocabulary.csv"
    assert find_vocabulary(None, tmp_path / "vocabulary.csv") == tmp_path / "vocabulary.csv"
    with pytest.raises(FileNotFoundError, match="no vocabulary file"):
        find_vocabulary(None, tmp_path / "missing.csv")


def test_bundled_copy_holds_the_default_paradigms() -> None:
    if not default_blimp_dir().is_dir():
        pytest.skip("no bundled BLiMP copy in this checkout")
    pairs = load_blimp()
    assert {p.uid for p in pairs} == set(paradigms_for(phenomena=DEFAULT_PHENOMENA) or ())
    assert len(pairs) == 25_000


@pytest.mark.skipif(not (BLIMP / "vocabulary.csv").is_file(), reason="shared BLiMP data not available")
def test_full_blimp_and_vocabulary() -> None:
    pairs = load_blimp(BLIMP)
    assert len(pairs) == 67_000 and {p.uid for p in pairs} == set(PARADIGMS)
    assert all(p.phenomenon == PARADIGMS[p.uid] for p in pairs)
    identical = sorted(p.pair_uid for p in pairs if p.sentence_good == p.sentence_bad)
    assert identical == sorted(
        ["passive_1/324", "passive_1/810"] + [f"principle_A_case_2/{i}" for i in (105, 287, 372, 816, 967)]
    )
    v = read_vocabulary(BLIMP / "vocabulary.csv")
    assert v.is_noun("Katherine") and v.is_proper_noun("Katherine") and v.is_determiner("these")
    assert v.is_noun("faces")  # only "face" (with pluralform "faces") is in the file

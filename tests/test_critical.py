"""Critical phrases: alignment, rules, token spans, surface variants, the hand-annotated gold set."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from exposure.blimp import DEFAULT_PHENOMENA, PARADIGMS, BlimpPair, find_vocabulary, load_blimp, read_vocabulary
from exposure.critical import (
    RULES,
    align_tokens,
    align_words,
    coverage,
    distinct_queries,
    find_critical_phrase,
    find_critical_phrases,
    phrase_table,
    split_words,
    surface_variants,
)

from _corpus_files import BLIMP, TOKENIZER  # noqa: E402
from _corpus_files import NEOX_TOKENIZER as NEOX  # noqa: E402

VOCAB = find_vocabulary(BLIMP)  # the shared copy, else the bundled one (the whole vocabulary either way)
GOLD = Path(__file__).parent / "data" / "critical_gold.jsonl"

needs_neox = pytest.mark.skipif(not NEOX.is_file(), reason=f"shared tokenizer not at {NEOX}")


@pytest.fixture(scope="module")
def vocab():
    return read_vocabulary(VOCAB)


@pytest.fixture(scope="module")
def neox():
    from exposure.tokenizer import load_tokenizer

    return load_tokenizer(NEOX)


@pytest.fixture(scope="module")
def tokenizer():
    """GPT-NeoX's where the shared data is, else the bundled one: for tests that hold no token ids."""
    from exposure.tokenizer import load_tokenizer

    return load_tokenizer(TOKENIZER)


def pair(uid: str, good: str, bad: str, pid: int = 0) -> BlimpPair:
    return BlimpPair(uid, pid, PARADIGMS[uid], "", good, bad)


# ------------------------------------------------------------------------------------------ words, alignment
def test_split_words_spans() -> None:
    ws = split_words("Katherine can't help herself.")
    assert [(w.text, w.start, w.end, w.is_punct) for w in ws] == [
        ("Katherine", 0, 9, False), ("can't", 10, 15, False), ("help", 16, 20, False),
        ("herself", 21, 28, False), (".", 28, 29, True),
    ]
    assert split_words("Carla's ex-boyfriend?")[0].is_possessive
    assert [w.text for w in split_words("Who, me?")] == ["Who", ",", "me", "?"]


def test_align_substitution() -> None:
    al = align_words("Raymond is selling this sketch .".split(), "Raymond is selling this sketches .".split())
    assert al.kind == "substitution"
    assert al.regions_good == ((4, 4),) and al.regions_bad == ((4, 4),)
    assert al.runs("good") == [(4, 4)] and al.moves == ()


def test_align_insertion_and_identical() -> None:
    al = align_words("Kendra won't talk to Tiffany .".split(), "Kendra won't talk Tiffany .".split())
    assert al.kind == "deletion" and al.regions_good == ((3, 3),) and al.regions_bad == ()
    assert align_words("a b".split(), "b c".split()).kind == "substitution"
    assert align_words(["A", "b"], ["a", "B"]).kind == "identical"  # case is not a lexical difference


def test_align_move_spans_what_it_crosses() -> None:
    """Subject-auxiliary inversion: the moved auxiliary and the subject it crosses form the region."""
    al = align_words("Had Bruce ever played ?".split(), "Bruce had ever played .".split())
    assert len(al.moves) == 1  # "had" moves over "Bruce" (or, equivalently, "Bruce" over "had")
    assert al.regions_good == ((0, 1), (4, 4)) and al.regions_bad == ((0, 1), (4, 4))
    assert al.kind == "mixed"
    g = "The associations that had worried Cynthia have not ever planned .".split()
    b = "The associations that had not worried Cynthia have ever planned .".split()
    al = align_words(g, b)
    assert al.kind == "reordering"
    assert al.regions_good == ((4, 7),)  # worried Cynthia have not
    assert al.regions_bad == ((4, 7),)  # not worried Cynthia have


def test_align_tokens() -> None:
    assert align_tokens([1, 2, 3, 4], [1, 5, 3, 4]) == ([1], [1])
    assert align_tokens([7, 8, 9], [7, 8, 9, 10]) == ([], [3])
    assert align_tokens([5, 6, 7], [6, 7, 5]) == ([0], [2])


# ------------------------------------------------------------------------------------------ variants, queries
def test_surface_variants() -> None:
    assert surface_variants("these dogs", False) == [" these dogs", "these dogs", " These dogs", "These dogs"]
    assert surface_variants("Boys hurt themselves", False) == [
        " Boys hurt themselves", "Boys hurt themselves", " boys hurt themselves", "boys hurt themselves",
    ]
    # a proper name keeps its capital
    assert surface_variants("Katherine can't help herself", True) == [
        " Katherine can't help herself", "Katherine can't help herself",
    ]
    assert surface_variants("not ever", False)[2:] == [" Not ever", "Not ever"]


def test_distinct_queries_never_count_an_occurrence_twice() -> None:
    # a duplicate is dropped, and so is a query extending a kept one (its occurrences are the other's)
    assert distinct_queries([[1, 2], [1, 2], [1, 2, 3], [4], []]) == [0, 3]
    assert distinct_queries([[1, 2, 3], [1, 2]]) == [1]
    assert distinct_queries([[5, 6], [6, 5]]) == [0, 1]


# ------------------------------------------------------------------------------------------ rule registry
def test_every_paradigm_has_a_rule_or_a_documented_reason() -> None:
    assert set(RULES) == set(PARADIGMS)
    for uid, rule in RULES.items():
        assert rule.uid == uid
        if rule.func is None:
            assert len(rule.reason) > 60, uid
            assert rule.description.startswith("no rule: ")
        else:
            assert rule.reason == "" and len(rule.description) > 30, uid
    for uid, phen in PARADIGMS.items():
        if phen in DEFAULT_PHENOMENA:
            assert RULES[uid].has_rule, uid


# ------------------------------------------------------------------------------------------ rules on known pairs
CASES = [
    # uid, good, bad, phrase_good, phrase_bad, critical_good, context_good
    ("determiner_noun_agreement_1", "Craig explored that grocery store.", "Craig explored that grocery stores.",
     "that grocery store", "that grocery stores", "store", "that"),
    ("determiner_noun_agreement_2", "Tracy passed these art galleries.", "Tracy passed this art galleries.",
     "these art galleries", "this art galleries", "galleries", "these"),
    ("determiner_noun_agreement_1", "Diana breaks this couch.", "Diana breaks this couchs.",
     "this couch", "this couchs", "couch", "this"),  # the generator's misspelling is in no lexicon
    ("regular_plural_subject_verb_agreement_1", "Most legislatures haven't disliked children.",
     "Most legislatures hasn't disliked children.", "legislatures haven't", "legislatures hasn't", "haven't",
     "legislatures"),
    ("distractor_agreement_relational_noun", "A newspaper article about the Borgias has disagreed with Marcus.",
     "A newspaper article about the Borgias have disagreed with Marcus.",
     "newspaper article about the Borgias has", "newspaper article about the Borgias have", "has", "article"),
    ("distractor_agreement_relational_noun", "The shows about Spain were alarming that person.",
     "The shows about Spain was alarming that person.", "shows about Spain were", "shows about Spain was",
     "were", "shows"),  # the lexicon knows "shows" only as a verb
    ("anaphor_number_agreement", "These patients do respect themselves.", "These patients do respect himself.",
     "patients do respect themselves", "patients do respect himself", "themselves", "patients"),
    ("principle_A_c_command", "A lot of patients who can sell some couch didn't investigate themselves.",
     "A lot of patients who can sell some couch didn't investigate itself.",
     "patients who can sell some couch didn't investigate themselves",
     "patients who can sell some couch didn't investigate itself", "themselves", "patients"),
    ("irregular_past_participle_verbs", "The mushroom went bad.", "The mushroom gone bad.",
     "mushroom went", "mushroom gone", "went", "mushroom"),
    ("irregular_past_participle_adjectives", "The hidden offspring aren't confident.",
     "The hid offspring aren't confident.", "hidden offspring", "hid offspring", "offspring", "hidden"),
    ("matrix_question_npi_licensor_present", "Do some carts ever accelerate?", "Some carts do ever accelerate.",
     "Do some carts ever", "Some carts do ever", "ever", "Do"),
    ("only_npi_scope", "Only a popsicle that Danielle admires ever freezes.",
     "A popsicle that only Danielle admires ever freezes.",
     "Only a popsicle that Danielle admires ever", "A popsicle that only Danielle admires ever", "ever", "Only"),
    ("npi_present_2", "Tamara really exited those mountains.", "Tamara ever exited those mountains.",
     "Tamara really", "Tamara ever", "really", "Tamara"),
    ("drop_argument", "Travis is touring.", "Travis is revealing.", "touring.", "revealing.", ".", "touring"),
    ("transitive", "Kendra will talk to Tiffany.", "Kendra will talk Tiffany.",
     "talk to Tiffany", "talk Tiffany", "Tiffany", "to"),
    ("principle_A_domain_3", "Steven explains Kayla won't hurt herself.", "Kayla explains Steven won't hurt herself.",
     "Kayla won't hurt herself", "Steven won't hurt herself", "herself", "Kayla"),
    ("left_branch_island_simple_question", "Whose museums had Dana alarmed?", "Whose had Dana alarmed museums?",
     "Whose museums", "Whose had", "museums", "Whose"),
    ("principle_A_reconstruction", "It's himself that this cashier attacked.",
     "It's himself that attacked this cashier.", "himself that this cashier attacked",
     "himself that attacked this cashier", "attacked", "himself"),
    ("expletive_it_object_raising", "Tara would ascertain it to be noteworthy that Kenneth didn't wash.",
     "Tara wouldn't entice it to be noteworthy that Kenneth didn't wash.",
     "ascertain it to be noteworthy", "entice it to be noteworthy", "noteworthy", "ascertain"),
]


@pytest.mark.parametrize("uid,good,bad,pg,pb,crit,ctx", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_rule_examples(vocab, uid, good, bad, pg, pb, crit, ctx) -> None:
    r = find_critical_phrase(pair(uid, good, bad), vocab)
    assert r.has_phrase, r.note
    assert (r.good.text, r.bad.text) == (pg, pb)
    assert good[slice(*r.good.critical_chars)] == crit
    assert good[slice(*r.good.context_chars)] == ctx
    assert good[r.good.char_start : r.good.char_end] == pg and bad[r.bad.char_start : r.bad.char_end] == pb


def test_no_phrase_cases(vocab) -> None:
    r = find_critical_phrase(pair("wh_island", "Who have those men revealed they helped?",
                                  "Who have those men revealed who helped?"), vocab)
    assert not r.has_phrase and r.rule == "none" and r.note == "no rule for this paradigm"
    r = find_critical_phrase(pair("principle_A_case_2", "Same words here.", "Same words here."), vocab)
    assert not r.has_phrase and r.note == "the two sentences are identical"
    r = find_critical_phrase(pair("anaphor_gender_agreement", "Susan likes Mary.", "Susan likes Bill."), vocab)
    assert not r.has_phrase and "not a reflexive" in r.note


# ------------------------------------------------------------------------------------------ token spans
@needs_neox
def test_token_spans_and_queries(vocab, neox) -> None:
    pairs = [
        pair("determiner_noun_agreement_1", "Eva has scared these dogs.", "Eva has scared these dog."),
        pair("anaphor_number_agreement", "Boys hurt themselves.", "Boys hurt herself.", 1),
        pair("wh_island", "Who have those men revealed they helped?", "Who have those men revealed who helped?", 2),
    ]
    t = phrase_table(find_critical_phrases(pairs, vocab), neox)
    rows = t.to_pylist()
    enc = [neox.encode(p.sentence_good) for p in pairs]
    dec = neox.tokenizer.decode
    r0 = rows[0]
    ids = enc[0]
    assert dec([ids[r0["good_critical_token"]]]) == " dogs"
    assert r0["good_critical_start"] == r0["good_critical_token"]
    assert dec([ids[r0["good_context_token"]]]) == " these"
    assert dec(ids[r0["good_token_start"] : r0["good_token_end"]]) == " these dogs"
    # README of the shared data: " these dogs" -> [841, 9097], "these dogs" -> [20513, 9097]
    assert [841, 9097] in r0["query_good"] and [20513, 9097] in r0["query_good"]
    assert r0["variants_good"] == [" these dogs", "these dogs", " These dogs", "These dogs"]
    assert r0["good_contrast_tokens"] == [r0["good_critical_token"]]
    r1 = rows[1]
    assert r1["phrase_good"] == "Boys hurt themselves" and r1["good_token_start"] == 0
    assert dec(enc[1][: r1["good_context_token"] + 1]) == "Boys"
    assert "boys hurt themselves" in r1["variants_good"]
    r2 = rows[2]
    assert not r2["has_phrase"] and r2["phrase_good"] is None and r2["query_good"] == []
    for c in ("good_critical_start", "good_critical_token", "good_context_token", "bad_critical_token"):
        assert r2[c] == -1
    meta = t.schema.metadata
    assert meta[b"exposure.tokenizer_sha256"].decode() == neox.sha256


def test_token_spans_decode_to_the_words_on_real_pairs(vocab, tokenizer) -> None:
    """For 1,500 random pairs of the default phenomena, the token spans decode to the phrase and to the
    critical word, and the context token ends the context word."""
    pairs = random.Random(0).sample(load_blimp(BLIMP, phenomena=DEFAULT_PHENOMENA), 1500)
    t = phrase_table(find_critical_phrases(pairs, vocab), tokenizer)
    dec = tokenizer.tokenizer.decode
    for row in t.to_pylist():
        for side in ("good", "bad"):
            ids = tokenizer.encode(row[f"sentence_{side}"])
            a, b = row[f"{side}_critical_start"], row[f"{side}_critical_token"]
            assert dec(ids[a : b + 1]).strip() == row[f"{side}_critical_word"], row["pair_uid"]
            ctx = row[f"{side}_context_word"]
            assert dec(ids[: row[f"{side}_context_token"] + 1]).rstrip().endswith(ctx), row["pair_uid"]
            s, e = row[f"{side}_token_start"], row[f"{side}_token_end"]
            assert dec(ids[s:e]).strip() == row[f"phrase_{side}"], row["pair_uid"]
            queries = row[f"query_{side}"]
            assert len(queries) == len(set(map(tuple, queries))) and len(queries) >= 2


def test_parallel_workers_give_the_same_table(vocab, tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The workers are not forked copies of this process, which may hold threads (the tokenizer's, torch's):
    a lock held by one of them at the fork would never be released in the copy."""
    import os

    from exposure.critical import critical_phrases

    pairs = load_blimp(BLIMP, phenomena=["npi_licensing"])[:4000]
    one = critical_phrases(pairs, vocab, tokenizer, workers=1)

    def no_fork() -> int:
        raise AssertionError("critical_phrases forked the calling process")

    monkeypatch.setattr(os, "fork", no_fork)
    two = critical_phrases(pairs, vocab, tokenizer, workers=2)
    assert one.equals(two) and one.schema.metadata == two.schema.metadata


# ------------------------------------------------------------------------------------------ gold
def load_gold() -> list[dict]:
    return [json.loads(line) for line in GOLD.read_text().splitlines() if line.strip()]


def test_gold_file_is_well_formed() -> None:
    gold = load_gold()
    assert len(gold) >= 150
    per = Counter(PARADIGMS[g["uid"]] for g in gold)
    assert set(per) == set(DEFAULT_PHENOMENA) and min(per.values()) >= 25, per
    assert len({(g["uid"], g["pair_id"]) for g in gold}) == len(gold)
    for g in gold:
        assert g["phrase_good"] in g["sentence_good"] and g["phrase_bad"] in g["sentence_bad"], g
        assert len(g["reason"]) >= 15, g


def test_gold_exact_match(vocab) -> None:
    gold = load_gold()
    misses = []
    for g in gold:
        r = find_critical_phrase(pair(g["uid"], g["sentence_good"], g["sentence_bad"], g["pair_id"]), vocab)
        got = (r.good.text, r.bad.text) if r.has_phrase else (None, None)
        if got != (g["phrase_good"], g["phrase_bad"]):
            misses.append((g["uid"], g["pair_id"], got, (g["phrase_good"], g["phrase_bad"])))
    exact = 1 - len(misses) / len(gold)
    print(f"gold exact match: {len(gold) - len(misses)}/{len(gold)} = {exact:.3f}")
    assert exact >= 0.95, misses
    by_uid = {}  # the gold sentences are BLiMP's own
    for p in load_blimp(BLIMP, paradigms=sorted({g["uid"] for g in gold})):
        by_uid[(p.uid, p.pair_id)] = p
    for g in gold:
        p = by_uid[(g["uid"], g["pair_id"])]
        assert (p.sentence_good, p.sentence_bad) == (g["sentence_good"], g["sentence_bad"])


# ------------------------------------------------------------------------------------------ real data
def test_default_phenomena_coverage_and_blimp_scored_word(vocab) -> None:
    """Every default paradigm gets a phrase for >= 99.5% of its pairs, and the critical word lies inside
    the word BLiMP itself scores (one_prefix_word_* / two_prefix_word) wherever BLiMP gives one."""
    pairs = load_blimp(BLIMP, phenomena=DEFAULT_PHENOMENA)
    results = find_critical_phrases(pairs, vocab)
    per: dict[str, list[int]] = {}
    checked = agree = 0
    for r in results:
        c = per.setdefault(r.pair.uid, [0, 0])
        c[0] += 1
        c[1] += r.has_phrase
        e = r.pair.extras
        if not r.has_phrase or not ("one_prefix_prefix" in e or "two_prefix_word" in e):
            continue
        for side, sp, sent in (("good", r.good, r.pair.sentence_good), ("bad", r.bad, r.pair.sentence_bad)):
            if "one_prefix_prefix" in e:
                start, word = len(e["one_prefix_prefix"]) + 1, e[f"one_prefix_word_{side}"]
            else:
                start, word = len(e[f"two_prefix_prefix_{side}"]) + 1, e["two_prefix_word"].strip()
            s0 = sent.index(word, start - 1)
            checked += 1
            agree += s0 <= sp.critical_chars[0] and sp.critical_chars[1] <= s0 + len(word)
    assert len(per) == 25
    for uid, (n, got) in per.items():
        assert got / n >= 0.995, (uid, got, n)
    assert checked > 30_000 and agree == checked


def test_coverage_counts() -> None:
    import pyarrow as pa

    t = pa.table({"uid": ["a", "a", "b"], "phenomenon": ["x", "x", "y"], "rule": ["r", "r", "none"],
                  "has_phrase": [True, False, False]})
    rows = {c.uid: (c.pairs, c.with_phrase) for c in coverage(t)}
    assert rows == {"a": (2, 1), "b": (1, 0)}


def test_cli_lists_every_rule(capsys) -> None:
    from exposure.cli import main

    assert main(["phrases", "--rules"]) == 0
    out = capsys.readouterr().out
    for uid in PARADIGMS:
        assert f"\n{uid}  [" in "\n" + out, uid
    assert out.count("no rule: ") == sum(1 for r in RULES.values() if not r.has_rule)
    assert main(["phrases", "--tokenizer", "x"]) == 2
    assert "--out is required" in capsys.readouterr().err

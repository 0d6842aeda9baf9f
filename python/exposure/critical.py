"""Critical phrases of BLiMP minimal pairs.

The *critical phrase* of a sentence of a minimal pair is the smallest contiguous span of its words that
holds the grammatical contrast and the context the phenomenon depends on ("these dogs" / "these dog").

How it is found, for every pair:

1. **Words.** Each sentence is split at whitespace; sentence-final punctuation is a word of its own.
2. **Contrast** (:func:`align_words`). The two word sequences are aligned case-insensitively (sentence-
   initial capitalization is not a lexical difference) by a longest-common-subsequence match. Words
   outside the match are the contrast. A word that is unmatched in both sentences but at different
   places is a *move* (a reordering: "Had Bruce ever" / "Bruce had ever"); a move's contrast region in
   each sentence is the moved word plus every word it crosses, because a difference of order is a
   relation between the moved word and what it moves over. Substitutions, insertions and deletions
   are runs of unmatched words. The token sequences are aligned the same way (:func:`align_tokens`) and
   the unmatched tokens are reported too.
3. **Context** (the rules of :data:`RULES`). Each paradigm has a rule that uses the contrast and the
   generator's vocabulary (:class:`exposure.blimp.Vocabulary`) to name two words per sentence: the
   **critical word**, where the contrast is decided reading left to right (the noun for determiner–noun
   agreement, the verb for subject–verb agreement, the reflexive for anaphor agreement, *ever* for NPI
   licensing), and the **context word** it depends on (the determiner, the subject's head noun, the
   antecedent, the licensor). Paradigms without a sensible local phrase have no rule, and their entry
   says why.
4. **Phrase.** The span from the first to the last of {critical word, context word}, widened (unless
   the rule says otherwise) by every contrast region it touches, until nothing more is added. So the
   phrase always holds the contrast near the dependency and, for a reordering, both orders.

Token positions (:func:`phrase_table`) follow docs/CONTRACTS.md: indices into
``tokenizer.encode(sentence).ids`` of the sentence as written (no leading space, no special tokens);
``critical_start..critical_token`` (inclusive) are the critical word's tokens, ``critical_token`` its
last; ``context_token`` is the last token of the context word; -1 when the pair has no phrase.

Surface variants (:func:`surface_variants`): a phrase is queried as written and with the other
capitalization of its first letter (sentence-initial "These dogs" vs mid-sentence "these dogs"; never
for a proper name), each with and without a leading space. Variants that tokenize identically are
kept once, and a variant whose tokens extend another variant's tokens is dropped (every occurrence of
it is an occurrence of the shorter one), so summed counts never count one occurrence twice.
"""

from __future__ import annotations

import bisect
import multiprocessing
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any, NamedTuple, Protocol

import pyarrow as pa

from exposure.blimp import PARADIGMS, BlimpPair, Vocabulary

PUNCTUATION = frozenset(".?!,;:")
NPI_WORDS = frozenset({"ever", "any", "yet"})
WH_DETERMINERS = frozenset({"what", "which", "whose"})
NEGATION = "not"
# sentence-initial words that are not in the vocabulary and are not names
_FUNCTION_WORDS = frozenset(
    {"even", "only", "also", "not", "and", "or", "what", "who", "whose", "which", "there", "it"}
)


_ARTICLE_LIKE = frozenset(
    {"the", "a", "an", "this", "these", "those", "every", "each", "some", "most", "many", "all", "no", "few"}
)


class RuleFailure(Exception):
    """A rule found no phrase for a pair; the message says why."""


# ---------------------------------------------------------------------------------------------- words


class Word(NamedTuple):
    """A word of a sentence with its character span ``[start, end)``."""

    text: str
    start: int
    end: int
    lower: str
    is_punct: bool

    @property
    def is_possessive(self) -> bool:
        t = self.text
        return t.endswith("'s") or (t.endswith("'") and len(t) > 1)


_WORD_RE = re.compile(r"[^\s.?!,;:]+|[.?!,;:]+")


def split_words(sentence: str) -> list[Word]:
    """Words of ``sentence``: runs of characters other than whitespace and punctuation (``.?!,;:``);
    each run of punctuation is a word of its own."""
    out = []
    for m in _WORD_RE.finditer(sentence):
        t = m.group()
        out.append(Word(t, m.start(), m.end(), t.lower(), t[0] in PUNCTUATION))
    return out


# ---------------------------------------------------------------------------------------------- alignment


Region = tuple[int, int]
"""An inclusive range of word indices."""


@dataclass(frozen=True)
class Alignment:
    """Word alignment of a good and a bad sentence (see the module docstring)."""

    matched: tuple[tuple[int, int], ...]
    unmatched_good: tuple[int, ...]
    unmatched_bad: tuple[int, ...]
    moves: tuple[tuple[int, int], ...]
    regions_good: tuple[Region, ...]
    regions_bad: tuple[Region, ...]

    @property
    def kind(self) -> str:
        """``identical``, ``reordering``, ``substitution``, ``insertion`` (words only in the bad
        sentence), ``deletion`` (only in the good one) or ``mixed`` (a reordering plus other edits)."""
        if not self.unmatched_good and not self.unmatched_bad:
            return "identical"
        moved_g = {i for i, _ in self.moves}
        moved_b = {j for _, j in self.moves}
        rest_g = [i for i in self.unmatched_good if i not in moved_g]
        rest_b = [j for j in self.unmatched_bad if j not in moved_b]
        if self.moves:
            return "reordering" if not rest_g and not rest_b else "mixed"
        if rest_g and rest_b:
            return "substitution"
        return "deletion" if rest_g else "insertion"

    def runs(self, side: str) -> list[Region]:
        """Maximal runs of consecutive unmatched words of ``side`` (``good``/``bad``) that are not moves."""
        un = self.unmatched_good if side == "good" else self.unmatched_bad
        moved = {m[0] if side == "good" else m[1] for m in self.moves}
        return _runs([i for i in un if i not in moved])

    def regions(self, side: str) -> tuple[Region, ...]:
        return self.regions_good if side == "good" else self.regions_bad


def _runs(indices: Sequence[int]) -> list[Region]:
    out: list[Region] = []
    for i in indices:
        if out and out[-1][1] == i - 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


def _merge(regions: Iterable[Region]) -> tuple[Region, ...]:
    out: list[Region] = []
    for a, b in sorted(regions):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return tuple(out)


def _lcs_pairs(g: Sequence[Any], b: Sequence[Any]) -> list[tuple[int, int]]:
    """Matched index pairs of a longest-common-subsequence style match: the common prefix and suffix,
    and in between the matching blocks of :class:`difflib.SequenceMatcher` (only when the middles share
    an element)."""
    n, m = len(g), len(b)
    p = 0
    while p < n and p < m and g[p] == b[p]:
        p += 1
    q = 0
    while q < n - p and q < m - p and g[n - 1 - q] == b[m - 1 - q]:
        q += 1
    pairs = [(k, k) for k in range(p)]
    mid_g, mid_b = g[p : n - q], b[p : m - q]
    if mid_g and mid_b and not set(mid_g).isdisjoint(mid_b):
        sm = SequenceMatcher(None, mid_g, mid_b, autojunk=False)
        for blk in sm.get_matching_blocks():
            pairs.extend((p + blk.a + k, p + blk.b + k) for k in range(blk.size))
    pairs.extend((n - q + k, m - q + k) for k in range(q))
    return pairs


def align_words(good: Sequence[str], bad: Sequence[str]) -> Alignment:
    """Align two word sequences case-insensitively; find substitutions, insertions, deletions and moves."""
    g = [w.lower() for w in good]
    b = [w.lower() for w in bad]
    matched = _lcs_pairs(g, b)
    lcs_g = [i for i, _ in matched]
    lcs_b = [j for _, j in matched]
    in_g, in_b = set(lcs_g), set(lcs_b)
    un_g = [i for i in range(len(g)) if i not in in_g]
    un_b = [j for j in range(len(b)) if j not in in_b]

    def slot_g(i: int) -> int:
        return bisect.bisect_left(lcs_g, i)

    def slot_b(j: int) -> int:
        return bisect.bisect_left(lcs_b, j)

    moves: list[tuple[int, int]] = []
    if un_g and un_b and not {g[i] for i in un_g}.isdisjoint(b[j] for j in un_b):
        pool: dict[str, list[int]] = defaultdict(list)
        for j in un_b:
            pool[b[j]].append(j)
        used: set[int] = set()
        for i in un_g:
            s = slot_g(i)
            cands = [j for j in pool.get(g[i], ()) if j not in used and slot_b(j) != s]
            if cands:
                j = min(cands, key=lambda j: (abs(slot_b(j) - s), j))
                used.add(j)
                moves.append((i, j))
    reg_g: list[Region] = []
    reg_b: list[Region] = []
    for i, j in moves:
        s, t = slot_g(i), slot_b(j)
        if s < t:
            reg_g.append((i, lcs_g[t - 1]))
            reg_b.append((lcs_b[s], j))
        else:
            reg_g.append((lcs_g[t], i))
            reg_b.append((j, lcs_b[s - 1]))
    moved_g = {i for i, _ in moves}
    moved_b = {j for _, j in moves}
    reg_g.extend(_runs([i for i in un_g if i not in moved_g]))
    reg_b.extend(_runs([j for j in un_b if j not in moved_b]))
    return Alignment(
        matched=tuple(matched),
        unmatched_good=tuple(un_g),
        unmatched_bad=tuple(un_b),
        moves=tuple(moves),
        regions_good=_merge(reg_g),
        regions_bad=_merge(reg_b),
    )


def align_tokens(good: Sequence[int], bad: Sequence[int]) -> tuple[list[int], list[int]]:
    """Indices of the tokens of each sequence outside their longest-common-subsequence style match."""
    pairs = _lcs_pairs(list(good), list(bad))
    in_g = {i for i, _ in pairs}
    in_b = {j for _, j in pairs}
    return [i for i in range(len(good)) if i not in in_g], [j for j in range(len(bad)) if j not in in_b]


# ---------------------------------------------------------------------------------------------- sentences


class Sentence:
    """A sentence's words with the lexical facts the rules need (noun chunks from the vocabulary)."""

    def __init__(self, text: str, vocab: Vocabulary) -> None:
        self.text = text
        self.vocab = vocab
        self.words = split_words(text)
        self.n = len(self.words)
        self._chunk: list[Region | None] = [None] * self.n
        self._find_noun_chunks()

    def __getitem__(self, i: int) -> Word:
        return self.words[i]

    def lower(self, i: int) -> str:
        return self.words[i].lower

    # -- lexical tests
    def _known(self, text: str) -> bool:
        return text in self.vocab

    def _is_noun_word(self, k: int) -> bool:
        w = self.words[k]
        key = (w.text, k == 0)
        memo = self.vocab.word_memo
        hit = memo.get(key)
        if hit is None:
            hit = memo[key] = self._noun_word_uncached(w, k == 0)
        return hit

    def _noun_word_uncached(self, w: Word, initial: bool) -> bool:
        if w.is_punct or w.is_possessive:
            return False
        if self.vocab.is_noun(w.text):
            return True
        if w.text[:1].isupper() and not self._known(w.text):
            if not initial:
                return True  # an unknown capitalized word inside a sentence is a name
            return w.lower not in _FUNCTION_WORDS
        return False

    def _match_expression(self, k: int, parts: tuple[str, ...]) -> bool:
        m = len(parts)
        words = self.words
        return (
            k + m <= self.n
            and not words[k + m - 1].is_punct
            and all(words[k + q].lower == parts[q] for q in range(1, m))
        )

    def _find_noun_chunks(self) -> None:
        k = 0
        nominal = self.vocab.nominal_multiword
        while k < self.n:
            w = self.words[k]
            found = False
            for parts in nominal.get(w.lower, ()):
                if self._match_expression(k, parts):
                    m = len(parts)
                    a = k + 1 if parts[0] == "the" else k
                    for q in range(a, k + m):
                        self._chunk[q] = (a, k + m - 1)
                    k += m
                    found = True
                    break
            if found:
                continue
            if self._is_noun_word(k):
                self._chunk[k] = (k, k)
            k += 1
        self._nouns_the_lexicon_misses()

    def _nouns_the_lexicon_misses(self) -> None:
        """In "Det X about/of …" X is a noun even where the lexicon lists it only as a verb ("The shows
        about Monet"); "that" (also a complementizer) and multi-word determiners ("a lot of") are left out."""
        for k in range(self.n - 2):
            det = self.words[k].lower
            x = k + 1
            if (
                det in _ARTICLE_LIKE
                and self._chunk[x] is None
                and self.words[x + 1].lower in ("about", "of")
                and not self.words[x].is_punct
                and not self.vocab.is_determiner(self.words[x].text)
                and not any(self._match_expression(k, parts) for parts in self.vocab.multiword.get(det, ()))
            ):
                self._chunk[x] = (x, x)

    def verb_group_start(self, i: int) -> int:
        """First word of the multi-word verb of the vocabulary that word ``i`` ends or is inside ("to" in
        "talk to"), else ``i``."""
        for k in range(max(0, i - 3), i):
            if self.verb_group_end(k) >= i:
                return k
        return i

    def verb_group_end(self, k: int) -> int:
        """Last word of the verb starting at word ``k``: the longest multi-word verb of the vocabulary
        there ("talk to", "sit down"), else ``k`` itself."""
        for parts in self.vocab.verbal_multiword.get(self.words[k].lower, ()):
            if self._match_expression(k, parts):
                return k + len(parts) - 1
        return k

    def chunk(self, i: int) -> Region | None:
        """The noun (one word, or a multi-word expression of the vocabulary) that word ``i`` belongs to."""
        return self._chunk[i] if 0 <= i < self.n else None

    def is_noun(self, i: int) -> bool:
        return self.chunk(i) is not None

    def is_verbal(self, i: int) -> bool:
        t = self.words[i].text
        return self.vocab.is_verb(t) or self.vocab.is_auxiliary(t)

    def is_auxiliary(self, i: int) -> bool:
        return self.vocab.is_auxiliary(self.words[i].text)

    def is_determiner(self, i: int) -> bool:
        return self.vocab.is_determiner(self.words[i].text)

    def is_proper_noun_at(self, i: int) -> bool:
        """Whether word ``i`` is (part of) a proper name, so its capitalization is not positional."""
        w = self.words[i]
        if self.vocab.is_proper_noun(w.text):
            return True
        ch = self.chunk(i)
        if ch is not None:
            expr = " ".join(x.text for x in self.words[ch[0] : ch[1] + 1])
            if self.vocab.is_proper_noun(expr) or self.vocab.is_proper_noun("the " + expr):
                return True
        return w.text[:1].isupper() and not self._known(w.text) and (i > 0 or w.lower not in _FUNCTION_WORDS)

    # -- phrase structure
    def noun_head(self, start: int, stop: int | None = None) -> Region | None:
        """The first noun at or after ``start`` (before ``stop``) that is not a possessive, extended over a
        directly following noun (a compound); returns the noun's word range, the head being its last word."""
        end = self.n if stop is None else min(stop, self.n)
        k = start
        while k < end and not self.words[k].is_punct:
            ch = self.chunk(k)
            if ch is not None:
                a, b = ch
                while b + 1 < end and self.chunk(b + 1) is not None and not self.is_verbal(b + 1):
                    b = self.chunk(b + 1)[1]  # type: ignore[index]
                return (a, b)
            k += 1
        return None

    def noun_before(self, i: int) -> Region | None:
        """The nearest noun ending before word ``i`` (not a possessive)."""
        k = i - 1
        while k >= 0:
            ch = self.chunk(k)
            if ch is not None:
                return ch
            k -= 1
        return None

    def find(self, words: Iterable[str], start: int = 0, stop: int | None = None) -> int:
        """First index in ``[start, stop)`` whose lowercase word is in ``words``; -1 if none."""
        wanted = set(words)
        for k in range(start, self.n if stop is None else min(stop, self.n)):
            if self.words[k].lower in wanted:
                return k
        return -1

    def rfind(self, words: Iterable[str], stop: int, start: int = 0) -> int:
        """Last index in ``[start, stop)`` whose lowercase word is in ``words``; -1 if none."""
        wanted = set(words)
        for k in range(min(stop, self.n) - 1, start - 1, -1):
            if self.words[k].lower in wanted:
                return k
        return -1

    def final_punct(self) -> int:
        return self.n - 1 if self.n and self.words[-1].is_punct else -1


# ---------------------------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Decision:
    """What a rule decided for one sentence: word indices of the critical and context words and the
    phrase's word range (inclusive)."""

    critical: int
    context: int
    start: int
    end: int


@dataclass
class PairAnalysis:
    """A pair with its words, alignment and vocabulary, as the rules see it."""

    pair: BlimpPair
    good: Sentence
    bad: Sentence
    alignment: Alignment

    def side(self, name: str) -> Sentence:
        return self.good if name == "good" else self.bad

    def substitution(self) -> tuple[Region, Region]:
        """The only contrast: one run of differing words in each sentence, at the same place, no moves
        (a difference in final punctuation alone is ignored). When one sentence has an extra word run and
        the other nothing there, the other's "run" is the word just before that place."""
        al = self.alignment
        if al.moves:
            raise RuleFailure("expected a substitution, found a reordering")
        rg = [r for r in al.runs("good") if not all(self.good[i].is_punct for i in range(r[0], r[1] + 1))]
        rb = [r for r in al.runs("bad") if not all(self.bad[i].is_punct for i in range(r[0], r[1] + 1))]
        if len(rg) == 1 and not rb:
            rb = [self._before_slot(rg[0], "good")]
        elif len(rb) == 1 and not rg:
            rg = [self._before_slot(rb[0], "bad")]
        if len(rg) != 1 or len(rb) != 1:
            raise RuleFailure(f"expected one differing word run per sentence, found {len(rg)} and {len(rb)}")
        return rg[0], rb[0]

    def _before_slot(self, run: Region, side: str) -> Region:
        """In the other sentence, the word matched to the word just before ``run`` of ``side``."""
        a = run[0] - 1
        _require(a >= 0, "an inserted run starts the sentence")
        for i, j in self.alignment.matched:
            if (i if side == "good" else j) == a:
                k = j if side == "good" else i
                return (k, k)
        raise RuleFailure("no word before the inserted run")

    def decide(
        self, side: str, critical: int, context: int, extra: Iterable[int] = (), expand: bool = True
    ) -> Decision:
        """The phrase from the first to the last of critical, context and ``extra``, widened by every
        contrast region it touches (unless ``expand`` is false)."""
        s = self.side(side)
        if not (0 <= critical < s.n and 0 <= context < s.n):
            raise RuleFailure("critical or context word outside the sentence")
        pts = [critical, context, *extra]
        lo, hi = min(pts), max(pts)
        if expand:
            changed = True
            regions = self.alignment.regions(side)
            while changed:
                changed = False
                for a, b in regions:
                    if a <= hi and b >= lo and (a < lo or b > hi):
                        lo, hi = min(lo, a), max(hi, b)
                        changed = True
        return Decision(critical, context, lo, hi)


RuleFunc = Callable[[PairAnalysis], tuple[Decision, Decision]]


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise RuleFailure(message)


def _noun_after(s: Sentence, start: int, what: str) -> Region:
    head = s.noun_head(start)
    _require(head is not None, f"no noun after {what}")
    return head  # type: ignore[return-value]


def _subject(s: Sentence, stop: int) -> Region:
    head = s.noun_head(0, stop)
    _require(head is not None, "no subject noun before the verb")
    return head  # type: ignore[return-value]


def _npi_after(s: Sentence, start: int) -> int:
    k = s.find(NPI_WORDS, start)
    _require(k >= 0, "no NPI after the licensor")
    return k


# -- determiner-noun agreement
def rule_determiner_noun(an: PairAnalysis) -> tuple[Decision, Decision]:
    """Context: the determiner; critical: the head noun it agrees with (adjectives in between)."""
    subs = an.substitution()
    sides = (an.good, an.bad)
    # the differing word is the noun when either sentence's differing word is a noun: the generator's
    # misspelled plurals (couchs, dishs) are in no lexicon
    noun_role = any(s.chunk(b) is not None for s, (_a, b) in zip(sides, subs))
    out = []
    for side, s, (a, b) in zip(("good", "bad"), sides, subs):
        if not noun_role:
            _require(s.is_determiner(a), f"differing word {s[a].text!r} is neither a determiner nor a noun")
            det = a
            noun = _noun_after(s, det + 1, "the determiner")
        else:
            noun = s.chunk(b) or (a, b)
            det = -1
            for k in range(noun[0] - 1, max(-1, noun[0] - 5), -1):
                if s.is_determiner(k):
                    det = k
                    break
            _require(det >= 0, "no determiner before the noun")
        out.append(an.decide(side, noun[1], det))
    return out[0], out[1]


# -- subject-verb agreement
def rule_subject_verb_by_verb(an: PairAnalysis) -> tuple[Decision, Decision]:
    """The verb differs. Critical: the agreeing verb (first word of the verb group); context: the
    subject's head noun (the first noun of the subject, past prepositional phrases and relative clauses)."""
    subs = an.substitution()
    out = []
    for side, (a, _b) in zip(("good", "bad"), subs):
        s = an.side(side)
        head = _subject(s, a)
        out.append(an.decide(side, a, head[1], extra=(head[0],)))
    return out[0], out[1]


def rule_subject_verb_by_noun(an: PairAnalysis) -> tuple[Decision, Decision]:
    """The subject noun differs. Critical: the verb right after the subject noun; context: that noun."""
    subs = an.substitution()
    out = []
    for side, (a, b) in zip(("good", "bad"), subs):
        s = an.side(side)
        ch = s.chunk(b) or (a, b)
        verb = ch[1] + 1
        _require(verb < s.n and not s[verb].is_punct, "no verb after the subject")
        out.append(an.decide(side, verb, ch[1], extra=(ch[0],)))
    return out[0], out[1]


# -- anaphors
def rule_antecedent_reflexive(an: PairAnalysis) -> tuple[Decision, Decision]:
    """Critical: the reflexive; context: its antecedent, the head noun of the main-clause subject."""
    subs = an.substitution()
    out = []
    for side, (a, _b) in zip(("good", "bad"), subs):
        s = an.side(side)
        _require(s.vocab.is_reflexive(s[a].text), f"differing word {s[a].text!r} is not a reflexive")
        head = _subject(s, a)
        out.append(an.decide(side, a, head[1], extra=(head[0],)))
    return out[0], out[1]


def rule_local_antecedent(an: PairAnalysis) -> tuple[Decision, Decision]:
    """Critical: the (reflexive or plain) pronoun; context: the nearest noun before it, the local
    subject of its clause."""
    subs = an.substitution()
    out = []
    for side, (a, _b) in zip(("good", "bad"), subs):
        s = an.side(side)
        ch = s.noun_before(a)
        _require(ch is not None, "no noun before the pronoun")
        out.append(an.decide(side, a, ch[1], extra=(ch[0],)))  # type: ignore[index]
    return out[0], out[1]


def rule_local_antecedent_swapped(an: PairAnalysis) -> tuple[Decision, Decision]:
    """The two names trade places; critical: the reflexive; context: the local subject before it. The
    phrase is not widened to the swap (that would be the whole sentence)."""
    out = []
    for side in ("good", "bad"):
        s = an.side(side)
        r = next((k for k in range(s.n - 1, -1, -1) if s.vocab.is_reflexive(s[k].text)), -1)
        _require(r >= 0, "no reflexive")
        ch = s.noun_before(r)
        _require(ch is not None, "no noun before the reflexive")
        out.append(an.decide(side, r, ch[1], extra=(ch[0],), expand=False))  # type: ignore[index]
    return out[0], out[1]


def rule_complementizer_pronoun(an: PairAnalysis) -> tuple[Decision, Decision]:
    """Critical: the embedded subject pronoun (nominative vs reflexive); context: the complementizer."""
    subs = an.substitution()
    out = []
    for side, (a, _b) in zip(("good", "bad"), subs):
        s = an.side(side)
        _require(a > 0 and s.lower(a - 1) == "that", "the pronoun does not follow 'that'")
        out.append(an.decide(side, a, a - 1))
    return out[0], out[1]


def rule_reflexive_verb(an: PairAnalysis) -> tuple[Decision, Decision]:
    """Critical: the verb form after the reflexive (non-finite vs finite); context: the reflexive."""
    subs = an.substitution()
    out = []
    for side, (a, _b) in zip(("good", "bad"), subs):
        s = an.side(side)
        _require(a > 0 and s.vocab.is_reflexive(s[a - 1].text), "the verb does not follow a reflexive")
        out.append(an.decide(side, a, a - 1))
    return out[0], out[1]


def rule_cleft_reflexive(an: PairAnalysis) -> tuple[Decision, Decision]:
    """Context: the clefted reflexive; critical: the last word of the cleft clause, where its gap (object
    vs subject) is resolved."""
    out = []
    for side in ("good", "bad"):
        s = an.side(side)
        r = next((k for k in range(s.n) if s.vocab.is_reflexive(s[k].text)), -1)
        _require(r >= 0, "no reflexive")
        last = s.final_punct() - 1 if s.final_punct() >= 0 else s.n - 1
        _require(last > r, "nothing after the reflexive")
        out.append(an.decide(side, last, r))
    return out[0], out[1]


# -- irregular forms
def rule_subject_past_verb(an: PairAnalysis) -> tuple[Decision, Decision]:
    """Critical: the verb (finite past vs participle); context: the subject's head noun, which directly
    precedes it (no auxiliary)."""
    return rule_subject_verb_by_verb(an)


def rule_participle_noun(an: PairAnalysis) -> tuple[Decision, Decision]:
    """Context: the attributive participle (vs finite past form); critical: the noun it modifies."""
    subs = an.substitution()
    out = []
    for side, (a, b) in zip(("good", "bad"), subs):
        s = an.side(side)
        noun = _noun_after(s, b + 1, "the participle")
        out.append(an.decide(side, noun[1], b, extra=(a,)))
    return out[0], out[1]


# -- NPI licensing
def rule_licensor_npi(an: PairAnalysis) -> tuple[Decision, Decision]:
    """The licensor differs (only/even, not/probably). Critical: the NPI after it; context: the licensor."""
    subs = an.substitution()
    out = []
    for side, (a, b) in zip(("good", "bad"), subs):
        s = an.side(side)
        npi = _npi_after(s, b + 1)
        out.append(an.decide(side, npi, b, extra=(a,)))
    return out[0], out[1]


def rule_moved_licensor_npi(word: str) -> RuleFunc:
    """The licensor ``word`` moves (its scope changes). Critical: the NPI; context: the licensor; the
    phrase spans the move."""

    def rule(an: PairAnalysis) -> tuple[Decision, Decision]:
        out = []
        for side in ("good", "bad"):
            s = an.side(side)
            npi = s.find(NPI_WORDS)
            _require(npi >= 0, "no NPI")
            lic = s.rfind((word,), npi)
            _require(lic >= 0, f"no {word!r} before the NPI")
            out.append(an.decide(side, npi, lic))
        return out[0], out[1]

    rule.__doc__ = rule_moved_licensor_npi.__doc__
    return rule


def rule_question_npi(an: PairAnalysis) -> tuple[Decision, Decision]:
    """Critical: the NPI; context: the auxiliary, fronted in the question (the licensor) and in place in
    the declarative; the phrase spans the inversion."""
    g, b = an.good, an.bad
    aux = g.lower(0)
    _require(g.is_auxiliary(0), f"the question does not start with an auxiliary ({g[0].text!r})")
    out = []
    npi_g = g.find(NPI_WORDS)
    _require(npi_g >= 0, "no NPI")
    out.append(an.decide("good", npi_g, 0))
    npi_b = b.find(NPI_WORDS)
    _require(npi_b >= 0, "no NPI")
    k = b.rfind((aux,), npi_b)
    _require(k >= 0, f"auxiliary {aux!r} not found before the NPI in the declarative")
    out.append(an.decide("bad", npi_b, k))
    return out[0], out[1]


def rule_npi_host(an: PairAnalysis) -> tuple[Decision, Decision]:
    """No licensor in either sentence. Critical: the adverb (NPI vs plain adverb); context: the word it
    follows (auxiliary or subject)."""
    subs = an.substitution()
    out = []
    for side, (a, b) in zip(("good", "bad"), subs):
        _require(a > 0, "the adverb starts the sentence")
        out.append(an.decide(side, b, a - 1))
    return out[0], out[1]


# -- argument structure
def rule_verb_object(an: PairAnalysis) -> tuple[Decision, Decision]:
    """Context: the verb (transitive vs intransitive); critical: the first word of the object after it,
    where an intransitive verb fails (BLiMP's own scored word)."""
    subs = an.substitution()
    out = []
    for side, (a, b) in zip(("good", "bad"), subs):
        s = an.side(side)
        b = max(b, s.verb_group_end(a))  # a particle both verbs share ("climbing up" / "speaking up")
        a = min(a, s.verb_group_start(a))  # a verb both share before a differing particle ("talk to")
        _require(b + 1 < s.n and not s[b + 1].is_punct, "no object after the verb")
        out.append(an.decide(side, b + 1, b, extra=(a,)))
    return out[0], out[1]


def rule_verb_sentence_end(an: PairAnalysis) -> tuple[Decision, Decision]:
    """Context: the verb (group); critical: the sentence-final punctuation right after it, where a
    missing object shows."""
    subs = an.substitution()
    out = []
    for side, (a, b) in zip(("good", "bad"), subs):
        s = an.side(side)
        _require(b + 1 < s.n and s[b + 1].is_punct, "the verb does not end the sentence")
        out.append(an.decide(side, b + 1, b, extra=(a,)))
    return out[0], out[1]


def rule_auxiliary_participle(an: PairAnalysis) -> tuple[Decision, Decision]:
    """Critical: the passive participle; context: the form of *be* before it."""
    subs = an.substitution()
    out = []
    for side, (a, b) in zip(("good", "bad"), subs):
        s = an.side(side)
        aux = next((k for k in range(a - 1, max(-1, a - 4), -1) if s.is_auxiliary(k)), -1)
        _require(aux >= 0, "no auxiliary before the participle")
        out.append(an.decide(side, b, aux, extra=(a,)))
    return out[0], out[1]


# -- control and raising
def rule_verb_there(an: PairAnalysis) -> tuple[Decision, Decision]:
    """Context: the matrix verb (raising vs control); critical: expletive *there* right after it, which a
    control verb cannot take as its object. Auxiliary differences before the verb are left out."""
    subs = an.substitution()
    out = []
    for side, (_a, b) in zip(("good", "bad"), subs):
        s = an.side(side)
        _require(b + 1 < s.n and s.lower(b + 1) == "there", "the verb is not followed by 'there'")
        out.append(an.decide(side, b + 1, b, expand=False))
    return out[0], out[1]


def rule_verb_expletive_it(an: PairAnalysis) -> tuple[Decision, Decision]:
    """Context: the matrix verb (raising vs control); critical: the first word of the predicate after
    "it to be", which makes *it* an expletive that a control verb cannot take (BLiMP's scored word).
    Auxiliary differences before the verb are left out."""
    subs = an.substitution()
    out = []
    for side, (_a, b) in zip(("good", "bad"), subs):
        s = an.side(side)
        _require(
            b + 4 < s.n and [s.lower(b + 1), s.lower(b + 2), s.lower(b + 3)] == ["it", "to", "be"],
            "the verb is not followed by 'it to be'",
        )
        out.append(an.decide(side, b + 4, b, expand=False))
    return out[0], out[1]


def rule_there_predicate(an: PairAnalysis) -> tuple[Decision, Decision]:
    """Context: expletive *There* (the subject); critical: the raising vs control predicate."""
    subs = an.substitution()
    out = []
    for side, (_a, b) in zip(("good", "bad"), subs):
        s = an.side(side)
        _require(s.lower(0) == "there", "the sentence does not start with 'There'")
        out.append(an.decide(side, b, 0))
    return out[0], out[1]


def rule_tough_gap(an: PairAnalysis) -> tuple[Decision, Decision]:
    """Context: the adjective (tough vs raising); critical: the sentence end, where the object gap of
    the infinitive shows."""
    subs = an.substitution()
    out = []
    for side, (a, b) in zip(("good", "bad"), subs):
        s = an.side(side)
        end = s.final_punct()
        _require(end > b, "no sentence-final punctuation")
        out.append(an.decide(side, end, b, extra=(a,)))
    return out[0], out[1]


def rule_raising_object(an: PairAnalysis) -> tuple[Decision, Decision]:
    """Context: the adjective (raising vs tough); critical: the first word after the infinitive's verb
    (its object or complement, or the sentence end), where the missing gap of a tough adjective shows."""
    subs = an.substitution()
    out = []
    for side, (a, b) in zip(("good", "bad"), subs):
        s = an.side(side)
        _require(b + 2 < s.n and s.lower(b + 1) == "to", "the adjective is not followed by 'to' and a verb")
        after = s.verb_group_end(b + 2) + 1
        _require(after < s.n, "nothing after the infinitive")
        out.append(an.decide(side, after, b, extra=(a,)))
    return out[0], out[1]


# -- quantifiers
def rule_there_quantifier(an: PairAnalysis) -> tuple[Decision, Decision]:
    """Context: existential *There*; critical: the quantifier of the pivot (definiteness effect)."""
    return rule_there_predicate(an)


def rule_negation_superlative(an: PairAnalysis) -> tuple[Decision, Decision]:
    """Context: the subject's negative determiner *No*; critical: the last word of the comparative vs
    superlative quantifier (fewer than / at most)."""
    subs = an.substitution()
    out = []
    for side, (_a, b) in zip(("good", "bad"), subs):
        s = an.side(side)
        _require(s.lower(0) == "no", "the sentence does not start with 'No'")
        out.append(an.decide(side, b, 0))
    return out[0], out[1]


def rule_determiner_superlative(an: PairAnalysis) -> tuple[Decision, Decision]:
    """Context: the subject's determiner (No vs another); critical: *most*/*least* of the superlative
    quantifier in its scope."""
    subs = an.substitution()
    out = []
    for side, (_a, b) in zip(("good", "bad"), subs):
        s = an.side(side)
        k = -1
        for q in range(b + 1, s.n - 1):
            if s.lower(q) == "at" and s.lower(q + 1) in ("most", "least"):
                k = q + 1
                break
        _require(k >= 0, "no 'at most'/'at least'")
        out.append(an.decide(side, k, b))
    return out[0], out[1]


# -- s-selection
def rule_passive_agent(an: PairAnalysis) -> tuple[Decision, Decision]:
    """Context: the passive participle; critical: the head of the by-phrase agent (animate or not)."""
    subs = an.substitution()
    out = []
    for side, (a, b) in zip(("good", "bad"), subs):
        s = an.side(side)
        by = s.rfind(("by",), a)
        _require(by > 0, "no 'by' before the agent")
        out.append(an.decide(side, b, by - 1))
    return out[0], out[1]


def rule_subject_verb_selection(an: PairAnalysis) -> tuple[Decision, Decision]:
    """Context: the subject's head noun (animate or not); critical: the main verb selecting it, the first
    word after the subject that is not an auxiliary or *not*."""
    subs = an.substitution()
    out = []
    for side, (a, b) in zip(("good", "bad"), subs):
        s = an.side(side)
        head = s.noun_head(a, b + 1)
        _require(head is not None, "no subject noun")
        verb = b + 1
        # skip auxiliaries and negation, but not a main-verb "had"/"is" followed by its object
        while (
            verb + 1 < s.n
            and (s.is_auxiliary(verb) or s.lower(verb) == NEGATION)
            and (s.is_verbal(verb + 1) or s.lower(verb + 1) == NEGATION or s[verb + 1].lower not in s.vocab)
            and not s[verb + 1].is_punct
            and not s.is_noun(verb + 1)
            and not s.is_determiner(verb + 1)
        ):
            verb += 1
        _require(verb < s.n and not s[verb].is_punct, "no main verb after the subject")
        out.append(an.decide(side, verb, head[1], extra=(head[0],)))  # type: ignore[index]
    return out[0], out[1]


# -- left branch extraction
def rule_wh_determiner_next(an: PairAnalysis) -> tuple[Decision, Decision]:
    """Context: the wh-determiner (what/which/whose); critical: the word after it (its noun, or the
    auxiliary when the noun was stranded). The phrase is not widened to the rest of the reordering."""
    out = []
    for side in ("good", "bad"):
        s = an.side(side)
        w = s.find(WH_DETERMINERS)
        _require(0 <= w < s.n - 1, "no wh-determiner")
        out.append(an.decide(side, w + 1, w, expand=False))
    return out[0], out[1]


# ---------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Rule:
    """How the critical phrase of one paradigm is found, or why it is not."""

    uid: str
    name: str
    func: RuleFunc | None
    reason: str = ""

    @property
    def has_rule(self) -> bool:
        return self.func is not None

    @property
    def description(self) -> str:
        if self.func is None:
            return f"no rule: {self.reason}"
        return " ".join((self.func.__doc__ or "").split())


_LONG_DISTANCE = (
    "the contrast is a long-distance filler-gap dependency: the filler and the gap (or the missing gap) "
    "are a whole clause apart, so the smallest span holding both is most of the sentence, which a corpus "
    "never repeats; an exposure count of it would measure nothing"
)
_ISLAND = (
    "the contrast is extraction out of an island: the wh-filler at the start and the gap inside the "
    "island are a clause apart and the two sentences differ in the order of whole phrases, so no local "
    "phrase holds the contrast and its context"
)

_R = Rule
RULES: Mapping[str, Rule] = {
    r.uid: r
    for r in (
        # anaphor agreement
        _R("anaphor_gender_agreement", "antecedent_reflexive", rule_antecedent_reflexive),
        _R("anaphor_number_agreement", "antecedent_reflexive", rule_antecedent_reflexive),
        # argument structure
        _R("causative", "verb_object", rule_verb_object),
        _R("transitive", "verb_object", rule_verb_object),
        _R("drop_argument", "verb_sentence_end", rule_verb_sentence_end),
        _R("inchoative", "verb_sentence_end", rule_verb_sentence_end),
        _R("intransitive", "verb_sentence_end", rule_verb_sentence_end),
        _R("passive_1", "auxiliary_participle", rule_auxiliary_participle),
        _R("passive_2", "auxiliary_participle", rule_auxiliary_participle),
        # binding
        _R("principle_A_c_command", "antecedent_reflexive", rule_antecedent_reflexive),
        _R("principle_A_case_1", "complementizer_pronoun", rule_complementizer_pronoun),
        _R("principle_A_case_2", "reflexive_verb", rule_reflexive_verb),
        _R("principle_A_domain_1", "local_antecedent", rule_local_antecedent),
        _R("principle_A_domain_2", "local_antecedent", rule_local_antecedent),
        _R("principle_A_domain_3", "local_antecedent_swapped", rule_local_antecedent_swapped),
        _R("principle_A_reconstruction", "cleft_reflexive", rule_cleft_reflexive),
        # control and raising
        _R("existential_there_object_raising", "verb_there", rule_verb_there),
        _R("expletive_it_object_raising", "verb_expletive_it", rule_verb_expletive_it),
        _R("existential_there_subject_raising", "there_predicate", rule_there_predicate),
        _R("tough_vs_raising_1", "tough_gap", rule_tough_gap),
        _R("tough_vs_raising_2", "raising_object", rule_raising_object),
        # determiner-noun agreement
        *(
            _R(u, "determiner_noun", rule_determiner_noun)
            for u in sorted(PARADIGMS)
            if PARADIGMS[u] == "determiner_noun_agreement"
        ),
        # ellipsis
        _R(
            "ellipsis_n_bar_1",
            "none",
            None,
            "the contrast is split between the two conjuncts: the adjective sits in the antecedent noun "
            "phrase in the good sentence and is stranded at the ellipsis site in the bad one, so a span "
            "holding both is nearly the whole sentence",
        ),
        _R(
            "ellipsis_n_bar_2",
            "none",
            None,
            "the contrast is split between the two conjuncts (an adjective dropped from the antecedent and "
            "a noun dropped at the ellipsis site), so a span holding both is nearly the whole sentence",
        ),
        # filler-gap dependencies
        *(
            _R(u, "none", None, _LONG_DISTANCE)
            for u in sorted(PARADIGMS)
            if PARADIGMS[u] == "filler_gap_dependency"
        ),
        # irregular forms
        _R("irregular_past_participle_verbs", "subject_past_verb", rule_subject_past_verb),
        _R("irregular_past_participle_adjectives", "participle_noun", rule_participle_noun),
        # island effects
        _R("adjunct_island", "none", None, _ISLAND),
        _R("complex_NP_island", "none", None, _ISLAND),
        _R("coordinate_structure_constraint_object_extraction", "none", None, _ISLAND),
        _R("sentential_subject_island", "none", None, _ISLAND),
        _R("wh_island", "none", None, _ISLAND),
        _R("left_branch_island_echo_question", "wh_determiner_next", rule_wh_determiner_next),
        _R("left_branch_island_simple_question", "wh_determiner_next", rule_wh_determiner_next),
        _R("coordinate_structure_constraint_complex_left_branch", "wh_determiner_next", rule_wh_determiner_next),
        # NPI licensing
        _R("matrix_question_npi_licensor_present", "question_npi", rule_question_npi),
        _R("npi_present_1", "npi_host", rule_npi_host),
        _R("npi_present_2", "npi_host", rule_npi_host),
        _R("only_npi_licensor_present", "licensor_npi", rule_licensor_npi),
        _R("sentential_negation_npi_licensor_present", "licensor_npi", rule_licensor_npi),
        _R("only_npi_scope", "moved_licensor_npi", rule_moved_licensor_npi("only")),
        _R("sentential_negation_npi_scope", "moved_licensor_npi", rule_moved_licensor_npi(NEGATION)),
        # quantifiers
        _R("existential_there_quantifiers_1", "there_quantifier", rule_there_quantifier),
        _R(
            "existential_there_quantifiers_2",
            "none",
            None,
            "the good sentence has no existential construction at all (locative 'there' after the verb, "
            "'All convertibles weren't there existing') while the bad one has one; the sentences reorder "
            "whole phrases and share no construction whose local phrase could be compared",
        ),
        _R("superlative_quantifiers_1", "negation_superlative", rule_negation_superlative),
        _R("superlative_quantifiers_2", "determiner_superlative", rule_determiner_superlative),
        # s-selection
        _R("animate_subject_passive", "passive_agent", rule_passive_agent),
        _R("animate_subject_trans", "subject_verb_selection", rule_subject_verb_selection),
        # subject-verb agreement
        _R("distractor_agreement_relational_noun", "subject_verb", rule_subject_verb_by_verb),
        _R("distractor_agreement_relative_clause", "subject_verb", rule_subject_verb_by_verb),
        _R("regular_plural_subject_verb_agreement_1", "subject_verb", rule_subject_verb_by_verb),
        _R("irregular_plural_subject_verb_agreement_1", "subject_verb", rule_subject_verb_by_verb),
        _R("regular_plural_subject_verb_agreement_2", "subject_noun_verb", rule_subject_verb_by_noun),
        _R("irregular_plural_subject_verb_agreement_2", "subject_noun_verb", rule_subject_verb_by_noun),
    )
}
"""Every BLiMP paradigm's rule, or the documented reason it has none."""


# ---------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class SidePhrase:
    """The critical phrase in one sentence, at word level."""

    text: str
    char_start: int
    char_end: int
    word_start: int
    word_end: int
    critical_word: int
    context_word: int
    critical_chars: tuple[int, int]
    context_chars: tuple[int, int]
    first_is_proper: bool


@dataclass(frozen=True)
class PhraseResult:
    """The critical phrase of one pair (``good``/``bad`` are ``None`` when there is none; ``note`` says why)."""

    pair: BlimpPair
    rule: str
    good: SidePhrase | None
    bad: SidePhrase | None
    note: str
    contrast_good: str
    contrast_bad: str
    alignment_kind: str

    @property
    def has_phrase(self) -> bool:
        return self.good is not None and self.bad is not None


def _side_phrase(s: Sentence, d: Decision) -> SidePhrase:
    cs, ce = s[d.start].start, s[d.end].end
    return SidePhrase(
        text=s.text[cs:ce],
        char_start=cs,
        char_end=ce,
        word_start=d.start,
        word_end=d.end,
        critical_word=d.critical,
        context_word=d.context,
        critical_chars=(s[d.critical].start, s[d.critical].end),
        context_chars=(s[d.context].start, s[d.context].end),
        first_is_proper=s.is_proper_noun_at(d.start),
    )


def _contrast_text(s: Sentence, regions: Sequence[Region]) -> str:
    return " | ".join(" ".join(w.text for w in s.words[a : b + 1]) for a, b in regions)


def find_critical_phrase(pair: BlimpPair, vocab: Vocabulary, rules: Mapping[str, Rule] | None = None) -> PhraseResult:
    """The critical phrase of one pair under its paradigm's rule."""
    table = RULES if rules is None else rules
    good = Sentence(pair.sentence_good, vocab)
    bad = Sentence(pair.sentence_bad, vocab)
    al = align_words([w.text for w in good.words], [w.text for w in bad.words])
    contrast_good = _contrast_text(good, al.regions_good)
    contrast_bad = _contrast_text(bad, al.regions_bad)

    def result(rule_name: str, note: str, dg: Decision | None = None, db: Decision | None = None) -> PhraseResult:
        return PhraseResult(
            pair=pair,
            rule=rule_name,
            good=None if dg is None else _side_phrase(good, dg),
            bad=None if db is None else _side_phrase(bad, db),
            note=note,
            contrast_good=contrast_good,
            contrast_bad=contrast_bad,
            alignment_kind=al.kind,
        )

    rule = table.get(pair.uid)
    if rule is None:
        return result("none", f"unknown paradigm {pair.uid!r}")
    if rule.func is None:
        return result(rule.name, "no rule for this paradigm")
    if al.kind == "identical":
        return result(rule.name, "the two sentences are identical")
    an = PairAnalysis(pair, good, bad, al)
    try:
        dg, db = rule.func(an)
    except RuleFailure as exc:
        return result(rule.name, str(exc))
    return result(rule.name, "", dg, db)


def find_critical_phrases(
    pairs: Sequence[BlimpPair], vocab: Vocabulary, progress: bool = False
) -> list[PhraseResult]:
    """:func:`find_critical_phrase` for many pairs."""
    it: Iterable[BlimpPair] = pairs
    if progress:
        from tqdm import tqdm

        it = tqdm(pairs, desc="critical phrases", unit="pair", leave=False)
    return [find_critical_phrase(p, vocab) for p in it]


# ---------------------------------------------------------------------------------------------- tokens


class _Tokenizer(Protocol):
    """What :func:`phrase_table` needs of an :class:`exposure.tokenizer.LoadedTokenizer`."""

    tokenizer: Any
    name: str
    sha256: str


def surface_variants(text: str, first_is_proper: bool) -> list[str]:
    """The surface forms a phrase is counted under: as written and (unless it starts with a proper
    name) with its first letter's case flipped, each with and without a leading space."""
    forms = [text]
    if text and not first_is_proper and text[0].isalpha():
        flipped = (text[0].lower() if text[0].isupper() else text[0].upper()) + text[1:]
        if flipped != text:
            forms.append(flipped)
    out: list[str] = []
    for f in forms:
        out.extend((" " + f, f))
    return out


def distinct_queries(queries: Sequence[Sequence[int]]) -> list[int]:
    """Indices of the queries to keep so that summing their counts counts every occurrence once:
    duplicates are dropped, and so is any query that starts with another kept query's tokens (each of
    its occurrences is also an occurrence of the shorter one). Empty queries are dropped."""
    tuples = [tuple(q) for q in queries]
    if len({q[:1] for q in tuples}) == len(tuples) and all(tuples):
        return list(range(len(tuples)))  # distinct first tokens: no two can match at one offset
    keep: list[int] = []
    seen: set[tuple[int, ...]] = set()
    for i in sorted(range(len(tuples)), key=lambda i: (len(tuples[i]), i)):
        q = tuples[i]
        if not q or q in seen:
            continue
        if any(q[: len(p)] == p for p in seen):
            continue
        seen.add(q)
        keep.append(i)
    return sorted(keep)


def _word_tokens(offsets: Sequence[tuple[int, int]], start: int, end: int) -> tuple[int, int]:
    """First and last token index overlapping characters ``[start, end)``; (-1, -1) if none."""
    first = last = -1
    for t, (a, b) in enumerate(offsets):
        if a >= end:
            break
        if b > start and b > a:
            if first < 0:
                first = t
            last = t
    return first, last


_SIDE_INT_COLUMNS = (
    "char_start",
    "char_end",
    "token_start",
    "token_end",
    "critical_start",
    "critical_token",
    "context_token",
)


def phrase_table(results: Sequence[PhraseResult], tokenizer: _Tokenizer, progress: bool = False) -> pa.Table:
    """One row per pair: the phrase in both sentences, its character and token spans under ``tokenizer``,
    the critical and context tokens, the rule, and the token ids of every surface variant to query.

    Table metadata: ``exposure.tokenizer_sha256``, ``exposure.tokenizer``.
    """
    tok = tokenizer.tokenizer
    sentences: list[str] = []
    for r in results:
        sentences.extend((r.pair.sentence_good, r.pair.sentence_bad))
    encs = tok.encode_batch(sentences, add_special_tokens=False)

    variant_texts: dict[str, int] = {}
    side_variants: list[list[str]] = []
    for r in results:
        for sp in (r.good, r.bad):
            vs = surface_variants(sp.text, sp.first_is_proper) if sp is not None else []
            side_variants.append(vs)
            for v in vs:
                variant_texts.setdefault(v, len(variant_texts))
    texts = list(variant_texts)
    var_ids = [list(e.ids) for e in tok.encode_batch_fast(texts, add_special_tokens=False)] if texts else []

    cols: dict[str, list[Any]] = defaultdict(list)
    it: Iterable[int] = range(len(results))
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="token spans", unit="pair", leave=False)
    for n in it:
        r = results[n]
        p = r.pair
        cols["pair_uid"].append(p.pair_uid)
        cols["uid"].append(p.uid)
        cols["pair_id"].append(p.pair_id)
        cols["phenomenon"].append(p.phenomenon)
        cols["field"].append(p.field)
        cols["sentence_good"].append(p.sentence_good)
        cols["sentence_bad"].append(p.sentence_bad)
        cols["rule"].append(r.rule)
        cols["has_phrase"].append(r.has_phrase)
        cols["note"].append(r.note)
        cols["alignment"].append(r.alignment_kind)
        cols["contrast_good"].append(r.contrast_good)
        cols["contrast_bad"].append(r.contrast_bad)
        enc_g, enc_b = encs[2 * n], encs[2 * n + 1]
        tg, tb = align_tokens(enc_g.ids, enc_b.ids)
        cols["good_contrast_tokens"].append(tg)
        cols["bad_contrast_tokens"].append(tb)
        for k, (side, sp, enc) in enumerate((("good", r.good, enc_g), ("bad", r.bad, enc_b))):
            variants = side_variants[2 * n + k]
            if sp is None or not r.has_phrase:
                cols[f"phrase_{side}"].append(None)
                for c in _SIDE_INT_COLUMNS:
                    cols[f"{side}_{c}"].append(-1)
                cols[f"{side}_critical_word"].append(None)
                cols[f"{side}_context_word"].append(None)
                cols[f"variants_{side}"].append([])
                cols[f"query_{side}"].append([])
                continue
            sentence = p.sentence_good if side == "good" else p.sentence_bad
            offs = enc.offsets
            ps, pe = _word_tokens(offs, sp.char_start, sp.char_end)
            c_first, c_last = _word_tokens(offs, *sp.critical_chars)
            _, x_last = _word_tokens(offs, *sp.context_chars)
            cols[f"phrase_{side}"].append(sp.text)
            cols[f"{side}_char_start"].append(sp.char_start)
            cols[f"{side}_char_end"].append(sp.char_end)
            cols[f"{side}_token_start"].append(ps)
            cols[f"{side}_token_end"].append(pe + 1 if pe >= 0 else -1)
            cols[f"{side}_critical_start"].append(c_first)
            cols[f"{side}_critical_token"].append(c_last)
            cols[f"{side}_context_token"].append(x_last)
            cols[f"{side}_critical_word"].append(sentence[slice(*sp.critical_chars)])
            cols[f"{side}_context_word"].append(sentence[slice(*sp.context_chars)])
            queries = [var_ids[variant_texts[v]] for v in variants]
            keep = distinct_queries(queries)
            cols[f"variants_{side}"].append([variants[i] for i in keep])
            cols[f"query_{side}"].append([queries[i] for i in keep])

    int32 = pa.int32()
    fields: list[tuple[str, pa.DataType]] = [
        ("pair_uid", pa.string()),
        ("uid", pa.string()),
        ("pair_id", pa.int64()),
        ("phenomenon", pa.string()),
        ("field", pa.string()),
        ("sentence_good", pa.string()),
        ("sentence_bad", pa.string()),
        ("rule", pa.string()),
        ("has_phrase", pa.bool_()),
        ("note", pa.string()),
        ("alignment", pa.string()),
        ("contrast_good", pa.string()),
        ("contrast_bad", pa.string()),
        ("phrase_good", pa.string()),
        ("phrase_bad", pa.string()),
    ]
    for side in ("good", "bad"):
        fields += [(f"{side}_{c}", int32) for c in _SIDE_INT_COLUMNS]
        fields += [(f"{side}_critical_word", pa.string()), (f"{side}_context_word", pa.string())]
    fields += [
        ("good_contrast_tokens", pa.list_(int32)),
        ("bad_contrast_tokens", pa.list_(int32)),
        ("variants_good", pa.list_(pa.string())),
        ("query_good", pa.list_(pa.list_(int32))),
        ("variants_bad", pa.list_(pa.string())),
        ("query_bad", pa.list_(pa.list_(int32))),
    ]
    schema = pa.schema([pa.field(name, typ) for name, typ in fields]).with_metadata(
        {
            "exposure.tokenizer_sha256": tokenizer.sha256,
            "exposure.tokenizer": tokenizer.name,
        }
    )
    arrays = [pa.array(cols[name], type=typ) for name, typ in fields]
    return pa.Table.from_arrays(arrays, schema=schema)


_WORKER_STATE: dict[str, Any] = {}


def _worker_init(vocab: Vocabulary, tokenizer: _Tokenizer) -> None:
    _WORKER_STATE["vocab"] = vocab
    _WORKER_STATE["tokenizer"] = tokenizer


def _worker_run(pairs: Sequence[BlimpPair]) -> pa.Table:
    return phrase_table(find_critical_phrases(pairs, _WORKER_STATE["vocab"]), _WORKER_STATE["tokenizer"])


def critical_phrases(
    pairs: Sequence[BlimpPair],
    vocab: Vocabulary,
    tokenizer: _Tokenizer,
    progress: bool = False,
    workers: int | None = None,
) -> pa.Table:
    """Find every pair's critical phrase and tabulate it under ``tokenizer`` (see :func:`phrase_table`).

    With more than one worker (default: the number of cores, at most 8; only for 4,000 pairs or more
    and where the platform has a fork server) the pairs are split into chunks handled by worker processes;
    the table is the same, row for row. The workers come from a fork server, not from forking this process,
    which may hold threads (the tokenizer's, torch's) and their locks: a forked copy could deadlock.
    """
    n_workers = min(8, os.cpu_count() or 1) if workers is None else max(1, int(workers))
    has_forkserver = "forkserver" in multiprocessing.get_all_start_methods()
    if n_workers == 1 or len(pairs) < 4000 or not has_forkserver:
        return phrase_table(find_critical_phrases(pairs, vocab, progress=progress), tokenizer, progress=progress)
    n_chunks = n_workers * 4
    size = -(-len(pairs) // n_chunks)
    chunks = [pairs[i : i + size] for i in range(0, len(pairs), size)]
    ctx = multiprocessing.get_context("forkserver")
    with ctx.Pool(n_workers, initializer=_worker_init, initargs=(vocab, tokenizer)) as pool:
        it = pool.imap(_worker_run, chunks)
        if progress:
            from tqdm import tqdm

            it = tqdm(it, total=len(chunks), desc="critical phrases", unit="chunk", leave=False)
        tables = list(it)
    return pa.concat_tables(tables).replace_schema_metadata(tables[0].schema.metadata)


# ---------------------------------------------------------------------------------------------- coverage


@dataclass(frozen=True)
class Coverage:
    uid: str
    phenomenon: str
    rule: str
    pairs: int
    with_phrase: int

    @property
    def fraction(self) -> float:
        return self.with_phrase / self.pairs if self.pairs else 0.0


def coverage(table: pa.Table) -> list[Coverage]:
    """Per paradigm: how many pairs got a phrase (from a :func:`phrase_table` or splits table)."""
    uids = table.column("uid").to_pylist()
    phen = table.column("phenomenon").to_pylist()
    rules = table.column("rule").to_pylist()
    has = table.column("has_phrase").to_pylist()
    agg: dict[str, list[Any]] = {}
    for u, ph, ru, h in zip(uids, phen, rules, has):
        a = agg.setdefault(u, [ph, ru, 0, 0])
        a[2] += 1
        a[3] += int(bool(h))
    return [Coverage(u, a[0], a[1], a[2], a[3]) for u, a in sorted(agg.items(), key=lambda kv: (kv[1][0], kv[0]))]


def format_coverage(rows: Sequence[Coverage]) -> str:
    """A plain-text table of :func:`coverage` rows with a total line."""
    width = max([len(r.uid) for r in rows] + [8])
    lines = [f"{'paradigm':<{width}}  {'phenomenon':<26} {'rule':<24} {'pairs':>6} {'phrase':>6} {'%':>6}"]
    for r in rows:
        lines.append(
            f"{r.uid:<{width}}  {r.phenomenon:<26} {r.rule:<24} {r.pairs:>6} {r.with_phrase:>6} "
            f"{100 * r.fraction:>5.1f}%"
        )
    tot = sum(r.pairs for r in rows)
    got = sum(r.with_phrase for r in rows)
    lines.append(f"{'total':<{width}}  {'':<26} {'':<24} {tot:>6} {got:>6} {100 * got / max(tot, 1):>5.1f}%")
    return "\n".join(lines)


__all__ = [
    "Alignment",
    "Coverage",
    "Decision",
    "PairAnalysis",
    "PhraseResult",
    "RULES",
    "Rule",
    "RuleFailure",
    "Sentence",
    "SidePhrase",
    "Word",
    "align_tokens",
    "align_words",
    "coverage",
    "critical_phrases",
    "distinct_queries",
    "find_critical_phrase",
    "find_critical_phrases",
    "format_coverage",
    "phrase_table",
    "split_words",
    "surface_variants",
]

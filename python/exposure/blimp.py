"""BLiMP minimal pairs and the generator's vocabulary.

Two on-disk layouts of BLiMP are read:

* the original release (``alexwarstadt/blimp``, ``data/*.jsonl``): one JSON object per line with
  ``sentence_good``, ``sentence_bad``, ``field``, ``linguistics_term``, ``UID`` and ``pairID`` (a string);
* the Hugging Face layout (``nyu-mll/blimp``): Parquet files, one folder per paradigm
  (``<UID>/train-00000-of-00001.parquet`` on the main branch, ``<UID>/train/0000.parquet`` on
  ``refs/convert/parquet``), with ``pair_id`` (int32) instead of ``pairID``. A single Parquet file holding
  all paradigms (with a ``UID`` column) is read too.

The vocabulary (``vocabulary.csv`` of ``alexwarstadt/data_generation``) lists the words the generator
used with their grammatical features; :class:`Vocabulary` answers the questions the critical-phrase
rules ask (is this word a noun, a determiner, an auxiliary, a reflexive, …).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from exposure.data import DEFAULT_PHENOMENA  # the five phenomena analysed by default (bundled)

PARADIGMS: Mapping[str, str] = {
    "adjunct_island": "island_effects",
    "anaphor_gender_agreement": "anaphor_agreement",
    "anaphor_number_agreement": "anaphor_agreement",
    "animate_subject_passive": "s-selection",
    "animate_subject_trans": "s-selection",
    "causative": "argument_structure",
    "complex_NP_island": "island_effects",
    "coordinate_structure_constraint_complex_left_branch": "island_effects",
    "coordinate_structure_constraint_object_extraction": "island_effects",
    "determiner_noun_agreement_1": "determiner_noun_agreement",
    "determiner_noun_agreement_2": "determiner_noun_agreement",
    "determiner_noun_agreement_irregular_1": "determiner_noun_agreement",
    "determiner_noun_agreement_irregular_2": "determiner_noun_agreement",
    "determiner_noun_agreement_with_adj_2": "determiner_noun_agreement",
    "determiner_noun_agreement_with_adj_irregular_1": "determiner_noun_agreement",
    "determiner_noun_agreement_with_adj_irregular_2": "determiner_noun_agreement",
    "determiner_noun_agreement_with_adjective_1": "determiner_noun_agreement",
    "distractor_agreement_relational_noun": "subject_verb_agreement",
    "distractor_agreement_relative_clause": "subject_verb_agreement",
    "drop_argument": "argument_structure",
    "ellipsis_n_bar_1": "ellipsis",
    "ellipsis_n_bar_2": "ellipsis",
    "existential_there_object_raising": "control_raising",
    "existential_there_quantifiers_1": "quantifiers",
    "existential_there_quantifiers_2": "quantifiers",
    "existential_there_subject_raising": "control_raising",
    "expletive_it_object_raising": "control_raising",
    "inchoative": "argument_structure",
    "intransitive": "argument_structure",
    "irregular_past_participle_adjectives": "irregular_forms",
    "irregular_past_participle_verbs": "irregular_forms",
    "irregular_plural_subject_verb_agreement_1": "subject_verb_agreement",
    "irregular_plural_subject_verb_agreement_2": "subject_verb_agreement",
    "left_branch_island_echo_question": "island_effects",
    "left_branch_island_simple_question": "island_effects",
    "matrix_question_npi_licensor_present": "npi_licensing",
    "npi_present_1": "npi_licensing",
    "npi_present_2": "npi_licensing",
    "only_npi_licensor_present": "npi_licensing",
    "only_npi_scope": "npi_licensing",
    "passive_1": "argument_structure",
    "passive_2": "argument_structure",
    "principle_A_c_command": "binding",
    "principle_A_case_1": "binding",
    "principle_A_case_2": "binding",
    "principle_A_domain_1": "binding",
    "principle_A_domain_2": "binding",
    "principle_A_domain_3": "binding",
    "principle_A_reconstruction": "binding",
    "regular_plural_subject_verb_agreement_1": "subject_verb_agreement",
    "regular_plural_subject_verb_agreement_2": "subject_verb_agreement",
    "sentential_negation_npi_licensor_present": "npi_licensing",
    "sentential_negation_npi_scope": "npi_licensing",
    "sentential_subject_island": "island_effects",
    "superlative_quantifiers_1": "quantifiers",
    "superlative_quantifiers_2": "quantifiers",
    "tough_vs_raising_1": "control_raising",
    "tough_vs_raising_2": "control_raising",
    "transitive": "argument_structure",
    "wh_island": "island_effects",
    "wh_questions_object_gap": "filler_gap_dependency",
    "wh_questions_subject_gap": "filler_gap_dependency",
    "wh_questions_subject_gap_long_distance": "filler_gap_dependency",
    "wh_vs_that_no_gap": "filler_gap_dependency",
    "wh_vs_that_no_gap_long_distance": "filler_gap_dependency",
    "wh_vs_that_with_gap": "filler_gap_dependency",
    "wh_vs_that_with_gap_long_distance": "filler_gap_dependency",
}
"""All 67 BLiMP paradigms (UID) and their phenomenon (``linguistics_term``)."""

PHENOMENA: tuple[str, ...] = tuple(sorted(set(PARADIGMS.values())))

VOCABULARY_FILE = "vocabulary.csv"

_REQUIRED = ("sentence_good", "sentence_bad")
_EXTRAS = (
    "one_prefix_prefix",
    "one_prefix_word_good",
    "one_prefix_word_bad",
    "two_prefix_prefix_good",
    "two_prefix_prefix_bad",
    "two_prefix_word",
    "crucial_item",
)


def default_blimp_dir() -> Path:
    """The BLiMP copy bundled with the package (the default phenomena's paradigms)."""
    return Path(__file__).resolve().parent / "data" / "blimp"


@dataclass(frozen=True)
class BlimpPair:
    """One BLiMP minimal pair."""

    uid: str
    pair_id: int
    phenomenon: str
    field: str
    sentence_good: str
    sentence_bad: str
    extras: Mapping[str, str] = dc_field(default_factory=dict, compare=False, repr=False)
    """BLiMP's optional fields where present: ``one_prefix_prefix``, ``one_prefix_word_good``,
    ``one_prefix_word_bad``, ``two_prefix_prefix_good``, ``two_prefix_prefix_bad``, ``two_prefix_word``,
    ``crucial_item``."""

    @property
    def pair_uid(self) -> str:
        """``"UID/pairID"``, unique over BLiMP."""
        return f"{self.uid}/{self.pair_id}"


def paradigms_for(
    paradigms: Iterable[str] | None = None, phenomena: Iterable[str] | None = None
) -> tuple[str, ...] | None:
    """The UIDs selected by a list of paradigms and/or phenomena (their union); ``None`` = all.

    Unknown names raise ``ValueError`` naming the known ones.
    """
    chosen: list[str] = []
    if paradigms is not None:
        for p in paradigms:
            if p not in PARADIGMS:
                if p in PHENOMENA:
                    raise ValueError(f"{p!r} is a BLiMP phenomenon, not a paradigm: choose it with --phenomena")
                raise ValueError(f"unknown BLiMP paradigm {p!r}; known paradigms: {', '.join(sorted(PARADIGMS))}")
            chosen.append(p)
    if phenomena is not None:
        for ph in phenomena:
            if ph not in PHENOMENA:
                if ph in PARADIGMS:
                    raise ValueError(f"{ph!r} is a BLiMP paradigm, not a phenomenon: choose it with --paradigms")
                raise ValueError(f"unknown BLiMP phenomenon {ph!r}; known phenomena: {', '.join(PHENOMENA)}")
            chosen.extend(u for u, t in PARADIGMS.items() if t == ph)
    if paradigms is None and phenomena is None:
        return None
    return tuple(dict.fromkeys(chosen))


def _pair_from_record(rec: Mapping[str, object], where: str, uid_hint: str | None) -> BlimpPair:
    for key in _REQUIRED:
        if not isinstance(rec.get(key), str):
            raise ValueError(f"{where}: missing or non-string field {key!r}")
    uid = rec.get("UID", uid_hint)
    if not isinstance(uid, str) or not uid:
        raise ValueError(f"{where}: missing field 'UID' (and the file name gives no paradigm)")
    raw_id = rec.get("pairID", rec.get("pair_id"))
    try:
        if raw_id is None or isinstance(raw_id, bool):
            raise ValueError
        pair_id = int(raw_id)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ValueError(f"{where}: missing or non-integer pair id (pairID / pair_id): {raw_id!r}") from None
    phenomenon = rec.get("linguistics_term") or PARADIGMS.get(uid, "")
    fld = rec.get("field") or ""
    return BlimpPair(
        uid=uid,
        pair_id=pair_id,
        phenomenon=str(phenomenon),
        field=str(fld).replace("/", "_"),
        sentence_good=str(rec["sentence_good"]),
        sentence_bad=str(rec["sentence_bad"]),
        extras={k: rec[k] for k in _EXTRAS if isinstance(rec.get(k), str) and rec[k]},  # type: ignore[misc]
    )


def _open_text(path: Path, newline: str | None = None) -> io.TextIOBase:
    """Open a text file, gzip-compressed when its name ends in ``.gz`` (a leading byte-order mark is dropped)."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline=newline)  # type: ignore[return-value]
    return open(path, encoding="utf-8-sig", newline=newline)  # type: ignore[return-value]


def _jsonl_stem(path: Path) -> str:
    name = path.name
    for suffix in (".jsonl.gz", ".jsonl"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def read_jsonl(path: str | os.PathLike[str]) -> list[BlimpPair]:
    """Pairs of one BLiMP jsonl file (``.jsonl`` or ``.jsonl.gz``). A malformed line raises ``ValueError``
    naming the file and line."""
    p = Path(path)
    out: list[BlimpPair] = []
    with _open_text(p) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{p}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
            out.append(_pair_from_record(rec, where, _jsonl_stem(p)))
    return out


def _parquet_uid_hint(path: Path) -> str | None:
    parent = path.parent
    if parent.name in ("train", "test", "validation") and parent.parent.name in PARADIGMS:
        return parent.parent.name
    if parent.name in PARADIGMS:
        return parent.name
    stem = path.stem.split("-")[0]
    return stem if stem in PARADIGMS else None


def read_parquet(path: str | os.PathLike[str]) -> list[BlimpPair]:
    """Pairs of one Parquet file in the Hugging Face layout (or any file with the same columns)."""
    p = Path(path)
    try:
        table = pq.read_table(p)
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise ValueError(f"{p}: not a readable Parquet file ({exc})") from None
    cols = set(table.column_names)
    missing = [c for c in _REQUIRED if c not in cols]
    if missing:
        raise ValueError(f"{p}: not a BLiMP table, missing column(s) {', '.join(missing)}")
    hint = _parquet_uid_hint(p)
    rows = table.to_pylist()
    return [_pair_from_record(rec, f"{p}: row {i}", hint) for i, rec in enumerate(rows)]


def _is_jsonl(path: Path) -> bool:
    return path.name.endswith((".jsonl", ".jsonl.gz"))


def _data_files(root: Path) -> list[Path]:
    jsonl = sorted(p for p in root.iterdir() if p.is_file() and _is_jsonl(p))
    if jsonl:
        return jsonl
    return sorted(root.rglob("*.parquet"))


def load_blimp(
    path: str | os.PathLike[str] | None = None,
    paradigms: Iterable[str] | None = None,
    phenomena: Iterable[str] | None = None,
    progress: bool = False,
) -> list[BlimpPair]:
    """Load BLiMP pairs from a directory (jsonl files, else Parquet files below it) or a single file.

    ``paradigms`` / ``phenomena`` select (their union); neither = every pair found. Pairs come back
    sorted by paradigm, then pair id. A selected paradigm that is not in ``path`` raises ``ValueError``.
    """
    root = Path(path) if path is not None else default_blimp_dir()
    if not root.exists():
        raise FileNotFoundError(f"no BLiMP data at {root}")
    wanted = paradigms_for(paradigms, phenomena)
    files = [root] if root.is_file() else _data_files(root)
    if not files:
        raise ValueError(f"{root}: no BLiMP *.jsonl or *.parquet files")
    if wanted is not None and root.is_dir() and _is_jsonl(files[0]):
        files = [f for f in files if _jsonl_stem(f) in wanted]
    iterator: Iterable[Path] = files
    if progress:
        from tqdm import tqdm

        iterator = tqdm(files, desc="reading BLiMP", unit="file", leave=False)
    pairs: list[BlimpPair] = []
    for f in iterator:
        loaded = read_jsonl(f) if _is_jsonl(f) else read_parquet(f)
        if wanted is not None:
            loaded = [p for p in loaded if p.uid in wanted]
        pairs.extend(loaded)
    if wanted is not None:
        found = {p.uid for p in pairs}
        absent = [u for u in wanted if u not in found]
        if absent:
            raise ValueError(
                f"{root}: no pairs for paradigm(s) {', '.join(absent)} "
                f"(point --blimp at a directory holding all 67 paradigms)"
            )
    pairs.sort(key=lambda p: (p.uid, p.pair_id))
    seen: set[tuple[str, int]] = set()
    for p in pairs:
        key = (p.uid, p.pair_id)
        if key in seen:
            raise ValueError(f"{root}: pair {p.pair_uid} occurs more than once")
        seen.add(key)
    return pairs


# ---------------------------------------------------------------------------------------------- vocabulary


@dataclass(frozen=True)
class LexEntry:
    """One row of the vocabulary: the features that are set (empty cells left out)."""

    expression: str
    features: Mapping[str, str]

    def get(self, key: str, default: str = "") -> str:
        return self.features.get(key, default)

    def flag(self, key: str) -> bool:
        return self.features.get(key) == "1"


_AUX_CLASSES = frozenset({"aux", "modal", "copula"})
_DET_CLASSES = frozenset({"D", "D_wh", "poss_det"})
_NOUN_CATEGORIES = frozenset({"N", "N\\NP[poss]", "N/S"})
"""Noun categories; relational nouns written with their preposition ("sister of", ``N/NP``) and the
expletives there/it are not nouns for the rules."""


@dataclass
class Vocabulary:
    """The generator's lexicon, indexed by expression (case-sensitive: proper names are capitalized).

    Nouns' ``pluralform``/``singularform`` cells are also indexed as nouns of the other number (the
    lexicon lists "face" with its plural "faces" but has no row for "faces"). Answers are memoized.
    """

    entries: dict[str, list[LexEntry]]
    multiword: dict[str, list[tuple[str, ...]]] = dc_field(default_factory=dict)
    _memo: dict[tuple[str, str], bool] = dc_field(default_factory=dict, repr=False, compare=False)
    nominal_multiword: dict[str, list[tuple[str, ...]]] = dc_field(default_factory=dict, repr=False, compare=False)
    """Lowercased multi-word plain nouns (category ``N``) by first word, longest first."""
    verbal_multiword: dict[str, list[tuple[str, ...]]] = dc_field(default_factory=dict, repr=False, compare=False)
    """Lowercased multi-word verbs by first word, longest first."""

    word_memo: dict[Any, Any] = dc_field(default_factory=dict, repr=False, compare=False)
    """Scratch memo for callers that derive per-word facts from this vocabulary (keys are theirs)."""

    def __post_init__(self) -> None:
        derived: dict[str, list[LexEntry]] = {}
        for expr, rows in self.entries.items():
            for e in rows:
                if not e.flag("noun"):
                    continue
                for key, number in (("pluralform", "pl"), ("singularform", "sg")):
                    other = e.get(key).strip()
                    if other and other not in self.entries:
                        feats = {k: v for k, v in e.features.items() if k not in ("pluralform", "singularform")}
                        feats.update({"sg": "1" if number == "sg" else "0", "pl": "1" if number == "pl" else "0"})
                        feats["singularform" if number == "pl" else "pluralform"] = expr
                        derived.setdefault(other, []).append(LexEntry(other, feats))
        for expr, rows in derived.items():
            self.entries.setdefault(expr, rows)
        if not self.multiword:
            mw: dict[str, list[tuple[str, ...]]] = {}
            for expr in self.entries:
                parts = tuple(expr.split())
                if len(parts) > 1:
                    mw.setdefault(parts[0].lower(), []).append(parts)
            for first in mw:
                mw[first].sort(key=len, reverse=True)
            self.multiword = mw
        for first, exprs in self.multiword.items():
            for parts in exprs:
                expr = " ".join(parts)
                low = tuple(x.lower() for x in parts)
                if self.is_nominal_expression(expr):
                    self.nominal_multiword.setdefault(first, []).append(low)
                if self.is_verbal_expression(expr):
                    self.verbal_multiword.setdefault(first, []).append(low)

    def lookup(self, word: str) -> list[LexEntry]:
        """Entries for ``word`` as written, else for its lowercase form (sentence-initial words)."""
        got = self.entries.get(word)
        if got is None and word[:1].isupper():
            got = self.entries.get(word.lower())
        return got or []

    def __contains__(self, word: str) -> bool:
        return bool(self.lookup(word))

    def _ask(self, word: str, what: str) -> bool:
        key = (word, what)
        hit = self._memo.get(key)
        if hit is None:
            hit = self._compute(word, what)
            self._memo[key] = hit
        return hit

    def _compute(self, word: str, what: str) -> bool:
        rows = self.lookup(word)
        classes = {e.get("category_2") for e in rows}
        if what == "noun":
            return any(e.flag("noun") and e.get("category") in _NOUN_CATEGORIES for e in rows)
        if what == "nominal_expression":
            return any(e.flag("noun") and e.get("category") == "N" for e in self.entries.get(word, ()))
        if what == "proper":
            return any(e.flag("properNoun") and e.flag("noun") for e in self.entries.get(word, ()))
        if what == "det":
            return bool(classes & _DET_CLASSES)
        if what == "aux":
            return bool(classes & _AUX_CLASSES)
        if what == "verb":
            return any(e.flag("verb") for e in rows)
        if what == "refl":
            return "refl" in classes
        if what == "npi":
            return any(e.flag("NPI") for e in rows)
        raise ValueError(f"unknown lexical question {what!r}")

    def any_flag(self, word: str, key: str) -> bool:
        return any(e.flag(key) for e in self.lookup(word))

    def classes(self, word: str) -> set[str]:
        """The ``category_2`` values of every entry of ``word``."""
        return {e.get("category_2") for e in self.lookup(word)}

    def is_noun(self, word: str) -> bool:
        return self._ask(word, "noun")

    def is_proper_noun(self, word: str) -> bool:
        return self._ask(word, "proper")

    def is_determiner(self, word: str) -> bool:
        return self._ask(word, "det")

    def is_auxiliary(self, word: str) -> bool:
        return self._ask(word, "aux")

    def is_verb(self, word: str) -> bool:
        return self._ask(word, "verb")

    def is_reflexive(self, word: str) -> bool:
        return self._ask(word, "refl")

    def is_npi(self, word: str) -> bool:
        return self._ask(word, "npi")

    def expressions_starting(self, word: str) -> list[tuple[str, ...]]:
        """Multi-word expressions whose first word is ``word`` (any case), longest first."""
        return self.multiword.get(word.lower(), [])

    def is_nominal_expression(self, expr: str) -> bool:
        """Whether a (multi-word) expression is a plain noun (category ``N``)."""
        return self._ask(expr, "nominal_expression")

    def is_verbal_expression(self, expr: str) -> bool:
        """Whether a (multi-word) expression is a verb."""
        return self._ask(expr, "verb")


def read_vocabulary(path: str | os.PathLike[str]) -> Vocabulary:
    """Read ``vocabulary.csv`` (or ``.csv.gz``; header row, CRLF line ends, empty cell = feature not set)."""
    p = Path(path)
    entries: dict[str, list[LexEntry]] = {}
    with _open_text(p, newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise ValueError(f"{p}: empty vocabulary file") from None
        if not header or header[0] != "expression":
            raise ValueError(f"{p}:1: not the BLiMP vocabulary (first column must be 'expression')")
        for lineno, row in enumerate(reader, 2):
            if not row:
                continue
            if len(row) != len(header):
                raise ValueError(f"{p}:{lineno}: {len(row)} cells, the header has {len(header)}")
            expr = row[0].strip()
            if not expr:
                continue
            feats = {k: v for k, v in zip(header[1:], row[1:]) if v != ""}
            entries.setdefault(expr, []).append(LexEntry(expr, feats))
    if not entries:
        raise ValueError(f"{p}: the vocabulary has no entries")
    return Vocabulary(entries)


def find_vocabulary(blimp_path: str | os.PathLike[str] | None, explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where the vocabulary is: ``explicit`` if given, else ``vocabulary.csv`` (or ``.csv.gz``) next to
    the BLiMP data, else in the bundled BLiMP directory."""
    if explicit is not None:
        p = Path(explicit)
        if not p.is_file():
            raise FileNotFoundError(f"no vocabulary file at {p}")
        return p
    dirs: list[Path] = []
    if blimp_path is not None:
        b = Path(blimp_path)
        dirs.append(b if b.is_dir() else b.parent)
    dirs.append(default_blimp_dir())
    candidates = [d / name for d in dirs for name in (VOCABULARY_FILE, VOCABULARY_FILE + ".gz")]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(
        f"no {VOCABULARY_FILE} found (looked at {', '.join(str(c) for c in candidates)}); "
        f"give the BLiMP generator's vocabulary with --vocabulary"
    )


def iter_uids(pairs: Sequence[BlimpPair]) -> Iterator[str]:
    """Paradigms of ``pairs`` in first-seen order."""
    return iter(dict.fromkeys(p.uid for p in pairs))


__all__ = [
    "DEFAULT_PHENOMENA",
    "PARADIGMS",
    "PHENOMENA",
    "VOCABULARY_FILE",
    "BlimpPair",
    "LexEntry",
    "Vocabulary",
    "default_blimp_dir",
    "find_vocabulary",
    "iter_uids",
    "load_blimp",
    "paradigms_for",
    "read_jsonl",
    "read_parquet",
    "read_vocabulary",
]

"""Build an exposure index from a real corpus in training order (``exposure build``).

:func:`build` reads a Pythia ``.bin``/``.idx``, OLMo token files + global indices, or raw text, feeds
the stream to :class:`exposure.IndexBuilder` in chunks, and records in the index manifest
(``metadata``): the format, the tokenizer (name, sha256 of its JSON; a copy is kept in the index
directory), the schedule, every source file (path, size, sha256) and the reader's details.

Nothing is half-written: inputs are checked before the builder starts; the builder writes under
``OUT.partial/`` and renames it to ``OUT`` only when complete. An interrupted build re-run with the same
arguments reuses its finished shards (and, for text, the tokenized corpus kept in ``OUT.tokenized/``).
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from exposure.readers import CorpusError
from exposure.schedule import Schedule, every_checkpoints, resolve_schedule
from exposure.tokenizer import TOKENIZER_FILE, LoadedTokenizer, load_tokenizer

FORMATS = ("pythia", "olmo", "text")
DEFAULT_ITEM_LENGTH = 2049
CHUNK_TOKENS = 1 << 24
TEXT_CACHE_SUFFIX = ".tokenized"


@dataclass(frozen=True)
class SourceFile:
    path: Path
    bytes: int
    sha256: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "bytes": self.bytes, "sha256": self.sha256}


def _sha256(path: Path, bar: tqdm | None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(8 << 20)
            if not b:
                break
            h.update(b)
            if bar is not None:
                bar.update(len(b))
    return h.hexdigest()


def hash_sources(paths: Sequence[Path], *, threads: int | None = None, hash_files: bool = True, progress: bool = True) -> list[SourceFile]:
    """Size and sha256 of every source file (files hashed in parallel)."""
    files = [Path(p).resolve() for p in paths]
    sizes = []
    for p in files:
        if not p.is_file():
            raise FileNotFoundError(f"{p}: source file not found")
        sizes.append(p.stat().st_size)
    if not hash_files:
        return [SourceFile(p, s, None) for p, s in zip(files, sizes)]
    bar = tqdm(total=sum(sizes), unit="B", unit_scale=True, unit_divisor=1024, desc="hash sources",
               disable=not progress, dynamic_ncols=True)
    workers = max(1, min(len(files), threads or os.cpu_count() or 1))
    with cf.ThreadPoolExecutor(max_workers=workers) as pool:
        digests = list(pool.map(lambda p: _sha256(p, bar), files))
    bar.close()
    return [SourceFile(p, s, d) for p, s, d in zip(files, sizes, digests)]


def _resolve_tokenizer(tokenizer: LoadedTokenizer | str | os.PathLike[str] | None) -> LoadedTokenizer | None:
    if tokenizer is None or isinstance(tokenizer, LoadedTokenizer):
        return tokenizer
    return load_tokenizer(tokenizer)


def _check_item_length(schedule: Schedule | None, item_length: int | None, what: str) -> None:
    if schedule is not None and item_length is not None and schedule.item_length != item_length:
        raise ValueError(
            f"schedule {schedule.name!r} has items of {schedule.item_length} tokens but {what} has items of "
            f"{item_length}; pick a matching --schedule, or --schedule custom --item-length {item_length}"
        )


def _require_items_per_step(items_per_step: int | None, what: str) -> int:
    if items_per_step is None:
        raise ValueError(
            f"{what}: say how the run batched the items: --items-per-step B (and optionally --checkpoints), "
            f"or a preset --schedule"
        )
    return items_per_step


def _custom_schedule(
    item_length: int, num_items: int, items_per_step: int | None, checkpoints: Sequence[int] | None, what: str
) -> Schedule:
    items_per_step = _require_items_per_step(items_per_step, what)
    num_steps = math.ceil(num_items / items_per_step)
    return Schedule.custom(item_length, items_per_step, checkpoints, num_steps=num_steps, total_items=num_items)


def _default_vocab(dtype: Any, tokenizer: LoadedTokenizer | None, vocab_size: int | None, reserve: int) -> int:
    """Vocabulary size for the builder (ids the data may hold), before adding a filler id."""
    if vocab_size is not None:
        return int(vocab_size)
    if tokenizer is not None:
        return tokenizer.vocab_size
    if np.dtype(dtype) == np.dtype(np.uint16):
        return int(np.iinfo(np.uint16).max) - reserve  # the engine keeps one id above the vocabulary as separator
    raise ValueError("32-bit token data: pass --tokenizer (or --vocab-size) so the index knows the vocabulary size")


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)


def _text_cache_key(sources: list[SourceFile], tok: LoadedTokenizer, unit: str, text_field: str) -> dict[str, Any]:
    return {
        "sources": [s.to_dict() for s in sources],
        "tokenizer_sha256": tok.sha256,
        "unit": unit,
        "text_field": text_field,
    }


def _tokenized_text(
    out: Path, paths: list[Path], records: list[SourceFile], tok: LoadedTokenizer, unit: str, text_field: str, progress: bool
) -> tuple[Any, Path]:
    """Pass 1 of the text path, cached in ``OUT.tokenized/`` so an interrupted build does not redo it."""
    from exposure.readers.text import TokenizedCorpus, tokenize_corpus

    cache = out.with_name(out.name + TEXT_CACHE_SUFFIX)
    key = _text_cache_key(records, tok, unit, text_field)
    state = cache / "state.json"
    if state.is_file() and all(r.sha256 for r in records):
        try:
            saved = json.loads(state.read_text())
            if saved.get("key") == key:
                lengths = np.load(cache / "doc_lengths.npy")
                tokens = cache / "tokens.bin"
                dtype = np.dtype(saved["dtype"]).type
                if tokens.stat().st_size == int(lengths.sum()) * np.dtype(dtype).itemsize:
                    return TokenizedCorpus(tokens, lengths, dtype), cache
        except (OSError, ValueError, KeyError):
            pass
    if cache.exists():
        shutil.rmtree(cache)
    work = out.with_name(out.name + TEXT_CACHE_SUFFIX + ".tmp")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    try:
        corpus = tokenize_corpus(paths, tok, work / "tokens.bin", unit=unit, text_field=text_field, progress=progress)
        np.save(work / "doc_lengths.npy", corpus.doc_lengths)
        (work / "state.json").write_text(json.dumps({"key": key, "dtype": np.dtype(corpus.dtype).name}))
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    os.replace(work, cache)
    return TokenizedCorpus(cache / "tokens.bin", corpus.doc_lengths, corpus.dtype), cache


def build(
    sources: Sequence[str | os.PathLike[str]],
    fmt: str,
    out: str | os.PathLike[str],
    tokenizer: LoadedTokenizer | str | os.PathLike[str] | None = None,
    schedule: Schedule | str | dict[str, Any] | None = None,
    memory_budget_bytes: int | str = 8 << 30,
    threads: int | None = None,
    item_length: int | None = None,
    seed: int | None = 0,
    progress: bool = True,
    *,
    items_per_step: int | None = None,
    checkpoints: Sequence[int] | None = None,
    text_field: str = "text",
    text_unit: str = "line",
    global_indices: str | os.PathLike[str] | None = None,
    token_dtype: str | None = None,
    drop_repetitive: bool = False,
    data_root: str | os.PathLike[str] | None = None,
    vocab_size: int | None = None,
    overwrite: bool = False,
    hash_files: bool = True,
    shard_tokens: int | None = None,
    chunk_tokens: int = CHUNK_TOKENS,
) -> Any:
    """Build an index over ``sources`` in training order; returns the opened :class:`exposure.Index`.

    ``fmt``: ``pythia`` (``.bin``/``.idx`` or shards), ``olmo`` (a training config, a file list or the
    token files in order, plus ``global_indices``), or ``text`` (``.txt``/``.jsonl``[.gz/.zst]/``.parquet``,
    tokenized with ``tokenizer`` and packed into items of ``item_length`` tokens in the order given by
    ``seed``; None keeps file order).

    ``schedule``: a :class:`Schedule`, a preset name, ``"custom"`` (from ``item_length``,
    ``items_per_step`` and ``checkpoints``; default checkpoints 0, 1, 2, 4, …, last step), ``"none"``,
    or None for the format's default (``pythia``: the Pythia preset; ``olmo``: the config's batch size;
    ``text``: custom). For ``pythia`` and ``text`` the schedule's ``epoch_items`` is the number of items,
    so a run longer than the data is modelled as passing over it again in the same order.
    """
    from exposure.engine import IndexBuilder, build_lock

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if not sources:
        raise ValueError("no sources given")
    out_path = Path(out)
    _prepare_out(out_path, overwrite)
    with build_lock(out_path):  # one build of OUT at a time (the tokenized-text cache included)
        if threads:
            os.environ.setdefault("RAYON_NUM_THREADS", str(int(threads)))
        tok = _resolve_tokenizer(tokenizer)
        sched_spec = schedule
        if isinstance(sched_spec, str) and sched_spec.lower() == "none":
            sched_spec = "none"
        elif isinstance(sched_spec, str) and sched_spec.lower() == "custom":
            sched_spec = "custom"
        else:
            sched_spec = resolve_schedule(sched_spec)  # type: ignore[arg-type]
        if items_per_step is not None or checkpoints is not None:
            if sched_spec is None:
                sched_spec = "custom"
            elif sched_spec != "custom":
                raise ValueError("--items-per-step / --checkpoints describe a custom schedule; use them with --schedule custom")
        if sched_spec == "custom" or (sched_spec is None and fmt == "text"):  # before any (long) tokenization
            _require_items_per_step(items_per_step, "the text corpus" if fmt == "text" else f"the {fmt} data")

        cache_dir: Path | None = None
        build_info: dict[str, Any] = {"format": fmt}
        reserve = 1 if drop_repetitive else 0

        if fmt == "pythia":
            from exposure.readers.pythia import PythiaReader

            reader: Any = PythiaReader(sources)
            data_len = reader.item_length
            if sched_spec is None:
                sched_spec = Schedule.preset("pythia")
            dtype = reader.dtype
            source_paths = reader.source_files
        elif fmt == "olmo":
            from exposure.readers.olmo import OlmoReader, config_data_paths, localize

            settings: dict[str, Any] = {}
            token_files: list[Path] = []
            for s in sources:
                p = Path(s)
                if p.suffix in (".yaml", ".yml", ".txt"):
                    listed, settings_here = config_data_paths(p)
                    settings.update(settings_here)
                    token_files.extend(localize(x, data_root, relative_to=p.parent) for x in listed)
                    build_info["config"] = str(p.resolve())
                else:
                    token_files.append(p)
            preset = sched_spec if isinstance(sched_spec, Schedule) else None
            L = item_length or (preset.item_length if preset else None) or settings.get("sequence_length")
            if L is None:
                raise ValueError("OLMo data: give --schedule (olmo-1b, olmo-7b, olmo2-1b, olmo2-7b), a config with "
                                 "model.max_sequence_length, or --item-length")
            if settings.get("sequence_length") and settings["sequence_length"] != L:
                raise ValueError(f"the config's sequence length {settings['sequence_length']} differs from {L}")
            dt = token_dtype or settings.get("dtype") or (
                "uint32" if preset is not None and preset.name.startswith("olmo2") else "uint16")
            filler = None
            if drop_repetitive:
                filler = _default_vocab(np.dtype(dt), tok, vocab_size, reserve)
            reader = OlmoReader(token_files, L, dt, global_indices, drop_repetitive=drop_repetitive, filler_id=filler,
                                progress=progress)
            data_len = L
            dtype = reader.dtype
            if sched_spec is None:
                if settings.get("batch_size") is None:
                    raise ValueError("OLMo data: give --schedule (olmo-1b, olmo-7b, olmo2-1b, olmo2-7b) or "
                                     "--schedule custom --items-per-step B, or a config with global_train_batch_size")
                B = int(settings["batch_size"])
                steps = math.ceil(reader.num_items / B)
                sched_spec = Schedule("olmo-config", L, B, every_checkpoints(1000, steps), total_steps=steps)
            source_paths = reader.source_files
        else:
            from exposure.readers.text import PackedTextReader, text_sources

            if tok is None:
                raise ValueError("text corpora need --tokenizer (a tokenizer.json)")
            paths = text_sources(sources)
            preset = sched_spec if isinstance(sched_spec, Schedule) else None
            data_len = item_length or (preset.item_length if preset else DEFAULT_ITEM_LENGTH)
            dtype = None
            source_paths = paths

        _check_item_length(sched_spec if isinstance(sched_spec, Schedule) else None, data_len, f"the {fmt} data")
        if fmt == "pythia" and data_len is None and isinstance(sched_spec, Schedule):
            raise ValueError("the .idx items differ in length, so no step schedule applies; pass --schedule none")

        records = hash_sources(source_paths, threads=threads, hash_files=hash_files, progress=progress)

        if fmt == "text":
            corpus, cache_dir = _tokenized_text(out_path, paths, records, tok, text_unit, text_field, progress)  # type: ignore[arg-type]
            reader = PackedTextReader(corpus, int(data_len), seed, sources=paths)  # type: ignore[arg-type]
            if reader.num_items == 0:
                if cache_dir is not None:
                    shutil.rmtree(cache_dir, ignore_errors=True)
                if reader.total_doc_tokens == 0:
                    raise CorpusError(f"the text sources ({len(paths)} file(s)) hold no text")
                raise CorpusError(
                    f"the text holds {reader.total_doc_tokens} tokens, fewer than one item of {data_len}; use a smaller --item-length"
                )
            dtype = reader.dtype
            build_info.update(text_unit=text_unit, text_field=text_field, seed=seed, eos_id=tok.eos_id)  # type: ignore[union-attr]

        if sched_spec == "custom":
            sched_spec = _custom_schedule(int(data_len), reader.num_items, items_per_step, checkpoints, f"the {fmt} data")
        elif sched_spec is None and fmt == "text":
            sched_spec = _custom_schedule(int(data_len), reader.num_items, items_per_step, checkpoints, "the text corpus")
        sched: Schedule | None = None if sched_spec == "none" else sched_spec  # type: ignore[assignment]
        if sched is not None and fmt in ("pythia", "text") and sched.epoch_items is None:
            sched = sched.with_epoch(reader.num_items)

        vocab = _default_vocab(dtype, tok, vocab_size, reserve)
        if tok is not None and vocab_size is not None and vocab_size < tok.vocab_size:
            raise ValueError(f"--vocab-size {vocab_size} is smaller than the tokenizer's {tok.vocab_size} ids")
        builder_vocab = vocab + reserve  # the filler id of dropped OLMo instances is `vocab`
        if np.dtype(dtype) == np.dtype(np.uint16) and builder_vocab > np.iinfo(np.uint16).max:
            dtype = np.uint32  # the separator id (= builder_vocab) must fit the index's token type
        windows = sched.window_structures(reader.num_tokens) if sched is not None else {}

        metadata: dict[str, Any] = {
            "format": fmt,
            "tokenizer": tok.to_metadata() if tok is not None else None,
            "schedule": sched.to_dict() if sched is not None else None,
            "sources": [r.to_dict() for r in records],
            "reader": None,
            "build": {
                **build_info,
                "item_length": data_len,
                "vocab_size": vocab,
                "filler_id": vocab if drop_repetitive else None,
                "exposure_version": _version(),
            },
        }

        try:
            with IndexBuilder(
                out_path,
                dtype=dtype,
                vocab_size=builder_vocab,
                memory_budget_bytes=memory_budget_bytes,
                threads=threads,
                windows=windows,
                # (tiny streams go without a total: the engine's shard balancing needs >= 1024 tokens per shard)
                total_tokens=reader.num_tokens if reader.num_tokens >= 4096 else None,
                total_items=reader.num_items,
                overwrite=overwrite,
                progress=progress,
                shard_tokens=shard_tokens,
            ) as builder:
                if tok is not None:
                    _copy_atomic(tok.path, builder.partial / TOKENIZER_FILE)
                fed = 0
                for chunk in reader.chunks(chunk_tokens):
                    if chunk.item_length is not None:
                        builder.add(chunk.tokens, item_length=chunk.item_length)
                    else:
                        builder.add(chunk.tokens, item_lengths=chunk.item_lengths)
                    fed += len(chunk.tokens)
                if fed != reader.num_tokens:
                    raise CorpusError(f"read {fed} tokens but expected {reader.num_tokens} (did a source change during the build?)")
                metadata["reader"] = reader.describe()
                index = builder.finish(metadata)
        except (CorpusError, ValueError):
            # bad data or settings: a re-run would fail the same way, so leave nothing behind
            shutil.rmtree(out_path.with_name(out_path.name + ".partial"), ignore_errors=True)
            if cache_dir is not None:
                shutil.rmtree(cache_dir, ignore_errors=True)
            raise
        finally:
            close = getattr(reader, "close", None)
            if close is not None:
                close()
        if cache_dir is not None:
            shutil.rmtree(cache_dir, ignore_errors=True)
        return index


def _copy_atomic(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _version() -> str:
    try:
        from exposure import __version__

        return __version__
    except ImportError:  # pragma: no cover - the package always defines it
        return "unknown"


def describe_index(index: Any) -> dict[str, Any]:
    """What an index holds, for ``exposure info`` (JSON-able)."""
    meta = index.metadata or {}
    build = index.manifest.get("build", {})
    out: dict[str, Any] = {
        "path": str(index.path),
        "tokens": index.num_tokens,
        "items": index.num_items,
        "item_length": index.manifest.get("items", {}).get("length"),
        "token_dtype": np.dtype(index.dtype).name,
        "stream": index.stream_id,
        "vocab_size": index.vocab_size,
        "shards": index.num_shards,
        "bytes_on_disk": build.get("bytes_on_disk"),
        "bytes_per_token": build.get("bytes_per_token"),
        "built": build.get("created"),
        "build_seconds": build.get("seconds"),
        "build_tokens_per_second": build.get("tokens_per_second"),
        "window_structures": sorted(index.manifest.get("windows", {})),
        "format": meta.get("format"),
        "tokenizer": meta.get("tokenizer"),
        "schedule": meta.get("schedule"),
        "sources": meta.get("sources"),
        "reader": meta.get("reader"),
        "build": meta.get("build"),
    }
    return out


__all__ = ["FORMATS", "SourceFile", "build", "describe_index", "hash_sources"]

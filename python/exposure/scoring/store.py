"""The ``exposure eval`` output directory (layout in docs/CONTRACTS.md, 'Evaluation output').

Every file is written under a temporary name and renamed into place; ``run.json`` lists a checkpoint as finished
only after its three files are in place, so an interrupted run leaves at most stray temporary files (removed on
the next start) and resumes with the first unfinished checkpoint. A lock file keeps two processes from writing
the same directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from exposure.engine import write_json_atomic
from exposure.scoring.pairs import EvalError, file_sha256

FORMAT = "exposure-eval/1"
SCORES_SCHEMA = pa.schema(
    [
        ("pair_uid", pa.string()),
        ("step", pa.int64()),
        ("logp_good", pa.float64()),
        ("logp_bad", pa.float64()),
        ("correct", pa.bool_()),
        ("crit_logp_good", pa.float64()),
        ("crit_logp_bad", pa.float64()),
        ("crit_margin", pa.float64()),
    ]
)
# run.json keys that must agree when a directory is resumed
IDENTITY_KEYS = ("model", "pairs_content_sha256", "dtype", "prefix_token_id", "n_layers", "n_heads", "d_model")
_TMP = ".partial"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_json_atomic(path, data, indent=2, sort_keys=True)


def read_run_json(out_dir: Path) -> dict[str, Any]:
    path = out_dir / "run.json"
    if not path.is_file():
        raise FileNotFoundError(f"{out_dir} is not an exposure eval output directory (no run.json)")
    with open(path) as handle:
        data: dict[str, Any] = json.load(handle)
    if data.get("format") != FORMAT:
        raise EvalError(f"{path}: unknown format {data.get('format')!r} (expected {FORMAT})")
    return data


def step_paths(out_dir: Path, step: int) -> dict[str, Path]:
    return {
        "scores": out_dir / "scores" / f"step{step}.parquet",
        "states": out_dir / "states" / f"step{step}.npy",
        "attention": out_dir / "attention" / f"step{step}.npy",
    }


def _readable(path: Path) -> bool:
    """Whether ``path`` is a whole .npy array (header and data) or Parquet file (footer): cheap, reads no data."""
    try:
        if path.suffix == ".npy":
            np.load(path, mmap_mode="r")
        else:
            pq.read_metadata(path)
    except (OSError, ValueError, EOFError):  # missing, truncated, not that format (pyarrow: ArrowInvalid, a ValueError)
        return False
    return True


def scores_table(pair_uid: list[str], step: int, logp: np.ndarray, crit_logp: np.ndarray) -> pa.Table:
    """The per-checkpoint scores table; ``correct`` is ``logp_good > logp_bad`` (ties are wrong)."""
    return pa.table(
        {
            "pair_uid": pa.array(pair_uid, pa.string()),
            "step": pa.array(np.full(len(pair_uid), step, dtype=np.int64)),
            "logp_good": pa.array(logp[:, 0]),
            "logp_bad": pa.array(logp[:, 1]),
            "correct": pa.array(logp[:, 0] > logp[:, 1]),
            "crit_logp_good": pa.array(crit_logp[:, 0]),
            "crit_logp_bad": pa.array(crit_logp[:, 1]),
            "crit_margin": pa.array(crit_logp[:, 0] - crit_logp[:, 1]),
        },
        schema=SCORES_SCHEMA,
    )


@dataclass
class PendingStates:
    """A memory-mapped ``.npy`` being filled for one checkpoint (renamed into place on commit)."""

    tmp: Path
    array: np.memmap[Any, np.dtype[np.float16]]


class OutputDir:
    """An output directory opened for writing (use as a context manager; holds the lock)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock: IO[str] | None = None
        self.info: dict[str, Any] = {}

    def __enter__(self) -> OutputDir:
        self.path.mkdir(parents=True, exist_ok=True)
        lock = open(self.path / ".lock", "w")
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            lock.close()
            raise EvalError(f"another exposure eval is writing to {self.path}") from exc
        self._lock = lock
        for sub in ("scores", "states", "attention"):
            (self.path / sub).mkdir(exist_ok=True)
            for stray in (self.path / sub).glob(f"*{_TMP}"):
                stray.unlink()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def start(self, info: dict[str, Any], pairs_file: Path | None, pairs_table: pa.Table) -> None:
        """Create ``run.json`` and ``pairs.parquet``, or check that an existing directory is the same evaluation."""
        run_json = self.path / "run.json"
        if run_json.is_file():
            stored = read_run_json(self.path)
            for key in IDENTITY_KEYS:
                if stored.get(key) != info.get(key):
                    raise EvalError(
                        f"{self.path} holds results of a different evaluation ({key}: stored {stored.get(key)!r}, "
                        f"now {info.get(key)!r}); use another --out directory"
                    )
            merged = dict(stored)
            merged.update({k: v for k, v in info.items() if k not in ("checkpoints", "finished_checkpoints")})
            merged["checkpoints"] = sorted(set(stored.get("checkpoints", [])) | set(info["checkpoints"]))
            merged["finished_checkpoints"] = sorted(stored.get("finished_checkpoints", []))
            merged["checkpoint_info"] = stored.get("checkpoint_info", {})
            if not (self.path / "pairs.parquet").is_file():
                self._write_pairs(pairs_file, pairs_table)
            self.info = merged
        else:
            self._write_pairs(pairs_file, pairs_table)
            self.info = dict(info, format=FORMAT, finished_checkpoints=[], checkpoint_info={})
        if self.info.get("pairs_sha256") is None:  # an in-memory table: the sha256 of its copy
            self.info["pairs_sha256"] = file_sha256(self.path / "pairs.parquet")
        _write_json(run_json, self.info)

    def _write_pairs(self, pairs_file: Path | None, table: pa.Table) -> None:
        target = self.path / "pairs.parquet"
        tmp = target.with_name(target.name + _TMP)
        if pairs_file is not None:
            shutil.copyfile(pairs_file, tmp)
        else:
            pq.write_table(table, tmp)
        os.replace(tmp, target)

    def is_finished(self, step: int) -> bool:
        """Marked finished in run.json, with its three files in place and readable (a file truncated or
        overwritten since, e.g. by a full disk or a copy cut short, makes the checkpoint be computed again)."""
        return step in self.info.get("finished_checkpoints", []) and all(
            _readable(p) for p in step_paths(self.path, step).values()
        )

    def new_states(self, step: int, shape: tuple[int, ...]) -> PendingStates:
        tmp = step_paths(self.path, step)["states"].with_name(f"step{step}.npy{_TMP}")
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
        return PendingStates(tmp, array)

    def commit(
        self,
        step: int,
        scores: pa.Table,
        attention: np.ndarray,
        states: PendingStates,
        details: dict[str, Any],
    ) -> None:
        """Put the checkpoint's three files in place, then mark it finished in ``run.json``."""
        paths = step_paths(self.path, step)
        states.array.flush()
        os.replace(states.tmp, paths["states"])
        tmp = paths["attention"].with_name(paths["attention"].name + _TMP)
        with open(tmp, "wb") as handle:
            np.save(handle, attention.astype(np.float32, copy=False))
        os.replace(tmp, paths["attention"])
        tmp = paths["scores"].with_name(paths["scores"].name + _TMP)
        pq.write_table(scores, tmp)
        os.replace(tmp, paths["scores"])
        finished = set(self.info.get("finished_checkpoints", [])) | {step}
        self.info["finished_checkpoints"] = sorted(finished)
        self.info.setdefault("checkpoint_info", {})[str(step)] = details
        _write_json(self.path / "run.json", self.info)


@dataclass(frozen=True)
class EvalResults:
    """A finished (or partly finished) evaluation, read back from its directory.

    ``checkpoints``: the finished steps, increasing. Array row ``i`` (and ``scores(step)`` row ``i``) is
    ``pairs`` row ``i``.
    """

    path: Path
    run: dict[str, Any]
    pairs: pa.Table
    checkpoints: tuple[int, ...]

    def _check(self, step: int) -> dict[str, Path]:
        if step not in self.checkpoints:
            raise KeyError(f"checkpoint {step} is not finished in {self.path} (finished: {list(self.checkpoints)})")
        return step_paths(self.path, step)

    def scores(self, step: int | None = None) -> pa.Table:
        """One checkpoint's scores, or (``step=None``) all finished checkpoints' rows, by step then pair."""
        if step is not None:
            return pq.read_table(self._check(step)["scores"], schema=SCORES_SCHEMA)
        tables = [pq.read_table(step_paths(self.path, s)["scores"], schema=SCORES_SCHEMA) for s in self.checkpoints]
        return pa.concat_tables(tables) if tables else SCORES_SCHEMA.empty_table()

    def states(self, step: int, mmap: bool = True) -> np.ndarray:
        """float16 ``[n_pairs, 2, n_layers + 1, d_model]`` (memory-mapped by default); NaN: no critical token."""
        return np.load(self._check(step)["states"], mmap_mode="r" if mmap else None)

    def attention(self, step: int) -> np.ndarray:
        """float32 ``[n_pairs, 2, n_layers, n_heads]``; NaN: no critical or no context token."""
        return np.load(self._check(step)["attention"])


def load_results(out_dir: str | Path) -> EvalResults:
    path = Path(out_dir)
    run = read_run_json(path)
    finished = tuple(sorted(int(s) for s in run.get("finished_checkpoints", [])))
    for step in finished:
        paths = step_paths(path, step).values()
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise EvalError(f"{path}: checkpoint {step} is marked finished but {', '.join(missing)} is missing")
        damaged = [str(p) for p in paths if not _readable(p)]
        if damaged:
            raise EvalError(
                f"{path}: checkpoint {step} is marked finished but {', '.join(damaged)} is truncated or unreadable; "
                "re-run `exposure eval` with the same --out to compute it again"
            )
    return EvalResults(path, run, pq.read_table(path / "pairs.parquet"), finished)

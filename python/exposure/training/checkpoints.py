"""Checkpoint schedules, the checkpoint folder layout, and the resume state of a reference run.

Layout of a run folder ``OUT``::

    OUT/run.json            settings, schedule, data and tokenizer identity, checkpoints, loss curve;
                            written when the run has finished (so its existence means "finished")
    OUT/progress.json       the same record while the run is in progress (removed at the end)
    OUT/step{S}/            weights after S optimizer steps (transformers layout) + the tokenizer +
                            checkpoint.json (step, items and tokens seen)
    OUT/resume.pt           optimizer state (and loss curve) at the latest saved checkpoint

A checkpoint folder is written under a temporary name and renamed when complete, so ``step{S}/``
existing means checkpoint S is finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

RUN_FILE = "run.json"
PROGRESS_FILE = "progress.json"
RESUME_FILE = "resume.pt"
CHECKPOINT_INFO = "checkpoint.json"
DEFAULT_MAX_CHECKPOINTS = 25


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / f"step{int(step)}"


def pythia_like_checkpoints(total_steps: int, every: int) -> tuple[int, ...]:
    """0, the powers of two below ``every``, every multiple of ``every`` up to ``total_steps``, and
    ``total_steps`` itself (Pythia: ``every`` = 1000 gives 0, 1, 2, 4, …, 512, 1000, 2000, …)."""
    if total_steps < 0:
        raise ValueError(f"total_steps must be >= 0, got {total_steps}")
    if every <= 0:
        raise ValueError(f"checkpoint interval must be positive, got {every}")
    out = {0, total_steps}
    p = 1
    while p < every and p <= total_steps:
        out.add(p)
        p *= 2
    out.update(range(every, total_steps + 1, every))
    return tuple(sorted(out))


def _nice_intervals() -> Iterable[int]:
    """1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, …"""
    yield from (1, 2, 5)
    scale = 10
    while True:
        yield from (scale, 2 * scale, 5 * scale // 2, 5 * scale)
        scale *= 10


def auto_interval(total_steps: int, max_count: int = DEFAULT_MAX_CHECKPOINTS) -> int:
    """The smallest interval in 1, 2, 5, 10, 20, 25, 50, … whose Pythia-like schedule has at most
    ``max_count`` checkpoints."""
    if max_count < 2:
        raise ValueError(f"max_count must be >= 2, got {max_count}")
    for k in _nice_intervals():
        if len(pythia_like_checkpoints(total_steps, k)) <= max_count or k > total_steps:
            return k
    raise AssertionError("unreachable")


def default_checkpoints(total_steps: int, every: int | None = None, max_count: int = DEFAULT_MAX_CHECKPOINTS) -> tuple[int, ...]:
    """Pythia-like checkpoints for a run of ``total_steps`` steps; ``every`` None picks
    :func:`auto_interval` (at most ``max_count`` checkpoints)."""
    k = every if every is not None else auto_interval(total_steps, max_count)
    return pythia_like_checkpoints(total_steps, k)


def validate_checkpoints(checkpoints: Sequence[int], total_steps: int) -> tuple[int, ...]:
    ck = tuple(int(c) for c in checkpoints)
    if not ck:
        raise ValueError("no checkpoints requested")
    if ck[0] < 0 or any(b <= a for a, b in zip(ck, ck[1:])):
        raise ValueError(f"checkpoints must be non-negative and strictly increasing, got {list(ck)[:10]}…")
    if ck[-1] > total_steps:
        raise ValueError(f"checkpoint step{ck[-1]} is beyond the run's {total_steps} steps")
    return ck


def finished_checkpoints(out_dir: Path, checkpoints: Sequence[int]) -> list[int]:
    """The requested checkpoints whose folder is complete."""
    return [c for c in checkpoints if (checkpoint_dir(out_dir, c) / CHECKPOINT_INFO).is_file()]


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_run(out_dir: Path, name: str = RUN_FILE) -> dict[str, Any] | None:
    """``OUT/run.json`` (or ``name``, e.g. :data:`PROGRESS_FILE`), None when absent."""
    p = Path(out_dir) / name
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p} is not valid JSON ({exc}); remove it or use another output folder") from None


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No transformers progress bars (shard writing/loading) inside the block."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def save_checkpoint(model: Any, tokenizer: Any, out_dir: Path, step: int, info: dict[str, Any]) -> Path:
    """Write ``OUT/step{S}`` (model, tokenizer, checkpoint.json) atomically; returns the folder."""
    final = checkpoint_dir(out_dir, step)
    tmp = final.with_name(final.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    with quiet_transformers():
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    # save_pretrained re-serializes tokenizer.json; keep the original bytes so the checkpoint's
    # tokenizer has the same sha256 as the index's (exposure eval checks it).
    original = getattr(tokenizer, "exposure_tokenizer_file", None)
    if original and Path(original).is_file():
        shutil.copyfile(original, tmp / "tokenizer.json")
    (tmp / CHECKPOINT_INFO).write_text(json.dumps({"step": int(step), **info}, indent=1) + "\n", encoding="utf-8")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


__all__ = [
    "CHECKPOINT_INFO",
    "RESUME_FILE",
    "PROGRESS_FILE",
    "RUN_FILE",
    "auto_interval",
    "checkpoint_dir",
    "default_checkpoints",
    "finished_checkpoints",
    "pythia_like_checkpoints",
    "quiet_transformers",
    "read_run",
    "save_checkpoint",
    "validate_checkpoints",
    "write_json_atomic",
]

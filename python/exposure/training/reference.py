"""``train_reference``: pre-train a small GPT-NeoX model on the items of an index, in index order.

The index's item order *is* the training order: step ``i`` consumes items ``[i*B, (i+1)*B)`` (``B``
items per step, from the index's ``metadata["schedule"]`` when it has one), so the index's schedule
says exactly which step saw each token, and checkpoint ``step{S}`` has been trained on steps
``0 … S-1``. The run's own :class:`~exposure.schedule.Schedule` is written to ``run.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from exposure.schedule import Schedule
from exposure.training.checkpoints import default_checkpoints
from exposure.training.config import ModelConfig, OptimConfig
from exposure.training.items import IndexItems
from exposure.training.loop import RunPlan, train_items

DEFAULT_ITEMS_PER_STEP = 16
"""Items per optimizer step when neither the index's schedule nor the caller gives one."""


def _open_index(index_path: str | os.PathLike[str]) -> Any:
    try:
        from exposure import Index
    except ImportError as exc:  # the compiled engine is missing
        raise RuntimeError(f"the exposure engine (exposure.Index) is not available: {exc}") from None
    if not Path(index_path).exists():
        raise FileNotFoundError(f"no index at {index_path}")
    return Index(str(index_path))


def manifest_sha256(index: Any) -> str:
    """sha256 of the index's manifest (canonical JSON): identifies the indexed token stream."""
    return hashlib.sha256(json.dumps(index.manifest, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def index_schedule(index: Any) -> Schedule | None:
    meta = getattr(index, "metadata", None) or {}
    if meta.get("schedule") is None:
        return None
    return Schedule.from_dict(meta["schedule"])


def _warn(msg: str, progress: bool) -> None:
    if progress:
        print(f"train-reference: {msg}", file=sys.stderr)


def plan_run(
    num_items: int,
    *,
    schedule: Schedule | None,
    items_per_step: int | None,
    checkpoints: Sequence[int] | None,
    checkpoint_every: int | None,
    steps: int | None,
    epochs: float,
    progress: bool = False,
) -> RunPlan:
    """How many items and steps the run has, and its checkpoints.

    * items per step: ``items_per_step``, else the schedule's, else :data:`DEFAULT_ITEMS_PER_STEP`;
      a value that contradicts the index's schedule is refused (its exposures would be wrong);
    * steps: ``steps``, else the schedule's ``total_steps``, else ``ceil(epochs * num_items / B)``;
    * checkpoints: ``checkpoints``; else Pythia-like every ``checkpoint_every`` steps when it is given; else the
      schedule's (those within the run, and the run's last step when the run stops short of the schedule); else
      Pythia-like (:func:`~exposure.training.checkpoints.default_checkpoints`).
    """
    if num_items <= 0:
        raise ValueError("the index has no items")
    if epochs <= 0:
        raise ValueError(f"epochs must be positive, got {epochs}")
    b = items_per_step
    if schedule is not None:
        if b is not None and b != schedule.items_per_step:
            raise ValueError(
                f"the index's schedule {schedule.name!r} has {schedule.items_per_step} items per step, not {b}: "
                f"training with another batch would make its exposure counts wrong (leave items_per_step out)"
            )
        b = schedule.items_per_step
    if b is None:
        b = DEFAULT_ITEMS_PER_STEP
    if b <= 0:
        raise ValueError(f"items_per_step must be positive, got {b}")
    available = int(math.floor(epochs * num_items + 1e-9))
    if steps is None and schedule is not None and schedule.total_steps is not None:
        steps = schedule.total_steps
    if steps is None:
        total_items = available
    else:
        if steps <= 0:
            raise ValueError(f"steps must be positive, got {steps}")
        total_items = steps * b
        if total_items > available:
            if (steps - 1) * b >= available:
                raise ValueError(
                    f"{steps} steps of {b} items need {total_items} items, but {epochs:g} pass(es) over the index give "
                    f"{available}; pass more epochs or fewer steps"
                )
            total_items = available
    total_steps = math.ceil(total_items / b)
    if checkpoint_every is not None and checkpoint_every <= 0:
        raise ValueError(f"checkpoint_every must be positive, got {checkpoint_every}")
    if checkpoints is None and schedule is not None and checkpoint_every is None:
        within = [c for c in schedule.checkpoints if c <= total_steps]
        if len(within) < len(schedule.checkpoints):
            # A run cut short of the schedule (fewer steps or items) still saves its end: it used to end at the
            # last schedule checkpoint within it, so `--steps 5` on a schedule saving every 20 steps trained nothing.
            dropped = len(schedule.checkpoints) - len(within)
            if total_steps not in within:
                within.append(total_steps)
            _warn(f"dropping {dropped} schedule checkpoints beyond the run's {total_steps} steps; its last step is "
                  f"saved as checkpoint {total_steps}", progress)
        if within:
            checkpoints = within
    if checkpoints is None:
        checkpoints = default_checkpoints(total_steps, checkpoint_every)
    return RunPlan(items_per_step=b, total_items=total_items, total_steps=total_steps, checkpoints=tuple(checkpoints))


def train_reference(
    index_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    config: ModelConfig = ModelConfig(),
    items_per_step: int | None = None,
    checkpoints: Sequence[int] | None = None,
    checkpoint_every: int | None = None,
    steps: int | None = None,
    epochs: float = 1.0,
    lr: float = 1e-3,
    warmup: int | None = None,
    weight_decay: float = 0.01,
    seed: int = 0,
    device: str = "auto",
    tokenizer: str | os.PathLike[str] | None = None,
    micro_batch_size: int | None = None,
    precision: str = "fp32",
    threads: int | None = None,
    progress: bool = True,
) -> Path:
    """Train ``config`` from scratch on the index's items in index order; checkpoints go to ``out_dir``.

    Returns ``out_dir``, which then holds ``run.json`` and one ``step{S}/`` folder per checkpoint
    (``AutoModelForCausalLM`` / ``AutoTokenizer`` load them). See :func:`plan_run` for how the batch,
    steps and checkpoints are chosen, and :mod:`exposure.training.loop` for determinism and resuming.
    ``tokenizer``: a ``tokenizer.json`` (or folder) to use instead of the index's own (must match it).
    ``threads``: CPU threads for torch (default: torch's own setting, usually all cores).
    """
    from exposure.tokenizer import tokenizer_for_index

    index = _open_index(index_path)
    source = IndexItems(index)
    schedule = index_schedule(index)
    plan = plan_run(
        len(source), schedule=schedule, items_per_step=items_per_step, checkpoints=checkpoints,
        checkpoint_every=checkpoint_every, steps=steps, epochs=epochs, progress=progress,
    )
    tok = tokenizer_for_index(index, tokenizer)
    item_length = schedule.item_length if schedule is not None else source.max_item_length()
    if item_length < 2:
        raise ValueError(f"items of {item_length} token(s) leave nothing to predict")
    context = config.context_length if config.context_length is not None else item_length - 1
    resolved = config.resolved(vocab_size=max(tok.vocab_size, int(index.vocab_size)), context_length=context)
    passes = plan.total_items / len(source)
    run_schedule = Schedule(
        name=schedule.name if schedule is not None else "train-reference",
        item_length=item_length,
        items_per_step=plan.items_per_step,
        checkpoints=plan.checkpoints,
        epoch_items=len(source) if passes > 1 else (schedule.epoch_items if schedule is not None else None),
        total_steps=plan.total_steps,
        total_items=plan.total_items,
    )
    data_info = {
        "id": manifest_sha256(index),
        "index_path": str(Path(index_path).resolve()),
        "num_items": len(source),
        "num_tokens": int(index.num_tokens),
        "stream": index.stream_id,
        "passes": passes,
        "item_order": "index order; step i reads items [i*items_per_step, (i+1)*items_per_step)",
    }
    return train_items(
        source,
        out_dir,
        model_config=resolved,
        tokenizer_file=tok.path,
        plan=plan,
        optim=OptimConfig(lr=lr, warmup=warmup, weight_decay=weight_decay),
        seed=seed,
        device=device,
        micro_batch_size=micro_batch_size,
        precision=precision,
        threads=threads,
        progress=progress,
        data_info=data_info,
        schedule=run_schedule.to_dict(),
    )


__all__ = ["DEFAULT_ITEMS_PER_STEP", "index_schedule", "manifest_sha256", "plan_run", "train_reference"]

"""Training schedules: stream offsets -> optimizer steps -> checkpoint windows.

A :class:`Schedule` describes how a run consumed the token stream that an index was built from:
``item_length`` tokens per item (training sequence), ``items_per_step`` consecutive items per optimizer
step, and the steps at which checkpoints were saved.

Convention (the project's, see docs/CONTRACTS.md): **checkpoint S has been trained on steps 0 … S−1.**
Step ``i`` consumed the items ``[i*items_per_step, (i+1)*items_per_step)``, i.e. the stream offsets
``[i*tokens_per_step, (i+1)*tokens_per_step)``. A token at stream offset ``t`` is trained in step
``t // tokens_per_step`` and is seen by checkpoint ``S`` iff that step is ``< S``. So the last token of
step ``i`` (offset ``(i+1)*tokens_per_step - 1``) is seen by checkpoint ``i+1`` and the first token of
step ``i+1`` is first seen by checkpoint ``i+2``.

Exposure windows: for checkpoints ``c_0 < c_1 < … < c_{K-1}``, window ``k`` holds the steps
``[c_{k-1}, c_k)`` (with ``c_{-1} = 0``): what checkpoint ``c_k`` has been trained on that checkpoint
``c_{k-1}`` had not. Summing windows ``0..k`` gives everything checkpoint ``c_k`` has seen.

Repeated data: when the run is longer than one pass over the data (Pythia's deduplicated run passes
over its ~207B tokens a second time from about step 98,657), ``epoch_items`` is the number of items in
one pass. The run then reads the same items again in the same order: the occurrence at offset ``t`` is
trained at steps ``(t + p*epoch_tokens) // tokens_per_step`` for ``p = 0, 1, …``. ``first_step`` and
``seen_by`` use the first pass; ``exposures`` counts every pass in its window.

The run ends after ``total_steps`` steps (default: the last checkpoint). Data trained at or after
``total_steps`` was never trained on: ``first_step`` is -1 for a phrase that only occurs there.
``total_items`` (default ``total_steps × items_per_step``) is how many items the run read in all, for a
run whose last step was partial: the data ran out in it (e.g. one pass over an index whose item count is
not a multiple of the batch), so that step did not go on into a next pass.

Presets (item length L, items per step B, checkpoints, where the numbers come from):

``pythia``
    L=2049, B=1024; 154 checkpoints: 0, 1, 2, 4, …, 512, then 1000, 2000, …, 143000 (Pythia model
    cards and the ``step{S}`` revisions); 143,000 steps. ``epoch_items`` is set by ``exposure build`` to
    the number of items in the index, which models the deduplicated run's second pass and has no
    effect on the standard run (its ~300B tokens cover all 143,000 steps).
``olmo-1b``
    L=2048, B=2048; 739,328 steps (``max_duration: 739_328`` in OLMo's ``configs/official/OLMo-1B.yaml``);
    checkpoints every 1000 steps (the released ``step{S}-tokens{N}B`` revisions) plus the last step.
``olmo-7b``
    L=2048, B=2160; 557,000 steps. OLMo's config file says 2048 instances per batch, but the released
    revisions name 2160 (``step1000-tokens4B``/``step2000-tokens9B``, ``step452000-tokens2000B``,
    ``step556000-tokens2460B``: 2160 × 2048 = 4.42M tokens per step), and the final model is ``step557000``.
    Checkpoints every 1000 steps.
``olmo2-1b``
    OLMo-2 0425 1B, L=4096, B=512; stage 1 is 4T tokens (model card), so 1,907,349 steps
    (= ceil(4e12 / (4096 × 512)), computed, not read from a config); checkpoints every 1000 steps plus
    the last step.
``olmo2-7b``
    OLMo-2 1124 7B, L=4096, B=1024; stage 1 ends at step 928,646 (the ``stage1-step928646-tokens3896B``
    revision); checkpoints every 1000 steps plus the last step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


class _Index(Protocol):
    """The part of :class:`exposure.Index` a schedule needs."""

    @property
    def num_tokens(self) -> int: ...

    def first_position(self, phrases: Sequence[Sequence[int]]) -> np.ndarray: ...

    def window_counts(self, phrases: Sequence[Sequence[int]], bounds: np.ndarray) -> np.ndarray: ...


def log_checkpoints(num_steps: int) -> tuple[int, ...]:
    """Pythia-like checkpoints for a run of ``num_steps`` steps: 0, 1, 2, 4, 8, … (< num_steps), num_steps."""
    if num_steps < 0:
        raise ValueError(f"num_steps must be >= 0, got {num_steps}")
    out = [0]
    p = 1
    while p < num_steps:
        out.append(p)
        p *= 2
    if num_steps > 0:
        out.append(num_steps)
    return tuple(out)


def every_checkpoints(interval: int, last: int) -> tuple[int, ...]:
    """Checkpoints 0, interval, 2*interval, …, and ``last`` (if it is not already one of them)."""
    out = list(range(0, last + 1, interval))
    if out[-1] != last:
        out.append(last)
    return tuple(out)


def parse_checkpoints(text: str) -> tuple[int, ...]:
    """Parse a checkpoint list: comma-separated steps and ranges ``START:STOP:STEP`` (STOP included).

    ``"0,1,2,4,8"`` -> (0, 1, 2, 4, 8); ``"0:100:25,150"`` -> (0, 25, 50, 75, 100, 150).
    """
    steps: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if ":" in part:
                fields = [int(x) for x in part.split(":")]
                if len(fields) != 3 or fields[2] <= 0:
                    raise ValueError
                start, stop, step = fields
                steps.extend(range(start, stop + 1, step))
            else:
                steps.append(int(part))
        except ValueError:
            raise ValueError(
                f"bad checkpoint list entry {part!r}: use integers or START:STOP:STEP ranges, e.g. '0,1,2,4' or '0:1000:100'"
            ) from None
    if not steps:
        raise ValueError(f"empty checkpoint list {text!r}")
    return tuple(steps)


def _pythia_checkpoints() -> tuple[int, ...]:
    return (0,) + tuple(2**k for k in range(10)) + tuple(range(1000, 143001, 1000))


_PRESETS: dict[str, dict[str, Any]] = {
    "pythia": dict(item_length=2049, items_per_step=1024, checkpoints=_pythia_checkpoints(), total_steps=143_000),
    "olmo-1b": dict(item_length=2048, items_per_step=2048, checkpoints=every_checkpoints(1000, 739_328), total_steps=739_328),
    "olmo-7b": dict(item_length=2048, items_per_step=2160, checkpoints=every_checkpoints(1000, 557_000), total_steps=557_000),
    "olmo2-1b": dict(item_length=4096, items_per_step=512, checkpoints=every_checkpoints(1000, 1_907_349), total_steps=1_907_349),
    "olmo2-7b": dict(item_length=4096, items_per_step=1024, checkpoints=every_checkpoints(1000, 928_646), total_steps=928_646),
}

PRESET_NAMES: tuple[str, ...] = tuple(_PRESETS)


@dataclass(frozen=True)
class Schedule:
    """How a training run consumed its token stream; see the module docstring for the conventions.

    ``Schedule(name, item_length, items_per_step, checkpoints, epoch_items=None, total_steps=None,
    total_items=None)``.
    """

    name: str
    item_length: int
    items_per_step: int
    checkpoints: tuple[int, ...]
    epoch_items: int | None = None
    total_steps: int | None = None
    total_items: int | None = None
    _ckpt: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ckpts = tuple(int(c) for c in self.checkpoints)
        object.__setattr__(self, "checkpoints", ckpts)
        if self.item_length <= 0 or self.items_per_step <= 0:
            raise ValueError(
                f"schedule {self.name!r}: item_length and items_per_step must be positive "
                f"(got {self.item_length}, {self.items_per_step})"
            )
        if not ckpts:
            raise ValueError(f"schedule {self.name!r}: no checkpoints")
        if ckpts[0] < 0 or any(b <= a for a, b in zip(ckpts, ckpts[1:])):
            raise ValueError(f"schedule {self.name!r}: checkpoints must be non-negative and strictly increasing")
        if self.epoch_items is not None and self.epoch_items <= 0:
            raise ValueError(f"schedule {self.name!r}: epoch_items must be positive, got {self.epoch_items}")
        if self.total_steps is not None and self.total_steps < 0:
            raise ValueError(f"schedule {self.name!r}: total_steps must be >= 0, got {self.total_steps}")
        if self.total_items is not None:
            steps, b = self.num_steps, self.items_per_step
            if not (steps - 1) * b < self.total_items <= steps * b:
                raise ValueError(
                    f"schedule {self.name!r}: total_items {self.total_items} does not end in the last of its "
                    f"{steps} steps of {b} items (more than {(steps - 1) * b}, at most {steps * b})"
                )
            if self.total_items == steps * b:  # the default: one form for one run
                object.__setattr__(self, "total_items", None)
        object.__setattr__(self, "_ckpt", np.asarray(ckpts, dtype=np.int64))

    # ------------------------------------------------------------------ construction
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> Schedule:
        """A named preset (``pythia``, ``olmo-1b``, ``olmo-7b``, ``olmo2-1b``, ``olmo2-7b``)."""
        try:
            params = dict(_PRESETS[name])
        except KeyError:
            raise ValueError(f"unknown schedule preset {name!r}; known: {', '.join(PRESET_NAMES)}, or 'custom'") from None
        params.update(overrides)
        return cls(name=name, **params)

    @classmethod
    def custom(
        cls,
        item_length: int,
        items_per_step: int,
        checkpoints: Sequence[int] | None = None,
        *,
        num_steps: int | None = None,
        epoch_items: int | None = None,
        total_items: int | None = None,
        name: str = "custom",
    ) -> Schedule:
        """A schedule for a run you describe. Without ``checkpoints``, uses :func:`log_checkpoints` of ``num_steps``.
        ``total_items``: the items the run read, when that ends its last step early (kept only when the run is
        ``num_steps`` long)."""
        if checkpoints is None:
            if num_steps is None:
                raise ValueError("a custom schedule needs a checkpoint list or the number of steps")
            checkpoints = log_checkpoints(num_steps)
        total = num_steps if num_steps is not None else None
        if total is not None and checkpoints and total < max(checkpoints):
            total = None
        return cls(name, item_length, items_per_step, tuple(checkpoints), epoch_items=epoch_items, total_steps=total,
                   total_items=total_items if total is not None else None)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Schedule:
        """Inverse of :meth:`to_dict`."""
        if not isinstance(d, dict):
            raise ValueError(f"not a schedule description: expected an object with name, item_length, "
                             f"items_per_step, checkpoints, got {type(d).__name__}")
        try:
            return cls(
                name=str(d["name"]),
                item_length=int(d["item_length"]),
                items_per_step=int(d["items_per_step"]),
                checkpoints=tuple(int(c) for c in d["checkpoints"]),
                epoch_items=None if d.get("epoch_items") is None else int(d["epoch_items"]),
                total_steps=None if d.get("total_steps") is None else int(d["total_steps"]),
                total_items=None if d.get("total_items") is None else int(d["total_items"]),
            )
        except KeyError as exc:
            raise ValueError(
                f"not a schedule description: no {exc} field (it needs name, item_length, items_per_step, checkpoints)"
            ) from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"not a schedule description: {exc}") from None

    @classmethod
    def for_index(cls, index: Any) -> Schedule:
        """The schedule stored in an index's manifest (``metadata["schedule"]``)."""
        meta = getattr(index, "metadata", None) or {}
        if "schedule" not in meta or meta["schedule"] is None:
            raise ValueError(f"index {getattr(index, 'path', '?')} records no schedule; rebuild it with --schedule")
        return cls.from_dict(meta["schedule"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "item_length": self.item_length,
            "items_per_step": self.items_per_step,
            "checkpoints": list(self.checkpoints),
            "epoch_items": self.epoch_items,
            "total_steps": self.total_steps,
            "total_items": self.total_items,
            "tokens_per_step": self.tokens_per_step,
        }

    def with_epoch(self, epoch_items: int | None) -> Schedule:
        """The same schedule with ``epoch_items`` set (the items of one pass over the data)."""
        return dataclasses.replace(self, epoch_items=epoch_items)

    # ------------------------------------------------------------------ arithmetic
    @property
    def tokens_per_step(self) -> int:
        return self.item_length * self.items_per_step

    @property
    def num_steps(self) -> int:
        """Steps in the run: ``total_steps``, or the last checkpoint when that is not given."""
        return self.total_steps if self.total_steps is not None else self.checkpoints[-1]

    @property
    def trained_tokens(self) -> int:
        """Tokens the run read in all, every pass counted: ``total_items`` (or ``num_steps × items_per_step``)
        items."""
        items = self.total_items if self.total_items is not None else self.num_steps * self.items_per_step
        return items * self.item_length

    @property
    def epoch_tokens(self) -> int | None:
        return None if self.epoch_items is None else self.epoch_items * self.item_length

    def step_of(self, offsets: Iterable[int] | np.ndarray | int) -> np.ndarray:
        """First-pass optimizer step of each stream offset (``offset // tokens_per_step``)."""
        arr = np.asarray(offsets, dtype=np.int64)
        if np.any(arr < 0):
            raise ValueError("stream offsets must be >= 0")
        return arr // self.tokens_per_step

    def step_start(self, step: int) -> int:
        """Stream offset of the first token of ``step``."""
        return int(step) * self.tokens_per_step

    def window_boundaries(self) -> np.ndarray:
        """int64 stream offsets ``[c * tokens_per_step for c in checkpoints]``."""
        return self._ckpt * self.tokens_per_step

    def checkpoint_index(self, steps: Iterable[int] | np.ndarray | int) -> np.ndarray:
        """Index of the first checkpoint that has seen each step (the window it falls in);
        ``len(checkpoints)`` for steps no checkpoint has seen; -1 stays -1."""
        s = np.asarray(steps, dtype=np.int64)
        k = np.searchsorted(self._ckpt, s, side="right")
        return np.where(s < 0, -1, k)

    def first_checkpoint(self, steps: Iterable[int] | np.ndarray | int) -> np.ndarray:
        """The first checkpoint step that has seen each step, -1 when none has (or the step is -1)."""
        k = self.checkpoint_index(steps)
        ok = (k >= 0) & (k < len(self.checkpoints))
        return np.where(ok, self._ckpt[np.clip(k, 0, len(self.checkpoints) - 1)], -1)

    # ------------------------------------------------------------------ queries through the engine
    def check_index(self, index: Any) -> None:
        """Refuses an index whose items are not this schedule's training sequences: steps are counted in tokens
        (``item_length`` × ``items_per_step`` per step), so items of another length would put every occurrence
        at the wrong step."""
        items = (getattr(index, "manifest", None) or {}).get("items") or {}
        length = items.get("length")
        if length is None and items.get("starts_file"):
            raise ValueError(
                f"the index {getattr(index, 'path', '')} has items of varying length, so no step schedule applies "
                f"(schedule {self.name!r} counts {self.item_length} tokens per item): build it with items of one length"
            )
        if length is not None and int(length) != self.item_length:
            raise ValueError(
                f"schedule {self.name!r} has items of {self.item_length} tokens but the index "
                f"{getattr(index, 'path', '')} has items of {length}: its steps would be wrong; use the schedule "
                "the index was built with (from-index) or one with the index's item length"
            )

    def first_step(self, index: _Index, phrases: Sequence[Sequence[int]]) -> np.ndarray:
        """First-pass step at which each phrase was first trained on; -1 when never in the run."""
        pos = np.asarray(index.first_position(phrases), dtype=np.int64)
        steps = np.where((pos >= 0) & (pos < self.trained_tokens), pos // self.tokens_per_step, -1)
        return steps.astype(np.int64)

    def seen_by(self, index: _Index, phrases: Sequence[Sequence[int]], checkpoint: int) -> np.ndarray:
        """Whether checkpoint ``checkpoint`` (a step number) has been trained on each phrase."""
        fs = self.first_step(index, phrases)
        return (fs >= 0) & (fs < int(checkpoint))

    def _count_points(self, num_tokens: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """How :meth:`exposures` reads the index.

        With one pass of ``E`` tokens repeated in the same order, the occurrences trained before virtual
        stream position ``v`` number ``G(v) = (v // E) * F(E) + F(v % E)``, where ``F(x)`` counts the
        occurrences at offsets ``< x`` of one pass. So every window needs ``F`` only at the points
        ``v % E`` (and at ``E``): one ``window_counts`` call, however many passes the run makes.
        Without repetition ``G(v) = F(min(v, num_tokens))``.

        Returns (unique points u, starting at 0; the virtual boundaries v = [0, min(c_k * tokens_per_step,
        trained_tokens)];
        v's index into u; E, or 0 without repetition).
        """
        virt = np.minimum(np.concatenate([[0], self.window_boundaries()]), self.trained_tokens).astype(np.int64)
        et = self.epoch_tokens
        if et is not None and et > 0:
            limit = min(et, num_tokens)
            pts = np.minimum(virt % et, limit)
            u = np.unique(np.concatenate([[0, limit], pts]))
            return u, virt, np.searchsorted(u, pts), et
        pts = np.clip(virt, 0, num_tokens)
        u = np.unique(np.concatenate([[0], pts]))
        return u, virt, np.searchsorted(u, pts), 0

    def window_structures(self, num_tokens: int) -> dict[str, np.ndarray]:
        """The boundaries :meth:`exposures` queries, to persist at build time (``IndexBuilder(windows=...)``)
        so that window counts cost the same however often a phrase occurs."""
        u = self._count_points(num_tokens)[0]
        return {self.name: u} if len(u) >= 2 else {}

    def exposures(self, index: _Index, phrases: Sequence[Sequence[int]]) -> np.ndarray:
        """int64 ``[n_phrases, len(checkpoints)]``: occurrences trained in each checkpoint window
        (window k = steps ``[c_{k-1}, c_k)``, every pass over the data counted)."""
        n = len(phrases)
        if n == 0:
            return np.zeros((0, len(self.checkpoints)), dtype=np.int64)
        u, virt, at, et = self._count_points(int(index.num_tokens))
        cum = np.zeros((n, len(u)), dtype=np.int64)  # F(u_j): occurrences at offsets < u_j
        if len(u) >= 2:
            counts = np.asarray(index.window_counts(phrases, u), dtype=np.int64)
            np.cumsum(counts, axis=1, out=cum[:, 1:])
        g = cum[:, at]
        if et:
            per_pass = cum[:, [int(np.searchsorted(u, min(et, int(index.num_tokens))))]]
            g = g + (virt // et)[None, :] * per_pass
        return np.diff(g, axis=1)

    def describe(self) -> str:
        ck = self.checkpoints
        shown = ", ".join(str(c) for c in ck[:6]) + (f", …, {ck[-1]}" if len(ck) > 6 else "")
        epoch = "" if self.epoch_items is None else f", one pass = {self.epoch_items:,} items"
        if self.total_items is not None:  # stored only when the last step is partial
            epoch += f", {self.total_items:,} items in all (the last step partial)"
        return (
            f"{self.name}: {self.item_length} tokens/item × {self.items_per_step} items/step = "
            f"{self.tokens_per_step:,} tokens/step, {self.num_steps:,} steps, "
            f"{len(ck)} checkpoints ({shown}){epoch}"
        )


def resolve_schedule(spec: Schedule | str | dict[str, Any] | None) -> Schedule | None:
    """A Schedule from a Schedule, a preset name, or a :meth:`Schedule.to_dict` dict."""
    if spec is None or isinstance(spec, Schedule):
        return spec
    if isinstance(spec, dict):
        return Schedule.from_dict(spec)
    return Schedule.preset(spec)


__all__ = [
    "PRESET_NAMES",
    "Schedule",
    "every_checkpoints",
    "log_checkpoints",
    "parse_checkpoints",
    "resolve_schedule",
]

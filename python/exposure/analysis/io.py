"""Read a splits table and an evaluation output directory (layout in docs/CONTRACTS.md).

This is the analysis' own small reader of the on-disk layout, so the analysis does not depend on the
evaluator's Python code:

```
run.json, pairs.parquet, scores/step{S}.parquet, states/step{S}.npy, attention/step{S}.npy
```

Pairs are in the row order of the evaluation's ``pairs.parquet`` (the order of the arrays); the
phenomenon and the first exposure step come from the splits table (joined on ``pair_uid``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

_STEP_FILE = re.compile(r"^step(\d+)\.(parquet|npy)$")

SPLITS_REQUIRED = ("pair_uid", "phenomenon", "first_step_good")


def _step_files(folder: Path, suffix: str) -> dict[int, Path]:
    """Map step -> file for ``folder/step{S}.{suffix}``; empty when the folder is missing."""
    found: dict[int, Path] = {}
    if not folder.is_dir():
        return found
    for path in folder.iterdir():
        match = _STEP_FILE.match(path.name)
        if match and match.group(2) == suffix:
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def _index_of(reference: np.ndarray, query: np.ndarray, what: str) -> np.ndarray:
    """Row of each ``query`` uid in ``reference`` (all must be present; uids unique)."""
    order = np.argsort(reference, kind="stable")
    sorted_ref = reference[order]
    pos = np.searchsorted(sorted_ref, query)
    pos_clipped = np.minimum(pos, len(sorted_ref) - 1)
    found = (pos < len(sorted_ref)) & (sorted_ref[pos_clipped] == query) if len(sorted_ref) else np.zeros(len(query), bool)
    if not found.all():
        missing = query[~found]
        raise ValueError(f"{what}: {len(missing)} pair_uid(s) not found, e.g. {missing[:3].tolist()}")
    return order[pos_clipped]


@dataclass
class EvalData:
    """Everything the analyses need, aligned to the evaluation's pair order.

    ``correct[i, k]`` is whether pair ``i`` was scored correct at ``steps[k]``. ``eligible`` marks pairs
    that have a critical phrase (their hidden states and attention are defined); pairs without one are
    left out of every analysis and counted in ``notes``.
    """

    eval_dir: Path
    run: dict
    pair_uids: np.ndarray
    phenomenon: np.ndarray
    first_step: np.ndarray
    eligible: np.ndarray
    has_context: np.ndarray
    steps: np.ndarray
    correct: np.ndarray
    state_files: dict[int, Path]
    attention_files: dict[int, Path]
    notes: list[str] = field(default_factory=list)

    @property
    def n_pairs(self) -> int:
        return len(self.pair_uids)

    @property
    def phenomena(self) -> list[str]:
        return sorted(set(self.phenomenon[self.eligible].tolist()))

    @property
    def model(self) -> str:
        return str(self.run.get("model", "unknown model"))

    def states(self, step: int) -> np.ndarray:
        """Memory-mapped hidden states ``[n_pairs, 2, n_layers + 1, d_model]`` at ``step``."""
        return _load_array(self.state_files, step, "states", 4, self.n_pairs)

    def attention(self, step: int) -> np.ndarray:
        """Memory-mapped attention ``[n_pairs, 2, n_layers, n_heads]`` at ``step``."""
        return _load_array(self.attention_files, step, "attention", 4, self.n_pairs)


def _load_array(files: dict[int, Path], step: int, kind: str, ndim: int, n_pairs: int) -> np.ndarray:
    if step not in files:
        raise ValueError(f"no {kind} for step {step} (have: {sorted(files) or 'none'})")
    path = files[step]
    redo = f"delete it and re-run `exposure eval` with the same --out: it recomputes checkpoint {step}"
    try:
        arr = np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as e:  # truncated, not .npy, unreadable
        raise ValueError(f"{path}: not a readable .npy array ({e}); {redo}") from None
    if arr.ndim != ndim or arr.shape[0] != n_pairs or arr.shape[1] != 2:
        raise ValueError(f"{path}: shape {arr.shape}, expected [{n_pairs}, 2, ...] with {ndim} dimensions; {redo}")
    return arr


def _check_arrays(
    files: dict[int, Path], kind: str, used_by: str, n_pairs: int, steps: np.ndarray, notes: list[str]
) -> None:
    """Open every ``kind`` array once (a truncated or foreign file fails here, naming itself, not halfway through
    an analysis), require one shape across checkpoints, and note the checkpoints that have none."""
    shapes = {step: _load_array(files, step, kind, 4, n_pairs).shape for step in files}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"step {s}: {list(shape)}" for s, shape in shapes.items())
        raise ValueError(f"{kind} arrays differ in shape between checkpoints ({listed}): one model per evaluation")
    missing = [int(s) for s in steps if int(s) not in files]
    if files and missing:
        notes.append(
            f"{len(missing)} scored checkpoint(s) have no {kind} file ({_steps_text(missing)}); the {used_by} use "
            f"the other {len(files)}. Re-running `exposure eval` with the same --out recomputes them."
        )


def _steps_text(steps: list[int], shown: int = 8) -> str:
    text = ", ".join(f"step {s}" for s in steps[:shown])
    return text + (f" and {len(steps) - shown} more" if len(steps) > shown else "")


def read_splits(path: str | Path) -> dict[str, np.ndarray]:
    """The columns of the splits table the analysis uses, as numpy arrays."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"splits table not found: {path}")
    schema = pq.read_schema(path)
    missing = [c for c in SPLITS_REQUIRED if c not in schema.names]
    if missing:
        raise ValueError(f"{path}: splits table lacks column(s) {missing} (see docs/CONTRACTS.md)")
    optional = [c for c in ("good_critical_token", "good_context_token") if c in schema.names]
    table = pq.read_table(path, columns=list(SPLITS_REQUIRED) + optional)
    out = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
    out["pair_uid"] = out["pair_uid"].astype(str)
    out["phenomenon"] = out["phenomenon"].astype(str)
    out["first_step_good"] = out["first_step_good"].astype(np.int64)
    if len(np.unique(out["pair_uid"])) != len(out["pair_uid"]):
        raise ValueError(f"{path}: pair_uid is not unique")
    return out


def _read_correct(path: Path, pair_uids: np.ndarray) -> np.ndarray:
    table = pq.read_table(path, columns=["pair_uid", "correct"])
    uids = table.column("pair_uid").to_numpy(zero_copy_only=False).astype(str)
    if table.column("correct").null_count:
        raise ValueError(f"{path}: 'correct' has missing values")
    correct = table.column("correct").to_numpy(zero_copy_only=False).astype(bool)
    if len(uids) == len(pair_uids) and np.array_equal(uids, pair_uids):
        return correct
    rows = _index_of(uids, pair_uids, f"{path} (scores for the pairs of pairs.parquet)")
    return correct[rows]


def load_eval(
    splits_path: str | Path, eval_dir: str | Path, *, progress: bool = True
) -> EvalData:
    """Read the splits table and the evaluation directory, joined on ``pair_uid``.

    Only the checkpoints that run.json lists as finished are read (when it lists them). Every hidden-state and
    attention array is opened and its shape checked here. Raises ``FileNotFoundError``/``ValueError`` with a clear
    message naming the file on a missing or inconsistent input; checkpoints left out are said in ``notes``.
    """
    eval_dir = Path(eval_dir)
    if not eval_dir.is_dir():
        raise FileNotFoundError(f"evaluation directory not found: {eval_dir}")
    run_path = eval_dir / "run.json"
    run = json.loads(run_path.read_text()) if run_path.is_file() else {}
    pairs_path = eval_dir / "pairs.parquet"
    if not pairs_path.is_file():
        raise FileNotFoundError(f"{pairs_path} not found: is {eval_dir} an `exposure eval` output?")
    pairs = pq.read_table(pairs_path)
    if "pair_uid" not in pairs.column_names:
        raise ValueError(f"{pairs_path}: no pair_uid column")
    pair_uids = pairs.column("pair_uid").to_numpy(zero_copy_only=False).astype(str)
    if len(pair_uids) == 0:
        raise ValueError(f"{pairs_path}: no pairs")

    splits = read_splits(splits_path)
    rows = _index_of(splits["pair_uid"], pair_uids, f"splits table {splits_path} (the evaluated pairs)")
    phenomenon = splits["phenomenon"][rows]
    first_step = splits["first_step_good"][rows]
    notes: list[str] = []

    if "first_step_good" in pairs.column_names:
        eval_first = pairs.column("first_step_good").to_numpy(zero_copy_only=False)
        differ = int(np.sum(eval_first.astype(np.int64) != first_step))
        if differ:
            notes.append(
                f"{differ} pair(s) have a different first_step_good in the evaluation's pairs.parquet than "
                "in the splits table; the splits table's value is used."
            )

    eligible = np.ones(len(pair_uids), dtype=bool)
    if "good_critical_token" in splits:
        eligible = splits["good_critical_token"][rows].astype(np.int64) >= 0
        n_out = int((~eligible).sum())
        if n_out:
            notes.append(
                f"{n_out} pair(s) have no critical phrase (good_critical_token = -1) and are left out of "
                "every analysis (they are neither exposed nor a never-exposed control)."
            )
    has_context = eligible.copy()
    if "good_context_token" in splits:
        has_context &= splits["good_context_token"][rows].astype(np.int64) >= 0
    if not eligible.any():
        raise ValueError("no evaluated pair has a critical phrase: nothing to analyse")

    score_files = _step_files(eval_dir / "scores", "parquet")
    if "finished_checkpoints" in run:  # `exposure eval` marks a checkpoint finished after its three files
        finished = {int(s) for s in run["finished_checkpoints"]}
        unfinished = [s for s in score_files if s not in finished]
        lost = sorted(s for s in finished if s not in score_files)
        if unfinished:
            notes.append(
                f"Scores of {_steps_text(unfinished)} are not marked finished in run.json (an interrupted "
                "`exposure eval`): left out. Re-running it with the same --out finishes them."
            )
        if lost:
            notes.append(
                f"{_steps_text(lost).capitalize()}: marked finished in run.json but without a scores file, left "
                "out. Re-running `exposure eval` with the same --out recomputes them."
            )
        score_files = {s: p for s, p in score_files.items() if s in finished}
    if not score_files:
        raise ValueError(f"{eval_dir / 'scores'}: no scores/step{{S}}.parquet files of finished checkpoints")
    steps = np.array(sorted(score_files), dtype=np.int64)
    correct = np.zeros((len(pair_uids), len(steps)), dtype=bool)
    for k, step in enumerate(tqdm(steps, desc="read scores", unit="ckpt", disable=not progress)):
        correct[:, k] = _read_correct(score_files[int(step)], pair_uids)

    state_files = {s: p for s, p in _step_files(eval_dir / "states", "npy").items() if s in score_files}
    attention_files = {s: p for s, p in _step_files(eval_dir / "attention", "npy").items() if s in score_files}
    _check_arrays(state_files, "states", "concept-vector analyses", len(pair_uids), steps, notes)
    _check_arrays(attention_files, "attention", "attention-head analyses", len(pair_uids), steps, notes)
    return EvalData(
        eval_dir=eval_dir,
        run=run,
        pair_uids=pair_uids,
        phenomenon=phenomenon,
        first_step=first_step,
        eligible=eligible,
        has_context=has_context,
        steps=steps,
        correct=correct,
        state_files=state_files,
        attention_files=attention_files,
        notes=notes,
    )


class RowSubset:
    """A read-only view of the rows ``rows`` of a (memory-mapped) array; reads only what is indexed."""

    def __init__(self, array: np.ndarray, rows: np.ndarray) -> None:
        self.array = array
        self.rows = np.asarray(rows, dtype=np.int64)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.array.shape[1:])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: slice | np.ndarray | Sequence[int]) -> np.ndarray:
        return np.asarray(self.array[self.rows[key]])

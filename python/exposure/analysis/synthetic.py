"""Write a synthetic splits table + evaluation directory (the on-disk layout of docs/CONTRACTS.md) with
planted answers, for tests and for trying ``exposure analyze`` without a model.

What is planted (``SyntheticSpec``):

* correctness: a pair is correct at checkpoint S when it is proxy-train at S and S >= ``train_transition``,
  or it is not proxy-train at S and S >= ``validation_transition`` (never-exposed pairs use
  ``never_transition``; None = never learned). Otherwise exactly half of the pairs are correct
  (alternating by pair and checkpoint), i.e. chance. So proxy-train reaches any threshold at
  ``train_transition``, proxy-validation at ``validation_transition``.
* hidden states at layer ``concept_layer``: from ``validation_transition`` on, good − bad is one direction
  (times a positive magnitude), and a probe separates good from bad; before it, good − bad is spread over
  ``spread_dims`` random directions with random sign (no linear signal). Other layers: no signal.
* attention critical → context: small noise everywhere except ``heads_before`` (checkpoints before
  ``validation_transition``) or ``heads_after`` (from it on), which carry ``head_weight``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .generalization import group_membership


@dataclass
class SyntheticSpec:
    phenomena: tuple[str, ...] = ("anaphor_agreement", "island_effects", "npi_licensing")
    pairs_per_phenomenon: int = 60
    steps: tuple[int, ...] = (0, 16, 64, 128, 256, 512, 1000, 2000, 3000, 4000, 6000, 8000)
    never_fraction: float = 0.2
    train_transition: int = 512
    validation_transition: int = 2000
    never_transition: int | None = None
    n_layers: int = 4
    d_model: int = 24
    n_heads: int = 6
    concept_layer: int = 3
    spread_dims: int = 12
    heads_before: tuple[tuple[int, int], ...] = ((1, 2), (3, 4))
    heads_after: tuple[tuple[int, int], ...] = ((1, 2), (2, 0))
    head_weight: float = 0.6
    write_states: bool = True
    write_attention: bool = True
    no_phrase_pairs: int = 0
    seed: int = 0
    first_steps: np.ndarray | None = field(default=None, repr=False)


def planted_correct(spec: SyntheticSpec, first_step: np.ndarray) -> np.ndarray:
    steps = np.asarray(spec.steps, dtype=np.int64)
    train = group_membership(first_step, steps)["train"]
    never = (first_step < 0)[:, None]
    s = steps[None, :]
    learned_other = s >= spec.validation_transition
    learned_never = s >= spec.never_transition if spec.never_transition is not None else np.zeros_like(s, bool)
    learned = np.where(train, s >= spec.train_transition, np.where(never, learned_never, learned_other))
    i = np.arange(len(first_step))[:, None]
    k = np.arange(len(steps))[None, :]
    chance = (i + k) % 2 == 0
    return learned | chance


def _first_steps(spec: SyntheticSpec, n: int, rng: np.random.Generator) -> np.ndarray:
    if spec.first_steps is not None:
        f = np.asarray(spec.first_steps, dtype=np.int64)
        if len(f) != n:
            raise ValueError(f"first_steps has {len(f)} entries for {n} pairs")
        return f
    f = rng.choice(np.asarray(spec.steps, dtype=np.int64), size=n)
    f = f + rng.integers(0, 3, size=n)  # not always exactly on a checkpoint
    never = rng.random(n) < spec.never_fraction
    return np.where(never, -1, f).astype(np.int64)


def write_synthetic(root: str | Path, spec: SyntheticSpec | None = None) -> tuple[Path, Path]:
    """Write ``root/splits.parquet`` and ``root/eval/``; returns (splits path, eval dir)."""
    spec = spec or SyntheticSpec()
    rng = np.random.default_rng(spec.seed)
    root = Path(root)
    eval_dir = root / "eval"
    for sub in ("scores", "states", "attention"):
        (eval_dir / sub).mkdir(parents=True, exist_ok=True)
    n_real = spec.pairs_per_phenomenon * len(spec.phenomena)
    n = n_real + spec.no_phrase_pairs
    phen = np.array([p for p in spec.phenomena for _ in range(spec.pairs_per_phenomenon)]
                    + [spec.phenomena[0]] * spec.no_phrase_pairs)
    uid = np.array([f"{p}/{i}" for i, p in enumerate(phen)])
    first = np.concatenate([_first_steps(spec, n_real, rng), np.full(spec.no_phrase_pairs, -1, np.int64)])
    has_phrase = np.arange(n) < n_real
    steps = np.asarray(spec.steps, dtype=np.int64)
    crit = np.where(has_phrase, 3, -1).astype(np.int32)
    ctx = np.where(has_phrase, 1, -1).astype(np.int32)
    members = group_membership(first, steps)
    split = [["train" if members["train"][i, k] else "validation" for k in range(len(steps))] for i in range(n)]
    splits = pa.table(
        {
            "pair_uid": uid,
            "uid": [u.split("/")[0] for u in uid],
            "pair_id": np.arange(n, dtype=np.int64),
            "phenomenon": phen,
            "sentence_good": [f"good sentence {i}" for i in range(n)],
            "sentence_bad": [f"bad sentence {i}" for i in range(n)],
            "rule": ["synthetic"] * n,
            "phrase_good": ["good phrase"] * n,
            "phrase_bad": ["bad phrase"] * n,
            "good_critical_start": crit,
            "good_critical_token": crit,
            "good_context_token": ctx,
            "bad_critical_start": crit,
            "bad_critical_token": crit,
            "bad_context_token": ctx,
            "count_good": np.where(first >= 0, 1, 0).astype(np.int64),
            "first_step_good": first,
            "count_bad": np.zeros(n, np.int64),
            "first_step_bad": np.full(n, -1, np.int64),
            "exposures_good": [[0] * len(steps) for _ in range(n)],
            "split": split,
        }
    )
    splits = splits.replace_schema_metadata(
        {"exposure.checkpoints": json.dumps(steps.tolist()), "exposure.tokenizer_sha256": "0" * 64}
    )
    splits_path = root / "splits.parquet"
    pq.write_table(splits, splits_path)
    pq.write_table(splits, eval_dir / "pairs.parquet")
    sha = hashlib.sha256(splits_path.read_bytes()).hexdigest()
    (eval_dir / "run.json").write_text(
        json.dumps(
            {
                "model": "synthetic",
                "checkpoints": steps.tolist(),
                "dtype": "float16",
                "device": "cpu",
                "n_layers": spec.n_layers,
                "n_heads": spec.n_heads,
                "d_model": spec.d_model,
                "pairs_file": str(splits_path),
                "pairs_sha256": sha,
                "scoring": "lm-eval-harness",
                "finished_checkpoints": steps.tolist(),
            }
        )
    )
    correct = planted_correct(spec, first)
    direction = rng.normal(size=spec.d_model)
    direction /= np.linalg.norm(direction)
    spread = np.linalg.qr(rng.normal(size=(spec.d_model, spec.spread_dims)))[0].T  # [k, d] orthonormal
    base = rng.normal(size=(n, spec.n_layers + 1, spec.d_model))
    magnitude = rng.uniform(4.0, 6.0, size=n)
    for k, step in enumerate(steps):
        logp_bad = rng.normal(-30, 2, size=n)
        margin = rng.uniform(0.1, 2.0, size=n)
        logp_good = np.where(correct[:, k], logp_bad + margin, logp_bad - margin)
        pq.write_table(
            pa.table(
                {
                    "pair_uid": uid,
                    "step": np.full(n, step, np.int64),
                    "logp_good": logp_good,
                    "logp_bad": logp_bad,
                    "correct": correct[:, k],
                    "crit_logp_good": logp_good / 5,
                    "crit_logp_bad": logp_bad / 5,
                    "crit_margin": (logp_good - logp_bad) / 5,
                }
            ),
            eval_dir / "scores" / f"step{step}.parquet",
        )
        after = step >= spec.validation_transition
        if spec.write_states:
            states = np.empty((n, 2, spec.n_layers + 1, spec.d_model), dtype=np.float32)
            states[:, 0] = base + 0.5 * rng.normal(size=base.shape)
            states[:, 1] = base + 0.5 * rng.normal(size=base.shape)
            layer = spec.concept_layer
            if after:
                diff = magnitude[:, None] * direction[None, :]
            else:
                coef = rng.normal(size=(n, spec.spread_dims))
                diff = 3.0 * coef @ spread
            states[:, 0, layer] = base[:, layer] + diff / 2
            states[:, 1, layer] = base[:, layer] - diff / 2
            np.save(eval_dir / "states" / f"step{step}.npy", states.astype(np.float16))
        if spec.write_attention:
            att = rng.uniform(0.0, 0.02, size=(n, 2, spec.n_layers, spec.n_heads)).astype(np.float32)
            for layer, head in spec.heads_after if after else spec.heads_before:
                att[:, :, layer, head] = spec.head_weight + rng.uniform(-0.05, 0.05, size=(n, 2))
            np.save(eval_dir / "attention" / f"step{step}.npy", att)
    return splits_path, eval_dir

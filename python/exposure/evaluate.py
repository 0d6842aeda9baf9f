"""Score BLiMP minimal pairs at every checkpoint of a pre-training run (``exposure eval``).

Per checkpoint and pair (both sentences): the summed log-probability (lm-evaluation-harness convention: input
``[BOS, else EOS] + encode(sentence)``, every sentence token scored, ``correct = logp_good > logp_bad``), the
log-probability of the critical token(s) given their prefix and its good - bad margin, the hidden states at the
critical token (every layer, float16) and the attention from the critical token to the context token (every
layer x head, computed from the model's queries and keys for that one row only). Output layout:
docs/CONTRACTS.md, 'Evaluation output'. Each checkpoint is loaded once, scored in length-bucketed batches and
written before the next one is loaded; a finished checkpoint is never recomputed.

    >>> results = evaluate_run("splits.parquet", "runs/pythia-160m", "out/eval")   # doctest: +SKIP
    >>> results.scores(1000).column("correct")                                      # doctest: +SKIP
"""

from __future__ import annotations

import functools
import gc
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from exposure.scoring.attention import UnsupportedModelError
from exposure.scoring.batching import plan_batches
from exposure.scoring.forward import score_checkpoint
from exposure.scoring.pairs import (
    EncodedPairs,
    EvalError,
    PairsSource,
    check_tokenizer,
    content_sha256,
    encode_pairs,
    file_sha256,
    read_pairs,
)
from exposure.devices import resolve_device
from exposure.scoring.runs import ModelShape, Run, dtype_name, model_shape, open_run, resolve_dtype
from exposure.scoring.store import EvalResults, OutputDir, load_results, scores_table

__all__ = [
    "DEFAULT_BATCH_TOKENS",
    "EvalError",
    "EvalResults",
    "UnsupportedModelError",
    "default_batch_tokens",
    "evaluate_run",
    "load_results",
]

DEFAULT_BATCH_TOKENS = {"cuda": 16384}
"""Padded tokens per forward pass (rows x longest sequence) by accelerator type, when not given (a CPU's depends on
the model: :func:`default_batch_tokens`). On a GPU, bigger batches keep the device busy (raise it for small models
on a large GPU)."""

CPU_BATCH_ACTIVATIONS = 393216
"""On a CPU, the default batch holds about this many activations (tokens x model width: 1.5 MiB of float32 per
hidden state), so that a layer's work stays in cache. Measured 2026-12-02 (``benchmarks/bench_eval.py``): for a
Pythia-160M shape (width 768) 256 / 512 / 1,024 / 2,048 / 4,096 tokens gave 30.2 / 30.9 / 26.9 / 24.7 / 19.3
pairs/s; for width 64, 1,024 / 4,096 / 6,144 / 16,384 tokens gave 1,363 / 1,435 / 1,445 / 1,362 pairs/s."""


def default_batch_tokens(device_type: str, d_model: int) -> int:
    """Tokens per forward pass when none is given: :data:`DEFAULT_BATCH_TOKENS` on a GPU; on a CPU
    :data:`CPU_BATCH_ACTIVATIONS` / ``d_model``, between 128 and 16,384 (512 for Pythia-160M, 6,144 for width 64)."""
    if device_type != "cpu":
        return DEFAULT_BATCH_TOKENS.get(device_type, DEFAULT_BATCH_TOKENS["cuda"])
    return min(max(CPU_BATCH_ACTIVATIONS // max(d_model, 1), 128), 16384)

SCORING_CONVENTION = {
    "name": "lm-evaluation-harness loglikelihood, BLiMP",
    "input": "[prefix token] + tokenizer.encode(sentence, add_special_tokens=False)",
    "prefix_token": "tokenizer BOS, else EOS",
    "scored_tokens": "every sentence token (not the prefix)",
    "reduction": "sum of natural-log probabilities, no length normalization",
    "correct": "logp_good > logp_bad (ties count as wrong)",
    "crit_logp": "sum of log p over tokens critical_start..critical_token given their prefix; NaN if none",
    "positions": "pairs-table token index i is model position i + 1",
    "states": "hidden_states (embeddings, then each layer; last = after the final norm) at the critical token",
    "attention": "softmax attention weight critical token -> context token, per layer and head, float32",
    "missing": "NaN where the sentence has no critical (or, for attention, no context) token",
}


def _resolve_checkpoints(run: Run, requested: Sequence[int] | None, pairs: PairsSource) -> list[int]:
    available = run.available_checkpoints()
    if requested is None:
        if available is not None:
            return list(available)
        if pairs.checkpoints:
            return sorted(set(pairs.checkpoints))
        raise EvalError(
            f"say which checkpoints of {run.source} to score (--checkpoints): hub revisions are not listed and the "
            "pairs table has no exposure.checkpoints metadata"
        )
    steps = sorted({int(s) for s in requested})
    if not steps:
        raise EvalError("no checkpoints requested")
    if any(s < 0 for s in steps):
        raise EvalError(f"checkpoint steps must be non-negative: {steps}")
    if available is not None:
        missing = [s for s in steps if s not in available]
        if missing:
            raise EvalError(f"checkpoint(s) {missing} not in {run.name} (available: {list(available)})")
    return steps


def check_trained_on_the_pairs_stream(run: Run, source: PairsSource) -> None:
    """A run made by ``exposure train-reference`` (its ``run.json``) must have been trained on the token stream the
    pairs' exposures were counted in, at the same tokens per step: otherwise their proxy splits say nothing about
    its training. Compared where both sides record it (the stream's identity, its token count, the schedule's
    tokens per step); other runs (a hub id, folders of another trainer) are not checked."""
    from exposure.training.loop import RUN_FORMAT

    path = None if run.root is None else run.root / "run.json"
    if path is None or not path.is_file():
        return
    try:
        trained = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(trained, dict) or trained.get("format") != RUN_FORMAT:
        return
    data, where = trained.get("data") or {}, source.path if source.path is not None else "the pairs table"
    index = source.metadata.get(b"exposure.index", b"").decode()
    stream = source.metadata.get(b"exposure.index_stream", b"").decode()
    if stream and data.get("stream") and stream != data["stream"]:
        raise EvalError(
            f"{run.name} was trained on another token stream ({data['stream']}, index {data.get('index_path')}) than "
            f"the one the exposures in {where} were counted in ({stream}, index {index}): the index was rebuilt "
            "(another seed, other sources?) or is another; make the splits from the run's index"
        )
    counted = source.metadata.get(b"exposure.index_tokens")
    if counted and data.get("num_tokens") is not None and int(counted) != int(data["num_tokens"]):
        raise EvalError(
            f"{run.name} was trained on an index of {int(data['num_tokens']):,} tokens ({data.get('index_path')}), "
            f"but the exposures in {where} were counted in one of {int(counted):,} ({index}): its proxy splits do "
            "not describe this run's training; make the splits from the run's index"
        )
    schedule, run_schedule = source.metadata.get(b"exposure.schedule"), trained.get("schedule")
    if schedule and isinstance(run_schedule, dict):
        per_step, run_per_step = json.loads(schedule).get("tokens_per_step"), run_schedule.get("tokens_per_step")
        if per_step is not None and run_per_step is not None and int(per_step) != int(run_per_step):
            raise EvalError(
                f"{run.name} trained on {int(run_per_step):,} tokens per step, but the steps in {where} are of "
                f"{int(per_step):,}: its first-exposure steps are not this run's; make the splits with the run's "
                "schedule"
            )


class _TokenizerGate:
    """Checks each checkpoint's tokenizer file once per distinct content against the pairs' tokenizer."""

    def __init__(self, expected: str | None, sentences: list[str], reference: Path | None) -> None:
        self.expected = expected
        self.sentences = sentences
        self.reference = reference
        self.verdicts: dict[str, str] = {}

    def check(self, tokenizer_file: Path) -> tuple[str, str]:
        sha = file_sha256(tokenizer_file)
        if sha not in self.verdicts:
            verdict = check_tokenizer(tokenizer_file, self.expected, self.sentences, self.reference)
            if verdict == "unchecked" and self.verdicts:
                raise EvalError(
                    f"{tokenizer_file} differs from the tokenizer of the run's first checkpoint, and the pairs carry "
                    "no tokenizer fingerprint (exposure.tokenizer_sha256) to tell which one they were built with"
                )
            self.verdicts[sha] = verdict
        return sha, self.verdicts[sha]


def _model_bytes(model: Any) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _release_memory(device: torch.device, model_bytes: int) -> None:
    """Frees a released checkpoint at once: reference cycles (if any) collected, the CUDA cache emptied. A small
    model on the CPU is left to Python's own collector (a full collection costs ~0.2 s)."""
    if device.type == "cuda" or model_bytes >= 1 << 30:
        gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def evaluate_run(
    pairs: str | Path | pa.Table,
    run: str | Path,
    out_dir: str | Path,
    *,
    checkpoints: Sequence[int] | None = None,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    batch_tokens: int | None = None,
    progress: bool = True,
    reference_tokenizer: str | Path | None = None,
    prefix_token_id: int | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> EvalResults:
    """Score ``pairs`` at every checkpoint of ``run`` into ``out_dir``; resumes a previous run into the same dir.

    ``pairs``: the ``exposure splits`` Parquet file (or its table). ``run``: a directory of ``step{S}/``
    checkpoint folders (transformers layout, tokenizer in each folder or in the run root) or a Hugging Face
    model id whose revision ``step{S}`` is checkpoint S (Pythia). ``checkpoints``: steps to score (default:
    every local folder; for a hub id, the pairs table's ``exposure.checkpoints``). ``device``: ``auto`` / ``cpu``
    / ``cuda[:i]``; ``dtype``: ``auto`` (bf16 on GPU, fp32 on CPU) / ``bf16`` / ``fp16`` / ``fp32``.
    ``batch_tokens``: padded tokens per forward pass (default: :func:`default_batch_tokens` for the device and model).
    ``reference_tokenizer``: the original tokenizer file of the pairs, used when the run's ``tokenizer.json``
    is a re-serialized copy (see :func:`exposure.scoring.pairs.check_tokenizer`). ``prefix_token_id``
    overrides the tokenizer's BOS/EOS.
    ``on_batch(step, i)`` is called after each batch. Returns :func:`load_results` of ``out_dir``.
    A ``train-reference`` run is checked against the stream the pairs were counted in
    (:func:`check_trained_on_the_pairs_stream`).
    """
    source = read_pairs(pairs)
    run_ = open_run(run)
    check_trained_on_the_pairs_stream(run_, source)
    steps = _resolve_checkpoints(run_, checkpoints, source)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    if batch_tokens is not None and batch_tokens < 1:
        raise EvalError(f"batch_tokens must be positive, got {batch_tokens}")
    good, bad = (source.table.column(c).to_pylist() for c in ("sentence_good", "sentence_bad"))
    sentences = [s for pair in zip(good, bad, strict=True) for s in pair]
    gate = _TokenizerGate(
        source.tokenizer_sha256, sentences, Path(reference_tokenizer) if reference_tokenizer is not None else None
    )
    first_tokenizer = run_.tokenizer_file(steps[0])
    tokenizer_sha, verdict = gate.check(first_tokenizer)
    tokenizer = Tokenizer.from_file(str(first_tokenizer))
    encoded: EncodedPairs = encode_pairs(source.table, tokenizer)
    prefix = int(prefix_token_id) if prefix_token_id is not None else run_.prefix_token_id(steps[0], tokenizer)
    shape: ModelShape = run_.shape(steps[0])
    top = max([prefix, *(int(t.max()) for t in encoded.tokens if len(t))])
    if top >= shape.vocab_size:
        raise EvalError(
            f"the pairs, tokenized with {first_tokenizer}, hold token id {top} but the model of {run_.name} has a "
            f"vocabulary of {shape.vocab_size}: that tokenizer is not the model's"
        )
    longest = int(encoded.lengths().max(initial=0)) + 1  # with the prefix token
    if shape.max_positions is not None and longest > shape.max_positions:
        raise EvalError(
            f"the longest sentence is {longest} tokens with the prefix token, but the model of {run_.name} takes at "
            f"most {shape.max_positions} positions"
        )
    if batch_tokens is None:
        batch_tokens = default_batch_tokens(dev.type, shape.d_model)
    info: dict[str, Any] = {
        "model": run_.name,
        "run_kind": run_.kind,
        "checkpoints": steps,
        "dtype": dtype_name(torch_dtype),
        "device": str(dev),
        **shape.to_dict(),
        "n_pairs": encoded.n_pairs,
        "pairs_file": str(source.path) if source.path is not None else None,
        "pairs_sha256": source.sha256,
        "pairs_content_sha256": content_sha256(source.table),
        "pairs_tokenizer_sha256": source.tokenizer_sha256,
        "tokenizer_sha256": tokenizer_sha,
        "tokenizer_check": verdict,
        "prefix_token_id": prefix,
        "batch_tokens": int(batch_tokens),
        "scoring": SCORING_CONVENTION,
        "arrays": {
            "states": "float16 [n_pairs, 2 (good, bad), n_layers + 1, d_model]",
            "attention": "float32 [n_pairs, 2 (good, bad), n_layers, n_heads]",
        },
        "software": {"torch": torch.__version__, "transformers": _transformers_version()},
    }
    batches = plan_batches(encoded.lengths() + 1, batch_tokens)
    state_shape = (encoded.n_pairs, 2, shape.n_layers + 1, shape.d_model)
    with OutputDir(out_dir) as out:
        out.start(info, source.path, source.table)
        todo = [s for s in steps if not out.is_finished(s)]
        outer = tqdm(total=len(steps), initial=len(steps) - len(todo), desc="checkpoints", unit="ckpt",
                     disable=not progress, dynamic_ncols=True)
        try:
            for step in todo:
                sha, step_verdict = gate.check(run_.tokenizer_file(step))
                started = time.perf_counter()
                model = run_.load_model(step, dev, torch_dtype)
                loaded = time.perf_counter()
                step_shape = model_shape(model.config)
                if step_shape != shape:
                    raise EvalError(f"checkpoint step{step} has shape {step_shape}, step{steps[0]} has {shape}")
                pending = out.new_states(step, state_shape)
                try:
                    result = score_checkpoint(
                        model, encoded, batches, prefix, shape.n_layers, shape.n_heads, pending.array, dev,
                        progress=progress, desc=f"step{step}",
                        on_batch=None if on_batch is None else functools.partial(on_batch, step),
                    )
                except torch.cuda.OutOfMemoryError as exc:
                    raise EvalError(
                        f"out of GPU memory scoring step{step} with batch_tokens={batch_tokens}: lower --batch-tokens"
                    ) from exc
                model_bytes = _model_bytes(model)
                del model
                _release_memory(dev, model_bytes)
                scored = time.perf_counter()
                overflow = result.states_overflow
                if overflow:
                    tqdm.write(f"step{step}: {overflow} sentence(s) have hidden states beyond the float16 range (inf)")
                out.commit(
                    step,
                    scores_table(encoded.pair_uid, step, result.logp, result.crit_logp),
                    result.attention,
                    pending,
                    {
                        "device": str(dev),
                        "load_seconds": round(loaded - started, 3),
                        "score_seconds": round(scored - loaded, 3),
                        "pairs_per_second": round(encoded.n_pairs / max(scored - loaded, 1e-9), 2),
                        "tokenizer_sha256": sha,
                        "tokenizer_check": step_verdict,
                        "states_float16_overflow_sentences": overflow,
                    },
                )
                outer.update(1)
        finally:
            outer.close()
    return load_results(out_dir)


def _transformers_version() -> str:
    import transformers

    return str(transformers.__version__)

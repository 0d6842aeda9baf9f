"""One checkpoint: token log-probabilities, hidden states and attention rows for every sentence of the pairs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from exposure.scoring.attention import AttentionRowRecorder, UnsupportedModelError
from exposure.scoring.batching import Batch, make_batch
from exposure.scoring.pairs import EncodedPairs

LOGIT_CHUNK_ELEMENTS = 1 << 26
"""Rows of the vocabulary projection are computed in chunks of at most this many logits (256 MiB in float32)."""


@dataclass(frozen=True)
class CheckpointScores:
    """float64 ``[n, 2]`` summed sentence log-probabilities and critical-token log-probabilities (NaN: none);
    float32 ``[n, 2, n_layers, n_heads]`` attention critical -> context (NaN: no critical or context token);
    ``states_overflow``: sentences whose hidden states exceed the float16 range (stored as inf)."""

    logp: np.ndarray
    crit_logp: np.ndarray
    attention: np.ndarray
    states_overflow: int


def token_logprobs(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log softmax(head(hidden))[targets]`` row by row, in float32, without materializing all logits at once."""
    out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    weight: torch.Tensor = getattr(head, "weight")  # noqa: B009 (typed access to a Module attribute)
    vocab = int(weight.shape[0])
    step = max(1, LOGIT_CHUNK_ELEMENTS // vocab)
    for start in range(0, hidden.shape[0], step):
        logp = torch.log_softmax(head(hidden[start : start + step]).float(), dim=1)
        out[start : start + step] = logp.gather(1, targets[start : start + step, None])[:, 0]
    return out


def _base_and_head(model: Any) -> tuple[torch.nn.Module, torch.nn.Module]:
    base = model.base_model
    head = model.get_output_embeddings()
    if base is model or head is None or not hasattr(head, "weight"):
        raise UnsupportedModelError(f"{type(model).__name__} has no separate base model and output projection")
    return base, head


@torch.inference_mode()
def check_head(model: Any, input_ids: torch.Tensor) -> None:
    """Refuse a model whose logits are more than ``head(base(x).last_hidden_state)`` (soft-capping, scaling...)."""
    base, head = _base_and_head(model)
    reference = model(input_ids=input_ids, use_cache=False).logits.float()
    ours = head(base(input_ids=input_ids, use_cache=False).last_hidden_state).float()
    scale = float(reference.abs().max().clamp(min=1.0))
    if reference.shape != ours.shape or float((reference - ours).abs().max()) > 1e-3 * scale:
        raise UnsupportedModelError(
            f"{type(model).__name__}'s logits are not its output projection applied to the last hidden state "
            "(logit soft-capping or scaling?): not supported"
        )


def _positions(encoded: EncodedPairs, index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    pair, side = index // 2, index % 2
    crit = encoded.critical_token[pair, side]
    ctx = encoded.context_token[pair, side]
    # model position = token index + 1; sequences without a critical/context token use position 0 (discarded)
    return pair, side, np.where(crit >= 0, crit + 1, 0), np.where(ctx >= 0, ctx + 1, 0)


@torch.inference_mode()
def _forward_batch(
    model: Any,
    batch: Batch,
    query_pos: np.ndarray,
    key_pos: np.ndarray,
    predicts: np.ndarray,
    n_layers: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward pass. ``predicts``: bool ``[b, T-1]``, the positions whose next-token log-prob is wanted.

    Returns (log-probs float32 of the ``predicts`` positions in row-major order, hidden states at ``query_pos``
    float16 ``[b, n_layers + 1, d]``, attention rows ``query_pos -> key_pos`` float32 ``[b, n_layers, H]``).
    """
    base, head = _base_and_head(model)
    ids = torch.from_numpy(batch.input_ids).to(device)
    mask = torch.from_numpy(batch.attention_mask()).to(device)
    q = torch.from_numpy(query_pos).to(device)
    k = torch.from_numpy(key_pos).to(device)
    with AttentionRowRecorder(q, k) as recorder:
        out = base(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
    rows = recorder.rows(n_layers)
    hidden = out.hidden_states
    if hidden is None or len(hidden) != n_layers + 1:
        raise UnsupportedModelError(
            f"{type(model).__name__} returned {0 if hidden is None else len(hidden)} hidden states for "
            f"{n_layers} layers (expected layers + 1)"
        )
    r = torch.arange(ids.shape[0], device=device)
    states = torch.stack([h[r, q] for h in hidden], dim=1).to(torch.float16)
    wanted = torch.from_numpy(predicts).to(device)
    logp = token_logprobs(head, out.last_hidden_state[:, :-1][wanted], ids[:, 1:][wanted])
    return logp, states, rows


def score_checkpoint(
    model: Any,
    encoded: EncodedPairs,
    batches: list[np.ndarray],
    prefix_id: int,
    n_layers: int,
    n_heads: int,
    states_out: np.ndarray,
    device: torch.device,
    progress: bool = True,
    desc: str = "",
    on_batch: Callable[[int], None] | None = None,
) -> CheckpointScores:
    """Score every sentence of ``encoded`` with ``model`` (batches of sequence indices from :func:`plan_batches`).

    Every token's log-probability is kept (float64, flat). The bad sentence's first ``shared_prefix`` tokens
    have the same prefix and the same target as the good sentence's, so their log-probabilities are the good
    sentence's: the vocabulary projection is skipped there and the values copied. Hidden states at each
    sentence's critical token (every layer, float16) are written into ``states_out``
    (``[n, 2, n_layers + 1, d_model]``, e.g. a memory-mapped ``.npy``); NaN where there is no critical token.
    ``on_batch(i)`` is called after batch ``i`` (progress reporting, tests).
    """
    n = encoded.n_pairs
    first = make_batch(encoded.tokens, batches[0][:1], prefix_id, prefix_id)
    check_head(model, torch.from_numpy(first.input_ids).to(device))
    lengths = encoded.lengths()  # [2n] sentence tokens = scored positions
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    token_logp = np.full(int(offsets[-1]), np.nan)
    skip = np.zeros(2 * n, dtype=np.int64)
    skip[1::2] = encoded.shared_prefix  # bad sentences: the shared tokens come from the good sentence
    attention = np.full((n, 2, n_layers, n_heads), np.nan, dtype=np.float32)
    overflow = 0
    bar = tqdm(total=2 * n, desc=desc, unit="sent", disable=not progress, leave=False, dynamic_ncols=True)
    try:
        for i, index in enumerate(batches):
            batch = make_batch(encoded.tokens, index, prefix_id, prefix_id)
            pair, side, query_pos, key_pos = _positions(encoded, index)
            position = np.arange(batch.input_ids.shape[1] - 1)[None, :]  # predicts sentence token `position`
            predicts = (position < lengths[index][:, None]) & (position >= skip[index][:, None])
            flat, states, rows = _forward_batch(model, batch, query_pos, key_pos, predicts, n_layers, device)
            token_logp[(offsets[index][:, None] + position)[predicts]] = flat.double().cpu().numpy()
            has_crit = encoded.critical_token[pair, side] >= 0
            has_row = has_crit & (encoded.context_token[pair, side] >= 0)
            attention[pair[has_row], side[has_row]] = rows.cpu().numpy()[has_row]
            states_np = states.cpu().numpy()[has_crit]
            overflow += int(np.isinf(states_np).any(axis=(1, 2)).sum())
            states_out[pair[has_crit], side[has_crit]] = states_np
            bar.update(len(index))
            if on_batch is not None:
                on_batch(i)
    finally:
        bar.close()
    states_out[encoded.critical_token < 0] = np.float16(np.nan)
    shared = encoded.shared_prefix
    within = np.arange(int(shared.sum())) - np.repeat(np.cumsum(shared) - shared, shared)
    pairs_rep = np.repeat(np.arange(n), shared)
    token_logp[offsets[2 * pairs_rep + 1] + within] = token_logp[offsets[2 * pairs_rep] + within]
    if np.isnan(token_logp).any():
        raise RuntimeError("internal error: some token log-probabilities were not computed")
    logp = np.add.reduceat(token_logp, offsets[:-1]).reshape(n, 2)
    # sum over tokens critical_start..critical_token: reduceat over [a, b) spans (even slots; odd slots are gaps)
    start, crit = encoded.critical_start, encoded.critical_token
    base = offsets[:-1].reshape(n, 2)
    spans = np.stack([base + np.maximum(start, 0), base + np.maximum(crit, 0) + 1], axis=-1).ravel()
    crit_sum = np.add.reduceat(np.append(token_logp, 0.0), spans)[0::2].reshape(n, 2)
    crit_logp = np.where(crit >= 0, crit_sum, np.nan)
    return CheckpointScores(logp, crit_logp, attention, overflow)

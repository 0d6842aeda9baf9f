"""One checkpoint: token log-probabilities, hidden states and attention rows for every sentence of the pairs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from exposure import _core
from exposure.scoring.attention import AttentionRowRecorder, UnsupportedModelError
from exposure.scoring.batching import Batch, make_batch
from exposure.scoring.pairs import EncodedPairs

LOGIT_TILES = {"cuda": (1 << 26, None), "cpu": (1 << 20, 1 << 10)}
"""Logits computed at once, by device type: (elements, vocabulary columns; None: the whole vocabulary). On a GPU
big blocks keep it busy (256 MiB in float32). On a CPU, tiles of 1,024 rows x 1,024 vocabulary columns (4 MiB) are
about twice as fast as whole-vocabulary blocks of the same or larger size (12,829 rows x 50k vocabulary x 64: 1.0-1.4 s
instead of 2.3-2.9 s, 2026-12-01; with the first tile's maximum as the shift instead of a running maximum, 0.46 s
instead of 0.52 s on 2026-12-02's machine; 1,024 x 512 and 2,048 x 256 tiles were no faster end to end)."""


@dataclass(frozen=True)
class CheckpointScores:
    """float64 ``[n, 2]`` summed sentence log-probabilities and critical-token log-probabilities (NaN: none);
    float32 ``[n, 2, n_layers, n_heads]`` attention critical -> context (NaN: no critical or context token);
    ``states_overflow``: sentences whose hidden states exceed the float16 range (stored as inf)."""

    logp: np.ndarray
    crit_logp: np.ndarray
    attention: np.ndarray
    states_overflow: int


CPU_KERNEL = True
"""Use the C++ kernel (:func:`cpu_output_head`) for float32 heads on the CPU where the processor has it; ``False``
forces the torch path (tests compare both)."""


def cpu_output_head(head: torch.nn.Module) -> _core.OutputHead | None:
    """The output projection packed for the C++ logsumexp kernel (logits computed and exponentiated tile by tile in
    registers, never written out: about 1.8x faster than the torch path for a 64-wide, 50k-vocabulary head with
    AVX2, 1.5x more with AVX-512, whichever the CPU has), or ``None`` where it does not apply: weights not float32 on
    the CPU, a processor without AVX2 and FMA, or :data:`CPU_KERNEL` off."""
    weight: torch.Tensor = getattr(head, "weight")  # noqa: B009
    bias: torch.Tensor | None = getattr(head, "bias", None)
    on_cpu_fp32 = [t.device.type == "cpu" and t.dtype == torch.float32 for t in (weight, bias) if t is not None]
    if not (CPU_KERNEL and all(on_cpu_fp32) and _core.OutputHead.supported()):
        return None
    return _core.OutputHead(
        weight.detach().contiguous().numpy(), None if bias is None else bias.detach().contiguous().numpy()
    )


def logsumexp_rows(
    head: torch.nn.Module, hidden: torch.Tensor, kernel: _core.OutputHead | None = None
) -> torch.Tensor:
    """``logsumexp(head(hidden))`` row by row, float32, tile by tile (:data:`LOGIT_TILES`), so no row's full logits
    are ever held at once. With ``kernel`` (:func:`cpu_output_head` of ``head``) and float32 CPU rows, the C++
    kernel computes it.

    Each row's exponentials are taken relative to the maximum of its first vocabulary tile, which saves a pass per
    tile over a running maximum. A row whose sum overflows float32 (a later logit more than ~88 above that maximum)
    is computed again with a running maximum."""
    if kernel is not None and hidden.device.type == "cpu" and hidden.dtype == torch.float32:
        rows = hidden.detach().contiguous().numpy()
        return torch.from_numpy(kernel.logsumexp(rows, torch.get_num_threads()))
    weight: torch.Tensor = getattr(head, "weight")  # noqa: B009 (typed access to a Module attribute)
    bias: torch.Tensor | None = getattr(head, "bias", None)
    lse = _tiled_logsumexp(weight, bias, hidden, running=False)
    overflow = ~torch.isfinite(lse)
    if bool(overflow.any()):
        lse[overflow] = _tiled_logsumexp(weight, bias, hidden[overflow], running=True)
    return lse


def _tiled_logsumexp(
    weight: torch.Tensor, bias: torch.Tensor | None, hidden: torch.Tensor, running: bool
) -> torch.Tensor:
    """``shift + log(sum(exp(logit - shift)))`` over vocabulary tiles; ``shift``: each row's maximum in the first
    tile, or (``running``) its maximum so far, the sum being rescaled whenever it grows."""
    vocab = int(weight.shape[0])
    elements, columns = LOGIT_TILES.get(hidden.device.type, LOGIT_TILES["cuda"])
    columns = vocab if columns is None else min(columns, vocab)
    step = max(1, elements // columns)
    lse = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], step):
        h = hidden[start : start + step]
        peak = torch.full((h.shape[0],), -torch.inf, dtype=torch.float32, device=h.device)
        total = torch.zeros_like(peak)
        for v in range(0, vocab, columns):
            b = None if bias is None else bias[v : v + columns]
            logits = torch.nn.functional.linear(h, weight[v : v + columns], b).float()
            if running or v == 0:
                new_peak = torch.maximum(peak, logits.amax(dim=1))
                total.mul_((peak - new_peak).exp_())
                peak = new_peak
            # in place: a second tile-sized tensor (as log_softmax writes) costs more than the exponentials
            total.add_(logits.sub_(peak[:, None]).exp_().sum(dim=1))
        lse[start : start + step] = peak + total.log()
    return lse


def target_logits(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``head(hidden)[row, targets[row]]`` in float32, from the targets' rows of the output projection only."""
    weight: torch.Tensor = getattr(head, "weight")  # noqa: B009
    logits = (hidden.float() * weight[targets].float()).sum(dim=1)
    bias = getattr(head, "bias", None)
    return logits if bias is None else logits + bias[targets].float()


PENDING_BYTES = 64 << 20
"""Hidden rows of new prefixes held back (bytes) before their normalizers are computed together: one large call
instead of one per batch (on a CPU, a call right after the forward pass shares the cores with torch's still-spinning
worker threads)."""


class PrefixNormalizers:
    """Token log-probabilities by trie node (:attr:`EncodedPairs.prefix_id` / ``next_id``), each computed once.

    A token's log-probability is its logit minus its prefix's normalizer (``logsumexp`` of the next-token logits).
    The full vocabulary projection (the dominant cost for small models) runs once per distinct prefix: the good
    and bad sentence share theirs up to their first difference, and many sentences share their first words. Each
    batch's tokens never seen before get their target logit at once (one row of the projection,
    :func:`target_logits`); the hidden rows of prefixes never seen before are held until :data:`PENDING_BYTES` of
    them (or the end) and normalized together (:func:`logsumexp_rows`). Values are kept by ``next_id`` (same
    prefix, same token), so e.g. the good and bad sentence's shared prefix contributes identical values to both,
    in any dtype."""

    def __init__(
        self,
        head: torch.nn.Module,
        n_prefixes: int,
        device: torch.device,
        on_flush: Callable[[int], None] | None = None,
    ) -> None:
        """``on_flush(rows)`` is called before each batch of held rows is normalized (progress reporting)."""
        self.head = head
        self.on_flush = on_flush
        self.kernel = cpu_output_head(head)
        self.normalized = np.zeros(n_prefixes, dtype=bool)  # computed or pending
        self.lse = torch.zeros(n_prefixes, dtype=torch.float32, device=device)
        self.scored = np.zeros(n_prefixes, dtype=bool)
        self.logit = torch.zeros(n_prefixes, dtype=torch.float32, device=device)
        self.prefix_of = np.zeros(n_prefixes, dtype=np.int64)
        self._pending: list[tuple[torch.Tensor, np.ndarray]] = []
        self._pending_bytes = 0

    def add(self, hidden: torch.Tensor, targets: torch.Tensor, prefix: np.ndarray, after: np.ndarray) -> None:
        """Tokens ``targets`` after ``hidden`` (rows), whose prefixes have ids ``prefix`` and which lead to ids
        ``after``."""
        device = hidden.device
        tokens, first = np.unique(after, return_index=True)
        new = ~self.scored[tokens]
        tokens, rows = tokens[new], first[new]  # one row per token never scored
        rows_t = torch.from_numpy(rows).to(device)
        self.logit[torch.from_numpy(tokens).to(device)] = target_logits(self.head, hidden[rows_t], targets[rows_t])
        self.prefix_of[tokens] = prefix[rows]
        self.scored[tokens] = True
        prefixes, first_p = np.unique(prefix[rows], return_index=True)
        fresh = ~self.normalized[prefixes]
        if fresh.any():
            held = hidden[torch.from_numpy(rows[first_p[fresh]]).to(device)]  # a copy: the batch is not kept
            self._pending.append((held, prefixes[fresh]))
            self._pending_bytes += held.numel() * held.element_size()
            self.normalized[prefixes[fresh]] = True
            if self._pending_bytes >= PENDING_BYTES:
                self._flush()

    @torch.inference_mode()
    def logprobs(self, after: np.ndarray) -> torch.Tensor:
        """float32 log-probabilities of the tokens that lead to ids ``after`` (each added before)."""
        if not self.scored[after].all():
            raise RuntimeError("internal error: some token log-probabilities were not computed")
        self._flush()
        index = torch.from_numpy(np.asarray(after)).to(self.lse.device)
        return self.logit[index] - self.lse[torch.from_numpy(self.prefix_of[after]).to(self.lse.device)]

    def _flush(self) -> None:
        if not self._pending:
            return
        rows = torch.cat([held for held, _ in self._pending])
        ids = np.concatenate([p for _, p in self._pending])
        if self.on_flush is not None:
            self.on_flush(int(rows.shape[0]))
        self.lse[torch.from_numpy(ids).to(self.lse.device)] = logsumexp_rows(self.head, rows, self.kernel)
        self._pending, self._pending_bytes = [], 0


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
    hidden = base(input_ids=input_ids, use_cache=False).last_hidden_state
    ours = head(hidden).float()
    scale = float(reference.abs().max().clamp(min=1.0))
    if reference.shape != ours.shape or float((reference - ours).abs().max()) > 1e-3 * scale:
        raise UnsupportedModelError(
            f"{type(model).__name__}'s logits are not its output projection applied to the last hidden state "
            "(logit soft-capping or scaling?): not supported"
        )
    flat = hidden.reshape(-1, hidden.shape[-1])
    targets = input_ids.reshape(-1)
    rows = ours.reshape(-1, ours.shape[-1]).gather(1, targets[:, None])[:, 0]
    if float((target_logits(head, flat, targets) - rows).abs().max()) > 1e-3 * scale:
        raise UnsupportedModelError(
            f"{type(model).__name__}'s output projection is not weight @ hidden (+ bias): not supported"
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
    prefix_ids: np.ndarray,
    next_ids: np.ndarray,
    normalizers: PrefixNormalizers,
    n_layers: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass. ``predicts``: bool ``[b, T-1]``, the positions whose next-token log-prob is wanted (given to
    ``normalizers``); ``prefix_ids`` / ``next_ids``: their trie ids before and after the token, in row-major order.

    Returns (hidden states at ``query_pos`` float16 ``[b, n_layers + 1, d]``, attention rows ``query_pos -> key_pos``
    float32 ``[b, n_layers, H]``).
    """
    base, _ = _base_and_head(model)
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
    normalizers.add(out.last_hidden_state[:, :-1][wanted], ids[:, 1:][wanted], prefix_ids, next_ids)
    return states, rows


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

    Every token's log-probability is kept (float64, flat); the vocabulary projection runs once per distinct
    prefix (:class:`PrefixNormalizers`). Hidden states at each
    sentence's critical token (every layer, float16) are written into ``states_out``
    (``[n, 2, n_layers + 1, d_model]``, e.g. a memory-mapped ``.npy``); NaN where there is no critical token.
    ``on_batch(i)`` is called after batch ``i`` (progress reporting, tests).
    """
    n = encoded.n_pairs
    first = make_batch(encoded.tokens, batches[0][:1], prefix_id, prefix_id)
    check_head(model, torch.from_numpy(first.input_ids).to(device))
    lengths = encoded.lengths()  # [2n] sentence tokens = scored positions
    offsets = encoded.offsets()
    attention = np.full((n, 2, n_layers, n_heads), np.nan, dtype=np.float32)
    overflow = 0
    bar = tqdm(total=2 * n, desc=desc, unit="sent", disable=not progress, leave=False, dynamic_ncols=True)

    def normalizing(rows: int) -> None:
        bar.set_postfix_str(f"normalizing {rows:,} prefixes", refresh=True)

    normalizers = PrefixNormalizers(_base_and_head(model)[1], encoded.n_prefixes, device, normalizing)
    try:
        for i, index in enumerate(batches):
            batch = make_batch(encoded.tokens, index, prefix_id, prefix_id)
            pair, side, query_pos, key_pos = _positions(encoded, index)
            position = np.arange(batch.input_ids.shape[1] - 1)[None, :]  # predicts sentence token `position`
            predicts = position < lengths[index][:, None]
            where = (offsets[index][:, None] + position)[predicts]
            states, rows = _forward_batch(
                model, batch, query_pos, key_pos, predicts, encoded.prefix_id[where], encoded.next_id[where],
                normalizers, n_layers, device,
            )
            has_crit = encoded.critical_token[pair, side] >= 0
            has_row = has_crit & (encoded.context_token[pair, side] >= 0)
            attention[pair[has_row], side[has_row]] = rows.cpu().numpy()[has_row]
            states_np = states.cpu().numpy()[has_crit]
            overflow += int(np.isinf(states_np).any(axis=(1, 2)).sum())
            states_out[pair[has_crit], side[has_crit]] = states_np
            bar.set_postfix_str("", refresh=False)
            bar.update(len(index))
            if on_batch is not None:
                on_batch(i)
        states_out[encoded.critical_token < 0] = np.float16(np.nan)
        token_logp = normalizers.logprobs(encoded.next_id).double().cpu().numpy()  # the last held rows: on the bar
    finally:
        bar.close()
    logp = np.add.reduceat(token_logp, offsets[:-1]).reshape(n, 2)
    # sum over tokens critical_start..critical_token: reduceat over [a, b) spans (even slots; odd slots are gaps)
    start, crit = encoded.critical_start, encoded.critical_token
    base = offsets[:-1].reshape(n, 2)
    spans = np.stack([base + np.maximum(start, 0), base + np.maximum(crit, 0) + 1], axis=-1).ravel()
    crit_sum = np.add.reduceat(np.append(token_logp, 0.0), spans)[0::2].reshape(n, 2)
    crit_logp = np.where(crit >= 0, crit_sum, np.nan)
    return CheckpointScores(logp, crit_logp, attention, overflow)

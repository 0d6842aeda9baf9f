"""One attention row per sequence, computed from the model's own queries and keys.

Full attention maps (``output_attentions=True``) cost ``layers x heads x T x T`` per sequence and force the slow
eager kernels. We need one entry per layer and head: the weight from the critical token (a query position) to the
context token (a key position). transformers routes every attention call of its modern models (GPT-NeoX/Pythia,
GPT-2, Llama, OLMo, ...) through ``AttentionInterface`` with the *final* queries and keys (after rotary embeddings,
after the per-layer scaling of GPT-2), the additive or boolean mask and the softmax scale. We register one
implementation, :data:`ATTENTION_IMPLEMENTATION`, that delegates the attention itself to transformers' SDPA
function and, while an :class:`AttentionRowRecorder` is active, also computes

    softmax(q[query_pos] . K^T * scaling  (+ mask row))[key_pos]

for every sequence and head, in float32. That is exactly the row the eager path would return with
``output_attentions=True`` (which also takes the softmax in float32), at the cost of one ``[B, H, S]`` score block
per layer. Models whose attention does not go through the interface, or uses logit soft-capping, attention sinks
or a position bias, are refused with :class:`UnsupportedModelError`.
"""

from __future__ import annotations

import contextvars
from types import TracebackType
from typing import Any

import torch

ATTENTION_IMPLEMENTATION = "exposure_row_sdpa"
"""Name under which the recording attention is registered with transformers (``attn_implementation=``)."""


class UnsupportedModelError(ValueError):
    """The model cannot be scored exactly by this module (the message says why)."""


_ACTIVE: contextvars.ContextVar[AttentionRowRecorder | None] = contextvars.ContextVar(
    "exposure_attention_row_recorder", default=None
)
_REGISTERED = False


def attention_row(
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    query_pos: torch.Tensor,
    key_pos: torch.Tensor,
    scaling: float,
    causal: bool = True,
) -> torch.Tensor:
    """Attention weight from ``query_pos[b]`` to ``key_pos[b]`` for every sequence ``b`` and head.

    ``query``: ``[B, H, T, D]``; ``key``: ``[B, H_kv, S, D]`` (``H`` a multiple of ``H_kv``: grouped-query
    attention repeats each key head for ``H / H_kv`` consecutive query heads, as transformers' ``repeat_kv``);
    ``attention_mask``: ``None`` (plain causal when ``causal``, else none), a boolean mask (True = attend) or an
    additive float mask, shaped ``[B or 1, H or 1, T, >= S]``. Returns float32 ``[B, H]``.
    """
    batch, heads, _, _ = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    if heads % kv_heads:
        raise UnsupportedModelError(f"{heads} query heads are not a multiple of {kv_heads} key heads")
    device = query.device
    rows = torch.arange(batch, device=device)
    query_pos = query_pos.to(device)
    key_pos = key_pos.to(device)
    q = query[rows, :, query_pos, :].float()  # [B, H, D]
    k = key.float()
    if heads != kv_heads:
        k = k.repeat_interleave(heads // kv_heads, dim=1)  # [B, H, S, D]
    scores = torch.einsum("bhd,bhsd->bhs", q, k) * scaling
    if attention_mask is None:
        if causal:
            allowed = torch.arange(kv_len, device=device)[None, :] <= query_pos[:, None]  # [B, S]
            scores = scores.masked_fill(~allowed[:, None, :], float("-inf"))
    else:
        mask_rows = rows if attention_mask.shape[0] > 1 else torch.zeros_like(rows)
        row = attention_mask[mask_rows, :, query_pos, :kv_len]  # [B, H or 1, S]
        if row.dtype == torch.bool:
            scores = scores.masked_fill(~row, float("-inf"))
        else:
            scores = scores + row.float()
    probs = torch.softmax(scores, dim=-1)
    return probs.gather(2, key_pos[:, None, None].expand(batch, heads, 1)).squeeze(2)


class AttentionRowRecorder:
    """While active (``with recorder:``), every attention call of the model records one row per sequence.

    ``query_pos`` / ``key_pos``: int64 ``[B]`` model positions. After the forward pass, :meth:`rows` gives
    float32 ``[B, n_layers, H]`` on the model's device.
    """

    def __init__(self, query_pos: torch.Tensor, key_pos: torch.Tensor) -> None:
        self.query_pos = query_pos
        self.key_pos = key_pos
        self._rows: list[torch.Tensor] = []
        self._token: contextvars.Token[AttentionRowRecorder | None] | None = None

    def __enter__(self) -> AttentionRowRecorder:
        self._rows = []
        self._token = _ACTIVE.set(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            _ACTIVE.reset(self._token)
            self._token = None

    def record(
        self,
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        attention_mask: torch.Tensor | None,
        kwargs: dict[str, Any],
    ) -> None:
        name = type(module).__name__
        for option in ("softcap", "position_bias", "s_aux"):
            if kwargs.get(option) is not None:
                raise UnsupportedModelError(
                    f"{name} uses attention {option!r}: the critical-token attention row is not implemented for it"
                )
        if getattr(module, "sinks", None) is not None:
            raise UnsupportedModelError(f"{name} uses attention sinks: not supported")
        layer = getattr(module, "layer_idx", None)
        if layer is not None and layer != len(self._rows):
            raise UnsupportedModelError(
                f"attention of layer {layer} was called as call {len(self._rows)}: layers must run once, in order"
            )
        if attention_mask is not None and not isinstance(attention_mask, torch.Tensor):
            raise UnsupportedModelError(f"{name} passed an attention mask of type {type(attention_mask).__name__}")
        scaling = kwargs.get("scaling")
        if scaling is None:
            scaling = query.shape[-1] ** -0.5
        causal = kwargs.get("is_causal")
        if causal is None:
            causal = bool(getattr(module, "is_causal", True))
        self._rows.append(
            attention_row(query, key, attention_mask, self.query_pos, self.key_pos, float(scaling), bool(causal))
        )

    @property
    def n_calls(self) -> int:
        return len(self._rows)

    def rows(self, n_layers: int) -> torch.Tensor:
        """float32 ``[B, n_layers, H]``; raises if the model did not make exactly ``n_layers`` attention calls."""
        if len(self._rows) != n_layers:
            raise UnsupportedModelError(
                f"the model made {len(self._rows)} attention calls through transformers' AttentionInterface for "
                f"{n_layers} layers: its attention modules do not dispatch through the interface (custom or "
                "remote code), so the critical-token attention row cannot be captured"
            )
        return torch.stack(self._rows, dim=1)


def _recording_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    recorder = _ACTIVE.get()
    if recorder is not None:
        recorder.record(module, query, key, attention_mask, kwargs)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def register_row_attention() -> str:
    """Register :data:`ATTENTION_IMPLEMENTATION` (attention and mask functions) with transformers; idempotent."""
    global _REGISTERED
    if not _REGISTERED:
        try:
            from transformers import AttentionInterface
            from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
        except ImportError as exc:  # transformers older than the attention/mask interfaces
            raise UnsupportedModelError(
                "exposure eval needs a transformers version with AttentionInterface and masking_utils "
                f"(>= 4.56): {exc}"
            ) from exc
        AttentionInterface.register(ATTENTION_IMPLEMENTATION, _recording_sdpa)
        AttentionMaskInterface.register(ATTENTION_IMPLEMENTATION, sdpa_mask)
        _REGISTERED = True
    return ATTENTION_IMPLEMENTATION

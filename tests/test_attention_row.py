"""The critical-token attention row equals the corresponding row of ``output_attentions=True``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig

from exposure.scoring.attention import (
    ATTENTION_IMPLEMENTATION,
    AttentionRowRecorder,
    UnsupportedModelError,
    attention_row,
    register_row_attention,
)

CONFIGS = {
    # Pythia-like: partial rotary (25%), parallel residual
    "gpt_neox": lambda: GPTNeoXConfig(
        vocab_size=97, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, rotary_pct=0.25, use_parallel_residual=True,
    ),
    # GPT-2 with the per-layer 1/(layer+1) attention scaling switched on
    "gpt2": lambda: GPT2Config(
        vocab_size=97, n_embd=32, n_layer=3, n_head=4, n_positions=64, scale_attn_by_inverse_layer_idx=True,
    ),
    # Llama-style with grouped-query attention (4 query heads share 2 key heads)
    "llama": lambda: LlamaConfig(
        vocab_size=97, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    ),
}


def _model(kind: str) -> torch.nn.Module:
    torch.manual_seed(1234)
    config = CONFIGS[kind]()
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    return model.eval()


def _eager_rows(model: torch.nn.Module, ids: list[int], q: int) -> torch.Tensor:
    """[n_layers, n_heads, q + 1] attention of query position q, one unpadded sequence, eager attention."""
    model.set_attn_implementation("eager")
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ids]), output_attentions=True, use_cache=False)
    return torch.stack([a[0, :, q, :] for a in out.attentions])


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_rows_equal_output_attentions(kind: str) -> None:
    model = _model(kind)
    n_layers = model.config.num_hidden_layers
    rng = np.random.default_rng(7)
    lengths = [9, 4, 12, 6, 1]
    seqs = [rng.integers(0, 97, size=n).tolist() for n in lengths]
    # one query/key per sequence; includes key == query, key 0, and a future key (weight 0 under the causal mask)
    q_pos = [5, 3, 11, 2, 0]
    k_pos = [2, 3, 0, 4, 0]
    width = max(lengths)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    model.set_attn_implementation(register_row_attention())
    assert model.config._attn_implementation == ATTENTION_IMPLEMENTATION
    with torch.inference_mode(), AttentionRowRecorder(torch.tensor(q_pos), torch.tensor(k_pos)) as recorder:
        model(input_ids=ids, attention_mask=mask, use_cache=False)
    rows = recorder.rows(n_layers)
    assert rows.shape == (len(seqs), n_layers, model.config.num_attention_heads)
    assert rows.dtype == torch.float32
    for row, seq in enumerate(seqs):
        reference = _eager_rows(model, seq, q_pos[row])  # [L, H, q+1]
        expected = reference[:, :, k_pos[row]] if k_pos[row] <= q_pos[row] else torch.zeros(reference.shape[:2])
        torch.testing.assert_close(rows[row], expected, rtol=0, atol=1e-6)
        if k_pos[row] > q_pos[row]:
            assert float(rows[row].abs().max()) == 0.0


def test_recorder_inactive_outside_context_and_counts_layers() -> None:
    model = _model("gpt_neox")
    model.set_attn_implementation(register_row_attention())
    ids = torch.tensor([[1, 2, 3, 4]])
    recorder = AttentionRowRecorder(torch.tensor([3]), torch.tensor([1]))
    with torch.inference_mode():
        model(input_ids=ids, use_cache=False)  # recorder not entered: nothing recorded
        assert recorder.n_calls == 0
        with recorder:
            model(input_ids=ids, use_cache=False)
    assert recorder.n_calls == 3
    with pytest.raises(UnsupportedModelError, match="attention calls"):
        recorder.rows(4)


def _naive(query: torch.Tensor, key: torch.Tensor, bias: torch.Tensor, q: int, k: int, scaling: float) -> torch.Tensor:
    scores = torch.einsum("hd,hsd->hs", query[:, q, :], key) * scaling + bias  # [H, S]
    return torch.softmax(scores, dim=-1)[:, k]


@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive"])
def test_attention_row_masks(mask_kind: str) -> None:
    torch.manual_seed(0)
    batch, heads, length, dim = 3, 2, 6, 8
    query = torch.randn(batch, heads, length, dim)
    key = torch.randn(batch, heads, length, dim)
    lengths = [6, 4, 2]
    allowed = torch.zeros(batch, 1, length, length, dtype=torch.bool)
    for b, n in enumerate(lengths):
        allowed[b, 0, :, :n] = torch.tril(torch.ones(length, length, dtype=torch.bool))[:, :n]
    mask: torch.Tensor | None
    if mask_kind == "none":
        mask, allowed = None, torch.tril(torch.ones(length, length, dtype=torch.bool)).expand(batch, 1, -1, -1)
    elif mask_kind == "bool":
        mask = allowed
    else:
        mask = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)
    q_pos, k_pos = torch.tensor([5, 3, 1]), torch.tensor([0, 2, 1])
    got = attention_row(query, key, mask, q_pos, k_pos, scaling=0.3)
    for b in range(batch):
        bias = torch.where(allowed[b, 0, q_pos[b]], 0.0, float("-inf"))
        expected = _naive(query[b], key[b], bias, int(q_pos[b]), int(k_pos[b]), 0.3)
        torch.testing.assert_close(got[b], expected, rtol=0, atol=1e-6)


def test_attention_row_grouped_query_heads() -> None:
    torch.manual_seed(1)
    query = torch.randn(1, 6, 5, 4)
    key = torch.randn(1, 2, 5, 4)
    got = attention_row(query, key, None, torch.tensor([4]), torch.tensor([1]), scaling=0.5)
    causal = torch.zeros(5)
    for head in range(6):
        expected = _naive(query[0, head : head + 1], key[0, head // 3 : head // 3 + 1], causal, 4, 1, 0.5)
        torch.testing.assert_close(got[0, head : head + 1], expected, rtol=0, atol=1e-6)
    with pytest.raises(UnsupportedModelError, match="multiple"):
        attention_row(torch.randn(1, 5, 3, 4), torch.randn(1, 2, 3, 4), None, torch.tensor([0]), torch.tensor([0]), 1.0)


def test_unsupported_attention_options_are_refused() -> None:
    recorder = AttentionRowRecorder(torch.tensor([1]), torch.tensor([0]))
    q = torch.randn(1, 2, 3, 4)
    module = torch.nn.Module()
    with pytest.raises(UnsupportedModelError, match="softcap"):
        recorder.record(module, q, q, None, {"softcap": 30.0})
    with pytest.raises(UnsupportedModelError, match="position_bias"):
        recorder.record(module, q, q, None, {"position_bias": torch.zeros(1)})
    module.layer_idx = 1  # type: ignore[assignment]
    with pytest.raises(UnsupportedModelError, match="in order"):
        recorder.record(module, q, q, None, {})

"""Model and optimizer settings of a reference pre-training run (GPT-NeoX architecture, random init)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

_PRESETS: dict[str, dict[str, Any]] = {
    # CPU demo default (see the package data's ATTRIBUTION.md for timings); context = item length - 1
    "tiny": dict(n_layers=4, d_model=256, n_heads=4),
    # The two smallest Pythia sizes (EleutherAI/pythia configs: hidden, layers, heads, 2048 context,
    # 4x MLP, rotary on 25% of each head, parallel residual, untied embeddings, vocab padded to 128).
    # Pythia's context is 2048: index Pythia-style items of 2049 tokens (or pass context_length).
    "pythia-14m": dict(n_layers=6, d_model=128, n_heads=4, pad_vocab_multiple=128),
    "pythia-70m": dict(n_layers=6, d_model=512, n_heads=8, pad_vocab_multiple=128),
}

MODEL_PRESETS: tuple[str, ...] = tuple(_PRESETS)


@dataclass(frozen=True)
class ModelConfig:
    """A GPT-NeoX (Pythia-architecture) model.

    ``context_length`` None: the index's item length minus one (the first token of an item is context
    only). ``vocab_size`` None: the tokenizer's size (at least the index's), rounded up to a multiple of
    ``pad_vocab_multiple``. ``d_ff`` None: ``4 * d_model``.
    """

    n_layers: int = 4
    d_model: int = 256
    n_heads: int = 4
    d_ff: int | None = None
    context_length: int | None = None
    vocab_size: int | None = None
    pad_vocab_multiple: int = 1
    rotary_pct: float = 0.25
    rotary_base: float = 10000.0
    parallel_residual: bool = True
    tie_embeddings: bool = False
    init_std: float = 0.02
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("n_layers", "d_model", "n_heads", "pad_vocab_multiple"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"ModelConfig: d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        for name in ("d_ff", "context_length", "vocab_size"):
            v = getattr(self, name)
            if v is not None and int(v) <= 0:
                raise ValueError(f"ModelConfig.{name} must be positive, got {v}")
        if not 0.0 < self.rotary_pct <= 1.0:
            raise ValueError(f"ModelConfig.rotary_pct must be in (0, 1], got {self.rotary_pct}")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """``tiny`` (the CPU demo default), ``pythia-14m`` or ``pythia-70m``; keyword overrides win."""
        try:
            params = dict(_PRESETS[name])
        except KeyError:
            raise ValueError(f"unknown model preset {name!r}; known: {', '.join(MODEL_PRESETS)}") from None
        params.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**params)

    def resolved(self, *, vocab_size: int, context_length: int) -> ModelConfig:
        """This config with ``vocab_size`` (padded), ``context_length`` and ``d_ff`` filled in."""
        vocab = self.vocab_size if self.vocab_size is not None else vocab_size
        if vocab < vocab_size:
            raise ValueError(f"ModelConfig.vocab_size {vocab} is smaller than the data's vocabulary {vocab_size}")
        vocab = int(math.ceil(vocab / self.pad_vocab_multiple) * self.pad_vocab_multiple)
        ctx = self.context_length if self.context_length is not None else context_length
        return replace(self, vocab_size=vocab, context_length=int(ctx), d_ff=self.d_ff or 4 * self.d_model)

    def to_transformers(self, *, bos_token_id: int | None, eos_token_id: int | None, pad_token_id: int | None) -> Any:
        """The ``transformers.GPTNeoXConfig`` (call :meth:`resolved` first)."""
        from transformers import GPTNeoXConfig

        if self.vocab_size is None or self.context_length is None or self.d_ff is None:
            raise ValueError("ModelConfig.to_transformers needs a resolved config (vocab_size, context_length, d_ff)")
        # rotary_pct / rotary_emb_base: the names transformers 4.x uses; 5.x maps them to rope_parameters
        return GPTNeoXConfig(  # type: ignore[call-arg]
            vocab_size=self.vocab_size,
            hidden_size=self.d_model,
            num_hidden_layers=self.n_layers,
            num_attention_heads=self.n_heads,
            intermediate_size=self.d_ff,
            hidden_act="gelu",
            rotary_pct=self.rotary_pct,
            rotary_emb_base=self.rotary_base,
            max_position_embeddings=self.context_length,
            initializer_range=self.init_std,
            layer_norm_eps=self.layer_norm_eps,
            use_parallel_residual=self.parallel_residual,
            tie_word_embeddings=self.tie_embeddings,
            attention_dropout=0.0,
            hidden_dropout=0.0,
            use_cache=True,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup then cosine decay to ``min_lr_ratio * lr`` at the last step (as Pythia).

    ``warmup`` None: 1% of the steps (Pythia), at least 1 step and at most 10% of them.
    """

    lr: float = 1e-3
    warmup: int | None = None
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float | None = 1.0

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.warmup is not None and self.warmup < 0:
            raise ValueError(f"warmup must be >= 0 steps, got {self.warmup}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be positive or None, got {self.grad_clip}")
        object.__setattr__(self, "betas", (float(self.betas[0]), float(self.betas[1])))

    def warmup_steps(self, total_steps: int) -> int:
        if self.warmup is not None:
            return int(self.warmup)
        return max(1, min(int(round(0.01 * total_steps)), total_steps // 10)) if total_steps > 0 else 0

    def lr_at(self, step: int, total_steps: int) -> float:
        """Learning rate of optimizer step ``step`` (0-based) in a run of ``total_steps`` steps."""
        warm = self.warmup_steps(total_steps)
        if step < warm:
            return self.lr * (step + 1) / warm
        span = max(1, total_steps - warm)
        progress = min(1.0, (step - warm) / span)
        floor = self.lr * self.min_lr_ratio
        return floor + (self.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d


__all__ = ["MODEL_PRESETS", "ModelConfig", "OptimConfig"]

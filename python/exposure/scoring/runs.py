"""Checkpoints of a pre-training run: a local directory of ``step{S}/`` folders or a hub model id."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from exposure.scoring.attention import UnsupportedModelError, register_row_attention
from exposure.scoring.pairs import EvalError

_STEP_DIR = re.compile(r"^step(\d+)$")

DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
}


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``"auto"``: bfloat16 on a GPU that supports it (else float16), float32 on CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in DTYPES:
        raise EvalError(f"unknown dtype {dtype!r}; use one of auto, bf16, fp16, fp32")
    return DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class ModelShape:
    model_type: str
    n_layers: int
    n_heads: int
    d_model: int
    vocab_size: int
    max_positions: int | None = None  # max_position_embeddings: the longest input the model was made for

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_type": self.model_type,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "d_model": self.d_model,
            "vocab_size": self.vocab_size,
        }


def model_shape(config: Any) -> ModelShape:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return ModelShape(
        model_type=str(getattr(text, "model_type", "unknown")),
        n_layers=int(text.num_hidden_layers),
        n_heads=int(text.num_attention_heads),
        d_model=int(text.hidden_size),
        vocab_size=int(text.vocab_size),
        max_positions=getattr(text, "max_position_embeddings", None),
    )


@dataclass(frozen=True)
class Run:
    """A run: ``kind`` is ``"local"`` (``root`` holds ``step{S}/`` folders) or ``"hub"`` (``source`` is a model
    id whose revision ``step{S}`` is checkpoint S, as Pythia's branches). ``offline``: the hub cannot be reached,
    so its files come from the local cache only (see :func:`hub_reachable`)."""

    source: str
    kind: str
    root: Path | None = None
    offline: bool = False

    def _hub(self) -> dict[str, Any]:
        """Options of a hub download: from the local cache only when offline (else each file waits out the
        retries of a request that cannot succeed, ~25 s)."""
        return {"local_files_only": True} if self.offline else {}

    def _unreachable(self) -> str:
        return (" (the hub cannot be reached from here, and the local Hugging Face cache has no copy: download the "
                "run first, or pass a directory of its step{S}/ folders)") if self.offline else ""

    @property
    def name(self) -> str:
        return str(self.root) if self.root is not None else self.source

    def available_checkpoints(self) -> tuple[int, ...] | None:
        """Steps of the local ``step{S}/`` folders (``None`` for a hub run: revisions are not listed)."""
        if self.root is None:
            return None
        steps = []
        for child in self.root.iterdir():
            match = _STEP_DIR.match(child.name)
            if match and child.is_dir() and (child / "config.json").is_file():
                steps.append(int(match.group(1)))
        return tuple(sorted(steps))

    def location(self, step: int) -> tuple[str, str | None]:
        """``(path or model id, revision)`` for ``from_pretrained``."""
        if self.root is not None:
            path = self.root / f"step{step}"
            if not (path / "config.json").is_file():
                raise EvalError(
                    f"checkpoint step{step} is not in {self.root} (available: {self.available_checkpoints()})"
                )
            return str(path), None
        return self.source, f"step{step}"

    def tokenizer_file(self, step: int) -> Path:
        """The checkpoint's ``tokenizer.json`` (local: ``step{S}/tokenizer.json``, else the run root's)."""
        if self.root is not None:
            for candidate in (self.root / f"step{step}" / "tokenizer.json", self.root / "tokenizer.json"):
                if candidate.is_file():
                    return candidate
            raise EvalError(f"no tokenizer.json in {self.root / f'step{step}'} or {self.root}")
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(self.source, "tokenizer.json", revision=f"step{step}", **self._hub()))
        except Exception as exc:  # network, missing repo/revision/file: all mean the same to the user
            raise EvalError(
                f"cannot fetch tokenizer.json of {self.source} at revision step{step}{self._unreachable()}: {exc}"
            ) from exc

    def prefix_token_id(self, step: int, tokenizer: Tokenizer | None = None) -> int:
        """lm-evaluation-harness's prefix token: the tokenizer's BOS, else its EOS. ``tokenizer``: the checkpoint's
        ``tokenizer.json`` already loaded, which lets a local run skip loading it again through transformers where
        ``tokenizer_config.json`` names the tokens plainly (:func:`declared_prefix_token`)."""
        from transformers import AutoTokenizer

        if self.root is not None:
            folder = self.tokenizer_file(step).parent
            declared = None if tokenizer is None else declared_prefix_token(folder, tokenizer)
            if declared is not None:
                return declared
            location, revision = str(folder), None
        else:
            location, revision = self.location(step)
        try:
            tokenizer = AutoTokenizer.from_pretrained(location, revision=revision, **self._hub())
        except (OSError, ValueError) as exc:
            raise EvalError(f"cannot load the tokenizer of {location}{self._unreachable()}: {exc}") from exc
        for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
            if token_id is not None:
                return int(token_id)
        raise EvalError(
            f"the tokenizer of {location} defines neither a BOS nor an EOS token: cannot form the "
            "lm-evaluation-harness prefix (pass prefix_token_id explicitly)"
        )

    def shape(self, step: int) -> ModelShape:
        from transformers import AutoConfig

        location, revision = self.location(step)
        try:
            return model_shape(AutoConfig.from_pretrained(location, revision=revision, **self._hub()))
        except (OSError, ValueError) as exc:
            raise EvalError(
                f"cannot read the model config of {location} ({revision or 'local'}){self._unreachable()}: {exc}"
            ) from exc

    def load_model(self, step: int, device: torch.device, dtype: torch.dtype) -> Any:
        """Load checkpoint ``step`` as a causal LM in eval mode on ``device`` with the row-recording attention."""
        import pickle

        from safetensors import SafetensorError
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        location, revision = self.location(step)
        implementation = register_row_attention()
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            model: Any = AutoModelForCausalLM.from_pretrained(
                location, revision=revision, dtype=dtype, attn_implementation=implementation, **self._hub()
            )
        except (OSError, ValueError, KeyError, SafetensorError, pickle.UnpicklingError, EOFError, RuntimeError) as exc:
            # missing or damaged weights (a cut-short safetensors file, a broken pickle, tensors of other shapes)
            raise EvalError(f"cannot load checkpoint step{step} from {location}{self._unreachable()}: {exc}") from exc
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        if not getattr(model, "_supports_sdpa", False):
            raise UnsupportedModelError(f"{type(model).__name__} does not support SDPA attention")
        if getattr(model.config, "_attn_implementation", None) != implementation:
            raise UnsupportedModelError(
                f"{type(model).__name__} does not dispatch attention through transformers' AttentionInterface"
            )
        return model.to(device).eval()


def declared_prefix_token(folder: Path, tokenizer: Tokenizer) -> int | None:
    """The BOS id, else the EOS id, as ``folder/tokenizer_config.json`` declares them (a token string or
    ``{"content": ...}``; null: none), looked up in ``tokenizer``; ``None`` where transformers may decide otherwise:
    no such file, a ``special_tokens_map.json`` beside it (merged by transformers), a key left out (a class default
    may apply), or a token not in the vocabulary."""
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or (folder / "special_tokens_map.json").exists():
        return None
    for key in ("bos_token", "eos_token"):
        if key not in config:
            return None
        value = config[key]
        if value is None:
            continue
        content = value.get("content") if isinstance(value, dict) else value
        return tokenizer.token_to_id(content) if isinstance(content, str) else None
    return None


def open_run(run: str | Path) -> Run:
    """A local directory of ``step{S}/`` checkpoint folders, or else a Hugging Face model id."""
    path = Path(run).expanduser()
    if path.is_dir():
        root = path.resolve()
        run_ = Run(str(run), "local", root)
        if not run_.available_checkpoints():
            raise EvalError(
                f"{root} holds no checkpoint folders: expected step{{S}}/ subfolders (step0/, step1000/, ...) "
                "each with config.json and weights in the transformers layout"
            )
        return run_
    text = str(run)
    if path.exists() or text.startswith(("/", ".", "~")) or text.count("/") > 1:
        raise FileNotFoundError(f"run {text} is neither a directory of step{{S}}/ checkpoints nor a hub model id")
    return Run(text, "hub", None, offline=not hub_reachable())


def hub_reachable() -> bool:
    """Whether the Hugging Face hub can be asked at all: not with ``HF_HUB_OFFLINE`` set, nor where its host name
    does not resolve (no network, as on many cluster nodes). Then a hub run reads the local cache only."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        socket.getaddrinfo(urlparse(constants.ENDPOINT).hostname or "huggingface.co", 443)
    except OSError:
        return False
    return True

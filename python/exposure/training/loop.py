"""The training loop: items in order, ``items_per_step`` consecutive items per AdamW step, checkpoints
saved in the transformers layout, resumable.

Determinism: the model is initialised from ``seed`` (in a forked RNG, so the caller's RNG is untouched),
there is no dropout and no data shuffling, and ``torch.use_deterministic_algorithms`` is on while
training. Two runs with the same settings on the same device and thread count give identical weights.

Resuming: a finished checkpoint (``OUT/step{S}/``) is never recomputed. The run restarts from the latest
checkpoint ``S`` for which ``OUT/resume.pt`` holds the optimizer state, provided every requested
checkpoint up to ``S`` is finished; otherwise it restarts from step 0 (deterministically recomputing the
same weights) and only writes the checkpoints that are missing. ``OUT/run.json`` records a fingerprint of
everything that determines the weights; a folder made with other settings is refused. ``run.json`` is
written when the run has finished; until then the same record is ``OUT/progress.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import pickle
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from exposure.devices import resolve_device
from exposure.training import checkpoints as ckpt
from exposure.training.config import ModelConfig, OptimConfig
from exposure.training.items import IGNORE_INDEX, ItemSource, collate, run_items, step_item_range

RUN_FORMAT = "exposure.train-reference/1"
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class RunPlan:
    """Which items each step reads, how long the run is, and where it saves.

    Step ``i`` reads run items ``[i*items_per_step, min((i+1)*items_per_step, total_items))``; run item
    ``g`` is source item ``g % len(source)``. The learning-rate schedule spans ``total_steps`` steps; the
    run stops after the last checkpoint.
    """

    items_per_step: int
    total_items: int
    total_steps: int
    checkpoints: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.items_per_step <= 0:
            raise ValueError(f"items_per_step must be positive, got {self.items_per_step}")
        if self.total_items <= 0:
            raise ValueError(f"the run has no items (total_items={self.total_items})")
        need = math.ceil(self.total_items / self.items_per_step)
        if self.total_steps != need:
            raise ValueError(
                f"{self.total_items} items at {self.items_per_step} per step make {need} steps, not {self.total_steps}"
            )
        object.__setattr__(self, "checkpoints", ckpt.validate_checkpoints(self.checkpoints, self.total_steps))

    @property
    def last_step(self) -> int:
        return self.checkpoints[-1]


def make_hf_tokenizer(tokenizer_file: Path, context_length: int) -> Any:
    """A ``PreTrainedTokenizerFast`` for ``tokenizer.json``: ``<|endoftext|>`` (or the file's EOS) as BOS,
    EOS and UNK as in Pythia, ``<|padding|>`` as PAD when present (else EOS)."""
    from transformers import PreTrainedTokenizerFast

    from exposure.tokenizer import load_tokenizer

    loaded = load_tokenizer(tokenizer_file)
    special: dict[str, str] = {}
    eos = loaded.tokenizer.id_to_token(loaded.eos_id) if loaded.eos_id is not None else None
    if eos is not None:
        special = {"bos_token": eos, "eos_token": eos, "unk_token": eos, "pad_token": eos}
        if loaded.tokenizer.token_to_id("<|padding|>") is not None:
            special["pad_token"] = "<|padding|>"
    tok = PreTrainedTokenizerFast(tokenizer_file=str(loaded.path), model_max_length=context_length, **special)
    tok.exposure_tokenizer_file = str(loaded.path)  # save_checkpoint copies the original bytes
    return tok


def fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode("utf-8")).hexdigest()


@contextlib.contextmanager
def _deterministic(device: str, threads: int | None) -> Iterator[None]:
    """Deterministic kernels (and ``threads`` CPU threads) while training; the caller's settings come back."""
    import torch

    cuda = device.startswith("cuda")
    if cuda:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    prev = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_threads = torch.get_num_threads()
    # On a GPU a kernel without a deterministic version warns instead of stopping the run.
    torch.use_deterministic_algorithms(True, warn_only=cuda)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)
        if threads is not None:
            torch.set_num_threads(prev_threads)


def _init_model(model_config: ModelConfig, hf_tokenizer: Any, seed: int) -> Any:
    import torch
    from transformers import GPTNeoXForCausalLM

    cfg = model_config.to_transformers(
        bos_token_id=hf_tokenizer.bos_token_id, eos_token_id=hf_tokenizer.eos_token_id, pad_token_id=hf_tokenizer.pad_token_id
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPTNeoXForCausalLM(cfg)
    return model.float()


def _optimizer(model: Any, optim: OptimConfig) -> Any:
    import torch

    decay = [p for _, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for _, p in model.named_parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas, eps=optim.eps)


def _resume_point(out_dir: Path, plan: RunPlan, fp: str) -> tuple[int, dict[str, Any] | None]:
    """(step to start from, resume state or None)."""
    import torch

    done = set(ckpt.finished_checkpoints(out_dir, plan.checkpoints))
    path = out_dir / ckpt.RESUME_FILE
    if not path.is_file():
        return 0, None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError):
        return 0, None  # damaged (it is written atomically, so not by a crash of ours): start over
    if not isinstance(state, dict):
        return 0, None
    s = int(state.get("step", -1))
    if state.get("fingerprint") != fp or s not in done or s > plan.last_step:
        return 0, None
    if any(c not in done for c in plan.checkpoints if c <= s):
        return 0, None
    if not (ckpt.checkpoint_dir(out_dir, s) / "config.json").is_file():
        return 0, None
    return s, state


def _save_resume_state(out_dir: Path, state: dict[str, Any]) -> None:
    import torch

    path = out_dir / ckpt.RESUME_FILE
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
    }


def train_items(
    source: ItemSource,
    out_dir: str | os.PathLike[str],
    *,
    model_config: ModelConfig,
    tokenizer_file: str | os.PathLike[str],
    plan: RunPlan,
    optim: OptimConfig = OptimConfig(),
    seed: int = 0,
    device: str = "auto",
    micro_batch_size: int | None = None,
    precision: str = "fp32",
    threads: int | None = None,
    progress: bool = True,
    data_info: dict[str, Any] | None = None,
    schedule: dict[str, Any] | None = None,
) -> Path:
    """Train a GPT-NeoX model from scratch on ``source``'s items in order; returns ``out_dir``.

    ``model_config`` must be resolved (:meth:`ModelConfig.resolved`). ``data_info`` (must hold an ``id``
    identifying the data, e.g. the index manifest's sha256) and ``schedule`` are recorded in run.json.
    ``threads``: CPU threads for torch while training (default: torch's setting, usually all cores).
    """
    import torch
    import torch.nn.functional as F

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if micro_batch_size is not None and micro_batch_size <= 0:
        raise ValueError(f"micro_batch_size must be positive, got {micro_batch_size}")
    if threads is not None and threads <= 0:
        raise ValueError(f"threads must be positive, got {threads}")
    if model_config.vocab_size is None or model_config.context_length is None:
        raise ValueError("train_items needs a resolved ModelConfig (call ModelConfig.resolved)")
    data_info = dict(data_info or {})
    if "id" not in data_info:
        raise ValueError("data_info must hold an 'id' that identifies the training data")
    dev = str(resolve_device(device))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf_tok = make_hf_tokenizer(Path(tokenizer_file), model_config.context_length)
    from exposure.tokenizer import load_tokenizer

    tok_info = load_tokenizer(tokenizer_file)
    if tok_info.vocab_size > model_config.vocab_size:
        raise ValueError(f"tokenizer has {tok_info.vocab_size} ids but the model's vocabulary is {model_config.vocab_size}")
    ctx = model_config.context_length
    vocab = model_config.vocab_size
    pad_id = hf_tok.pad_token_id if hf_tok.pad_token_id is not None else 0

    settings = {
        "format": RUN_FORMAT,
        "data_id": data_info["id"],
        "num_source_items": len(source),
        "tokenizer_sha256": tok_info.sha256,
        "model": model_config.to_dict(),
        "optim": optim.to_dict(),
        "items_per_step": plan.items_per_step,
        "total_items": plan.total_items,
        "total_steps": plan.total_steps,
        "seed": int(seed),
        "precision": precision,
        "micro_batch_size": micro_batch_size,
    }
    fp = fingerprint(settings)
    previous = ckpt.read_run(out)
    for record in (previous, ckpt.read_run(out, ckpt.PROGRESS_FILE)):
        if record is not None and record.get("fingerprint") != fp:
            old = record.get("settings", {})
            diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise ValueError(
                f"{out} holds a run with other settings (differs in: {', '.join(diff) or 'format'}); "
                f"use another output folder or delete it"
            )

    run: dict[str, Any] = {
        "format": RUN_FORMAT,
        "fingerprint": fp,
        "settings": settings,
        "data": data_info,
        "tokenizer": {
            "path": str(tok_info.path), "name": tok_info.name, "sha256": tok_info.sha256, "vocab_size": tok_info.vocab_size,
        },
        "model": {"architecture": "GPTNeoXForCausalLM", "config": model_config.to_dict()},
        "optimizer": {"name": "AdamW", **optim.to_dict(), "warmup_steps": optim.warmup_steps(plan.total_steps),
                      "lr_schedule": "linear warmup, cosine decay to min_lr_ratio*lr at total_steps"},
        "seed": int(seed),
        "items_per_step": plan.items_per_step,
        "total_items": plan.total_items,
        "total_steps": plan.total_steps,
        "schedule": schedule,
        "checkpoints": list(plan.checkpoints),
        "device": dev,
        "threads": threads,
        "precision": precision,
        "micro_batch_size": micro_batch_size,
        "versions": _versions(),
    }

    start, state = _resume_point(out, plan, fp)
    done = set(ckpt.finished_checkpoints(out, plan.checkpoints))
    losses: list[float | None] = list(state["losses"])[:start] if state else []
    tokens: list[int] = list(state["tokens"])[:start] if state else []
    elapsed_before = float(state.get("train_seconds", 0.0)) if state else 0.0

    def write_run(finished: bool, seconds: float) -> None:
        trained = sum(tokens)
        run.update(
            finished_checkpoints=sorted(ckpt.finished_checkpoints(out, plan.checkpoints)),
            finished=finished,
            steps_done=len(losses),
            tokens_trained=trained,
            train_seconds=round(seconds, 3),
            tokens_per_second=round(trained / seconds, 1) if seconds > 0 else None,
            loss_curve={"step": list(range(len(losses))), "loss": losses},
        )
        if finished:
            ckpt.write_json_atomic(out / ckpt.RUN_FILE, run)
            (out / ckpt.PROGRESS_FILE).unlink(missing_ok=True)
        else:
            ckpt.write_json_atomic(out / ckpt.PROGRESS_FILE, run)

    if len(done) == len(plan.checkpoints):
        if previous is None:
            write_run(True, elapsed_before)
        return out

    (out / ckpt.RUN_FILE).unlink(missing_ok=True)  # more to train: the folder is not finished any more
    if state is not None:
        _log(f"resuming from {ckpt.checkpoint_dir(out, start)} (optimizer state in {ckpt.RESUME_FILE})", progress)
    elif done:
        _log(f"no usable resume state: recomputing from step 0; the finished checkpoints {sorted(done)} are kept", progress)

    with _deterministic(dev, threads):
        if state is not None:
            from transformers import GPTNeoXForCausalLM

            with torch.random.fork_rng(devices=[]), ckpt.quiet_transformers():
                model = GPTNeoXForCausalLM.from_pretrained(ckpt.checkpoint_dir(out, start), dtype=torch.float32)
        else:
            model = _init_model(model_config, hf_tok, seed)
        model.to(dev)  # type: ignore[arg-type]  # (transformers' typing of Module.to)
        model.train()
        opt = _optimizer(model, optim)
        if state is not None:
            opt.load_state_dict(state["optimizer"])
        n_params = sum(p.numel() for p in model.parameters())
        run["model"]["n_params"] = int(n_params)
        run["model"]["transformers_config"] = model.config.to_dict()

        def checkpoint(step: int, seconds: float) -> None:
            if step not in done:
                a, _ = step_item_range(step, plan.items_per_step, plan.total_items)
                info = {"items_seen": min(a, plan.total_items), "tokens_trained": int(sum(tokens[:step])),
                        "loss": losses[step - 1] if step > 0 else None}
                _save_checkpoint(model, hf_tok, out, step, info)
                done.add(step)
            _save_resume_state(out, {
                "step": step, "fingerprint": fp, "optimizer": opt.state_dict(),
                "losses": losses[:step], "tokens": tokens[:step], "train_seconds": seconds,
            })
            write_run(False, seconds)

        autocast = (
            torch.autocast(device_type=torch.device(dev).type, dtype=torch.bfloat16)
            if precision == "bf16" else contextlib.nullcontext()
        )
        mb = micro_batch_size or plan.items_per_step
        save_at = set(plan.checkpoints)
        t0 = time.perf_counter()
        if start in save_at and start not in done:
            checkpoint(start, elapsed_before)
        bar = tqdm(total=plan.last_step, initial=start, desc="train", unit="step", disable=not progress, dynamic_ncols=True)
        try:
            for step in range(start, plan.last_step):
                lr = optim.lr_at(step, plan.total_steps)
                for g in opt.param_groups:
                    g["lr"] = lr
                a, b = step_item_range(step, plan.items_per_step, plan.total_items)
                items = run_items(source, a, b)
                batch = collate(items, pad_id=pad_id, context_length=ctx, first_item=a % len(source))
                n_targets = batch.num_targets
                opt.zero_grad(set_to_none=True)
                loss_sum = 0.0
                for k in range(0, len(items), mb):
                    ids = torch.from_numpy(batch.input_ids[k : k + mb]).to(dev)
                    labels = torch.from_numpy(batch.labels[k : k + mb]).to(dev)
                    if int((labels != IGNORE_INDEX).sum()) == 0:
                        continue
                    with autocast:
                        logits = model(input_ids=ids).logits
                    loss = F.cross_entropy(logits.float().reshape(-1, vocab), labels.reshape(-1),
                                           ignore_index=IGNORE_INDEX, reduction="sum")
                    (loss / n_targets).backward()
                    loss_sum += float(loss.detach())
                if n_targets > 0:
                    if optim.grad_clip is not None:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
                    opt.step()
                losses.append(loss_sum / n_targets if n_targets > 0 else None)
                tokens.append(int(sum(len(x) for x in items)))
                bar.update(1)
                if losses[-1] is not None:
                    bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{lr:.2e}", refresh=False)
                if step + 1 in save_at:
                    checkpoint(step + 1, elapsed_before + time.perf_counter() - t0)
        finally:
            bar.close()
        write_run(True, elapsed_before + time.perf_counter() - t0)
    return out


def _save_checkpoint(model: Any, tokenizer: Any, out_dir: Path, step: int, info: dict[str, Any]) -> Path:
    """Save one checkpoint folder (module-level so that tests can interrupt a run here)."""
    return ckpt.save_checkpoint(model, tokenizer, out_dir, step, info)


def _log(msg: str, progress: bool) -> None:
    if progress:
        tqdm.write(msg, file=sys.stderr)


def items_fingerprint(items: Sequence[np.ndarray]) -> str:
    """sha256 identifying in-memory items (lengths and tokens)."""
    h = hashlib.sha256()
    for x in items:
        a = np.ascontiguousarray(np.asarray(x, dtype=np.int64))
        h.update(np.int64(a.size).tobytes())
        h.update(a.tobytes())
    return h.hexdigest()


__all__ = ["PRECISIONS", "RUN_FORMAT", "RunPlan", "items_fingerprint", "make_hf_tokenizer", "train_items"]

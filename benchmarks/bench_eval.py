"""Benchmark ``exposure eval`` against lm-evaluation-harness's BLiMP scoring path, same model, data and machine.

The model has random weights in a public shape (``tiny``: 2 layers x 64; ``pythia-160m``: 12 layers x 768, 12
heads, rotary 25%, parallel residual, vocabulary 50,304), saved as a one-checkpoint run (``step0/``) with the
GPT-NeoX tokenizer. The pairs are real BLiMP pairs, the same number from each paradigm of the five default phenomena,
with critical tokens from the real phrase stage. Both sides
score the same sentences in the same run:

* ours: :func:`exposure.evaluate.evaluate_run` end to end (tokenizer check, model load, scores + hidden states at
  the critical token + attention rows, files written);
* peer: lm-evaluation-harness ``HFLM.loglikelihood`` with BLiMP's requests (empty context, the sentence as the
  continuation), at each ``--peer-batch-sizes`` (lm-eval's default is 1); end to end = loading the model and the
  tokenizer into ``HFLM``, then scoring.

Reported: pairs/second of each, end to end and scoring only (ours: after the model is loaded; peer:
``loglikelihood``), the ratios, and equality of results (max |logp difference|, agreement of ``correct``).
Needs ``pip install --no-deps lm-eval==0.4.13`` plus its import-time needs (accelerate, requests, urllib3,
certifi, sqlitedict, ... whatever ``python -c 'from lm_eval.models.huggingface import HFLM'`` asks for).

    PYTHONPATH=python .venv/bin/python benchmarks/bench_eval.py --shape tiny --pairs 1340
    PYTHONPATH=python .venv/bin/python benchmarks/bench_eval.py --shape pythia-160m --pairs 335 --peer-batch-sizes 1,32
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

# The workplace's data beside the checkout (or EXPOSURE_SHARED_DATA); BLiMP's default phenomena are also bundled.
SHARED = Path(os.environ.get("EXPOSURE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
NEOX_TOKENIZER = SHARED / "tokenizers" / "gpt-neox-20b" / "tokenizer.json"

SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256),
    # EleutherAI/pythia-160m config.json
    "pythia-160m": dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        rotary_pct=0.25, rotary_emb_base=10000, use_parallel_residual=True, layer_norm_eps=1e-5,
    ),
}


def blimp_pairs(n_pairs: int, blimp: Path, tokenizer: Path) -> pa.Table:
    """``n_pairs`` real BLiMP pairs of the default phenomena (round-robin over their paradigms), with their
    critical phrases found by the real phrase stage (exposure.critical), as ``exposure splits`` gives them."""
    from exposure.blimp import DEFAULT_PHENOMENA, find_vocabulary, load_blimp, read_vocabulary
    from exposure.critical import critical_phrases
    from exposure.tokenizer import load_tokenizer

    pairs = load_blimp(blimp, phenomena=DEFAULT_PHENOMENA)
    by_uid: dict[str, list[Any]] = {}
    for p in pairs:
        by_uid.setdefault(p.uid, []).append(p)
    per_uid = -(-n_pairs // len(by_uid))
    chosen = [p for uid in by_uid for p in by_uid[uid][:per_uid]][:n_pairs]
    table = critical_phrases(chosen, read_vocabulary(find_vocabulary(blimp)), load_tokenizer(tokenizer))
    meta = dict(table.schema.metadata or {})
    meta[b"exposure.checkpoints"] = b"[0]"
    return table.replace_schema_metadata(meta)


def build_run(root: Path, shape: str, tokenizer_file: Path) -> Path:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

    config = GPTNeoXConfig(vocab_size=50304, max_position_embeddings=2048, **SHAPES[shape])
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(config)
    step = root / "step0"
    model.save_pretrained(step)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_file), bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
    tokenizer.save_pretrained(step)
    shutil.copyfile(tokenizer_file, step / "tokenizer.json")  # byte-identical: the sha256 check passes
    return step


def run_ours(
    pairs: pa.Table, run: Path, out: Path, device: str, dtype: str, batch_tokens: int | None
) -> dict[str, Any]:
    from exposure.evaluate import evaluate_run

    shutil.rmtree(out, ignore_errors=True)
    started, cpu = time.perf_counter(), time.process_time()
    results = evaluate_run(
        pairs, run, out, device=device, dtype=dtype, batch_tokens=batch_tokens, progress=False
    )
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    scores = results.scores(0)
    info = results.run["checkpoint_info"]["0"]
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "score_seconds": info["score_seconds"],
        "batch_tokens": results.run["batch_tokens"],
        "logp": np.stack([scores.column("logp_good").to_numpy(), scores.column("logp_bad").to_numpy()], axis=1),
    }


def run_peer(pairs: pa.Table, step: Path, device: str, torch_dtype: torch.dtype, batch_size: int) -> dict[str, Any]:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    loading = time.perf_counter()
    model: Any = AutoModelForCausalLM.from_pretrained(step, dtype=torch_dtype)
    model = model.to(device).eval()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(step)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    load_seconds = time.perf_counter() - loading
    requests: list[Any] = []
    good_bad = (pairs.column("sentence_good").to_pylist(), pairs.column("sentence_bad").to_pylist())
    for good, bad in zip(*good_bad, strict=True):
        for sentence in (good, bad):
            requests.append(
                Instance(request_type="loglikelihood", doc={}, arguments=("", sentence), idx=len(requests) % 2)
            )
    started = time.perf_counter()
    answers = lm.loglikelihood(requests, disable_tqdm=True)
    seconds = time.perf_counter() - started
    return {
        "seconds": load_seconds + seconds,  # end to end, as ours: model and tokenizer load + scoring
        "score_seconds": seconds,
        "logp": np.array([a[0] for a in answers]).reshape(-1, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--pairs", type=int, default=1340,
                        help="number of BLiMP pairs (spread over the 25 paradigms of the default phenomena)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    parser.add_argument("--batch-tokens", type=int, default=None, help="default: exposure eval's for the device")
    parser.add_argument("--peer-batch-sizes", default="1,64", help="lm-eval batch sizes to run (its default is 1)")
    parser.add_argument("--repeats", type=int, default=1, help="alternate ours/peer this many times; best time kept")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--tokenizer", type=Path, default=NEOX_TOKENIZER,
                        help="the GPT-NeoX tokenizer.json (default: the shared data's)")
    parser.add_argument("--blimp", type=Path, default=None,
                        help="BLiMP folder (default: the shared data's, else the copy bundled with exposure)")
    args = parser.parse_args(argv)
    if not args.tokenizer.is_file():
        parser.error(f"no tokenizer at {args.tokenizer}: pass --tokenizer PATH/gpt-neox-20b/tokenizer.json")
    if args.blimp is None:
        from exposure.data import blimp_dir

        args.blimp = SHARED / "blimp" if (SHARED / "blimp").is_dir() else blimp_dir()

    from exposure.devices import resolve_device
    from exposure.scoring.runs import resolve_dtype

    device = resolve_device(args.device)
    torch_dtype = resolve_dtype(args.dtype, device)
    dtype_flag = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[torch_dtype]
    pairs = blimp_pairs(args.pairs, args.blimp, args.tokenizer)
    n = pairs.num_rows
    peer_sizes = [int(s) for s in args.peer_batch_sizes.split(",") if s]
    if device.type == "cuda":  # the CUDA context and cuBLAS start once, before either side is timed
        x = torch.ones(256, 256, device=device, dtype=torch_dtype)
        (x @ x).sum().item()
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        root = Path(tmp)
        step = build_run(root / "run", args.shape, args.tokenizer)
        ours: dict[str, Any] | None = None
        peers: dict[int, dict[str, Any]] = {}
        for _ in range(args.repeats):
            result = run_ours(pairs, root / "run", root / "out", str(device), dtype_flag, args.batch_tokens)
            if ours is None or result["seconds"] < ours["seconds"]:
                ours = result
            for size in peer_sizes:
                result = run_peer(pairs, step, str(device), torch_dtype, size)
                if size not in peers or result["seconds"] < peers[size]["seconds"]:
                    peers[size] = result
    assert ours is not None
    report: dict[str, Any] = {
        "shape": args.shape,
        "pairs": n,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "cpu_threads": torch.get_num_threads(),
        "dtype": dtype_flag,
        "batch_tokens": ours["batch_tokens"],
        "ours_pairs_per_s": n / ours["seconds"],
        "ours_pairs_per_cpu_s": n / ours["cpu_seconds"],
        "ours_pairs_per_s_scoring_only": n / ours["score_seconds"],
        "peer": "lm-evaluation-harness 0.4.13 HFLM.loglikelihood (BLiMP requests)",
        "peers": {},
    }
    print(f"{args.shape} ({n} pairs, {device}, {dtype_flag}, {torch.get_num_threads()} threads, "
          f"batch_tokens {ours['batch_tokens']})")
    print(f"  exposure eval   : {n / ours['seconds']:9.1f} pairs/s end to end, {n / ours['cpu_seconds']:.1f} per "
          f"CPU-s ({n / ours['score_seconds']:.1f} pairs/s scoring only), with states + attention rows + files")
    for size, peer in peers.items():
        diff = float(np.abs(peer["logp"] - ours["logp"]).max())
        agree = float(((peer["logp"][:, 0] > peer["logp"][:, 1]) == (ours["logp"][:, 0] > ours["logp"][:, 1])).mean())
        ratio = peer["seconds"] / ours["seconds"]
        score_ratio = peer["score_seconds"] / ours["score_seconds"]
        report["peers"][str(size)] = {
            "pairs_per_s": n / peer["seconds"], "pairs_per_s_scoring_only": n / peer["score_seconds"],
            "ratio": ratio, "scoring_only_ratio": score_ratio, "max_abs_logp_diff": diff, "correct_agreement": agree,
        }
        print(f"  lm-eval bs={size:<4}: {n / peer['seconds']:9.1f} pairs/s end to end ({n / peer['score_seconds']:.1f} "
              f"scoring only)   ours/peer = {ratio:5.2f}x end to end, {score_ratio:5.2f}x scoring only   "
              f"max|dlogp| = {diff:.2e}   correct agree = {agree:.4f}")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The benchmark scripts still run against the current engine (tiny sizes, no peers): a refactor that breaks
one is caught here, not by the next person who needs its numbers. Their targets are not checked here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from _corpus_files import TOKENIZER

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(script: str, *args: str) -> None:
    """Run ``benchmarks/script`` with ``args`` as a user would; fail with its output if it fails."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "python"), str(ROOT / "benchmarks")])}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def test_bench_engine_runs(tmp_path: Path) -> None:
    out = tmp_path / "engine.json"
    run_benchmark("bench_engine.py", "--tokens", "1000000", "--no-peers", "--no-adversarial", "--queries", "500",
                  "--latency-queries", "20", "--frequent", "2", "--frequent-reps", "1", "--passes", "1",
                  "--build-repeats", "1", "--workdir", str(tmp_path / "work"), "--out", str(out))
    res = json.loads(out.read_text())
    build, queries = res["ours"]["build"], res["ours"]["queries"]
    assert build["ok"] and build["tokens"] == 1_000_000 and build["bytes_per_token"] > 2
    assert queries["count_throughput"]["phrases"] == 500
    assert queries["window_sums_match_counts_ordinary"] is True
    for key in ("count_latency_ordinary", "first_latency_ordinary", "window_latency_ordinary"):
        assert queries[key]["n"] == 20 and 0 < queries[key]["median_us"] <= queries[key]["max_us"]


def test_bench_scaling_runs(tmp_path: Path) -> None:
    out = tmp_path / "scaling.json"
    run_benchmark("bench_scaling.py", "--sizes", "200000", "600000", "--repeats", "2", "--out", str(out))
    res = json.loads(out.read_text())
    assert res["peers"] == {}
    assert [r["tokens"] for r in res["exposure"]] == [200_000, 600_000]
    for r in res["exposure"]:
        assert len(r["all_seconds"]) == 2 and r["seconds"] == min(r["all_seconds"])
        assert r["shards"] >= 1 and r["shard_tokens"] >= r["tokens"] / r["shards"]
        assert r["random_read_ns"] > 0


def test_bench_eval_runs_ours(tmp_path: Path) -> None:
    """Ours only (the peer, lm-eval, is not a dependency): the path benchmarks/gpu_eval.sh takes on a GPU."""
    out = tmp_path / "eval.json"
    run_benchmark("bench_eval.py", "--shape", "tiny", "--pairs", "30", "--peer-batch-sizes", "", "--device", "cpu",
                  "--tokenizer", str(TOKENIZER), "--json", str(out))
    res = json.loads(out.read_text())
    assert res["pairs"] == 30 and res["device"] == "cpu" and res["dtype"] == "fp32" and res["peers"] == {}
    assert 0 < res["ours_pairs_per_s"] <= res["ours_pairs_per_s_scoring_only"]

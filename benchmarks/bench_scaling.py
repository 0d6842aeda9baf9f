"""Build-time scaling of the engine: the same realistic stream at two sizes, in one run.

Target (issue 2): going from 100M to 300M tokens costs at most 3.3x the build time.

Each size is built ``--repeats`` times, alternating sizes so that a slow spell of this shared machine hits
both; the ratio is that of the fastest builds (every time is printed too). Two more columns say where a ratio
above 3 comes from: the suffix sorting alone (the slowest shard's, shards sort side by side), and this machine's
cost of one random 2-byte read within an array the size of one shard's text (2 bytes per token), the array
that SA-IS's inductions read at random. SA-IS does the same work per token at every size; the memory system
does not charge the same per access. numpy's gather carries its own per-element overhead, so this column
understates the growth; ``benchmarks/random_reads.cpp`` measures the same reads prefetched, as the engine does.

``--peers tokengrams,infini-gram`` builds the same streams with the peers too (their own interpreter,
``--peer-python``, as in bench_engine.py), interleaved with ours, so that their ratio on this machine, in
the same run, says how much of a ratio above 3 the machine charges any suffix-array builder. ``divsufsort``
(pydivsufsort) is a suffix sort only, by another algorithm than SA-IS, on the same parts the builder's shards
are (as many at a time as it has threads): compare it with the "sort only" row of ours.

    PYTHONPATH=python:benchmarks .venv/bin/python benchmarks/bench_scaling.py --sizes 100000000 300000000 \
        --peers tokengrams,infini-gram,divsufsort --peer-python /tmp/peers/bin/python
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_engine import ITEM, PEERS_PY, _read_result, peer_env, run_child
from corpus import realistic_stream

PEER_BUILDS = {"tokengrams": "tokengrams-build", "infini-gram": "infinigram-build", "divsufsort": "divsufsort-sort"}

CHILD = """
import json, sys, time, numpy as np, exposure
from exposure.engine import peak_rss_bytes
path, out, threads, budget = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
t = time.perf_counter()
ix = exposure.build_index(path, out, dtype=np.uint16, vocab_size=50277, item_length=2049, threads=threads,
                          memory_budget_bytes=budget, progress=False)
shards = ix.manifest["shards"]
print(json.dumps({"seconds": time.perf_counter() - t, "peak_rss_bytes": peak_rss_bytes(),
                  "bytes_per_token": ix.manifest["build"]["bytes_per_token"], "shards": ix.num_shards,
                  "sort_seconds": max(s["seconds_sa"] for s in shards),
                  "shard_tokens": max(s["text_tokens"] for s in shards)}))
"""


def random_read_ns(array_bytes: int, reads: int = 1 << 24, repeats: int = 5) -> float:
    """Nanoseconds per random 2-byte read (numpy gather, no bounds checks) within an array of ``array_bytes``,
    the fastest of ``repeats``."""
    a = np.ones(max(array_bytes // 2, 1), dtype=np.uint16)  # touched: resident before timing
    idx = np.random.default_rng(0).integers(0, a.size, reads)
    out = np.empty(reads, dtype=np.uint16)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.take(a, idx, out=out, mode="clip")
        best = min(best, time.perf_counter() - t)
    return best / reads * 1e9


def build_peer(name: str, stream: Path, work: Path, args, shards: int) -> float:
    """Seconds of one build of ``stream`` by the peer ``name`` (peers.py in the peers' interpreter); divsufsort
    sorts as many parts as our build of the stream had ``shards``, ``--threads`` at a time."""
    out, result = work / f"peer-{name}", work / f"peer-{name}.json"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [args.peer_python, str(PEERS_PY), PEER_BUILDS[name], "--tokens", str(stream), "--out-dir", str(out),
           "--threads", str(args.threads), "--parts", str(shards), "--mem-gib", str(args.peer_mem_gib),
           "--item-length", str(ITEM), "--result", str(result)]
    res = _read_result(result, run_child(cmd, args.peer_timeout, work / f"peer-{name}.log", peer_env(args.threads)))
    shutil.rmtree(out, ignore_errors=True)
    if not res.get("ok"):
        raise SystemExit(f"[scaling] {name} build of {stream.name} failed: {res.get('error')}\n"
                         f"{res.get('output_tail', '')}")
    return float(res["seconds"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000_000, 300_000_000])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory-budget", default="8G")
    ap.add_argument("--repeats", type=int, default=3, help="builds per size, alternating sizes (fastest kept)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--peers", default="",
                    help="comma-separated peers to build too: tokengrams, infini-gram, divsufsort (a sort only)")
    ap.add_argument("--peer-python", default="/tmp/peers/bin/python", help="interpreter with the peers installed")
    ap.add_argument("--peer-mem-gib", type=int, default=8, help="infini-gram's --mem (GiB)")
    ap.add_argument("--peer-timeout", type=float, default=3600.0, help="seconds per peer build at most")
    args = ap.parse_args()
    peers = [p for p in args.peers.split(",") if p]
    unknown = sorted(set(peers) - set(PEER_BUILDS))
    if unknown:
        ap.error(f"unknown peer(s) {', '.join(unknown)}; known: {', '.join(PEER_BUILDS)}")
    if peers and not Path(args.peer_python).exists():
        ap.error(f"peer interpreter {args.peer_python} not found (install infini-gram and tokengrams in a venv)")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="exposure-scaling-"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        streams = {}
        for n in args.sizes:
            streams[n] = work / f"stream-{n}.u16"
            print(f"[scaling] generating {n:,} tokens", file=sys.stderr)
            realistic_stream(n).tofile(streams[n])
        runs: dict[int, list[dict]] = {n: [] for n in args.sizes}
        peer_runs: dict[str, dict[int, list[float]]] = {p: {n: [] for n in args.sizes} for p in peers}
        for rep in range(args.repeats):
            for n in args.sizes:
                out = work / f"index-{n}"
                shutil.rmtree(out, ignore_errors=True)
                print(f"[scaling] building {n:,} tokens ({rep + 1}/{args.repeats})", file=sys.stderr)
                t = time.perf_counter()
                proc = subprocess.run([sys.executable, "-c", CHILD, str(streams[n]), str(out), str(args.threads),
                                       args.memory_budget], capture_output=True, text=True, check=True)
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                r.update(tokens=n, wall=time.perf_counter() - t)
                runs[n].append(r)
                shutil.rmtree(out)
                for p in peers:
                    print(f"[scaling] {p}: building {n:,} tokens ({rep + 1}/{args.repeats})", file=sys.stderr)
                    peer_runs[p][n].append(build_peer(p, streams[n], work, args, r["shards"]))
        for n in args.sizes:
            best = min(runs[n], key=lambda r: r["seconds"])
            results.append({**best, "all_seconds": [r["seconds"] for r in runs[n]],
                            "all_sort_seconds": [r["sort_seconds"] for r in runs[n]],
                            "best_sort_seconds": min(r["sort_seconds"] for r in runs[n])})
            streams[n].unlink()
        for r in results:
            r["random_read_ns"] = random_read_ns(2 * r["shard_tokens"])
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    base = results[0]
    print(f"{'tokens':>14} {'build s':>9} {'Mtok/s':>8} {'peak RSS MiB':>13} {'B/token':>8} {'shards':>7} "
          f"{'time ratio':>11} {'size ratio':>11} {'sort ratio':>11} {'read ns':>8}  all builds (s)")
    for r in results:
        print(f"{r['tokens']:>14,} {r['seconds']:>9.2f} {r['tokens'] / r['seconds'] / 1e6:>8.2f} "
              f"{r['peak_rss_bytes'] / 2**20:>13,.0f} {r['bytes_per_token']:>8.3f} {r['shards']:>7} "
              f"{r['seconds'] / base['seconds']:>11.2f} {r['tokens'] / base['tokens']:>11.2f} "
              f"{r['best_sort_seconds'] / base['best_sort_seconds']:>11.2f} {r['random_read_ns']:>8.1f}  "
              + ", ".join(f"{s:.2f}" for s in r["all_seconds"]))
    if len(results) > 1 and args.repeats > 1:
        med = [float(np.median(r["all_seconds"])) for r in results]
        print("ratio of median builds: " + ", ".join(f"{m / med[0]:.2f}" for m in med[1:]))
    peer_results = {p: [{"tokens": n, "seconds": min(t), "all_seconds": t} for n, t in by_size.items()]
                    for p, by_size in peer_runs.items()}
    if peer_results:
        print("\nbuild time ratio to the first size, same streams, same run (fastest builds; medians):")
        rows = {"exposure": [{"tokens": r["tokens"], "seconds": r["seconds"], "all_seconds": r["all_seconds"]}
                             for r in results],
                "  sort only": [{"tokens": r["tokens"], "seconds": r["best_sort_seconds"],
                                 "all_seconds": r["all_sort_seconds"]} for r in results],
                **{p if p != "divsufsort" else "divsufsort (sort only)": rs for p, rs in peer_results.items()}}
        for name, rs in rows.items():
            med0 = float(np.median(rs[0]["all_seconds"]))
            print(f"  {name:<24} " + "; ".join(
                f"{r['tokens']:,}: {r['seconds']:.2f} s, {r['seconds'] / rs[0]['seconds']:.2f}x "
                f"({float(np.median(r['all_seconds'])) / med0:.2f}x)" for r in rs))
    if args.out:
        Path(args.out).write_text(json.dumps({"exposure": results, "peers": peer_results}, indent=1))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()

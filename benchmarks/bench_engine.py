"""Engine benchmark: our suffix-array index against tokengrams and infini-gram, on one realistic stream.

    PYTHONPATH=python:benchmarks .venv/bin/python benchmarks/bench_engine.py \
        --tokens 5000000 --out bench.json                  # small validation run
    ... bench_engine.py                                    # the reference size: 100M tokens
    ... bench_engine.py --no-peers --keep --workdir W      # ours only, keep the files

In one run:

1. generates ``corpus.realistic_stream(n)`` (Zipf ids, phrase-level Markov structure, ~7 % duplicated
   documents) and writes it as a raw uint16 file of 2049-token items (Pythia-like);
2. builds our index in a child process (peak RSS = the child's), with the 154 Pythia checkpoint
   windows scaled to the stream, ``--build-repeats`` times (the fastest build is kept, for the peers
   too: on this shared machine one build's time moves by 10-30 %); builds two adversarial streams
   (one 100k-token document repeated n/100k times, one document per item; a single token repeated
   min(10^7, n) times as one item) and reports their build time per token relative to the realistic
   stream of the same length;
3. queries our index (warm): batched count throughput, and per-query latency (median / p99, one
   phrase per call, ``time.perf_counter_ns``) of count, first_position and window_counts over the
   Pythia windows, for ordinary phrases (sampled from the stream) and very frequent ones (the most
   frequent unigrams and bigrams: > 10^6 occurrences at 100M tokens);
4. builds and queries the peers in subprocesses run by their own interpreter (``benchmarks/peers.py``
   under ``--peer-python``): tokengrams (MemmapIndex over the same raw file) and infini-gram (its
   indexing pipeline replicated for pre-tokenized u16 data: 0xFFFF before every item, then its
   ``rust_indexing`` make-part / merge / concat), same phrases; checks their answers against ours;
5. prints a table with ours vs the peers and the ratios, and writes everything to ``--out``.

A peer that cannot be built or queried is reported with the reason; the rest still runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PEERS_PY = HERE / "peers.py"
VOCAB = 50277
ITEM = 2049
PYTHIA_CHECKPOINTS = [0] + [2**i for i in range(10)] + list(range(1000, 143001, 1000))  # 154
PYTHIA_LAST = 143000


# ------------------------------------------------------------------------------------------
# small helpers


def pythia_boundaries(n: int) -> np.ndarray:
    """The 154 Pythia checkpoints mapped to stream offsets proportionally (step/143000 * n),
    deduplicated, strictly increasing, from 0 to n."""
    b = np.floor(np.asarray(PYTHIA_CHECKPOINTS, dtype=np.float64) / PYTHIA_LAST * n).astype(np.int64)
    b[-1] = n
    return np.unique(b)


def parse_size(text: str) -> int:
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", str(text), re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"cannot read a size from {text!r} (try 8G, 512M)")
    return int(float(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2).upper()])


def dir_bytes(path: Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def lat_stats(samples_ns) -> dict:
    if len(samples_ns) == 0:
        return {"n": 0}
    a = np.asarray(samples_ns, dtype=np.float64) / 1e3
    return {"n": int(a.size), "median_us": round(float(np.median(a)), 2), "p99_us": round(float(np.percentile(a, 99)), 2),
            "mean_us": round(float(a.mean()), 2), "max_us": round(float(a.max()), 2)}


def _proc_tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return out


_PAGE = os.sysconf("SC_PAGE_SIZE")


def _tree_rss(pid: int) -> int:
    total = 0
    for p in _proc_tree(pid):
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * _PAGE
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            pass
    return total


def run_child(cmd: list[str], timeout: float, log: Path, env: dict | None = None) -> dict:
    """Runs cmd in its own session with a timeout, sampling the summed RSS of its process tree
    every 50 ms (a peer's build may run several processes at once)."""
    t0 = time.perf_counter()
    with open(log, "wb") as lf:
        p = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        peak, timed_out = 0, False
        while p.poll() is None:
            peak = max(peak, _tree_rss(p.pid))
            if time.perf_counter() - t0 > timeout:
                timed_out = True
                try:
                    os.killpg(p.pid, signal.SIGKILL)  # the session this call started
                except ProcessLookupError:
                    pass
                p.wait()
                break
            time.sleep(0.05)
    wall = time.perf_counter() - t0
    tail = log.read_bytes()[-3000:].decode(errors="replace") if log.exists() else ""
    return {"rc": p.returncode, "wall_seconds": round(wall, 3), "tree_peak_rss_bytes": peak, "timed_out": timed_out,
            "output_tail": tail}


def vm_hwm() -> int:
    """Peak RSS of this process since exec (VmHWM); ru_maxrss would include the forked image of the
    parent (Linux keeps it across exec), i.e. the benchmark driver's memory."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _peak_rss(res: dict, child: dict) -> int:
    peak = int(max(res.get("self_maxrss_bytes", 0), child.get("tree_peak_rss_bytes", 0)))
    if "import_rss_bytes" in res:  # the interpreter and imported modules, before the build started
        res["peak_rss_above_imports_bytes"] = peak - int(res["import_rss_bytes"])
    return peak


# ------------------------------------------------------------------------------------------
# our build (child process)


def child_build(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    sys.path.insert(0, str(REPO / "python"))
    res: dict = {"ok": False}
    try:
        import exposure

        import_rss = vm_hwm()
        t = time.perf_counter()
        idx = exposure.build_index(spec["tokens"], spec["out"], dtype=np.uint16, vocab_size=spec["vocab_size"],
                                   item_length=spec["item_length"], threads=spec["threads"],
                                   memory_budget_bytes=spec["memory_budget"],
                                   windows={"pythia": np.asarray(spec["windows"], dtype=np.int64)}, progress=False)
        dt = time.perf_counter() - t
        n = int(idx.num_tokens)
        disk = dir_bytes(Path(spec["out"]))
        res = {"ok": True, "seconds": round(dt, 3), "tokens": n, "items": int(idx.num_items),
               "tokens_per_second": round(n / dt, 1), "bytes_on_disk": disk, "bytes_per_token": round(disk / n, 4),
               "shards": int(idx.num_shards), "import_rss_bytes": import_rss, "engine_build": idx.manifest.get("build")}
    except Exception as e:  # reported to the parent
        import traceback

        res = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
    res["self_maxrss_bytes"] = vm_hwm()
    Path(spec["result"]).write_text(json.dumps(res, indent=1) + "\n")
    return 0 if res["ok"] else 1


def build_ours(work: Path, name: str, tokens: Path, n: int, item_length: int | None, args) -> dict:
    out = work / f"ours-{name}"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(out.with_name(out.name + ".partial"), ignore_errors=True)
    spec = {"tokens": str(tokens), "out": str(out), "vocab_size": VOCAB, "item_length": item_length,
            "threads": args.threads, "memory_budget": args.memory_budget,
            "windows": pythia_boundaries(n).tolist(), "result": str(work / f"ours-{name}.result.json")}
    spec_path = work / f"ours-{name}.spec.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "python"), str(HERE), env.get("PYTHONPATH", "")])
    child = run_child([sys.executable, str(Path(__file__).resolve()), "_child_build", str(spec_path)],
                      args.build_timeout, work / f"ours-{name}.log", env)
    res = _read_result(Path(spec["result"]), child)
    if res.get("ok"):
        res["peak_rss_bytes"] = _peak_rss(res, child)
        res["peak_rss_note"] = "max of the build process's VmHWM and its sampled (50 ms) process-tree RSS"
    res["index_dir"] = str(out)
    res["item_length"] = item_length
    return res


def fastest(builds: list[dict]) -> dict:
    """The fastest successful build (the first one if none succeeded), with every build's time."""
    ok = [b for b in builds if b.get("ok")]
    best = dict(min(ok, key=lambda b: b["seconds"]) if ok else builds[0])
    best["all_seconds"] = [b.get("seconds") for b in builds]
    return best


def _read_result(path: Path, child: dict) -> dict:
    try:
        res = json.loads(path.read_text())
    except Exception:
        why = "timed out" if child.get("timed_out") else f"exited with status {child.get('rc')} without a result"
        res = {"ok": False, "error": f"child process {why}", "output_tail": child.get("output_tail", "")[-1500:]}
    res["child"] = {k: v for k, v in child.items() if k != "output_tail"}
    return res


# ------------------------------------------------------------------------------------------
# phrases


def frequent_phrases(stream: np.ndarray, k_uni: int, k_bi: int) -> list[np.ndarray]:
    """The k_uni most frequent tokens and the k_bi most frequent bigrams (bigrams counted among those
    starting with one of the 64 most frequent tokens, in chunks so memory stays small)."""
    uni = np.bincount(stream, minlength=1 << 16)
    order = np.argsort(uni, kind="stable")[::-1]
    top = order[:64]
    rank = np.full(1 << 16, -1, dtype=np.int64)
    rank[top] = np.arange(top.size)
    bc = np.zeros(top.size << 16, dtype=np.int64)
    chunk = 1 << 24
    for s in range(0, stream.size - 1, chunk):
        a = stream[s : min(s + chunk, stream.size - 1)]
        b = stream[s + 1 : s + 1 + a.size]
        r = rank[a]
        m = r >= 0
        bc += np.bincount((r[m] << 16) + b[m].astype(np.int64), minlength=bc.size)
    top_bi = np.argsort(bc, kind="stable")[::-1][:k_bi]
    out = [np.array([t], dtype=np.uint16) for t in order[:k_uni] if uni[t] > 0]
    out += [np.array([top[k >> 16], k & 0xFFFF], dtype=np.uint16) for k in top_bi if bc[k] > 0]
    return out


def write_phrase_file(path: Path, phrases, lat_idx, freq, reps: int) -> None:
    def csr(ps):
        off = np.zeros(len(ps) + 1, dtype=np.int64)
        off[1:] = np.cumsum([len(p) for p in ps])
        tok = np.concatenate([np.asarray(p, dtype=np.uint16) for p in ps]) if ps else np.zeros(0, np.uint16)
        return tok, off

    t, o = csr(phrases)
    ft, fo = csr(freq)
    np.savez(path, tokens=t, offsets=o, lat_idx=np.asarray(lat_idx, dtype=np.int64), freq_tokens=ft, freq_offsets=fo,
             reps=np.int64(reps))


# ------------------------------------------------------------------------------------------
# our queries


def per_call(fn, phrases, reps: int = 1) -> tuple[list[int], list]:
    for p in phrases:  # warm pass
        fn(p)
    samples, results = [], []
    for r in range(reps):
        for p in phrases:
            s = time.perf_counter_ns()
            out = fn(p)
            samples.append(time.perf_counter_ns() - s)
            if r == 0:
                results.append(out)
    return samples, results


def query_ours(index_dir: str, phrases, lat, freq, bounds: np.ndarray, reps: int, passes: int) -> tuple[dict, dict]:
    sys.path.insert(0, str(REPO / "python"))
    import exposure

    idx = exposure.Index(index_dir)
    res: dict = {}
    answers: dict = {}
    # batched count throughput: one call over all phrases, warm
    counts = idx.count(phrases)
    times = []
    for _ in range(passes):
        t = time.perf_counter()
        c2 = idx.count(phrases)
        times.append(time.perf_counter() - t)
    assert np.array_equal(counts, c2)
    med = float(np.median(times))
    res["count_throughput"] = {"phrases": len(phrases), "passes": passes, "seconds_median": round(med, 5),
                               "seconds_best": round(min(times), 5), "phrases_per_second": round(len(phrases) / med, 1),
                               "mode": "one batched call"}
    answers["counts"] = counts
    b1 = np.asarray(bounds, dtype=np.int64)

    def cnt(p):
        return int(idx.count([p])[0])

    def first(p):
        return int(idx.first_position([p])[0])

    def win(p):
        return idx.window_counts([p], b1)

    for label, ps, r in (("ordinary", lat, 1), ("frequent", freq, reps)):
        s, out = per_call(cnt, ps, r)
        res[f"count_latency_{label}"] = lat_stats(s)
        answers[f"count_{label}"] = np.asarray(out, dtype=np.int64)
        s, out = per_call(first, ps, r)
        res[f"first_latency_{label}"] = {**lat_stats(s), "method": "first_position([p])"}
        answers[f"first_{label}"] = np.asarray(out, dtype=np.int64)
        s, out = per_call(win, ps, r)
        res[f"window_latency_{label}"] = {**lat_stats(s), "windows": int(b1.size - 1)}
        # window counts must add up to the counts (all windows together cover the stream)
        tot = np.asarray([int(o.sum()) for o in out], dtype=np.int64)
        res[f"window_sums_match_counts_{label}"] = bool(np.array_equal(tot, answers[f"count_{label}"]))
    return res, answers


# ------------------------------------------------------------------------------------------
# peers


def peer_env(threads: int) -> dict[str, str]:
    """Environment for a peers.py child: without our PYTHONPATH, with the peers held to ``threads``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["RAYON_NUM_THREADS"] = str(threads)  # tokengrams' sort and rust_indexing use rayon
    env["OMP_NUM_THREADS"] = str(threads)
    env["TRANSFORMERS_VERBOSITY"] = "error"
    return env


def run_peers(args, work: Path, tokens: Path, phrase_file: Path, answers: dict, lat_idx, freq) -> dict:
    out: dict = {}
    py = args.peer_python
    if not Path(py).exists():
        msg = f"peer interpreter {py} not found (install infini-gram and tokengrams in a venv, pass --peer-python)"
        return {"tokengrams": {"ok": False, "error": msg}, "infini-gram": {"ok": False, "error": msg}}
    env = peer_env(args.threads)
    mem_gib = max(1, args.memory_budget >> 30)
    specs = {
        "tokengrams": ("tokengrams-build", "tokengrams-query", ["--tokens", str(tokens)]),
        "infini-gram": ("infinigram-build", "infinigram-query",
                        ["--tokens", str(tokens), "--item-length", str(ITEM), "--mem-gib", str(mem_gib)]),
    }
    for name in args.peer_list:
        build_step, query_step, extra = specs[name]
        d = work / f"peer-{name}"
        shutil.rmtree(d, ignore_errors=True)
        common = ["--out-dir", str(d), "--threads", str(args.threads), "--budget", str(args.peer_budget)]
        builds = []
        for k in range(args.build_repeats):  # the last build's index answers the queries
            print(f"[bench] {name}: build ({k + 1}/{args.build_repeats})", flush=True)
            shutil.rmtree(d, ignore_errors=True)
            rj = work / f"peer-{name}.build.json"
            child = run_child([py, str(PEERS_PY), build_step, *common, *extra, "--result", str(rj)],
                              args.peer_timeout, work / f"peer-{name}.build.log", env)
            b = _read_result(rj, child)
            if b.get("ok"):
                b["peak_rss_bytes"] = _peak_rss(b, child)
                b["peak_rss_note"] = "max of the build process's VmHWM and the sampled (50 ms) RSS sum of its process tree"
            builds.append(b)
            if not b.get("ok"):
                break
        b = fastest(builds) if builds[-1].get("ok") else builds[-1]
        entry = {"build": b}
        if b.get("ok"):
            print(f"[bench] {name}: queries", flush=True)
            qj = work / f"peer-{name}.query.json"
            child = run_child([py, str(PEERS_PY), query_step, *common, *extra, "--phrases", str(phrase_file),
                               "--result", str(qj)], args.peer_timeout, work / f"peer-{name}.query.log", env)
            q = _read_result(qj, child)
            if q.get("ok"):
                q["agreement"] = agreement(name, q, answers, qj)
            entry["queries"] = q
        entry["ok"] = bool(b.get("ok")) and bool(entry.get("queries", {}).get("ok"))
        if not entry["ok"]:
            entry["error"] = (f"build ({build_step}): {b.get('error')}" if not b.get("ok")
                              else f"queries ({query_step}): {entry.get('queries', {}).get('error')}")
            print(f"[bench] {name}: FAILED: {entry['error']}", flush=True)
        out[name] = entry
        if not args.keep:
            shutil.rmtree(d, ignore_errors=True)
    return out


def agreement(name: str, q: dict, answers: dict, qj: Path) -> dict:
    ag: dict = {}
    try:
        pc = np.load(str(qj).replace(".json", ".counts.npy"))
        done = int(q["count_throughput"]["phrases"])
        ours = answers["counts"][:done]
        ag["counts_equal_fraction"] = round(float(np.mean(pc[:done] == ours)), 6)
        ag["counts_peer_greater_fraction"] = round(float(np.mean(pc[:done] > ours)), 6)
        ag["counts_peer_smaller_fraction"] = round(float(np.mean(pc[:done] < ours)), 6)
        pf = np.load(str(qj).replace(".json", ".first_ordinary.npy"))
        of = answers["first_ordinary"][: pf.size]
        ag["first_ordinary_equal_fraction"] = round(float(np.mean(pf == of)), 6) if pf.size else None
        fc = np.asarray(q.get("frequent_counts", []), dtype=np.int64)
        ag["frequent_counts_equal"] = bool(np.array_equal(fc, answers["count_frequent"][: fc.size]))
        ff = np.asarray(q.get("frequent_first", []), dtype=np.int64)
        ag["frequent_first_equal"] = bool(np.array_equal(ff, answers["first_frequent"][: ff.size]))
        if name == "tokengrams":
            ag["note"] = ("tokengrams indexes the raw stream without item boundaries, so it also counts matches that "
                          "cross an item boundary (peer >= ours); ours and infini-gram stop at boundaries")
    except Exception as e:
        ag["error"] = f"{type(e).__name__}: {e}"
    return ag


# ------------------------------------------------------------------------------------------
# report


def _g(d: dict, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def comparison(res: dict) -> dict:
    ours = res["ours"]
    peers = {k: v for k, v in res.get("peers", {}).items()}
    rows = []

    def row(label, path_ours, path_peer, better, unit, fmt):
        o = _g(ours, *path_ours)
        pv = {k: _g(v, *path_peer) for k, v in peers.items()}
        pvals = {k: x for k, x in pv.items() if isinstance(x, (int, float)) and x}
        ref = None
        ratio = None
        if isinstance(o, (int, float)) and pvals:
            ref = (max if better == "higher" else min)(pvals, key=pvals.get)
            ratio = o / pvals[ref]
        rows.append({"metric": label, "unit": unit, "better": better, "ours": o, "peers": pv,
                     "reference_peer": ref, "ratio_ours_to_reference": None if ratio is None else round(ratio, 4),
                     "fmt": fmt})

    row("build time", ["build", "seconds"], ["build", "seconds"], "lower", "s", "{:.2f}")
    row("build speed", ["build", "tokens_per_second"], ["build", "tokens_per_second"], "higher", "Mtok/s", "M")
    row("build peak RSS", ["build", "peak_rss_bytes"], ["build", "peak_rss_bytes"], "lower", "MiB", "MiB")
    row("build peak RSS above imports", ["build", "peak_rss_above_imports_bytes"], ["build", "peak_rss_above_imports_bytes"],
        "lower", "MiB", "MiB")
    row("bytes per token on disk", ["build", "bytes_per_token"], ["build", "bytes_per_token"], "lower", "B/tok", "{:.2f}")
    row("count throughput", ["queries", "count_throughput", "phrases_per_second"],
        ["queries", "count_throughput", "phrases_per_second"], "higher", "phrases/s", "{:,.0f}")
    for label in ("ordinary", "frequent"):
        for stat in ("median_us", "p99_us"):
            s = stat.split("_")[0]
            row(f"count latency {label} {s}", ["queries", f"count_latency_{label}", stat],
                ["queries", f"count_latency_{label}", stat], "lower", "us", "{:.1f}")
    for label in ("ordinary", "frequent"):
        for stat in ("median_us", "p99_us"):
            s = stat.split("_")[0]
            row(f"first occurrence {label} {s}", ["queries", f"first_latency_{label}", stat],
                ["queries", f"first_latency_{label}", stat], "lower", "us", "{:.1f}")
    for label in ("ordinary", "frequent"):
        for stat in ("median_us", "p99_us"):
            s = stat.split("_")[0]
            row(f"window_counts {label} {s}", ["queries", f"window_latency_{label}", stat], ["-"], "lower", "us", "{:.1f}")
    return {"rows": rows}


def _fmt(v, fmt):
    if v is None:
        return "-"
    if fmt == "M":
        return f"{v / 1e6:.2f}"
    if fmt == "MiB":
        return f"{v / 2**20:,.0f}"
    try:
        return fmt.format(v)
    except (ValueError, TypeError):
        return str(v)


def print_table(res: dict) -> None:
    rows = res["comparison"]["rows"]
    names = list(res.get("peers", {}).keys())
    hdr = ["metric", "unit", "ours", *names, "ours/best peer"]
    lines = []
    for r in rows:
        ratio = r["ratio_ours_to_reference"]
        rtxt = "-" if ratio is None else f"{ratio:.3g}x vs {r['reference_peer']} ({r['better']} is better)"
        lines.append([r["metric"], r["unit"], _fmt(r["ours"], r["fmt"]), *[_fmt(r["peers"].get(n), r["fmt"]) for n in names], rtxt])
    w = [max(len(str(x)) for x in col) for col in zip(hdr, *lines)]
    sep = "  "
    print()
    print(sep.join(h.ljust(w[i]) for i, h in enumerate(hdr)))
    print(sep.join("-" * x for x in w))
    for ln in lines:
        print(sep.join(str(c).ljust(w[i]) if i < 2 else str(c).rjust(w[i]) if i < len(ln) - 1 else str(c)
                       for i, c in enumerate(ln)))
    print("\ncount throughput: ours = one batched count() call over all phrases (median of passes); the peers have no "
          "batch count, so theirs is a loop of single calls. Latencies: one phrase per call, warm, perf_counter_ns "
          "around the call (peers get the phrase as a list of ints, ours as a numpy array). First occurrence: ours "
          "first_position(); tokengrams min(positions()); infini-gram find() + min over the suffix-array range.")
    times = {"ours": res["ours"]["build"].get("all_seconds")}
    times.update({n: p.get("build", {}).get("all_seconds") for n, p in res.get("peers", {}).items()})
    print("build times (s), fastest kept: " + "; ".join(f"{n} {t}" for n, t in times.items() if t))
    adv = res["ours"].get("adversarial", {})
    if adv:
        print()
        print("adversarial builds (ours; time per token relative to the realistic stream of the same length, target <= 3x):")
        for k, v in adv.items():
            if k.startswith("baseline_"):
                print(f"  {'(' + k + ')':<28} {v.get('tokens', 0):>12,} tokens  {v.get('seconds', float('nan')):8.2f} s  realistic baseline")
            elif v.get("ok") and v.get("relative_to_realistic") is not None:
                print(f"  {k:<28} {v['tokens']:>12,} tokens  {v['seconds']:8.2f} s  "
                      f"{v['relative_to_realistic']:.2f}x  (baseline {v['baseline']}; peak RSS {v['peak_rss_bytes'] / 2**20:,.0f} MiB)"
                      f"  {'OK' if v['relative_to_realistic'] <= 3 else 'OVER 3x'}")
            else:
                print(f"  {k:<28} FAILED: {v.get('error')}")
    for name, p in res.get("peers", {}).items():
        if not p.get("ok"):
            print(f"\npeer {name} did not run: {p.get('error')}")
        ag = _g(p, "queries", "agreement")
        if ag:
            print(f"\n{name} answers vs ours: " + ", ".join(f"{k}={v}" for k, v in ag.items() if k != "note"))
    fr = res.get("phrases", {}).get("frequent", [])
    if fr:
        print(f"\nfrequent phrases: {len(fr)}, occurrences {min(f['count'] for f in fr):,} .. {max(f['count'] for f in fr):,}"
              f" ({sum(f['count'] > 10**6 for f in fr)} with > 10^6)")


# ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_child_build":
        return child_build(argv[1])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=100_000_000, help="stream length (default 100M)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory-budget", type=parse_size, default=parse_size("8G"), help="build memory budget (8G)")
    ap.add_argument("--queries", type=int, default=100_000, help="phrases for the batched count throughput")
    ap.add_argument("--latency-queries", type=int, default=2000, help="ordinary phrases timed one per call")
    ap.add_argument("--frequent", type=int, default=10, help="very frequent unigrams and as many bigrams")
    ap.add_argument("--frequent-reps", type=int, default=5, help="timed calls per very frequent phrase")
    ap.add_argument("--passes", type=int, default=3, help="timed passes of the batched count (median)")
    ap.add_argument("--peers", dest="peers", action="store_true", default=True)
    ap.add_argument("--no-peers", dest="peers", action="store_false")
    ap.add_argument("--peer-list", nargs="+", default=["tokengrams", "infini-gram"], choices=["tokengrams", "infini-gram"])
    ap.add_argument("--peer-python", default="/tmp/peers/bin/python", help="interpreter with infini-gram and tokengrams")
    ap.add_argument("--peer-timeout", type=float, default=3600, help="seconds per peer subprocess")
    ap.add_argument("--peer-budget", type=float, default=60, help="seconds per timed peer query loop at most")
    ap.add_argument("--build-timeout", type=float, default=3600, help="seconds per build of ours")
    ap.add_argument("--build-repeats", type=int, default=2,
                    help="builds per engine, the fastest kept (one build's time here moves by 10-30 %%)")
    ap.add_argument("--no-adversarial", dest="adversarial", action="store_false", default=True)
    ap.add_argument("--out", type=Path, default=None, help="write the results (JSON) here")
    ap.add_argument("--workdir", type=Path, default=None, help="where the stream and indexes go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the workdir's files")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.tokens < 10_000:
        ap.error("--tokens must be at least 10000")
    if args.build_repeats < 1:
        ap.error("--build-repeats must be at least 1")

    sys.path.insert(0, str(HERE))
    import corpus

    own_tmp = args.workdir is None
    work = Path(tempfile.mkdtemp(prefix="bench-engine-")) if own_tmp else args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    created: list[Path] = []
    n = args.tokens
    res: dict = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"cpu_count": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
                    "platform": platform.platform(), "loadavg_start": os.getloadavg()},
        "ours": {},
    }
    t_start = time.perf_counter()
    try:
        # 1. the stream
        print(f"[bench] generating a realistic stream of {n:,} tokens", flush=True)
        t = time.perf_counter()
        stream = corpus.realistic_stream(n, seed=args.seed)
        gen_s = time.perf_counter() - t
        tokens = work / "stream.u16"
        created.append(tokens)
        stream.astype("<u2").tofile(tokens)
        bounds = pythia_boundaries(n)
        res["stream"] = {"tokens": n, "item_length": ITEM, "items": -(-n // ITEM), "vocab_size": VOCAB,
                         "distinct_tokens": int(np.count_nonzero(np.bincount(stream, minlength=1 << 16))),
                         "generate_seconds": round(gen_s, 2), "file": str(tokens), "window_boundaries": int(bounds.size),
                         "windows": int(bounds.size - 1)}

        # 2. our build
        print("[bench] ours: build", flush=True)
        builds = [build_ours(work, "realistic", tokens, n, ITEM, args)]
        created.append(Path(builds[0]["index_dir"]))
        for k in range(1, args.build_repeats):  # timed only; the first build's index answers the queries
            print(f"[bench] ours: build ({k + 1}/{args.build_repeats})", flush=True)
            builds.append(build_ours(work, f"realistic-{k}", tokens, n, ITEM, args))
            shutil.rmtree(builds[-1]["index_dir"], ignore_errors=True)
        b = {**fastest(builds), "index_dir": builds[0]["index_dir"]}
        res["ours"]["build"] = b
        if not b.get("ok"):
            raise RuntimeError(f"our build failed: {b.get('error')}\n{b.get('traceback', b.get('output_tail', ''))}")

        # 3. phrases + our queries
        phrases = corpus.sample_phrases(stream, args.queries)
        lat_idx = np.arange(min(args.latency_queries, len(phrases)))
        lat = [phrases[i] for i in lat_idx]
        freq = frequent_phrases(stream, args.frequent, args.frequent)
        print(f"[bench] ours: queries ({len(phrases):,} phrases, {len(lat)} timed singly, {len(freq)} frequent)", flush=True)
        q, answers = query_ours(b["index_dir"], phrases, lat, freq, bounds, args.frequent_reps, args.passes)
        res["ours"]["queries"] = q
        res["phrases"] = {
            "sampled": len(phrases), "lengths": [1, 6], "latency_set": len(lat), "frequent_reps": args.frequent_reps,
            "sampled_found_fraction": round(float(np.mean(answers["counts"] > 0)), 4),
            "frequent": [{"tokens": [int(x) for x in p], "count": int(c), "first_position": int(f)}
                         for p, c, f in zip(freq, answers["count_frequent"], answers["first_frequent"])],
        }
        phrase_file = work / "phrases.npz"
        created.append(phrase_file)
        write_phrase_file(phrase_file, phrases, lat_idx, freq, args.frequent_reps)

        # adversarial streams
        if args.adversarial:
            res["ours"]["adversarial"] = adversarial(args, work, stream, b, created)
        del stream

        # 4. peers
        if args.peers:
            res["peers"] = run_peers(args, work, tokens, phrase_file, answers, lat_idx, freq)
        # 5. report
        res["comparison"] = comparison(res)
        res["seconds_total"] = round(time.perf_counter() - t_start, 1)
        res["machine"]["loadavg_end"] = os.getloadavg()
        print_table(res)
        return_code = 0
    except Exception as e:
        import traceback

        res["error"] = f"{type(e).__name__}: {e}"
        res["traceback"] = traceback.format_exc()
        print(res["traceback"], file=sys.stderr)
        return_code = 1
    finally:
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(res, indent=1, default=_json_default) + "\n")
            print(f"\n[bench] results written to {args.out}")
        if not args.keep:
            if own_tmp:
                shutil.rmtree(work, ignore_errors=True)
            else:
                for p in created:
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                for p in work.glob("ours-*"):
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                for p in work.glob("peer-*"):
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        else:
            print(f"[bench] files kept in {work}")
    return return_code


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def adversarial(args, work: Path, stream: np.ndarray, main_build: dict, created: list[Path]) -> dict:
    """Builds the adversarial streams and a realistic baseline of the same length where needed;
    reports build time per token relative to the realistic stream."""
    n = stream.size
    out: dict = {}
    doc = 100_000
    cases = []
    if n >= 2 * doc:
        reps = n // doc
        cases.append(("repeated_100k_document", lambda: np.tile(stream[:doc], reps), reps * doc, doc,
                      f"stream[:100000] repeated {reps} times, one item per copy"))
    m = min(10**7, n)
    cases.append(("single_token_run", lambda: np.full(m, 42, dtype=np.uint16), m, None,
                  f"token 42 repeated {m:,} times, one item"))
    baselines: dict[int, tuple[float, str]] = {n: (main_build["seconds"] / n, "main realistic build")}
    for name, make, length, item_len, desc in cases:
        print(f"[bench] ours: adversarial build {name}", flush=True)
        path = work / f"adv-{name}.u16"
        created.append(path)
        make().astype("<u2").tofile(path)
        r = build_ours(work, f"adv-{name}", path, length, item_len, args)
        path.unlink(missing_ok=True)
        shutil.rmtree(r["index_dir"], ignore_errors=True)
        r["description"] = desc
        if length not in baselines:
            print(f"[bench] ours: realistic baseline of {length:,} tokens", flush=True)
            bp = work / f"adv-baseline-{length}.u16"
            created.append(bp)
            stream[:length].astype("<u2").tofile(bp)
            rb = build_ours(work, f"baseline-{length}", bp, length, ITEM, args)
            bp.unlink(missing_ok=True)
            shutil.rmtree(rb["index_dir"], ignore_errors=True)
            if rb.get("ok"):
                baselines[length] = (rb["seconds"] / length, f"realistic stream[:{length}] ({rb['seconds']} s)")
                out[f"baseline_{length}"] = rb
        if r.get("ok") and length in baselines:
            per_tok, what = baselines[length]
            r["relative_to_realistic"] = round((r["seconds"] / length) / per_tok, 3)
            r["baseline"] = what
            r["within_3x"] = r["relative_to_realistic"] <= 3
        elif r.get("ok"):
            r["relative_to_realistic"] = None
            r["baseline"] = "baseline build failed"
        out[name] = r
    return out


if __name__ == "__main__":
    sys.exit(main())

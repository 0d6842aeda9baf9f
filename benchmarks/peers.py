"""Peer-engine side of ``bench_engine.py``: builds and queries tokengrams and infini-gram indexes.

Run by the *peers'* interpreter (their own virtual environment, e.g. ``/tmp/peers/bin/python``), one
step per process so that a build's peak RSS is its own process tree's:

    python peers.py tokengrams-build  --tokens T.u16 --out-dir D --threads 2 --result R.json
    python peers.py tokengrams-query  --tokens T.u16 --out-dir D --phrases P.npz --result R.json
    python peers.py infinigram-build  --tokens T.u16 --out-dir D --threads 2 --mem-gib 8 --item-length 2049 --result R.json
    python peers.py infinigram-query  --out-dir D --phrases P.npz --item-length 2049 --result R.json
    python peers.py divsufsort-sort   --tokens T.u16 --out-dir D --threads 2 --parts 2 --result R.json

``divsufsort-sort`` is not an index build: it only sorts suffixes, with libdivsufsort (pydivsufsort), a
different suffix-sorting algorithm than SA-IS, for bench_scaling.py's question of how much the machine charges
any suffix sort as the text grows.

Only numpy and the peer packages are imported (not ``exposure``). Every step writes a JSON result
(``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``); count arrays are written next to it as
``.npy`` so the caller can check them against its own answers.

Phrase file (written by bench_engine.py): ``tokens``/``offsets`` (all phrases, CSR layout),
``lat_idx`` (indices of the per-query latency set), ``freq_tokens``/``freq_offsets`` (the very
frequent phrases), ``reps`` (timed repetitions of each frequent phrase).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

HACK = 100_000  # infini-gram's overlap between suffix-array parts (bytes), as in infini_gram/indexing.py
SEP16 = 0xFFFF


# ------------------------------------------------------------------------------------------
# helpers


def _vm_hwm() -> int:
    """Peak RSS of this process since it was exec'd (VmHWM). ru_maxrss is not used for the process
    itself: Linux carries it over from the forked image of the parent across exec, so it would
    include the benchmark driver's memory."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _rss() -> dict:
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"self_maxrss_bytes": _vm_hwm(), "children_maxrss_bytes": child_kb * 1024,
            "children_maxrss_note": "largest single child process (ru_maxrss, includes this process's size at fork)"}


def _dir_bytes(paths) -> int:
    total = 0
    for p in paths:
        p = Path(p)
        if p.is_file():
            total += p.stat().st_size
        elif p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return total


def _stats_ns(samples: list[int]) -> dict:
    if not samples:
        return {"n": 0}
    a = np.asarray(samples, dtype=np.float64) / 1e3  # microseconds
    return {
        "n": int(a.size),
        "median_us": round(float(np.median(a)), 2),
        "p99_us": round(float(np.percentile(a, 99)), 2),
        "mean_us": round(float(a.mean()), 2),
        "max_us": round(float(a.max()), 2),
    }


def _load_phrases(path: str):
    z = np.load(path)

    def split(tok, off):
        return [[int(x) for x in tok[off[i] : off[i + 1]]] for i in range(off.size - 1)]

    allp = split(z["tokens"], z["offsets"])
    lat = [allp[i] for i in z["lat_idx"]]
    freq = split(z["freq_tokens"], z["freq_offsets"])
    reps = int(z["reps"])
    return allp, lat, freq, reps


def _timed_loop(fn, phrases, budget_s: float, reps: int = 1, warm: bool = True):
    """Per-call latencies (ns) of fn(p) over phrases (each `reps` times), one untimed warm pass
    first; stops early once budget_s is spent (at least one timed call per phrase when possible)."""
    if warm:
        t0 = time.perf_counter()
        for p in phrases:
            fn(p)
            if time.perf_counter() - t0 > budget_s / 2:
                break
    samples: list[int] = []
    results = []
    t0 = time.perf_counter()
    truncated = False
    for r in range(reps):
        for p in phrases:
            s = time.perf_counter_ns()
            out = fn(p)
            samples.append(time.perf_counter_ns() - s)
            if r == 0:
                results.append(out)
            if time.perf_counter() - t0 > budget_s:
                truncated = True
                break
        if truncated:
            break
    return samples, results, truncated


def _throughput(fn, phrases, budget_s: float):
    """Looped single calls (the peers have no batch count): phrases/s over as many as fit the budget."""
    for p in phrases[: min(len(phrases), 1000)]:  # warm
        fn(p)
    out = np.full(len(phrases), -1, dtype=np.int64)
    t0 = time.perf_counter()
    done = 0
    for i, p in enumerate(phrases):
        out[i] = fn(p)
        done = i + 1
        if (i & 255) == 0 and time.perf_counter() - t0 > budget_s:
            break
    dt = time.perf_counter() - t0
    return {"phrases": done, "of": len(phrases), "seconds": round(dt, 4),
            "phrases_per_second": round(done / dt, 1) if dt > 0 else None,
            "mode": "looped single calls (no batch count API)"}, out


# ------------------------------------------------------------------------------------------
# tokengrams


def _tokengrams():
    """The native tokengrams module, loaded without the package's __init__ (which imports
    transformers, ~130 MB of RSS that would be charged to the build)."""
    import importlib.machinery
    import importlib.util

    try:
        pkg = Path(importlib.util.find_spec("tokengrams").origin).parent
        so = next(pkg.glob("tokengrams*.so"))
        loader = importlib.machinery.ExtensionFileLoader("tokengrams", str(so))
        spec = importlib.util.spec_from_file_location("tokengrams", so, loader=loader)
        mod = importlib.util.module_from_spec(spec)
        loader.exec_module(mod)
        return mod
    except Exception:
        import tokengrams

        return tokengrams


def tokengrams_build(a) -> dict:
    tokengrams = _tokengrams()
    import_rss = _rss()["self_maxrss_bytes"]

    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = out / "tokens.table"
    t = time.perf_counter()
    tokengrams.MemmapIndex.build(a.tokens, str(table), vocab=2**16, verbose=False)
    dt = time.perf_counter() - t
    n = os.path.getsize(a.tokens) // 2
    files = _dir_bytes([a.tokens, table])
    return {"ok": True, "seconds": round(dt, 3), "tokens": n, "tokens_per_second": round(n / dt, 1),
            "bytes_on_disk": files, "bytes_per_token": round(files / n, 4),
            "bytes_on_disk_note": "raw token file (used in place) + 8-byte suffix table",
            "version": _version("tokengrams"), "import_rss_bytes": import_rss, **_rss()}


def tokengrams_query(a) -> dict:
    tokengrams = _tokengrams()

    idx = tokengrams.MemmapIndex(a.tokens, str(Path(a.out_dir) / "tokens.table"), vocab=2**16)
    allp, lat, freq, reps = _load_phrases(a.phrases)
    res: dict = {"ok": True}
    thr, counts = _throughput(idx.count, allp, a.budget)
    res["count_throughput"] = thr
    np.save(a.result.replace(".json", ".counts.npy"), counts)
    s, _, tr = _timed_loop(idx.count, lat, a.budget)
    res["count_latency_ordinary"] = {**_stats_ns(s), "truncated": tr}
    s, fc, tr = _timed_loop(idx.count, freq, a.budget, reps=reps)
    res["count_latency_frequent"] = {**_stats_ns(s), "truncated": tr}
    res["frequent_counts"] = [int(c) for c in fc]

    def first(p):
        pos = idx.positions(p)  # every occurrence, unordered
        return min(pos) if pos else -1

    s, fo, tr = _timed_loop(first, lat, a.budget)
    res["first_latency_ordinary"] = {**_stats_ns(s), "truncated": tr, "method": "min(positions())"}
    np.save(a.result.replace(".json", ".first_ordinary.npy"), np.asarray(fo, dtype=np.int64))
    # Frequent phrases: positions() materializes every occurrence as a Python list; cap by budget.
    s, ff, tr = _timed_loop(first, freq, a.budget, reps=reps, warm=False)
    res["first_latency_frequent"] = {**_stats_ns(s), "truncated": tr, "method": "min(positions())",
                                     "phrases_timed": len(ff), "of": len(freq)}
    res["frequent_first"] = [int(x) for x in ff]
    res.update(_rss())
    return res


# ------------------------------------------------------------------------------------------
# infini-gram


def _ig_dir() -> Path:
    import importlib.util

    return Path(importlib.util.find_spec("infini_gram").origin).resolve().parent  # without importing it


def infinigram_build(a) -> dict:
    """Replicates ``python -m infini_gram.indexing`` for pre-tokenized u16 data: step 1 writes
    ``tokenized.0`` (0xFFFF before every document; here every 2049-token item) and ``offset.0``
    (u64 byte offset of each document's separator); step 2 runs the shipped ``rust_indexing``
    binary: ``make-part`` jobs (``cpus`` in parallel, in batches sized by ``--mem``), ``merge``,
    ``concat`` into ``table.0``."""
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    import_rss = _rss()["self_maxrss_bytes"]
    binary = _ig_dir() / "rust_indexing"
    if not binary.is_file():
        return {"ok": False, "error": f"rust_indexing binary not found at {binary}"}
    t_all = time.perf_counter()

    # Step 1: "tokenize" (pre-tokenized here: insert document separators, write offsets).
    t = time.perf_counter()
    n = os.path.getsize(a.tokens) // 2
    L = int(a.item_length)
    starts = np.arange(0, n, L, dtype=np.int64)
    ds_path = out / "tokenized.0"
    step = max(1, (1 << 24) // L) * L  # whole items per chunk, so memory stays small
    with open(a.tokens, "rb") as fin, open(ds_path, "wb") as fout:
        for c0 in range(0, n, step):
            chunk = np.fromfile(fin, dtype="<u2", count=min(step, n - c0))
            np.insert(chunk, np.arange(0, chunk.size, L), np.uint16(SEP16)).tofile(fout)
    ((starts + np.arange(starts.size)) * 2).astype("<u8").tofile(out / "offset.0")
    t_prep = time.perf_counter() - t

    # Step 2: suffix array (same arithmetic as infini_gram/indexing.py build_sa).
    t = time.perf_counter()
    token_width = 2
    ds_size = ds_path.stat().st_size
    ratio = int(np.ceil(np.log2(ds_size) / 8))
    mem_bytes = int(a.mem_gib) * 1024**3
    num_job_batches = 1
    while num_job_batches * (mem_bytes // 8) < ds_size:
        num_job_batches *= 2
    parallel_jobs = int(a.threads)
    total_jobs = num_job_batches * parallel_jobs
    S = ds_size // total_jobs
    if S % token_width:
        S += token_width - S % token_width
    note = None
    # rust_indexing's merge expects every part but the last to carry a full HACK-byte overlap;
    # when that overlap would reach the end of the file (tiny inputs) the table comes out wrong
    # (checked), so tiny inputs are cut into fewer parts.
    while total_jobs > 1 and (total_jobs - 1) * S + HACK >= ds_size:
        total_jobs //= 2
        parallel_jobs = max(1, min(parallel_jobs, total_jobs))
        S = ds_size // total_jobs
        if S % token_width:
            S += token_width - S % token_width
        note = "input too small for the configured number of parts; fewer parts used"
    parts_dir = out / "parts"
    merged_dir = out / "merged"
    for d in (parts_dir, merged_dir):
        subprocess.run(["rm", "-rf", str(d)], check=True)
        d.mkdir()
    steps = {}
    tt = time.perf_counter()
    for batch_start in range(0, total_jobs, parallel_jobs):
        batch_end = min(batch_start + parallel_jobs, total_jobs)
        procs = []
        for i in range(batch_start, batch_end):
            s, e = i * S, min((i + 1) * S + HACK, ds_size)
            if i == total_jobs - 1:
                e = ds_size
            procs.append(subprocess.Popen(
                [str(binary), "make-part", "--data-file", str(ds_path), "--parts-dir", str(parts_dir),
                 "--start-byte", str(s), "--end-byte", str(e), "--ratio", str(ratio),
                 "--token-width", str(token_width)],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        outs = [p.communicate()[0] for p in procs]
        bad = [i for i, p in enumerate(procs) if p.returncode != 0]
        if bad:
            return {"ok": False, "error": "rust_indexing make-part failed: " + outs[bad[0]].decode(errors="replace")[-2000:]}
    steps["make_part"] = round(time.perf_counter() - tt, 3)
    tt = time.perf_counter()
    r = subprocess.run([str(binary), "merge", "--data-file", str(ds_path), "--parts-dir", str(parts_dir),
                        "--merged-dir", str(merged_dir), "--num-threads", str(a.threads), "--hacksize", str(HACK),
                        "--ratio", str(ratio), "--token-width", str(token_width)],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if r.returncode:
        return {"ok": False, "error": "rust_indexing merge failed: " + r.stdout.decode(errors="replace")[-2000:]}
    subprocess.run(["rm", "-rf", str(parts_dir)], check=True)
    steps["merge"] = round(time.perf_counter() - tt, 3)
    tt = time.perf_counter()
    r = subprocess.run([str(binary), "concat", "--data-file", str(ds_path), "--merged-dir", str(merged_dir),
                        "--merged-file", str(out / "table.0"), "--num-threads", str(a.threads),
                        "--ratio", str(ratio), "--token-width", str(token_width)],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if r.returncode:
        return {"ok": False, "error": "rust_indexing concat failed: " + r.stdout.decode(errors="replace")[-2000:]}
    subprocess.run(["rm", "-rf", str(merged_dir)], check=True)
    steps["concat"] = round(time.perf_counter() - tt, 3)
    t_sa = time.perf_counter() - t
    dt = time.perf_counter() - t_all
    files = _dir_bytes([out])
    if (out / "table.0").stat().st_size != ratio * (ds_size // 2):
        return {"ok": False, "error": f"table.0 has {(out / 'table.0').stat().st_size} bytes, expected {ratio * (ds_size // 2)}"}
    return {"ok": True, "seconds": round(dt, 3), "seconds_prep": round(t_prep, 3), "seconds_sa": round(t_sa, 3),
            "sa_steps": steps, "tokens": n, "tokens_per_second": round(n / dt, 1),
            "bytes_on_disk": files, "bytes_per_token": round(files / n, 4), "ptr_bytes": ratio,
            "jobs": total_jobs, "parallel_jobs": parallel_jobs, "note": note,
            "bytes_on_disk_note": "tokenized.0 (tokens + one separator per item) + table.0 + offset.0",
            "version": _version("infini-gram"), "import_rss_bytes": import_rss, **_rss()}


def infinigram_query(a) -> dict:
    from infini_gram.engine import InfiniGramEngine

    out = Path(a.out_dir)
    L = int(a.item_length)
    eng = InfiniGramEngine(index_dir=str(out), eos_token_id=0, vocab_size=65535, version=4, token_dtype="u16")
    ds_size = (out / "tokenized.0").stat().st_size
    ratio = (out / "table.0").stat().st_size // (ds_size // 2)
    table = np.memmap(out / "table.0", dtype=np.uint8, mode="r").reshape(-1, ratio)
    shifts = [np.uint64(8 * k) for k in range(ratio)]
    allp, lat, freq, reps = _load_phrases(a.phrases)
    res: dict = {"ok": True, "ptr_bytes": int(ratio)}

    def count(p):
        return eng.count(input_ids=p)["count"]

    def first(p):
        # find() gives the suffix-array rank range; the first occurrence is the smallest byte
        # pointer in it (decoded from the ratio-byte table), mapped back to a stream offset.
        f = eng.find(input_ids=p)
        lo, hi = f["segment_by_shard"][0]
        if hi <= lo:
            return -1
        seg = np.asarray(table[lo:hi]).astype(np.uint64)
        ptr = seg[:, 0].copy()
        for k in range(1, ratio):
            ptr |= seg[:, k] << shifts[k]
        tok = int(ptr.min()) // 2  # token index in tokenized.0 (separator before each item)
        item, within = divmod(tok, L + 1)
        return item * L + within - 1

    thr, counts = _throughput(count, allp, a.budget)
    res["count_throughput"] = thr
    np.save(a.result.replace(".json", ".counts.npy"), counts)
    s, _, tr = _timed_loop(count, lat, a.budget)
    res["count_latency_ordinary"] = {**_stats_ns(s), "truncated": tr}
    s, fc, tr = _timed_loop(count, freq, a.budget, reps=reps)
    res["count_latency_frequent"] = {**_stats_ns(s), "truncated": tr}
    res["frequent_counts"] = [int(c) for c in fc]
    s, fo, tr = _timed_loop(first, lat, a.budget)
    res["first_latency_ordinary"] = {**_stats_ns(s), "truncated": tr, "method": "find() + min over SA range"}
    np.save(a.result.replace(".json", ".first_ordinary.npy"), np.asarray(fo, dtype=np.int64))
    s, ff, tr = _timed_loop(first, freq, a.budget, reps=reps, warm=False)
    res["first_latency_frequent"] = {**_stats_ns(s), "truncated": tr, "method": "find() + min over SA range",
                                     "phrases_timed": len(ff), "of": len(freq)}
    res["frequent_first"] = [int(x) for x in ff]
    res.update(_rss())
    return res


# ------------------------------------------------------------------------------------------
# libdivsufsort (pydivsufsort): the suffix sort alone


def _divsufsort_part(path: str, start: int, stop: int) -> float:
    from pydivsufsort import divsufsort

    # Big-endian bytes sort as the 16-bit tokens do (pydivsufsort's own convention for wider ids), so each
    # token is two byte suffixes: twice the suffixes of a token sort, at the same bytes of text.
    text = np.ascontiguousarray(np.fromfile(path, dtype="<u2", count=stop - start, offset=2 * start).astype(">u2"))
    t = time.perf_counter()
    divsufsort(text.view(np.uint8))
    return time.perf_counter() - t


def divsufsort_sort(a) -> dict:
    """Cut the stream into ``parts`` equal parts in order, as the exposure builder cuts its shards, and sort each
    part's suffixes in a process of its own, ``threads`` at a time. The time is the slowest part's when all
    run side by side (process start-up left out, as the builder's own sort time leaves it out), else the
    wall time of all the sorts."""
    from concurrent.futures import ProcessPoolExecutor

    n = os.path.getsize(a.tokens) // 2
    parts = a.parts or a.threads
    cuts = [n * k // parts for k in range(parts + 1)]
    Path(a.out_dir).mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(min(a.threads, parts)) as pool:
        t = time.perf_counter()
        seconds = list(pool.map(_divsufsort_part, [a.tokens] * parts, cuts[:-1], cuts[1:]))
        wall = time.perf_counter() - t
    return {"ok": True, "seconds": round(max(seconds) if parts <= a.threads else wall, 3),
            "part_seconds": [round(x, 3) for x in seconds],
            "tokens": n, "parts": parts, "version": _version("pydivsufsort"),
            "note": "suffix sort only (no index): big-endian bytes of each part, 2 byte suffixes per token"}


# ------------------------------------------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return None


STEPS = {
    "tokengrams-build": tokengrams_build,
    "tokengrams-query": tokengrams_query,
    "infinigram-build": infinigram_build,
    "infinigram-query": infinigram_query,
    "divsufsort-sort": divsufsort_sort,
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=sorted(STEPS))
    ap.add_argument("--tokens", help="raw little-endian uint16 token file (the stream)")
    ap.add_argument("--out-dir", required=True, help="the peer's index directory")
    ap.add_argument("--phrases", help="phrase file (.npz) for the query steps")
    ap.add_argument("--result", required=True, help="JSON result file")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parts", type=int, default=0, help="divsufsort-sort: parts to sort (default: --threads)")
    ap.add_argument("--mem-gib", type=int, default=8)
    ap.add_argument("--item-length", type=int, default=2049)
    ap.add_argument("--budget", type=float, default=60.0, help="seconds per timed query loop at most")
    a = ap.parse_args(argv)
    try:
        res = STEPS[a.step](a)
    except Exception as e:  # report, do not crash silently
        res = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
    Path(a.result).write_text(json.dumps(res, indent=1) + "\n")
    return 0 if res.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())

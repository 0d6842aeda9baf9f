"""``exposure demo``: the whole method on the bundled data, end to end, on a laptop.

tokenize → index → critical phrases → proxy splits → reference pre-training (in index order) →
evaluate every checkpoint → analyze → HTML report. Every stage writes its result under the output
directory and is skipped when that result exists, so re-running reuses finished stages (training and
evaluation also resume inside a stage); a re-run with settings that would change a result is refused.
Nothing here is a mock: the same functions run at scale.
"""

from __future__ import annotations

import gzip
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


@dataclass(frozen=True)
class DemoConfig:
    out: Path = Path("runs/demo")
    item_length: int = 129  # 128-token context + 1, as Pythia's 2049 = 2048 + 1
    items_per_step: int = 16
    model: str = "tiny"  # GPT-NeoX, 4 layers, d_model 256 (exposure.train.MODEL_PRESETS)
    pairs_per_paradigm: int = 100  # BLiMP pairs scored per paradigm (the first N of each)
    corpus_lines: int | None = None  # use only the first N lines of the bundled corpus (tests)
    steps: int | None = None  # stop training after N steps (tests); default: one pass over the index
    eval_every: int = 1  # evaluate every k-th checkpoint (the first and last always)
    seed: int = 0
    threads: int | None = None
    progress: bool = True
    overrides: dict[str, Any] = field(default_factory=dict)  # ModelConfig overrides (tests)

    def __post_init__(self) -> None:
        for name in ("item_length", "items_per_step", "pairs_per_paradigm", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"DemoConfig.{name} must be positive, got {getattr(self, name)}")


@dataclass
class DemoResult:
    out: Path
    report: Path
    seconds: dict[str, float]
    summary: dict[str, Any]


# Settings that change no stage's result: a re-run with other values reuses the finished stages.
_NO_EFFECT = ("out", "threads", "progress")


def _settings(cfg: DemoConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(cfg), default=str))


def check_same_settings(cfg: DemoConfig) -> None:
    """Refuses to continue a demo directory made with other settings: its finished stages would be reused as they
    are (e.g. 100 pairs per paradigm scored and reported when 20 were asked for)."""
    path = cfg.out / "demo-config.json"
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is unreadable ({exc}); delete {cfg.out} to start over") from None
    new = _settings(cfg)
    changed = [k for k in new if k not in _NO_EFFECT and old.get(k) != new[k]]
    if changed:
        what = "; ".join(f"{k}: {old.get(k)!r} there, {new[k]!r} now" for k in changed)
        raise ValueError(
            f"{cfg.out} holds a demo run made with other settings ({what}), whose finished stages would be reused "
            f"as they are; give another --out, or delete {cfg.out} to start over"
        )


def _stage(name: str, done: Path, fn: Callable[[], None], log: Callable[[str], None], seconds: dict[str, float]) -> None:
    if done.exists():
        log(f"[{name}] reusing {done}")
        seconds[name] = 0.0
        return
    log(f"[{name}] ...")
    t0 = time.perf_counter()
    fn()
    seconds[name] = round(time.perf_counter() - t0, 1)
    log(f"[{name}] done in {seconds[name]:.1f}s")


def _corpus(cfg: DemoConfig) -> Path:
    from exposure import data

    if cfg.corpus_lines is None:
        return data.corpus_path()
    sliced = cfg.out / "corpus-slice.txt"
    if not sliced.exists():
        with gzip.open(data.corpus_path(), "rt", encoding="utf-8") as f:
            lines = [line for _, line in zip(range(cfg.corpus_lines), f)]
        sliced.write_text("".join(lines), encoding="utf-8")
    return sliced


def _schedule(cfg: DemoConfig, index: Any) -> Any:
    from exposure.schedule import Schedule
    from exposure.train import default_checkpoints

    total_steps = index.num_items // cfg.items_per_step
    if cfg.steps is not None:
        total_steps = min(total_steps, cfg.steps)
    if total_steps < 1:
        raise ValueError(f"the demo corpus gives {index.num_items} items: fewer than one step of {cfg.items_per_step}")
    return Schedule.custom(cfg.item_length, cfg.items_per_step, default_checkpoints(total_steps), name="demo")


def _pairs(cfg: DemoConfig, tokenizer: Any) -> pa.Table:
    from exposure.blimp import DEFAULT_PHENOMENA, find_vocabulary, load_blimp, read_vocabulary
    from exposure.critical import critical_phrases

    pairs = load_blimp(None, phenomena=list(DEFAULT_PHENOMENA), progress=cfg.progress)
    by_uid: dict[str, list[Any]] = {}
    for p in pairs:
        by_uid.setdefault(p.uid, []).append(p)
    chosen = [p for uid in by_uid for p in by_uid[uid][: cfg.pairs_per_paradigm]]
    vocab = read_vocabulary(find_vocabulary(None))
    return critical_phrases(chosen, vocab, tokenizer, progress=cfg.progress)


def run_demo(cfg: DemoConfig = DemoConfig(), log: Callable[[str], None] = print) -> DemoResult:
    import exposure
    from exposure import data, ingest
    from exposure.analysis import analyze
    from exposure.evaluate import evaluate_run
    from exposure.splits import make_splits, summarize
    from exposure.tokenizer import load_tokenizer
    from exposure.train import ModelConfig, train_reference

    out = cfg.out
    check_same_settings(cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo-config.json").write_text(json.dumps(_settings(cfg), indent=1) + "\n")
    seconds: dict[str, float] = {}
    t_all = time.perf_counter()
    index_dir, phrases_file, splits_file = out / "index", out / "phrases.parquet", out / "splits.parquet"
    model_dir, eval_dir, report_dir = out / "model", out / "eval", out / "report"

    def build_index() -> None:
        ingest.build(
            [_corpus(cfg)], "text", index_dir, tokenizer=data.tokenizer_path(), item_length=cfg.item_length,
            items_per_step=cfg.items_per_step, seed=cfg.seed, threads=cfg.threads, progress=cfg.progress,
            memory_budget_bytes="1G", overwrite=True,
        )

    _stage("index", index_dir / "manifest.json", build_index, log, seconds)
    index = exposure.Index(index_dir)
    schedule = _schedule(cfg, index)
    tokenizer = load_tokenizer(data.tokenizer_path())

    def phrases() -> None:
        tmp = phrases_file.with_suffix(".tmp")
        pq.write_table(_pairs(cfg, tokenizer), tmp)
        tmp.replace(phrases_file)

    _stage("phrases", phrases_file, phrases, log, seconds)

    def splits() -> None:
        table = make_splits(pq.read_table(phrases_file), index, schedule, index_path=str(index_dir))
        tmp = splits_file.with_suffix(".tmp")
        pq.write_table(table, tmp)
        tmp.replace(splits_file)
        log(summarize(table))

    _stage("splits", splits_file, splits, log, seconds)

    def train() -> None:
        config = ModelConfig.preset(cfg.model, **cfg.overrides)
        train_reference(index_dir, model_dir, config=config, items_per_step=cfg.items_per_step,
                        checkpoints=schedule.checkpoints, steps=schedule.checkpoints[-1], seed=cfg.seed,
                        threads=cfg.threads,
                        progress=cfg.progress)

    _stage("train", model_dir / "run.json", train, log, seconds)
    # Training resumes by itself; the marker above only skips a finished run. Its run.json is written
    # at the end, so an interrupted run re-enters train_reference and continues from its last checkpoint.

    ckpts = list(schedule.checkpoints)
    evaluated = sorted({ckpts[0], ckpts[-1], *ckpts[:: max(1, cfg.eval_every)]})

    def evaluate() -> None:
        evaluate_run(splits_file, model_dir, eval_dir, checkpoints=evaluated, device="auto", progress=cfg.progress)
        (eval_dir / ".demo-done").write_text("\n".join(map(str, evaluated)) + "\n")

    _stage("eval", eval_dir / ".demo-done", evaluate, log, seconds)

    def report() -> None:
        if report_dir.exists():
            shutil.rmtree(report_dir)
        analyze(splits_file, eval_dir, report_dir, seed=cfg.seed, progress=cfg.progress)

    _stage("analyze", report_dir / "report.html", report, log, seconds)
    seconds["total"] = round(time.perf_counter() - t_all, 1)
    summary = _summary(splits_file, report_dir)
    return DemoResult(out=out, report=report_dir / "report.html", seconds=seconds, summary=summary)


def _summary(splits_file: Path, report_dir: Path) -> dict[str, Any]:
    table = pq.read_table(splits_file, columns=["phenomenon", "first_step_good", "has_phrase"])
    meta = json.loads(table.schema.metadata[b"exposure.checkpoints"])
    first = np.asarray(table.column("first_step_good").to_numpy())
    has = np.asarray(table.column("has_phrase").to_numpy(zero_copy_only=False))
    last = meta[-1]
    out: dict[str, Any] = {
        "pairs": int(table.num_rows),
        "with_phrase": int(has.sum()),
        "proxy_train_at_last_checkpoint": int(((first >= 0) & (first < last) & has).sum()),
        "proxy_validation_at_last_checkpoint": int(((first < 0) | (first >= last))[has].sum()),
        "never_exposed": int(((first < 0) & has).sum()),
        "checkpoints": meta,
    }
    sfile = report_dir / "summary.json"
    if sfile.exists():
        out["analysis"] = json.loads(sfile.read_text())
    return out

"""The demo pipeline end to end on a tiny configuration: every artefact exists and is consistent."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from exposure.commands.demo import format_result  # noqa: E402
from exposure.demo import DemoConfig, run_demo  # noqa: E402


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    cfg = DemoConfig(out=out, corpus_lines=1500, pairs_per_paradigm=6, progress=False,
                     overrides=dict(n_layers=2, d_model=64, n_heads=2))
    return cfg, run_demo(cfg, log=lambda s: None)


def test_every_stage_wrote_its_artefacts(demo):
    cfg, result = demo
    out = cfg.out
    for rel in ["index/manifest.json", "phrases.parquet", "splits.parquet", "model/run.json", "eval/run.json",
                "report/report.html", "report/summary.json"]:
        assert (out / rel).is_file(), rel
    assert result.report == out / "report" / "report.html"


def test_every_pair_has_a_split_at_every_checkpoint(demo):
    cfg, _ = demo
    splits = pq.read_table(cfg.out / "splits.parquet")
    checkpoints = json.loads(splits.schema.metadata[b"exposure.checkpoints"])
    assert checkpoints == sorted(checkpoints) and checkpoints[0] == 0
    first = splits.column("first_step_good").to_numpy()
    for labels, f in zip(splits.column("split").to_pylist(), first):
        assert len(labels) == len(checkpoints)
        # proxy-train at S exactly when the phrase was first trained on before S
        assert labels == ["train" if 0 <= f < s else "validation" for s in checkpoints]
    # the trained steps are exactly the index's items in order, so checkpoints match the run's folders
    steps = sorted(int(p.name[4:]) for p in (cfg.out / "model").glob("step*"))
    assert steps == checkpoints


def test_every_checkpoint_has_scores_states_and_attention(demo):
    cfg, _ = demo
    splits = pq.read_table(cfg.out / "splits.parquet")
    n_pairs = splits.num_rows
    steps = sorted(int(p.name[4:]) for p in (cfg.out / "model").glob("step*"))
    for s in steps:
        scores = pq.read_table(cfg.out / "eval" / "scores" / f"step{s}.parquet")
        assert scores.num_rows == n_pairs
        assert set(scores.column("pair_uid").to_pylist()) == set(splits.column("pair_uid").to_pylist())
        lp = scores.column("logp_good").to_numpy()
        assert np.all(np.isfinite(lp)) and np.all(lp < 0)
        states = np.load(cfg.out / "eval" / "states" / f"step{s}.npy", mmap_mode="r")
        assert states.shape[:3] == (n_pairs, 2, 3) and states.dtype == np.float16  # 2 layers + embeddings
        att = np.load(cfg.out / "eval" / "attention" / f"step{s}.npy", mmap_mode="r")
        assert att.shape == (n_pairs, 2, 2, 2)


def test_report_references_every_figure(demo):
    cfg, result = demo
    html = result.report.read_text()
    figures = sorted(p.name for p in (cfg.out / "report" / "figures").glob("*.png"))
    assert figures
    embedded = re.findall(r'<img[^>]+src="data:image/png;base64,', html)
    assert len(embedded) >= len(figures)
    text = format_result(result)
    assert "proxy-train" in text and str(result.report.resolve()) in text
    assert "None" not in text  # no unmeasured value printed as Python's None


def test_rerun_reuses_finished_stages(demo):
    cfg, _ = demo
    logs: list[str] = []
    again = run_demo(cfg, log=logs.append)
    assert all(v == 0.0 for k, v in again.seconds.items() if k != "total")
    assert sum("reusing" in line for line in logs) == 6


def test_rerun_with_other_settings_is_refused(demo):
    # It used to reuse every finished stage: 6 pairs per paradigm scored and reported when 3 were asked for.
    from dataclasses import replace

    cfg, _ = demo
    before = {p: p.stat().st_mtime_ns for p in cfg.out.rglob("*")}
    for changed, name in ((replace(cfg, pairs_per_paradigm=3), "pairs_per_paradigm: 6 there, 3 now"),
                          (replace(cfg, eval_every=2), "eval_every: 1 there, 2 now")):
        with pytest.raises(ValueError, match=f"other settings \\({name}\\)"):
            run_demo(changed, log=lambda s: None)
    assert {p: p.stat().st_mtime_ns for p in cfg.out.rglob("*")} == before  # nothing touched
    again = run_demo(replace(cfg, threads=1, progress=False), log=lambda s: None)  # no effect on results
    assert all(v == 0.0 for k, v in again.seconds.items() if k != "total")


def test_format_result_prints_a_measured_delay():
    from types import SimpleNamespace

    summary = {"pairs": 10, "with_phrase": 9, "checkpoints": [0, 1000, 2000], "proxy_train_at_last_checkpoint": 6,
               "proxy_validation_at_last_checkpoint": 4, "never_exposed": 1,
               "analysis": {"threshold": 0.9, "overall": {"train_step": 1000, "validation_step": 2000, "delay": 1000}}}
    result = SimpleNamespace(summary=summary, seconds={"total": 1.0}, report=Path("report.html"))
    text = format_result(result)
    assert "at step 1,000, proxy-validation at step 2,000: delay 1,000 steps" in text
    summary["analysis"]["overall"] = {"train_step": None, "validation_step": None, "delay": None}
    assert "delay (overall)" not in format_result(result)

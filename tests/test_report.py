"""`exposure analyze` end to end on a synthetic evaluation output: tables, figures, report, rendering."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pyarrow.parquet as pq
import pytest

from exposure import cli
from exposure.analysis import analyze
from exposure.analysis.synthetic import SyntheticSpec, write_synthetic

SPEC = SyntheticSpec(pairs_per_phenomenon=40, no_phrase_pairs=3)
TABLES = ("curves", "transitions", "delays", "pair_learning", "concept_layers", "concept_changes", "head_attention",
          "head_concentration", "top_heads")


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("synthetic")
    splits, eval_dir = write_synthetic(root, SPEC)
    report = analyze(splits, eval_dir, root / "out", n_boot=200, progress=False)
    return root, report


def _images(html: str) -> list[str]:
    return re.findall(r'<img src="([^"]*)"', html)


def test_report_is_self_contained_and_states_the_planted_findings(full_run) -> None:
    _, report = full_run
    out = report.parent
    assert report.name == "report.html"
    for name in TABLES:
        assert pq.read_table(out / f"{name}.parquet").num_rows > 0, name
    html = report.read_text(encoding="utf-8")
    srcs = _images(html)
    pngs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert len(srcs) == len(pngs) == 10
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        img = mpimg.imread(io.BytesIO(base64.b64decode(src.split(",", 1)[1])), format="png")
        assert img.shape[0] > 200 and img.shape[1] > 300
        assert np.ptp(img[..., :3]) > 0.5  # not a blank image
    assert not re.search(r'(src|href)="(?!data:)', html), "the report must not reference external files"
    summary = json.loads((out / "summary.json").read_text())
    planted = SPEC.validation_transition - SPEC.train_transition
    assert summary["overall"]["train_step"] == SPEC.train_transition
    assert summary["overall"]["validation_step"] == SPEC.validation_transition
    assert summary["overall"]["delay"] == planted
    assert summary["overall"]["never_step"] is None  # the control never learns
    assert (summary["before"], summary["after"]) == (1000, 2000)
    assert f"a delay of {planted:,} steps" in html
    assert "3 pair(s) have no critical phrase" in html
    # the concept finding: layer 3 becomes one-dimensional and probe-able, significantly
    changes = {(r["phenomenon"], r["layer"]): r for r in pq.read_table(out / "concept_changes.parquet").to_pylist()}
    assert changes[("ALL", SPEC.concept_layer)]["probe_significant"]
    assert changes[("ALL", SPEC.concept_layer)]["participation_ratio_change"] < -5
    assert "Largest probe change, all phenomena: layer 3" in html
    # the heads finding: the two planted heads are the top 2 at the last checkpoint
    top = pq.read_table(out / "top_heads.parquet").to_pylist()
    last = max(r["step"] for r in top)
    top2 = {(r["layer"], r["head"]) for r in top if r["phenomenon"] == "ALL" and r["step"] == last and r["rank"] <= 2}
    assert top2 == set(SPEC.heads_after)


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium not installed (Debian: apt-get install -y chromium); "
                    "needed to check that the report renders")
def test_report_renders_in_headless_chromium(full_run, tmp_path) -> None:
    _, report = full_run
    html = report.read_text(encoding="utf-8")
    probe = (
        "<script>window.addEventListener('load', function () {"
        "var imgs = [].slice.call(document.images);"
        "document.body.setAttribute('data-images', imgs.length);"
        "document.body.setAttribute('data-loaded', imgs.filter(function (i) {"
        "return i.complete && i.naturalWidth > 0; }).length);});</script>"
    )

    def render(page: str, name: str) -> tuple[int, int, str]:
        path = tmp_path / name
        path.write_text(page.replace("</body>", probe + "</body>"), encoding="utf-8")
        dom = subprocess.run(
            [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--virtual-time-budget=10000", "--dump-dom", path.as_uri()],
            capture_output=True, text=True, timeout=120, check=True,
        ).stdout
        body = re.search(r"<body[^>]*>", dom)
        assert body, dom[:500]
        total = int(re.search(r'data-images="(\d+)"', body.group(0)).group(1))
        loaded = int(re.search(r'data-loaded="(\d+)"', body.group(0)).group(1))
        return total, loaded, dom

    total, loaded, dom = render(html, "check.html")
    assert total == 10 and loaded == total
    assert "Delayed generalization" in dom and "Attention heads" in dom
    # the check can fail: a corrupted figure is not counted as loaded
    first = _images(html)[0]
    broken = html.replace(first, "data:image/png;base64," + base64.b64encode(b"not a png").decode(), 1)
    total_b, loaded_b, _ = render(broken, "broken.html")
    assert total_b == 10 and loaded_b == 9
    shot = tmp_path / "report.png"
    subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
         "--window-size=1280,3000", f"--screenshot={shot}", report.as_uri()],
        capture_output=True, timeout=120, check=True,
    )
    img = mpimg.imread(shot)
    assert img.shape[:2] == (3000, 1280)
    assert np.ptp(img[..., :3]) > 0.5


def test_small_data_report_says_what_is_missing(tmp_path, capsys) -> None:
    # one checkpoint; no hidden states; no attention; a phenomenon with no proxy-validation pairs
    n = 12
    first = np.array([5] * n + [500] * n + [-1] * n)
    spec = SyntheticSpec(pairs_per_phenomenon=n, steps=(100,), write_states=False, write_attention=False,
                         first_steps=first)
    splits, eval_dir = write_synthetic(tmp_path, spec)
    code = cli.main(["analyze", "--splits", str(splits), "--eval", str(eval_dir), "--out", str(tmp_path / "out"),
                     "--n-boot", "50", "--no-progress"])
    assert code == 0
    report = Path(capsys.readouterr().out.strip())
    html = report.read_text(encoding="utf-8")
    assert "Only one checkpoint (step 100) was evaluated" in html
    assert "anaphor_agreement: no proxy-validation pairs at any checkpoint" in html
    assert "no hidden states" in html
    assert "no attention" in html
    assert len(_images(html)) == 5  # the five generalization figures; no concept or head figures
    assert not (report.parent / "concept_layers.parquet").exists()


def test_a_run_without_exposed_pairs_draws_every_figure_without_warnings(tmp_path, capsys, recwarn) -> None:
    # No pair seen during the run (e.g. names BLiMP draws from a list that the corpus lacks): the per-pair
    # figures are empty, and the scatter plot used to ask matplotlib for a legend of nothing (a UserWarning
    # printed to the user).
    n = 12
    spec = SyntheticSpec(pairs_per_phenomenon=n, steps=(0, 100, 1000), write_states=False, write_attention=False,
                         first_steps=np.full(3 * n, -1))
    splits, eval_dir = write_synthetic(tmp_path, spec)
    code = cli.main(["analyze", "--splits", str(splits), "--eval", str(eval_dir), "--out", str(tmp_path / "out"),
                     "--n-boot", "50", "--no-progress"])
    assert code == 0
    html = Path(capsys.readouterr().out.strip()).read_text(encoding="utf-8")
    assert "No pair was exposed during the run" in html
    assert len(_images(html)) == 5
    assert [str(w.message) for w in recwarn] == []


def test_without_bootstrap_the_report_says_n_a(tmp_path, capsys) -> None:
    # --n-boot 0 (no resamples: no CIs) failed in the concept summary (a CI read back from Parquet as None) and
    # printed "reached in nan% of bootstrap resamples".
    spec = SyntheticSpec(pairs_per_phenomenon=15, steps=(0, 512, 2000, 4000), write_attention=False)
    splits, eval_dir = write_synthetic(tmp_path, spec)
    code = cli.main(["analyze", "--splits", str(splits), "--eval", str(eval_dir), "--out", str(tmp_path / "out"),
                     "--n-boot", "0", "--no-progress"])
    assert code == 0
    html = Path(capsys.readouterr().out.strip()).read_text(encoding="utf-8")
    text = re.sub(r"<[^>]+>", " ", re.sub(r'src="data:[^"]*"', "", html))
    assert "95% CI n/a" in text and "the probe is most accurate" in text
    assert not re.search(r"\b(nan|None)\b", text)


def test_one_checkpoint_with_states_and_user_checkpoints(tmp_path, capsys) -> None:
    spec = SyntheticSpec(pairs_per_phenomenon=15, steps=(0, 512, 2000, 4000), write_attention=False)
    splits, eval_dir = write_synthetic(tmp_path, spec)
    args = ["analyze", "--splits", str(splits), "--eval", str(eval_dir), "--n-boot", "50", "--no-progress"]
    assert cli.main(args + ["--out", str(tmp_path / "a"), "--before", "0", "--after", "4000"]) == 0
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert (summary["before"], summary["after"]) == (0, 4000)
    for step in (0, 512, 2000):
        (eval_dir / "states" / f"step{step}.npy").unlink()
    assert cli.main(args + ["--out", str(tmp_path / "b")]) == 0
    html = (tmp_path / "b" / "report.html").read_text(encoding="utf-8")
    assert "hidden states exist at one checkpoint only (step 4000)" in html
    capsys.readouterr()


def test_cli_errors_are_clear(tmp_path, capsys) -> None:
    spec = SyntheticSpec(pairs_per_phenomenon=6, steps=(0, 100), write_attention=False)
    splits, eval_dir = write_synthetic(tmp_path, spec)
    base = ["analyze", "--eval", str(eval_dir), "--out", str(tmp_path / "o"), "--no-progress"]
    assert cli.main(base + ["--splits", str(tmp_path / "missing.parquet")]) == 2
    assert "--splits" in capsys.readouterr().err
    assert cli.main(base + ["--splits", str(splits), "--before", "7"]) == 2
    assert "no hidden states at step 7" in capsys.readouterr().err
    # every option is named as it is typed (--min-pairs said "min_pairs"; a negative --seed said only
    # "expected non-negative integer", from numpy)
    for option, value in (("--threshold", "1.5"), ("--min-pairs", "0"), ("--max-concept-pairs", "1"), ("--seed", "-1"),
                          ("--n-boot", "-1"), ("--top-k", "0")):
        assert cli.main(base + ["--splits", str(splits), option, value]) == 2
        assert f"error: {option} must be" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    # an evaluation whose pairs are not in the splits table
    other = tmp_path / "other"
    other_splits, _ = write_synthetic(other, SyntheticSpec(phenomena=("zzz",), pairs_per_phenomenon=3, steps=(0,)))
    assert cli.main(base + ["--splits", str(other_splits)]) == 2
    assert "not found" in capsys.readouterr().err
    # as many top heads as the model has (or more): every share would be 100 % ("the top 100 of 16 heads")
    with_heads = tmp_path / "heads"
    splits, eval_dir = write_synthetic(with_heads, SyntheticSpec(pairs_per_phenomenon=6, steps=(0, 100)))
    n_heads = int(np.prod(np.load(next((eval_dir / "attention").glob("*.npy")), mmap_mode="r").shape[2:]))
    args = ["analyze", "--splits", str(splits), "--eval", str(eval_dir), "--out", str(with_heads / "o"), "--no-progress"]
    assert cli.main(args + ["--top-k", str(n_heads)]) == 2
    assert f"the model has {n_heads} heads" in capsys.readouterr().err
    assert not (with_heads / "o").exists()
    assert cli.main(args + ["--top-k", str(n_heads - 1), "--n-boot", "20"]) == 0
    assert json.loads((with_heads / "o" / "summary.json").read_text())["findings"]["Attention heads"][0].startswith(
        f"At the last checkpoint (step 100), the top {n_heads - 1} of {n_heads} heads")


def test_damaged_evaluation_files_are_named_or_noted(tmp_path, capsys) -> None:
    spec = SyntheticSpec(pairs_per_phenomenon=10, steps=(0, 100, 200, 400))
    splits, eval_dir = write_synthetic(tmp_path, spec)
    base = ["analyze", "--splits", str(splits), "--eval", str(eval_dir), "--n-boot", "20", "--no-progress"]
    # a checkpoint whose attention is gone, one whose scores were written but never marked finished
    (eval_dir / "attention" / "step100.npy").unlink()
    run = json.loads((eval_dir / "run.json").read_text())
    run["finished_checkpoints"] = [0, 100, 200]
    (eval_dir / "run.json").write_text(json.dumps(run))
    assert cli.main(base + ["--out", str(tmp_path / "a")]) == 0
    html = (tmp_path / "a" / "report.html").read_text(encoding="utf-8")
    assert "Scores of step 400 are not marked finished in run.json" in html
    assert "1 scored checkpoint(s) have no attention file (step 100)" in html
    steps = {r["step"] for r in pq.read_table(tmp_path / "a" / "curves.parquet").to_pylist()}
    assert steps == {0, 100, 200}
    assert {r["step"] for r in pq.read_table(tmp_path / "a" / "head_attention.parquet").to_pylist()} == {0, 200}
    # a finished checkpoint whose scores file is gone
    (eval_dir / "scores" / "step200.parquet").unlink()
    assert cli.main(base + ["--out", str(tmp_path / "b")]) == 0
    assert "Step 200: marked finished in run.json but without a scores file" in (
        tmp_path / "b" / "report.html").read_text(encoding="utf-8")
    capsys.readouterr()
    # a truncated hidden-states file: a clear error naming it, before any analysis, though no analysis reads step 100
    states = eval_dir / "states" / "step100.npy"
    states.write_bytes(states.read_bytes()[:1000])
    assert cli.main(base + ["--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert str(states) in err and "not a readable .npy array" in err and "recomputes checkpoint 100" in err
    assert not (tmp_path / "c" / "report.html").exists()
    # a states file for other pairs; one for the same pairs from a model of another shape
    n_pairs = pq.read_metadata(eval_dir / "pairs.parquet").num_rows
    np.save(states, np.zeros((n_pairs + 1, 2, 3, 5), np.float16))
    assert cli.main(base + ["--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert str(states) in err and f"expected [{n_pairs}, 2, ...]" in err
    np.save(states, np.zeros((n_pairs, 2, 3, 5), np.float16))
    assert cli.main(base + ["--out", str(tmp_path / "e")]) == 2
    assert "states arrays differ in shape between checkpoints" in capsys.readouterr().err

"""Reference pre-training (`exposure train-reference`): order, determinism, checkpoints, resuming.

Tiny models (2 layers, d_model 32) on real text: the bundled corpus, tokenized with the bundled tokenizer.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import exposure  # noqa: E402
from exposure import cli  # noqa: E402
from exposure.data import corpus_path, tokenizer_path  # noqa: E402
from exposure.schedule import Schedule  # noqa: E402
from exposure.tokenizer import load_tokenizer  # noqa: E402
from exposure.train import (  # noqa: E402
    ArrayItems,
    ModelConfig,
    OptimConfig,
    default_checkpoints,
    plan_run,
    pythia_like_checkpoints,
    train_items,
    train_reference,
)
from exposure.training import loop  # noqa: E402
from exposure.training.items import IGNORE_INDEX, collate, run_items  # noqa: E402
from exposure.training.loop import items_fingerprint  # noqa: E402

ITEM_LEN = 33  # 32 inputs + 1
TINY = ModelConfig(n_layers=2, d_model=32, n_heads=2)


@pytest.fixture(scope="module")
def corpus_items() -> list[np.ndarray]:
    """The first ~6k tokens of the bundled corpus, documents + EOS, cut into items of ITEM_LEN tokens."""
    tok = load_tokenizer(tokenizer_path())
    with gzip.open(corpus_path(), "rt", encoding="utf-8") as f:
        lines = [line for _, line in zip(range(400), f) if line.strip()]
    ids: list[int] = []
    for doc in tok.encode_batch(lines):
        ids.extend(doc + [tok.eos_id])
        if len(ids) >= 48 * ITEM_LEN:
            break
    arr = np.asarray(ids[: 48 * ITEM_LEN], dtype=np.uint16).reshape(48, ITEM_LEN)
    return list(arr)


def _state(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def _train(items: list[np.ndarray], out: Path, *, steps: int | None = None, seed: int = 0, lr: float = 3e-3,
           checkpoints: tuple[int, ...] | None = None, checkpoint_every: int | None = None, epochs: float = 1.0,
           items_per_step: int = 8) -> Path:
    plan = plan_run(len(items), schedule=None, items_per_step=items_per_step, checkpoints=checkpoints,
                    checkpoint_every=checkpoint_every, steps=steps, epochs=epochs)
    cfg = TINY.resolved(vocab_size=8192, context_length=ITEM_LEN - 1)
    return train_items(ArrayItems(items), out, model_config=cfg, tokenizer_file=tokenizer_path(), plan=plan,
                       optim=OptimConfig(lr=lr, warmup=2), seed=seed, device="cpu", progress=False,
                       data_info={"id": items_fingerprint(items)})


# ----------------------------------------------------------------------------------------------- units

def test_pythia_like_checkpoints_match_pythia() -> None:
    assert pythia_like_checkpoints(143_000, 1000) == Schedule.preset("pythia").checkpoints
    assert pythia_like_checkpoints(10, 4) == (0, 1, 2, 4, 8, 10)
    assert default_checkpoints(0) == (0,)
    for total in (1, 7, 100, 450, 1000, 143_000):
        ck = default_checkpoints(total)
        assert ck[0] == 0 and ck[-1] == total and len(ck) <= 25
        assert list(ck) == sorted(set(ck))
    assert 15 <= len(default_checkpoints(400)) <= 25
    assert default_checkpoints(400)[:8] == (0, 1, 2, 4, 8, 16, 25, 50)


def test_lr_schedule_warmup_then_cosine() -> None:
    o = OptimConfig(lr=1e-3, warmup=10, min_lr_ratio=0.1)
    assert o.lr_at(0, 100) == pytest.approx(1e-4)
    assert o.lr_at(9, 100) == pytest.approx(1e-3)
    assert o.lr_at(10, 100) == pytest.approx(1e-3)
    assert o.lr_at(100, 100) == pytest.approx(1e-4)
    lrs = [o.lr_at(s, 100) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert OptimConfig().warmup_steps(143_000) == 1430
    with pytest.raises(ValueError):
        OptimConfig(lr=0)


def test_collate_shifts_and_pads() -> None:
    items = [np.array([5, 6, 7, 8]), np.array([9, 10]), np.array([11])]
    b = collate(items, pad_id=1, context_length=3)
    assert b.input_ids.tolist() == [[5, 6, 7], [9, 1, 1], [1, 1, 1]]
    assert b.labels.tolist() == [[6, 7, 8], [10, IGNORE_INDEX, IGNORE_INDEX], [IGNORE_INDEX] * 3]
    assert b.num_targets == 4
    with pytest.raises(ValueError, match="more than the model's context"):
        collate([np.arange(6)], pad_id=0, context_length=4, first_item=17)


def test_plan_run_uses_schedule_and_refuses_contradictions() -> None:
    sched = Schedule.custom(item_length=33, items_per_step=4, checkpoints=(0, 1, 2, 8, 100))
    plan = plan_run(40, schedule=sched, items_per_step=None, checkpoints=None, checkpoint_every=None, steps=None, epochs=1)
    # the run (10 steps) stops short of the schedule (100): its last step is saved too
    assert plan.items_per_step == 4 and plan.total_steps == 10 and plan.checkpoints == (0, 1, 2, 8, 10)
    plan = plan_run(40, schedule=sched, items_per_step=None, checkpoints=None, checkpoint_every=None, steps=5, epochs=1)
    assert plan.checkpoints == (0, 1, 2, 5) and plan.last_step == 5
    with pytest.raises(ValueError, match="items per step"):
        plan_run(40, schedule=sched, items_per_step=8, checkpoints=None, checkpoint_every=None, steps=None, epochs=1)
    plan = plan_run(42, schedule=None, items_per_step=8, checkpoints=None, checkpoint_every=None, steps=None, epochs=1)
    assert plan.total_steps == 6 and plan.total_items == 42 and plan.checkpoints[-1] == 6
    plan = plan_run(40, schedule=None, items_per_step=8, checkpoints=None, checkpoint_every=None, steps=None, epochs=2.5)
    assert plan.total_items == 100 and plan.total_steps == 13
    with pytest.raises(ValueError, match="epochs"):
        plan_run(40, schedule=None, items_per_step=8, checkpoints=None, checkpoint_every=None, steps=20, epochs=1)
    with pytest.raises(ValueError, match="beyond"):
        plan_run(40, schedule=None, items_per_step=8, checkpoints=(0, 9), checkpoint_every=None, steps=None, epochs=1)
    # an explicit checkpoint interval wins over the schedule's checkpoints (it was silently ignored)
    plan = plan_run(40, schedule=sched, items_per_step=None, checkpoints=None, checkpoint_every=4, steps=None, epochs=1)
    assert plan.checkpoints == (0, 1, 2, 4, 8, 10)
    # zero is refused, not taken for "use the default"
    with pytest.raises(ValueError, match="checkpoint_every must be positive, got 0"):
        plan_run(40, schedule=None, items_per_step=8, checkpoints=None, checkpoint_every=0, steps=None, epochs=1)
    with pytest.raises(ValueError, match="items_per_step must be positive, got 0"):
        plan_run(40, schedule=None, items_per_step=0, checkpoints=None, checkpoint_every=None, steps=None, epochs=1)


def test_run_items_wraps_for_repeated_passes() -> None:
    src = ArrayItems([np.array([i, i]) for i in range(5)])
    got = [int(x[0]) for x in run_items(src, 3, 12)]
    assert got == [3, 4, 0, 1, 2, 3, 4, 0, 1]


# ------------------------------------------------------------------------------- training on items

def test_training_is_deterministic_and_learns(corpus_items: list[np.ndarray], tmp_path: Path) -> None:
    a = _train(corpus_items, tmp_path / "a", epochs=3, checkpoint_every=6)
    b = _train(corpus_items, tmp_path / "b", epochs=3, checkpoints=(0, 6, 18))
    c = _train(corpus_items, tmp_path / "c", epochs=3, seed=1, checkpoints=(0,))
    run = json.loads((a / "run.json").read_text())
    assert run["total_steps"] == 18 and run["checkpoints"] == [0, 1, 2, 4, 6, 12, 18]
    assert run["finished"] and run["finished_checkpoints"] == run["checkpoints"]
    for s in (0, 6, 18):
        sa, sb = _state(a / f"step{s}"), _state(b / f"step{s}")
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), f"step{s} differs between identical runs"
    assert not torch.equal(_state(a / "step0")["gpt_neox.embed_in.weight"], _state(c / "step0")["gpt_neox.embed_in.weight"])
    assert not torch.equal(_state(a / "step0")["embed_out.weight"], _state(a / "step18")["embed_out.weight"])
    losses = run["loss_curve"]["loss"]
    assert len(losses) == 18 and losses == json.loads((b / "run.json").read_text())["loss_curve"]["loss"]
    assert np.mean(losses[-3:]) < losses[0] - 1.0, losses
    info = json.loads((a / "step6" / "checkpoint.json").read_text())
    assert info["step"] == 6 and info["items_seen"] == 48
    assert info["tokens_trained"] == 48 * ITEM_LEN


def test_checkpoints_load_with_transformers(corpus_items: list[np.ndarray], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = _train(corpus_items, tmp_path / "run", checkpoints=(0, 3, 6))
    for s in (0, 6):
        model = AutoModelForCausalLM.from_pretrained(out / f"step{s}")
        tok = AutoTokenizer.from_pretrained(out / f"step{s}")
        assert type(model).__name__ == "GPTNeoXForCausalLM"
        assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 32
        assert model.config.max_position_embeddings == ITEM_LEN - 1
        assert tok.eos_token == "<|endoftext|>" and tok.bos_token_id == 0 == model.config.eos_token_id
        assert tok.pad_token == "<|padding|>"
        ids = tok("These dogs were barking.", return_tensors="pt").input_ids
        assert ids.tolist()[0] == load_tokenizer(tokenizer_path()).encode("These dogs were barking.")
        with torch.no_grad():
            logits = model(input_ids=torch.cat([torch.tensor([[tok.bos_token_id]]), ids], dim=1)).logits
        assert logits.shape == (1, ids.shape[1] + 1, 8192) and torch.isfinite(logits).all()


def test_batches_are_consecutive_items(corpus_items: list[np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fed: list[np.ndarray] = []
    real = loop.collate

    def spy(items, **kw):  # type: ignore[no-untyped-def]
        batch = real(items, **kw)
        fed.append(batch.input_ids.copy())
        return batch

    monkeypatch.setattr(loop, "collate", spy)
    _train(corpus_items[:44], tmp_path / "run", items_per_step=8, checkpoints=(0, 6))
    assert len(fed) == 6
    for i, ids in enumerate(fed):
        want = np.stack([x[:-1] for x in corpus_items[i * 8 : min((i + 1) * 8, 44)]]).astype(np.int64)
        np.testing.assert_array_equal(ids, want)


def test_resume_after_interruption_is_exact(
    corpus_items: list[np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = _train(corpus_items, tmp_path / "ref", checkpoints=(0, 2, 4, 6))
    saved: list[int] = []
    real = loop._save_checkpoint

    def crash_after_4(model, tok, out_dir, step, info):  # type: ignore[no-untyped-def]
        path = real(model, tok, out_dir, step, info)
        saved.append(step)
        if step == 4:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(loop, "_save_checkpoint", crash_after_4)
    with pytest.raises(KeyboardInterrupt):
        _train(corpus_items, tmp_path / "run", checkpoints=(0, 2, 4, 6))
    assert saved == [0, 2, 4] and not (tmp_path / "run" / "step6").exists()
    assert not (tmp_path / "run" / "run.json").exists(), "run.json means finished"
    progress = json.loads((tmp_path / "run" / "progress.json").read_text())
    # the crash came after step4/ was written but before the resume state and progress.json caught up:
    # the rerun resumes from step 2's optimizer state and keeps step4/ as it is
    assert progress["finished_checkpoints"] == [0, 2] and not progress["finished"]
    assert len(progress["loss_curve"]["loss"]) == 2
    mtime = (tmp_path / "run" / "step2" / "model.safetensors").stat().st_mtime_ns
    saved.clear()
    _train(corpus_items, tmp_path / "run", checkpoints=(0, 2, 4, 6))
    assert saved == [6], "finished checkpoints must not be recomputed"
    assert (tmp_path / "run" / "step2" / "model.safetensors").stat().st_mtime_ns == mtime
    sr, sn = _state(ref / "step6"), _state(tmp_path / "run" / "step6")
    assert all(torch.equal(sr[k], sn[k]) for k in sr)
    assert not (tmp_path / "run" / "progress.json").exists()
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["finished"] and run["loss_curve"]["loss"] == json.loads((ref / "run.json").read_text())["loss_curve"]["loss"]

    # without a usable optimizer state the run restarts from 0 and still only writes what is missing
    shutil.rmtree(tmp_path / "run" / "step6")
    (tmp_path / "run" / "resume.pt").unlink()
    saved.clear()
    _train(corpus_items, tmp_path / "run", checkpoints=(0, 2, 4, 6))
    assert saved == [6]
    sn = _state(tmp_path / "run" / "step6")
    assert all(torch.equal(sr[k], sn[k]) for k in sr)

    # nor with a damaged one (it used to fail with torch's "PytorchStreamReader failed reading zip archive")
    shutil.rmtree(tmp_path / "run" / "step6")
    resume = tmp_path / "run" / "resume.pt"
    resume.write_bytes(resume.read_bytes()[: resume.stat().st_size // 2])
    saved.clear()
    _train(corpus_items, tmp_path / "run", checkpoints=(0, 2, 4, 6))
    assert saved == [6]
    sn = _state(tmp_path / "run" / "step6")
    assert all(torch.equal(sr[k], sn[k]) for k in sr)


def test_micro_batches_and_bf16(corpus_items: list[np.ndarray], tmp_path: Path) -> None:
    """Gradient accumulation over uneven micro-batches gives the same update (up to float rounding)."""
    cfg = TINY.resolved(vocab_size=8192, context_length=ITEM_LEN - 1)
    plan = plan_run(24, schedule=None, items_per_step=8, checkpoints=(0, 3), checkpoint_every=None, steps=None, epochs=1)

    def run(name: str, **kw: object) -> Path:
        return train_items(ArrayItems(corpus_items[:24]), tmp_path / name, model_config=cfg, tokenizer_file=tokenizer_path(),
                           plan=plan, optim=OptimConfig(lr=3e-3, warmup=1), device="cpu", progress=False,
                           data_info={"id": "first 24 items"}, **kw)  # type: ignore[arg-type]

    whole, micro, half = run("whole"), run("micro", micro_batch_size=3), run("bf16", precision="bf16", threads=1)
    sw, sm = _state(whole / "step3"), _state(micro / "step3")
    assert all(torch.allclose(sw[k], sm[k], atol=2e-5) for k in sw)
    lw = json.loads((whole / "run.json").read_text())["loss_curve"]["loss"]
    lm = json.loads((micro / "run.json").read_text())["loss_curve"]["loss"]
    lh = json.loads((half / "run.json").read_text())["loss_curve"]["loss"]
    assert np.allclose(lw, lm, atol=1e-4) and np.allclose(lw, lh, atol=0.05)
    assert _state(half / "step3")["embed_out.weight"].dtype == torch.float32  # bf16 autocast, fp32 weights


def test_refuses_a_folder_with_other_settings(corpus_items: list[np.ndarray], tmp_path: Path) -> None:
    _train(corpus_items, tmp_path / "run", checkpoints=(0, 1))
    with pytest.raises(ValueError, match="other settings.*optim"):
        _train(corpus_items, tmp_path / "run", checkpoints=(0, 1), lr=1e-2)


# ------------------------------------------------------------------------ the index-driven path

def _build_index(items: list[np.ndarray], path: Path, schedule: Schedule | None) -> exposure.Index:
    tok = load_tokenizer(tokenizer_path())
    meta = {"tokenizer": tok.to_metadata()}
    if schedule is not None:
        meta["schedule"] = schedule.to_dict()
    stream = np.concatenate(items).astype(np.uint16)
    return exposure.build_index(stream, str(path), vocab_size=tok.vocab_size, item_length=ITEM_LEN,
                                metadata=meta, progress=False)


def test_train_reference_reads_the_index_in_order(corpus_items: list[np.ndarray], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    items = corpus_items[:40]
    sched = Schedule.custom(item_length=ITEM_LEN, items_per_step=8, checkpoints=(0, 1, 2, 4, 5), num_steps=5)
    idx = _build_index(items, tmp_path / "index", sched)
    fed: list[np.ndarray] = []
    real = loop.collate

    def spy(batch_items, **kw):  # type: ignore[no-untyped-def]
        batch = real(batch_items, **kw)
        fed.append(batch.input_ids.copy())
        return batch

    monkeypatch.setattr(loop, "collate", spy)
    out = train_reference(tmp_path / "index", tmp_path / "model", config=TINY, seed=0, device="cpu", progress=False)
    assert len(fed) == 5
    for i, ids in enumerate(fed):
        a, _ = idx.item_bounds(i * 8)
        _, b = idx.item_bounds(i * 8 + 7)
        want = idx.tokens(a, b).reshape(8, ITEM_LEN)[:, :-1].astype(np.int64)
        np.testing.assert_array_equal(ids, want)
    run = json.loads((out / "run.json").read_text())
    assert run["checkpoints"] == [0, 1, 2, 4, 5]
    assert run["data"]["num_items"] == 40 and run["data"]["index_path"] == str((tmp_path / "index").resolve())
    assert run["data"]["stream"] == idx.stream_id is not None
    rs = Schedule.from_dict(run["schedule"])
    assert (rs.item_length, rs.items_per_step, rs.checkpoints, rs.num_steps) == (ITEM_LEN, 8, (0, 1, 2, 4, 5), 5)
    # the index's schedule agrees with the run: a token trained in step i is seen by checkpoint i+1
    assert rs.step_of([idx.item_bounds(8)[0]])[0] == 1
    assert run["model"]["transformers_config"]["max_position_embeddings"] == ITEM_LEN - 1
    assert run["tokenizer"]["sha256"] == load_tokenizer(tokenizer_path()).sha256
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("step")) == ["step0", "step1", "step2", "step4", "step5"]


def test_a_run_over_two_passes_with_a_partial_last_step_records_what_it_read(
    corpus_items: list[np.ndarray], tmp_path: Path
) -> None:
    # 21 items, 2 passes, 4 per step: 42 items in 11 steps, the last reading 2. The run's schedule used to say
    # 11 whole steps, so its exposures counted the first items of a third pass that was never trained on.
    idx = _build_index(corpus_items[:21], tmp_path / "index", None)
    out = train_reference(tmp_path / "index", tmp_path / "model", config=TINY, items_per_step=4, epochs=2.0,
                          checkpoints=(0, 5, 11), seed=0, device="cpu", progress=False)
    run = json.loads((out / "run.json").read_text())
    rs = Schedule.from_dict(run["schedule"])
    assert (rs.epoch_items, rs.num_steps, rs.total_items) == (21, 11, 42)
    first = idx.tokens(*idx.item_bounds(0))[:3].tolist()
    assert idx.count([first])[0] >= 1
    assert rs.exposures(idx, [first]).sum() == 2 * idx.count([first])[0]


def test_cli_train_reference_without_schedule(
    corpus_items: list[np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _build_index(corpus_items[:24], tmp_path / "index", None)
    args = ["train-reference", str(tmp_path / "index"), str(tmp_path / "model"), "--layers", "1", "--d-model", "32",
            "--heads", "2", "--items-per-step", "4", "--checkpoint-every", "2", "--device", "cpu", "--no-progress"]
    assert cli.main(args) == 0
    run = json.loads((tmp_path / "model" / "run.json").read_text())
    assert run["checkpoints"] == [0, 1, 2, 4, 6] and run["items_per_step"] == 4 and run["finished"]
    assert run["schedule"]["name"] == "train-reference" and run["schedule"]["item_length"] == ITEM_LEN
    assert cli.main(args) == 0  # everything finished: nothing to do
    bad = args + ["--lr", "0.5"]
    assert cli.main(bad) == 2  # other settings in the same folder: a clear error, not a crash
    # a device this torch cannot use: one line, nothing written (mps failed at the first tensor moved there)
    where = args.index("--device") + 1
    usable = {"cuda:7": torch.cuda.device_count() > 7, "mps": torch.backends.mps.is_available()}
    for device, message in (("tpu", "unknown device 'tpu'"), ("cuda:7", "cuda:7"), ("mps", "'mps' requested")):
        if usable.get(device):
            continue
        other = args[:2] + [str(tmp_path / device)] + args[3:where] + [device] + args[where + 1 :]
        assert cli.main(other) == 2
        assert message in capsys.readouterr().err and not (tmp_path / device).exists()

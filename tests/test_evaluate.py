"""``exposure eval``: batched scoring equals a one-sentence-at-a-time reference; states, attention, resume, CLI."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM
from transformers import Olmo2Config, Olmo2ForCausalLM, PreTrainedTokenizerFast

from _corpus_files import BLIMP, OTHER_TOKENIZER, SHARED, TOKENIZER
from exposure import _core
from exposure.cli import main as cli_main
from exposure.blimp import load_blimp
from exposure.evaluate import EvalError, evaluate_run, load_results
from exposure.scoring import runs as runs_module
from exposure.scoring.batching import make_batch, plan_batches
from exposure.scoring.pairs import encode_pairs, prefix_ids

# GPT-NeoX and GPT-2 runs; where the shared data is absent the tokenizers are stand-ins (bundled, and a small BPE)
NEOX, GPT2 = TOKENIZER, OTHER_TOKENIZER
if BLIMP == SHARED / "blimp":
    PARADIGMS: tuple[str, ...] = (
        "determiner_noun_agreement_1",
        "regular_plural_subject_verb_agreement_1",
        "anaphor_gender_agreement",
        "wh_questions_object_gap",
        "existential_there_quantifiers_1",
    )
else:  # from the bundled paradigms
    PARADIGMS = (
        "determiner_noun_agreement_1",
        "regular_plural_subject_verb_agreement_1",
        "anaphor_gender_agreement",
        "irregular_past_participle_verbs",
        "sentential_negation_npi_scope",
    )
STEPS = (0, 1, 2)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_pairs(tokenizer_file: Path, per_paradigm: int = 5) -> pa.Table:
    """Real BLiMP pairs; critical word = where the token sequences differ, context = the token before it.

    Two rows are edited to exercise the 'none' cases: one pair without a critical phrase (-1), one whose
    critical word is the first token (so no context token).
    """
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    rows: list[dict[str, Any]] = []
    for paradigm in PARADIGMS:  # in this order: tests below address rows by position
        for p in load_blimp(BLIMP, paradigms=[paradigm])[:per_paradigm]:
            good = tokenizer.encode(p.sentence_good, add_special_tokens=False).ids
            bad = tokenizer.encode(p.sentence_bad, add_special_tokens=False).ids
            first = 0
            while first < min(len(good), len(bad)) and good[first] == bad[first]:
                first += 1
            tail = 0
            while tail < min(len(good), len(bad)) - first and good[-1 - tail] == bad[-1 - tail]:
                tail += 1
            row: dict[str, Any] = {
                "pair_uid": p.pair_uid,
                "uid": p.uid,
                "pair_id": p.pair_id,
                "phenomenon": p.phenomenon,
                "sentence_good": p.sentence_good,
                "sentence_bad": p.sentence_bad,
            }
            for side, ids in (("good", good), ("bad", bad)):
                start = min(first, len(ids) - 1)
                row[f"{side}_critical_start"] = start
                row[f"{side}_critical_token"] = min(max(len(ids) - tail - 1, start), len(ids) - 1)
                row[f"{side}_context_token"] = start - 1
            rows.append(row)
    # edge cases of the shared prefix: one sentence is a token prefix of the other
    for uid, good_text, bad_text in (("edge/0", "The cat sleeps.", "The cat sleeps. The dog"),
                                     ("edge/1", "The cat sleeps today.", "The cat sleeps")):
        row = {"pair_uid": uid, "uid": "edge", "pair_id": int(uid[-1]), "phenomenon": "edge",
               "sentence_good": good_text, "sentence_bad": bad_text}
        for side, text in (("good", good_text), ("bad", bad_text)):
            last = len(tokenizer.encode(text, add_special_tokens=False).ids) - 1
            row.update({f"{side}_critical_start": last, f"{side}_critical_token": last, f"{side}_context_token": 0})
        rows.append(row)
    for side in ("good", "bad"):
        rows[1][f"{side}_critical_start"] = rows[1][f"{side}_critical_token"] = -1
        rows[2][f"{side}_critical_start"] = rows[2][f"{side}_critical_token"] = 0
        rows[2][f"{side}_context_token"] = -1
    table = pa.Table.from_pylist(rows)
    for i, name in enumerate(table.column_names):
        if name.endswith(("_start", "_token")):
            table = table.set_column(i, name, table.column(name).cast(pa.int32()))
    return table.replace_schema_metadata(
        {
            b"exposure.tokenizer_sha256": sha256(tokenizer_file).encode(),
            b"exposure.checkpoints": json.dumps(list(STEPS)).encode(),
        }
    )


def make_run(root: Path, kind: str, tokenizer_file: Path, steps: tuple[int, ...] = STEPS) -> Path:
    """``root/step{S}/``: a tiny random model per step (transformers layout) with its tokenizer."""
    if kind == "gpt_neox":
        config: Any = GPTNeoXConfig(
            vocab_size=50304, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, rotary_pct=0.25,
        )
        cls: Any = GPTNeoXForCausalLM
    elif kind == "olmo2":  # OLMo-2's layout (q/k norms, post-norms), on the GPT-NeoX vocabulary
        config = Olmo2Config(
            vocab_size=50304, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, pad_token_id=1, bos_token_id=None, eos_token_id=0,
        )
        cls = Olmo2ForCausalLM
    else:
        config = GPT2Config(vocab_size=50257, n_embd=32, n_layer=2, n_head=4, n_positions=64)
        cls = GPT2LMHeadModel
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_file), bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
    for step in steps:
        torch.manual_seed(100 + step)
        model = cls(config)
        folder = root / f"step{step}"
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        shutil.copyfile(tokenizer_file, folder / "tokenizer.json")  # the original bytes: the sha256 check passes
    return root


@pytest.fixture(scope="module")
def neox(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("neox")
    pairs = make_pairs(NEOX)
    pq.write_table(pairs, base / "pairs.parquet")
    run = make_run(base / "run", "gpt_neox", NEOX)
    return {"base": base, "pairs": base / "pairs.parquet", "run": run, "table": pairs}


@pytest.fixture(scope="module")
def neox_results(neox: dict[str, Any]) -> Any:
    # a small token budget: many batches, padding in most of them
    return evaluate_run(neox["pairs"], neox["run"], neox["base"] / "out", device="cpu", dtype="fp32",
                        batch_tokens=48, progress=False)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("gpt2")
    pairs = make_pairs(GPT2, per_paradigm=3)
    pq.write_table(pairs, base / "pairs.parquet")
    run = make_run(base / "run", "gpt2", GPT2, steps=(0, 5))
    results = evaluate_run(base / "pairs.parquet", run, base / "out", device="cpu", dtype="fp32", batch_tokens=40,
                           progress=False)
    return {"base": base, "pairs": base / "pairs.parquet", "run": run, "table": pairs, "results": results}


def reference(run: Path, step: int, table: pa.Table, tokenizer_file: Path, prefix: int) -> dict[str, np.ndarray]:
    """One sentence at a time, eager attention, full outputs: the plain way of computing everything."""
    model = AutoModelForCausalLM.from_pretrained(run / f"step{step}", attn_implementation="eager",
                                                 dtype=torch.float32).eval()
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    n = table.num_rows
    layers, heads, width = model.config.num_hidden_layers, model.config.num_attention_heads, model.config.hidden_size
    out = {
        "logp": np.zeros((n, 2)),
        "crit": np.full((n, 2), np.nan),
        "states": np.full((n, 2, layers + 1, width), np.nan, dtype=np.float32),
        "attention": np.full((n, 2, layers, heads), np.nan, dtype=np.float32),
    }
    cols = table.to_pydict()
    for i in range(n):
        for s, side in enumerate(("good", "bad")):
            ids = [prefix] + tokenizer.encode(cols[f"sentence_{side}"][i], add_special_tokens=False).ids
            with torch.inference_mode():
                res = model(input_ids=torch.tensor([ids]), output_hidden_states=True, output_attentions=True,
                            use_cache=False)
            logp = torch.log_softmax(res.logits[0].double(), dim=-1)
            token_logp = logp[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0].numpy()
            out["logp"][i, s] = token_logp.sum()
            start, crit, ctx = (cols[f"{side}_{f}"][i] for f in ("critical_start", "critical_token", "context_token"))
            if crit >= 0:
                out["crit"][i, s] = token_logp[start : crit + 1].sum()
                out["states"][i, s] = torch.stack([h[0, crit + 1] for h in res.hidden_states]).numpy()
                if ctx >= 0:
                    out["attention"][i, s] = torch.stack(
                        [a[0, :, crit + 1, ctx + 1] for a in res.attentions]
                    ).numpy()
    return out


def check_against_reference(results: Any, run: Path, table: pa.Table, tokenizer_file: Path, step: int) -> None:
    ref = reference(run, step, table, tokenizer_file, results.run["prefix_token_id"])
    scores = results.scores(step)
    assert scores.column("pair_uid").to_pylist() == table.column("pair_uid").to_pylist()
    assert scores.column("step").to_pylist() == [step] * table.num_rows
    logp = np.stack([scores.column("logp_good").to_numpy(), scores.column("logp_bad").to_numpy()], axis=1)
    np.testing.assert_allclose(logp, ref["logp"], rtol=0, atol=1e-4)
    np.testing.assert_array_equal(scores.column("correct").to_numpy(zero_copy_only=False), logp[:, 0] > logp[:, 1])
    crit = np.stack([scores.column("crit_logp_good").to_numpy(), scores.column("crit_logp_bad").to_numpy()], axis=1)
    np.testing.assert_allclose(crit, ref["crit"], rtol=0, atol=1e-4)  # NaN where the reference has NaN
    np.testing.assert_allclose(scores.column("crit_margin").to_numpy(), crit[:, 0] - crit[:, 1], rtol=0, atol=1e-12)
    states = results.states(step)
    assert states.dtype == np.float16 and states.shape == ref["states"].shape
    # float16 storage: within rounding (half an ulp, 2**-11 relative) of the float32 reference values
    np.testing.assert_allclose(states.astype(np.float32), ref["states"], rtol=1e-3, atol=1e-6)
    assert np.array_equal(np.isnan(states), np.isnan(ref["states"]))
    attention = results.attention(step)
    assert attention.dtype == np.float32 and attention.shape == ref["attention"].shape
    np.testing.assert_allclose(attention, ref["attention"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("step", [0, 2])
def test_neox_equals_one_at_a_time_reference(neox: dict[str, Any], neox_results: Any, step: int) -> None:
    check_against_reference(neox_results, neox["run"], neox["table"], NEOX, step)


def test_gpt2_equals_one_at_a_time_reference(gpt2: dict[str, Any]) -> None:
    results = gpt2["results"]
    eos = Tokenizer.from_file(str(GPT2)).token_to_id("<|endoftext|>")  # 50256 in GPT-2's own tokenizer
    assert results.run["prefix_token_id"] == eos and results.run["model_type"] == "gpt2"
    for step in (0, 5):
        check_against_reference(results, gpt2["run"], gpt2["table"], GPT2, step)


def test_olmo2_equals_one_at_a_time_reference(tmp_path: Path) -> None:
    pairs = make_pairs(NEOX, per_paradigm=3)
    pq.write_table(pairs, tmp_path / "pairs.parquet")
    run = make_run(tmp_path / "run", "olmo2", NEOX, steps=(0, 3))
    results = evaluate_run(tmp_path / "pairs.parquet", run, tmp_path / "out", device="cpu", dtype="fp32",
                           batch_tokens=40, progress=False)
    assert results.run["model_type"] == "olmo2"
    for step in (0, 3):
        check_against_reference(results, run, pairs, NEOX, step)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_eval.sh runs it on one)")
def test_cuda_equals_one_at_a_time_reference(neox: dict[str, Any], neox_results: Any, tmp_path: Path) -> None:
    """On a GPU, fp32 meets the same CPU reference; bf16 stays near the fp32 answers."""
    fp32 = evaluate_run(neox["pairs"], neox["run"], tmp_path / "fp32", device="cuda", dtype="fp32", batch_tokens=48,
                        progress=False)
    assert fp32.run["device"].startswith("cuda")
    for step in (0, 2):
        check_against_reference(fp32, neox["run"], neox["table"], NEOX, step)
    bf16 = evaluate_run(neox["pairs"], neox["run"], tmp_path / "bf16", device="cuda", dtype="bf16", progress=False)
    for step in STEPS:
        ref, got = neox_results.scores(step), bf16.scores(step)
        for column in ("logp_good", "logp_bad"):  # ~10 tokens of ~-10.8 each, bf16's 2^-8 relative error
            np.testing.assert_allclose(got.column(column).to_numpy(), ref.column(column).to_numpy(), rtol=0, atol=0.5)
        np.testing.assert_allclose(bf16.attention(step), neox_results.attention(step), rtol=0, atol=2e-2)


def test_missing_positions_are_nan(neox_results: Any) -> None:
    scores = neox_results.scores(0)
    assert np.isnan(scores.column("crit_logp_good")[1].as_py()) and np.isnan(scores.column("crit_margin")[1].as_py())
    assert not np.isnan(scores.column("logp_good")[1].as_py())
    assert np.isnan(neox_results.states(0)[1]).all() and not np.isnan(neox_results.states(0)[2]).any()
    assert np.isnan(neox_results.attention(0)[1:3]).all()
    assert not np.isnan(neox_results.attention(0)[[0, 3]]).any()


def test_output_layout_and_run_json(neox: dict[str, Any], neox_results: Any) -> None:
    out = neox["base"] / "out"
    run = json.loads((out / "run.json").read_text())
    assert run["finished_checkpoints"] == list(STEPS) and run["checkpoints"] == list(STEPS)
    assert (run["n_layers"], run["n_heads"], run["d_model"]) == (2, 4, 32)
    assert run["dtype"] == "float32" and run["device"] == "cpu" and run["tokenizer_check"] == "sha256"
    assert run["pairs_sha256"] == sha256(neox["pairs"]) and run["prefix_token_id"] == 0
    assert run["n_pairs"] == neox["table"].num_rows
    assert pq.read_table(out / "pairs.parquet").equals(neox["table"])
    n = neox["table"].num_rows
    for step in STEPS:
        assert np.load(out / "states" / f"step{step}.npy").shape == (n, 2, 3, 32)
        assert np.load(out / "attention" / f"step{step}.npy").shape == (n, 2, 2, 4)
        assert pq.read_table(out / "scores" / f"step{step}.parquet").num_rows == n
    assert not list(out.rglob("*.partial"))
    assert neox_results.scores().num_rows == n * len(STEPS)
    assert load_results(out).checkpoints == STEPS


def assert_tables_identical(a: pa.Table, b: pa.Table) -> None:
    """Same schema and bit-identical values (NaN equal to NaN, which ``pa.Table.equals`` does not allow)."""
    assert a.schema == b.schema
    for name in a.column_names:
        np.testing.assert_array_equal(a.column(name).to_numpy(zero_copy_only=False),
                                      b.column(name).to_numpy(zero_copy_only=False), err_msg=name)


def _same_results(a: Path, b: Path) -> None:
    ra, rb = load_results(a), load_results(b)
    assert ra.checkpoints == rb.checkpoints
    assert ra.pairs.equals(rb.pairs)
    for step in ra.checkpoints:
        assert_tables_identical(ra.scores(step), rb.scores(step))
        np.testing.assert_array_equal(ra.states(step), rb.states(step))
        np.testing.assert_array_equal(ra.attention(step), rb.attention(step))


def test_resume_after_crash_gives_identical_tables(
    neox: dict[str, Any], neox_results: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"

    def crash(step: int, batch: int) -> None:
        if step == 1 and batch == 3:
            raise KeyboardInterrupt  # the user pressed Ctrl-C in the middle of checkpoint 1

    with pytest.raises(KeyboardInterrupt):
        evaluate_run(neox["pairs"], neox["run"], out, device="cpu", dtype="fp32", batch_tokens=48, progress=False,
                     on_batch=crash)
    assert json.loads((out / "run.json").read_text())["finished_checkpoints"] == [0]
    assert list((out / "states").glob("*.partial"))  # the interrupted checkpoint left its temporary file
    step0 = (out / "scores" / "step0.parquet").stat().st_mtime_ns

    loads: list[int] = []
    original = runs_module.Run.load_model

    def counting(self: Any, step: int, device: Any, dtype: Any) -> Any:
        loads.append(step)
        return original(self, step, device, dtype)

    monkeypatch.setattr(runs_module.Run, "load_model", counting)
    evaluate_run(neox["pairs"], neox["run"], out, device="cpu", dtype="fp32", batch_tokens=48, progress=False)
    assert loads == [1, 2]  # step 0 is finished and never recomputed
    assert (out / "scores" / "step0.parquet").stat().st_mtime_ns == step0
    assert not list(out.rglob("*.partial"))
    _same_results(out, neox["base"] / "out")

    loads.clear()  # a finished run: nothing to do, nothing loaded
    evaluate_run(neox["pairs"], neox["run"], out, device="cpu", dtype="fp32", batch_tokens=48, progress=False)
    assert loads == []

    # a finished checkpoint's file cut short afterwards (a full disk, an interrupted copy) is computed again
    for kind, path in (("states", out / "states" / "step2.npy"), ("scores", out / "scores" / "step1.parquet")):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        with pytest.raises(EvalError, match="truncated or unreadable") as err:
            load_results(out)
        assert str(path) in str(err.value)
        loads.clear()
        evaluate_run(neox["pairs"], neox["run"], out, device="cpu", dtype="fp32", batch_tokens=48, progress=False)
        assert loads == [2 if kind == "states" else 1], kind
        _same_results(out, neox["base"] / "out")


def test_resume_refuses_another_evaluation(neox: dict[str, Any], neox_results: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(neox["base"] / "out", out)
    other = neox["table"].slice(0, 5)
    with pytest.raises(EvalError, match="pairs_content_sha256"):
        evaluate_run(other, neox["run"], out, device="cpu", dtype="fp32", progress=False)
    with pytest.raises(EvalError, match="dtype"):
        evaluate_run(neox["pairs"], neox["run"], out, device="cpu", dtype="bf16", progress=False)


def test_extra_checkpoints_extend_a_finished_directory(neox: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "out"
    table = neox["table"].slice(0, 4)
    evaluate_run(table, neox["run"], out, checkpoints=[2], device="cpu", dtype="fp32", progress=False)
    results = evaluate_run(table, neox["run"], out, checkpoints=[0, 2], device="cpu", dtype="fp32", progress=False)
    assert results.checkpoints == (0, 2) and results.run["checkpoints"] == [0, 2]
    assert results.run["pairs_file"] is None and results.run["pairs_sha256"]  # in-memory table: copy's sha256


def test_bf16_path_runs_on_cpu(neox: dict[str, Any], neox_results: Any, tmp_path: Path) -> None:
    table = neox["table"].slice(0, 6)
    results = evaluate_run(table, neox["run"], tmp_path / "out", checkpoints=[0], device="cpu", dtype="bf16",
                           progress=False)
    assert results.run["dtype"] == "bfloat16"
    got = results.scores(0).column("logp_good").to_numpy()
    want = neox_results.scores(0).column("logp_good").to_numpy()[:6]
    np.testing.assert_allclose(got, want, rtol=0.02)
    assert results.states(0).dtype == np.float16


def test_tokenizer_checks(neox: dict[str, Any], tmp_path: Path) -> None:
    table = neox["table"].slice(0, 4)
    gpt2_run = make_run(tmp_path / "gpt2run", "gpt2", GPT2, steps=(0,))
    with pytest.raises(EvalError, match="tokenizer mismatch"):
        evaluate_run(table, gpt2_run, tmp_path / "a", device="cpu", progress=False)
    # a checkpoint whose tokenizer.json was re-serialized by save_pretrained: same tokenizer, other bytes
    resaved = make_run(tmp_path / "resaved", "gpt_neox", NEOX, steps=(0,))
    PreTrainedTokenizerFast(tokenizer_file=str(NEOX), bos_token="<|endoftext|>",
                            eos_token="<|endoftext|>").save_pretrained(resaved / "step0")
    assert sha256(resaved / "step0" / "tokenizer.json") != sha256(NEOX)
    with pytest.raises(EvalError, match="--tokenizer"):
        evaluate_run(table, resaved, tmp_path / "b", device="cpu", progress=False)
    results = evaluate_run(table, resaved, tmp_path / "c", device="cpu", progress=False, reference_tokenizer=NEOX)
    assert results.run["tokenizer_check"] == "equivalent"
    with pytest.raises(EvalError, match="not the one the pairs were built with"):
        evaluate_run(table, resaved, tmp_path / "d", device="cpu", progress=False, reference_tokenizer=GPT2)
    with pytest.raises(EvalError, match="different vocabularies"):
        evaluate_run(table, gpt2_run, tmp_path / "e", device="cpu", progress=False, reference_tokenizer=NEOX)
    unmarked = table.replace_schema_metadata({})
    results = evaluate_run(unmarked, resaved, tmp_path / "f", device="cpu", progress=False)
    assert results.run["tokenizer_check"] == "unchecked"
    # no fingerprint in the pairs, and the checkpoints disagree about the tokenizer: refused
    mixed = make_run(tmp_path / "mixed", "gpt_neox", NEOX, steps=(0, 1))
    shutil.copyfile(resaved / "step0" / "tokenizer.json", mixed / "step1" / "tokenizer.json")
    with pytest.raises(EvalError, match="first checkpoint"):
        evaluate_run(unmarked, mixed, tmp_path / "g", device="cpu", progress=False)


def test_bad_inputs_are_refused(neox: dict[str, Any], tmp_path: Path) -> None:
    table = neox["table"].slice(0, 4)
    crit = table.column("good_critical_token").to_pylist()
    crit[3] = 40
    broken = table.set_column(table.column_names.index("good_critical_token"), "good_critical_token",
                              pa.array(crit, pa.int32()))
    with pytest.raises(EvalError, match="another tokenizer"):
        evaluate_run(broken, neox["run"], tmp_path / "a", device="cpu", progress=False)
    with pytest.raises(EvalError, match="lacks column"):
        evaluate_run(table.drop_columns(["bad_context_token"]), neox["run"], tmp_path / "b", progress=False)
    with pytest.raises(EvalError, match=r"\[7\] not in"):
        evaluate_run(table, neox["run"], tmp_path / "c", checkpoints=[0, 7], progress=False)
    with pytest.raises(EvalError, match="no checkpoint folders"):
        evaluate_run(table, tmp_path, tmp_path / "d", progress=False)
    with pytest.raises(FileNotFoundError):
        evaluate_run(table, tmp_path / "missing_dir/run", tmp_path / "e", progress=False)
    # a model whose vocabulary is smaller than the tokenizer's ids (the embedding lookup used to fail with
    # "IndexError: index out of range in self")
    small = make_run(tmp_path / "small", "gpt_neox", NEOX, steps=(0,))
    config = json.loads((small / "step0" / "config.json").read_text())
    torch.manual_seed(0)
    GPTNeoXForCausalLM(GPTNeoXConfig(**{**config, "vocab_size": 100})).save_pretrained(small / "step0")
    with pytest.raises(EvalError, match="has a vocabulary of 100: that tokenizer is not the model's"):
        evaluate_run(table, small, tmp_path / "f", device="cpu", progress=False)
    assert not (tmp_path / "f").exists()
    # a model made for inputs shorter than the sentences (GPT-2's position table: the same IndexError)
    short = make_run(tmp_path / "short", "gpt2", GPT2, steps=(0,))
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_embd=32, n_layer=1, n_head=4, n_positions=4)).save_pretrained(
        short / "step0")
    with pytest.raises(EvalError, match="takes at most 4 positions"):
        evaluate_run(make_pairs(GPT2, per_paradigm=1), short, tmp_path / "g", device="cpu", progress=False)
    # damaged weights: a cut-short safetensors file (it failed with safetensors' own SafetensorError)
    cut = make_run(tmp_path / "cut", "gpt_neox", NEOX, steps=(0,))
    weights = cut / "step0" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(EvalError, match="cannot load checkpoint step0 .*deserializing header"):
        evaluate_run(table, cut, tmp_path / "h", device="cpu", progress=False)


def test_a_reference_run_is_refused_pairs_counted_in_another_stream(neox: dict[str, Any], tmp_path: Path) -> None:
    # Nothing tied a train-reference run to the splits: pairs whose exposures came from another index (or steps
    # of another batch size) were scored, and their proxy splits silently described some other training.
    from exposure.training.loop import RUN_FORMAT

    run = make_run(tmp_path / "run", "gpt_neox", NEOX, steps=(0,))
    schedule = {"name": "custom", "item_length": 8, "items_per_step": 4, "checkpoints": [0], "tokens_per_step": 32}
    data = {"num_tokens": 1000, "index_path": "/data/a", "stream": "uint16:00000000000000aa"}
    (run / "run.json").write_text(json.dumps({"format": RUN_FORMAT, "data": data, "schedule": schedule}))
    table = neox["table"].slice(0, 4)

    def counted(tokens: int, per_step: int, stream: str = "uint16:00000000000000aa") -> pa.Table:
        meta = {**table.schema.metadata, b"exposure.index": b"/data/b", b"exposure.index_tokens": str(tokens).encode(),
                b"exposure.schedule": json.dumps({**schedule, "tokens_per_step": per_step}).encode(),
                b"exposure.index_stream": stream.encode()}
        return table.replace_schema_metadata(meta)

    # the same size, another stream (an index rebuilt with another shuffle seed, say)
    with pytest.raises(EvalError, match=r"trained on another token stream \(uint16:00000000000000aa, index /data/a\) "
                                        r"than the one the exposures in the pairs table were counted in "
                                        r"\(uint16:00000000000000bb, index /data/b\)"):
        evaluate_run(counted(1000, 32, "uint16:00000000000000bb"), run, tmp_path / "s", device="cpu", progress=False)
    assert evaluate_run(counted(1000, 32, ""), run, tmp_path / "u", device="cpu", progress=False).checkpoints == (0,)

    with pytest.raises(EvalError, match=r"trained on an index of 1,000 tokens \(/data/a\), but the exposures in the "
                                        r"pairs table were counted in one of 2,000 \(/data/b\)"):
        evaluate_run(counted(2000, 32), run, tmp_path / "a", device="cpu", progress=False)
    with pytest.raises(EvalError, match="trained on 32 tokens per step, but the steps in the pairs table are of 64"):
        evaluate_run(counted(1000, 64), run, tmp_path / "b", device="cpu", progress=False)
    assert not any((tmp_path / name).exists() for name in ("a", "b", "s"))
    assert evaluate_run(counted(1000, 32), run, tmp_path / "c", device="cpu", progress=False).checkpoints == (0,)
    # folders of another trainer (no train-reference run.json) are not checked
    (run / "run.json").write_text(json.dumps({"format": "someone-else", "data": {"num_tokens": 1}}))
    assert evaluate_run(counted(2000, 64), run, tmp_path / "d", device="cpu", progress=False).checkpoints == (0,)


def test_a_hub_run_without_network_reads_the_local_cache_at_once(
    neox: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With no network (many cluster nodes), every hub file waited out ~25 s of retries before the cache was read
    # (or the error came): for 154 checkpoints, hours. A hub that cannot be resolved is now read from the cache only.
    import socket

    import huggingface_hub.constants

    cache = tmp_path / "cache"
    repo = cache / "models--org--tiny"
    make_run(tmp_path / "run", "gpt_neox", NEOX, steps=(0,))
    shutil.copytree(tmp_path / "run" / "step0", repo / "snapshots" / ("a" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "step0").write_text("a" * 40)  # revision step0 -> that snapshot, as a download leaves it
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))

    def no_network(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    assert runs_module.open_run("org/tiny").offline
    table = neox["table"].slice(0, 4)
    results = evaluate_run(table, "org/tiny", tmp_path / "out", checkpoints=[0], device="cpu", progress=False)
    local = evaluate_run(table, tmp_path / "run", tmp_path / "local", checkpoints=[0], device="cpu", progress=False)
    assert_tables_identical(results.scores(0), local.scores(0))
    with pytest.raises(EvalError, match=r"tokenizer.json of org/other .*the hub cannot be reached from here, and the "
                                        r"local Hugging Face cache has no copy"):
        evaluate_run(table, "org/other", tmp_path / "other", checkpoints=[0], device="cpu", progress=False)


def test_cli_eval(neox: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    argv = ["eval", "--pairs", str(neox["pairs"]), "--run", str(neox["run"]), "--out", str(out),
            "--checkpoints", "0,2", "--device", "cpu", "--dtype", "fp32", "--batch-tokens", "64", "--no-progress"]
    assert cli_main(argv) == 0
    assert "2 checkpoint(s)" in capsys.readouterr().out
    assert load_results(out).checkpoints == (0, 2)
    bad = argv[:7] + ["--checkpoints", "9", "--no-progress"]
    assert cli_main(bad) == 2
    assert "not in" in capsys.readouterr().err
    assert cli_main(argv[:7] + ["--device", "tpu"]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=60), st.integers(1, 200))
def test_batches_cover_every_sequence_within_budget(lengths: list[int], budget: int) -> None:
    arr = np.array(lengths)
    batches = plan_batches(arr, budget)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) == 1 or len(batch) * arr[batch].max() <= budget
    seqs = [np.arange(n) + 5 for n in lengths]
    built = make_batch(seqs, batches[0], prefix_id=0, pad_id=1)
    for row, k in enumerate(batches[0]):
        assert built.input_ids[row, 0] == 0 and built.lengths[row] == lengths[k] + 1
        np.testing.assert_array_equal(built.input_ids[row, 1 : lengths[k] + 1], seqs[k])
        assert (built.input_ids[row, lengths[k] + 1 :] == 1).all()
        assert built.attention_mask()[row].sum() == lengths[k] + 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=6), min_size=1, max_size=12))
def test_prefix_ids_are_equal_exactly_for_equal_prefixes(sequences: list[list[int]]) -> None:
    before, after, n_ids = prefix_ids([np.asarray(s, dtype=np.int64) for s in sequences])
    prefixes = [tuple(s[:t]) for s in sequences for t in range(len(s))]
    extended = [tuple(s[: t + 1]) for s in sequences for t in range(len(s))]
    assert len(before) == len(after) == len(prefixes) and n_ids > max(before.max(), after.max())
    first: dict[tuple[int, ...], int] = {}
    for prefix, i in zip(prefixes + extended, before.tolist() + after.tolist(), strict=True):
        assert first.setdefault(prefix, i) == i  # equal prefixes, equal ids
    assert len(set(first.values())) == len(first)  # different prefixes, different ids
    assert first[()] == 0


def test_real_pairs_share_prefixes_across_batches(neox: dict[str, Any]) -> None:
    """The reference tests above exercise the normalizer cache: prefixes recur across pairs and batches."""
    encoded = encode_pairs(neox["table"], Tokenizer.from_file(str(NEOX)))
    ids = encoded.prefix_id
    assert len(np.unique(ids)) < 0.8 * len(ids)
    batches = plan_batches(encoded.lengths() + 1, 48)
    offsets = encoded.offsets()
    batch_of = np.empty(len(ids), dtype=np.int64)
    for b, index in enumerate(batches):
        for k in index:
            batch_of[offsets[k] : offsets[k + 1]] = b
    spans = [len(np.unique(batch_of[ids == i])) for i in np.unique(ids)]
    assert max(spans) > 1  # some prefix is first computed in one batch and reused in a later one


def test_prefix_normalizers_reuse_values_and_match_log_softmax() -> None:
    from exposure.scoring.forward import PrefixNormalizers

    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=True)
    hidden = torch.randn(5, 8)
    hidden[1] = hidden[0] + 1e-2  # the same prefix computed in another row (exaggerated batching noise)
    hidden[3] = hidden[2]
    targets = torch.tensor([7, 7, 3, 9, 11])
    prefix = np.array([0, 0, 5, 5, 6])
    after = np.array([1, 1, 6, 8, 9])  # rows 0 and 1: same prefix, same token
    flushed: list[int] = []
    norm = PrefixNormalizers(head, 10, torch.device("cpu"), flushed.append)
    with torch.inference_mode():
        norm.add(hidden, targets, prefix, after)
        got = norm.logprobs(after)
        want = torch.log_softmax(head(hidden), dim=1).gather(1, targets[:, None])[:, 0]
        assert got[0] == got[1] and want[0] != want[1]  # the second row reuses the first one's value
        torch.testing.assert_close(got[[0, 2, 3, 4]], want[[0, 2, 3, 4]], rtol=0, atol=1e-5)
        # a later batch: a known prefix with a new token, and a token seen before
        norm.add(hidden[[2, 0]], torch.tensor([4, 7]), np.array([5, 0]), np.array([7, 1]))
        again = norm.logprobs(np.array([7, 1]))
        assert again[1] == got[0]
        torch.testing.assert_close(again[0], torch.log_softmax(head(hidden[2]), dim=0)[4], rtol=0, atol=1e-5)
        assert flushed == [3]  # prefixes 0, 5, 6 normalized together; the second batch brought no new prefix
        with pytest.raises(RuntimeError, match="not computed"):
            norm.logprobs(np.array([2]))  # never added


@pytest.mark.parametrize("device_type", ["cpu", "cuda"])  # the tile shapes of each device type (run on the CPU)
@pytest.mark.parametrize("bias", [False, True])
def test_tiled_logsumexp_equals_logsumexp(
    monkeypatch: pytest.MonkeyPatch, device_type: str, bias: bool
) -> None:
    from exposure.scoring import forward

    torch.manual_seed(1)
    head = torch.nn.Linear(16, 2500, bias=bias)  # 2,500 = two whole tiles of 1,024 columns + a ragged one
    hidden = torch.randn(70, 16) * 3
    # small tiles of the same kind as the device type's: several row tiles (ragged too) and vocabulary tiles
    tiles = {"cpu": (64 * 1024, 1024), "cuda": (25 * 2500, None)}
    monkeypatch.setitem(forward.LOGIT_TILES, "cpu", tiles[device_type])
    with torch.inference_mode():
        got = forward.logsumexp_rows(head, hidden)
        want = torch.logsumexp(head(hidden).double(), dim=1).float()
        torch.testing.assert_close(got, want, rtol=0, atol=2e-5)
        half = forward.logsumexp_rows(head.to(torch.bfloat16), hidden.to(torch.bfloat16))
        assert half.dtype == torch.float32
        torch.testing.assert_close(half, want, rtol=0, atol=0.1)


def test_tiled_logsumexp_recovers_from_overflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """A logit far above the first tile's maximum overflows the fast path; those rows are computed again exactly."""
    from exposure.scoring import forward

    torch.manual_seed(2)
    head = torch.nn.Linear(16, 2500)
    hidden = torch.randn(40, 16) * 3
    with torch.no_grad():
        head.weight[2400] = 30 * hidden[5] / hidden[5].norm()  # row 5 (and rows alike) peak in the last tile
    monkeypatch.setitem(forward.LOGIT_TILES, "cpu", (8 * 1024, 1024))
    with torch.inference_mode():
        want = torch.logsumexp(head(hidden).double(), dim=1).float()
        fast = forward._tiled_logsumexp(head.weight, head.bias, hidden, running=False)
        overflowed = ~torch.isfinite(fast)
        assert overflowed[5] and not overflowed.all()  # the case is exercised, and only for some rows
        torch.testing.assert_close(fast[~overflowed], want[~overflowed], rtol=0, atol=2e-5)
        torch.testing.assert_close(forward.logsumexp_rows(head, hidden), want, rtol=0, atol=2e-5)


_KERNEL_ISAS = _core.OutputHead.isas() or ["avx2"]  # the versions of the kernel this CPU runs (none: skipped)


@pytest.mark.skipif(not _core.OutputHead.supported(), reason="the C++ kernel needs x86-64 with AVX2 and FMA")
@pytest.mark.parametrize("vocab,dim", [(1, 3), (17, 1), (2500, 16), (50304, 64)])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("isa", _KERNEL_ISAS)
def test_cpu_kernel_equals_logsumexp(vocab: int, dim: int, bias: bool, isa: str) -> None:
    """The C++ kernel (used for float32 heads on the CPU), each version this CPU runs, against float64 logsumexp,
    through logsumexp_rows."""
    from exposure.scoring import forward

    torch.manual_seed(3)
    head = torch.nn.Linear(dim, vocab, bias=bias)
    hidden = torch.randn(103, dim) * 3  # 17 tiles of 6 rows (8 of 12) + 1, two tasks of 96 rows
    with torch.inference_mode():
        kernel = forward.cpu_output_head(head)
        assert kernel is not None and (kernel.vocab, kernel.dim) == (vocab, dim)
        assert kernel.isa == _KERNEL_ISAS[-1]  # the widest by default
        kernel.isa = isa
        want = torch.logsumexp(head(hidden).double(), dim=1).float()
        got = forward.logsumexp_rows(head, hidden, kernel)
        torch.testing.assert_close(got, want, rtol=0, atol=2e-5)
        assert forward.logsumexp_rows(head, hidden[:0], kernel).shape == (0,)
        assert forward.cpu_output_head(head.to(torch.bfloat16)) is None  # not float32: the torch path


@pytest.mark.skipif(not _core.OutputHead.supported(), reason="the C++ kernel needs x86-64 with AVX2 and FMA")
@pytest.mark.parametrize("isa", _KERNEL_ISAS)
def test_cpu_kernel_overflow_and_nan_rows(isa: str) -> None:
    """A logit far above a row's first 128 is computed exactly; a NaN hidden state gives NaN, not a number."""
    from exposure.scoring import forward

    torch.manual_seed(4)
    head = torch.nn.Linear(16, 2500)
    hidden = torch.randn(40, 16) * 3
    with torch.no_grad():
        head.weight[2400] = 200 * hidden[5] / hidden[5].norm() ** 2  # row 5's logit 2400 is ~200 above the rest
    with torch.inference_mode():
        want = torch.logsumexp(head(hidden).double(), dim=1).float()
        assert float(want[5]) > 150
        kernel = forward.cpu_output_head(head)
        with pytest.raises(ValueError, match="isa must be 'avx2' or 'avx512'"):
            kernel.isa = "neon"
        kernel.isa = isa
        torch.testing.assert_close(forward.logsumexp_rows(head, hidden, kernel), want, rtol=0, atol=2e-5)
        hidden[7, 3] = float("nan")
        got = forward.logsumexp_rows(head, hidden, kernel)
        assert torch.isnan(got[7]) and int(torch.isnan(got).sum()) == 1


@pytest.mark.skipif(not _core.OutputHead.supported(), reason="the C++ kernel needs x86-64 with AVX2 and FMA")
def test_cpu_kernel_and_torch_path_give_the_same_scores(
    monkeypatch: pytest.MonkeyPatch, neox: dict[str, Any], tmp_path: Path
) -> None:
    """The whole checkpoint scored with the C++ kernel and with the torch path: equal within float32 rounding."""
    from exposure.scoring import forward

    def scores(out: str) -> pa.Table:
        return evaluate_run(neox["pairs"], neox["run"], tmp_path / out, checkpoints=[1], device="cpu", dtype="fp32",
                            progress=False).scores(1)

    monkeypatch.setattr(forward, "CPU_KERNEL", False)
    torch_path = scores("torch")
    monkeypatch.setattr(forward, "CPU_KERNEL", True)
    kernel = scores("kernel")
    for column in ("logp_good", "logp_bad"):
        np.testing.assert_allclose(kernel.column(column).to_numpy(), torch_path.column(column).to_numpy(), rtol=0,
                                   atol=1e-4)


def test_declared_prefix_token_agrees_with_transformers(
    neox: dict[str, Any], gpt2: dict[str, Any], tmp_path: Path
) -> None:
    """The prefix token read from tokenizer_config.json equals transformers' BOS-else-EOS, or defers to it."""
    from transformers import AutoTokenizer

    from exposure.scoring.runs import declared_prefix_token, open_run

    for run_dir in (neox["run"], gpt2["run"]):
        run = open_run(run_dir)
        step = run.available_checkpoints()[0]
        tokenizer_file = run.tokenizer_file(step)
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        declared = declared_prefix_token(tokenizer_file.parent, tokenizer)
        auto = AutoTokenizer.from_pretrained(tokenizer_file.parent)
        assert declared is not None and declared == auto.bos_token_id
        assert run.prefix_token_id(step, tokenizer) == run.prefix_token_id(step) == declared
    folder = tmp_path / "tok"
    folder.mkdir()
    shutil.copyfile(NEOX, folder / "tokenizer.json")
    tokenizer = Tokenizer.from_file(str(NEOX))
    eos = tokenizer.token_to_id("<|endoftext|>")
    cases: list[tuple[dict[str, Any], int | None]] = [
        ({"bos_token": None, "eos_token": "<|endoftext|>"}, eos),  # no BOS: the EOS
        ({"bos_token": {"content": "<|endoftext|>", "special": True}, "eos_token": None}, eos),
        ({"eos_token": "<|endoftext|>"}, None),  # BOS left out: a class default may apply, ask transformers
        ({"bos_token": "<|not a token|>", "eos_token": "<|endoftext|>"}, None),
        ({"bos_token": None, "eos_token": None}, None),
    ]
    for config, want in cases:
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
        assert declared_prefix_token(folder, tokenizer) == want, config
    (folder / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<|endoftext|>"}))
    assert declared_prefix_token(folder, tokenizer) is None  # two sources: transformers merges them


def test_default_batch_tokens_follow_the_model_width_on_cpu(neox: dict[str, Any], tmp_path: Path) -> None:
    from exposure.evaluate import default_batch_tokens

    assert default_batch_tokens("cpu", 768) == 512  # Pythia-160M
    assert default_batch_tokens("cpu", 64) == 6144
    assert default_batch_tokens("cpu", 8192) == 128 and default_batch_tokens("cpu", 8) == 16384  # the bounds
    assert default_batch_tokens("cuda", 768) == 16384
    results = evaluate_run(neox["pairs"], neox["run"], tmp_path / "out", checkpoints=[0], device="cpu", dtype="fp32",
                           progress=False)
    assert results.run["batch_tokens"] == 393216 // 32  # the test model is 32 wide

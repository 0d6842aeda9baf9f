"""``exposure train-reference INDEX OUT``: pre-train a small GPT-NeoX model on an index, in index order."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from exposure.cli import non_negative_float, non_negative_int, positive_float, positive_int

HELP = "train a GPT-NeoX reference model from scratch on an index's items, in index order"


def register(subparsers: Any) -> None:
    from exposure.schedule import parse_checkpoints
    from exposure.training.config import MODEL_PRESETS
    from exposure.training.loop import PRECISIONS
    from exposure.training.reference import DEFAULT_ITEMS_PER_STEP

    p: argparse.ArgumentParser = subparsers.add_parser(
        "train-reference",
        help=HELP,
        description=(
            HELP + ". Step i consumes items [i*B, (i+1)*B) of the index, so the index's schedule is the training "
            "order. Writes OUT/step{S}/ (transformers layout + tokenizer) on a Pythia-like schedule and OUT/run.json. "
            "Re-running with the same arguments resumes; finished checkpoints are not recomputed."
        ),
    )
    p.add_argument("index", help="index directory (built by `exposure build`)")
    p.add_argument("out", help="output directory for run.json and the step{S}/ checkpoints")
    m = p.add_argument_group("model (GPT-NeoX, random init)")
    m.add_argument("--preset", choices=MODEL_PRESETS, default="tiny",
                   help="model size preset (default: tiny = 4 layers, d_model 256, 4 heads)")
    m.add_argument("--layers", type=positive_int, help="number of layers")
    m.add_argument("--d-model", type=positive_int, help="hidden size")
    m.add_argument("--heads", type=positive_int, help="attention heads")
    m.add_argument("--d-ff", type=positive_int, help="MLP size (default 4 * d_model)")
    m.add_argument("--context", type=positive_int, help="context length (default: the index's item length - 1)")
    t = p.add_argument_group("training")
    t.add_argument("--items-per-step", type=positive_int,
                   help=f"items per optimizer step (default: the index's schedule, else {DEFAULT_ITEMS_PER_STEP})")
    t.add_argument("--checkpoints", type=parse_checkpoints,
                   help="checkpoint steps, e.g. '0,1,2,4,8' or '0:1000:100' (default: the index's schedule, else Pythia-like)")
    t.add_argument("--checkpoint-every", type=positive_int,
                   help="Pythia-like checkpoints every K steps: 0, powers of two below K, then every K steps, and the "
                        "last step; given, it replaces the index's schedule's checkpoints (default: those, else K "
                        "chosen for at most 25 checkpoints)")
    t.add_argument("--steps", type=positive_int, help="optimizer steps (default: the index's schedule, else one pass × --epochs)")
    t.add_argument("--epochs", type=positive_float, default=1.0, help="passes over the index (default 1)")
    t.add_argument("--lr", type=positive_float, default=1e-3, help="peak AdamW learning rate (default 1e-3)")
    t.add_argument("--warmup", type=non_negative_int, help="warmup steps (default: 1%% of the steps, at least 1)")
    t.add_argument("--weight-decay", type=non_negative_float, default=0.01, help="AdamW weight decay (default 0.01)")
    t.add_argument("--seed", type=non_negative_int, default=0, help="initialisation seed (default 0)")
    t.add_argument("--device", default="auto", help="auto (a GPU when present), cpu, cuda, cuda:N")
    t.add_argument("--micro-batch", type=positive_int, help="items per forward pass (gradient accumulation; default: the whole step)")
    t.add_argument("--threads", type=positive_int, help="CPU threads for torch (default: torch's own, usually all cores)")
    t.add_argument("--precision", choices=PRECISIONS, default="fp32", help="fp32 (default) or bf16 autocast")
    t.add_argument("--tokenizer", help="tokenizer.json to save with the checkpoints (default: the index's own; must match it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from exposure.training.config import ModelConfig
    from exposure.training.reference import train_reference

    config = ModelConfig.preset(
        args.preset, n_layers=args.layers, d_model=args.d_model, n_heads=args.heads, d_ff=args.d_ff,
        context_length=args.context,
    )
    out = train_reference(
        args.index,
        args.out,
        config=config,
        items_per_step=args.items_per_step,
        checkpoints=args.checkpoints,
        checkpoint_every=args.checkpoint_every,
        steps=args.steps,
        epochs=args.epochs,
        lr=args.lr,
        warmup=args.warmup,
        weight_decay=args.weight_decay,
        seed=args.seed,
        device=args.device,
        tokenizer=args.tokenizer,
        micro_batch_size=args.micro_batch,
        precision=args.precision,
        threads=args.threads,
        progress=not args.no_progress,
    )
    print(f"checkpoints and run.json in {out}", file=sys.stderr)
    return 0

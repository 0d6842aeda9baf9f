"""Counts, sizes and rates given on the command line are refused at parse time when out of range, instead of
being clamped, ignored or taken for "the default" (0 used to start a demo or a training run)."""

from __future__ import annotations

import pytest

from exposure.cli import build_parser, parse_args
from exposure.demo import DemoConfig


@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--pairs-per-paradigm", "0"],
        ["demo", "--eval-every", "0"],
        ["demo", "--threads", "-1"],
        ["query", "idx", "these dogs", "--windows", "0"],
        ["train-reference", "idx", "out", "--checkpoint-every", "0"],
        ["build", "a.txt", "--format", "text", "--out", "o", "--items-per-step", "0"],
        ["build", "a.txt", "--format", "text", "--out", "o", "--threads", "zero"],
        ["eval", "--pairs", "p", "--run", "r", "--out", "o", "--batch-tokens", "0"],
    ],
)
def test_non_positive_counts_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {argv[-2]}: expected a positive integer, got" in err


# train-reference named its options by their Python names ("micro_batch_size must be positive",
# "ModelConfig.context_length must be positive") and took a negative weight decay or seed
_TR = ["train-reference", "idx", "out"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([*_TR, "--layers", "0"], "a positive integer"),
        ([*_TR, "--d-model", "0"], "a positive integer"),
        ([*_TR, "--heads", "-2"], "a positive integer"),
        ([*_TR, "--d-ff", "0"], "a positive integer"),
        ([*_TR, "--context", "0"], "a positive integer"),
        ([*_TR, "--items-per-step", "0"], "a positive integer"),
        ([*_TR, "--steps", "0"], "a positive integer"),
        ([*_TR, "--micro-batch", "0"], "a positive integer"),
        ([*_TR, "--threads", "0"], "a positive integer"),
        ([*_TR, "--warmup", "-1"], "a non-negative integer"),
        ([*_TR, "--seed", "-1"], "a non-negative integer"),
        ([*_TR, "--epochs", "0"], "a positive number"),
        ([*_TR, "--lr", "-0.001"], "a positive number"),
        ([*_TR, "--lr", "nan"], "a positive number"),
        ([*_TR, "--lr", "inf"], "a positive number"),
        ([*_TR, "--weight-decay", "-0.1"], "a non-negative number"),
        ([*_TR, "--weight-decay", "lots"], "a non-negative number"),
        (["build", "a.txt", "--format", "text", "--out", "o", "--seed", "-1"], "a non-negative integer"),
    ],
)
def test_out_of_range_numbers_are_refused(argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    assert f"argument {argv[-2]}: expected {expected}, got" in capsys.readouterr().err


def test_boundary_numbers_are_accepted() -> None:
    args = build_parser().parse_args([*_TR, "--warmup", "0", "--weight-decay", "0", "--seed", "0", "--lr", "3e-4",
                                      "--epochs", "0.5"])
    assert (args.warmup, args.weight_decay, args.seed, args.lr, args.epochs) == (0, 0.0, 0, 3e-4, 0.5)


def test_positive_counts_are_accepted() -> None:
    args = build_parser().parse_args(["query", "idx", "these dogs", "--windows", "3"])
    assert args.windows == 3


def test_options_may_stand_between_words() -> None:
    # argparse alone gives a command's word list only the words before the first option and rejects the rest
    # ("unrecognized arguments: of the"): `exposure query IDX --json "of the"` failed.
    args = parse_args(build_parser(), ["query", "idx", "--json", "of the", "--windows", "2", "these dogs"])
    assert (args.command, args.index, args.phrases, args.json, args.windows) == (
        "query", "idx", ["of the", "these dogs"], True, 2)
    args = parse_args(build_parser(), ["build", "a.txt", "--format", "text", "b.txt", "--out", "o"])
    assert (args.command, args.sources, args.fmt, args.out) == ("build", ["a.txt", "b.txt"], "text", "o")


def test_a_command_line_without_a_known_command_gets_argparse_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(build_parser(), ["nope", "idx"])
    assert exc.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("field", ["pairs_per_paradigm", "eval_every", "items_per_step", "item_length"])
def test_demo_config_refuses_non_positive_counts(field: str) -> None:
    with pytest.raises(ValueError, match=f"DemoConfig.{field} must be positive, got 0"):
        DemoConfig(**{field: 0})

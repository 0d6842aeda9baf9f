"""Counts and sizes given on the command line are refused at parse time when they are not positive, instead of
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

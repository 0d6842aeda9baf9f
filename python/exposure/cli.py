"""The ``exposure`` command line: sub-commands are discovered in :mod:`exposure.commands`."""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence

from exposure import commands


class UserError(Exception):
    """An error caused by the user's input: printed as one clear line, exit status 2."""


def _integer(text: str, low: int, kind: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {kind}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _integer(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _integer(text, 0, "a non-negative integer")


def _number(text: str, positive: bool) -> float:
    kind = "a positive number" if positive else "a non-negative number"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
    if not (value > 0 if positive else value >= 0) or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected {kind}, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    return _number(text, positive=True)


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    return _number(text, positive=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exposure",
        description="When did a language model see a phrase in pre-training, and what did it do to it?",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parser.set_defaults(commands=sub.choices)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse a command line whose options may stand between positional words.

    ``exposure query IDX --json "of the"``: argparse gives a command's list of words (``PHRASE ...``)
    only the words before the first option, and rejects the rest, unless it parses intermixed,
    which it cannot do through sub-commands. So the command's own parser reads the words after it.
    """
    words = list(sys.argv[1:] if argv is None else argv)
    commands = parser.get_default("commands")
    if words and words[0] in commands:
        args = commands[words[0]].parse_intermixed_args(words[1:])
        args.command = words[0]
        return args
    return parser.parse_args(words)  # help, no command or an unknown one: argparse's own messages


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except (UserError, ValueError, FileNotFoundError, PermissionError) as exc:
        print(f"exposure {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"exposure {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""What the README and docs/CONTRACTS.md show a user is what the code does: the README's Python tour runs as
written, and every index and schedule member the contracts name exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest

import exposure
from exposure.schedule import Schedule

ROOT = Path(__file__).resolve().parents[1]


def code_blocks(path: Path, language: str | None = None) -> list[str]:
    """The fenced code blocks of a Markdown file, those of ``language`` only when given."""
    blocks: list[str] = []
    lang: str | None = None
    lines: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            if lang is None:
                lang, lines = line[3:].strip(), []
            else:
                if language is None or lang == language:
                    blocks.append("\n".join(lines) + "\n")
                lang = None
        elif lang is not None:
            lines.append(line)
    return blocks


def test_readme_python_tour_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tour = code_blocks(ROOT / "README.md", "python")[0]
    assert 'np.fromfile("train.u16"' in tour and '"my-index"' in tour
    tokens = np.random.default_rng(0).integers(0, 50277, 2049 * 40).astype(np.uint16)
    tokens[tokens == 841] = 7  # the tour's phrases occur exactly where planted
    tokens[tokens == 436] = 7
    tokens[5000:5002] = [841, 9097]  # " these dogs", in item 2 (step 0)
    tokens[9000:9002] = [436, 4370]  # " this dog"
    monkeypatch.chdir(tmp_path)
    tokens.tofile("train.u16")
    names: dict = {}
    exec(compile(tour, "README.md (Python API tour)", "exec"), names)
    idx, phrases, pythia = names["idx"], names["phrases"], names["pythia"]
    assert idx.count(phrases).tolist() == [1, 1]
    assert idx.first_position(phrases).tolist() == [5000, 9000]
    assert pythia.first_step(idx, phrases).tolist() == [0, 0]
    assert pythia.seen_by(idx, phrases, 1000).tolist() == [True, True]
    context = idx.context(5000, before=8, after=8)
    assert (context.start, context.item) == (4992, 2) and context.tokens[8:10].tolist() == [841, 9097]


def test_contracts_name_only_existing_members(tmp_path: Path) -> None:
    engine = next(b for b in code_blocks(ROOT / "docs" / "CONTRACTS.md", "python") if "exposure.Index(" in b)
    schedule = next(b for b in code_blocks(ROOT / "docs" / "CONTRACTS.md", "python") if "Schedule.preset" in b)
    index_members = set(re.findall(r"\bidx\.(\w+)", engine))
    schedule_members = set(re.findall(r"\bs\.(\w+)", schedule)) | set(re.findall(r"Schedule\.(\w+)", schedule))
    assert {"count", "first_position", "window_counts", "context", "num_tokens"} <= index_members
    assert {"first_step", "exposures", "window_boundaries", "from_dict"} <= schedule_members
    idx = exposure.build_index(np.arange(100, dtype=np.uint16) % 7, tmp_path / "i", item_length=10, progress=False)
    assert [m for m in sorted(index_members) if not hasattr(idx, m)] == []
    assert [m for m in sorted(schedule_members) if not hasattr(Schedule.preset("pythia"), m)] == []
    assert "IndexFileError" in engine and hasattr(exposure, "IndexFileError")


def readme_commands() -> list[str]:
    """Every ``exposure ...`` command the README shows, its continuation lines (indented, or after a
    backslash) joined, in the synopsis's notation made concrete: ``[--x V]`` -> ``--x V``, ``a|b`` -> ``a``,
    ``SOURCE...`` -> ``SOURCE``, a lone ``...`` -> ``X``, ``N`` -> ``1``."""
    commands: list[str] = []
    for block in code_blocks(ROOT / "README.md"):
        inside = False
        for line in block.splitlines():
            code = re.sub(r"\s+#.*$", "", line).rstrip().removesuffix("\\").rstrip()
            if re.match(r"exposure [a-z]", code):
                commands.append(code)
                inside = True
            elif inside and line.startswith(" "):
                commands[-1] += " " + code.strip()
            else:
                inside = False
    concrete = []
    for command in commands:
        command = re.sub(r"[\[\]]", "", command)
        command = re.sub(r"([\w.-]+)(\|[\w.-]+)+", r"\1", command)
        command = re.sub(r"(\w)\.\.\.", r"\1", command)
        command = re.sub(r"(?<=\s)N(?=\s|$)", "1", command)  # a count's metavariable
        concrete.append(re.sub(r"(?<=\s)\.\.\.(?=\s|$)", "X", command))
    return concrete


def test_readme_commands_parse() -> None:
    """Each command the README shows is accepted by the real parser: sub-command, options and positionals."""
    from exposure.cli import build_parser

    commands = readme_commands()
    names = {shlex.split(c)[1] for c in commands}
    assert names >= {"build", "query", "info", "phrases", "splits", "train-reference", "eval", "analyze", "demo"}
    rejected = []
    for command in commands:
        try:
            build_parser().parse_args(shlex.split(command)[1:])
        except SystemExit:
            rejected.append(command)
    assert rejected == []

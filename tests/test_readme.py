"""The README as a newcomer reads it: one sentence of what kmemdump is, the two commands, a picture of
`show`, then the rest; every Python example in it runs, and every command it lists parses.

The two commands themselves are what CI runs (`.ci/run`); here they are checked to be those two.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from kmemdump.cli.main import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", README.read_text(), flags=re.S)


def test_it_opens_with_what_it_is_then_the_two_commands_then_show() -> None:
    text = README.read_text()
    title, first, rest = text.split("\n\n", 2)
    assert title == "# kmemdump"
    assert first.startswith("kmemdump ") and first.count(". ") == 0 and first.endswith(".")  # one sentence
    commands = rest.split("```", 2)[1]
    assert commands.startswith("sh\n")
    lines = commands.removeprefix("sh\n").strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("python3 -m venv .venv") and lines[0].endswith("kmemdump demo")
    assert lines[1].startswith("python3 -m venv .venv") and lines[1].endswith("python -m pytest")
    picture = rest.split("```", 4)[3]
    for part in ("Reason:      hang", "\nBanner\n", "\nRegions\n", "\nDecoded\n", "Python stacks"):
        assert part in picture


@pytest.mark.parametrize("code", _blocks("python"))
def test_every_python_example_runs(code: str, tmp_path: Path) -> None:
    tables = tmp_path / "tables"
    tables.mkdir(mode=0o700)
    env = {**os.environ, "KMEMDUMP_DIR": str(tables)}
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert list(tables.iterdir()) == []  # a clean exit takes its table along


def test_every_command_line_example_parses() -> None:
    placeholders = {"PID": "4242", "DUMP": "latest"}
    checked = 0
    for block in _blocks("sh")[1:]:
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if not words or words[0] != "kmemdump":
                continue
            argv = [placeholders.get(word, word) for word in words[1:]]
            command = next(w for w in argv if not w.startswith("-"))
            _, extra = build_parser([command]).parse_known_args(argv)
            assert extra == [], line
            checked += 1
    assert checked >= 8


def _picture() -> str:
    return README.read_text().split("```", 4)[3].removeprefix("\n")


def _header_labels(text: str) -> list[str]:
    head = text.split("\n\n", 1)[0]
    return [line.split(":", 1)[0] for line in head.splitlines()]


def _sections(text: str) -> list[str]:
    lines = text.splitlines()
    return [lines[i - 1] for i in range(1, len(lines)) if lines[i] and set(lines[i]) == {"-"}]


def _region_rows(text: str) -> list[tuple[str, ...]]:
    block = text.split("\nRegions\n-------\n", 1)[1].split("\n\n", 1)[0].splitlines()
    return [tuple(line.split()[:4]) for line in block if line.strip() != "…"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_show_picture_matches_what_show_prints_for_the_demo(tmp_path: Path) -> None:
    """The README's picture of `show` is the demo's dump as `show latest` prints it today: the same
    header lines in the same order, the same sections, the same regions, the session decoded alike."""
    env = {**os.environ, "KMEMDUMP_DUMPS": str(tmp_path), "KMEMDUMP_DIR": str(tmp_path / "tables")}
    env.pop("COLUMNS", None)
    cli = [sys.executable, "-m", "kmemdump.cli"]
    demo = subprocess.run([*cli, "demo"], capture_output=True, text=True, env=env, timeout=90, check=False)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    show = subprocess.run(
        [*cli, "show", "latest"], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert show.returncode == 0, show.stderr
    real, picture = show.stdout, _picture()
    assert _header_labels(picture) == _header_labels(real)
    assert _sections(picture) == _sections(real)
    assert _region_rows(picture) == _region_rows(real)
    header = next(line for line in picture.splitlines() if line.startswith("  ID  LABEL"))
    assert header in real.splitlines()  # the columns, in the widths of these rows
    session = next(line for line in picture.splitlines() if line.startswith("    {'user': 'alice'"))
    assert session in real.splitlines()
    for line in picture.splitlines():  # every line the picture shows, beyond the ones that name this run
        if line.startswith(("Reason:", "Capture:", "[1024]", "[1025]")):
            assert line in real.splitlines(), line
        if line.startswith("Contents:"):  # the banner names this interpreter: its size varies with it
            contents = next(row for row in real.splitlines() if row.startswith("Contents:"))
            assert _sizeless(line) == _sizeless(contents), (line, contents)


def _sizeless(line: str) -> str:
    return re.sub(r"\d+(\.\d+)? (B|KiB|MiB|GiB)\b", "SIZE", line)

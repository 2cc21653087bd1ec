"""Every ``python`` block of ``docs/integrations.md`` runs as a program of its own and leaves nothing behind.

Each block runs in a fresh interpreter with a private table directory; it must exit 0, and its clean
exit removes every file it published there.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "integrations.md"


def _blocks() -> list[tuple[str, str]]:
    text = DOC.read_text(encoding="utf-8")
    return [
        (kind, textwrap.dedent(body)) for kind, body in re.findall(r"```(\w+)\n(.*?)```", text, flags=re.S)
    ]


def _examples() -> list[str]:
    """The programs: ``python`` blocks that are not test files for the pytest example."""
    return [body for kind, body in _blocks() if kind == "python" and not body.startswith("# test_")]


def _pytest_example() -> tuple[str, str, str]:
    """The test file (its name from its first line) and the ``pytest`` command after it."""
    blocks = _blocks()
    for index, (kind, body) in enumerate(blocks):
        if kind == "python" and body.startswith("# test_"):
            command = blocks[index + 1][1].strip()
            return body.splitlines()[0][2:].strip(), body, command
    raise AssertionError("no pytest example in docs/integrations.md")


def test_the_page_has_an_example_for_each_integration() -> None:
    text = "\n".join(_examples())
    for needle in ("RingHandler", "dictConfig", "faulthandler=True", "excepthook=True", "watch_loop"):
        assert needle in text


@pytest.mark.timeout(120)
@pytest.mark.parametrize("index", range(len(_examples())))
def test_example_runs(index: int, tmp_path: Path) -> None:
    code = _examples()[index]
    tables = tmp_path / "tables"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=tmp_path,
        env={**os.environ, "KMEMDUMP_DIR": str(tables)},
        check=False,
    )
    assert result.returncode == 0, f"example {index} failed:\n{code}\n{result.stderr}"
    assert not tables.exists() or list(tables.iterdir()) == []


@pytest.mark.timeout(120)
def test_the_pytest_example_dumps_and_fails_the_hanging_test(tmp_path: Path) -> None:
    name, body, command = _pytest_example()
    (tmp_path / name).write_text(body)
    args = shlex.split(command)
    assert args[0] == "pytest"
    result = subprocess.run(
        [sys.executable, "-m", *args, "-p", "no:cacheprovider"],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=tmp_path,
        env={**os.environ, "KMEMDUMP_DIR": str(tmp_path / "tables")},
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    (dump,) = (tmp_path / "dumps").iterdir()
    assert f"it was dumped from outside, with every thread's stack, to {dump}" in result.stdout

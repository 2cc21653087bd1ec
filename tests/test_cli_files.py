"""The completion scripts and the man page shipped in the package are generated from the parser and kept
equal to it; bash really completes with the script, and man renders the page.

After changing an option or a help text, regenerate them:

    KMEMDUMP_REGENERATE=1 .venv/bin/python -m pytest tests/test_cli_files.py
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers_cli import run_piped
from kmemdump.cli.main import build_parser
from kmemdump.cli.manpage import render

DATA = Path(__file__).resolve().parents[1] / "src" / "kmemdump" / "cli" / "data"


def _generated() -> dict[str, str]:
    shtab = pytest.importorskip("shtab", reason="shtab (in the test extra) generates the completion scripts")
    return {
        "kmemdump.bash": shtab.complete(build_parser(), shell="bash"),
        "_kmemdump": shtab.complete(build_parser(), shell="zsh"),
        "kmemdump.1": render(build_parser()),
    }


def test_the_shipped_files_are_generated_from_the_parser() -> None:
    generated = _generated()
    if os.environ.get("KMEMDUMP_REGENERATE"):
        for name, text in generated.items():
            (DATA / name).write_text(text)
    for name, text in generated.items():
        assert (DATA / name).read_text() == text, f"{name} is stale: KMEMDUMP_REGENERATE=1 pytest {__file__}"


def test_completion_prints_the_shipped_script() -> None:
    for shell, name in (("bash", "kmemdump.bash"), ("zsh", "_kmemdump")):
        result = run_piped(["completion", shell])
        assert result.code == 0 and result.out == (DATA / name).read_text()


def _complete(script: Path, line: str) -> list[str]:
    """What bash completes for ``line`` (the cursor at its end) with the script loaded."""
    words = line.split(" ")
    program = f"""
source {script}
COMP_WORDS=({" ".join(repr(w) if w else "''" for w in words)})
COMP_CWORD={len(words) - 1}
COMP_LINE={line!r}
COMP_POINT={len(line)}
_shtab_kmemdump
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    out = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.split()


def test_bash_completes_commands_options_and_files(tmp_path: Path) -> None:
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    script = DATA / "kmemdump.bash"
    assert "show" in _complete(script, "kmemdump sh")
    assert set(_complete(script, "kmemdump ")) >= {"show", "ls", "dump", "watch", "completion"}
    assert "--since" in _complete(script, "kmemdump ls --si")
    assert "--no-decode" in _complete(script, "kmemdump show --no")
    (tmp_path / "kmemdump-1-2-hang-x.core").write_bytes(b"")
    os.chdir(tmp_path)
    assert "kmemdump-1-2-hang-x.core" in _complete(script, "kmemdump show kmem")


def test_man_renders_the_page(tmp_path: Path) -> None:
    man = shutil.which("man")
    if man is None:
        pytest.skip("man is not installed")
    out = subprocess.run(
        [man, "-l", "-Tutf8", str(DATA / "kmemdump.1")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "MANWIDTH": "100", "MAN_KEEP_FORMATTING": "0"},
    )
    if out.returncode != 0 and "groff" in out.stderr:
        pytest.skip(f"man cannot format here: {out.stderr.strip()}")
    assert out.returncode == 0, out.stderr
    text = re.sub(".\x08", "", out.stdout)  # bold and underline are overstruck characters
    assert "kmemdump show" in text and "kmemdump ls" in text and "--since" in text.replace("\u2010", "-")
    assert "EXIT STATUS" in text and "KMEMDUMP_DUMPS" in text

"""`--help` reads right for someone who never saw the kernel's patch, and agrees with docs/cli.md.

docs/cli.md promises that `kmemdump COMMAND --help` gives every option of the command, its exit
status and its JSON output: every option the page documents for a command is in its help, every
option the help lists is documented, and a command with --json says what it prints.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from helpers_cli import cli_env
from helpers_cli import run_piped
from kmemdump.cli.main import COMMANDS

DOCS = Path(__file__).resolve().parents[1] / "docs"
CLI_DOC = DOCS / "cli.md"
INTERNAL = (":mod:", ":class:", ":func:", ":meth:", ":data:", ":attr:", "``", "seed", "the patch")
INTERNAL += ("sitecustomize",)
INTERNAL_BESIDE_OPTIONS = ("autoinit",)
"""Words of the code that may appear only inside an option's name (--no-autoinit)."""


def _help(*argv: str) -> str:
    result = run_piped([*argv, "--help"], env=cli_env({"COLUMNS": "100"}))
    assert result.code == 0, result.err
    return result.out


def _options(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]+)", text))


def _doc_section(command: str) -> str:
    text = CLI_DOC.read_text()
    start = text.index(f"\n## kmemdump {command}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_speaks_to_users(command: str | None) -> None:
    text = _help(*([command] if command else []))
    for word in INTERNAL:
        assert word not in text, (command, word)
    prose = re.sub(r"--[a-z][a-z0-9-]*", "", text)
    for word in INTERNAL_BESIDE_OPTIONS:
        assert word not in prose, (command, word)
    assert "xit status" in text  # every help says what the exit status means


def test_run_help_gives_the_commands_exit_status_not_the_generic_one() -> None:
    text = _help("run")
    epilog = text[text.index("exit status:") :]
    assert epilog.startswith("exit status: the command's (128 + N when signal N ended it)"), epilog
    assert "0 success" not in text


def test_demo_help_says_the_dump_is_kept() -> None:
    text = _help("demo")
    assert "The dump is kept" in text and "removed" not in text


def test_gdb_help_keeps_its_example_on_a_line_of_its_own() -> None:
    text = _help("gdb")
    assert re.search(r"e\.g\.\n\n    kmemdump gdb DUMP -- -batch -ex '[^'\n]+'\n\n", text), text


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_and_docs_list_the_same_options(command: str) -> None:
    text = _help(command)
    in_help = _options(text) - {"--help"}
    section = _doc_section(command)
    documented_here = _options(section)
    if "dump options" in section:  # watch, run and dump share a table, in watch's section
        documented_here |= _options(_doc_section("watch"))
    documented_anywhere = set().union(*(_options(p.read_text()) for p in DOCS.glob("*.md")))
    # every option of the command's own section (its synopsis and tables) is in its help ...
    synopsis = section.split("```", 2)[1]
    assert _options(synopsis) <= in_help, (command, _options(synopsis) - in_help)
    # ... and every option in its help is documented
    assert in_help <= documented_anywhere, (command, in_help - documented_anywhere)
    if "--json" in in_help:
        assert "--json prints" in text, command

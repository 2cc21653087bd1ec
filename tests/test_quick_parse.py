"""Each subcommand's ``quick_parse`` gives exactly the namespace its argparse parser gives, or None.

A ``quick_parse(words)`` parses a command's common forms without argparse (start-up time): where it
answers, the answer must be what ``kmemdump COMMAND words...`` gets from argparse, every attribute
with the same value and type; for anything else (help, errors, abbreviations, most ``--``) it returns
None and argparse handles the command line. Hypothesis builds command lines from the command's
options, good and bad values, repeats, unknown options and ``--``; the common forms must not be
declined, or the fast path would be dead code.
"""

from __future__ import annotations

import contextlib
import io
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from budget import examples
from kmemdump.cli import cmd_dump
from kmemdump.cli.main import COMMANDS
from kmemdump.cli.main import _quick as _quick_main
from kmemdump.cli.main import build_parser
from kmemdump.cli.main import main

_ADDED = {"_run", "_parser", "command", "verbose"}
"""What cli.main adds to every namespace (set_defaults, the top level): not the command's parsing."""


def _argparse(command: str, words: list[str]) -> dict[str, Any] | tuple[int, str]:
    """What argparse makes of ``kmemdump COMMAND words...`` as cli.main runs it: the namespace's
    attributes, or (exit status, stderr) when it stops (an error, --help)."""
    parser = build_parser([command], others=False)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            args, extra = parser.parse_known_args([command, *words])
            if extra:
                args._parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as stop:
        return int(stop.code or 0), err.getvalue()
    return {key: value for key, value in vars(args).items() if key not in _ADDED}


def _held_to_argparse(command: str, quick: Any, words: list[str]) -> object | None:
    """``quick(words)`` checked against argparse; returns what quick gave."""
    got = quick(words)
    if got is None:
        return None
    expected = _argparse(command, words)
    assert isinstance(expected, dict), f"quick_parse accepted {words!r}, argparse refused: {expected}"
    assert vars(got) == expected
    for key, value in expected.items():  # same types too (Path, not str; int, not bool)
        assert type(vars(got)[key]) is type(value), key
    return got


# --- dump ------------------------------------------------------------------------------------

_DUMP_COMMON = [
    ["4242"],
    ["4242", "--no-stacks"],
    ["4242", "--dir", "/tmp/dumps", "--no-stacks"],
    ["--dir=/tmp/dumps", "4242", "--json"],
    ["4242", "--tables", "/a", "--tables=/b", "--compress", "--durable", "--no-stop"],
    ["4242", "--budget", "64k", "--max-region", "1MiB", "--capture", "stacks", "--allow-nondumpable"],
    ["4242", "--budget=none", "--group", "0", "--capture=regions"],
    ["4242", "--dir", "a", "--dir", "b"],  # repeated: the last wins, as in argparse
    ["00042", "--json", "--json"],
    ["--no-stacks", "--", "4242"],
]


@pytest.mark.parametrize("words", _DUMP_COMMON, ids=" ".join)
def test_dump_common_forms_are_parsed_quickly_and_as_argparse_does(words: list[str]) -> None:
    assert _held_to_argparse("dump", cmd_dump.quick_parse, words) is not None


_DUMP_LEFT = [
    [],
    ["-h"],
    ["--help"],
    ["4242", "--help"],
    ["4242", "--"],
    ["4242", "5"],
    ["-5"],
    ["0"],
    ["2147483648"],
    ["4242", "--no-sta"],  # argparse's abbreviation
    ["4242", "--d", "x"],  # ambiguous abbreviation: argparse's error
    ["4242", "--json=1"],
    ["4242", "--dir"],
    ["4242", "--dir", "--json"],
    ["4242", "--budget", "lots"],
    ["4242", "--capture", "all"],
    ["4242", "--group", "wheel"],  # a name: argparse looks it up
    ["4242", "--bogus"],
    ["pid"],
]


@pytest.mark.parametrize("words", _DUMP_LEFT, ids=lambda w: " ".join(w) or "(none)")
def test_dump_other_forms_are_left_to_argparse(words: list[str]) -> None:
    assert cmd_dump.quick_parse(words) is None


_DUMP_FLAGS = ["--compress", "--durable", "--no-stop", "--no-stacks", "--allow-nondumpable", "--json"]
_DUMP_VALUES = {
    "--dir": ["/tmp/d", "d", "./x y", "-d", "", "5"],
    "--tables": ["/t", "t", "-t", ""],
    "--budget": ["64k", "1MiB", "none", "0", "-1", "1.5g", "x", "4096", "64KB"],
    "--max-region": ["1m", "2GiB", "unlimited", "0", "kib", "10"],
    "--capture": ["regions", "stacks", "Regions", ""],
    "--group": ["0", "1000", "-1", "root", "x1"],
}
_UNKNOWN = ["--bogus", "-x", "--no-s", "--dump", "--DIR", "-", "--", "-h", "--he", "--jso", "--json=yes"]
_PIDS = ["1", "4242", "007", "2147483647", "2147483648", "0", "-3", "+3", "1_000", "٣", "x", " 5"]


@st.composite
def _dump_words(draw: st.DrawFn) -> list[str]:
    words: list[str] = []
    if draw(st.integers(0, 9)):  # mostly one good pid among the options, to reach the quick path
        words.append(draw(st.sampled_from(["1", "4242", "007", "2147483647"])))
    kinds = ["flag"] * 4 + ["valued"] * 4 + ["equals"] * 2 + ["pid", "unknown", "text"]
    for _ in range(draw(st.integers(0, 7))):
        kind = draw(st.sampled_from(kinds))
        if kind == "pid":
            words.append(draw(st.sampled_from(_PIDS)))
        elif kind == "flag":
            words.append(draw(st.sampled_from(_DUMP_FLAGS)))
        elif kind in ("valued", "equals"):
            name = draw(st.sampled_from(sorted(_DUMP_VALUES)))
            value = draw(st.sampled_from(_DUMP_VALUES[name]))
            at = draw(st.integers(0, len(words)))  # before or after the pid
            words[at:at] = [name, value] if kind == "valued" else [f"{name}={value}"]
        elif kind == "unknown":
            words.append(draw(st.sampled_from(_UNKNOWN)))
        else:
            words.append(draw(st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=6)))
    return words


@settings(max_examples=examples(1500), deadline=None)
@given(_dump_words())
def test_dump_quick_parse_matches_argparse(words: list[str]) -> None:
    _held_to_argparse("dump", cmd_dump.quick_parse, words)


def test_dump_through_main_takes_the_quick_path_without_argparse(tmp_path: Path) -> None:
    """The command line itself: ``dump PID`` reaches the command with quick_parse's namespace (argparse
    not imported), and a usage error still gets argparse's message and status 2."""
    import subprocess

    probe = (
        "import sys\n"
        "from kmemdump.cli.main import main\n"
        "code = main(sys.argv[1:])\n"
        "print(code, 'argparse' in sys.modules, file=sys.stderr)\n"
    )
    quick = subprocess.run(
        [sys.executable, "-c", probe, "dump", "1", "--tables", str(tmp_path), "--no-stacks"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert quick.stderr.splitlines()[-1] == "1 False", quick.stderr  # no table there: exit 1
    assert "publishes no kmemdump table" in quick.stderr
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as stop:
        main(["dump", "4242", "--budget", "lots"])
    assert stop.value.code == 2
    assert "argument --budget: not a size: 'lots'" in err.getvalue()


# --- ls and show (kmemdump.cli.quick) ----------------------------------------------------------

NOW = 1_795_000_000.0
"""time.time() while both parsers run: ls --since 2h counts back from it."""

_ERROR = "argparse error"


def _argparse_attrs(command: str, words: list[str]) -> dict[str, Any] | str:
    """What argparse makes of ``kmemdump COMMAND WORDS`` as ``main`` runs it (the attributes), or an error."""
    parser = build_parser([command], others=False)
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            args, extra = parser.parse_known_args([command, *words])
    except SystemExit:
        return _ERROR
    if extra:
        return _ERROR
    found = dict(vars(args))
    found.pop("_parser")
    return found


def _quick(command: str, words: list[str]) -> dict[str, Any] | None:
    args = _quick_main(command, [command, *words])
    return None if args is None else dict(vars(args))


def _same(command: str, words: list[str]) -> dict[str, Any] | None:
    """The quick namespace, checked against argparse's (None when the quick parse declined)."""
    with mock.patch.object(time, "time", return_value=NOW):
        quick = _quick(command, words)
        full = _argparse_attrs(command, words)
    if quick is not None:
        assert full != _ERROR, f"quick parse accepted what argparse refuses: {words!r} -> {quick!r}"
        assert quick == full, words
        for key, value in full.items():  # same types too (Path, not str; int, not bool)
            assert type(quick[key]) is type(value), (words, key)
    return quick


# --- ls ---------------------------------------------------------------------------------------------

LS_FLAGS = ["-r", "--reverse", "--group", "--json", "--plain"]
LS_OPTIONS = ["--pid", "--reason", "--since", "--until", "-n", "--last", "--host"]
LS_VALUES = [
    "1",
    "3",
    "0",
    "-1",
    "2147483648",
    "0x10",
    " 5",
    "abc",
    "hang",
    "death",
    "",
    "2h",
    "30s",
    "1.5d",
    "today",
    "yesterday",
    "2026-11-27",
    "2026-11-27 09:49",
    "2026-11-27T09:49:45Z",
    "2026-13-01",
    "web-1",
    "dumps",
    "/tmp/d",
    "./d/",
    "d//x",
    "s3://bucket/prefix",
    "s3:x",
    "-x",
    "--",
    "-",
    "x y",
    "-a b",
    "--json",
    "-5",
]
LS_OTHER = ["-h", "--help", "--jso", "--rev", "-rn3", "-n=3", "--json=1", "-v", "--pid=", "--reason="]


def _words(flags: list[str], options: list[str], values: list[str], other: list[str]) -> Any:
    attached = st.builds(
        lambda o, v: f"{o}={v}",
        st.sampled_from([o for o in options if o.startswith("--")]),
        st.sampled_from(values),
    )
    short = st.builds(
        lambda o, v: f"{o}{v}",
        st.sampled_from([o for o in options if not o.startswith("--")] or ["-x"]),
        st.sampled_from(values),
    )
    word = st.one_of(
        st.sampled_from(flags),
        st.sampled_from(options),
        st.sampled_from(values),
        st.sampled_from(other),
        attached,
        short,
        st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=6),
    )
    return st.lists(word, max_size=7)


@settings(max_examples=examples(1500), deadline=None)
@given(words=_words(LS_FLAGS, LS_OPTIONS, LS_VALUES, LS_OTHER))
def test_ls_quick_parse_matches_argparse(words: list[str]) -> None:
    _same("ls", words)


@pytest.mark.parametrize(
    "words",
    [
        [],
        ["/tmp/dumps"],
        ["--json"],
        ["--plain"],
        ["-r"],
        ["--reverse", "/tmp/dumps"],
        ["-n", "5"],
        ["-n5"],
        ["--last=5"],
        ["--pid", "3"],
        ["--pid=3"],
        ["--pid", "3", "--pid", "4"],
        ["--reason", "hang", "--reason=death"],
        ["--since", "2h", "--until", "today"],
        ["--host", "web-1", "--group"],
        ["/tmp/dumps", "--json", "-r", "-n", "2"],
        ["--", "-x"],
        ["--json", "--", "-x"],
        ["--json", "--json"],
        ["-n", "2", "-n", "3"],
        ["s3://bucket/prefix"],
        ["d//x/"],
        [""],
    ],
)
def test_ls_common_forms_are_parsed_quickly(words: list[str]) -> None:
    assert _same("ls", words) is not None, words


@pytest.mark.parametrize(
    "words",
    [
        ["-h"],
        ["--help"],
        ["--rev"],  # an abbreviation: argparse's to resolve
        ["-rn3"],  # combined short options
        ["--unknown"],
        ["a", "b"],  # two directories
        ["--", "a", "b"],
        ["a", "--", "b"],
        ["--", "--"],
        ["--"],
        ["--pid"],  # no value
        ["--pid", "-3"],  # a value that looks like an option
        ["--pid", "0"],  # refused by its type: argparse says so
        ["--pid=x"],
        ["-n", "0"],
        ["--since", "soon"],
        ["--json=1"],
        ["--reason=--"],  # argparse reads it as no value at all
        ["-"],
        ["-5"],
    ],
)
def test_ls_declines_what_argparse_must_handle(words: list[str]) -> None:
    assert _same("ls", words) is None, words


def test_ls_quick_values_have_argparse_types() -> None:
    args = _same("ls", ["--pid", "7", "-n", "2", "--since", "2026-11-27", "./x/"])
    assert args is not None
    assert args["pid"] == [7] and args["last"] == 2 and isinstance(args["since"], int)
    assert args["dir"] == "x" and args["command"] == "ls" and args["verbose"] is False


# --- show -------------------------------------------------------------------------------------------

SHOW_FLAGS = ["--json", "--no-decode", "--plain"]
SHOW_OPTIONS = ["--dir"]
SHOW_VALUES = [
    "latest",
    "last",
    "3",
    "pid:42",
    "a.core",
    "/tmp/x.core",
    "s3://b/k",
    "",
    "-x",
    "--",
    "-",
    "d/",
    "x y",
]
SHOW_OTHER = ["-h", "--help", "--js", "--no", "--plain=1", "-v", "--dir="]


@settings(max_examples=examples(1000), deadline=None)
@given(words=_words(SHOW_FLAGS, SHOW_OPTIONS, SHOW_VALUES, SHOW_OTHER))
def test_show_quick_parse_matches_argparse(words: list[str]) -> None:
    _same("show", words)


@pytest.mark.parametrize(
    "words",
    [
        ["/tmp/x.core"],
        ["latest"],
        ["3"],
        ["pid:42"],
        ["--json", "latest"],
        ["latest", "--no-decode", "--plain"],
        ["--dir", "/tmp/d", "2"],
        ["--dir=/tmp/d/", "latest"],
        ["--", "-x.core"],
    ],
)
def test_show_common_forms_are_parsed_quickly(words: list[str]) -> None:
    assert _same("show", words) is not None, words


@pytest.mark.parametrize(
    "words", [[], ["--json"], ["-h"], ["a", "b"], ["--dir"], ["--dir", "-d", "x"], ["--js", "x"]]
)
def test_show_declines_what_argparse_must_handle(words: list[str]) -> None:
    assert _same("show", words) is None, words


def test_every_quick_parse_is_tested() -> None:
    """A subcommand that gains a quick_parse gains its test_NAME_quick_parse_matches_argparse here."""
    import importlib

    for name in COMMANDS:
        if hasattr(importlib.import_module(f"kmemdump.cli.cmd_{name}"), "quick_parse"):
            assert f"test_{name}_quick_parse_matches_argparse" in globals(), name

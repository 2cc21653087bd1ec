"""`ls` and `show` as people see them: under a pseudo-terminal at 80 and 200 columns, piped, and with
NO_COLOR; the dump numbers, `latest` and `pid:PID` every inspector command accepts; `ls` filters.

The dumps are real: a producer that stops feeding its watchdog is dumped for the hang by a watcher,
then on request by `kmemdump dump`, then for its death when it is SIGKILLed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers_child import spawn_child
from helpers_cli import Result
from helpers_cli import cli_env
from helpers_cli import run_in_pty
from helpers_cli import run_piped
from kmemdump.collector.dump import DumpOptions
from kmemdump.collector.watch import Watcher
from kmemdump.inspect.dumpfile import summarize

pytestmark = pytest.mark.slow

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

PRODUCER = r"""
import kmemdump
kmemdump.init(table=True, watchdog=0.3)
orders = kmemdump.alloc(64, name="orders")
orders[:5] = b"hello"
notes = kmemdump.alloc(32, name="a region with a long descriptive name")
kmemdump.feed()
send("ready")
block()
"""


@dataclass(frozen=True)
class Dumps:
    directory: Path
    by_reason: dict[str, Path]
    pid: int

    def env(self, **extra: str) -> dict[str, str]:
        return cli_env({"KMEMDUMP_DUMPS": str(self.directory), **extra})


@pytest.fixture(scope="module")
def dumps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dumps]:
    tables = tmp_path_factory.mktemp("tables")
    tables.chmod(0o700)
    directory = tmp_path_factory.mktemp("dumps")
    env = dict(os.environ, KMEMDUMP_DIR=str(tables))
    made: dict[str, Path] = {}
    watcher = Watcher([tables], DumpOptions(directory, stacks=False), max_sleep=0.05)
    try:
        with spawn_child(PRODUCER, env=env) as child:
            assert child.recv() == "ready"
            watcher.scan()
            while "hang" not in made:
                made.update({e.kind: e.dump.path for e in watcher.step() if e.dump is not None})
            result = run_piped(["dump", str(child.pid), "--dir", str(directory), "--no-stacks"], env=env)
            assert result.code == 0, result.err
            made["request"] = Path(result.out.split(": ")[0])
            pid = child.pid
            os.kill(pid, signal.SIGKILL)
            child.popen.wait()
            while "death" not in made:
                made.update({e.kind: e.dump.path for e in watcher.step() if e.dump is not None})
    finally:
        watcher.close()
    yield Dumps(directory, made, pid)


def _visible(text: str) -> list[str]:
    return [ANSI.sub("", line) for line in text.splitlines()]


def _table(lines: list[str], header: str) -> tuple[str, list[str]]:
    """The header line starting with ``header`` and the rows under it (up to a blank line)."""
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith(header))
    rows = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        if set(line.strip()) <= {"─", "-"}:
            continue
        rows.append(line)
    return lines[start], rows


ORDER = ("hang", "request", "death")


def test_ls_at_80_columns_keeps_number_time_pid_reason_state_and_command(dumps: Dumps) -> None:
    result = run_in_pty(["ls"], columns=80, env=dumps.env())
    assert result.code == 0, result.err
    assert "\x1b[" in result.out  # rich on a terminal
    lines = _visible(result.out)
    assert all(len(line.rstrip()) <= 80 for line in lines), lines
    header, rows = _table(lines, "#")
    for column in ("#", "TIME (UTC)", "PID", "REASON", "STATE", "COMMAND"):
        assert column in header
    assert len(rows) == 3
    for number, (row, reason) in enumerate(zip(rows, ORDER, strict=True), start=1):
        cells = row.split()
        assert cells[0] == str(number) and str(dumps.pid) in cells and reason in cells
        assert "complete" in cells or "partial" in cells
    assert "python" in rows[0]  # the command, without its directory
    # the number is a handle: show N opens that dump
    for number, reason in enumerate(ORDER, start=1):
        shown = run_piped(["show", str(number), "--no-decode"], env=dumps.env())
        assert shown.code == 0, shown.err
        assert f"Dump:        {dumps.by_reason[reason]}" in shown.out


def test_ls_at_200_columns_shows_every_column_and_the_file_names(dumps: Dumps) -> None:
    result = run_in_pty(["ls"], columns=200, env=dumps.env())
    assert result.code == 0, result.err
    lines = _visible(result.out)
    assert all(len(line.rstrip()) <= 200 for line in lines)
    header, rows = _table(lines, "#")
    for column in ("REGIONS", "STORED", "FILE", "DUMP"):
        assert column in header
    for row, reason in zip(rows, ORDER, strict=True):
        assert dumps.by_reason[reason].name in row


def test_ls_piped_and_no_color(dumps: Dumps) -> None:
    piped = run_piped(["ls"], env=dumps.env())
    assert piped.code == 0 and "\x1b[" not in piped.out
    header, rows = _table(piped.out.splitlines(), "#")
    assert "DUMP" in header and "COMMAND" in header
    for row, reason in zip(rows, ORDER, strict=True):
        assert row.endswith(dumps.by_reason[reason].name)  # whole, for cut and awk
    no_color = run_in_pty(["ls"], columns=80, env=dumps.env(NO_COLOR="1"))
    assert no_color.code == 0 and "\x1b[" not in no_color.out
    lines = no_color.out.splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    header, rows = _table(lines, "#")
    assert all(column in header for column in ("#", "PID", "REASON", "STATE", "COMMAND"))
    assert [row.split()[0] for row in rows] == ["1", "2", "3"]
    wide = run_in_pty(["ls", "--plain"], columns=80, env=dumps.env())
    assert dumps.by_reason["death"].name in wide.out  # --plain: every column whole


def test_show_at_80_columns_keeps_label_name_kind_and_status(dumps: Dumps) -> None:
    for columns in (80, 200):
        result = run_in_pty(["show", "latest"], columns=columns, env=dumps.env())
        assert result.code == 0, result.err
        lines = _visible(result.out)
        header, rows = _table(lines, "ID")
        assert all(len(line.rstrip()) <= columns for line in [header, *rows]), [header, *rows]
        for column in ("ID", "LABEL", "NAME", "KIND", "STORED", "STATUS"):
            assert column in header
        banner = next(row for row in rows if row.split()[0] == "1")
        assert banner.split()[1:4] == ["BANNER", "banner", "BUFFER"]
        orders = next(row for row in rows if " orders " in row)
        assert "BUFFER" in orders and "user+0" not in orders  # a dynamic ID: dyn+N
        assert re.search(r"\bdyn\+\d+\b", orders)
        assert re.search(r"  (ok|gone)(:|$)", orders.rstrip())  # the death dump: not in the arena, so gone
        if columns == 200:
            assert "ADDRESS" in header and "SOURCE" in header
            assert "a region with a long descriptive name" in result.out
    no_color = run_in_pty(["show", "1"], columns=80, env=dumps.env(NO_COLOR="1"))
    assert no_color.code == 0 and "\x1b[" not in no_color.out
    header, rows = _table(no_color.out.splitlines(), "ID")
    assert all(len(line) <= 80 for line in [header, *rows])
    assert {"LABEL", "NAME", "KIND", "STATUS"} <= set(header.split())


def test_every_inspector_command_accepts_the_handles(dumps: Dumps, tmp_path: Path) -> None:
    latest = dumps.by_reason["death"]
    first = dumps.by_reason["hang"]
    for handle, want in (
        ("latest", latest),
        ("1", first),
        (f"pid:{dumps.pid}", latest),
        (latest.name, latest),
    ):
        show = run_piped(["show", handle, "--json", "--no-decode"], env=dumps.env())
        assert show.code == 0, show.err
        assert json.loads(show.out)["path"] == str(want)
        hexdump = run_piped(["hexdump", handle, "BANNER", "--json"], env=dumps.env())
        assert hexdump.code == 0, hexdump.err
        extract = run_piped(["extract", handle, "BANNER", "-o", "-"], env=dumps.env())
        assert extract.code == 0 and bytes.fromhex(json.loads(hexdump.out)["hex"]) == extract.out.encode()
        gdb = run_piped(["gdb", "--print-command", handle], env=dumps.env())
        assert gdb.code == 0 and str(want) in gdb.out
    # --dir points the handles at another directory
    elsewhere = run_piped(["show", "2", "--dir", str(dumps.directory), "--no-decode"], env=cli_env())
    assert elsewhere.code == 0 and str(dumps.by_reason["request"]) in elsewhere.out
    gdb_dir = run_piped(["gdb", "latest", "--dir", str(dumps.directory), "--print-command"], env=cli_env())
    assert gdb_dir.code == 0 and str(latest) in gdb_dir.out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["show", "7"], "no dump number 7: 'kmemdump ls' numbers the 3 dumps of"),
        (["hexdump", "pid:1", "BANNER"], "no dump of pid 1 in"),
        (["show", "pid:x1"], "not a pid: 'pid:x1'"),
        (
            ["extract", "nosuch.core", "BANNER", "-o", "-"],
            "no such dump: nosuch.core is neither a file here nor",
        ),
        (
            ["gdb", "--print-command", "/no/such/dir/x.core"],
            "no such dump: /no/such/dir/x.core does not exist",
        ),
    ],
)
def test_a_dump_argument_that_names_nothing_is_one_line(dumps: Dumps, argv: list[str], message: str) -> None:
    result = run_piped(argv, env=dumps.env())
    assert result.code == 1
    assert result.err.startswith(f"kmemdump: error: {message}"), result.err
    assert "Traceback" not in result.err
    assert "kmemdump ls" in result.err  # the remedy


def test_handles_in_an_empty_directory(tmp_path: Path) -> None:
    result = run_piped(["show", "latest"], env=cli_env({"KMEMDUMP_DUMPS": str(tmp_path)}))
    assert result.code == 1 and result.err.startswith(f"kmemdump: error: there are no dumps in {tmp_path}")


def _numbers(result: Result) -> list[int]:
    assert result.code == 0, result.err
    return [entry["index"] for entry in json.loads(result.out)["dumps"]]


def test_ls_filters_and_order(dumps: Dumps) -> None:
    env = dumps.env()
    assert _numbers(run_piped(["ls", "--json"], env=env)) == [1, 2, 3]
    assert _numbers(run_piped(["ls", "--json", "--reason", "death"], env=env)) == [3]
    assert _numbers(run_piped(["ls", "--json", "--reason", "hang", "--reason", "request"], env=env)) == [1, 2]
    assert _numbers(run_piped(["ls", "--json", "--pid", str(dumps.pid)], env=env)) == [1, 2, 3]
    assert _numbers(run_piped(["ls", "--json", "--pid", "1"], env=env)) == []
    assert _numbers(run_piped(["ls", "--json", "-r"], env=env)) == [3, 2, 1]
    assert _numbers(run_piped(["ls", "--json", "-n", "2"], env=env)) == [2, 3]
    captured = [summarize(dumps.by_reason[r]).captured_ns for r in ORDER]
    # --since at the request dump's second (as ls prints it) keeps it and what came after
    second = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(captured[1] // 10**9))
    since = _numbers(run_piped(["ls", "--json", "--since", second], env=env))
    assert 2 in since and 3 in since
    assert _numbers(run_piped(["ls", "--json", "--since", "1h"], env=env)) == [1, 2, 3]
    assert _numbers(run_piped(["ls", "--json", "--until", "1h"], env=env)) == []
    assert _numbers(run_piped(["ls", "--json", "--since", "today"], env=env)) == [
        i for i, ns in enumerate(captured, 1) if ns >= (time.time() // 86400) * 86400 * 10**9
    ]
    text = run_piped(["ls", "--reason", "death"], env=env)
    _, rows = _table(text.out.splitlines(), "#")
    assert len(rows) == 1 and rows[0].split()[0] == "3"  # the number stays the one of the whole listing
    nothing = run_piped(["ls", "--pid", "1"], env=env)
    assert nothing.code == 0 and "no dumps matching the filters" in nothing.err
    bad = run_piped(["ls", "--since", "next tuesday"], env=env)
    assert bad.code == 2 and "not a time: 'next tuesday'" in bad.err and "usage: kmemdump ls" in bad.err

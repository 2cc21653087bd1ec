"""List the processes that publish a kmemdump table: what they registered and how their heartbeat is.

One line per table: pid, state, heartbeat age against the watchdog timeout, regions and bytes
registered, persistent arena, and the command line. STATE is "ok" (fed within its timeout),
"HUNG" (not fed for longer than its timeout: a collector would dump it now), "no watchdog",
"stale" (the process is gone and no collector has handled its table yet), "not visible" (it
lives in a pid namespace this process cannot see into) or "unreadable" (with the reason). PID is
the pid as seen here (a container's process under its host pid). The tables read are those
`kmemdump watch` would watch.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from kmemdump.cli.options import add_tables_option
from kmemdump.cli.options import table_dirs
from kmemdump.cli.render import Column
from kmemdump.cli.render import Output
from kmemdump.cli.render import format_duration
from kmemdump.cli.render import format_size
from kmemdump.cli.render import json_text
from kmemdump.collector.identify import NotVisibleError
from kmemdump.collector.identify import identify
from kmemdump.errors import KmemdumpError
from kmemdump.formats.table import TABLE_SUFFIX
from kmemdump.formats.table import TableHeader
from kmemdump.formats.table import TableReader
from kmemdump.formats.table import parse_file_name
from kmemdump.procinfo import process_cmdline
from kmemdump.record import asdict
from kmemdump.record import frozen

__all__ = ["EPILOG", "Producer", "prepare", "producers", "run"]

EPILOG = """\
exit status: 0 (also when no process publishes a table); 2 bad usage

--json prints one object per table: "table", "pid", "state", "fed_s_ago", "timeout_s", "regions",
"bytes", "arena_bytes", "command", "error".
"""

_COLUMNS = (
    Column("PID", right=True, wrap=False),
    Column("STATE", wrap=False),
    Column("FED", right=True, wrap=False),
    Column("TIMEOUT", right=True, wrap=False),
    Column("REGIONS", right=True, wrap=False),
    Column("BYTES", right=True, wrap=False),
    Column("ARENA", right=True, wrap=False, drop=1),
    Column("COMMAND", min_width=12),
)


@frozen
class Producer:
    """One table and what it says about its process, as of the moment it was read."""

    table: str
    pid: int
    state: str
    fed_s_ago: float | None
    """Seconds since the last feed; None when never fed."""
    timeout_s: float | None
    regions: int
    bytes: int
    arena_bytes: int
    command: str
    error: str = ""


def prepare(parser: argparse.ArgumentParser) -> None:
    add_tables_option(parser, "read")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    parser.add_argument("--plain", action="store_true", help="plain text even on a terminal")


def producers(directories: list[Path]) -> list[Producer]:
    """Every table in ``directories``, read now, ordered by pid."""
    found: list[Producer] = []
    for directory in directories:
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        found.extend(_read(directory / name) for name in names if name.endswith(TABLE_SUFFIX))
    return sorted(found, key=lambda p: (p.pid, p.table))


def _read(path: Path) -> Producer:
    ident = parse_file_name(path.name)
    pid = ident[0] if ident else 0
    try:
        with TableReader(path) as reader:
            snapshot = reader.snapshot(retries=20)
            alive, pid = _alive(ident, snapshot.header, reader.fileno())
    except (KmemdumpError, OSError) as err:
        return Producer(str(path), pid, "unreadable", None, None, 0, 0, 0, "", str(err))
    command = " ".join(process_cmdline(pid)) if alive is True else ""
    header = snapshot.header
    now = time.monotonic_ns()
    fed = (now - header.last_feed_ns) / 1e9 if header.heartbeat else None
    timeout = header.watchdog_timeout_ns / 1e9 if header.watchdog_timeout_ns else None
    if alive is None:
        state = "not visible"  # alive, in a pid namespace this process cannot see
    elif not alive:
        state = "stale"
    elif header.deadline_ns is None:
        state = "no watchdog"
    else:
        state = "HUNG" if header.hung(now) else "ok"
    total = sum(entry.size for entry in snapshot.entries)
    return Producer(
        str(path), pid, state, fed, timeout, len(snapshot.entries), total, header.arena_size, command
    )


def _alive(ident: tuple[int, int] | None, header: TableHeader, fd: int) -> tuple[bool | None, int]:
    """Whether the table's process lives (None: maybe, out of sight), and its pid as seen here."""
    if ident is None:
        return False, 0
    try:
        found = identify(ident[0], ident[1], header, fd)
    except NotVisibleError:
        return None, ident[0]
    except KmemdumpError:
        return False, ident[0]
    return True, found.pid


def run(args: argparse.Namespace) -> int:
    dirs = args.tables or table_dirs(all_users=os.geteuid() == 0)
    found = producers(dirs)
    if args.json:
        print(json_text({"directories": [str(d) for d in dirs], "producers": [asdict(p) for p in found]}))
        return 0
    if not found:
        print(f"no kmemdump tables in {', '.join(str(d) for d in dirs)}", file=sys.stderr)
        return 0
    Output(plain=args.plain).table(_COLUMNS, [_row(p) for p in found])
    return 0


def _row(p: Producer) -> list[str]:
    return [
        str(p.pid),
        p.state if not p.error else f"unreadable: {p.error}",
        "never" if p.fed_s_ago is None else f"{format_duration(p.fed_s_ago)} ago",
        "-" if p.timeout_s is None else format_duration(p.timeout_s),
        str(p.regions),
        format_size(p.bytes),
        format_size(p.arena_bytes) if p.arena_bytes else "-",
        _one_line(p.command) or "-",
    ]


def _one_line(command: str, limit: int = 120) -> str:
    flat = " ".join(command.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"

"""List dumps, oldest first and newest last (the latest right above the prompt), numbered.

One line per dump: its number, capture time (UTC), pid, reason, regions, bytes of memory stored,
file size, whether it is complete, the command line and the file name. The number (the # column),
'latest' and pid:PID name a dump in every other command:

    kmemdump show latest        kmemdump show 3        kmemdump hexdump pid:4242 BANNER

Numbers count from the oldest dump of the directory, whatever the filters show, so they stay the
same until a dump is added before them or removed. On a terminal the table is fitted to its width
(the file name is left out first: the number stands for it); piped or with --plain every column is
printed whole. Files that are not readable dumps are reported on stderr and left out. DIR defaults
to $KMEMDUMP_DUMPS, else ~/.local/state/kmemdump/dumps; it may also be a single dump file.
"""

from __future__ import annotations

import os
import sys
import time

from kmemdump.cli.fleetls import add_fleet_options
from kmemdump.cli.fleetls import dir_or_url
from kmemdump.cli.fleetls import is_url
from kmemdump.cli.fleetls import local_records
from kmemdump.cli.fleetls import print_problems
from kmemdump.cli.fleetls import report_skipped
from kmemdump.cli.fleetls import run_remote
from kmemdump.cli.options import FILES
from kmemdump.cli.options import completes
from kmemdump.cli.options import default_dump_dir
from kmemdump.cli.options import pid_number
from kmemdump.cli.quick import Option
from kmemdump.cli.quick import Positional
from kmemdump.cli.quick import parse_words
from kmemdump.cli.render import Column
from kmemdump.cli.render import Output
from kmemdump.cli.render import format_size
from kmemdump.cli.render import format_time
from kmemdump.cli.render import json_text
from kmemdump.cli.render import progress
from kmemdump.errors import KmemdumpError
from kmemdump.inspect.dumpfile import DumpSummary
from kmemdump.inspect.dumpfile import catalog
from kmemdump.inspect.dumpfile import summarize
from kmemdump.inspect.filters import DumpFilter

TYPE_CHECKING = False  # argparse and typing are imported for mypy only: ls starts without them
if TYPE_CHECKING:
    import argparse

__all__ = ["EPILOG", "parse_when", "prepare", "quick_parse", "run"]

EPILOG = """\
WHEN is a UTC date or time as ls prints it ('2026-11-27', '2026-11-27 09:49', '2026-11-27T09:49:45'),
'today', 'yesterday', or a time ago: '30s', '15m', '2h', '3d', '1w'.

exit status: 0 (also when there are no dumps, or some files are not dumps); 1 the directory cannot be read;
2 bad usage

--json prints {"directory", "dumps": [{"index", "path", "file_size", "compressed", "captured_ns", "reason",
"pid", "start_time", "command", "exe", "regions", "stored_bytes", "partial", "stacks", "host"}], "skipped":
[{"path", "error"}]}.

s3://BUCKET/PREFIX lists a fleet's dumps from their index objects (the 'ship' extra; docs/fleet.md); the
DUMP column is each dump's s3:// URL, which show, hexdump, extract and gdb accept. --group folds dumps
(local or in a bucket) into problems by signature: count, first and last seen, hosts.
"""

_COLUMNS = (
    Column("#", right=True, wrap=False),
    Column("TIME (UTC)", wrap=False),
    Column("PID", right=True, wrap=False),
    Column("REASON", wrap=False),
    Column("REGIONS", right=True, wrap=False, drop=4),
    Column("STORED", right=True, wrap=False, drop=5),
    Column("FILE", right=True, wrap=False, drop=3),
    Column("STATE", wrap=False),
    Column("MISSING", wrap=False, drop=1),
    Column("COMMAND", min_width=20),
    Column("DUMP", wrap=False, drop=2),
)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(text: str, now: float | None = None) -> int:
    """A moment as wall-clock nanoseconds: a UTC date/time, 'today', 'yesterday', or '2h' (ago)."""
    from datetime import datetime
    from datetime import timedelta
    from datetime import timezone

    raw = text.strip().lower()
    current = time.time() if now is None else now
    if raw[:-1].replace(".", "", 1).isdigit() and raw[-1:] in _UNITS:
        return int((current - float(raw[:-1]) * _UNITS[raw[-1]]) * 1e9)
    midnight = datetime.fromtimestamp(current, tz=timezone.utc).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    if raw in ("today", "yesterday"):
        moment = midnight - timedelta(days=1 if raw == "yesterday" else 0)
        return int(moment.timestamp()) * 1_000_000_000
    try:
        parsed = datetime.fromisoformat(text.strip().replace(" UTC", "").removesuffix("Z"))
    except ValueError:
        import argparse

        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (e.g. '2026-11-27 09:49', 'today', '2h')"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)  # ls prints UTC
    return int(parsed.timestamp() * 1e9)


def _count(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) == 0:
        import argparse

        raise argparse.ArgumentTypeError(f"not a positive number: {text!r}")
    return int(text)


def prepare(parser: argparse.ArgumentParser) -> None:
    directory = parser.add_argument(
        "dir",
        nargs="?",
        type=dir_or_url,
        default=None,
        metavar="DIR",
        help="directory of dumps, or one dump file (default: $KMEMDUMP_DUMPS or "
        "~/.local/state/kmemdump/dumps), or s3://BUCKET/PREFIX: a fleet's dumps, from their index objects",
    )
    completes(directory, FILES)  # a directory, or one dump file
    parser.add_argument(
        "--pid", type=pid_number, action="append", metavar="PID", help="only this process's dumps"
    )
    parser.add_argument(
        "--reason",
        action="append",
        metavar="REASON",
        help="only dumps taken for this reason: hang, death or request (repeatable)",
    )
    parser.add_argument(
        "--since", type=parse_when, metavar="WHEN", help="only dumps captured at or after WHEN"
    )
    parser.add_argument("--until", type=parse_when, metavar="WHEN", help="only dumps captured before WHEN")
    parser.add_argument(
        "-n", "--last", type=_count, metavar="N", help="only the N most recent dumps (after the filters)"
    )
    parser.add_argument("-r", "--reverse", action="store_true", help="newest first")
    add_fleet_options(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    parser.add_argument(
        "--plain", action="store_true", help="plain text, every column whole, even on a terminal"
    )


_QUICK_FLAGS = {
    "-r": ("reverse", True),
    "--reverse": ("reverse", True),
    "--group": ("group", True),
    "--json": ("json", True),
    "--plain": ("plain", True),
}
_QUICK_OPTIONS = {
    "--pid": Option("pid", pid_number, append=True),
    "--reason": Option("reason", append=True),
    "--since": Option("since", parse_when),
    "--until": Option("until", parse_when),
    "-n": Option("last", _count),
    "--last": Option("last", _count),
    "--host": Option("host", append=True),
}
_QUICK_DEFAULTS = {
    "dir": None,
    "pid": None,
    "reason": None,
    "since": None,
    "until": None,
    "last": None,
    "reverse": False,
    "host": None,
    "group": False,
    "json": False,
    "plain": False,
}


def quick_parse(words: list[str]) -> argparse.Namespace | None:
    """ls's arguments as :func:`prepare`'s parser would read them, without argparse (see
    :mod:`kmemdump.cli.quick`); None for what only argparse handles."""
    return parse_words(
        words,
        defaults=_QUICK_DEFAULTS,
        flags=_QUICK_FLAGS,
        options=_QUICK_OPTIONS,
        positional=Positional("dir", dir_or_url, required=False),
    )


def run(args: argparse.Namespace) -> int:
    wanted = DumpFilter.from_args(args)
    if args.dir is not None and is_url(args.dir):  # a URL, or what looks like a mistyped one
        return run_remote(args, wanted)
    directory: str = args.dir if args.dir is not None else default_dump_dir()
    skipped: list[tuple[str, KmemdumpError]] = []

    def on_error(path: str, err: KmemdumpError) -> None:
        skipped.append((path, err))

    def say_skipped() -> None:  # once, before the table: whole lines, the first few named
        if not args.json:
            report_skipped([f"{path}: {err}" for path, err in skipped])

    entries = [
        entry
        for entry in catalog(directory, on_error=on_error)
        if wanted.matches(pid=entry.pid, reason=entry.reason, captured_ns=entry.captured_ns)
    ]
    if args.group:
        records = [
            r
            for r in local_records([e.path for e in entries], on_error)
            if wanted.matches(pid=r.pid, reason=r.reason, captured_ns=r.captured_ns, host=r.host)
        ]
        say_skipped()
        return print_problems(
            args, records[-args.last :] if args.last else records, str(directory), len(skipped)
        )
    if args.last and not wanted.hosts:
        entries = entries[-args.last :]
    listed: list[tuple[int, DumpSummary]] = []
    for entry in progress(entries, "reading dumps"):
        try:
            summary = summarize(entry.path)
        except KmemdumpError as err:
            on_error(entry.path, err)
            continue
        if not wanted.hosts or summary.host in wanted.hosts:
            listed.append((entry.index, summary))
    if args.last and wanted.hosts:
        listed = listed[-args.last :]
    if args.reverse:
        listed.reverse()
    say_skipped()
    if args.json:
        document = {
            "directory": str(directory),
            "dumps": [{"index": index, **summary.to_json()} for index, summary in listed],
            "skipped": [{"path": str(path), "error": str(err)} for path, err in skipped],
        }
        print(json_text(document))
        return 0
    if not listed:
        filtered = " matching the filters" if wanted.active else ""
        where = "" if os.path.exists(directory) else " (it does not exist)"
        print(f"no dumps{filtered} in {directory}{where}", file=sys.stderr)
        return 0
    Output(plain=args.plain).table(_COLUMNS, [_row(index, summary) for index, summary in listed])
    return 0


def _row(index: int, summary: DumpSummary) -> list[str]:
    return [
        str(index),
        format_time(summary.captured_ns)[:-8],  # to the second; the header says UTC
        str(summary.pid),
        summary.reason,
        str(summary.regions),
        format_size(summary.stored_bytes),
        format_size(summary.file_size) + (" zst" if summary.compressed else ""),
        "partial" if summary.partial else "complete",
        summary.lacking if summary.partial else "",
        _short_command(summary.command),
        os.path.basename(summary.path),
    ]


def _short_command(command: str) -> str:
    """The command line with its program's directory left out (``python3 app.py``, as ps shows it)."""
    program, space, rest = command.partition(" ")
    if "/" in program and not program.startswith(("'", '"')):
        program = program.rsplit("/", 1)[1] or program
    return program + space + rest

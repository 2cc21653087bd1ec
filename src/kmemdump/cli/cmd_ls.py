"""List the dumps in a directory, oldest first and newest last.

One line per dump: capture time (UTC), pid, reason, regions, bytes of memory stored, file size,
whether it is partial, and the command line. Files that are not readable dumps are skipped with a
warning on stderr. DIR defaults to $KMEMDUMP_DUMPS, else ~/.local/state/kmemdump/dumps.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kmemdump.cli.options import default_dump_dir
from kmemdump.cli.render import Column
from kmemdump.cli.render import Output
from kmemdump.cli.render import format_size
from kmemdump.cli.render import format_time
from kmemdump.cli.render import json_text
from kmemdump.cli.render import progress
from kmemdump.errors import KmemdumpError
from kmemdump.inspect.dumpfile import DumpSummary
from kmemdump.inspect.dumpfile import list_dumps

__all__ = ["prepare", "run"]

_COLUMNS = (
    Column("TIME (UTC)", wrap=False),
    Column("PID", right=True, wrap=False),
    Column("REASON"),
    Column("REGIONS", right=True, wrap=False),
    Column("STORED", right=True, wrap=False),
    Column("FILE", right=True, wrap=False),
    Column("STATE"),
    Column("COMMAND"),
    Column("DUMP"),
)


def prepare(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dir",
        nargs="?",
        type=Path,
        default=None,
        metavar="DIR",
        help="directory of dumps, or one dump file (default: $KMEMDUMP_DUMPS or "
        "~/.local/state/kmemdump/dumps)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    parser.add_argument("--plain", action="store_true", help="plain text even on a terminal")


def run(args: argparse.Namespace) -> int:
    directory: Path = args.dir if args.dir is not None else default_dump_dir()
    skipped: list[tuple[Path, KmemdumpError]] = []

    def on_error(path: Path, err: KmemdumpError) -> None:
        skipped.append((path, err))
        if not args.json:
            print(f"kmemdump: skipped {path}: {err}", file=sys.stderr)

    dumps = list_dumps(directory, on_error=on_error, iterate=lambda files: progress(files, "reading dumps"))
    if args.json:
        print(
            json_text(
                {
                    "directory": str(directory),
                    "dumps": [summary.to_json() for summary in dumps],
                    "skipped": [{"path": str(path), "error": str(err)} for path, err in skipped],
                }
            )
        )
        return 0
    if not dumps:
        where = "" if directory.exists() else " (it does not exist)"
        print(f"no dumps in {directory}{where}", file=sys.stderr)
        return 0
    Output(plain=args.plain).table(_COLUMNS, [_row(summary) for summary in dumps])
    return 0


def _row(summary: DumpSummary) -> list[str]:
    return [
        format_time(summary.captured_ns)[:-4],  # the table header says UTC
        str(summary.pid),
        summary.reason,
        str(summary.regions),
        format_size(summary.stored_bytes),
        format_size(summary.file_size) + (" zst" if summary.compressed else ""),
        "partial" if summary.partial else "complete",
        summary.command,
        summary.path.name,
    ]

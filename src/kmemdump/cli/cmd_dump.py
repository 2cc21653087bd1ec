"""Dump a process's registered regions now (reason "request").

The process must publish a kmemdump table: it called kmemdump.init(table=True), or it runs under
'kmemdump run'. Prints one line: the dump's path, its regions and bytes, and "complete", "partial"
(some regions were not stored whole), or what is missing (the Python stacks when py-spy is not
installed).
"""

from __future__ import annotations

import argparse
import json
import os

from kmemdump.cli.options import add_dump_options
from kmemdump.cli.options import add_tables_option
from kmemdump.cli.options import dump_options
from kmemdump.cli.options import pid_number
from kmemdump.cli.options import table_dirs
from kmemdump.cli.render import format_size
from kmemdump.collector.dump import dump_target
from kmemdump.collector.identify import find_table
from kmemdump.errors import CollectorError
from kmemdump.errors import ProcessGoneError
from kmemdump.formats.dumpmeta import DumpMeta
from kmemdump.inspect.wording import plural
from kmemdump.inspect.wording import what_is_missing
from kmemdump.procinfo import process_start_time

__all__ = ["EPILOG", "prepare", "run"]

EPILOG = """\
exit status: 0 dumped; 1 the dump failed (no table, no access, no space); 2 bad usage or no such process

--json prints {"path", "pid", "regions", "stored_bytes", "partial", "missing", "stacks"}; "missing" lists
what the dump lacks, one sentence each; "stacks" is "ok" or why the dump has none.
"""


def prepare(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pid", type=pid_number, metavar="PID", help="the process to dump")
    add_dump_options(parser)
    add_tables_option(parser, "search")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    if not os.path.exists(f"/proc/{args.pid}"):
        raise ProcessGoneError(f"no process with pid {args.pid}")
    start_time = process_start_time(args.pid)
    options = dump_options(args)
    dirs = args.tables or table_dirs(all_users=os.geteuid() == 0)
    found = find_table(args.pid, start_time, dirs)
    if found is None:
        raise CollectorError(
            "the process publishes no kmemdump table here; call kmemdump.init(table=True) in it, or start "
            "it with 'kmemdump run -- CMD'; a program that sets $KMEMDUMP_DIR publishes there (--tables DIR)",
            pid=args.pid,
            looked_in=", ".join(str(d) for d in dirs),
        )
    path, table_pid = found
    result = dump_target(args.pid, start_time, path, reason="request", options=options, table_pid=table_pid)
    meta = result.meta
    if args.json:
        print(
            json.dumps(
                {
                    "path": str(result.path),
                    "pid": meta.pid,
                    "regions": len(meta.regions),
                    "stored_bytes": meta.stored_bytes,
                    "partial": meta.partial,
                    "missing": list(meta.missing),
                    "stacks": meta.stacks,
                }
            )
        )
    else:
        stored = format_size(meta.stored_bytes)
        regions = plural(len(meta.regions), "region")
        print(f"{result.path}: {regions}, {stored}, {_state(args, meta)}")
    return 0


def _state(args: argparse.Namespace, meta: DumpMeta) -> str:
    """ "complete" only when nothing asked for is missing; else what is, in a few words."""
    state = f"partial: {what_is_missing(meta)}" if meta.partial else "complete"
    if args.stacks and meta.stacks != "ok":
        return f"{state + ', ' if meta.partial else ''}without Python stacks: {meta.stacks}"
    return state

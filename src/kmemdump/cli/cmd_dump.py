"""Dump a process's registered regions now (reason "request").

The process must publish a kmemdump table (kmemdump.init(table=True), or run under 'kmemdump run').
"""

from __future__ import annotations

import argparse
import json
import os

from kmemdump.cli.options import add_dump_options
from kmemdump.cli.options import dump_options
from kmemdump.cli.options import table_dirs
from kmemdump.collector.dump import dump_target
from kmemdump.errors import CollectorError
from kmemdump.formats.table import table_path
from kmemdump.procinfo import process_start_time

__all__ = ["prepare", "run"]


def prepare(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pid", type=int, help="the process to dump")
    add_dump_options(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    start_time = process_start_time(args.pid)
    dirs = table_dirs(all_users=os.geteuid() == 0)
    for directory in dirs:
        path = table_path(directory, args.pid, start_time)
        if path.exists():
            break
    else:
        raise CollectorError(
            "the process publishes no kmemdump table; call kmemdump.init(table=True) in it, "
            "or start it with 'kmemdump run -- CMD'",
            pid=args.pid,
            looked_in=", ".join(str(d) for d in dirs),
        )
    result = dump_target(args.pid, start_time, path, reason="request", options=dump_options(args))
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
                    "stacks": meta.stacks,
                }
            )
        )
    else:
        state = "partial" if meta.partial else "complete"
        print(f"{result.path}: {len(meta.regions)} regions, {meta.stored_bytes} bytes, {state}")
    return 0

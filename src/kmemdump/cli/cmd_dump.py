"""Dump a process's registered regions now (reason "request").

The process must publish a kmemdump table: it called kmemdump.init(table=True), or it runs under
'kmemdump run'. Prints one line: the dump's path, its regions and bytes, and "complete", "partial"
(some regions were not stored whole), or what is missing (the Python stacks when py-spy is not
installed).
"""

from __future__ import annotations

import os

from kmemdump.cli.options import DEFAULT_BUDGET
from kmemdump.cli.options import add_dump_options
from kmemdump.cli.options import add_tables_option
from kmemdump.cli.options import dump_options
from kmemdump.cli.options import pid_number
from kmemdump.cli.options import table_dir_texts
from kmemdump.cli.render import format_size
from kmemdump.collector.identify import find_table
from kmemdump.errors import CollectorError
from kmemdump.errors import ProcessGoneError
from kmemdump.inspect.wording import plural
from kmemdump.inspect.wording import what_is_missing
from kmemdump.paths import path_text
from kmemdump.procinfo import process_start_time

TYPE_CHECKING = False  # argparse is built only for help, errors and rare forms (quick_parse)
if TYPE_CHECKING:
    import argparse

    from kmemdump.formats.dumpmeta import DumpMeta

__all__ = ["BOUNDED", "EPILOG", "prepare", "quick_parse", "run"]

BOUNDED = True
"""A dump is short, bounded work that loads most of its modules as it goes (during the threads'
sampling window): the command line keeps the cyclic garbage collector paused through it (cli.main)."""

EPILOG = """\
exit status: 0 dumped; 1 the dump failed (no table, no access, no space); 2 bad usage or no such process

--json prints {"path", "pid", "regions", "stored_bytes", "partial", "missing", "stacks"}; "missing" lists
what the dump lacks, one sentence each; "stacks" is "ok" or why the dump has none.
"""


def prepare(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pid", type=pid_number, metavar="PID", help="the process to dump")
    add_dump_options(parser, text=True)
    add_tables_option(parser, "search", text=True)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


_QUICK_FLAGS = {
    "--compress": ("compress", True),
    "--durable": ("durable", True),
    "--no-stop": ("stop", False),
    "--no-stacks": ("stacks", False),
    "--allow-nondumpable": ("allow_nondumpable", True),
    "--json": ("json", True),
}
_QUICK_DEFAULTS = {
    "pid": None,
    "dir": None,
    "budget": DEFAULT_BUDGET,
    "max_region": None,
    "compress": False,
    "durable": False,
    "stop": True,
    "stacks": True,
    "capture": "regions",
    "allow_nondumpable": False,
    "group": None,
    "tables": None,
    "json": False,
}


def quick_parse(words: list[str]) -> argparse.Namespace | None:
    """dump's arguments as :func:`prepare`'s parser would read them, without argparse (see
    :mod:`kmemdump.cli.quick`); None for what only argparse handles."""
    from kmemdump.cli.options import parse_size
    from kmemdump.cli.quick import Option
    from kmemdump.cli.quick import Positional
    from kmemdump.cli.quick import parse_words

    options = {
        "--dir": Option("dir", path_text),
        "--tables": Option("tables", path_text, append=True),
        "--budget": Option("budget", parse_size),
        "--max-region": Option("max_region", parse_size),
        "--capture": Option("capture", _capture),
        "--group": Option("group", _group_number),
    }
    return parse_words(
        words,
        defaults=_QUICK_DEFAULTS,
        flags=_QUICK_FLAGS,
        options=options,
        positional=Positional("pid", pid_number),
    )


def _capture(text: str) -> str:
    """--capture's value where argparse's choices take it (a ValueError leaves the rest to argparse)."""
    if text not in ("regions", "stacks"):
        raise ValueError(text)
    return text


def _group_number(text: str) -> int:
    """--group given as a number (a name is looked up on argparse's path, as its type does)."""
    if not (text.isascii() and text.isdigit()):
        raise ValueError(text)
    return int(text)


def run(args: argparse.Namespace) -> int:
    if not os.path.exists(f"/proc/{args.pid}"):
        raise ProcessGoneError(f"no process with pid {args.pid}")
    start_time = process_start_time(args.pid)
    # The dump measures each thread's CPU use over a few milliseconds before it holds the process
    # (collector.threads): the window opens here, and loading the dump's machinery fills it.
    from kmemdump.collector.threads import sample_cpu

    sample = sample_cpu(args.pid)
    from kmemdump.collector.dump import dump_target

    options = dump_options(args)
    dirs = args.tables or table_dir_texts(all_users=os.geteuid() == 0)
    found = find_table(args.pid, start_time, dirs)
    if found is None:
        raise CollectorError(
            "the process publishes no kmemdump table here; call kmemdump.init(table=True) in it, or start "
            "it with 'kmemdump run -- CMD'; a program that sets $KMEMDUMP_DIR publishes there (--tables DIR)",
            pid=args.pid,
            looked_in=", ".join(str(d) for d in dirs),
        )
    path, table_pid = found
    result = dump_target(
        args.pid, start_time, path, reason="request", options=options, table_pid=table_pid, cpu_sample=sample
    )
    meta = result.meta
    if args.json:
        from kmemdump.formats.jsonwrite import dumps  # json.dumps's text without json (nor re)

        print(
            dumps(
                {
                    "path": result.file,
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
        print(f"{result.file}: {regions}, {stored}, {_state(args, meta)}")
    return 0


def _state(args: argparse.Namespace, meta: DumpMeta) -> str:
    """ "complete" only when nothing asked for is missing; else what is, in a few words."""
    state = f"partial: {what_is_missing(meta)}" if meta.partial else "complete"
    if args.stacks and meta.stacks != "ok":
        return f"{state + ', ' if meta.partial else ''}without Python stacks: {meta.stacks}"
    return state

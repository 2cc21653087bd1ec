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
from kmemdump.cli.options import table_dirs
from kmemdump.cli.render import format_size
from kmemdump.collector.identify import find_table
from kmemdump.errors import CollectorError
from kmemdump.errors import ProcessGoneError
from kmemdump.inspect.wording import plural
from kmemdump.inspect.wording import what_is_missing
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
    add_dump_options(parser)
    add_tables_option(parser, "search")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


_FLAGS = {
    "--compress": ("compress", True),
    "--durable": ("durable", True),
    "--no-stop": ("stop", False),
    "--no-stacks": ("stacks", False),
    "--allow-nondumpable": ("allow_nondumpable", True),
    "--json": ("json", True),
}
_VALUED = {"--dir", "--budget", "--max-region", "--capture", "--group", "--tables"}


def quick_parse(words: list[str]) -> argparse.Namespace | None:
    """``dump PID [OPTIONS]`` parsed without argparse: the namespace :func:`prepare`'s parser makes of
    ``words``, or None for anything else (help, an abbreviated or unknown option, ``--``, a value
    that looks like an option or that argparse would refuse), which argparse then handles."""
    import types

    from kmemdump.cli.options import option_value

    values: dict[str, object] = {
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
    at = 0
    while at < len(words):
        word = words[at]
        at += 1
        if not word.startswith("-"):
            if values["pid"] is not None or not (word.isascii() and word.isdigit()):
                return None
            values["pid"] = option_value(pid_number, word)
            if values["pid"] is None:
                return None
            continue
        name, equals, given = word.partition("=")
        if name in _FLAGS and not equals:
            key, flag = _FLAGS[name]
            values[key] = flag
            continue
        if name not in _VALUED:
            return None  # -h, --help, --, an abbreviation, an unknown option: argparse's
        if not equals:
            if at == len(words):
                return None
            given = words[at]
            at += 1
        if not given or given.startswith("-"):
            return None
        value = _option(name, given)
        if value is None:
            return None
        if name == "--tables":
            values["tables"] = [*(values["tables"] or []), value]  # type: ignore[misc]
        else:
            values[name[2:].replace("-", "_")] = value
    if values["pid"] is None:
        return None
    return types.SimpleNamespace(**values)  # type: ignore[return-value]


def _option(name: str, given: str) -> object:
    """The value of option ``name`` as its argparse type makes it, or None where argparse would refuse."""
    from pathlib import Path

    from kmemdump.cli.options import option_value
    from kmemdump.cli.options import parse_size

    if name in ("--dir", "--tables"):
        return Path(given)
    if name in ("--budget", "--max-region"):
        return option_value(parse_size, given)
    if name == "--capture":
        return given if given in ("regions", "stacks") else None
    if given.isascii() and given.isdigit():  # --group: a number (a name is looked up by argparse's path)
        return int(given)
    return None


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
    result = dump_target(
        args.pid, start_time, path, reason="request", options=options, table_pid=table_pid, cpu_sample=sample
    )
    meta = result.meta
    if args.json:
        import json

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

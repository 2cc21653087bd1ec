"""``kmemdump`` command line: one module per subcommand, each with ``prepare(parser)`` and ``run(args)``.

Exit codes: 0 success, 1 a kmemdump error, 2 bad usage or an invalid target; ``run`` passes its
command's exit code through.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Protocol
from typing import cast

from kmemdump._version import __version__
from kmemdump.errors import InvalidRegionError
from kmemdump.errors import KmemdumpError
from kmemdump.errors import ProcessGoneError

__all__ = ["COMMANDS", "build_parser", "entry", "main"]

COMMANDS: dict[str, str] = {
    "demo": "see it work: a process registers its banner, deadlocks, is dumped, and the dump is shown",
    "watch": "collect dumps for every process publishing a kmemdump table",
    "run": "run a command under a collector; dump it when it hangs or dies",
    "dump": "dump a process's registered regions now",
    "ps": "list the processes that publish a table, with their heartbeat",
    "ls": "list dumps",
    "show": "show a dump: header, regions decoded, Python stacks",
    "hexdump": "hex dump of one region of a dump",
    "extract": "write one region's bytes to a file",
    "gdb": "open gdb on a dump",
}


class Command(Protocol):
    def prepare(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


def _command(name: str) -> Command:
    module = importlib.import_module(f"kmemdump.cli.cmd_{name}")
    return cast(Command, module)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kmemdump",
        description="Selective, out-of-process memory dumps of the regions a process registered.",
    )
    parser.add_argument("--version", action="version", version=f"kmemdump {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging detail to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, summary in COMMANDS.items():
        command = _command(name)
        child = sub.add_parser(name, help=summary, description=(command.__doc__ or summary).strip())
        command.prepare(child)
        child.set_defaults(_run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
    except ModuleNotFoundError as err:  # the producer needs nothing; the CLI needs the extra
        print(
            f"kmemdump: the command line needs packages that are not installed (missing: {err.name}).\n"
            "Install them with: pip install 'kmemdump[collector]'",
            file=sys.stderr,
        )
        return 2
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args._run(args))
    except (ProcessGoneError, InvalidRegionError) as err:
        _report(err)
        return 2
    except KmemdumpError as err:
        _report(err)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (kmemdump ls | head); keep the exit quiet
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _report(err: KmemdumpError) -> None:
    print(f"kmemdump: error: {err}", file=sys.stderr)
    if err.help:
        print(f"\n{err.help}", file=sys.stderr)


def entry() -> None:
    sys.exit(main())

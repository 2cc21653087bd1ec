"""Open gdb on a dump: 'gdb -se EXE -c DUMP [GDB ARGS]'.

The executable recorded in the dump is passed to gdb when it still exists, so symbols resolve.
gdb cannot read compressed cores: a .core.zst dump is first decompressed to a temporary file, which
is removed when gdb exits. Arguments after '--' go to gdb, e.g.

    kmemdump gdb DUMP -- -batch -ex 'x/s 0x7f3a1c000010'

With --print-command the command is printed (shell-quoted) instead of run; a decompressed
temporary file is then kept, and its path is part of the command.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kmemdump.cli.options import DUMP_HELP
from kmemdump.cli.options import add_dump_dir_option
from kmemdump.cli.options import dump_path
from kmemdump.errors import DumpFormatError
from kmemdump.errors import KmemdumpError
from kmemdump.formats import zstd
from kmemdump.inspect.dumpfile import Dump

__all__ = ["GdbMissingError", "gdb_command", "prepare", "run"]

_CHUNK = 8 << 20


class GdbMissingError(KmemdumpError):
    """gdb is not installed (or not where --gdb says)."""

    help = "Install gdb (e.g. 'apt-get install gdb' or 'dnf install gdb'), or give its path with --gdb PATH."


def _add_options(parser: argparse.ArgumentParser, default: Any = None) -> None:
    add_dump_dir_option(parser, default)
    parser.add_argument(
        "--gdb",
        default="gdb" if default is None else default,
        metavar="PATH",
        help="the gdb to run (default: gdb on PATH)",
    )
    parser.add_argument(
        "--exe",
        default=default,
        metavar="PATH",
        help="executable to load symbols from (default: the one recorded in the dump)",
    )
    parser.add_argument(
        "--print-command",
        action="store_true",
        default=False if default is None else default,
        help="print the gdb command instead of running it",
    )


def prepare(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dump", metavar="DUMP", help=DUMP_HELP)
    _add_options(parser)
    parser.add_argument(
        "gdb_args",
        nargs=argparse.REMAINDER,
        metavar="-- GDB ARGS",
        help="arguments passed to gdb after the executable and core",
    )


def _split_arguments(args: argparse.Namespace) -> tuple[argparse.Namespace, list[str]]:
    """Our options given after DUMP (argparse leaves them in the remainder), and gdb's arguments."""
    rest = list(args.gdb_args)
    late = argparse.ArgumentParser(prog="kmemdump gdb", add_help=False, allow_abbrev=False)
    _add_options(late, argparse.SUPPRESS)
    if "--" in rest:
        cut = rest.index("--")
        mine, theirs = late.parse_args(rest[:cut]), rest[cut + 1 :]
    else:
        mine, theirs = late.parse_known_args(rest)
    return argparse.Namespace(**{**vars(args), **vars(mine)}), theirs


def gdb_command(gdb: str, core: Path, exe: str | None, extra: list[str]) -> list[str]:
    """The argv that runs ``gdb`` on ``core``, with ``exe``'s symbols when given."""
    command = [gdb]
    if exe is not None:
        command += ["-se", exe]
    return [*command, "-c", str(core), *extra]


def run(args: argparse.Namespace) -> int:
    args, extra = _split_arguments(args)
    path = dump_path(args.dump, args.dir)
    gdb = args.gdb
    if not args.print_command:
        found = shutil.which(gdb)
        if found is None:
            raise GdbMissingError("gdb not found", gdb=gdb)
        gdb = found
    with _plain_core(path, keep=args.print_command) as core:
        exe = _executable(core, path, args.exe)
        command = gdb_command(gdb, core, exe, extra)
        if args.print_command:
            if core != path:
                print(f"kmemdump: decompressed {path.name} to {core}; remove it when done", file=sys.stderr)
            print(shlex.join(command))
            return 0
        return _run_gdb(command)


def _executable(core: Path, original: Path, override: str | None) -> str | None:
    """The executable gdb should load: ``override``, else the dump's own when it still exists."""
    if override is not None:
        return override
    try:
        with Dump.open(core) as dump:
            exe = dump.meta.exe
    except DumpFormatError as err:
        if core == original:
            raise
        raise DumpFormatError(err.message, **{**err.context, "path": str(original)}) from err
    if not exe:
        return None
    if not os.path.isfile(exe):
        print(f"kmemdump: the dump's executable {exe} no longer exists; gdb gets no symbols", file=sys.stderr)
        return None
    return exe


def _run_gdb(command: list[str]) -> int:
    # Ctrl-C belongs to gdb (it interrupts the command being run), not to us.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        completed = subprocess.run(command, check=False)
    except OSError as err:
        raise GdbMissingError(f"gdb could not be started: {err.strerror or err}", gdb=command[0]) from err
    finally:
        signal.signal(signal.SIGINT, previous)
    return completed.returncode if completed.returncode >= 0 else 128 - completed.returncode


@contextlib.contextmanager
def _plain_core(path: Path, *, keep: bool) -> Iterator[Path]:
    """``path`` itself, or a decompressed temporary copy of a zstd dump (removed unless ``keep``)."""
    if not zstd.is_compressed(path):
        yield path
        return
    directory = Path(tempfile.mkdtemp(prefix="kmemdump-gdb-"))
    name = path.name[: -len(".zst")] if path.name.endswith(".zst") else path.name + ".core"
    target = directory / name
    try:
        zstd.decompress_to(path, target)
        yield target
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    if not keep:
        shutil.rmtree(directory, ignore_errors=True)

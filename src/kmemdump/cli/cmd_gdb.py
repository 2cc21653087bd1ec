"""Open gdb on a dump: 'gdb -se EXE -c DUMP [GDB ARGS]', with the binaries the process ran.

A dump records every ELF file its process mapped, with its load address and build-id. Each is looked
up on this machine (under --sysroot DIR when the dump comes from elsewhere: a container's root, a copy
of the host's files) and checked by build-id: the executable is given to gdb, the libraries are loaded
at the addresses the process had (or found by gdb itself through the dynamic linker's list when the
dump has it, --capture stacks), and the interpreter's gdb helper (py-bt) is allowed to load. Whatever
is missing, or is another build than the one that ran, is said on stderr, file by file. A dump from an
older kmemdump only names its executable, which is used when it still exists.

gdb cannot read compressed cores: a .core.zst dump is first decompressed to a temporary file, which
is removed when gdb exits (as is a dump downloaded from s3://). Arguments after '--' go to gdb, e.g.

    kmemdump gdb DUMP -- -batch -ex 'thread apply all bt'

With --print-command the command is printed (shell-quoted, every path absolute) instead of run, to
be run later: a decompressed or downloaded temporary file is then kept, its path is part of the
command, and stderr says where it is, to be removed when done.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from kmemdump.cli.options import DUMP_HELP
from kmemdump.cli.options import add_dump_dir_option
from kmemdump.cli.options import dump_path
from kmemdump.errors import DumpFormatError
from kmemdump.errors import KmemdumpError
from kmemdump.errors import UsageError
from kmemdump.formats import zstd
from kmemdump.inspect.binaries import Binary
from kmemdump.inspect.binaries import find_binaries
from kmemdump.inspect.binaries import interpreter_file
from kmemdump.inspect.binaries import missing_interpreter
from kmemdump.inspect.dumpfile import Dump
from kmemdump.record import frozen

TYPE_CHECKING = False  # typing is imported for mypy only: it costs the command line milliseconds
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

__all__ = ["EPILOG", "GdbMissingError", "gdb_command", "prepare", "run"]

EPILOG = """\
exit status: gdb's; 1 not a dump or gdb missing; 2 bad usage (an --exe gdb could not read)
"""

_CHUNK = 8 << 20
_MAX_NOTES = 20


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
        "--sysroot",
        default=default,
        metavar="DIR",
        help="look for the process's files under DIR (a copy of its machine's files, /proc/PID/root of a "
        "container); gdb's sysroot too",
    )
    parser.add_argument(
        "--print-command",
        action="store_true",
        default=False if default is None else default,
        help="print the gdb command (absolute paths) instead of running it; a decompressed or downloaded "
        "dump it names is kept",
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


def gdb_command(
    gdb: str,
    core: Path,
    exe: str | None,
    extra: list[str],
    *,
    before: Sequence[str] = (),
    after: Sequence[str] = (),
) -> list[str]:
    """The argv that runs ``gdb`` on ``core``, with ``exe``'s symbols when given; ``before`` are gdb
    arguments for before the files are loaded (``-iex``), ``after`` for after (``-ex``)."""
    command = [gdb, *before]
    if exe is not None:
        command += ["-se", exe]
    return [*command, "-c", str(core), *after, *extra]


@frozen
class _Plan:
    exe: str | None
    before: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def run(args: argparse.Namespace) -> int:
    args, extra = _split_arguments(args)
    path = Path(dump_path(args.dump, args.dir))
    gdb = args.gdb
    if not args.print_command:
        found = shutil.which(gdb)
        if found is None:
            raise GdbMissingError("gdb not found", gdb=gdb)
        gdb = found
    sysroot = Path(args.sysroot) if args.sysroot else None
    if sysroot is not None and not sysroot.is_dir():
        raise DumpFormatError("--sysroot is not a directory", path=str(sysroot))
    if args.print_command:  # the command is run later, maybe from elsewhere: absolute paths
        path = Path(os.path.abspath(path))
        sysroot = Path(os.path.abspath(sysroot)) if sysroot is not None else None
        gdb = os.path.abspath(gdb) if os.sep in gdb else gdb  # a bare name is looked up on PATH
    exe = os.path.abspath(args.exe) if args.exe and args.print_command else args.exe
    with _plain_core(path, keep=args.print_command) as core:
        plan = _plan(core, path, exe, sysroot)
        for line in plan.notes:
            print(f"kmemdump: {line}", file=sys.stderr)
        command = gdb_command(gdb, core, plan.exe, extra, before=plan.before, after=plan.after)
        if args.print_command:
            if core != path:
                print(f"kmemdump: decompressed {path.name} to {core}; remove it when done", file=sys.stderr)
            elif _kept_download(str(args.dump), core):
                print(f"kmemdump: downloaded {args.dump} to {core}; remove it when done", file=sys.stderr)
            print(shlex.join(command))
            return 0
        return _run_gdb(command)


def _kept_download(given: str, core: Path) -> bool:
    """Keep a dump downloaded from object storage past our exit (the printed command reads it)."""
    if not given.lower().startswith("s3://"):
        return False
    from kmemdump.fleet.remote import keep_download

    return keep_download(core)


def _open(core: Path, original: Path) -> Dump:
    try:
        return Dump.open(core)
    except DumpFormatError as err:
        if core == original:
            raise
        raise DumpFormatError(err.message, **{**err.context, "path": str(original)}) from err


def _plan(core: Path, original: Path, override: str | None, sysroot: Path | None) -> _Plan:
    """What gdb is given: the executable, the libraries and the helpers, and what to tell the user."""
    if override is not None:
        _executable(None, override, None)  # a usage error when gdb could not read it
    with _open(core, original) as dump:
        meta, modules = dump.meta, dump.modules
    sysroot_command = ("-iex", f"set sysroot {sysroot}") if sysroot is not None else ()
    if modules is None:  # a dump without the modules note: its recorded executable, if still there
        return _Plan(_executable(meta.exe, override, sysroot), sysroot_command)
    binaries = find_binaries(modules, sysroot=sysroot)
    usable = [b for b in binaries if b.path is not None and b.path.isprintable()]
    interpreter = "" if override is not None else missing_interpreter(binaries, shlex.quote(str(original)))
    if interpreter and interpreter_file(binaries) is None:
        interpreter += f"; kmemdump show {shlex.quote(str(original))} still prints the stacks py-spy took"
    notes = []
    for binary in binaries:
        if binary.status not in ("ok", "unchecked"):
            notes.append(binary.describe())
        if binary.module.role == "exe" and interpreter:
            notes.append(interpreter)  # what pystack and py-bt need, right after the executable's line
    notes += [f"not given to gdb, its name has control characters: {b.path!r}" for b in binaries
              if b.path is not None and not b.path.isprintable()]  # fmt: skip
    if len(notes) > _MAX_NOTES:
        notes[_MAX_NOTES:] = [f"… and {len(notes) - _MAX_NOTES} more files"]
    exe = override
    if exe is None:
        exe = next((b.path for b in usable if b.module.role == "exe"), None)
    if exe is None and not any(b.module.role == "exe" for b in binaries):
        exe = _executable(meta.exe, None, sysroot)
    before = list(sysroot_command)
    for binary in usable:
        helper = _helper(binary)
        if helper is not None and ":" not in helper:  # the safe path is a list separated by ':'
            before += ["-iex", f"add-auto-load-safe-path {helper}"]
    after: list[str] = []
    # gdb reads the dynamic linker's list (--capture stacks stores it) only through the executable:
    # without either, each library is loaded where it was
    if meta.capture != "stacks" or exe is None:
        libraries = [b for b in usable if b.module.role != "exe"]
        for binary in libraries:
            after += ["-ex", f"add-symbol-file {_quoted(binary.path)} -o {binary.bias:#x}"]
        if after:
            after = ["-ex", "set confirm off", *after, "-ex", "set confirm on"]
            # the thread library needs libc's data (not stored at --capture regions) and its link map
            before += ["-iex", "set auto-load libthread-db off"]
    if exe is None:  # the helper is not loaded with the executable: read it by hand
        helper = _interpreter_helper(binaries)
        if helper is not None:
            after += ["-ex", f"source {helper}"]
    if meta.capture != "stacks":
        notes.append(
            "this dump holds each thread's registers but not its stack (taken with --capture regions): "
            "gdb shows where each thread is, not how it got there; --capture stacks dumps give backtraces"
        )
    if usable or notes:
        notes.append(f"{len(usable)} of {len(binaries)} files the process mapped are given to gdb")
    return _Plan(exe, tuple(before), tuple(after), tuple(notes))


def _interpreter_helper(binaries: Sequence[Binary]) -> str | None:
    """The interpreter's gdb helper (py-bt) when the executable is not given to gdb: beside libpython,
    in gdb's auto-load directory, or installed as a prefix installs it (``PREFIX/bin/pythonX.Y-gdb.py``
    beside ``PREFIX/lib/libpythonX.Y.so``); None when there is none, or none safe to load."""
    libpython = next((b for b in binaries if b.module.role == "libpython" and b.status == "ok"), None)
    if libpython is None or libpython.path is None:
        return None
    real = Path(libpython.path).resolve()
    candidates = [Path(f"{libpython.path}-gdb.py"), Path(f"/usr/share/gdb/auto-load{real}-gdb.py")]
    version = re.match(r"lib(python3\.\d+t?)\.so", real.name)
    if version:
        candidates.append(real.parent.parent / "bin" / f"{version.group(1)}-gdb.py")
    return next((str(c) for c in candidates if _safe(c) and c.suffix == ".py" and "\n" not in str(c)), None)


def _safe(path: Path) -> bool:
    """A file as safe to run as the binaries themselves: owned by root or by us, writable by nobody else."""
    try:
        info = path.stat()
    except OSError:
        return False
    return path.is_file() and info.st_uid in (0, os.getuid()) and not info.st_mode & 0o022


def _quoted(path: str | None) -> str:
    """``path`` as one argument of a gdb command (gdb splits arguments at blanks, honouring quotes)."""
    text = str(path).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _helper(binary: Binary) -> str | None:
    """The interpreter's gdb helper installed beside it (``python3.12-gdb.py``), if it is as safe to
    load as the binary itself: owned by root or by us, writable by nobody else."""
    if binary.module.role not in ("exe", "libpython") or binary.status != "ok" or binary.path is None:
        return None
    helper = Path(f"{binary.path}-gdb.py")
    if binary.module.role == "exe" and not helper.is_file():
        helper = Path(binary.path).resolve().with_name(f"{Path(binary.path).resolve().name}-gdb.py")
    try:
        info = helper.stat()
    except OSError:
        return None
    if info.st_uid not in (0, os.getuid()) or info.st_mode & 0o022:
        return None
    return str(helper)


def _executable(exe: str | None, override: str | None, sysroot: Path | None) -> str | None:
    """The executable gdb should load: ``override``, else the recorded one when it still exists."""
    if override is not None:
        problem = _unreadable(override).replace("no longer exists", "does not exist")
        if problem:
            raise UsageError(f"--exe {override}: {problem}")
        return override
    if not exe:
        return None
    local = exe if sysroot is None else str(sysroot / exe.lstrip("/"))
    problem = _unreadable(local)
    if problem:
        print(f"kmemdump: the dump's executable {local} {problem}; gdb gets no symbols", file=sys.stderr)
        return None
    return local


def _unreadable(path: str) -> str:
    """Why gdb could not read the file at ``path`` ("" when it can): gone, or there but not readable."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "no longer exists"
    except PermissionError:
        return "cannot be read by this user (a directory on its path is closed to it)"
    except OSError as err:
        return f"cannot be read ({err.strerror})"
    import stat

    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file"
    if not os.access(path, os.R_OK):
        return "exists but cannot be read by this user"
    return ""


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

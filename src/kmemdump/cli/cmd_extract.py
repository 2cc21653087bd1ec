"""Write one region's stored bytes to a file (or to stdout with -o -).

REGION is an ID (17, 0x11), a name, a label as 'show' prints it (user+0, dyn+2), or a
predefined name such as BANNER. The file is
written atomically: to a temporary file beside it, synced, then moved into place, so a reader never
sees half of it. An existing file is kept unless --force is given, and even then only a regular
file is replaced: a device, a FIFO, a socket, a directory or a symbolic link is refused and left as
it is (write into one with -o - and a redirection). The new file is readable by its owner only
(mode 0600), as the memory it holds may be private.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import tempfile
from argparse import ArgumentParser
from argparse import Namespace
from pathlib import Path

from kmemdump.cli.options import REGION_HELP
from kmemdump.cli.options import add_dump_argument
from kmemdump.cli.options import add_range_options
from kmemdump.cli.options import dump_path
from kmemdump.cli.options import select_range
from kmemdump.errors import KmemdumpError
from kmemdump.files import NotRegularFileError
from kmemdump.files import file_kind
from kmemdump.files import rename_noreplace
from kmemdump.files import replace_regular
from kmemdump.inspect.dumpfile import Dump

__all__ = [
    "EPILOG",
    "OutputError",
    "OutputExistsError",
    "OutputNotRegularError",
    "prepare",
    "run",
    "write_atomically",
]

EPILOG = """\
exit status: 0 written; 1 not a dump, no such region, or the output cannot be written (or exists,
without --force); 2 bad usage
"""


class OutputError(KmemdumpError):
    """The output file cannot be written."""


class OutputExistsError(OutputError):
    """The output file exists and --force was not given."""

    help = "Choose another file with -o FILE, or add --force to replace it."


class OutputNotRegularError(OutputError):
    """The output names something other than a regular file (a device, a FIFO …); never replaced."""

    help = (
        "extract replaces only regular files. Choose another file with -o FILE, or write to standard "
        "output with -o - and redirect it (kmemdump extract DUMP REGION -o - > FILE)."
    )


def prepare(parser: ArgumentParser) -> None:
    add_dump_argument(parser)
    parser.add_argument("region", metavar="REGION", help=REGION_HELP)
    parser.add_argument(
        "-o", "--output", required=True, metavar="FILE", help="where to write the bytes ('-' for stdout)"
    )
    parser.add_argument(
        "-f", "--force", action="store_true", help="replace FILE if it exists (a regular file only)"
    )
    add_range_options(parser)


def run(args: Namespace) -> int:
    with Dump.open(dump_path(args.dump, args.dir)) as dump:
        record = dump.region(args.region)
        data = select_range(dump.region_bytes(record), args.offset, args.length, record.id)
    if args.output == "-":
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return 0
    target = write_atomically(Path(args.output), data, force=args.force)
    partial = f" (only {record.stored} of {record.size} were stored)" if record.stored < record.size else ""
    print(
        f"wrote {len(data)} bytes of region {record.id} ({record.name}) to {target}{partial}", file=sys.stderr
    )
    return 0


def write_atomically(target: Path, data: bytes, *, force: bool = False) -> Path:
    """Write ``data`` to ``target`` through a synced temporary file; never replace unless ``force``,
    and then only a regular file (:class:`OutputNotRegularError` for anything else, left as it is)."""
    try:
        mode: int | None = os.lstat(target).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as err:  # a directory this user cannot enter, most often
        raise OutputError(f"cannot write in {target.parent}: {err.strerror}", path=str(target)) from err
    if (mode is not None and stat.S_ISDIR(mode)) or os.path.isdir(target):
        raise OutputError("the output is a directory; give a file name", path=str(target))
    if mode is not None and not force:
        raise OutputExistsError("the output file exists", path=str(target))
    if mode is not None and not stat.S_ISREG(mode):
        raise OutputNotRegularError(f"the output is {file_kind(mode)}, not a regular file", path=str(target))
    directory = target.parent
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    except OSError as err:
        raise OutputError(f"cannot write in {directory}: {err.strerror}", path=str(target)) from err
    ours = os.fstat(fd)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if force:
            replace_regular(Path(temporary), target)
        else:
            rename_noreplace(Path(temporary), target)
    except NotRegularFileError as err:  # it changed since it was looked at: left as it is
        raise OutputNotRegularError(
            f"the output is {err.kind}, not a regular file", path=str(target)
        ) from err
    except FileExistsError as err:
        raise OutputExistsError("the output file appeared while writing", path=str(target)) from err
    except OSError as err:
        raise OutputError(f"cannot write the output: {err.strerror or err}", path=str(target)) from err
    finally:
        _remove_if_ours(temporary, ours)
    return target


def _remove_if_ours(path: str, ours: os.stat_result) -> None:
    """Remove the temporary file, if the name still holds it (and not what was swapped out for it)."""
    with contextlib.suppress(OSError):
        now = os.lstat(path)
        if (now.st_dev, now.st_ino) == (ours.st_dev, ours.st_ino):
            os.unlink(path)

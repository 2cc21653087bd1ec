"""Write one region's stored bytes to a file (or to stdout with -o -).

REGION is an ID (17, 0x11), a name, a label as 'show' prints it (user+0, dyn+2), or a
predefined name such as BANNER. The file is
written atomically: to a temporary file beside it, synced, then moved into place, so a reader never
sees half of it. An existing file is kept unless --force is given. The new file is readable by its
owner only (mode 0600), as the memory it holds may be private.
"""

from __future__ import annotations

import contextlib
import os
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
from kmemdump.files import rename_noreplace
from kmemdump.inspect.dumpfile import Dump

__all__ = ["EPILOG", "OutputError", "OutputExistsError", "prepare", "run", "write_atomically"]

EPILOG = """\
exit status: 0 written; 1 not a dump, no such region, or the output cannot be written (or exists,
without --force); 2 bad usage
"""


class OutputError(KmemdumpError):
    """The output file cannot be written."""


class OutputExistsError(OutputError):
    """The output file exists and --force was not given."""

    help = "Choose another file with -o FILE, or add --force to replace it."


def prepare(parser: ArgumentParser) -> None:
    add_dump_argument(parser)
    parser.add_argument("region", metavar="REGION", help=REGION_HELP)
    parser.add_argument(
        "-o", "--output", required=True, metavar="FILE", help="where to write the bytes ('-' for stdout)"
    )
    parser.add_argument("-f", "--force", action="store_true", help="replace FILE if it exists")
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
    """Write ``data`` to ``target`` through a synced temporary file; never replace unless ``force``."""
    if os.path.isdir(target):
        raise OutputError("the output is a directory; give a file name", path=str(target))
    if not force and os.path.lexists(target):
        raise OutputExistsError("the output file exists", path=str(target))
    directory = target.parent
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    except OSError as err:
        raise OutputError(f"cannot write in {directory}: {err.strerror}", path=str(target)) from err
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if force:
            os.replace(temporary, target)
        else:
            rename_noreplace(Path(temporary), target)
    except FileExistsError as err:
        raise OutputExistsError("the output file appeared while writing", path=str(target)) from err
    except OSError as err:
        raise OutputError(f"cannot write the output: {err.strerror or err}", path=str(target)) from err
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    return target

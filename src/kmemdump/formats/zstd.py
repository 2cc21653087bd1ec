"""zstd framing of a dump (``.core.zst``): zstd frames holding the same ELF image.

A dump written whole is one frame; a streamed one is the image's header in a frame of its own, a
skippable frame, then the rest of the image in one frame (see :mod:`kmemdump.collector.imagefile`).
Decompressed in order, the frames give the image.

``compression.zstd`` on Python 3.14, its backport ``backports.zstd`` before (the ``inspect``
extra). Compressing is the collector's job and decompressing the reader's; both find the module
here, and a missing module is a :class:`~kmemdump.errors.MissingExtraError` that names the extra
to install.
"""

from __future__ import annotations

import os
import sys

from kmemdump.errors import DumpFormatError
from kmemdump.errors import MissingExtraError

TYPE_CHECKING = False  # typing is imported for mypy only: it costs the command line milliseconds
if TYPE_CHECKING:
    from pathlib import Path
    from types import ModuleType
    from typing import IO
    from typing import Any

__all__ = [
    "LEVEL",
    "MAGIC",
    "MAX_SIZE_DEFAULT",
    "MISSING",
    "SUFFIX",
    "WORKERS",
    "compressor",
    "decompress",
    "decompress_to",
    "frame_header",
    "is_compressed",
    "max_size",
    "missing",
    "module",
]

MAGIC = b"\x28\xb5\x2f\xfd"
"""The first four bytes of a zstd frame."""
SUFFIX = ".zst"
_CHUNK = 8 << 20
MISSING = "the zstd module" + (" (backports.zstd before Python 3.14)" if sys.version_info < (3, 14) else "")
"""What :func:`module` needs."""


def missing(doing: str, **context: Any) -> MissingExtraError:
    """The one-line error for ``doing`` (e.g. "reading a compressed dump") without the zstd module."""
    return MissingExtraError.needs(f"{doing} needs {MISSING}", "inspect", **context)


def module() -> ModuleType:
    """The zstd module; ``ImportError`` when it is not installed."""
    if sys.version_info >= (3, 14):
        import compression.zstd as found
    else:
        import backports.zstd as found
    return found


def is_compressed(path: Path) -> bool:
    """Whether the file at ``path`` starts with a zstd frame; :class:`DumpFormatError` if unreadable."""
    try:
        with open(path, "rb") as source:
            return source.read(4) == MAGIC
    except OSError as err:
        raise DumpFormatError(f"cannot open the dump: {err.strerror or err}", path=str(path)) from err


LEVEL = 1
"""The level dumps are compressed at. Chosen by measurement (``python -m benchmarks --only death-dump``
and the table in ``docs/collector.md``): on 65 MiB of small-object-like records, level 1 on two
worker threads compressed at about 900 MB/s to 23.0 MB, level 3 at 260 MB/s to 24.7 MB, level -1 at
1.2 GB/s but to 28.4 MB, larger than minicoredumper's gzip (25 MB in 1.7 s)."""
WORKERS = 2
"""Compression threads of a streamed dump (libzstd's own): with two, level 1 ran 1.5x as fast as on
the calling thread alone, on the two-core machines we measured."""


def compressor(level: int, *, workers: int = 0, content_size: bool = True) -> Any:
    """A ``ZstdCompressor`` at ``level`` that writes a checksum in every frame (XXH64 of the content,
    checked by every reader), so a damaged dump is refused instead of read as altered data.
    ``workers`` threads compress in the background (0: on the calling thread); ``content_size``
    False leaves the size out of frame headers.

    ``ImportError`` without the module, ``ValueError`` for a bad level.
    """
    zstd = module()
    parameter = zstd.CompressionParameter
    options = {parameter.compression_level: level, parameter.checksum_flag: 1}
    if workers:
        options[parameter.nb_workers] = workers
    if not content_size:
        options[parameter.content_size_flag] = 0
    try:
        return zstd.ZstdCompressor(options=options)
    except (TypeError, zstd.ZstdError) as err:
        raise ValueError(str(err)) from err


MAX_SIZE_DEFAULT = 64 << 30
"""The largest decompressed dump a reader accepts unless ``$KMEMDUMP_MAX_DUMP_SIZE`` says otherwise."""
_ELF_HEAD = b"\x7fELF"
_ET_CORE = b"\x04\x00"


def max_size() -> int:
    """The decompressed size a reader accepts: ``$KMEMDUMP_MAX_DUMP_SIZE`` (bytes) or 64 GiB."""
    text = os.environ.get("KMEMDUMP_MAX_DUMP_SIZE", "")
    if text.isascii() and text.isdigit() and 0 < len(text) <= 20:
        return int(text)
    return MAX_SIZE_DEFAULT


def frame_header(head: bytes) -> tuple[int | None, bool]:
    """``(declared content size or None, checksum flag)`` of the zstd frame starting ``head``
    (its first 18 bytes or more); ``ValueError`` when it is not a zstd frame header."""
    if len(head) < 6 or head[:4] != MAGIC:
        raise ValueError("not a zstd frame")
    descriptor = head[4]
    if descriptor & 0x08:
        raise ValueError("reserved bit set in the frame header")
    size_flag, single, checksum, dict_flag = (
        descriptor >> 6,
        bool(descriptor & 0x20),
        bool(descriptor & 4),
        descriptor & 3,
    )
    at = 5 + (0 if single else 1) + (0, 1, 2, 4)[dict_flag]
    width = (1 if single else 0, 2, 4, 8)[size_flag]
    if not width:
        return None, checksum
    if len(head) < at + width:
        raise ValueError("truncated frame header")
    value = int.from_bytes(head[at : at + width], "little")
    return (value + 256 if width == 2 else value), checksum


def decompress(
    source: IO[bytes], out: IO[bytes], where: str | os.PathLike[str], *, limit: int | None = None
) -> int:
    """Decompress all of ``source`` into ``out`` and return the decompressed size.

    Refused with :class:`DumpFormatError` before anything is written: a frame that declares more than
    ``limit`` bytes (default :func:`max_size`), or whose first bytes are not an ELF core; and on the
    way: more bytes than the limit, a size other than the frame declared, a checksum that does not
    match (every dump kmemdump writes carries one), damaged data. Runs of zero bytes are written as
    holes, so untouched memory takes no disk in ``out``.
    """
    try:
        zstd = module()
    except ImportError as err:
        raise missing("reading a compressed dump", path=str(where)) from err
    cap = max_size() if limit is None else limit
    try:
        head = source.read(18)
        source.seek(0)
        try:
            declared, _checksum = frame_header(head)
        except ValueError as err:
            raise DumpFormatError(f"corrupt zstd data: {err}", path=str(where)) from err
        if declared is not None and declared > cap:
            raise DumpFormatError(
                f"the dump would be {declared} bytes once decompressed, over the limit of {cap} "
                "(set KMEMDUMP_MAX_DUMP_SIZE to read a larger one)",
                path=str(where),
            )
        total = 0
        zero = bytes(_CHUNK)
        with zstd.ZstdFile(source, "rb") as stream:
            while True:
                chunk = stream.read(_CHUNK)
                if not chunk:
                    break
                if total == 0 and (chunk[:4] != _ELF_HEAD or chunk[16:18] != _ET_CORE):
                    raise DumpFormatError(
                        "not a core file once decompressed (no ELF core header)", path=str(where)
                    )
                total += len(chunk)
                if total > cap:
                    raise DumpFormatError(
                        f"the dump decompresses to more than the limit of {cap} bytes "
                        "(set KMEMDUMP_MAX_DUMP_SIZE to read a larger one)",
                        path=str(where),
                    )
                if chunk == zero[: len(chunk)]:
                    out.seek(len(chunk), os.SEEK_CUR)  # a hole
                else:
                    out.write(chunk)
        out.truncate(total)
        out.flush()
    except (zstd.ZstdError, EOFError) as err:
        raise DumpFormatError(f"corrupt or truncated zstd data: {err}", path=str(where)) from err
    except OSError as err:
        raise DumpFormatError(
            f"cannot decompress the dump: {err.strerror or err}", path=str(where), errno=err.errno
        ) from err
    if declared is not None and total != declared:
        raise DumpFormatError(
            f"corrupt zstd data: the frame declares {declared} bytes and holds {total}", path=str(where)
        )
    return total


def decompress_to(source: Path, target: Path) -> None:
    """Decompress the file ``source`` into a new file ``target`` (mode 0600, never replaced)."""
    try:
        with open(source, "rb") as raw, open(target, "xb") as out:
            os.fchmod(out.fileno(), 0o600)
            decompress(raw, out, source)
    except OSError as err:
        raise DumpFormatError(f"cannot decompress the dump: {err.strerror or err}", path=str(source)) from err

"""zstd framing of a dump (``.core.zst``): one zstd frame holding the same ELF image.

``compression.zstd`` on Python 3.14, its backport ``backports.zstd`` before (the ``inspect``
extra). Compressing is the collector's job and decompressing the reader's; both find the module
here, and a missing module is a :class:`~kmemdump.errors.MissingExtraError` that names the extra
to install.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from kmemdump.errors import DumpFormatError
from kmemdump.errors import MissingExtraError

TYPE_CHECKING = False  # typing is imported for mypy only: it costs the command line milliseconds
if TYPE_CHECKING:
    from types import ModuleType
    from typing import IO
    from typing import Any

__all__ = [
    "MAGIC",
    "MISSING",
    "SUFFIX",
    "compressor",
    "decompress",
    "decompress_to",
    "is_compressed",
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


def compressor(level: int) -> Any:
    """A ``ZstdCompressor`` at ``level`` that writes a checksum in every frame (XXH64 of the content,
    checked by every reader), so a damaged dump is refused instead of read as altered data.

    ``ImportError`` without the module, ``ValueError`` for a bad level.
    """
    zstd = module()
    parameter = zstd.CompressionParameter
    try:
        return zstd.ZstdCompressor(options={parameter.compression_level: level, parameter.checksum_flag: 1})
    except (TypeError, zstd.ZstdError) as err:
        raise ValueError(str(err)) from err


def decompress(source: IO[bytes], out: IO[bytes], where: Path) -> None:
    """Decompress all of ``source`` into ``out``; :class:`DumpFormatError` for damaged data."""
    try:
        zstd = module()
    except ImportError as err:
        raise missing("reading a compressed dump", path=str(where)) from err
    try:
        import shutil

        with zstd.ZstdFile(source, "rb") as stream:
            shutil.copyfileobj(stream, out, _CHUNK)
        out.flush()
    except (zstd.ZstdError, EOFError) as err:
        raise DumpFormatError(f"corrupt or truncated zstd data: {err}", path=str(where)) from err
    except OSError as err:
        raise DumpFormatError(
            f"cannot decompress the dump: {err.strerror or err}", path=str(where), errno=err.errno
        ) from err


def decompress_to(source: Path, target: Path) -> None:
    """Decompress the file ``source`` into a new file ``target`` (mode 0600, never replaced)."""
    try:
        with open(source, "rb") as raw, open(target, "xb") as out:
            os.fchmod(out.fileno(), 0o600)
            decompress(raw, out, source)
    except OSError as err:
        raise DumpFormatError(f"cannot decompress the dump: {err.strerror or err}", path=str(source)) from err

"""The fault file: where ``faulthandler`` writes a producer's Python tracebacks for the collector.

``kmemdump.init(faulthandler=True)`` points :mod:`faulthandler` at ``<pid>-<start_time>.fault``
beside the process's table. What faulthandler writes there — the traceback of every thread on a
SIGSEGV, SIGFPE, SIGABRT, SIGBUS or SIGILL, and each ``faulthandler.dump_traceback_later`` timeout
given that file — stays in the file when the process dies. The collector reads the end of it (at
most :data:`MAX_FAULT_BYTES`) into every dump of the process as a note, and removes it with the
table. The file holds plain text, as faulthandler writes it; a reader treats it as hostile text.

Standard library only: the producer imports this module.
"""

from __future__ import annotations

import os

from kmemdump.errors import DumpFormatError
from kmemdump.formats.table import open_owned_file
from kmemdump.paths import path_text
from kmemdump.record import frozen

TYPE_CHECKING = False  # typing for mypy only (the command line starts faster without it)
if TYPE_CHECKING:
    from typing import Final

__all__ = [
    "FAULT_SUFFIX",
    "MAX_FAULT_BYTES",
    "FaultText",
    "decode_fault_note",
    "encode_fault_note",
    "fault_path_of",
    "read_fault_file",
]

FAULT_SUFFIX: Final = ".fault"
MAX_FAULT_BYTES: Final = 256 * 1024
"""A reader keeps at most this many bytes, the last ones (a crash comes last)."""


@frozen
class FaultText:
    """What a fault file held: its text (the end of it, when longer than the bound)."""

    text: str
    size: int
    """Bytes in the file."""
    kept: int
    """Bytes of the file the text was decoded from (its end)."""

    @property
    def cut(self) -> bool:
        return self.kept < self.size


def fault_path_of(table: str | os.PathLike[str]) -> str:
    """The fault file beside the table at ``table`` (``N-S.table`` -> ``N-S.fault``)."""
    head, sep, name = path_text(os.fspath(table)).rpartition("/")  # as Path(table) would name it
    return head + sep + name.removesuffix(".table") + FAULT_SUFFIX


def read_fault_file(
    path: str | os.PathLike[str],
    *,
    owner: int | None = None,
    limit: int = MAX_FAULT_BYTES,
    dir_fd: int | None = None,
) -> FaultText | None:
    """The text of the fault file at ``path``; None when there is none or it is empty.

    Opened as the table is (no link followed, a regular file of the right owner: a
    :class:`~kmemdump.errors.ForeignTableError` otherwise; by its name in the open directory
    ``dir_fd`` when given); at most the last ``limit`` bytes are
    read, starting at a line when the file is longer; bytes that are not UTF-8 are replaced.
    """
    try:
        fd = open_owned_file(path, os.O_RDONLY, what="fault file", owner=owner, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    try:
        size = os.fstat(fd).st_size
        if size <= 0:
            return None
        start = max(0, size - limit)
        chunks = []
        offset = start
        while offset < size:
            chunk = os.pread(fd, min(1 << 16, size - offset), offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if start and b"\n" in data:
        data = data[data.index(b"\n") + 1 :]
    return FaultText(data.decode("utf-8", "replace"), size, len(data))


def encode_fault_note(fault: FaultText) -> bytes:
    """The dump note's body: JSON with the text, the file's size and how much of it was kept."""
    import json

    body = {"version": 1, "size": fault.size, "kept": fault.kept, "text": fault.text}
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


def decode_fault_note(desc: bytes) -> FaultText:
    """Read a fault note back; :class:`DumpFormatError` when it is not one."""
    from kmemdump.formats import jsonscan

    try:
        body = jsonscan.loads(bytes(desc).decode("utf-8", "replace"))
    except ValueError as err:
        raise DumpFormatError(f"the faulthandler note is not JSON: {err}") from None
    if not isinstance(body, dict) or body.get("version") != 1:
        raise DumpFormatError("the faulthandler note is not a version 1 note")
    text, size, kept = body.get("text"), body.get("size"), body.get("kept")
    if not isinstance(text, str) or not isinstance(size, int) or not isinstance(kept, int):
        raise DumpFormatError("the faulthandler note lacks its text or sizes")
    if isinstance(size, bool) or isinstance(kept, bool) or not 0 <= kept <= size:
        raise DumpFormatError("the faulthandler note's sizes are inconsistent", size=size, kept=kept)
    return FaultText(text, size, kept)

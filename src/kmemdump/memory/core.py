"""A dump file as a memory source: :class:`CoreImage` reads what a core image stored.

Plain and zstd images are accepted (a zstd one is decompressed into an anonymous temporary file
first); the headers are checked by :func:`kmemdump.formats.elf.parse_core`, so every defect of a
file is a :class:`~kmemdump.errors.DumpFormatError`. :meth:`CoreImage.read` fails for memory the
image does not hold, as a live process's would.
"""

from __future__ import annotations

import bisect
import mmap
import os

from kmemdump.errors import DumpFormatError
from kmemdump.errors import KmemdumpError
from kmemdump.errors import UnreadableMemoryError
from kmemdump.formats import zstd
from kmemdump.formats.elf import LoadSegment
from kmemdump.formats.elf import Note
from kmemdump.formats.elf import find_note
from kmemdump.formats.elf import parse_core
from kmemdump.record import frozen

TYPE_CHECKING = False  # typing is imported for mypy only: it costs the command line milliseconds
if TYPE_CHECKING:
    from collections.abc import Iterable
    from types import TracebackType
    from typing import IO

__all__ = ["CoreImage"]


@frozen
class _Piece:
    start: int
    end: int
    offset: int


def _pieces(segments: Iterable[LoadSegment]) -> list[_Piece]:
    """Disjoint, sorted stretches of memory with their file offsets (first segment wins overlaps)."""
    pieces: list[_Piece] = []
    covered = -1
    for seg in sorted(segments, key=lambda s: (s.address, -s.size)):
        if seg.size == 0 or seg.end <= covered:
            continue
        start = max(seg.address, covered)
        pieces.append(_Piece(start, seg.end, seg.offset + (start - seg.address)))
        covered = seg.end
    return pieces


class CoreImage:
    """A core image opened for reading; use :meth:`open`."""

    def __init__(
        self,
        path: str,
        handle: IO[bytes],
        data: mmap.mmap,
        *,
        compressed: bool,
        machine: int,
        notes: tuple[Note, ...],
        segments: tuple[LoadSegment, ...],
    ) -> None:
        self.path = path
        self.compressed = compressed
        self.machine = machine
        self.notes = notes
        self.segments = segments
        self._handle = handle
        self._data = data
        self._pieces = _pieces(segments)
        self._starts = [piece.start for piece in self._pieces]

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> CoreImage:
        """Open a core image (plain or zstd); :class:`DumpFormatError` if it is not a sound one."""
        where = os.fspath(path)
        try:
            handle: IO[bytes] = open(where, "rb")  # noqa: SIM115 - kept open by the CoreImage
        except OSError as err:
            raise DumpFormatError(f"cannot open {where}: {err.strerror or err}", path=str(where)) from err
        compressed = False
        try:
            if handle.read(4) == zstd.MAGIC:
                compressed = True
                handle.seek(0)
                handle = _decompress(handle, where)
            size = os.fstat(handle.fileno()).st_size
            if size == 0:
                raise DumpFormatError("not an ELF file: the file is empty", path=str(where))
            data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except KmemdumpError:  # a damaged file, or the zstd module missing
            handle.close()
            raise
        except (OSError, ValueError) as err:
            handle.close()
            raise DumpFormatError(f"cannot read {where}: {err}", path=str(where)) from err
        try:
            machine, notes, segments = parse_core(data, str(where))
        except BaseException:
            data.close()
            handle.close()
            raise
        return cls(
            where, handle, data, compressed=compressed, machine=machine, notes=notes, segments=segments
        )

    # -- notes --

    def note(self, owner: str, type: int) -> Note | None:
        """The first note with this owner and type, if any (our own notes also under the type
        numbers of older dumps: :func:`~kmemdump.formats.elf.find_note`)."""
        return find_note(self.notes, owner, type)

    # -- memory --

    def segment_data(self, segment: LoadSegment) -> bytes:
        """The stored bytes of one of this image's segments."""
        return self._data[segment.offset : segment.offset + segment.size]

    def read(self, address: int, size: int) -> bytes:
        """Exactly ``size`` bytes at ``address`` (across adjacent segments), or
        :class:`UnreadableMemoryError` with ``readable=`` the leading bytes the image holds."""
        data = self.read_upto(address, size)
        if len(data) != size:
            raise UnreadableMemoryError(
                f"the dump holds only {len(data)} of {size} bytes at {address:#x}",
                address=address,
                size=size,
                readable=len(data),
                path=str(self.path),
            )
        return data

    def read_upto(self, address: int, size: int) -> bytes:
        """The leading bytes of ``size`` bytes at ``address`` that the image holds (maybe ``b""``)."""
        if address < 0 or size <= 0:
            return b""
        pieces, data = self._pieces, self._data
        index = bisect.bisect_right(self._starts, address) - 1
        end = address + size
        if index >= 0:  # fast path: one piece holds it all
            piece = pieces[index]
            if end <= piece.end:
                begin = piece.offset + address - piece.start
                return data[begin : begin + size]
        parts: list[bytes] = []
        position = address
        while position < end and index >= 0 and index < len(pieces):
            piece = pieces[index]
            if not piece.start <= position < piece.end:
                break
            stop = min(end, piece.end)
            begin = piece.offset + position - piece.start
            parts.append(data[begin : begin + stop - position])
            position = stop
            index += 1
        return b"".join(parts)

    # -- lifetime --

    def close(self) -> None:
        self._data.close()
        self._handle.close()

    def __enter__(self) -> CoreImage:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"CoreImage({str(self.path)!r}, segments={len(self.segments)}, notes={len(self.notes)}, "
            f"compressed={self.compressed})"
        )


def _decompress(handle: IO[bytes], where: str) -> IO[bytes]:
    """The decompressed image in an anonymous temporary file (``handle`` is closed)."""
    import tempfile

    out: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - returned to the caller
    try:
        zstd.decompress(handle, out, where)
    except BaseException:
        out.close()
        raise
    finally:
        handle.close()
    return out

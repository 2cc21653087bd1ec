"""Writing a dump file: the ELF core image of :mod:`kmemdump.formats.elf`, atomically.

Two ways in. :class:`CoreWriter` streams: segment bytes go to the file as they are copied from the
target, through staging buffers written in the background (:mod:`.imagefile`), and the headers go
in last. :func:`write_core` takes segments held in memory. Either can compress with zstd, each frame
with a checksum. Either way the image is written to a temporary file beside the final one and
renamed without replacing anything: a dump at its final path is whole.

A *durable* dump (the ``--durable`` option) is also written with ``O_DIRECT`` and fsynced, file
before the rename and directory after it, so it survives a crash of the host the moment it has its
name; that costs the disk's write time. Without it the file is written through the page cache and
the kernel writes it back later, as it does every other file (minicoredumper does the same).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from types import TracebackType

from kmemdump.collector.imagefile import ImageFile
from kmemdump.collector.imagefile import chown_dump
from kmemdump.collector.imagefile import exists_error
from kmemdump.collector.imagefile import make_compressor
from kmemdump.collector.imagefile import parse_temp_name
from kmemdump.collector.imagefile import sync_dump_directory
from kmemdump.collector.imagefile import temp_name
from kmemdump.collector.imagefile import write_error
from kmemdump.errors import InvalidRegionError
from kmemdump.files import rename_noreplace
from kmemdump.formats import zstd
from kmemdump.formats.elf import ADDRESS_END
from kmemdump.formats.elf import EHDR_SIZE
from kmemdump.formats.elf import PHDR_SIZE
from kmemdump.formats.elf import PN_XNUM
from kmemdump.formats.elf import Note
from kmemdump.formats.elf import Segment
from kmemdump.formats.elf import check_machine
from kmemdump.formats.elf import elf_header
from kmemdump.formats.elf import program_headers
from kmemdump.formats.elf import table_size
from kmemdump.paths import path_text

TYPE_CHECKING = False  # typing for mypy only (the command line starts faster without it)
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

__all__ = ["CoreWriter", "parse_temp_name", "temp_name", "write_core"]

_ZSTD_CHUNK = 8 << 20
_WRITE_BATCH = 1024  # iovecs per writev


def write_core(
    path: str | os.PathLike[str],
    segments: Sequence[Segment],
    notes: Sequence[Note],
    *,
    compress: bool = False,
    level: int = zstd.LEVEL,
    machine: int | None = None,
    owner: tuple[int, int] | None = None,
    durable: bool = True,
) -> Path:
    """Write a core image atomically and return its final path (fsynced, with its directory, when
    ``durable``).

    With ``compress=True`` the file is one zstd frame of the same image and ``.zst`` is appended
    to the name when missing. An existing final path is never replaced. Any failure removes the
    temporary file and raises :class:`CollectorError` (with ``path=`` and ``errno=``).
    """
    from pathlib import Path  # the result (the dump's writer, CoreWriter, works on str paths)

    machine = check_machine(machine)
    final = Path(path)
    if compress and not final.name.endswith(".zst"):
        final = final.with_name(final.name + ".zst")
    compressor = make_compressor(final, level) if compress else None
    views = [memoryview(segment.data).cast("B") for segment in segments]
    spans = [(segment.address, view.nbytes) for segment, view in zip(segments, views, strict=True)]
    for segment, (address, size) in zip(segments, spans, strict=True):
        if size != segment.size:  # a bytearray resized since the Segment was made
            raise InvalidRegionError(
                f"segment at {address:#x} changed size from {segment.size} to {size} bytes",
                address=address,
                size=size,
            )
    notes_blob = b"".join(note.encode() for note in notes)
    notes_offset = EHDR_SIZE + table_size(len(spans))
    loads = []
    offset = notes_offset + len(notes_blob)
    for address, size in spans:
        loads.append((address, offset, size))
        offset += size
    phnum = 1 + len(loads)
    shoff = EHDR_SIZE + phnum * PHDR_SIZE if phnum >= PN_XNUM else 0
    head = b"".join(
        (
            elf_header(machine, EHDR_SIZE, phnum, shoff),
            program_headers(notes_offset, len(notes_blob), loads),
            notes_blob,
        )
    )
    total = offset
    if os.path.lexists(final):
        raise exists_error(final)
    directory = final.parent
    temporary = directory / temp_name(final.name)
    fd = -1
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        os.fchmod(fd, 0o640)  # whatever the umask
        chown_dump(fd, owner)
        if compressor is None:
            _write_views(fd, [memoryview(head), *views])
        else:
            compressor.set_pledged_input_size(total)
            _write_compressed(fd, [memoryview(head), *views], compressor)
        if durable:
            os.fsync(fd)
        os.close(fd)
        fd = -1
        rename_noreplace(temporary, final)
    except BaseException as err:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(temporary)
        except OSError:
            pass
        if isinstance(err, FileExistsError) and err.filename == os.fspath(final):
            raise exists_error(final) from err
        if isinstance(err, OSError):
            raise write_error(err, final) from err
        raise
    if durable:
        sync_dump_directory(directory, final)
    return final


def _write_views(fd: int, views: list[memoryview]) -> None:
    """Write every view in order with ``writev``, resuming after short writes."""
    pending = [v for v in views if v.nbytes]
    start = 0
    while start < len(pending):
        batch = pending[start : start + _WRITE_BATCH]
        written = os.writev(fd, batch)
        for view in batch:
            if written >= view.nbytes:
                written -= view.nbytes
                start += 1
                continue
            pending[start] = view[written:]  # short write: the rest of this view comes next
            break


def _write_compressed(fd: int, views: list[memoryview], compressor: Any) -> None:
    out: list[memoryview] = []
    held = 0
    for view in views:
        for begin in range(0, view.nbytes, _ZSTD_CHUNK):
            chunk = compressor.compress(view[begin : begin + _ZSTD_CHUNK])
            if chunk:
                out.append(memoryview(chunk))
                held += len(chunk)
            if held >= _ZSTD_CHUNK:
                _write_views(fd, out)
                out, held = [], 0
    out.append(memoryview(compressor.flush()))
    _write_views(fd, out)


class CoreWriter:
    """Stream a core image to disk: segment bytes go out as they are copied, the headers last.

    The collector copies a region straight from the target into a reused staging buffer and from
    there into the file, so a dump of gigabytes needs megabytes of memory, and how many bytes each
    region really gave is known only afterwards. So a streamed image puts the ELF header at 0, the
    segment bytes from offset 64 on, back to back, then the notes, then the program header table
    (``e_phoff`` points at it; ELF allows it anywhere). Readers (gdb, readelf, pyelftools, lldb)
    follow the offsets and see the same image :func:`write_core` makes. The file itself is an
    :class:`~kmemdump.collector.imagefile.ImageFile`: written in the background while the next
    bytes are copied, with ``O_DIRECT`` and fsync when ``durable``, or compressed.

        with CoreWriter(path) as out:
            out.begin(address)
            out.write(chunk)            # as many times as there are chunks (or space/commit)
            stored = out.end()          # 0: nothing stored, no PT_LOAD for it
            final = out.finish(notes)   # atomic: temporary file, (fsync), rename, (fsync dir)

    Leaving the ``with`` block without :meth:`finish` (an exception) removes the temporary file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        machine: int | None = None,
        direct: bool = True,
        compress: bool = False,
        level: int = zstd.LEVEL,
        owner: tuple[int, int] | None = None,
        durable: bool = True,
    ) -> None:
        self._machine = check_machine(machine)
        self.durable = durable
        """fsync the file and its directory (and write with ``O_DIRECT``); else the page cache's pace."""
        self.final = path_text(os.fspath(path))
        """The dump's final name (as ``str(Path(path))`` gives it, ``.zst`` appended when compressed)."""
        if compress and not self.final.endswith(".zst"):
            self.final += ".zst"
        if os.path.lexists(self.final):
            raise exists_error(self.final)
        self._spans: list[tuple[int, int, int]] = []  # (address, file offset, size)
        self._open: list[int] | None = None  # [address, offset, size] of the segment being written
        self._file = ImageFile(
            self.final,
            direct=direct and durable,
            compress=compress,
            level=level,
            owner=owner,
            durable=durable,
        )

    @property
    def direct(self) -> bool:
        """The file is written with ``O_DIRECT`` (durable, uncompressed, and the file system allows it)."""
        return self._file.direct

    @property
    def bytes_stored(self) -> int:
        return sum(size for _, _, size in self._spans)

    def begin(self, address: int) -> None:
        """Start the segment for memory at ``address``."""
        if self._open is not None:
            raise ValueError("a segment is already open; call end() first")
        if not 0 <= address < ADDRESS_END:
            raise InvalidRegionError("segment address out of range", address=address)
        self._open = [address, self._file.offset, 0]

    def write(self, data: Any) -> None:
        """Append bytes to the open segment."""
        if self._open is None:
            raise ValueError("no segment is open; call begin() first")
        view = memoryview(data).cast("B")
        if self._open[0] + self._open[2] + view.nbytes > ADDRESS_END:
            raise InvalidRegionError("segment runs past the end of the address space", address=self._open[0])
        self._open[2] += view.nbytes
        self._file.write(view)

    def space(self, wanted: int) -> memoryview:
        """Room for up to ``wanted`` bytes of the open segment, straight in the staging buffer (at
        least one byte): read into it, then :meth:`commit` how many bytes went in. Saves the copy
        :meth:`write` makes of bytes that are read from the target anyway."""
        if self._open is None:
            raise ValueError("no segment is open; call begin() first")
        return self._file.space(wanted)

    def commit(self, count: int) -> None:
        """``count`` bytes were put in the last :meth:`space`: they belong to the open segment."""
        if self._open is None:
            raise ValueError("no segment is open; call begin() first")
        if self._open[0] + self._open[2] + count > ADDRESS_END:
            raise InvalidRegionError("segment runs past the end of the address space", address=self._open[0])
        self._file.commit(count)
        self._open[2] += count

    def end(self) -> int:
        """Close the open segment; return how many bytes it stored (0: no PT_LOAD for it)."""
        if self._open is None:
            raise ValueError("no segment is open")
        address, offset, size = self._open
        self._open = None
        if size:
            self._spans.append((address, offset, size))
        return size

    def add(self, address: int, data: Any) -> int:
        """A whole segment at once."""
        self.begin(address)
        self.write(data)
        return self.end()

    def finish(self, notes: Sequence[Note]) -> str:
        """Write the notes and the headers, make the file durable if asked and give it its name."""
        if self._open is not None:
            self.end()
        end = self._file.offset
        notes_blob = b"".join(note.encode() for note in notes)
        phoff = end + len(notes_blob)
        phnum = 1 + len(self._spans)
        shoff = phoff + phnum * PHDR_SIZE if phnum >= PN_XNUM else 0
        self._file.write(notes_blob + program_headers(end, len(notes_blob), self._spans))
        return self._file.finish(elf_header(self._machine, phoff, phnum, shoff))

    def abort(self) -> None:
        """Give up: close and remove the temporary file (harmless when already done)."""
        self._file.abort()

    def __enter__(self) -> CoreWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.abort()  # after finish() there is nothing left to remove

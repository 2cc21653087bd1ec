"""Writing a dump file: the ELF core image of :mod:`kmemdump.formats.elf`, atomically.

Two ways in. :class:`CoreWriter` streams: segment bytes go to the file as they are copied from the
target, through a 4 MiB staging buffer written with ``O_DIRECT`` where the file system allows it,
and the headers go in last. :func:`write_core` takes segments held in memory. Either can compress
with zstd, in one frame that declares its content size and carries a checksum. Either way the image
is written to a temporary file beside the final one and renamed without replacing anything: a dump
at its final path is whole.

A *durable* :class:`CoreWriter` (the ``--durable`` option) also writes with ``O_DIRECT`` and fsyncs
the file before the rename and the directory after it, so the dump survives a crash of the host the
moment it has its name; that costs the disk's write time (about 0.2 s for 64 MiB on our development
VMs). Without it the file is written through the page cache and the kernel writes it back later,
as it does every other file (minicoredumper does the same).

A compressed stream cannot have its headers written last, so :class:`CoreWriter` with
``compress=True`` streams the plain image into a temporary file first (sparse: runs of zero bytes,
untouched memory, take no disk) and compresses that file, 8 MiB at a time, into the final one: the
collector's memory stays a few megabytes whatever the dump's size.

Temporary names carry the writing collector's ``(pid, start time)``
(:func:`temp_name`): a collector that starts removes those of collectors that are gone
(:func:`kmemdump.collector.hold.recover`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from kmemdump.errors import CollectorError
from kmemdump.errors import InvalidRegionError
from kmemdump.files import rename_noreplace
from kmemdump.files import sync_directory
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
from kmemdump.procinfo import self_start_time

__all__ = ["CoreWriter", "parse_temp_name", "temp_name", "write_core"]

TEMP_PREFIX = ".kmemdump-"

_ZSTD_CHUNK = 8 << 20
_WRITE_BATCH = 1024  # iovecs per writev
_STAGE_SIZE = 4 << 20
_DIRECT_BLOCK = 4096
_ZERO_STAGE = bytes(_STAGE_SIZE)


def temp_name(final: str) -> str:
    """The hidden name a file is written under before it gets the name ``final``:
    ``.<final>.<collector pid>-<its start time>.<12 hex digits>.tmp``."""
    return f".{final}.{os.getpid()}-{self_start_time()}.{secrets.token_hex(6)}.tmp"


def parse_temp_name(name: str) -> tuple[int, int] | None:
    """The ``(pid, start time)`` of the collector writing the temporary dump file ``name``; None for
    any other name (ASCII digits only, no sign, bounded lengths)."""
    if not (name.startswith(TEMP_PREFIX) and name.endswith(".tmp")):
        return None
    parts = name[1 : -len(".tmp")].rsplit(".", 2)
    if len(parts) != 3 or len(parts[2]) != 12 or not all(c in "0123456789abcdef" for c in parts[2]):
        return None
    first, sep, second = parts[1].partition("-")
    if not (sep and _digits(first, 10) and _digits(second, 20)):
        return None
    pid = int(first)
    return (pid, int(second)) if 0 < pid < 2**31 else None


def _digits(text: str, longest: int) -> bool:
    return 0 < len(text) <= longest and text.isascii() and text.isdigit()


def _chown(fd: int, owner: tuple[int, int] | None) -> None:
    """Give the file to ``(uid, gid)`` (a root collector: the process's user, the operator's group)."""
    if owner is None:
        return
    info = os.fstat(fd)
    if (info.st_uid, info.st_gid) != owner:
        os.fchown(fd, *owner)
        os.fchmod(fd, 0o640)  # chown clears nothing we need, but be explicit about the mode


def write_core(
    path: str | os.PathLike[str],
    segments: Sequence[Segment],
    notes: Sequence[Note],
    *,
    compress: bool = False,
    level: int = 3,
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
    machine = check_machine(machine)
    final = Path(path)
    if compress and not final.name.endswith(".zst"):
        final = final.with_name(final.name + ".zst")
    compressor = _compressor(level, final) if compress else None
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
        raise _exists(final)
    directory = final.parent
    temporary = directory / temp_name(final.name)
    fd = -1
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        os.fchmod(fd, 0o640)  # whatever the umask
        _chown(fd, owner)
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
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(err, FileExistsError) and err.filename == os.fspath(final):
            raise _exists(final) from err
        if isinstance(err, OSError):
            raise _write_error(err, final) from err
        raise
    if durable:
        _sync(directory, final)
    return final


def _exists(final: Path) -> CollectorError:
    return CollectorError(
        f"refusing to overwrite {final}: a file is already there; move it away or choose another name",
        path=str(final),
        errno=errno.EEXIST,
    )


def _write_error(err: OSError, final: Path) -> CollectorError:
    where = final.parent
    code = err.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        what = f"no space left in {where} for the dump: free space there (or lower the dump size budget)"
    elif code == errno.EFBIG:
        what = f"the dump exceeds the file size limit ('ulimit -f') in {where}: raise it or lower the budget"
    elif code == errno.EROFS:
        what = f"{where} is on a read-only file system: choose another dump directory"
    elif code in (errno.EACCES, errno.EPERM):
        what = f"permission denied writing in {where}: fix the directory's permissions or choose another one"
    elif code in (errno.ENOENT, errno.ENOTDIR):
        what = f"the dump directory {where} does not exist: create it or choose another one"
    else:
        what = f"writing the dump in {where} failed: {err.strerror or err}"
    return CollectorError(what, path=str(final), errno=code)


def _compressor(level: int, final: Path) -> Any:
    try:
        return zstd.compressor(level)
    except ImportError as err:
        raise zstd.missing("compressing a dump", path=str(final)) from err
    except ValueError as err:
        raise CollectorError(f"invalid zstd level {level}: {err}", path=str(final)) from err


def _sync(directory: Path, final: Path) -> None:
    try:
        sync_directory(directory)
    except OSError as err:
        raise CollectorError(
            f"the dump was written but syncing its directory {directory} failed: {err.strerror}; "
            "it may not survive a crash",
            path=str(final),
            errno=err.errno,
        ) from err


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

    The collector copies a region straight from the target into a small reused buffer and from
    there into the file, so a dump of gigabytes needs megabytes of memory, and how many bytes each
    region really gave is known only afterwards. So a streamed image puts the ELF header at 0, the
    segment bytes from offset 64 on, back to back, then the notes, then the program header table
    (``e_phoff`` points at it; ELF allows it anywhere). Readers (gdb, readelf, pyelftools, lldb)
    follow the offsets and see the same image :func:`write_core` makes.

    Bytes are gathered in a 4 MiB page-aligned staging buffer and written with ``O_DIRECT`` where
    the file system allows it: a dump then bypasses the page cache, so writing it neither needs
    free page-cache memory on a host short of memory nor evicts the cache of the programs still
    running. File systems without ``O_DIRECT`` (tmpfs) get ordinary writes.

        with CoreWriter(path) as out:
            out.begin(address)
            out.write(chunk)            # as many times as there are chunks
            stored = out.end()          # 0: nothing stored, no PT_LOAD for it
            final = out.finish(notes)   # atomic: temporary file, fsync, rename, fsync dir

    Leaving the ``with`` block without :meth:`finish` (an exception) removes the temporary file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        machine: int | None = None,
        direct: bool = True,
        compress: bool = False,
        level: int = 3,
        owner: tuple[int, int] | None = None,
        durable: bool = True,
    ) -> None:
        self._machine = check_machine(machine)
        self.durable = durable
        """fsync the file and its directory (and write with ``O_DIRECT``); else the page cache's pace."""
        self.final = Path(path)
        if compress and not self.final.name.endswith(".zst"):
            self.final = self.final.with_name(self.final.name + ".zst")
        if os.path.lexists(self.final):
            raise _exists(self.final)
        self._compressor = _compressor(level, self.final) if compress else None
        self._owner = owner
        self._temporary = self.final.parent / temp_name(self.final.name)
        self._packed: Path | None = None  # the compressed file being written, once finish() runs
        self._spans: list[tuple[int, int, int]] = []  # (address, file offset, size)
        self._open: list[int] | None = None  # [address, offset, size] of the segment being written
        self._stage = mmap.mmap(-1, _STAGE_SIZE)  # page-aligned, as O_DIRECT wants
        self._staged = EHDR_SIZE  # the stage holds the file from offset _flushed on; the header comes last
        self._flushed = 0
        self._fd = -1
        self._packed_fd = -1
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        self.direct = direct and durable and hasattr(os, "O_DIRECT")
        try:
            try:
                self._fd = os.open(self._temporary, flags | (os.O_DIRECT if self.direct else 0), 0o640)
            except OSError as err:
                if err.errno != errno.EINVAL or not self.direct:
                    raise
                self.direct = False  # the file system does not do O_DIRECT (tmpfs)
                self._fd = os.open(self._temporary, flags, 0o640)
            os.fchmod(self._fd, 0o640 if self._compressor is None else 0o600)
        except OSError as err:
            self._stage.close()
            raise _write_error(err, self.final) from err

    @property
    def bytes_stored(self) -> int:
        return sum(size for _, _, size in self._spans)

    @property
    def _offset(self) -> int:
        return self._flushed + self._staged

    def begin(self, address: int) -> None:
        """Start the segment for memory at ``address``."""
        if self._open is not None:
            raise ValueError("a segment is already open; call end() first")
        if not 0 <= address < ADDRESS_END:
            raise InvalidRegionError("segment address out of range", address=address)
        self._open = [address, self._offset, 0]

    def write(self, data: Any) -> None:
        """Append bytes to the open segment."""
        if self._open is None:
            raise ValueError("no segment is open; call begin() first")
        view = memoryview(data).cast("B")
        if self._open[0] + self._open[2] + view.nbytes > ADDRESS_END:
            raise InvalidRegionError("segment runs past the end of the address space", address=self._open[0])
        self._open[2] += view.nbytes
        try:
            while view.nbytes:
                room = _STAGE_SIZE - self._staged
                take = min(room, view.nbytes)
                self._stage[self._staged : self._staged + take] = view[:take]
                self._staged += take
                view = view[take:]
                if self._staged == _STAGE_SIZE:
                    self._flush_stage()
        except OSError as err:
            self.abort()
            raise _write_error(err, self.final) from err

    def space(self, wanted: int) -> memoryview:
        """Room for up to ``wanted`` bytes of the open segment, straight in the staging buffer (at
        least one byte): read into it, then :meth:`commit` how many bytes went in. Saves the copy
        :meth:`write` makes of bytes that are read from the target anyway."""
        if self._open is None:
            raise ValueError("no segment is open; call begin() first")
        if self._staged == _STAGE_SIZE:
            self._flush_or_abort()
        room = min(_STAGE_SIZE - self._staged, max(1, wanted))
        return memoryview(self._stage)[self._staged : self._staged + room]

    def commit(self, count: int) -> None:
        """``count`` bytes were put in the last :meth:`space`: they belong to the open segment."""
        if self._open is None:
            raise ValueError("no segment is open; call begin() first")
        if not 0 <= count <= _STAGE_SIZE - self._staged:
            raise ValueError(f"{count} bytes do not fit the space that was given")
        if self._open[0] + self._open[2] + count > ADDRESS_END:
            raise InvalidRegionError("segment runs past the end of the address space", address=self._open[0])
        self._open[2] += count
        self._staged += count
        if self._staged == _STAGE_SIZE:
            self._flush_or_abort()

    def _flush_or_abort(self) -> None:
        try:
            self._flush_stage()
        except OSError as err:
            self.abort()
            raise _write_error(err, self.final) from err

    def _flush_stage(self) -> None:
        """Write the full stage at its (stage-aligned) file offset (a hole instead of zeros in the
        plain image a compressed dump is made from)."""
        if self._compressor is not None and self._stage[:] == _ZERO_STAGE:
            self._flushed += _STAGE_SIZE
            self._staged = 0
            return
        try:
            written = os.pwrite(self._fd, self._stage, self._flushed)
        except OSError as err:
            if err.errno != errno.EINVAL or not self.direct:
                raise
            self._buffered()  # O_DIRECT refused after all: carry on with ordinary writes
            written = os.pwrite(self._fd, self._stage, self._flushed)
        if written != _STAGE_SIZE:
            _write_rest(self._fd, memoryview(self._stage)[written:], self._flushed + written)
        self._flushed += _STAGE_SIZE
        self._staged = 0

    def _buffered(self) -> None:
        if self.direct:
            fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) & ~os.O_DIRECT)
            self.direct = False

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

    def finish(self, notes: Sequence[Note]) -> Path:
        """Write the notes and the headers, make the file durable and give it its final name."""
        if self._open is not None:
            self.end()
        try:
            end = self._offset
            if self._staged:
                if self.direct:  # O_DIRECT writes whole blocks: pad, then cut the file back
                    padded = -(-self._staged // _DIRECT_BLOCK) * _DIRECT_BLOCK
                    self._stage[self._staged : padded] = bytes(padded - self._staged)
                    _write_rest(self._fd, memoryview(self._stage)[:padded], self._flushed)
                else:
                    _write_rest(self._fd, memoryview(self._stage)[: self._staged], self._flushed)
            self._buffered()
            os.ftruncate(self._fd, end)
            notes_blob = b"".join(note.encode() for note in notes)
            phoff = end + len(notes_blob)
            phnum = 1 + len(self._spans)
            shoff = phoff + phnum * PHDR_SIZE if phnum >= PN_XNUM else 0
            table = program_headers(end, len(notes_blob), self._spans)
            _write_rest(self._fd, memoryview(notes_blob + table), end)
            _write_rest(self._fd, memoryview(elf_header(self._machine, phoff, phnum, shoff)), 0)
            self._stage.close()
            if self._compressor is not None:
                self._pack(phoff + len(table))
            done = self._fd if self._packed_fd < 0 else self._packed_fd
            _chown(done, self._owner)
            if self.durable:
                os.fsync(done)
            rename_noreplace(self._temporary if self._packed is None else self._packed, self.final)
            self._packed = None
        except BaseException as err:
            self.abort()
            if isinstance(err, FileExistsError) and err.filename == os.fspath(self.final):
                raise _exists(self.final) from err
            if isinstance(err, OSError):
                raise _write_error(err, self.final) from err
            raise
        self.abort()  # closes the descriptors, removes the plain image of a compressed dump
        if self.durable:
            _sync(self.final.parent, self.final)
        return self.final

    def _pack(self, total: int) -> None:
        """Compress the finished plain image into a second temporary file, one chunk at a time."""
        compressor = self._compressor
        assert compressor is not None
        self._packed = self.final.parent / temp_name(self.final.name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        self._packed_fd = os.open(self._packed, flags, 0o640)
        os.fchmod(self._packed_fd, 0o640)
        compressor.set_pledged_input_size(total)
        buffer = bytearray(_ZSTD_CHUNK)
        view = memoryview(buffer)
        offset = 0
        while offset < total:
            got = os.preadv(self._fd, [view[: min(_ZSTD_CHUNK, total - offset)]], offset)
            if got <= 0:
                raise OSError(errno.EIO, "the plain image ended early")
            packed = compressor.compress(view[:got])
            if packed:
                _write_views(self._packed_fd, [memoryview(packed)])
            offset += got
        _write_views(self._packed_fd, [memoryview(compressor.flush())])

    def abort(self) -> None:
        """Give up: close and remove the temporary files (harmless when already done)."""
        if not self._stage.closed:
            # a view held by an exception's traceback keeps it exported; it is freed with that view
            with contextlib.suppress(BufferError):
                self._stage.close()
        if self._packed_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._packed_fd)
            self._packed_fd = -1
        if self._packed is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._packed)
            self._packed = None
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
            with contextlib.suppress(OSError):
                os.unlink(self._temporary)

    def __enter__(self) -> CoreWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.abort()


def _write_rest(fd: int, view: memoryview, offset: int) -> None:
    """``pwrite`` all of ``view`` at ``offset``, resuming after short writes."""
    while view.nbytes:
        written = os.pwrite(fd, view, offset)
        if written <= 0:
            raise OSError(errno.EIO, "write made no progress")
        view = view[written:]
        offset += written

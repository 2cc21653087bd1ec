"""The file a dump is written to: a hidden temporary file, filled front to back, renamed into place.

:class:`ImageFile` takes the bytes of a core image from offset 64 on, in order, through two 4 MiB
page-aligned staging buffers; its first 64 bytes (the ELF header, which says where the program
headers at the end are) come last, with :meth:`ImageFile.finish`. Two ways to the disk:

* **plain**: a full buffer is written by a background thread while the other fills, so copying a
  dump out of a process and writing it overlap (both system calls release the interpreter). With
  the durability option the buffers go with ``O_DIRECT`` (no page cache needed or evicted) and the
  file and its directory are fsynced; without it the page cache takes them.
* **compressed** (``.core.zst``): each full buffer goes through a zstd compressor working on
  :data:`kmemdump.formats.zstd.WORKERS` threads of its own, at the fast level
  :data:`kmemdump.formats.zstd.LEVEL`. The image must start with its ELF header once decompressed,
  and that header is known last; so the file starts with :data:`HEAD_ROOM` bytes set aside, the
  compressed image from offset 64 follows as one zstd frame, and at the end the header is
  compressed as a frame of its own into the room, the rest of which becomes a zstd *skippable*
  frame. Any zstd reader (``zstd -d``, the ``zstd`` module) decompresses the frames in order into
  the image; each carries its checksum.

Temporary names carry the writing collector's ``(pid, start time)`` (:func:`temp_name`): a
collector that starts removes those of collectors that are gone
(:func:`kmemdump.collector.hold.recover`). Any failure removes the temporary file and raises
:class:`CollectorError` saying what to do.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import struct
import threading

try:  # queue.SimpleQueue is this one; the queue module adds classes (and heapq) the writer does not use
    from _queue import SimpleQueue
except ImportError:  # pragma: no cover - not CPython
    from queue import SimpleQueue

from kmemdump.errors import CollectorError
from kmemdump.files import rename_noreplace
from kmemdump.files import sync_directory
from kmemdump.formats import zstd
from kmemdump.formats.elf import EHDR_SIZE
from kmemdump.paths import path_parent
from kmemdump.procinfo import self_start_time

TYPE_CHECKING = False  # typing for mypy only (the command line starts faster without it)
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "HEAD_ROOM",
    "STAGE_SIZE",
    "TEMP_PREFIX",
    "ImageFile",
    "chown_dump",
    "exists_error",
    "make_compressor",
    "parse_temp_name",
    "sync_dump_directory",
    "temp_name",
    "write_error",
    "write_rest",
]

TEMP_PREFIX = ".kmemdump-"
STAGE_SIZE = 4 << 20
"""Each staging buffer; a full one is written (or compressed) at once."""
HEAD_ROOM = 512
"""Bytes at the start of a compressed dump for the header's frame and a skippable frame."""
_DIRECT_BLOCK = 4096
_SKIPPABLE = 0x184D2A50  # the first of the zstd skippable-frame magic numbers


def temp_name(final: str) -> str:
    """The hidden name a file is written under before it gets the name ``final``:
    ``.<final>.<collector pid>-<its start time>.<12 hex digits>.tmp``."""
    return f".{final}.{os.getpid()}-{self_start_time()}.{os.urandom(6).hex()}.tmp"


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


def chown_dump(fd: int, owner: tuple[int, int] | None) -> None:
    """Give the file to ``(uid, gid)`` (a root collector: the process's user, the operator's group)."""
    if owner is None:
        return
    info = os.fstat(fd)
    if (info.st_uid, info.st_gid) != owner:
        os.fchown(fd, *owner)
        os.fchmod(fd, 0o640)  # chown clears nothing we need, but be explicit about the mode


def exists_error(final: str | os.PathLike[str]) -> CollectorError:
    return CollectorError(
        f"refusing to overwrite {final}: a file is already there; move it away or choose another name",
        path=str(final),
        errno=errno.EEXIST,
    )


def write_error(err: OSError, final: str | os.PathLike[str]) -> CollectorError:
    """What a failed write means for the user, and what to do."""
    where = path_parent(os.fspath(final))
    code = err.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        what = f"no space left in {where} for the dump: free space there (or lower the dump size budget)"
    elif code == errno.EFBIG:
        what = f"the dump exceeds the file size limit ('ulimit -f') in {where}: raise it or lower the budget"
    elif code == errno.EROFS:
        what = f"{where} is on a read-only file system: choose another dump directory"
    elif code in (errno.EACCES, errno.EPERM):
        what = f"permission denied writing in {where}: fix the directory's permissions or choose another one"
    elif code in (errno.ENOENT, errno.ENOTDIR) and not os.path.lexists(where):
        what = f"the dump directory {where} does not exist: create it or choose another one"
    elif code in (errno.ENOENT, errno.ENOTDIR) and not os.path.isdir(where):
        what = f"{where} is not a directory: choose a directory for the dumps"
    elif code in (errno.ENOENT, errno.ENOTDIR):  # a directory that takes no new files (/proc/PID)
        what = f"no file can be created in {where} ({err.strerror or err}): choose another dump directory"
    else:
        what = f"writing the dump in {where} failed: {err.strerror or err}"
    return CollectorError(what, path=str(final), errno=code)


def make_compressor(
    final: str | os.PathLike[str], level: int, *, workers: int = 0, content_size: bool = True
) -> Any:
    try:
        return zstd.compressor(level, workers=workers, content_size=content_size)
    except ImportError as err:
        raise zstd.missing("compressing a dump", path=str(final)) from err
    except ValueError as err:
        raise CollectorError(f"invalid zstd level {level}: {err}", path=str(final)) from err


def sync_dump_directory(directory: str | os.PathLike[str], final: str | os.PathLike[str]) -> None:
    try:
        sync_directory(directory)
    except OSError as err:
        raise CollectorError(
            f"the dump was written but syncing its directory {directory} failed: {err.strerror}; "
            "it may not survive a crash",
            path=str(final),
            errno=err.errno,
        ) from err


PIECE = 1 << 20
"""The most one ``pwrite`` through the page cache hands the kernel. On our development VMs (ext4,
Linux 6.18) 64 MiB written 4 MiB a call took 15 ms or, as often as not after memory was freed and
handed back to the host, 110-170 ms (the largest page-cache folios, most likely); 1 MiB a call,
15-22 ms every time."""


def write_rest(fd: int, view: memoryview, offset: int) -> None:
    """``pwrite`` all of ``view`` at ``offset``, at most :data:`PIECE` bytes a call, resuming after
    short writes."""
    while view.nbytes:
        written = os.pwrite(fd, view[:PIECE], offset)
        if written <= 0:
            raise OSError(errno.EIO, "write made no progress")
        view = view[written:]
        offset += written


class ImageFile:
    """One dump file being written (see the module's docstring). ``offset`` is the image's size so
    far, the 64 bytes of its header included."""

    def __init__(
        self,
        final: str,
        *,
        direct: bool,
        compress: bool,
        level: int,
        owner: tuple[int, int] | None,
        durable: bool,
    ) -> None:
        self.final = final
        self.durable = durable
        self._owner = owner
        self._level = level
        self._compressor = (
            make_compressor(final, level, workers=zstd.WORKERS, content_size=False) if compress else None
        )
        head, sep, name = final.rpartition("/")
        self._temporary = head + sep + temp_name(name)
        self._stages = [mmap.mmap(-1, STAGE_SIZE), mmap.mmap(-1, STAGE_SIZE)]  # page-aligned
        self._current = 0
        self._staged = EHDR_SIZE  # the header's place, filled last
        self._flushed = 0  # image bytes before the current stage
        self._written = HEAD_ROOM  # compressed: where the next compressed bytes go in the file
        self._free = [threading.Event(), threading.Event()]
        for event in self._free:
            event.set()
        self._jobs: SimpleQueue[tuple[int, int, int] | None] = SimpleQueue()
        self._writer: threading.Thread | None = None
        self._error: BaseException | None = None
        self._fd = -1
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        self.direct = direct and compress is False and hasattr(os, "O_DIRECT")
        try:
            try:
                self._fd = os.open(self._temporary, flags | (os.O_DIRECT if self.direct else 0), 0o640)
            except OSError as err:
                if err.errno != errno.EINVAL or not self.direct:
                    raise
                self.direct = False  # the file system does not do O_DIRECT (tmpfs)
                self._fd = os.open(self._temporary, flags, 0o640)
            os.fchmod(self._fd, 0o640)
        except OSError as err:
            for stage in self._stages:
                stage.close()
            raise write_error(err, final) from err

    @property
    def offset(self) -> int:
        return self._flushed + self._staged

    def space(self, wanted: int) -> memoryview:
        """Room for up to ``wanted`` more bytes (at least one), in the current staging buffer."""
        if self._staged == STAGE_SIZE:
            self._flush()
        room = min(STAGE_SIZE - self._staged, max(1, wanted))
        return memoryview(self._stages[self._current])[self._staged : self._staged + room]

    def commit(self, count: int) -> None:
        """``count`` bytes were put in the last :meth:`space`."""
        if not 0 <= count <= STAGE_SIZE - self._staged:
            raise ValueError(f"{count} bytes do not fit the space that was given")
        self._staged += count
        if self._staged == STAGE_SIZE:
            self._flush()

    def write(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        while view.nbytes:
            room = self.space(view.nbytes)
            take = room.nbytes
            room[:] = view[:take]
            room.release()
            self.commit(take)
            view = view[take:]

    # --- to the disk -------------------------------------------------------------------------

    def _flush(self) -> None:
        """Send the full current buffer on its way and switch to the other one."""
        try:
            if self._compressor is not None:
                skip = EHDR_SIZE if self._flushed == 0 else 0  # the header has its own frame
                self._emit(
                    self._compressor.compress(memoryview(self._stages[self._current])[skip:STAGE_SIZE])
                )
            else:
                self._submit(self._current, STAGE_SIZE, self._flushed)
                self._current ^= 1
                self._free[self._current].wait()  # its previous write is over before it is refilled
                self._raise_pending()
        except OSError as err:
            self.abort()
            raise write_error(err, self.final) from err
        self._flushed += STAGE_SIZE
        self._staged = 0

    def _submit(self, index: int, length: int, offset: int) -> None:
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, name="kmemdump-writer", daemon=True)
            self._writer.start()
        self._free[index].clear()
        self._jobs.put((index, length, offset))

    def _write_loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            index, length, offset = job
            try:
                if self._error is None:
                    self._pwrite(memoryview(self._stages[index])[:length], offset)
            except BaseException as err:
                self._error = err
            finally:
                self._free[index].set()

    def _pwrite(self, view: memoryview, offset: int) -> None:
        if not self.direct:
            write_rest(self._fd, view, offset)
            return
        try:
            written = os.pwrite(self._fd, view, offset)
        except OSError as err:
            if err.errno != errno.EINVAL:
                raise
            self._buffered()  # O_DIRECT refused after all: carry on with ordinary writes
            write_rest(self._fd, view, offset)
            return
        if written != view.nbytes:
            write_rest(self._fd, view[written:], offset + written)

    def _raise_pending(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _drain(self) -> None:
        """Wait for the background writes; raise the first that failed."""
        for event in self._free:
            event.wait()
        self._raise_pending()

    def _buffered(self) -> None:
        if self.direct:
            fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) & ~os.O_DIRECT)
            self.direct = False

    def _emit(self, packed: bytes) -> None:
        if packed:
            write_rest(self._fd, memoryview(packed), self._written)
            self._written += len(packed)

    def finish(self, head: bytes) -> str:
        """Write the last bytes and ``head`` (the image's first 64 bytes), make the file durable if
        asked, and give it its final name; returns that name."""
        if len(head) != EHDR_SIZE:
            raise ValueError("the head is the 64-byte ELF header")
        try:
            end = self.offset
            stage = self._stages[self._current]
            if self._compressor is not None:
                skip = EHDR_SIZE if self._flushed == 0 else 0
                self._emit(self._compressor.compress(memoryview(stage)[skip : self._staged]))
                self._emit(self._compressor.flush())
                self._write_head_frame(head)
            else:
                self._drain()
                if self.direct:  # O_DIRECT writes whole blocks: pad, then cut the file back
                    padded = -(-self._staged // _DIRECT_BLOCK) * _DIRECT_BLOCK
                    stage[self._staged : padded] = bytes(padded - self._staged)
                    self._pwrite(memoryview(stage)[:padded], self._flushed)
                else:
                    write_rest(self._fd, memoryview(stage)[: self._staged], self._flushed)
                self._buffered()
                os.ftruncate(self._fd, end)
                write_rest(self._fd, memoryview(head), 0)
            chown_dump(self._fd, self._owner)
            if self.durable:
                os.fsync(self._fd)
            rename_noreplace(self._temporary, self.final)
        except BaseException as err:
            self.abort()
            if isinstance(err, FileExistsError) and err.filename == os.fspath(self.final):
                raise exists_error(self.final) from err
            if isinstance(err, OSError):
                raise write_error(err, self.final) from err
            raise
        self.close()
        if self.durable:
            sync_dump_directory(path_parent(self.final), self.final)
        return self.final

    def _write_head_frame(self, head: bytes) -> None:
        """The header as a frame of its own at offset 0, then a skippable frame up to the image."""
        compressor = make_compressor(self.final, self._level, content_size=False)
        frame = compressor.compress(head, compressor.FLUSH_FRAME)
        pad = HEAD_ROOM - len(frame) - 8
        if pad < 0:
            raise CollectorError("the compressed header does not fit its room", path=str(self.final))
        skippable = struct.pack("<II", _SKIPPABLE, pad) + bytes(pad)
        write_rest(self._fd, memoryview(frame + skippable), 0)

    def close(self) -> None:
        """Stop the writer thread and close the descriptor (the file stays)."""
        if self._writer is not None:
            self._jobs.put(None)
            self._writer.join()
            self._writer = None
        for stage in self._stages:
            if not stage.closed:
                try:  # a view still held elsewhere frees it later
                    stage.close()
                except BufferError:
                    pass
        if self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = -1

    def abort(self) -> None:
        """Give up: close and remove the temporary file (harmless when already done)."""
        had = self._fd >= 0
        self.close()
        if had:
            try:
                os.unlink(self._temporary)
            except OSError:
                pass

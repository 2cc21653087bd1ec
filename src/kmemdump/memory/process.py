"""Reading a live process's memory: ``process_vm_readv`` first, ``/proc/PID/mem`` when refused.

:class:`ProcessMemory` is the :class:`kmemdump.memory.MemorySource` of a running process. Every
read reports the *readable prefix* of each range: the kernel stops a transfer at the first page it
cannot read, and reads no later ranges of the same call, so the reader finds where a call stopped
and carries on with the next range in a new call (never more than ``IOV_MAX`` ranges a call).

Results are built in place: each range gets a fresh ``bytes`` object of its full size (allocated
without initialising it, as C code does with ``PyBytes_FromStringAndSize(NULL, n)``) and the kernel
copies straight into it. When that layout check fails (another Python implementation), a
``bytearray`` per range is used and copied once into ``bytes``.
"""

from __future__ import annotations

import ctypes
import errno
import operator
import os
import threading
from array import array
from collections.abc import Callable
from collections.abc import Sequence
from types import TracebackType

from kmemdump.errors import AccessDeniedError
from kmemdump.errors import CollectorError
from kmemdump.errors import ProcessGoneError
from kmemdump.errors import UnreadableMemoryError

TYPE_CHECKING = False  # typing for mypy only (the command line starts faster without it)
if TYPE_CHECKING:
    from typing import Any

__all__ = ["IOV_MAX", "ProcessMemory"]

#: Most iovecs one ``process_vm_readv`` call takes (``sysconf(_SC_IOV_MAX)``; 1024 on Linux).
IOV_MAX = 1024

_ADDRESS_END = 1 << 64
# /proc/PID/mem offsets are a signed off_t; nothing user-space lives above this.
_OFF_T_END = 1 << 63
# Ranges bigger than this are read piece by piece when one allocation of their full size fails
# (a garbage length from a decoder must not end in MemoryError).
_CHUNK = 64 << 20


def _sysconf_iov_max() -> int:
    try:
        value = os.sysconf("SC_IOV_MAX")
    except (ValueError, OSError):
        return IOV_MAX
    return max(1, min(IOV_MAX, value)) if value > 0 else IOV_MAX


_BATCH = _sysconf_iov_max()


# --- the system call -------------------------------------------------------------------------------

_Readv = Callable[[int, int, int, int, int, int], int]


def _load_process_vm_readv() -> _Readv | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        func = libc.process_vm_readv
    except (OSError, AttributeError):
        return None
    # pid, local iovecs, count, remote iovecs, count, flags
    func.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_ulong,
        ctypes.c_void_p,
        ctypes.c_ulong,
        ctypes.c_ulong,
    ]
    func.restype = ctypes.c_ssize_t
    readv: _Readv = func
    return readv


_process_vm_readv = _load_process_vm_readv()


# --- result buffers ---------------------------------------------------------------------------------


class _BytesBuffers:
    """Uninitialised ``bytes`` objects filled in place (CPython only, checked at import)."""

    def __init__(self) -> None:
        new = ctypes.pythonapi.PyBytes_FromStringAndSize
        new.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]
        new.restype = ctypes.py_object
        self._new: Callable[[int | None, int], bytes] = new
        self._offset = bytes.__basicsize__ - 1  # ob_sval; the 1 is its terminating NUL
        probe = self._new(None, 16)
        ctypes.memmove(id(probe) + self._offset, b"kmemdump-probe!!", 16)
        if probe != b"kmemdump-probe!!":
            raise RuntimeError("bytes layout check failed")

    def new(self, size: int) -> tuple[Any, int]:
        buf = self._new(None, size)
        return buf, id(buf) + self._offset

    @staticmethod
    def finish(buf: Any, size: int, got: int) -> bytes:
        result: bytes = buf if got == size else buf[:got]
        return result


class _BytearrayBuffers:
    """Portable fallback: one zeroed ``bytearray`` per range, copied into ``bytes`` at the end."""

    @staticmethod
    def new(size: int) -> tuple[Any, int]:
        if size > _CHUNK:  # bytearray() zero-fills: never for a length that may be garbage
            raise MemoryError
        buf = bytearray(size)
        address = ctypes.addressof(ctypes.c_char.from_buffer(buf))  # export released right away
        return buf, address

    @staticmethod
    def finish(buf: Any, size: int, got: int) -> bytes:
        return bytes(memoryview(buf)[:got])


def _pick_buffers() -> _BytesBuffers | _BytearrayBuffers:
    try:
        return _BytesBuffers()
    except (AttributeError, OSError, RuntimeError, ValueError):
        return _BytearrayBuffers()


_buffers = _pick_buffers()


# --- the reader --------------------------------------------------------------------------------------


class ProcessMemory:
    """The memory of the live process ``pid``.

    ``force_proc_mem=True`` skips ``process_vm_readv`` and reads ``/proc/PID/mem`` only (the path
    also taken when the system call is missing, blocked by seccomp or refused with ``EPERM``). Note
    that ``/proc/PID/mem`` also reads pages the target protected with ``PROT_NONE``.
    """

    __slots__ = ("_lock", "_mem_fd", "_use_readv", "pid")

    def __init__(self, pid: int, *, force_proc_mem: bool = False) -> None:
        if pid <= 0:
            raise ProcessGoneError(f"no process has pid {pid}", pid=pid)
        self.pid = pid
        self._use_readv = _process_vm_readv is not None and not force_proc_mem
        self._mem_fd = -1
        self._lock = threading.Lock()

    # -- public reads --

    def read(self, address: int, size: int) -> bytes:
        """Exactly ``size`` bytes at ``address``, or :class:`UnreadableMemoryError`."""
        data = self.read_upto(address, size)
        if len(data) != size:
            raise UnreadableMemoryError(
                f"cannot read {size} bytes at {address:#x} in process {self.pid}: "
                f"only the first {len(data)} are readable",
                address=address,
                size=size,
                readable=len(data),
                pid=self.pid,
            )
        return data

    def read_upto(self, address: int, size: int) -> bytes:
        """The readable prefix of ``size`` bytes at ``address`` (possibly ``b""``)."""
        readv = _process_vm_readv
        if (
            self._use_readv
            and readv is not None
            and 0 < size <= _CHUNK
            and 0 <= address <= _ADDRESS_END - size
        ):
            # the common case in one call; anything else (a fault, an error) takes the long way
            buf, local = _buffers.new(size)
            vectors = array("Q", (local, size, address, size))
            base = vectors.buffer_info()[0]
            if readv(self.pid, base, 1, base + 16, 1, 0) == size:
                return _buffers.finish(buf, size, size)
        return self.read_many(((address, size),))[0]

    def read_many(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """The readable prefix of each ``(address, size)`` range, in order.

        One unreadable range never stops the others. Raises :class:`ProcessGoneError` when the
        process is gone and :class:`AccessDeniedError` when the kernel refuses access.
        """
        count = len(ranges)
        results: list[bytes] = [b""] * count
        buffers: list[Any] = [None] * count
        remote: list[int] = [0] * count
        local: list[int] = [0] * count
        sizes: list[int] = [0] * count
        big: list[int] = []
        for index, (address, wanted) in enumerate(ranges):
            size = _clamp(address, wanted)
            if size <= 0:
                continue
            try:
                buf, buf_address = _buffers.new(size)
            except MemoryError:
                big.append(index)  # read piece by piece below
                continue
            buffers[index] = buf
            remote[index] = address
            local[index] = buf_address
            sizes[index] = size
        done = self._transfer(remote, local, sizes)
        for index, buf in enumerate(buffers):
            if buf is not None:
                results[index] = _buffers.finish(buf, sizes[index], done[index])
        buffers.clear()
        for index in big:
            address, size = ranges[index]
            results[index] = self._read_in_chunks(address, _clamp(address, size))
        return results

    def read_into(self, address: int, buffer: Any) -> int:
        """Copy the readable prefix of ``len(buffer)`` bytes at ``address`` into the writable
        ``buffer`` (bytearray, mmap, ctypes array …); return how many bytes were copied."""
        view = memoryview(buffer).cast("B")
        try:
            size = _clamp(address, view.nbytes)
            if size <= 0:
                return 0
            if view.readonly:
                raise TypeError("read_into needs a writable buffer")
            anchor = ctypes.c_char.from_buffer(view)
            try:
                return self._transfer([address], [ctypes.addressof(anchor)], [size])[0]
            finally:
                del anchor
        finally:
            view.release()

    def read_scattered(self, ranges: Sequence[tuple[int, int, int]], buffer: Any) -> list[int]:
        """Copy each ``(address, size, offset)`` range to ``offset`` in the writable ``buffer``;
        return how many leading bytes of each were copied (its readable prefix).

        ``IOV_MAX`` ranges per system call; ranges may share or overlap their destinations. Bytes of
        ``buffer`` no range covers are left as they are. Raises :class:`ValueError` for a range
        that does not fit in ``buffer``, and as :meth:`read_many` does otherwise.
        """
        view = memoryview(buffer).cast("B")
        try:
            if view.readonly:
                raise TypeError("read_scattered needs a writable buffer")
            if not ranges:
                return []
            remote = [r[0] for r in ranges]
            sizes = [r[1] for r in ranges]
            offsets = [r[2] for r in ranges]
            return self._scattered(view, remote, sizes, offsets)
        finally:
            view.release()

    def read_columns(self, remote: list[int], sizes: list[int], offsets: list[int], buffer: Any) -> list[int]:
        """:meth:`read_scattered` of the ranges ``(remote[i], sizes[i], offsets[i])``, given as
        columns (no tuple a range: what a dump of many regions builds at least cost)."""
        if not len(remote) == len(sizes) == len(offsets):
            raise ValueError("the columns of ranges differ in length")
        view = memoryview(buffer).cast("B")
        try:
            if view.readonly:
                raise TypeError("read_columns needs a writable buffer")
            if not remote:
                return []
            return self._scattered(view, remote, sizes, offsets)
        finally:
            view.release()

    def _scattered(
        self, view: memoryview, remote: list[int], sizes: list[int], offsets: list[int]
    ) -> list[int]:
        """The reads of :meth:`read_scattered` into ``view`` (writable, not empty ranges)."""
        length = view.nbytes
        if min(offsets) < 0 or min(sizes) < 0 or max(map(operator.add, offsets, sizes)) > length:
            raise ValueError(f"a range does not fit in the {length}-byte buffer")
        if min(remote) < 0 or max(map(operator.add, remote, sizes)) > _ADDRESS_END:
            sizes = [_clamp(address, size) for address, size in zip(remote, sizes, strict=True)]
        anchor = ctypes.c_char.from_buffer(view)
        try:
            base = ctypes.addressof(anchor)
            done = self._scatter_fast(remote, sizes, offsets, base)
            if done is None:
                done = self._transfer(remote, [base + offset for offset in offsets], sizes)
            return done
        finally:
            del anchor

    def _scatter_fast(
        self, remote: list[int], sizes: list[int], offsets: list[int], base: int
    ) -> list[int] | None:
        """The common case, every range whole: one call per ``IOV_MAX`` ranges, no bookkeeping per
        range. None (nothing assumed) as soon as a call comes up short or fails."""
        readv = _process_vm_readv
        if not self._use_readv or readv is None:
            return None
        count = len(sizes)
        for start in range(0, count, _BATCH):
            stop = min(count, start + _BATCH)
            n = stop - start
            iov = array("Q", bytes(32 * n))
            iov[0 : 2 * n : 2] = array("Q", [base + offset for offset in offsets[start:stop]])
            iov[1 : 2 * n : 2] = array("Q", sizes[start:stop])
            iov[2 * n :: 2] = array("Q", remote[start:stop])
            iov[2 * n + 1 :: 2] = array("Q", sizes[start:stop])
            address = iov.buffer_info()[0]
            if readv(self.pid, address, n, address + 16 * n, n, 0) != sum(sizes[start:stop]):
                return None  # a fault or an error: the careful path finds which range and why
        return list(sizes)

    # -- lifetime --

    def close(self) -> None:
        """Close the ``/proc/PID/mem`` descriptor, if the fallback opened one."""
        with self._lock:
            if self._mem_fd >= 0:
                os.close(self._mem_fd)
                self._mem_fd = -1

    def __enter__(self) -> ProcessMemory:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        via = "process_vm_readv" if self._use_readv else "/proc/PID/mem"
        return f"ProcessMemory(pid={self.pid}, via={via})"

    # -- the engine --

    def _transfer(self, remote: list[int], local: list[int], sizes: list[int]) -> list[int]:
        """Copy ``sizes[i]`` bytes from ``remote[i]`` (target) to ``local[i]`` (ours), for each i;
        return how many leading bytes of each were copied."""
        count = len(sizes)
        done = [0] * count
        start = 0
        while start < count:
            if not self._use_readv:
                self._transfer_proc_mem(remote, local, sizes, done, start)
                return done
            start = self._readv_batch(remote, local, sizes, done, start)
        return done

    def _readv_batch(
        self, remote: list[int], local: list[int], sizes: list[int], done: list[int], start: int
    ) -> int:
        """One ``process_vm_readv`` call from range ``start`` on; return where to continue."""
        count = len(sizes)
        picked: list[int] = []
        local_vec: list[int] = []
        remote_vec: list[int] = []
        index = start
        while index < count and len(picked) < _BATCH:
            left = sizes[index] - done[index]
            if left > 0:
                picked.append(index)
                local_vec += (local[index] + done[index], left)
                remote_vec += (remote[index] + done[index], left)
            index += 1
        if not picked:
            return count
        n = len(picked)
        # struct iovec {void *base; size_t len;}: the local array, then the remote one
        iov = array("Q", local_vec)
        iov.extend(remote_vec)
        base = iov.buffer_info()[0]
        readv = _process_vm_readv
        assert readv is not None
        while True:
            got = readv(self.pid, base, n, base + 16 * n, n, 0)
            if got >= 0:
                break
            err = ctypes.get_errno()
            if err != errno.EINTR:
                return self._readv_failed(err, picked[0], remote, done)
        # Hand the count out in order. The first range that did not get all it asked for is where
        # the kernel stopped: the next call starts with it (and fails with EFAULT if it really is
        # unreadable there). Later ranges were not attempted at all.
        for position, picked_index in enumerate(picked):
            left = sizes[picked_index] - done[picked_index]
            if got >= left:
                done[picked_index] += left
                got -= left
                continue
            done[picked_index] += got
            if got == 0 and position == 0:
                return picked_index + 1  # no progress at all: never loop on it
            return picked_index
        return index

    def _readv_failed(self, err: int, first: int, remote: list[int], done: list[int]) -> int:
        if err == errno.EFAULT:
            return first + 1  # the first range is unreadable from where it stands
        if err == errno.ESRCH:
            raise ProcessGoneError(f"process {self.pid} is gone", pid=self.pid)
        if err in (errno.EPERM, errno.ENOSYS):
            # EPERM: ptrace rules said no to the system call; /proc/PID/mem may still be allowed
            # (and says EACCES when not). ENOSYS: a seccomp filter or an old kernel.
            self._use_readv = False
            return first
        if err == errno.ENOMEM:
            raise CollectorError(
                f"process_vm_readv ran out of kernel memory reading process {self.pid}",
                pid=self.pid,
                errno=err,
            )
        raise CollectorError(
            f"process_vm_readv failed on process {self.pid} at {remote[first] + done[first]:#x}: "
            f"{os.strerror(err)}",
            pid=self.pid,
            errno=err,
        )

    def _transfer_proc_mem(
        self, remote: list[int], local: list[int], sizes: list[int], done: list[int], start: int
    ) -> None:
        fd = self._open_mem()
        for index in range(start, len(sizes)):
            while done[index] < sizes[index]:
                position = remote[index] + done[index]
                want = min(sizes[index] - done[index], _CHUNK, _OFF_T_END - position)
                if want <= 0:
                    break
                data = self._pread(fd, want, position)
                if data is None:
                    break
                ctypes.memmove(local[index] + done[index], data, len(data))
                done[index] += len(data)

    def _pread(self, fd: int, size: int, position: int) -> bytes | None:
        """Bytes at ``position`` from /proc/PID/mem; ``None`` where memory is unmapped."""
        while True:
            try:
                data = os.pread(fd, size, position)
            except InterruptedError:
                continue
            except OSError as err:
                if err.errno == errno.EIO:
                    return None  # not mapped
                if err.errno == errno.ESRCH:
                    raise ProcessGoneError(f"process {self.pid} is gone", pid=self.pid) from err
                if err.errno in (errno.EACCES, errno.EPERM):
                    raise AccessDeniedError(
                        f"reading the memory of process {self.pid} was refused", pid=self.pid
                    ) from err
                raise CollectorError(
                    f"reading /proc/{self.pid}/mem at {position:#x} failed: {err.strerror}",
                    pid=self.pid,
                    errno=err.errno,
                ) from err
            if not data:  # the address space is gone: the process exited
                raise ProcessGoneError(f"process {self.pid} is gone (its memory was released)", pid=self.pid)
            return data

    def _open_mem(self) -> int:
        with self._lock:
            if self._mem_fd < 0:
                path = f"/proc/{self.pid}/mem"
                try:
                    self._mem_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except (FileNotFoundError, ProcessLookupError) as err:
                    raise ProcessGoneError(f"process {self.pid} is gone", pid=self.pid) from err
                except PermissionError as err:
                    raise AccessDeniedError(
                        f"the kernel refused access to the memory of process {self.pid} "
                        "(process_vm_readv and /proc/PID/mem)",
                        pid=self.pid,
                    ) from err
                except OSError as err:
                    raise CollectorError(
                        f"cannot open {path}: {err.strerror}", pid=self.pid, errno=err.errno
                    ) from err
            return self._mem_fd

    def _read_in_chunks(self, address: int, size: int) -> bytes:
        parts: list[bytes] = []
        while size > 0:
            part = self.read_many(((address, min(size, _CHUNK)),))[0]
            parts.append(part)
            if len(part) < min(size, _CHUNK):
                break
            address += len(part)
            size -= len(part)
        return b"".join(parts)


def _clamp(address: int, size: int) -> int:
    """``size`` cut to the 64-bit address space; 0 for a negative or out-of-range request."""
    if address < 0 or size <= 0 or address >= _ADDRESS_END:
        return 0
    return min(size, _ADDRESS_END - address)

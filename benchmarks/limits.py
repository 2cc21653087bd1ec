"""The physical limits a dump is compared with: the system calls alone, with nothing around them.

A dump cannot be faster than copying the bytes out of the process (``process_vm_readv`` into memory
already touched) and writing them to a new file (and, to be durable, ``fsync``).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import time
from array import array
from collections.abc import Sequence
from pathlib import Path

__all__ = ["Staging", "write_file"]

_libc = ctypes.CDLL(None, use_errno=True)
_readv = _libc.process_vm_readv
_readv.argtypes = [
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_ulong,
    ctypes.c_void_p,
    ctypes.c_ulong,
    ctypes.c_ulong,
]
_readv.restype = ctypes.c_ssize_t
_IOV_MAX = 1024
_BLOCK = 4096


class Staging:
    """A page-aligned buffer of ``size`` bytes, touched once so that no copy pays for a first touch."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.buffer = mmap.mmap(-1, max(size, 1))
        self.buffer.write(bytes(size))  # first touch, outside any timing
        self.address = ctypes.addressof(ctypes.c_char.from_buffer(self.buffer))

    def read(self, pid: int, ranges: Sequence[tuple[int, int]]) -> int:
        """Copy ``(address, size)`` ranges back to back into the buffer, ``IOV_MAX`` a call; ns taken."""
        t0 = time.perf_counter_ns()
        offset = 0
        for start in range(0, len(ranges), _IOV_MAX):
            batch = ranges[start : start + _IOV_MAX]
            local, remote = array("Q"), array("Q")
            wanted = 0
            for address, size in batch:
                local.extend((self.address + offset + wanted, size))
                remote.extend((address, size))
                wanted += size
            got = _readv(pid, local.buffer_info()[0], len(batch), remote.buffer_info()[0], len(batch), 0)
            if got != wanted:
                raise OSError(ctypes.get_errno(), f"process_vm_readv copied {got} of {wanted} bytes")
            offset += wanted
        return time.perf_counter_ns() - t0

    def view(self, size: int) -> memoryview:
        return memoryview(self.buffer)[:size]


_PIECE = 1 << 20
"""Buffered writes go 1 MiB a call, the fastest way into the page cache here: one write of 64 MiB
(ext4, Linux 6.18: its largest page-cache folios, most likely) took 110-190 ms instead of about 15 as
often as not once freed memory had gone back to the host (the dumps write 1 MiB a call too)."""


def write_file(directory: Path, data: memoryview, *, fsync: bool, direct: bool = False) -> tuple[int, Path]:
    """Write ``data`` to a new file in ``directory`` (buffered, or with ``O_DIRECT`` in whole blocks),
    fsync it if asked; the ns taken and the file (kept: the caller removes it)."""
    path = directory / f"limit-{time.monotonic_ns()}.bin"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | (os.O_DIRECT if direct else 0)
    t0 = time.perf_counter_ns()
    fd = os.open(path, flags, 0o600)
    try:
        view = data
        if direct and view.nbytes % _BLOCK:
            view = view[: view.nbytes - view.nbytes % _BLOCK]  # the tail goes through the page cache
        piece = view.nbytes if direct else _PIECE
        while view.nbytes:
            view = view[os.write(fd, view[:piece]) :]
        if direct and data.nbytes % _BLOCK:
            os.close(fd)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            os.write(fd, data[data.nbytes - data.nbytes % _BLOCK :])
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter_ns() - t0, path

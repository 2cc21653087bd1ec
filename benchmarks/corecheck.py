"""Checking a death dump against the workload: A and B byte for byte at their addresses, no trace of C.

Reads the ELF program headers itself (any ELF core: kmemdump's, minicoredumper's sparse one), so
that the check does not depend on the reader under test. A ``.zst`` dump is decompressed with the
zstd module, a ``.tar.gz`` unpacked with GNU tar (``-S`` keeps its holes as holes).
"""

from __future__ import annotations

import errno
import os
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Ready", "check_dump"]

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_PT_LOAD = 1
_SCAN = 8 << 20


@dataclass(frozen=True, slots=True)
class Ready:
    """The workload's ``ready`` line: its pid, where A, B and C are, and C's tag."""

    pid: int
    a: int
    b: int
    c: int
    size_a: int
    size_b: int
    size_c: int
    tag: bytes

    @classmethod
    def parse(cls, line: str) -> Ready:
        w = line.split()
        return cls(
            int(w[1]),
            int(w[2], 16),
            int(w[3], 16),
            int(w[4], 16),
            int(w[5]),
            int(w[6]),
            int(w[7]),
            bytes.fromhex(w[8]),
        )


def check_dump(path: Path, ready: Ready, reference: bytes) -> dict[str, object]:
    """``a_exact``, ``b_exact``, ``c_absent`` and the file's ``apparent`` and ``on_disk`` sizes."""
    info = path.stat()
    sizes: dict[str, object] = {"apparent": info.st_size, "on_disk": info.st_blocks * 512}
    with tempfile.TemporaryDirectory(dir=path.parent.parent) as scratch:
        if path.name.endswith(".zst"):
            from kmemdump.formats import zstd

            plain = Path(scratch) / "core"
            zstd.decompress_to(path, plain)
        elif path.name.endswith(".tar.gz"):
            subprocess.run(["tar", "-xSzf", str(path), "-C", scratch], check=True)
            plain = next(Path(scratch).iterdir())
        else:
            plain = path
        return _check_core(plain, ready, reference) | sizes


def _check_core(path: Path, ready: Ready, reference: bytes) -> dict[str, object]:
    fd = os.open(path, os.O_RDONLY)
    try:
        loads = _loads(fd)
        a = _read(fd, loads, ready.a, ready.size_a)
        b = _read(fd, loads, ready.b, ready.size_b)
        hits = _count(fd, os.fstat(fd).st_size, ready.tag)
    finally:
        os.close(fd)
    return {
        "a_exact": a == reference[: ready.size_a],
        "b_exact": b == reference[ready.size_a : ready.size_a + ready.size_b],
        "c_absent": hits == 0,
    }


def _loads(fd: int) -> list[tuple[int, int, int]]:
    head = os.pread(fd, _EHDR.size, 0)
    if head[:4] != b"\x7fELF" or head[4] != 2:
        raise ValueError("not an ELF64 file")
    fields = _EHDR.unpack(head)
    phoff, phentsize, phnum = fields[5], fields[9], fields[10]
    table = os.pread(fd, phentsize * phnum, phoff)
    loads = []
    for i in range(phnum):
        kind, _flags, offset, vaddr, _paddr, filesz, _memsz, _align = _PHDR.unpack_from(table, i * phentsize)
        if kind == _PT_LOAD:
            loads.append((vaddr, offset, filesz))
    return loads


def _read(fd: int, loads: list[tuple[int, int, int]], address: int, size: int) -> bytes | None:
    for vaddr, offset, filesz in loads:
        if vaddr <= address and address + size <= vaddr + filesz:
            return os.pread(fd, size, offset + address - vaddr)
    return None


def _count(fd: int, size: int, tag: bytes) -> int:
    """Occurrences of ``tag`` in the file's data extents (holes hold nothing)."""
    found, position = 0, 0
    while position < size:
        try:
            start = os.lseek(fd, position, os.SEEK_DATA)
        except OSError as err:
            if err.errno == errno.ENXIO:
                break
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        at = start
        while at < end:
            found += os.pread(fd, min(_SCAN, end - at) + len(tag) - 1, at).count(tag)
            at += _SCAN
        position = end
    return found

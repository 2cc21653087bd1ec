"""Capture levels: what a dump stores besides the registered regions, for the debuggers people use.

``regions`` (the default) stores the registered regions and, for every ELF file the process maps,
its ELF header, program headers and build-id note (a few hundred bytes each): enough for
``eu-unstrip`` to name the modules and for gdb to show each thread at its pc.

``stacks`` also stores what post-mortem debuggers need to print every thread's stack, still a
small fraction of a full core (about 200 to 400 KB for a small program against 80 MB):

* the top of each thread's stack (64 KiB from its stack pointer), for native unwinding (gdb
  ``bt``, ``eu-stack``, ``pystack --native``);
* the dynamic linker's list of loaded objects (the executable's ``.dynamic``, ``r_debug``, each
  ``link_map`` and its name), the vDSO, the writable data of ``ld.so`` and ``libc`` and each
  thread's ``struct pthread``: gdb's shared library list and its thread library;
* the page holding the program's name (``AT_EXECFN``), which pystack reads;
* CPython's state, found by :mod:`.pystate`: the runtime, the interpreter, every thread state,
  frame and code object with its names, line table and variable names (pystack, gdb ``py-bt``).

elfutils reads a core's memory a page at a time and loses modules and frames when a segment it
needs starts inside a page another one shares, so the stack tops and the dynamic linker's
structures are stored as whole pages; the Python objects are stored byte for byte. It finds a
module only by an ELF header at the start of a segment, so each module's header begins a segment
of its own even where the data stored below it runs up to it (:func:`split_at`).

The top of the main thread's stack holds the strings of its command line and of its whole
environment (``KEY=value``, secrets included), beside the program's name. The stored copy keeps the
command line (which the dump records anyway) and the program's name, and blanks every byte of the
environment strings but their terminating NULs (:func:`blank`): ``envp`` still points at strings of
the same lengths, so nothing a debugger follows moves, and no value is stored.
"""

from __future__ import annotations

import bisect
import itertools
import struct

from kmemdump.collector.coreshape import PAGE_SIZE
from kmemdump.collector.coreshape import MapEntry
from kmemdump.collector.coreshape import ProcessShape
from kmemdump.errors import KmemdumpError
from kmemdump.formats.corenotes import AT_EXECFN
from kmemdump.formats.corenotes import AT_SYSINFO_EHDR
from kmemdump.formats.elfimage import DT_DEBUG
from kmemdump.formats.elfimage import dynamic_entries
from kmemdump.memory.process import ProcessMemory
from kmemdump.record import frozen

TYPE_CHECKING = False  # typing for mypy only; the interpreter's state is walked (pystate) at "stacks" only
if TYPE_CHECKING:
    from collections.abc import Iterable
    from collections.abc import Sequence
    from typing import Literal

    CaptureLevel = Literal["regions", "stacks"]
else:
    CaptureLevel = str

__all__ = [
    "CAPTURE_LEVELS",
    "STACK_BYTES",
    "Capture",
    "CaptureLevel",
    "capture_ranges",
    "clip_to_maps",
    "merge_ranges",
    "split_at",
]

CAPTURE_LEVELS: tuple[CaptureLevel, ...] = ("regions", "stacks")
STACK_BYTES = 64 << 10
"""Bytes of each thread's stack stored from its stack pointer up, at the ``stacks`` level."""
_MAX_STACK_BYTES = 32 << 20  # of stack tops in all: 512 threads' worth
_MAX_THREADS = 4096
_MAX_LINK_MAPS = 4096
_MAX_WRITABLE = 4 << 20  # of ld.so's or libc's writable data
_PTHREAD_BYTES = 4096
_RED_ZONE = 128  # x86_64 code may use 128 bytes below the stack pointer
_BLANK = bytes([0, *([ord("*")] * 255)])


@frozen
class Capture:
    """The ranges a capture level adds, and what could not be had (``problems``, one line each)."""

    ranges: tuple[tuple[int, int], ...]
    problems: tuple[str, ...] = ()
    python: str = ""
    """The Python version whose state was stored, or ""."""
    blanked: tuple[tuple[int, int], ...] = ()
    """``(start, end)`` of memory whose stored copy is blanked (the environment strings)."""

    def blank(self, address: int, data: bytes) -> bytes:
        """``data`` read at ``address``, with the bytes in :attr:`blanked` turned to ``*`` (NULs kept)."""
        for start, end in self.blanked:
            low, high = max(start, address), min(end, address + len(data))
            if low < high:
                a, b = low - address, high - address
                data = data[:a] + data[a:b].translate(_BLANK) + data[b:]
        return data


def _pages(start: int, end: int) -> tuple[int, int]:
    low = start - start % PAGE_SIZE
    return low, -(-end // PAGE_SIZE) * PAGE_SIZE


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """``(address, size)`` ranges merged where they overlap or touch, in address order."""
    merged: list[list[int]] = []
    for start, size in sorted((a, s) for a, s in ranges if s > 0):
        end = start + size
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(start, end - start) for start, end in merged]


def split_at(ranges: Iterable[tuple[int, int]], cuts: Iterable[int]) -> list[tuple[int, int]]:
    """``ranges`` cut so that each address in ``cuts`` inside one starts a range of its own.

    A module's ELF header must start a core segment: elfutils (eu-stack, eu-unstrip, and libdwfl in
    every tool built on it) looks for modules at the start of each segment, and one whose header sits
    inside a segment (merged with the data of the library mapped just below it) is not reported
    through its ELF header, so its frames are not unwound."""
    points = sorted(set(cuts))
    out = []
    for start, size in ranges:
        end = start + size
        inside = points[bisect.bisect_right(points, start) : bisect.bisect_left(points, end)]
        edges = [start, *inside, end]
        out += [(low, high - low) for low, high in itertools.pairwise(edges)]
    return out


def clip_to_maps(ranges: Iterable[tuple[int, int]], maps: Sequence[MapEntry]) -> list[tuple[int, int]]:
    """The parts of ``ranges`` inside readable mappings (the kernel refuses reads elsewhere)."""
    readable = [m for m in maps if "r" in m.perms and m.path not in ("[vvar]", "[vsyscall]")]
    out = []
    for start, size in merge_ranges(ranges):
        end = start + size
        for m in readable:
            low, high = max(start, m.start), min(end, m.end)
            if low < high:
                out.append((low, high - low))
    return merge_ranges(out)


def _mapping_of(maps: Sequence[MapEntry], address: int) -> MapEntry | None:
    return next((m for m in maps if m.start <= address < m.end), None)


def _stack_tops(shape: ProcessShape) -> tuple[list[tuple[int, int]], int]:
    """The top of each thread's stack, as pages, and how many threads got theirs (the main thread
    first; at most 32 MiB in all)."""
    out = []
    total = 0
    for thread in shape.threads[:_MAX_THREADS]:
        sp = thread.registers.sp
        mapping = _mapping_of(shape.maps, sp) if sp else None
        if mapping is None:
            continue
        low, high = _pages(max(mapping.start, sp - _RED_ZONE), min(mapping.end, sp + STACK_BYTES))
        size = min(high, mapping.end) - low
        if total + size > _MAX_STACK_BYTES:
            break
        total += size
        out.append((low, size))
    return out, len(out)


def _link_map(shape: ProcessShape, mem: ProcessMemory) -> list[tuple[int, int]]:
    """The executable's ``.dynamic``, ``r_debug``, every ``link_map`` head and name, as pages."""
    exe = shape.module("exe")
    image = shape.image_of(exe) if exe is not None else None
    dynamic = image.dynamic() if image is not None else None
    if dynamic is None:
        return []
    out = [_pages(dynamic[0], dynamic[0] + dynamic[1])]
    r_debug = dynamic_entries(mem.read_upto(dynamic[0], min(dynamic[1], 16 * 512))).get(DT_DEBUG, 0)
    if not r_debug:
        return [(low, high - low) for low, high in out]
    out.append(_pages(r_debug, r_debug + 40))
    node = struct.unpack("<Q", mem.read(r_debug + 8, 8))[0]  # r_map
    seen: set[int] = set()
    while node and node not in seen and len(seen) < _MAX_LINK_MAPS:
        seen.add(node)
        head = mem.read(node, 40)  # l_addr, l_name, l_ld, l_next, l_prev
        out.append(_pages(node, node + 40))
        name = struct.unpack_from("<Q", head, 8)[0]
        if name:
            text = mem.read_upto(name, 4096).split(b"\0", 1)[0]
            out.append(_pages(name, name + len(text) + 1))
        node = struct.unpack_from("<Q", head, 24)[0]
    return [(low, high - low) for low, high in out]


def _writable_data(shape: ProcessShape, names: tuple[str, ...]) -> list[tuple[int, int]]:
    """The writable mappings of the named libraries, and the anonymous ``.bss`` right after each."""
    out = []
    for index, m in enumerate(shape.maps):
        base = m.path.rsplit("/", 1)[-1]
        if not base.startswith(names) or "w" not in m.perms:
            continue
        end = m.end
        after = shape.maps[index + 1] if index + 1 < len(shape.maps) else None
        if after is not None and not after.path and after.start == m.end and "w" in after.perms:
            end = after.end
        out.append((m.start, min(end - m.start, _MAX_WRITABLE)))
    return out


def _pthreads(shape: ProcessShape, python_threads: Iterable[int]) -> list[tuple[int, int]]:
    """Each thread's ``struct pthread`` (at its ``fs_base`` on x86_64, known from ptrace registers,
    and at every Python thread's ``pthread_t``): gdb's thread library reads them."""
    addresses = set(python_threads)
    for thread in shape.threads:
        if shape.machine == 62 and thread.registers.source == "ptrace":
            addresses.add(thread.registers.value("fs_base"))
    out = []
    for address in sorted(a for a in addresses if a):
        mapping = _mapping_of(shape.maps, address)
        if mapping is not None:
            out.append((address, min(_PTHREAD_BYTES, mapping.end - address)))
    return out


def capture_ranges(
    level: CaptureLevel, shape: ProcessShape, mem: ProcessMemory, *, hexversion: int = 0
) -> Capture:
    """The ranges ``level`` stores for the held target ``shape`` (besides regions and ELF headers)."""
    if level == "regions":
        return Capture(())
    problems: list[str] = []
    ranges, stacked = _stack_tops(shape)
    with_sp = sum(1 for t in shape.threads if t.registers.sp)
    if not with_sp:
        problems.append("no thread's stack pointer could be read")
    elif stacked < with_sp:
        limit = _MAX_STACK_BYTES
        budget = f"{limit >> 20} MiB" if limit >= 1 << 20 else f"{limit >> 10} KiB"
        problems.append(f"the stacks of {stacked} of {with_sp} threads only (at most {budget} of stacks)")
    try:
        ranges += _link_map(shape, mem)
    except KmemdumpError as err:
        problems.append(f"the dynamic linker's list of objects is unreadable: {err}")
    ranges += _writable_data(shape, ("ld-linux", "ld-", "libc.so", "libc-"))
    vdso = shape.auxv_values.get(AT_SYSINFO_EHDR, 0)
    mapping = _mapping_of(shape.maps, vdso) if vdso else None
    if mapping is not None:
        ranges.append((mapping.start, mapping.end - mapping.start))
    execfn = shape.auxv_values.get(AT_EXECFN, 0)
    if execfn:
        low, high = _pages(execfn, execfn + 1)
        ranges.append((low, high - low))
    python = ""
    pthreads: list[int] = []
    from kmemdump.collector.pystate import PyStateError
    from kmemdump.collector.pystate import walk_python

    try:
        walk = walk_python(shape, mem, hexversion)
    except PyStateError as err:
        problems.append(f"Python state not stored: {err}")
    except KmemdumpError as err:
        problems.append(f"Python state not stored: {err}")
    else:
        python = walk.version
        ranges += walk.ranges
        pthreads = [t.pthread for t in walk.threads]
    ranges += _pthreads(shape, pthreads)
    env_start, env_end = shape.environ
    blanked = ((env_start, env_end),) if 0 < env_start < env_end else ()
    if not blanked and with_sp:  # not told where it is (another pid namespace's view): store no stack top
        problems.append("the environment's place is unknown: the main thread's stack top is not stored")
        main = next((m for m in shape.maps if m.path == "[stack]"), None)
        if main is not None:
            ranges = [(a, n) for a, n in ranges if not (main.start <= a < main.end)]
    return Capture(tuple(clip_to_maps(ranges, shape.maps)), tuple(problems), python, blanked)

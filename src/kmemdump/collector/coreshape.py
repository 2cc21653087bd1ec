"""What a debugger needs besides memory to read a core: the target's threads, mappings and modules.

:func:`observe` looks at a live target while it is held: every thread's registers and state
(``NT_PRSTATUS``), the process's identity (``NT_PRPSINFO``), its auxiliary vector (``NT_AUXV``), its
file mappings (``NT_FILE``), and the ELF header of each mapped file (its program headers and GNU
build-id note, a few hundred bytes each). elfutils (``eu-unstrip``, ``eu-stack``, pystack) finds a
core's modules by those headers in the core's memory, and gdb and ``kmemdump gdb`` check the files
they load against the build-ids. :func:`process_notes` turns the observation into notes, in the
kernel's order. Everything read from the target is bounded; a part that cannot be read is left out
and the rest still written.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence

from kmemdump.collector.registers import ThreadRegisters
from kmemdump.collector.registers import read_registers
from kmemdump.collector.registers import thread_ids
from kmemdump.errors import KmemdumpError
from kmemdump.formats.corenotes import AT_BASE
from kmemdump.formats.corenotes import AT_PHDR
from kmemdump.formats.corenotes import FileMapping
from kmemdump.formats.corenotes import Module
from kmemdump.formats.corenotes import auxv_note
from kmemdump.formats.corenotes import file_note
from kmemdump.formats.corenotes import modules_note
from kmemdump.formats.corenotes import parse_auxv
from kmemdump.formats.elf import Note
from kmemdump.formats.elf import check_machine
from kmemdump.formats.elf import prpsinfo_note
from kmemdump.formats.elf import prstatus_note
from kmemdump.formats.elfimage import ElfImageError
from kmemdump.formats.elfimage import ImageHeader
from kmemdump.formats.elfimage import build_id_from_notes
from kmemdump.formats.elfimage import parse_image_header
from kmemdump.memory.process import ProcessMemory
from kmemdump.procinfo import read_proc
from kmemdump.procinfo import stat_fields
from kmemdump.record import frozen
from kmemdump.record import mutable
from kmemdump.record import setters

__all__ = ["MapEntry", "ProcessShape", "ThreadInfo", "is_libpython", "observe", "parse_maps", "process_notes"]

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_MAX_MAPS = 1 << 16
_MAX_MODULES = 1024
_MAX_THREADS = 1 << 14
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def is_libpython(path: str) -> bool:
    r"""Whether ``path`` names a libpython (``.../libpython3.12.so.1.0``): what the regular expression
    ``/libpython3\.\d+[^/]*\.so[^/]*$`` finds, without loading :mod:`re` (``dump PID``'s start-up)."""
    _, sep, name = path.rpartition("/")
    rest = name.removeprefix("libpython3.")
    return bool(sep) and rest != name and rest[:1].isdecimal() and ".so" in rest[1:]


@frozen
class MapEntry:
    """One line of ``/proc/PID/maps``."""

    start: int
    end: int
    perms: str
    offset: int
    inode: int
    path: str
    dev: str = ""
    """The device of a file mapping (``fd:01``)."""

    @property
    def file(self) -> tuple[str, int, str] | None:
        """The file mapped, as (device, inode, path); None for anonymous memory and pseudo-files."""
        return (self.dev, self.inode, self.path) if self.inode and self.path.startswith("/") else None


@frozen
class ThreadInfo:
    """One thread: its registers and what ``/proc/PID/task/TID`` says of it."""

    registers: ThreadRegisters
    utime_us: int = 0
    stime_us: int = 0
    sigpend: int = 0
    sighold: int = 0


@frozen
class ProcessShape:
    """A held target as a debugger sees it (see :func:`observe`)."""

    pid: int
    machine: int
    threads: tuple[ThreadInfo, ...]
    comm: str
    psargs: str
    state: str
    ppid: int
    pgrp: int
    sid: int
    nice: int
    flags: int
    uid: int
    gid: int
    auxv: bytes
    maps: tuple[MapEntry, ...]
    modules: tuple[Module, ...]
    headers: tuple[tuple[int, bytes], ...]
    """``(address, bytes)`` of each module's ELF header, program headers and notes, to store."""
    images: tuple[ImageHeader, ...]
    limits: tuple[str, ...] = ()
    """The bounds on what is read per dump that this observation hit (``maps``, ``modules``)."""
    environ: tuple[int, int] = (0, 0)
    """Where the environment strings are (``env_start``, ``env_end`` of ``/proc/PID/stat``), at the top
    of the main thread's stack: the stacks capture level blanks them in what it stores."""

    @property
    def auxv_values(self) -> dict[int, int]:
        return parse_auxv(self.auxv)

    def module(self, role: str) -> Module | None:
        return next((m for m in self.modules if m.role == role), None)

    def image_of(self, module: Module) -> ImageHeader | None:
        return next((i for i in self.images if i.base == module.base), None)


_MAP_FIELDS = setters(MapEntry)


def parse_maps(text: bytes) -> list[MapEntry]:
    """The lines of a ``/proc/PID/maps`` (at most 65,536; a malformed line is skipped).

    Built through the slots' descriptors: a process with 60,000 mappings is parsed while it is held.
    """
    out: list[MapEntry] = []
    start_, end_, perms_, offset_, inode_, path_, dev_ = _MAP_FIELDS
    new = object.__new__
    for line in os.fsdecode(text).split("\n", _MAX_MAPS)[:_MAX_MAPS]:
        parts = line.split(maxsplit=5)
        if len(parts) < 5:
            continue
        low, _, high = parts[0].partition("-")
        try:
            values = (int(low, 16), int(high, 16), int(parts[2], 16), int(parts[4]))
        except ValueError:
            continue
        entry = new(MapEntry)
        start_(entry, values[0])
        end_(entry, values[1])
        perms_(entry, parts[1])
        offset_(entry, values[2])
        inode_(entry, values[3])
        path_(entry, parts[5] if len(parts) > 5 else "")
        dev_(entry, parts[3])
        out.append(entry)
    return out


def _status_value(status: bytes, key: bytes) -> bytes:
    for line in status.split(b"\n"):
        if line.startswith(key):
            return line[len(key) :].strip()
    return b""


def _thread_info(pid: int, registers: ThreadRegisters) -> ThreadInfo:
    tid = registers.tid
    try:
        with open(f"/proc/{pid}/task/{tid}/stat", "rb") as handle:
            fields = stat_fields(handle.read())
        with open(f"/proc/{pid}/task/{tid}/status", "rb") as handle:
            status = handle.read()
        tick_us = 1_000_000 // _CLOCK_TICKS
        return ThreadInfo(
            registers,
            utime_us=int(fields[11]) * tick_us,
            stime_us=int(fields[12]) * tick_us,
            sigpend=int(_status_value(status, b"SigPnd:") or b"0", 16),
            sighold=int(_status_value(status, b"SigBlk:") or b"0", 16),
        )
    except (OSError, ValueError, IndexError):
        return ThreadInfo(registers)


def observe(
    pid: int,
    mem: ProcessMemory,
    *,
    registers: Mapping[int, ThreadRegisters] | None = None,
    ptrace_stopped: Iterable[int] = (),
    machine: int | None = None,
) -> ProcessShape:
    """Look at the held process ``pid``: threads and registers (``registers`` when the caller has
    them already; ``ptrace_stopped`` threads are in a ptrace stop of the calling thread, which reads
    all their registers), identity, auxiliary vector, mappings and modules.

    Raises :class:`~kmemdump.errors.ProcessGoneError` when the process is gone, and
    :class:`~kmemdump.errors.AccessDeniedError` when its ``/proc`` files are refused.
    """
    machine = check_machine(machine)
    stat = read_proc(pid, "stat")
    fields = stat_fields(stat)
    comm = os.fsdecode(stat[stat.find(b"(") + 1 : stat.rfind(b")")])
    status = read_proc(pid, "status")
    cmdline = read_proc(pid, "cmdline").rstrip(b"\0").replace(b"\0", b" ")
    auxv = b""
    try:
        auxv = read_proc(pid, "auxv")
    except KmemdumpError:
        pass
    maps_text = read_proc(pid, "maps")
    maps = parse_maps(maps_text)
    limits: list[str] = []
    lines = maps_text.count(b"\n")
    if lines > _MAX_MAPS:
        limits.append(f"maps: the first {_MAX_MAPS} of {lines} mappings read")
    tids = thread_ids(pid)[:_MAX_THREADS]
    found = dict(registers or {})
    missing = [tid for tid in tids if tid not in found]
    found.update(read_registers(pid, missing, ptrace_stopped=ptrace_stopped, machine=machine))
    order = [tid for tid in tids if tid in found] + [tid for tid in found if tid not in tids]
    threads = tuple(_thread_info(pid, found[tid]) for tid in order)
    modules, headers, images, files = _modules(mem, maps, parse_auxv(auxv))
    if files > _MAX_MODULES:
        limits.append(f"modules: {_MAX_MODULES} of {files} mapped files looked at")

    def number(index: int) -> int:
        try:
            return int(fields[index])
        except (IndexError, ValueError):
            return 0

    ids = _status_value(status, b"Uid:").split()
    gids = _status_value(status, b"Gid:").split()
    return ProcessShape(
        pid=pid,
        machine=machine,
        threads=threads,
        comm=comm,
        psargs=os.fsdecode(cmdline),
        state=fields[0][:1].decode("ascii", "replace") if fields else "R",
        ppid=number(1),
        pgrp=number(2),
        sid=number(3),
        nice=number(16),
        flags=number(6),
        uid=int(ids[0]) if ids and ids[0].isdigit() else 0,
        gid=int(gids[0]) if gids and gids[0].isdigit() else 0,
        auxv=auxv,
        maps=tuple(maps),
        modules=modules,
        headers=headers,
        images=images,
        limits=tuple(limits),
        environ=(number(47), number(48)),
    )


@mutable
class _Run:
    """Consecutive mappings of one file (anonymous memory between them allowed): one loaded image."""

    first: MapEntry
    end: int
    segments: int = 1


def _images(maps: Sequence[MapEntry]) -> list[_Run]:
    """Each mapped file once, at its loaded image, in one pass over the mappings (sorted by address).

    A run starts at a mapping of a file's first page and goes on while the next file mapping is of the
    same file at a later offset. A file mapped many times over (a program that maps its own copy of
    libc 20,000 times) has many runs; the loaded image is the one with the most segments (the lowest
    on a tie), where the dynamic linker put the file's text and data.
    """
    best: dict[tuple[str, int, str], _Run] = {}
    current: _Run | None = None
    for m in maps:
        key = m.file
        if key is None:
            continue  # anonymous memory (a library's .bss) does not end a run
        if current is not None and current.first.file == key and m.offset > 0:
            current.end, current.segments = m.end, current.segments + 1
        elif m.offset == 0 and "r" in m.perms:
            current = _Run(m, m.end)
        else:
            current = None
            continue
        kept = best.get(key)
        if kept is None or (current is not kept and current.segments > kept.segments):
            best[key] = current
    return sorted(best.values(), key=_start)


def _start(run: _Run) -> int:
    return run.first.start


def _modules(
    mem: ProcessMemory, maps: Sequence[MapEntry], auxv: Mapping[int, int]
) -> tuple[tuple[Module, ...], tuple[tuple[int, bytes], ...], tuple[ImageHeader, ...], int]:
    """Every mapped ELF file once: its extent, build-id and role, and the bytes of its headers to store;
    and how many files there were to look at (at most :data:`_MAX_MODULES` are: the executable,
    libpython and the dynamic linker first)."""
    phdr, interp = auxv.get(AT_PHDR, 0), auxv.get(AT_BASE, 0)
    runs = _images(maps)

    def rank(run: _Run) -> int:
        """The executable, libpython and the dynamic linker are always kept (in that order), then
        the others by address."""
        if run.first.start <= phdr < run.end:
            return 0
        if is_libpython(run.first.path):
            return 1
        return 2 if run.first.start == interp else 3

    chosen = sorted(sorted(runs, key=rank)[: max(0, _MAX_MODULES)], key=_start)
    pages = mem.read_many([(r.first.start, min(PAGE_SIZE, r.first.end - r.first.start)) for r in chosen])
    modules: list[Module] = []
    headers: list[tuple[int, bytes]] = []
    images: list[ImageHeader] = []
    for run, page in zip(chosen, pages, strict=True):
        start, path = run.first.start, run.first.path
        try:
            image = parse_image_header(start, page)
        except ElfImageError:
            continue  # not an ELF file (a locale archive, a font, a data file)
        keep = image.header_end
        build_id = None
        for address, size in image.notes():
            offset = address - start
            if offset >= 0 and offset + size <= len(page):
                keep = max(keep, offset + size)
                build_id = build_id or build_id_from_notes(page[offset : offset + size])
            elif size <= 4096:
                build_id = build_id or build_id_from_notes(mem.read_upto(address, size))
        if start <= phdr < run.end:
            role = "exe"
        elif is_libpython(path):
            role = "libpython"
        else:
            role = ""
        modules.append(Module(path, start, run.end, build_id, role))
        headers.append((start, page[:keep]))
        images.append(image)
    return tuple(modules), tuple(headers), tuple(images), len(runs)


def _within(spans: Sequence[tuple[int, int, str]], address: int, path: str) -> bool:
    index = bisect.bisect_right(spans, (address, 1 << 64, "")) - 1
    return index >= 0 and spans[index][0] <= address < spans[index][1] and spans[index][2] == path


def process_notes(
    shape: ProcessShape, *, cursig: int = 0, siginfo: Note | None = None, first_tid: int | None = None
) -> list[Note]:
    """The core notes of ``shape`` in the kernel's order: the first thread's ``NT_PRSTATUS``,
    ``NT_PRPSINFO``, ``siginfo`` (the ``NT_SIGINFO`` of the signal that ended the process), ``NT_AUXV``,
    ``NT_FILE``, the other threads' ``NT_PRSTATUS``, then our modules note. ``first_tid`` is the
    thread a debugger should start in (the leader by default); ``cursig`` the signal that ended the
    process, written into every thread's note."""
    threads = list(shape.threads)
    lead = next((i for i, t in enumerate(threads) if t.registers.tid == (first_tid or shape.pid)), 0)
    if threads:
        threads.insert(0, threads.pop(lead))
    statuses = [
        prstatus_note(
            t.registers.tid,
            machine=shape.machine,
            registers=t.registers.words,
            cursig=cursig,
            ppid=shape.ppid,
            pgrp=shape.pgrp,
            sid=shape.sid,
            sigpend=t.sigpend,
            sighold=t.sighold,
            utime_us=t.utime_us,
            stime_us=t.stime_us,
        )
        for t in threads
    ]
    psinfo = prpsinfo_note(
        shape.pid,
        shape.comm,
        shape.psargs,
        shape.state,
        ppid=shape.ppid,
        uid=shape.uid,
        gid=shape.gid,
        pgrp=shape.pgrp,
        sid=shape.sid,
        nice=shape.nice,
        flag=shape.flags,
    )
    notes = [*statuses[:1], psinfo]
    if siginfo is not None:
        notes.append(siginfo)
    if shape.auxv:
        notes.append(auxv_note(shape.auxv))
    # The mappings of the ELF files only (the kernel lists every mapped file): a debugger opens
    # every file NT_FILE names, and warns for each it cannot open, such as a deleted temporary file.
    spans = sorted((m.base, m.end, m.path) for m in shape.modules)
    files = [
        FileMapping(m.start, m.end, m.offset, m.path)
        for m in shape.maps
        if m.inode and _within(spans, m.start, m.path)  # each file's loaded image, not every other copy
    ]
    note = file_note(files, PAGE_SIZE)
    if note is not None:
        notes.append(note)
    notes.extend(statuses[1:])
    notes.append(modules_note(shape.modules))
    return notes

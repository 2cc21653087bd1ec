"""Copying a target's registered regions out and writing them as an ELF core image.

This is the "upper level firmware" step of the Linux kernel's kmemdump design: read the shared
table, find each entry's start and size, copy it. The target is identified by (pid, start time),
held with SIGSTOP while its memory is copied (unless told not to), and released afterwards.

A live process's regions are read from its memory. Once it is gone (a death dump), regions the
table flags PERSISTENT are read from its arena file instead (:class:`ArenaMemory`); the others are
recorded as "gone".
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import time
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import replace
from datetime import datetime
from datetime import timezone
from pathlib import Path
from typing import Any
from typing import Protocol
from typing import TypeVar

from kmemdump._version import __version__
from kmemdump.collector.capture import Capture
from kmemdump.collector.capture import CaptureLevel
from kmemdump.collector.capture import capture_ranges
from kmemdump.collector.capture import merge_ranges
from kmemdump.collector.coreshape import ProcessShape
from kmemdump.collector.coreshape import observe
from kmemdump.collector.coreshape import process_notes
from kmemdump.collector.corewriter import CoreWriter
from kmemdump.collector.corewriter import write_core
from kmemdump.collector.registers import ThreadRegisters
from kmemdump.collector.stacks import StacksUnavailable
from kmemdump.collector.stacks import take_stacks
from kmemdump.collector.threads import thread_states
from kmemdump.errors import CollectorError
from kmemdump.errors import KmemdumpError
from kmemdump.errors import ProcessGoneError
from kmemdump.errors import TableFormatError
from kmemdump.formats.arena import arena_path_of
from kmemdump.formats.dumpmeta import Death
from kmemdump.formats.dumpmeta import DumpMeta
from kmemdump.formats.dumpmeta import Held
from kmemdump.formats.dumpmeta import Reason
from kmemdump.formats.dumpmeta import RegionRecord
from kmemdump.formats.dumpmeta import Source
from kmemdump.formats.dumpmeta import Status
from kmemdump.formats.dumpmeta import ThreadState
from kmemdump.formats.dumpmeta import encode_meta
from kmemdump.formats.elf import KMD_NOTE_META
from kmemdump.formats.elf import KMD_NOTE_STACKS
from kmemdump.formats.elf import OWNER_KMEMDUMP
from kmemdump.formats.elf import OWNER_PYCOREINFO
from kmemdump.formats.elf import PYCOREINFO_NOTE
from kmemdump.formats.elf import Note
from kmemdump.formats.elf import Segment
from kmemdump.formats.elf import prpsinfo_note
from kmemdump.formats.elf import prstatus_note
from kmemdump.formats.elf import siginfo_note
from kmemdump.formats.stacks import encode_stacks
from kmemdump.formats.table import ACT_LOCK_BYTE
from kmemdump.formats.table import HEADER_SIZE
from kmemdump.formats.table import TableEntry
from kmemdump.formats.table import TableHeader
from kmemdump.formats.table import TableSnapshot
from kmemdump.formats.table import lock_byte
from kmemdump.formats.table import open_owned_file
from kmemdump.formats.table import parse_header
from kmemdump.formats.table import read_table
from kmemdump.ids import ID
from kmemdump.memory.arena import ArenaMemory
from kmemdump.memory.process import ProcessMemory
from kmemdump.procinfo import process_cmdline
from kmemdump.procinfo import process_exe
from kmemdump.procinfo import process_start_time
from kmemdump.procinfo import thread_state

__all__ = ["DumpOptions", "DumpResult", "dump_target"]

MAX_REGION_DEFAULT = 256 * 1024 * 1024
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class DumpOptions:
    """How to dump: where, how much, and how gently."""

    directory: Path
    budget: int | None = None
    """At most this many region bytes per dump; regions are taken in ID order until it is spent."""
    max_region: int = MAX_REGION_DEFAULT
    """A single region larger than this is stored only up to this size (status "partial")."""
    compress: bool = False
    stop: bool = True
    """Hold the target with SIGSTOP while copying, so the regions are one consistent picture."""
    stacks: bool = True
    capture: CaptureLevel = "regions"
    """What else to store: "regions" adds only the ELF headers of the mapped files; "stacks" also the
    top of each thread's stack and the interpreter's thread states, frames and code objects, so that
    pystack, gdb ``bt`` and ``py-bt`` print every thread's stack (see :mod:`.capture`)."""
    threads: float = 0.02
    """Read each thread's scheduler state before the hold, measuring CPU use over this many seconds
    (0: read the states without measuring; negative: do not read them)."""


@dataclass(frozen=True, slots=True)
class DumpResult:
    path: Path
    meta: DumpMeta

    @property
    def stored_bytes(self) -> int:
        return self.meta.stored_bytes


def _identify(pid: int, start_time: int) -> None:
    if process_start_time(pid) != start_time:
        raise ProcessGoneError("pid now belongs to another process", pid=pid, start_time=start_time)


ACT_WAIT_S = 10.0
"""How long a dump waits for another collector that is dumping the same process."""


@contextlib.contextmanager
def acting_on(table: Path, pid: int, wait: float = ACT_WAIT_S) -> Iterator[None]:
    """Hold the table's collector lock while dumping: one collector acts on a process at a time.

    An exclusive lock on byte :data:`~kmemdump.formats.table.ACT_LOCK_BYTE` of the table file,
    released when the dump ends (or the collector dies). Another collector dumping the same process
    is waited for up to ``wait`` seconds, then :class:`CollectorError` says who holds it. A table
    that cannot be opened for writing is dumped without the lock (the dump reads it anyway).
    """
    try:
        fd = open_owned_file(table, os.O_RDWR)
    except (OSError, KmemdumpError):
        yield
        return
    try:
        deadline = time.monotonic() + wait
        while not lock_byte(fd, ACT_LOCK_BYTE, exclusive=True):
            if time.monotonic() >= deadline:
                holder = _quietly(lambda: parse_header(os.pread(fd, HEADER_SIZE, 0)).collector_pid)
                raise CollectorError(
                    "another collector is dumping this process right now",
                    pid=pid,
                    collector_pid=holder or "unknown",
                    table=str(table),
                )
            time.sleep(0.01)
        yield
    finally:
        os.close(fd)  # releases the lock


def _snapshot(table: Path, pid: int, start_time: int) -> TableSnapshot:
    snap = read_table(table)
    if snap.header.pid != pid or snap.header.start_time != start_time:
        raise TableFormatError(
            "table names another process than its file name",
            path=str(table),
            pid=snap.header.pid,
        )
    return snap


def dump_target(
    pid: int,
    start_time: int,
    table: Path,
    *,
    reason: Reason,
    options: DumpOptions,
    snapshot: TableSnapshot | None = None,
    argv: list[str] | None = None,
    exe: str | None = None,
    held: Held = "",
    death: Death | None = None,
    registers: Mapping[int, ThreadRegisters] | None = None,
    table_pid: int | None = None,
) -> DumpResult:
    """Dump the regions of the process ``(pid, start_time)`` published in ``table``.

    ``table_pid`` is the pid the table names it by, when that differs from ``pid`` (a process in
    another pid namespace: ``pid`` is how this collector sees it, :mod:`.identify`).

    ``snapshot`` is a consistent table read taken earlier (the watcher keeps one): it is used when
    the process froze in the middle of a table update, or died. ``argv``/``exe`` likewise fill in
    for a process that is already gone. ``held`` says that something else already holds the process
    still (``"exit stop"``: a ptrace exit stop); it is then not SIGSTOPped. ``death`` says how the
    process ended, for a death dump: it goes into the metadata, ``NT_PRSTATUS.pr_cursig`` and an
    ``NT_SIGINFO`` note. ``registers`` are threads' registers read by whoever holds them (a ptrace
    tracer); the others' are read here.
    """
    captured_ns = time.time_ns()
    gone = False
    try:
        _identify(pid, start_time)
        if argv is None:
            argv = _quietly(lambda: process_cmdline(pid)) or []
        if exe is None:
            exe = _quietly(lambda: process_exe(pid))
    except ProcessGoneError:
        if reason != "death":
            raise
        gone = True
    if reason == "death" and death is None:
        death = Death.unknown("the collector learnt nothing of how the process ended")
    job = _Job(
        pid, start_time, table, reason, tuple(argv or ()), exe, gone, captured_ns, held, death, registers
    )
    job = replace(job, table_pid=pid if table_pid is None else table_pid)
    path = options.directory / _file_name(pid, start_time, reason, captured_ns)
    with acting_on(table, pid):
        sink: _Sink = _BufferedCore(path) if options.compress else CoreWriter(path)
        with sink:
            return _dump_into(sink, job, options, snapshot)


@dataclass(frozen=True, slots=True)
class _Job:
    """The facts about one dump fixed before copying starts."""

    pid: int
    start_time: int
    table: Path
    reason: Reason
    argv: tuple[str, ...]
    exe: str | None
    gone: bool
    captured_ns: int
    held: Held
    death: Death | None
    registers: Mapping[int, ThreadRegisters] | None = None
    table_pid: int = 0
    """The pid the table names the process by (its own pid namespace's)."""


def _dump_into(sink: _Sink, job: _Job, options: DumpOptions, snapshot: TableSnapshot | None) -> DumpResult:
    pid, start_time, table, reason = job.pid, job.start_time, job.table, job.reason
    argv, exe, gone, captured_ns = job.argv, job.exe, job.gone, job.captured_ns
    stopped_by_us = False
    table_torn = False
    threads, threads_taken = _threads(job, options)  # before the hold: a held thread looks idle
    if not gone and options.stop and not job.held:
        stopped_by_us = _stop(pid)
    held: Held = job.held or ("SIGSTOP" if stopped_by_us else "")
    try:
        try:
            snapshot = _snapshot(table, job.table_pid, start_time)
        except TableFormatError:
            if snapshot is None:
                raise
            table_torn = True  # frozen mid-update, or gone: fall back to the last good snapshot
        except FileNotFoundError:
            if snapshot is None:
                raise CollectorError("the process published no table", pid=pid, path=str(table)) from None
        assert snapshot is not None
        t0 = time.perf_counter()
        shape, capture = (None, None) if gone else _observe(job, sink, options, snapshot.header.py_hexversion)
        records, pycoreinfo, arena_state = _copy(job, snapshot, options, sink)
        copy_ms = (time.perf_counter() - t0) * 1000
        stacks_note, stacks_state = _stacks(pid, options, gone or any(r.status == "gone" for r in records))
    finally:
        if stopped_by_us:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    header = snapshot.header
    age = (time.monotonic_ns() - header.last_feed_ns) / 1e9 if header.heartbeat else None
    meta = DumpMeta(
        reason=reason,
        pid=pid,
        start_time=start_time,
        captured_ns=captured_ns,
        host=platform.node(),
        argv=argv,
        exe=exe,
        uid=_owner(table),
        py_hexversion=header.py_hexversion,
        regions=tuple(records),
        partial=gone or any(r.status in ("partial", "unreadable", "gone") for r in records),
        stopped=bool(held),
        held=held,
        heartbeat=header.heartbeat,
        heartbeat_age_s=None if age is None else round(age, 6),
        watchdog_timeout_s=header.watchdog_timeout_ns / 1e9 if header.watchdog_timeout_ns else None,
        table=str(table),
        table_torn=table_torn,
        budget=options.budget,
        stacks=stacks_state,
        copy_ms=round(copy_ms, 3),
        collector={"version": __version__, "pid": os.getpid()},
        arena=arena_state,
        death=job.death,
        threads=threads,
        threads_taken=threads_taken,
        capture=options.capture,
        capture_state=_capture_state(options, gone, capture),
    )
    if shape is not None:
        notes = process_notes(shape, cursig=_cursig(job.death), siginfo=_siginfo(job.death))
    else:  # gone: what the table and the watcher knew of it
        signo = _cursig(job.death)
        siginfo = _siginfo(job.death)
        notes = [
            prstatus_note(pid, cursig=signo),
            prpsinfo_note(pid, Path(exe or (argv or ("?",))[0]).name, " ".join(argv), "X", uid=_owner(table)),
            *([siginfo] if siginfo is not None else []),
        ]
    notes.append(Note(OWNER_KMEMDUMP, KMD_NOTE_META, encode_meta(meta)))
    if pycoreinfo is not None:
        notes.append(Note(OWNER_PYCOREINFO, PYCOREINFO_NOTE, pycoreinfo))
    if stacks_note is not None:
        notes.append(Note(OWNER_KMEMDUMP, KMD_NOTE_STACKS, stacks_note))
    return DumpResult(sink.finish(notes), meta)


def _capture_state(options: DumpOptions, gone: bool, capture: Capture | None) -> str:
    if options.capture == "regions":
        return "ok"
    if capture is None:
        return "process gone" if gone else "the process could not be looked at"
    return "; ".join(capture.problems) or "ok"


def _cursig(death: Death | None) -> int:
    """The signal that ended the process, for every thread's ``NT_PRSTATUS.pr_cursig`` (0: none)."""
    return death.signal if death is not None and death.signal is not None else 0


def _siginfo(death: Death | None) -> Note | None:
    """``NT_SIGINFO`` when a signal ended the process: gdb then prints "Program terminated with
    signal SIGSEGV" and shows it as ``$_siginfo``."""
    signo = _cursig(death)
    if death is None or not signo:
        return None
    return siginfo_note(
        signo,
        death.si_code or 0,
        death.si_errno,
        death.address or 0,
        sender_pid=death.sender_pid,
        sender_uid=death.sender_uid or 0,
    )


def _observe(
    job: _Job, sink: _Sink, options: DumpOptions, hexversion: int
) -> tuple[ProcessShape | None, Capture | None]:
    """The target's threads, registers, mappings and modules (see :mod:`.coreshape`), with the
    modules' ELF headers and what the capture level adds stored; (None, None) when the process
    cannot be looked at (gone, refused)."""
    try:
        with ProcessMemory(job.pid) as mem:
            shape = observe(job.pid, mem, registers=job.registers)
            capture = capture_ranges(options.capture, shape, mem, hexversion=hexversion)
            ranges = merge_ranges([(a, len(data)) for a, data in shape.headers] + list(capture.ranges))
            for (address, _), data in zip(ranges, mem.read_many(ranges), strict=True):
                if data:
                    sink.add(address, data)
    except KmemdumpError:
        return None, None
    return shape, capture


class _Sink(Protocol):
    """Where copied bytes go: a streamed core (:class:`CoreWriter`) or a buffered, compressed one."""

    def __enter__(self) -> Any: ...
    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None: ...
    def begin(self, address: int) -> None: ...
    def write(self, data: Any) -> None: ...
    def end(self) -> int: ...
    def add(self, address: int, data: Any) -> int: ...
    def finish(self, notes: Sequence[Note]) -> Path: ...


class _BufferedCore:
    """Collects the segments in memory, then writes one zstd-compressed image (:func:`write_core`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._segments: list[Segment] = []
        self._open: tuple[int, list[bytes]] | None = None

    def __enter__(self) -> _BufferedCore:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._segments.clear()

    def begin(self, address: int) -> None:
        self._open = (address, [])

    def write(self, data: Any) -> None:
        assert self._open is not None
        self._open[1].append(bytes(data))

    def end(self) -> int:
        assert self._open is not None
        address, parts = self._open
        self._open = None
        data = b"".join(parts)
        if data:
            self._segments.append(Segment(address, data))
        return len(data)

    def add(self, address: int, data: Any) -> int:
        self.begin(address)
        self.write(data)
        return self.end()

    def finish(self, notes: Sequence[Note]) -> Path:
        return write_core(self.path, self._segments, notes, compress=True)


def _copy(
    job: _Job, snapshot: TableSnapshot, options: DumpOptions, sink: _Sink
) -> tuple[list[RegionRecord], bytes | None, str]:
    """Copy every entry (ID order, within the budget) into ``sink``; describe what was stored.

    Small regions are read many per system call; a large one is read in chunks through one
    reused buffer, so memory use stays small whatever the dump's size. What the process could not
    give (it is gone, or went during the copy) comes from the arena when the region is persistent.
    Returns the records, the PYCOREINFO bytes if copied whole, and the arena's state.
    """
    pid, gone = job.pid, job.gone
    records: list[RegionRecord] = []
    planned: list[tuple[TableEntry, int]] = []
    spent = 0
    for entry in snapshot.entries:  # sorted by id
        size = min(entry.size, options.max_region)
        if options.budget is not None and spent + size > options.budget:
            records.append(_record(entry, 0, "skipped", source=_source(entry, gone)))
            continue
        spent += size
        planned.append((entry, size))
    pycoreinfo: bytes | None = None
    done = 0
    error = "process gone before the copy"
    if not gone and planned:
        try:
            with ProcessMemory(pid) as mem:
                buffer: bytearray | None = None
                while done < len(planned):
                    entry, size = planned[done]
                    if size >= _CHUNK:
                        buffer = buffer or bytearray(_CHUNK)
                        stored = _copy_large(mem, entry.address, size, buffer, sink)
                        records.append(_record(entry, stored, _status(stored, entry.size)))
                        done += 1
                        continue
                    batch: list[tuple[TableEntry, int]] = []
                    while done + len(batch) < len(planned) and len(batch) < _BATCH:
                        candidate = planned[done + len(batch)]
                        if candidate[1] >= _CHUNK:
                            break
                        batch.append(candidate)
                    datas = mem.read_many([(e.address, n) for e, n in batch])
                    for (entry, _), data in zip(batch, datas, strict=True):
                        stored = sink.add(entry.address, data)
                        records.append(_record(entry, stored, _status(stored, entry.size)))
                        if entry.id == ID.PYCOREINFO and stored == entry.size:
                            pycoreinfo = bytes(data)
                    done += len(batch)
        except ProcessGoneError as err:
            error = f"process gone during the copy: {err}"
    left = planned[done:]
    records.extend(_record(entry, 0, "gone", error) for entry, _ in left if not entry.persistent)
    kept = [(entry, size) for entry, size in left if entry.persistent]
    header = snapshot.header
    arena_state = "unused" if header.arena_size else "none"
    if kept:
        saved, arena_state = _copy_from_arena(job, header, kept, sink)
        records.extend(saved)
    records.sort(key=lambda r: r.id)
    return records, pycoreinfo, arena_state


def _copy_from_arena(
    job: _Job, header: TableHeader, planned: list[tuple[TableEntry, int]], sink: _Sink
) -> tuple[list[RegionRecord], str]:
    """Copy persistent regions out of the arena file beside the table; returns the records and
    "ok", or why the arena could not be read (then every region is "unreadable" with that reason)."""
    path = arena_path_of(job.table)
    try:
        arena = ArenaMemory(
            path,
            header.arena_base,
            header.arena_size,
            pid=job.table_pid,
            start_time=job.start_time,
            owner=_owner(job.table),
        )
    except FileNotFoundError:
        why = f"the arena file {path} is missing"
    except (KmemdumpError, OSError) as err:
        why = f"the arena file was refused: {err}"
    else:
        records: list[RegionRecord] = []
        with arena:
            buffer = bytearray(min(_CHUNK, max(size for _, size in planned)))
            for entry, size in planned:
                try:
                    stored = _copy_large(arena, entry.address, size, buffer, sink)
                except OSError as err:
                    records.append(_record(entry, 0, "unreadable", f"arena read failed: {err}", "arena"))
                    continue
                short = "" if stored >= size else "the arena file holds fewer bytes than the region"
                records.append(_record(entry, stored, _status(stored, entry.size), short, "arena"))
        return records, "ok"
    return [_record(entry, 0, "unreadable", why, "arena") for entry, _ in planned], why


def _source(entry: TableEntry, gone: bool) -> Source:
    """Where the entry's bytes come from: the arena once the process is gone, if persistent."""
    return "arena" if gone and entry.persistent else "process"


_CHUNK = 4 << 20
"""Regions this large are copied in chunks of this size through one buffer."""
_BATCH = 1024
"""Smaller regions are read this many per process_vm_readv (its IOV_MAX)."""


class _ChunkSource(Protocol):
    def read_into(self, address: int, view: memoryview) -> int: ...


def _copy_large(mem: _ChunkSource, address: int, size: int, buffer: bytearray, sink: _Sink) -> int:
    view = memoryview(buffer)
    stored = 0
    sink.begin(address)
    try:
        while stored < size:
            want = min(len(buffer), size - stored)
            got = mem.read_into(address + stored, view[:want])
            if got:
                sink.write(view[:got])
                stored += got
            if got < want:
                break
    finally:
        sink.end()
    return stored


def _record(
    entry: TableEntry, stored: int, status: Status, error: str = "", source: Source = "process"
) -> RegionRecord:
    return RegionRecord(
        entry.id, entry.name, entry.kind, entry.address, entry.size, stored, status, error, source
    )


def _status(stored: int, size: int) -> Status:
    if stored == 0:
        return "unreadable"
    return "ok" if stored >= size else "partial"


def _threads(job: _Job, options: DumpOptions) -> tuple[tuple[ThreadState, ...], str]:
    """Every thread's scheduler state, read before anything holds the process, and when."""
    if options.threads < 0:
        return (), "not requested"
    if job.gone:
        return (), "process gone"
    if job.held:
        return (), f"the process was already held ({job.held}) when the collector came"
    states = thread_states(job.pid, window=options.threads)
    if not states:
        return (), "the threads could not be read"
    return states, "before the hold" if options.stop else "while the process ran"


def _stacks(pid: int, options: DumpOptions, gone: bool) -> tuple[bytes | None, str]:
    if not options.stacks:
        return None, "not requested"
    if gone:
        return None, "process gone"
    try:
        return encode_stacks(take_stacks(pid)), "ok"
    except StacksUnavailable as err:
        return None, str(err)


def _stop(pid: int) -> bool:
    """SIGSTOP the target unless it is stopped already; True if we stopped it.

    Stopped means every thread: a group-stop parks threads one by one, and under a tracer
    (``kmemdump run --trace-exit``) one thread first shows a tracing stop for the signal before the
    tracer passes it on and the others stop.
    """
    if _all_stopped(pid) is not False:
        return False  # stopped already (leave it stopped afterwards), or gone
    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + 1.0
    while _all_stopped(pid) is False and time.monotonic() < deadline:
        time.sleep(0.0005)  # waiting for the kernel to park every thread, bounded
    return True


def _all_stopped(pid: int) -> bool | None:
    """Whether every thread of ``pid`` is stopped (or has ended); None when the process is gone."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    return all(thread_state(pid, int(tid)) in ("T", "t", "Z", "X", None) for tid in tids)


def _owner(table: Path) -> int:
    try:
        return table.stat().st_uid
    except OSError:
        return os.getuid()


def _quietly(fn: Callable[[], T]) -> T | None:
    try:
        return fn()
    except KmemdumpError:
        return None


def _file_name(pid: int, start_time: int, reason: str, captured_ns: int) -> str:
    stamp = datetime.fromtimestamp(captured_ns / 1e9, tz=timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"kmemdump-{pid}-{start_time}-{reason}-{stamp}.core"

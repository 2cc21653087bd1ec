"""Copying a target's registered regions out and writing them as an ELF core image.

This is the "upper level firmware" step of the Linux kernel's kmemdump design: read the shared
table, find each entry's start and size, copy it. The target is identified by (pid, start time),
held while its memory is copied (unless told not to) — with ``PTRACE_SEIZE`` and
``PTRACE_INTERRUPT``, which the kernel undoes if the collector dies, or with SIGSTOP and a recovery
record where ptrace is refused — and released afterwards.

A live process's regions are read from its memory. Once it is gone (a death dump), regions the
table flags PERSISTENT are read from its arena file instead (:class:`ArenaMemory`); the others are
recorded as "gone".

Why one module of this size: one dump is one sequence under one hold (snapshot, hold, observe,
walk the object graphs, copy, stacks, release, write), and its steps share the job's state and the
rule of when the target may be let go. The steps that stand alone live in their own modules
(:mod:`.capture`, :mod:`.graphs`, :mod:`.runs`, :mod:`.staging`, :mod:`.corewriter`, :mod:`.imagefile`).
"""

from __future__ import annotations

import gc
import math
import os
import threading
import time
from collections.abc import Callable
from collections.abc import Mapping
from operator import attrgetter

from kmemdump._version import __version__
from kmemdump.collector.authority import Credentials
from kmemdump.collector.authority import ProcessHandle
from kmemdump.collector.authority import check_authority
from kmemdump.collector.authority import check_unchanged
from kmemdump.collector.capture import Capture
from kmemdump.collector.capture import CaptureLevel
from kmemdump.collector.capture import capture_ranges
from kmemdump.collector.capture import merge_ranges
from kmemdump.collector.capture import split_at
from kmemdump.collector.coreshape import ProcessShape
from kmemdump.collector.coreshape import observe
from kmemdump.collector.coreshape import process_notes
from kmemdump.collector.corewriter import CoreWriter
from kmemdump.collector.hold import Hold
from kmemdump.collector.hold import hold
from kmemdump.collector.hold import not_held
from kmemdump.collector.registers import ThreadRegisters
from kmemdump.collector.runs import copy_runs
from kmemdump.collector.runs import plan_runs
from kmemdump.collector.threads import CpuSample
from kmemdump.collector.threads import thread_states
from kmemdump.errors import CollectorBusyError
from kmemdump.errors import CollectorError
from kmemdump.errors import DumpFormatError
from kmemdump.errors import KmemdumpError
from kmemdump.errors import ProcessGoneError
from kmemdump.errors import TableFormatError
from kmemdump.formats.dumpmeta import GRAPH_MAX_BYTES
from kmemdump.formats.dumpmeta import GRAPH_MAX_OBJECTS
from kmemdump.formats.dumpmeta import Death
from kmemdump.formats.dumpmeta import DumpMeta
from kmemdump.formats.dumpmeta import GraphRecord
from kmemdump.formats.dumpmeta import Held
from kmemdump.formats.dumpmeta import Reason
from kmemdump.formats.dumpmeta import RegionRecord
from kmemdump.formats.dumpmeta import Source
from kmemdump.formats.dumpmeta import Status
from kmemdump.formats.dumpmeta import ThreadState
from kmemdump.formats.dumpmeta import encode_meta
from kmemdump.formats.elf import EM_X86_64
from kmemdump.formats.elf import KMD_NOTE_FAULTS
from kmemdump.formats.elf import KMD_NOTE_META
from kmemdump.formats.elf import KMD_NOTE_STACKS
from kmemdump.formats.elf import OWNER_KMEMDUMP
from kmemdump.formats.elf import OWNER_PYCOREINFO
from kmemdump.formats.elf import PYCOREINFO_NOTE
from kmemdump.formats.elf import Note
from kmemdump.formats.elf import prpsinfo_note
from kmemdump.formats.elf import prstatus_note
from kmemdump.formats.elf import siginfo_note
from kmemdump.formats.faults import FaultText
from kmemdump.formats.faults import encode_fault_note
from kmemdump.formats.faults import fault_path_of
from kmemdump.formats.faults import read_fault_file
from kmemdump.formats.kinds import KIND_OBJECT
from kmemdump.formats.table import ACT_LOCK_BYTE
from kmemdump.formats.table import HEADER_SIZE
from kmemdump.formats.table import TableEntry
from kmemdump.formats.table import TableHeader
from kmemdump.formats.table import TableReader
from kmemdump.formats.table import TableSnapshot
from kmemdump.formats.table import lock_byte
from kmemdump.formats.table import open_owned_file
from kmemdump.formats.table import parse_header
from kmemdump.formats.table import parse_table
from kmemdump.formats.table import read_table
from kmemdump.ids import BANNER_ID
from kmemdump.ids import PYCOREINFO_ID
from kmemdump.memory.process import ProcessMemory
from kmemdump.paths import path_name
from kmemdump.procinfo import process_exe
from kmemdump.procinfo import process_start_time
from kmemdump.record import frozen
from kmemdump.record import replace

TYPE_CHECKING = False  # the layout decoder is loaded only to walk object graphs, py-spy's helpers for stacks
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any
    from typing import Protocol

    from kmemdump.collector.staging import StagedImage
    from kmemdump.collector.staging import Staging
    from kmemdump.formats.pycoreinfo import PyCoreInfo

__all__ = ["DumpOptions", "DumpResult", "ExitHold", "acting_on", "dump_target"]

MAX_REGION_DEFAULT = 256 * 1024 * 1024
GRAPH_OBJECTS_DEFAULT = 100_000
GRAPH_BYTES_DEFAULT = 16 * 1024 * 1024
GRAPH_SECONDS_DEFAULT = 2.0


@frozen
class DumpOptions:
    """How to dump: where, how much, and how gently."""

    directory: str | os.PathLike[str]
    budget: int | None = None
    """At most this many bytes of memory per dump: the predefined regions (banner, PYCOREINFO) first,
    then the others in ID order, then the object graphs, until it is spent."""
    max_region: int = MAX_REGION_DEFAULT
    """A single region larger than this is stored only up to this size (status "partial")."""
    compress: bool = False
    stop: bool = True
    """Hold the target still while copying (ptrace stops, else SIGSTOP), so the regions are one
    consistent picture."""
    stacks: bool = True
    capture: CaptureLevel = "regions"
    """What else to store: "regions" adds only the ELF headers of the mapped files; "stacks" also the
    top of each thread's stack and the interpreter's thread states, frames and code objects, so that
    pystack, gdb ``bt`` and ``py-bt`` print every thread's stack (see :mod:`.capture`)."""
    threads: float = 0.005
    """Read each thread's scheduler state before the hold, measuring CPU use over this many seconds
    (0: read the states without measuring; negative: do not read them)."""
    allow_nondumpable: bool = False
    """Dump processes that are not dumpable (set-id, or that cleared the flag) for their owner too."""
    group: int | None = None
    """The group a root collector gives its dumps (the operator's); None: the collector's own."""
    ptrace: bool = True
    """Hold with ptrace where the kernel allows it (else, or when False, with SIGSTOP)."""
    durable: bool = False
    """Write with ``O_DIRECT`` and fsync the file and its directory, so that a dump survives a crash
    of the host once it has its name; else the page cache writes it back at its own pace (see
    :mod:`.corewriter`)."""
    graph_objects: int = GRAPH_OBJECTS_DEFAULT
    """At most this many objects visited in each live object graph (never more than
    :data:`~kmemdump.formats.dumpmeta.GRAPH_MAX_OBJECTS`, what readers decode)."""
    graph_bytes: int = GRAPH_BYTES_DEFAULT
    """At most this many bytes read for all the live object graphs of one dump together."""
    graph_seconds: float = GRAPH_SECONDS_DEFAULT
    """At most this long walking the live object graphs of one dump together (the target is held
    meanwhile): past it no more objects are decoded, and the graphs not begun are skipped."""


@frozen
class ExitHold:
    """A process its caller holds at its exit (``run --trace-exit``'s tracer), and how to let it go.

    The dump calls :attr:`release` as soon as nothing more needs the process: with a :attr:`shadow`
    (a process sharing its memory, :mod:`.shadow`) once its threads and mappings have been looked at,
    the regions being read from the shadow afterwards; without one once the regions are copied into
    :attr:`staging` (memory touched ahead of time; fresh memory without it). The file is written
    after either way.
    """

    release: Callable[[], None]
    since: float | None = None
    """When the hold began (:func:`time.perf_counter`); the metadata's ``hold_ms`` counts from then."""
    staging: Staging | None = None
    shadow: int | None = None
    drop_shadow: Callable[[], None] | None = None
    """Ends the shadow once the regions are read from it (its memory is then released)."""


@frozen
class DumpResult:
    file: str
    """The dump's path (what :attr:`path` is built from)."""
    meta: DumpMeta

    @property
    def path(self) -> Path:
        """The dump's path as a :class:`~pathlib.Path`, built when asked for (the dump itself works on
        ``str`` paths: pathlib with what it imports costs ``dump PID`` milliseconds of start-up)."""
        from pathlib import Path

        return Path(self.file)

    @property
    def stored_bytes(self) -> int:
        return self.meta.stored_bytes


_HELD_TABLE_TRIES = 3
"""Seqlock reads of the table of a held process: it cannot finish an update while held."""
_RUNNING_TABLE_TRIES = 100
"""Seqlock reads of the table of a running process (taken before holding it, as a fallback)."""
_HOLD_CYCLES = 4
"""Times a process held in the middle of a table update is let go and held again before the dump
falls back to the last good snapshot (and says so: ``table_torn``)."""


ACT_WAIT_S = 10.0
"""How long a dump waits for another collector that is dumping the same process."""


def acting_on(
    table: str | os.PathLike[str], pid: int, wait: float = ACT_WAIT_S, dir_fd: int | None = None
) -> _ActingOn:
    """Hold the table's collector lock while dumping: one collector acts on a process at a time.

    An exclusive lock on byte :data:`~kmemdump.formats.table.ACT_LOCK_BYTE` of the table file,
    released when the dump ends (or the collector dies). Another collector dumping the same process
    is waited for up to ``wait`` seconds, then :class:`CollectorBusyError` says who holds it. A table
    that cannot be opened for writing is dumped without the lock (the dump reads it anyway).
    Use it as a context manager (``with acting_on(table, pid): ...``).
    """
    return _ActingOn(table, pid, wait, dir_fd)


class _ActingOn:
    """:func:`acting_on`'s lock: taken on entering, released on leaving (a class rather than a
    generator: ``contextlib`` costs ``dump PID``'s start-up time)."""

    def __init__(self, table: str | os.PathLike[str], pid: int, wait: float, dir_fd: int | None) -> None:
        self._table, self._pid, self._wait, self._dir_fd = table, pid, wait, dir_fd
        self._fd = -1

    def __enter__(self) -> None:
        try:
            fd = open_owned_file(self._table, os.O_RDWR, dir_fd=self._dir_fd)
        except (OSError, KmemdumpError):
            return
        try:
            deadline = time.monotonic() + self._wait
            while not lock_byte(fd, ACT_LOCK_BYTE, exclusive=True):
                if time.monotonic() >= deadline:
                    try:
                        holder: int | str = parse_header(os.pread(fd, HEADER_SIZE, 0)).collector_pid
                    except (KmemdumpError, OSError):
                        holder = "unknown"
                    raise CollectorBusyError(
                        "another collector is dumping this process right now",
                        pid=self._pid,
                        collector_pid=holder or "unknown",
                        table=str(self._table),
                    )
                time.sleep(0.01)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def __exit__(self, *exc_info: object) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)  # releases the lock


_gc_lock = threading.Lock()
_gc_state = [0, False]
"""Pauses under way, and whether the collector ran before the first."""


class _GcPaused:
    """No cyclic garbage collection meanwhile (it resumes after, if it ran before).

    Parsing a table and recording its regions makes tens of thousands of objects that hold no
    cycles, each a few hundred nanoseconds apart: the collector would walk them again and again
    (measured: 0.5 µs of the 3.5 µs a region a dump of 10,000 regions costs). Nested and
    concurrent pauses (several dumps at once) are counted: the last one out resumes it."""

    def __enter__(self) -> None:
        with _gc_lock:
            if _gc_state[0] == 0:
                _gc_state[1] = gc.isenabled()
                gc.disable()
            _gc_state[0] += 1

    def __exit__(self, *exc_info: object) -> None:
        with _gc_lock:
            _gc_state[0] -= 1
            if _gc_state[0] == 0 and _gc_state[1]:
                gc.enable()


def _snapshot(
    table: str | os.PathLike[str], pid: int, start_time: int, *, retries: int, dir_fd: int | None = None
) -> TableSnapshot:
    return _named(read_table(table, retries=retries, dir_fd=dir_fd), table, pid, start_time)


def _running_copy(job: _Job) -> Callable[[], TableSnapshot | None]:
    """A consistent copy of the table taken while the process runs, the fallback for a hold that
    lands in the middle of an update: its bytes now, parsed only if that fallback is needed (a
    table of 10,000 entries costs a parse of about 8 ms, the copy a fraction of one)."""
    try:
        with TableReader(job.table, dir_fd=job.dir_fd) as reader:
            raw = reader.copy(retries=_RUNNING_TABLE_TRIES)
    except (TableFormatError, OSError):
        return lambda: None

    def parse() -> TableSnapshot | None:
        try:
            return _named(parse_table(raw), job.table, job.table_pid, job.start_time)
        except TableFormatError:
            return None

    return parse


def _named(snap: TableSnapshot, table: str | os.PathLike[str], pid: int, start_time: int) -> TableSnapshot:
    """``snap``, if it names the process its file name does."""
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
    table: str | os.PathLike[str],
    *,
    reason: Reason,
    options: DumpOptions,
    snapshot: TableSnapshot | None = None,
    argv: list[str] | None = None,
    exe: str | None = None,
    held: Held = "",
    table_owner: int | None = None,
    dir_fd: int | None = None,
    then_signal: int | None = None,
    death: Death | None = None,
    registers: Mapping[int, ThreadRegisters] | None = None,
    table_pid: int | None = None,
    exit_hold: ExitHold | None = None,
    act_wait: float = ACT_WAIT_S,
    cpu_sample: CpuSample | None = None,
) -> DumpResult:
    """Dump the regions of the process ``(pid, start_time)`` published in ``table``.

    ``table_pid`` is the pid the table names it by, when that differs from ``pid`` (a process in
    another pid namespace: ``pid`` is how this collector sees it, :mod:`.identify`).

    The process is acted on only for its owner: the table file's owner (``table_owner``, else read
    from the file) must be its real uid, and it must be dumpable unless the options allow otherwise
    (:func:`~kmemdump.collector.authority.check_authority`; :class:`ForeignProcessError` before
    anything is read or stopped). The check is made again once the process is held.

    ``snapshot`` is a consistent table read taken earlier (the watcher keeps one): it is used when
    the process froze in the middle of a table update, or died. ``argv``/``exe`` likewise fill in
    for a process that is already gone. ``held`` says that something else already holds the process
    still (``"exit stop"``: a ptrace exit stop); it is then not held again. ``dir_fd`` is the open
    table directory (``table`` is then looked up by name in it). ``then_signal`` is sent to the
    process while it is still held, after the dump is written (the watcher's ``--after-hang``).
    ``death`` says how the process ended, for a death dump: it goes into the metadata,
    ``NT_PRSTATUS.pr_cursig`` and an ``NT_SIGINFO`` note. ``registers`` are threads' registers read
    by whoever holds them (a ptrace tracer); the others' are read here.

    ``exit_hold`` is how to let go a process the caller holds at its exit (``held="exit stop"``):
    it is let go as soon as nothing more needs it, before the file is written (:class:`ExitHold`).

    ``act_wait`` is how long to wait for another collector's dump of the same process
    (:func:`acting_on`); past it, :class:`CollectorBusyError`. The watcher passes 0: whoever can write
    the table can take that lock, and its one loop must not wait on a lock any user can hold.

    ``cpu_sample`` is a window on the threads' CPU use opened earlier (:func:`.threads.sample_cpu`,
    by a caller that had work to do meanwhile): only what is left of ``options.threads`` is waited.
    """
    captured_ns = time.time_ns()
    process: ProcessHandle | None = None
    try:
        process = ProcessHandle.open(pid, start_time)
    except ProcessGoneError:
        if reason != "death":
            raise
    try:
        owner = table_owner if table_owner is not None else _table_owner(table, dir_fd, snapshot)
        creds = None
        before: tuple[Credentials, tuple[int, ...]] | None = None
        if process is not None:
            creds = check_authority(process, owner, allow_nondumpable=options.allow_nondumpable)
            before = (creds, process.image())  # compared again before the dump is kept
            if argv is None:
                argv = _cmdline(process)
            if exe is None:
                exe = process_exe(pid)
        uid = creds.real_uid if creds is not None else owner
        if reason == "death" and death is None:
            death = Death.unknown("the collector learnt nothing of how the process ended")
        args = tuple(argv or ())
        gone = process is None
        job = _Job(
            pid, start_time, table, reason, args, exe, gone, captured_ns, held, uid, dir_fd, death, registers
        )
        job = replace(
            job,
            table_pid=pid if table_pid is None else table_pid,
            memory_pid=exit_hold.shadow or pid if exit_hold is not None else pid,
            before=before,
            cpu_sample=cpu_sample,
        )
        path = os.path.join(options.directory, _file_name(pid, start_time, reason, captured_ns))
        with (
            acting_on(table, pid, wait=act_wait, dir_fd=dir_fd),
            CoreWriter(
                path, compress=options.compress, owner=_dump_owner(uid, options), durable=options.durable
            ) as sink,
        ):
            staged = None
            if exit_hold is not None and exit_hold.shadow is None:
                from kmemdump.collector.staging import Staging  # a death held at its exit only

                staged = (exit_hold.staging or Staging(0)).image()
            try:
                return _dump_into(sink, job, options, snapshot, process, then_signal, staged, exit_hold)
            finally:
                if staged is not None:
                    staged.release()
    except BaseException:
        if exit_hold is not None:  # whatever went wrong, the process is not left held
            exit_hold.release()
            if exit_hold.drop_shadow is not None:
                exit_hold.drop_shadow()
        raise
    finally:
        if process is not None:
            process.close()


@frozen
class _Job:
    """The facts about one dump fixed before copying starts."""

    pid: int
    start_time: int
    table: str | os.PathLike[str]
    reason: Reason
    argv: tuple[str, ...]
    exe: str | None
    gone: bool
    captured_ns: int
    held: Held
    uid: int
    dir_fd: int | None
    death: Death | None
    registers: Mapping[int, ThreadRegisters] | None = None
    table_pid: int = 0
    """The pid the table names the process by (its own pid namespace's)."""
    memory_pid: int = 0
    """Where its regions are read: the process, or its shadow (:mod:`.shadow`)."""
    before: tuple[Credentials, tuple[int, ...]] | None = None
    """The process's ids and program image when it was checked (:func:`check_unchanged`)."""
    cpu_sample: CpuSample | None = None
    """The threads' CPU use sampled earlier: the start of the sampling window (:func:`_threads`)."""


def _table_owner(table: str | os.PathLike[str], dir_fd: int | None, snapshot: TableSnapshot | None) -> int:
    try:
        with TableReader(table, dir_fd=dir_fd) as reader:
            return reader.owner
    except FileNotFoundError:
        if snapshot is None:
            raise CollectorError("the process published no table", path=str(table)) from None
        return os.geteuid()  # the watcher's earlier snapshot of a table removed since (its own)


def _dump_owner(uid: int, options: DumpOptions) -> tuple[int, int] | None:
    """A root collector gives each dump to the process's user and the operator's group (mode 0640)."""
    if os.geteuid() != 0:
        return None
    return uid, options.group if options.group is not None else os.getegid()


def _cmdline(process: ProcessHandle) -> list[str]:
    try:
        raw = process.read(b"cmdline")
    except KmemdumpError:
        return []
    raw = raw.removesuffix(b"\0")
    return [os.fsdecode(arg) for arg in raw.split(b"\0")] if raw else []


def _take_hold(job: _Job, options: DumpOptions, process: ProcessHandle | None) -> Hold:
    if process is None:
        return not_held(job.pid)
    if job.held:
        return not_held(job.pid, job.held)  # someone else holds it (an exit stop)
    if not options.stop:
        return not_held(job.pid)
    return hold(process, records=options.directory, use_ptrace=options.ptrace)


def _held_snapshot(
    job: _Job,
    options: DumpOptions,
    process: ProcessHandle | None,
    fallback: Callable[[], TableSnapshot | None],
) -> tuple[Hold, TableSnapshot, bool]:
    """Hold the process and read its table; returns the hold, the snapshot and whether it is torn.

    A process held in the middle of a table update cannot finish it: it is let go and held again,
    a few times, and then the last good snapshot (``fallback()``) is used (torn). A process that is
    gone, or not held, gets the seqlock's retries instead.
    """
    for cycle in range(_HOLD_CYCLES + 1):
        current = _take_hold(job, options, process)
        tries = _HELD_TABLE_TRIES if current.stopped else _RUNNING_TABLE_TRIES
        try:
            found = _snapshot(job.table, job.table_pid, job.start_time, retries=tries, dir_fd=job.dir_fd)
            return current, found, False
        except TableFormatError:
            if current.method in ("ptrace", "SIGSTOP") and cycle < _HOLD_CYCLES:
                current.release()
                time.sleep(0.001 * (cycle + 1))  # let it finish the update
                continue
            earlier = fallback()
            if earlier is None:
                current.release()
                raise
            return current, earlier, True  # frozen mid-update, or gone: the last good snapshot
        except FileNotFoundError:
            earlier = fallback()
            if earlier is None:
                current.release()
                raise CollectorError(
                    "the process published no table", pid=job.pid, path=str(job.table)
                ) from None
            return current, earlier, False
        except BaseException:
            current.release()
            raise
    raise AssertionError("unreachable")


def _dump_into(  # noqa: PLR0917 - one dump's parts, passed once
    sink: CoreWriter,
    job: _Job,
    options: DumpOptions,
    snapshot: TableSnapshot | None,
    process: ProcessHandle | None,
    then_signal: int | None,
    staged: StagedImage | None = None,
    exit_hold: ExitHold | None = None,
) -> DumpResult:
    pid, start_time, table, reason = job.pid, job.start_time, job.table, job.reason
    held_since = time.perf_counter()
    if exit_hold is not None and exit_hold.since is not None:
        held_since = exit_hold.since
    hold_ms = None
    argv, exe, gone, captured_ns = job.argv, job.exe, job.gone, job.captured_ns
    earlier = snapshot
    fallback: Callable[[], TableSnapshot | None] = lambda: earlier  # noqa: E731
    if snapshot is None and process is not None:
        # on request nobody kept a snapshot: copy the table while it runs, the fallback for a hold mid-update
        fallback = _running_copy(job)
    threads, threads_taken = _threads(job, options)  # before the hold: a held thread looks idle
    with _GcPaused():  # ten thousand entries: see _GcPaused
        current, snapshot, table_torn = _held_snapshot(job, options, process, fallback)
    with current:
        if process is not None and current.method in ("ptrace", "SIGSTOP"):
            # held now: checked again (and once more before the dump is kept, check_unchanged)
            check_authority(process, job.uid, allow_nondumpable=options.allow_nondumpable)
        t0 = time.perf_counter()
        hexversion = snapshot.header.py_hexversion
        into: _Sink = sink if staged is None else staged  # a held process: memory first, the file later
        shape, capture = (None, None) if gone else _observe(job, into, options, hexversion, current)
        if exit_hold is not None and exit_hold.shadow is not None:
            exit_hold.release()  # its memory lives on in its shadow: the process can go now
            hold_ms = round((time.perf_counter() - held_since) * 1000, 3)
        graphs, walked = _walk_graphs(job, snapshot, options)
        avoid = [(address, address + len(data)) for address, data in walked]
        with _GcPaused():
            records, kept, arena_state = _copy(job, snapshot, options, into, avoid)
        for address, data in walked:
            into.add(address, data)
        pycoreinfo = kept.get(PYCOREINFO_ID)
        copy_ms = (time.perf_counter() - t0) * 1000
        gone_now = gone or "gone" in map(_STATUS_OF, records)
        shadow = job.memory_pid not in (0, pid)
        stacks_note, stacks_state = _stacks(
            job.memory_pid or pid,
            options,
            gone_now,
            hexversion,
            shape,
            shadow=shadow,
            dying=job.death.tid if job.death is not None else None,
        )
        if exit_hold is not None:
            if exit_hold.shadow is None:
                exit_hold.release()  # everything that needs the process has been read: let it go
                hold_ms = round((time.perf_counter() - held_since) * 1000, 3)
            elif exit_hold.drop_shadow is not None:
                exit_hold.drop_shadow()  # the regions are copied: its memory can go too
        if staged is not None:
            staged.replay(sink)
        fault = _fault_text(job)
        held: Held = current.method
        header = snapshot.header
        age = (time.monotonic_ns() - header.last_feed_ns) / 1e9 if header.heartbeat else None
        if not argv or exe is None:  # gone before we saw it: the process's own banner says who it was
            banner_argv, banner_exe = _from_banner(kept.get(BANNER_ID))
            argv = argv or tuple(banner_argv)
            exe = exe if exe is not None else banner_exe
        missing = _missing(records, graphs, pycoreinfo)
        meta = DumpMeta(
            reason=reason,
            pid=pid,
            start_time=start_time,
            captured_ns=captured_ns,
            host=os.uname().nodename,  # platform.node(), without platform's regular expressions
            argv=argv,
            exe=exe,
            uid=job.uid,
            py_hexversion=header.py_hexversion,
            regions=tuple(records),
            partial=gone or bool(missing),
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
            hold_ms=hold_ms,
            shadow=shadow,
            collector={"version": __version__, "pid": os.getpid()},
            arena=arena_state,
            death=job.death,
            threads=threads,
            threads_taken=threads_taken,
            capture=options.capture,
            capture_state=_capture_state(options, gone, capture),
            limits="; ".join(shape.limits) if shape is not None else "",
            graphs=tuple(graphs),
            missing=tuple(missing),
        )
        if shape is not None:
            first = job.death.tid if job.death is not None else None  # the crashing thread first
            notes = process_notes(
                shape, cursig=_cursig(job.death), siginfo=_siginfo(job.death), first_tid=first
            )
        else:  # gone: what the table and the watcher knew of it
            signo = _cursig(job.death)
            siginfo = _siginfo(job.death)
            name = path_name(exe or (argv or ("?",))[0])
            notes = [
                prstatus_note(pid, cursig=signo),
                prpsinfo_note(pid, name, " ".join(argv), "X", uid=job.uid),
                *([siginfo] if siginfo is not None else []),
            ]
        notes.append(Note(OWNER_KMEMDUMP, KMD_NOTE_META, encode_meta(meta)))
        if pycoreinfo is not None:
            notes.append(Note(OWNER_PYCOREINFO, PYCOREINFO_NOTE, pycoreinfo))
        if stacks_note is not None:
            notes.append(Note(OWNER_KMEMDUMP, KMD_NOTE_STACKS, stacks_note))
        if fault is not None:
            notes.append(Note(OWNER_KMEMDUMP, KMD_NOTE_FAULTS, encode_fault_note(fault)))
        if process is not None and job.before is not None and current.method != "exit stop":
            # nothing is kept of a process that became another program (or another user's) meanwhile
            check_unchanged(process, job.before, held_by_ptrace=current.method == "ptrace")
        result = DumpResult(sink.finish(notes), meta)
        if then_signal is not None and process is not None:
            # still held: the process that was dumped is the one signalled, and it cannot have
            # become another user's meanwhile
            import signal  # the watcher's --after-hang only

            process.send_signal(then_signal)
            if current.method == "SIGSTOP" and then_signal != signal.SIGKILL:
                process.send_signal(signal.SIGCONT)  # a stopped process must run to take it
    return result


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
    job: _Job, sink: _Sink, options: DumpOptions, hexversion: int, held: Hold
) -> tuple[ProcessShape | None, Capture | None]:
    """The target's threads, registers, mappings and modules (see :mod:`.coreshape`), with the
    modules' ELF headers and what the capture level adds stored; (None, None) when the process
    cannot be looked at (gone, refused). The registers of threads ``held`` in a ptrace stop are
    read whole (this thread took the hold, as the kernel requires)."""
    stopped = [tid for tid in held.tids if held.ptrace_stopped(tid)]
    try:
        with ProcessMemory(job.pid) as mem:
            shape = observe(job.pid, mem, registers=job.registers, ptrace_stopped=stopped)
            capture = capture_ranges(options.capture, shape, mem, hexversion=hexversion)
            ranges = merge_ranges([(a, len(data)) for a, data in shape.headers] + list(capture.ranges))
            ranges = split_at(ranges, (address for address, _ in shape.headers))  # elfutils finds them
            for (address, _), data in zip(ranges, mem.read_many(ranges), strict=True):
                if data:
                    sink.add(address, capture.blank(address, data))  # no environment strings
    except KmemdumpError:
        return None, None
    return shape, capture


def _fault_text(job: _Job) -> FaultText | None:
    """What faulthandler wrote into the file beside the table (``init(faulthandler=True)``), if any.

    Read as the arena is (no link, the table's owner, by name in the table's directory when it is
    open), bounded (its last 256 KiB); a file that cannot be read is left out of the dump.
    """
    try:
        return read_fault_file(fault_path_of(job.table), owner=job.uid, dir_fd=job.dir_fd)
    except (KmemdumpError, OSError):
        return None


def _capture_state(options: DumpOptions, gone: bool, capture: Capture | None) -> str:
    if options.capture == "regions":
        return "ok"
    if capture is None:
        return "process gone" if gone else "the process could not be looked at"
    return "; ".join(capture.problems) or "ok"


_KEEP = (BANNER_ID, PYCOREINFO_ID)
"""Regions whose bytes the collector reads itself: the banner (who the process was) and the layout."""


def _copy(
    job: _Job,
    snapshot: TableSnapshot,
    options: DumpOptions,
    sink: _Sink,
    avoid: list[tuple[int, int]],
) -> tuple[list[RegionRecord], dict[int, bytes], str]:
    """Copy every entry (within the budget) into ``sink``; describe what was stored.

    The predefined regions go first (the budget is spent on the banner and the Python layout before
    anything else), then the others in ID order.

    Small regions are read many per system call and stored in runs (:mod:`.runs`); a large one is
    read in chunks straight into the writer's buffer, so memory use stays small whatever the dump's
    size.
    What the process could not give (it is gone, or went during the copy) comes from the arena
    when the region is persistent.
    Returns the records (in ID order), the bytes of the banner and the PYCOREINFO when they were
    copied whole, and the arena's state.
    """
    pid, gone = job.pid, job.gone
    planned, skipped = _plan(snapshot, options)
    records = [_record(entry, 0, "skipped", source=_source(entry, gone)) for entry in skipped]
    kept: dict[int, bytes] = {}
    copied: set[int] = set()
    error = "process gone before the copy"
    if not gone and planned:
        try:
            with ProcessMemory(job.memory_pid or pid) as mem:
                large = [item for item in planned if _alone(item)]
                small = [item for item in planned if not _alone(item)] if large else planned
                copy_runs(mem, plan_runs(small, avoid), sink.add, records, copied, kept=kept)
                for entry, size in large:
                    stored = _copy_large(mem, entry.address, size, sink)
                    records.append(_record(entry, stored, _status(stored, entry.size)))
                    copied.add(entry.id)
        except ProcessGoneError as err:
            error = f"process gone during the copy: {err}"
    left = [item for item in planned if item[0].id not in copied] if len(copied) < len(planned) else []
    records.extend(_record(entry, 0, "gone", error) for entry, _ in left if not entry.persistent)
    persistent = [(entry, size) for entry, size in left if entry.persistent]
    header = snapshot.header
    arena_state = "unused" if header.arena_size else "none"
    if persistent:
        saved, arena_state = _copy_from_arena(job, header, persistent, sink, kept)
        records.extend(saved)
    records.sort(key=_ID_OF)
    return records, kept, arena_state


def _plan(
    snapshot: TableSnapshot, options: DumpOptions
) -> tuple[list[tuple[TableEntry, int]], list[TableEntry]]:
    """The entries to copy (with how many bytes of each) and those the budget leaves out: the
    predefined regions first, then the others in ID order, while the budget lasts.

    The predefined IDs are those below :data:`~kmemdump.ids.USER_START`, so that order is the IDs' own."""
    entries = sorted(snapshot.entries, key=_ID_OF)  # a snapshot's are in ID order already: one pass
    limit = options.max_region
    sizes = [size if size <= limit else limit for size in map(_SIZE_OF, entries)]
    if options.budget is None or sum(sizes) <= options.budget:
        return list(zip(entries, sizes, strict=True)), []
    planned: list[tuple[TableEntry, int]] = []
    skipped: list[TableEntry] = []
    spent = 0
    for entry, size in zip(entries, sizes, strict=True):
        if spent + size > options.budget:
            skipped.append(entry)
            continue
        spent += size
        planned.append((entry, size))
    return planned, skipped


_ID_OF = attrgetter("id")
_SIZE_OF = attrgetter("size")
_STATUS_OF = attrgetter("status")
_KIND_OF = attrgetter("kind")


def _copy_from_arena(
    job: _Job,
    header: TableHeader,
    planned: list[tuple[TableEntry, int]],
    sink: _Sink,
    kept: dict[int, bytes],
) -> tuple[list[RegionRecord], str]:
    """Copy persistent regions out of the arena file beside the table; returns the records and
    "ok", or why the arena could not be read (then every region is "unreadable" with that reason)."""
    from kmemdump.formats.arena import arena_path_of  # a process gone: its persistent regions
    from kmemdump.memory.arena import ArenaMemory

    path = arena_path_of(job.table)
    try:
        arena = ArenaMemory(
            path,
            header.arena_base,
            header.arena_size,
            pid=job.table_pid,
            start_time=job.start_time,
            owner=job.uid,
        )
    except FileNotFoundError:
        why = f"the arena file {path} is missing"
    except (KmemdumpError, OSError) as err:
        why = f"the arena file was refused: {err}"
    else:
        records: list[RegionRecord] = []
        with arena:
            for entry, size in planned:
                if entry.id in _KEEP and size == entry.size and size <= _CHUNK:
                    try:
                        kept[entry.id] = arena.read(entry.address, size)
                    except (KmemdumpError, OSError):
                        pass
                try:
                    stored = _copy_large(arena, entry.address, size, sink)
                except OSError as err:
                    records.append(_record(entry, 0, "unreadable", f"arena read failed: {err}", "arena"))
                    continue
                short = "" if stored >= size else "the arena file holds fewer bytes than the region"
                records.append(_record(entry, stored, _status(stored, entry.size), short, "arena"))
        return records, "ok"
    return [_record(entry, 0, "unreadable", why, "arena") for entry, _ in planned], why


def _walk_graphs(
    job: _Job, snapshot: TableSnapshot, options: DumpOptions
) -> tuple[list[GraphRecord], list[tuple[int, bytes]]]:
    """Walk every live object-graph root in the held process (:mod:`.graphs`), or say why not.

    Done before the regions are copied: the layout comes from the process's own PYCOREINFO region,
    read first, and the bytes the walks read are returned (merged, in address order) so that the
    copy stores no zero-filled gap over them. The walks share ``options.graph_bytes`` and what the
    budget leaves after the regions, in ID order.
    """
    roots = [entry for entry in snapshot.entries if entry.graph_depth is not None]
    if not roots:
        return [], []
    from kmemdump.collector.graphs import GraphLimits  # with the decoder: only for a process with roots
    from kmemdump.collector.graphs import walk_graph

    planned, _ = _plan(snapshot, options)
    layout = next((item for item in planned if item[0].id == PYCOREINFO_ID), None)
    graphs: list[GraphRecord] = []
    walked: list[tuple[int, bytes]] = []
    left = options.graph_bytes
    deadline = time.monotonic() + max(options.graph_seconds, 0.0)
    if options.budget is not None:
        left = min(left, options.budget - sum(size for _, size in planned))
    try:
        with ProcessMemory(job.memory_pid or job.pid) as mem:
            if job.gone:
                raise ProcessGoneError("gone before the dump began", pid=job.pid)
            info, why = _layout(mem, snapshot, layout)
            for entry in roots:
                if info is None:
                    graphs.append(_unwalked(entry, "unwalkable", why))
                elif left <= 0:
                    graphs.append(_unwalked(entry, "skipped", "the byte budget was spent before this graph"))
                elif time.monotonic() > deadline:
                    why = f"the time limit ({options.graph_seconds:g} s) ran out before this graph"
                    graphs.append(_unwalked(entry, "skipped", why))
                else:
                    objects = min(options.graph_objects, GRAPH_MAX_OBJECTS)  # what any reader decodes
                    limits = GraphLimits(objects, min(left, GRAPH_MAX_BYTES), deadline)
                    graph, segments = walk_graph(mem, entry, info, limits)
                    graphs.append(graph)
                    walked.extend(segments)
                    left -= graph.stored
    except ProcessGoneError:
        done = {g.id for g in graphs}
        why = "the process was gone before its object graphs could be walked (run --trace-exit holds it)"
        graphs.extend(_unwalked(entry, "gone", why) for entry in roots if entry.id not in done)
    return graphs, _merged(walked)


def _layout(
    mem: ProcessMemory, snapshot: TableSnapshot, layout: tuple[TableEntry, int] | None
) -> tuple[PyCoreInfo | None, str]:
    """The process's PYCOREINFO, read from its region now, or why there is none to walk with."""
    if layout is None:
        registered = any(entry.id == PYCOREINFO_ID for entry in snapshot.entries)
        state = "skipped by the budget" if registered else "not registered"
        return None, f"no Python layout to walk with: the PYCOREINFO region was {state}"
    entry, size = layout
    if entry.size > _CHUNK:  # a real one is a few KiB; more would be kept out of the dump's note too
        return (
            None,
            f"no Python layout to walk with: the PYCOREINFO region is {entry.size:,} bytes "
            f"(at most {_CHUNK:,})",
        )
    blob = mem.read_upto(entry.address, size)
    if len(blob) != entry.size:
        return None, "no Python layout to walk with: the PYCOREINFO region could not be read whole"
    from kmemdump.formats.pycoreinfo import PyCoreInfo

    try:
        return PyCoreInfo.decode(blob), ""
    except DumpFormatError as err:
        return None, f"no Python layout to walk with: the PYCOREINFO region is invalid: {err}"


def _merged(segments: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """Segments of several walks merged where they overlap or touch (the same process's bytes)."""
    merged: list[tuple[int, bytearray]] = []
    for address, data in sorted(segments, key=lambda item: item[0]):
        if merged:
            start, held = merged[-1]
            end = start + len(held)
            if address <= end:
                held += data[end - address :]
                continue
        merged.append((address, bytearray(data)))
    return [(address, bytes(data)) for address, data in merged]


def _unwalked(entry: TableEntry, status: str, why: str) -> GraphRecord:
    return GraphRecord(entry.id, entry.name, entry.address, entry.graph_depth or 0, status, error=why)  # type: ignore[arg-type]


def _missing(records: list[RegionRecord], graphs: list[GraphRecord], pycoreinfo: bytes | None) -> list[str]:
    """What the dump lacks, one sentence each (``partial`` is set when anything is listed)."""
    statuses = list(map(_STATUS_OF, records))  # ten thousand records are looked at in C, not in Python
    missing = [
        f"region {r.id} ({r.name}): {r.status}" + (f": {r.error}" if r.error else "")
        for r in ([] if statuses.count("ok") == len(statuses) else records)
        if r.status != "ok"
    ]
    ids = list(map(_ID_OF, records))
    record = records[ids.index(PYCOREINFO_ID)] if PYCOREINFO_ID in ids else None
    objects = KIND_OBJECT in map(_KIND_OF, records)
    if pycoreinfo is None and (record is not None or objects):  # published but lost, or needed
        state = "was not registered" if record is None else f"is {record.status}"
        missing.append(f"the Python layout (PYCOREINFO) {state}: objects cannot be decoded")
    missing.extend(
        f"object graph {g.id} ({g.name}): {g.status}" + (f": {g.error}" if g.error else "")
        for g in graphs
        if g.status != "ok"
    )
    return missing


def _from_banner(banner: bytes | None) -> tuple[list[str], str | None]:
    """argv and executable from the process's banner (``argv:`` and ``executable:`` lines)."""
    if not banner:
        return [], None
    text = banner.split(b"\0", 1)[0].decode("utf-8", errors="replace")
    argv: list[str] = []
    exe: str | None = None
    for line in text.splitlines():
        key, _, value = line.partition(": ")
        if key == "argv" and value and value != "?":
            import shlex

            try:
                argv = shlex.split(value)
            except ValueError:
                argv = value.split()
        elif key == "executable" and value:
            exe = value
    return argv, exe


def _source(entry: TableEntry, gone: bool) -> Source:
    """Where the entry's bytes come from: the arena once the process is gone, if persistent."""
    return "arena" if gone and entry.persistent else "process"


_CHUNK = 4 << 20
"""Most bytes of the PYCOREINFO region the collector keeps (a real one is a few KiB)."""
_ALONE = 64 << 10
"""Regions this large are read on their own straight into the writer's buffer, in pieces of it: the
runs of smaller ones are read many per system call into a buffer of their own, then copied (for a
1 MiB region that buffer and its copy were 0.6 ms of a 1.5 ms copy, measured in a fresh process)."""


if TYPE_CHECKING:

    class _ChunkSource(Protocol):
        def read_into(self, address: int, view: memoryview) -> int: ...

    class _Sink(Protocol):
        """Where copied bytes go: the file (:class:`CoreWriter`) or memory (:class:`StagedImage`)."""

        def begin(self, address: int) -> None: ...
        def space(self, wanted: int) -> memoryview: ...
        def commit(self, count: int) -> None: ...
        def end(self) -> int: ...
        def add(self, address: int, data: Any) -> int: ...


def _alone(item: tuple[TableEntry, int]) -> bool:
    """Whether a planned region is read on its own (:data:`_ALONE`); the banner and the PYCOREINFO,
    whose bytes the collector keeps, go with the runs."""
    return item[1] >= _ALONE and item[0].id not in _KEEP


def _copy_large(mem: _ChunkSource, address: int, size: int, sink: _Sink) -> int:
    """Read the region straight into the sink's buffer, piece by piece; the bytes stored."""
    stored = 0
    sink.begin(address)
    try:
        while stored < size:
            view = sink.space(size - stored)
            try:
                want = view.nbytes
                got = mem.read_into(address + stored, view)
            finally:
                view.release()
            sink.commit(got)
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
    states = thread_states(job.pid, window=options.threads, sample=job.cpu_sample)
    if not states:
        return (), "the threads could not be read"
    try:  # read by pid: still the same process afterwards, so they were all its threads
        same = process_start_time(job.pid) == job.start_time
    except KmemdumpError:
        same = False
    if not same:
        return (), "process gone"
    return states, "before the hold" if options.stop else "while the process ran"


def _stacks(
    pid: int,
    options: DumpOptions,
    gone: bool,
    hexversion: int,
    shape: ProcessShape | None,
    *,
    shadow: bool = False,
    dying: int | None = None,
) -> tuple[bytes | None, str]:
    if not options.stacks:
        return None, "not requested"
    if gone:
        return None, "process gone"
    if not hexversion:  # its table says so: a C program has no Python stacks to read
        return None, "not a Python process"
    from kmemdump.collector.stacks import StacksUnavailable
    from kmemdump.collector.stacks import take_stacks
    from kmemdump.collector.stacks import with_activity
    from kmemdump.collector.stacks import with_native_ids
    from kmemdump.formats.stacks import encode_stacks

    try:
        stacks = take_stacks(pid)
    except StacksUnavailable as err:
        return None, str(err)
    if shape is not None and shape.machine == EM_X86_64:
        # before 3.11 py-spy knows only each thread's pthread_t, which is its fs_base on x86_64
        bases = {
            t.registers.value("fs_base"): t.registers.tid
            for t in shape.threads
            if t.registers.source == "ptrace"
        }
        stacks = with_native_ids(stacks, bases)
        if shadow:  # py-spy read the shadow: each thread's activity from its registers at its exit stop
            stacks = with_activity(stacks, _in_syscall(shape, dying))
    return encode_stacks(stacks), "ok"


def _in_syscall(shape: ProcessShape, dying: int | None) -> dict[int, bool]:
    """Whether each thread held in a ptrace stop was waiting in a system call when the process ended
    (``orig_rax`` is its number; -1 for a thread that entered the kernel by a fault or an interrupt,
    which was running). The thread that ended the process (``dying``: it crashed, called exit or
    abort) was running, whatever call it made last."""
    out = {}
    for thread in shape.threads:
        if thread.registers.source == "ptrace":
            number = thread.registers.value("orig_rax")
            tid = thread.registers.tid
            out[tid] = tid != dying and number < 1 << 63  # -1 is 2**64 - 1 in the unsigned word
    return out


def _file_name(pid: int, start_time: int, reason: str, captured_ns: int) -> str:
    # UTC to the microsecond as datetime.fromtimestamp(captured_ns / 1e9) rounds it (fleet.catalog names
    # the dump's object so), without importing datetime
    fraction, seconds = math.modf(captured_ns / 1e9)
    micro = round(fraction * 1e6)
    if micro >= 1_000_000:
        seconds, micro = seconds + 1, micro - 1_000_000
    stamp = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(int(seconds)))}.{micro:06d}Z"
    return f"kmemdump-{pid}-{start_time}-{reason}-{stamp}.core"

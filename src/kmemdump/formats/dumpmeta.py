"""The dump's metadata: the JSON carried by the ``KMEMDUMP`` note (type ``0x4B4D0001``).

Written by the collector, read by the inspector; both go through this module. The note is plain
UTF-8 JSON so ``readelf -n`` users and other languages can read it; see ``docs/dump-format.md``.
Format v1 lists the regions as JSON objects; v2, written for dumps of more than
:data:`~kmemdump.formats.regiontable.INLINE_LIMIT` regions, packs them instead
(:mod:`kmemdump.formats.regiontable`). Both are read.

Why one module of this size: the note is one JSON document, and the writer (:func:`encode_meta`)
and the validating reader (:func:`decode_meta` and its per-record checks) must agree on every key,
type and bound of it; each record's dataclass sits beside the code that writes and checks it, so a
field added to one is seen missing from the other two.
"""

from __future__ import annotations

from itertools import repeat
from operator import attrgetter

from kmemdump.errors import DumpFormatError
from kmemdump.formats import jsonscan
from kmemdump.formats.jsonwrite import dumps
from kmemdump.formats.regiontable import INLINE_LIMIT
from kmemdump.formats.regiontable import pack_columns
from kmemdump.formats.regiontable import unpack_regions
from kmemdump.record import asdict
from kmemdump.record import field
from kmemdump.record import fields
from kmemdump.record import frozen
from kmemdump.record import setters

TYPE_CHECKING = False  # typing is not imported at run time (it costs the command line milliseconds)
if TYPE_CHECKING:
    from collections.abc import Iterable
    from collections.abc import Sequence
    from typing import Any
    from typing import Literal

__all__ = [
    "DEATH_SOURCES",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "GRAPH_MAX_BYTES",
    "GRAPH_MAX_OBJECTS",
    "GRAPH_STATUSES",
    "HELD",
    "REASONS",
    "SOURCES",
    "STATUSES",
    "Death",
    "DeathSource",
    "DumpMeta",
    "GraphRecord",
    "GraphStatus",
    "Held",
    "Reason",
    "RegionRecord",
    "Source",
    "Status",
    "ThreadState",
    "decode_meta",
    "encode_meta",
    "region_record",
    "region_records",
    "signal_name",
]

FORMAT_NAME = "kmemdump-dump"
FORMAT_VERSION = 2
"""The newest metadata format this module reads and writes (v2: regions may be packed)."""
_VERSIONS = (1, 2)
if TYPE_CHECKING:
    Reason = Literal["hang", "death", "request"]
    Status = Literal["ok", "partial", "unreadable", "skipped", "gone"]
    Source = Literal["process", "arena"]
    Held = Literal["", "ptrace", "SIGSTOP", "exit stop"]
    DeathSource = Literal["exit stop", "wait status", "proc stat", "proc connector", ""]
    GraphStatus = Literal["ok", "partial", "gone", "skipped", "unwalkable"]
else:  # at run time each is a str; the tuples below list their values
    Reason = Status = Source = Held = DeathSource = GraphStatus = str
REASONS: tuple[Reason, ...] = ("hang", "death", "request")
"""Why the dump was taken (:data:`Reason`): a missed heartbeat, the end of the process, or someone asked."""
STATUSES: tuple[Status, ...] = ("ok", "partial", "unreadable", "skipped", "gone")
"""Per region (:data:`Status`): all bytes stored; a readable prefix stored; nothing readable; left out by
the byte budget; the process vanished before the region could be read."""
SOURCES: tuple[Source, ...] = ("process", "arena")
"""Where a region's bytes were (or would have been) read (:data:`Source`): the live process's memory, or
the persistent arena file it left behind."""
HELD: tuple[Held, ...] = ("", "ptrace", "SIGSTOP", "exit stop")
"""How the target was held while it was copied (:data:`Held`): not at all, in ptrace stops (a hold the
kernel undoes if the collector dies), by SIGSTOP (where ptrace is refused), or at its ptrace exit stop."""
DEATH_SOURCES: tuple[DeathSource, ...] = ("exit stop", "wait status", "proc stat", "proc connector", "")
"""Where the collector learnt how the process ended (:data:`DeathSource`): its ptrace exit stop (``run
--trace-exit``), the wait status its parent got (``run``), ``/proc/PID/stat`` of the zombie, the kernel's
process-events connector (a root ``watch``), or nowhere (""; the cause is unknown)."""
GRAPH_STATUSES: tuple[GraphStatus, ...] = ("ok", "partial", "gone", "skipped", "unwalkable")
"""Per object graph (:data:`GraphStatus`): walked whole; walked, with pieces left out (its bounds,
unreadable or implausible memory); not walked because the process was gone, because the byte budget was
spent, or because the Python layout (PYCOREINFO) was missing."""
GRAPH_MAX_OBJECTS = 250_000
GRAPH_MAX_BYTES = 64 * 1024 * 1024
"""The most one graph walk visits and reads, whatever the collector is asked for: a reader decodes a
root with its graph record's bounds (which a dump may lie about) but never past these."""


@frozen
class RegionRecord:
    """One table entry as the collector found it, and what it stored of it."""

    id: int
    name: str
    kind: int
    address: int
    size: int
    stored: int
    status: Status
    error: str = ""
    source: Source = "process"
    """One of :data:`SOURCES`; dumps written before persistent regions existed say nothing (process)."""


_RECORD_FIELDS = setters(RegionRecord)


def region_record(  # noqa: PLR0917 - the dataclass's fields, in order
    id: int,
    name: str,
    kind: int,
    address: int,
    size: int,
    stored: int,
    status: Status,
    error: str = "",
    source: Source = "process",
) -> RegionRecord:
    """``RegionRecord(...)`` at half the cost of the frozen dataclass's ``__init__`` (which sets each
    field through ``object.__setattr__`` by name), for the collector's loop over thousands of
    regions. The same object: the slots are set through their own descriptors."""
    record: RegionRecord = object.__new__(RegionRecord)
    set_id, set_name, set_kind, set_address, set_size, set_stored, set_status, set_error, set_source = (
        _RECORD_FIELDS
    )
    set_id(record, id)
    set_name(record, name)
    set_kind(record, kind)
    set_address(record, address)
    set_size(record, size)
    set_stored(record, stored)
    set_status(record, status)
    set_error(record, error)
    set_source(record, source)
    return record


def region_records(  # noqa: PLR0917 - the dataclass's fields, in order
    ids: Sequence[int],
    names: Iterable[str],
    kinds: Iterable[int],
    addresses: Iterable[int],
    sizes: Iterable[int],
    stored: Iterable[int],
    statuses: Iterable[Status],
    errors: Iterable[str],
    sources: Iterable[Source],
) -> list[RegionRecord]:
    """A record per element of the columns (one per field, as long as ``ids``): what
    :func:`region_record` makes, field by field over the whole list at C speed, for the dump of
    tens of thousands of regions (about a third of a microsecond a record)."""
    records: list[RegionRecord] = list(map(object.__new__, repeat(RegionRecord, len(ids))))
    columns = (ids, names, kinds, addresses, sizes, stored, statuses, errors, sources)
    for set_field, column in zip(_RECORD_FIELDS, columns, strict=True):
        any(map(set_field, records, column))  # each returns None: runs over the whole column
    return records


@frozen
class GraphRecord:
    """A live object graph (a root published with its depth), as the collector walked it at dump time.

    The bytes the walk read are stored as segments of the dump; decoding the root from the dump with
    the same bounds (``depth``, ``max_objects``, ``max_bytes``, checked mode) reads exactly them.
    """

    id: int
    name: str
    address: int
    depth: int
    status: GraphStatus
    objects: int = 0
    """Objects visited."""
    stored: int = 0
    """Bytes of the walk stored in the dump."""
    max_objects: int = 0
    max_bytes: int = 0
    error: str = ""
    """Why it was not walked, or what was left out (the first piece, and how many)."""


# si_code values worth a word (<asm-generic/siginfo.h>): who sent a signal, or what fault raised it.
# The fault signals by number (SIGSEGV 11, SIGBUS 7, SIGFPE 8, SIGILL 4 on x86_64 and aarch64 alike): the
# signal module builds its enums on import, which readers of a dump need only to name a signal.
_SENDERS: dict[int, str] = {0: "kill()", -1: "sigqueue()", -6: "tkill()/tgkill()"}
_SI_KERNEL = 0x80
_FAULTS: dict[int, dict[int, str]] = {
    11: {1: "SEGV_MAPERR: address not mapped", 2: "SEGV_ACCERR: no permission"},
    7: {1: "BUS_ADRALN: misaligned", 2: "BUS_ADRERR: no such address", 3: "BUS_OBJERR"},
    8: {1: "FPE_INTDIV: integer divide by zero", 2: "FPE_INTOVF", 3: "FPE_FLTDIV"},
    4: {1: "ILL_ILLOPC: illegal opcode", 2: "ILL_ILLOPN", 4: "ILL_ILLTRP"},
}


def signal_name(number: int) -> str:
    """``SIGSEGV`` for 11; ``SIGRTMIN+3`` and ``signal 70`` for the others."""
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        low, high = int(signal.SIGRTMIN), int(signal.SIGRTMAX)
        if low <= number <= high:
            return f"SIGRTMIN+{number - low}"
        return f"signal {number}"


@frozen
class Death:
    """How the process ended, as far as the collector could learn it.

    Exactly one of ``exit_code`` and ``signal`` is set when the cause is known; neither when it is
    not (``source`` is then "" and ``detail`` says why). ``si_code``, ``address`` and the sender are
    the ``siginfo`` of the fatal signal, where the kernel gave it (the exit stop under ``run
    --trace-exit``, for a signal that was delivered: SIGKILL never is).
    """

    exit_code: int | None = None
    signal: int | None = None
    signal_name: str = ""
    core_dumped: bool = False
    si_code: int | None = None
    si_errno: int = 0
    address: int | None = None
    """The fault address (``si_addr``) of SIGSEGV, SIGBUS, SIGILL or SIGFPE."""
    sender_pid: int | None = None
    """Who sent the signal (``si_pid``), when it was sent with kill/tkill/sigqueue."""
    sender_uid: int | None = None
    source: DeathSource = ""
    detail: str = ""
    tid: int | None = None
    """The thread that took the fatal signal, or called ``exit`` (its ``NT_PRSTATUS`` comes first)."""
    late: tuple[int, ...] = ()
    """Threads that had not reached their exit stop when the dump was taken (not held: their
    registers are what ``/proc`` gave, the stack and program counters of a blocked thread, or none)."""

    @property
    def known(self) -> bool:
        return self.exit_code is not None or self.signal is not None

    @classmethod
    def from_wait_status(cls, status: int, source: DeathSource, **siginfo: Any) -> Death:
        """From a wait status (``os.waitpid`` form, or ``/proc/PID/stat``'s ``exit_code``)."""
        if (status & 0x7F) == 0:
            return cls(exit_code=(status >> 8) & 0xFF, source=source)
        number = status & 0x7F
        core = bool(status & 0x80)
        return cls(signal=number, signal_name=signal_name(number), core_dumped=core, source=source, **siginfo)

    @classmethod
    def unknown(cls, detail: str) -> Death:
        return cls(detail=detail)

    def describe(self) -> str:
        """``exit code 3``, ``killed by SIGSEGV (SEGV_MAPERR: address not mapped, at 0x0)``,
        ``killed by SIGTERM (sent by pid 42, uid 0, with kill())`` or ``unknown (why)``."""
        if self.exit_code is not None:
            return f"exit code {self.exit_code}"
        if self.signal is None:
            return f"unknown ({self.detail})" if self.detail else "unknown"
        facts = []
        code = self.si_code
        if code is not None and code > 0 and code != _SI_KERNEL:
            fault = _FAULTS.get(self.signal, {}).get(code)
            if fault is not None:
                facts.append(fault)
        if self.address is not None:
            facts.append(f"at 0x{self.address:x}")
        if self.sender_pid is not None:
            uid = f", uid {self.sender_uid}" if self.sender_uid is not None else ""
            facts.append(f"sent by pid {self.sender_pid}{uid}, with {_SENDERS.get(code or 0, 'a signal')}")
        elif code == _SI_KERNEL:
            facts.append("sent by the kernel")
        if self.core_dumped:
            facts.append("core dumped")
        name = self.signal_name or signal_name(self.signal)
        return f"killed by {name}" + (f" ({', '.join(facts)})" if facts else "")


_FUTEX_WAITS = frozenset({0, 9, 11})  # FUTEX_WAIT, FUTEX_WAIT_BITSET, FUTEX_WAIT_REQUEUE_PI
_FUTEX_LOCK_PI = frozenset({6, 13})  # FUTEX_LOCK_PI, FUTEX_LOCK_PI2
_WAITS = {
    "futex": "waiting on a lock, a condition or a thread join",
    "futex_waitv": "waiting on a lock, a condition or a thread join",
    "poll": "waiting for I/O",
    "ppoll": "waiting for I/O",
    "select": "waiting for I/O",
    "pselect6": "waiting for I/O",
    "epoll_wait": "waiting for I/O",
    "epoll_pwait": "waiting for I/O",
    "epoll_pwait2": "waiting for I/O",
    "read": "reading",
    "recvfrom": "waiting for data",
    "recvmsg": "waiting for data",
    "accept": "waiting for a connection",
    "accept4": "waiting for a connection",
    "connect": "connecting",
    "nanosleep": "sleeping (time.sleep)",
    "clock_nanosleep": "sleeping (time.sleep)",
    "wait4": "waiting for a child process",
    "waitid": "waiting for a child process",
    "flock": "waiting for a file lock",
    "fcntl": "waiting for a file lock",
}
_STATES = {
    "R": "running",
    "S": "sleeping",
    "D": "in uninterruptible wait",
    "T": "stopped",
    "t": "stopped by a tracer",
    "Z": "a zombie",
    "X": "dead",
    "I": "idle",
}


@frozen
class ThreadState:
    """One thread as the collector saw it just before it held the process (``/proc/PID/task/TID``)."""

    tid: int
    name: str
    """The thread's ``comm`` (what ``ps -L`` shows; Python names threads there only from 3.14)."""
    state: str
    """The state letter: R running, S sleeping, D uninterruptible, T stopped …"""
    wchan: str = ""
    """The kernel function the thread sleeps in ("" when running or unknown)."""
    syscall: int | None = None
    """The system call it is blocked in; -1 blocked outside one; None running in user space (or unknown)."""
    syscall_name: str = ""
    syscall_args: tuple[int, ...] = ()
    cpu_ms: float | None = None
    """Milliseconds on a CPU during the sampling window, when measured."""
    window_ms: float | None = None

    def with_cpu(self, cpu_ms: float, window_ms: float) -> ThreadState:
        return ThreadState(
            self.tid,
            self.name,
            self.state,
            self.wchan,
            self.syscall,
            self.syscall_name,
            self.syscall_args,
            round(cpu_ms, 3),
            round(window_ms, 3),
        )

    @property
    def busy(self) -> bool:
        """On a CPU most of the window (a thread spinning in a loop), or running when not measured."""
        if self.cpu_ms is not None and self.window_ms:
            return self.cpu_ms >= 0.5 * self.window_ms
        return self.state == "R"

    def describe(self) -> str:
        """``running, 19.8 of 20 ms on a CPU`` or ``sleeping in futex: waiting on a lock, … (wchan …)``."""
        cpu = ""
        if self.cpu_ms is not None and self.window_ms:
            cpu = f"{self.cpu_ms:.3g} of {self.window_ms:.3g} ms on a CPU"
        state = _STATES.get(self.state, f"state {self.state}")
        if self.syscall is not None and self.syscall >= 0:
            name = self.syscall_name or f"syscall {self.syscall}"
            what = _WAITS.get(name)
            if name == "futex" and len(self.syscall_args) > 1:
                op = self.syscall_args[1] & 0x7F
                if op in _FUTEX_LOCK_PI:
                    what = "waiting on a lock (priority-inheriting mutex)"
                elif op not in _FUTEX_WAITS:
                    what = None
            text = f"{state} in {name}" + (f": {what}" if what else "")
        else:
            text = state
        extras = [part for part in (f"wchan {self.wchan}" if self.wchan else "", cpu) if part]
        return text + (f" ({', '.join(extras)})" if extras else "")


@frozen
class DumpMeta:
    """Everything the dump says about itself besides the memory."""

    reason: Reason
    pid: int
    start_time: int
    captured_ns: int
    """Wall-clock time of the capture (``time.time_ns()``)."""
    host: str
    argv: tuple[str, ...]
    exe: str | None
    uid: int
    py_hexversion: int
    regions: tuple[RegionRecord, ...]
    partial: bool
    stopped: bool
    """The target was held still while its memory was copied (see ``held``)."""
    held: Held = ""
    """How it was held: "SIGSTOP", "exit stop" (a ptrace exit stop, under ``run --trace-exit``), or ""."""
    heartbeat: int = 0
    heartbeat_age_s: float | None = None
    watchdog_timeout_s: float | None = None
    table: str = ""
    table_torn: bool = False
    """The table was mid-update when the process froze; the last consistent snapshot was used."""
    budget: int | None = None
    stacks: str = "absent"
    """"ok", "absent", or why the Python stacks are missing."""
    copy_ms: float = 0.0
    hold_ms: float | None = None
    """How long the collector held the process for this dump (its exit stop, under ``run
    --trace-exit``), in milliseconds; None where nobody measured it."""
    shadow: bool = False
    """The regions were read, after the process was let go, from its shadow: a process the collector
    made share its memory when the fatal signal was delivered (``run --trace-exit``)."""
    collector: dict[str, Any] = field(default_factory=dict)
    arena: str = "none"
    """The persistent arena: "none" (the table names none), "unused" (the live process was read),
    "ok" (persistent regions were read from it), or why it could not be read."""
    death: Death | None = None
    """How the process ended, in a death dump (None in others, and in dumps of older versions)."""
    threads: tuple[ThreadState, ...] = ()
    """Each thread's scheduler state, read just before the process was held (see ``threads_taken``)."""
    threads_taken: str = ""
    """When ``threads`` were read: "before the hold", or why there are none ("process gone" …)."""
    capture: str = "regions"
    """The capture level: "regions" (regions and ELF headers) or "stacks" (what debuggers need to
    print every thread's stack, see :mod:`kmemdump.collector.capture`)."""
    capture_state: str = "ok"
    """"ok", or what the capture level could not store (one clause each, separated by "; ")."""
    limits: str = ""
    """The bounds on what the collector reads from ``/proc`` per dump that this dump hit ("" when none;
    one clause each, separated by "; "): the mappings read, the mapped files looked at for modules."""
    graphs: tuple[GraphRecord, ...] = ()
    """The live object graphs the producer published, walked (or not) at dump time."""
    missing: tuple[str, ...] = ()
    """One sentence per thing the dump lacks: a region not stored whole (skipped by the budget
    included), the Python layout, an object graph not walked whole. ``partial`` is set when any is."""

    @property
    def stored_bytes(self) -> int:
        """Bytes of memory in the dump: the regions' and the object graphs'."""
        return sum(r.stored for r in self.regions) + sum(g.stored for g in self.graphs)

    @property
    def python_version(self) -> str:
        if not self.py_hexversion:
            return ""
        v = self.py_hexversion
        return f"{v >> 24}.{(v >> 16) & 0xFF}.{(v >> 8) & 0xFF}"


_RECORD_GETTERS = tuple(attrgetter(f.name) for f in fields(RegionRecord))
"""Each field of a region record, in order: the columns of a packed table."""
_PLAIN_FIELDS = tuple(
    f.name
    for f in fields(DumpMeta)
    if f.name not in ("argv", "regions", "death", "threads", "collector", "graphs", "missing")
)


def encode_meta(meta: DumpMeta) -> bytes:
    """The note's bytes. Built field by field (no reflection per region), many regions packed from
    their columns: about half a microsecond a region for a dump of ten thousand."""
    body: dict[str, Any] = {name: getattr(meta, name) for name in _PLAIN_FIELDS}
    body["argv"] = list(meta.argv)
    body["collector"] = dict(meta.collector)
    if meta.death is not None:
        body["death"] = asdict(meta.death)
    body["threads"] = [asdict(t) for t in meta.threads]
    body["graphs"] = [asdict(g) for g in meta.graphs]
    body["missing"] = list(meta.missing)
    regions = meta.regions
    if len(regions) <= INLINE_LIMIT:
        version = 1
        body["regions"] = [
            {
                "id": r.id,
                "name": r.name,
                "kind": r.kind,
                "address": r.address,
                "size": r.size,
                "stored": r.stored,
                "status": r.status,
                "error": r.error,
                "source": r.source,
            }
            for r in regions
        ]
    else:
        version = 2
        body["region_table"] = pack_columns(*(list(map(get, regions)) for get in _RECORD_GETTERS))
    return dumps({"format": FORMAT_NAME, "version": version, **body}, sort_keys=True).encode()


_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "reason": str,
    "pid": int,
    "start_time": int,
    "captured_ns": int,
    "host": str,
    "argv": list,
    "uid": int,
    "py_hexversion": int,
    "partial": bool,
    "stopped": bool,
}
_OPTIONAL: dict[str, type | tuple[type, ...]] = {
    "held": str,
    "exe": (str, type(None)),
    "heartbeat": int,
    "heartbeat_age_s": (int, float, type(None)),
    "watchdog_timeout_s": (int, float, type(None)),
    "table": str,
    "table_torn": bool,
    "budget": (int, type(None)),
    "stacks": str,
    "copy_ms": (int, float),
    "hold_ms": (int, float, type(None)),
    "shadow": bool,
    "collector": dict,
    "arena": str,
    "death": dict,
    "threads": list,
    "threads_taken": str,
    "capture": str,
    "capture_state": str,
    "limits": str,
    "graphs": list,
    "missing": list,
}
_REGION_FIELDS: dict[str, type] = {
    "id": int,
    "name": str,
    "kind": int,
    "address": int,
    "size": int,
    "stored": int,
    "status": str,
    "error": str,
    "source": str,
}
_REGION_DEFAULTS: dict[str, str] = {"error": "", "source": "process"}
"""Region fields a dump may leave out (older dumps have no ``source``)."""


def decode_meta(data: bytes) -> DumpMeta:
    """Parse and check a KMEMDUMP note; anything malformed raises :class:`DumpFormatError`."""
    try:
        body = jsonscan.loads(data.rstrip(b"\0").decode("utf-8"))
    except ValueError as err:  # UnicodeDecodeError, json.JSONDecodeError
        raise DumpFormatError(f"KMEMDUMP note is not valid JSON: {err}") from err
    if not isinstance(body, dict) or body.get("format") != FORMAT_NAME:
        raise DumpFormatError("KMEMDUMP note does not describe a kmemdump dump")
    version = body.get("version")
    if version not in _VERSIONS or isinstance(version, bool):
        raise DumpFormatError(
            "dump metadata version is not supported by this kmemdump",
            version=version,
            supported=", ".join(map(str, _VERSIONS)),
        )
    values: dict[str, Any] = {}
    for key, kind in _REQUIRED.items():
        values[key] = _field(body, key, kind)
    for key, kind in _OPTIONAL.items():
        if key in body:
            values[key] = _field(body, key, kind)
    if values["reason"] not in REASONS:
        raise DumpFormatError("unknown dump reason", reason=values["reason"])
    if values.get("held", "") not in HELD:
        raise DumpFormatError("unknown way of holding the process", held=values["held"])
    values.setdefault("exe", None)  # optional in the note, a field without a default in DumpMeta
    values["argv"] = tuple(str(a) for a in values["argv"])
    values["regions"] = _regions(body, version)
    if "death" in values:
        values["death"] = _death(values["death"])
    if "graphs" in values:
        values["graphs"] = tuple(_graph(g, i) for i, g in enumerate(values["graphs"][:65536]))
    if "missing" in values:
        if not all(isinstance(line, str) for line in values["missing"]):
            raise DumpFormatError("dump metadata field has the wrong type", field="missing")
        values["missing"] = tuple(values["missing"])
    if "threads" in values:
        values["threads"] = tuple(_thread(t, i) for i, t in enumerate(values["threads"][:65536]))
    return DumpMeta(**values)


_U64 = 2**64
_RANGES: dict[str, tuple[float, float]] = {
    "pid": (1, 2**31),
    "start_time": (0, _U64),
    "captured_ns": (0, 253_402_300_800 * 10**9),  # up to the end of year 9999: a date every reader prints
    "uid": (0, 2**32),
    "py_hexversion": (0, 2**32),
    "heartbeat": (0, _U64),
    "heartbeat_age_s": (-1e12, 1e12),
    "watchdog_timeout_s": (0, 1e12),
    "budget": (0, _U64),
    "copy_ms": (0, 1e15),
}
"""``[low, high)`` of each numeric field: a value outside (a hostile or damaged note) is refused, not
passed on to a printer that would fail on it (a date past year 9999, an infinite float)."""
_REGION_RANGES: dict[str, tuple[int, int]] = {
    "id": (0, 2**32),
    "kind": (0, 2**16),
    "address": (0, _U64),
    "size": (0, _U64),
    "stored": (0, _U64),
}


def _field(body: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in body:
        raise DumpFormatError("dump metadata lacks a field", field=key)
    value = body[key]
    bad_bool = isinstance(value, bool) and kind in (int, (int, float, type(None)), (int, float))
    if not isinstance(value, kind) or bad_bool:
        raise DumpFormatError("dump metadata field has the wrong type", field=key)
    bounds = _RANGES.get(key)
    if bounds is not None and isinstance(value, (int, float)) and not bounds[0] <= value < bounds[1]:
        raise DumpFormatError("dump metadata field is out of range", field=key)  # NaN fails too
    return value


_STATUS_OF: dict[str, Status] = {status: status for status in STATUSES}
_SOURCE_OF: dict[str, Source] = {source: source for source in SOURCES}


def _regions(body: dict[str, Any], version: int) -> tuple[RegionRecord, ...]:
    """The region records: a JSON list (v1, and v2 with few regions) or a packed table (v2)."""
    listed, packed = body.get("regions"), body.get("region_table")
    if version == 1 or packed is None:
        if not isinstance(listed, list) or packed is not None:
            raise DumpFormatError("dump metadata lacks its region list", field="regions")
        return tuple(_region(r, i) for i, r in enumerate(listed))
    if listed is not None or not isinstance(packed, str):
        raise DumpFormatError("dump metadata has both or neither region forms", field="region_table")
    records = []
    for index, (rid, name, kind, address, size, stored, status, error, source) in enumerate(
        unpack_regions(packed)
    ):
        if stored and status not in ("ok", "partial"):
            raise DumpFormatError("region record stores bytes its status denies", index=index)
        records.append(
            region_record(
                rid, name, kind, address, size, stored, _STATUS_OF[status], error, _SOURCE_OF[source]
            )
        )
    return tuple(records)


def _region(raw: Any, index: int) -> RegionRecord:
    if not isinstance(raw, dict):
        raise DumpFormatError("region record is not an object", index=index)
    values: dict[str, Any] = {}
    for key, kind in _REGION_FIELDS.items():
        value = raw.get(key, _REGION_DEFAULTS.get(key))
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise DumpFormatError("region record field missing or of the wrong type", index=index, field=key)
        bounds = _REGION_RANGES.get(key)
        if bounds is not None and isinstance(value, int) and not bounds[0] <= value < bounds[1]:
            raise DumpFormatError("region record field is out of range", index=index, field=key)
        values[key] = value
    if values["status"] not in STATUSES:
        raise DumpFormatError("unknown region status", index=index, status=values["status"])
    if values["source"] not in SOURCES:
        raise DumpFormatError("unknown region source", index=index, source=values["source"])
    if values["stored"] < 0 or values["stored"] > values["size"]:
        raise DumpFormatError("region record stores more than its size", index=index)
    return RegionRecord(**values)


_INT_OR_NULL = (int, type(None))
_DEATH_FIELDS: dict[str, type | tuple[type, ...]] = {
    "exit_code": _INT_OR_NULL,
    "signal": _INT_OR_NULL,
    "signal_name": str,
    "core_dumped": bool,
    "si_code": _INT_OR_NULL,
    "si_errno": int,
    "address": _INT_OR_NULL,
    "sender_pid": _INT_OR_NULL,
    "sender_uid": _INT_OR_NULL,
    "source": str,
    "detail": str,
    "tid": _INT_OR_NULL,
    "late": list,
}


def _death(raw: dict[str, Any]) -> Death:
    values: dict[str, Any] = {}
    for key, kind in _DEATH_FIELDS.items():
        if key not in raw:
            continue  # every field has a default: later versions may leave some out
        value = raw[key]
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise DumpFormatError("death record field of the wrong type", field=key)
        values[key] = value
    if values.get("source", "") not in DEATH_SOURCES:
        raise DumpFormatError("unknown source of the death record", source=values["source"])
    if values.get("exit_code") is not None and values.get("signal") is not None:
        raise DumpFormatError("death record names both an exit code and a signal")
    for key, low, high in (("exit_code", 0, 255), ("signal", 1, 127)):
        value = values.get(key)
        if value is not None and not low <= value <= high:
            raise DumpFormatError("death record field out of range", field=key, value=value)
    late = values.get("late", [])
    if len(late) > 1 << 16 or not all(isinstance(t, int) and not isinstance(t, bool) for t in late):
        raise DumpFormatError("death record has malformed late threads")
    values["late"] = tuple(late)
    return Death(**values)


_THREAD_FIELDS: dict[str, type | tuple[type, ...]] = {
    "tid": int,
    "name": str,
    "state": str,
    "wchan": str,
    "syscall": _INT_OR_NULL,
    "syscall_name": str,
    "syscall_args": list,
    "cpu_ms": (int, float, type(None)),
    "window_ms": (int, float, type(None)),
}


def _thread(raw: Any, index: int) -> ThreadState:
    if not isinstance(raw, dict):
        raise DumpFormatError("thread record is not an object", index=index)
    values: dict[str, Any] = {}
    for key, kind in _THREAD_FIELDS.items():
        if key not in raw:
            if key in ("tid", "name", "state"):
                raise DumpFormatError("thread record lacks a field", index=index, field=key)
            continue
        value = raw[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise DumpFormatError("thread record field of the wrong type", index=index, field=key)
        values[key] = value
    args = values.get("syscall_args", [])
    if len(args) > 6 or not all(isinstance(a, int) and not isinstance(a, bool) for a in args):
        raise DumpFormatError("thread record has malformed system call arguments", index=index)
    values["syscall_args"] = tuple(args)
    return ThreadState(**values)


_GRAPH_FIELDS: dict[str, type] = {
    "id": int,
    "name": str,
    "address": int,
    "depth": int,
    "status": str,
    "objects": int,
    "stored": int,
    "max_objects": int,
    "max_bytes": int,
    "error": str,
}
_GRAPH_REQUIRED = ("id", "name", "address", "depth", "status")


def _graph(raw: Any, index: int) -> GraphRecord:
    if not isinstance(raw, dict):
        raise DumpFormatError("graph record is not an object", index=index)
    values: dict[str, Any] = {}
    for key, kind in _GRAPH_FIELDS.items():
        if key not in raw:
            if key in _GRAPH_REQUIRED:
                raise DumpFormatError("graph record lacks a field", index=index, field=key)
            continue
        value = raw[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise DumpFormatError("graph record field of the wrong type", index=index, field=key)
        if isinstance(value, int) and value < 0:
            raise DumpFormatError("graph record field is negative", index=index, field=key)
        values[key] = value
    if values["status"] not in GRAPH_STATUSES:
        raise DumpFormatError("unknown object graph status", index=index, status=values["status"])
    return GraphRecord(**values)

"""The shared table, format v1: its layout, a writer over a buffer, and a validating reader.

A producer publishes the regions it registered in one file per process; an outside reader (the
collector) copies the file with ``pread`` and trusts nothing in it. ``docs/formats.md`` describes
the bytes for programs in other languages. Little-endian throughout; every layout is a
:class:`struct.Struct` built once at import.

Writers change entries under a seqlock: ``generation`` becomes odd, the entry and ``count`` are
written, ``generation`` becomes even again. A reader copies the table between two reads of an
even, unchanged generation. Header words that change while readers look are stored whole (see
:class:`TableWriter`). The Python writer relies on its stores reaching memory in program order,
which x86-64 (TSO) guarantees; see the format notes for writers on weakly ordered CPUs.

Standard library only: the producer imports this module.

Why one module of this size: the layout, the writer and the reader must agree byte for byte, and
the offsets they share are module constants; kept together, a change to one is seen beside the
other two (as pyelftools keeps one format's structs, writer-side helpers and parser together).
"""

from __future__ import annotations

import errno
import itertools
import mmap
import os
import stat
import struct
import sys
import time
from collections import deque
from collections.abc import Callable
from collections.abc import Iterable
from operator import add
from operator import itemgetter
from operator import not_

from kmemdump.errors import ForeignTableError
from kmemdump.errors import InvalidRegionError
from kmemdump.errors import TableFormatError
from kmemdump.formats.kinds import FLAG_PERSISTENT
from kmemdump.formats.kinds import GRAPH_DEPTH_MASK
from kmemdump.formats.kinds import GRAPH_ROOT
from kmemdump.formats.kinds import KIND_OBJECT
from kmemdump.formats.kinds import KINDS
from kmemdump.formats.kinds import MAX_GRAPH_DEPTH
from kmemdump.formats.kinds import NAME_MAX
from kmemdump.record import frozen
from kmemdump.record import setters

TYPE_CHECKING = False  # typing for mypy only: the producer and the command line start faster without it
if TYPE_CHECKING:
    from typing import Any
    from typing import Final
    from typing import NamedTuple

__all__ = [
    "ACT_LOCK_BYTE",
    "DIR_PREFIX",
    "ENTRY_ADDRESS",
    "ENTRY_FLAGS",
    "ENTRY_GRAPH",
    "ENTRY_ID",
    "ENTRY_KIND",
    "ENTRY_NAME",
    "ENTRY_SIZE",
    "ENTRY_SIZE_FIELD",
    "ENTRY_STRUCT",
    "ENTRY_VALID",
    "FEED_STRUCT",
    "FEED_TICK_MASK",
    "FLAG_FEEDER",
    "FLAG_LIVE_LOCK",
    "HEADER_SIZE",
    "HEADER_STRUCT",
    "KNOWN_ENTRY_FLAGS",
    "KNOWN_HEADER_FLAGS",
    "LIVE_LOCK_BYTE",
    "MAGIC",
    "MAX_CAPACITY",
    "NAME_SIZE",
    "OFF_ARENA_BASE",
    "OFF_ARENA_SIZE",
    "OFF_CAPACITY",
    "OFF_COLLECTOR_PID",
    "OFF_COUNT",
    "OFF_CREATED_NS",
    "OFF_ENTRY_SIZE",
    "OFF_FLAGS",
    "OFF_GENERATION",
    "OFF_HEADER_SIZE",
    "OFF_HEARTBEAT",
    "OFF_LAST_FEED_NS",
    "OFF_MAGIC",
    "OFF_PID",
    "OFF_PIDNS_DEV",
    "OFF_PIDNS_INO",
    "OFF_PY_HEXVERSION",
    "OFF_START_TIME",
    "OFF_STATE",
    "OFF_VERSION",
    "OFF_WATCHDOG_TIMEOUT_NS",
    "STATES",
    "STATE_EXITING",
    "STATE_RUNNING",
    "STATE_STARTING",
    "TABLE_SUFFIX",
    "VALID",
    "VERSION",
    "ReadableBuffer",
    "TableBeat",
    "TableEntry",
    "TableHeader",
    "TableReader",
    "TableSnapshot",
    "TableWriter",
    "WritableBuffer",
    "default_dir",
    "lock_byte",
    "lock_held",
    "make_feed",
    "open_owned_file",
    "parse_dir_name",
    "parse_file_name",
    "parse_header",
    "parse_table",
    "read_table",
    "table_path",
    "table_size",
    "unlock_byte",
    "write_collector_pid",
]

ReadableBuffer = bytes | bytearray | memoryview | mmap.mmap
"""What the parsers accept: any byte buffer (a ``memoryview`` must have format ``B``)."""
WritableBuffer = bytearray | memoryview | mmap.mmap
"""What :class:`TableWriter` writes into."""

# --- constants -------------------------------------------------------------------------------

MAGIC: Final = b"KMDTABLE"
VERSION: Final = 1
HEADER_SIZE: Final = 128
ENTRY_SIZE: Final = 64
MAX_CAPACITY: Final = 65536
VALID: Final = 0x56414C49
"""The live-entry marker, ``'VALI'`` read as a little-endian u32 (as in the Qualcomm minidump table)."""
NAME_SIZE: Final = 32
TABLE_SUFFIX: Final = ".table"
FEED_TICK_MASK: Final = 1023
"""A feed whose counter has these bits clear (every 1024th) runs the writer's ``on_tick`` hook."""

# Header field offsets.
OFF_MAGIC: Final = 0
OFF_VERSION: Final = 8
OFF_HEADER_SIZE: Final = 10
OFF_ENTRY_SIZE: Final = 12
OFF_FLAGS: Final = 14
OFF_CAPACITY: Final = 16
OFF_PID: Final = 20
OFF_START_TIME: Final = 24
OFF_PY_HEXVERSION: Final = 32
OFF_STATE: Final = 36
OFF_GENERATION: Final = 40
OFF_HEARTBEAT: Final = 48
OFF_LAST_FEED_NS: Final = 56
OFF_WATCHDOG_TIMEOUT_NS: Final = 64
OFF_COLLECTOR_PID: Final = 72
OFF_COUNT: Final = 76
OFF_CREATED_NS: Final = 80
OFF_ARENA_BASE: Final = 88
OFF_ARENA_SIZE: Final = 96
OFF_PIDNS_INO: Final = 104
OFF_PIDNS_DEV: Final = 112

# Header flags (the u16 at OFF_FLAGS; v1 readers before these were defined ignore the field).
FLAG_LIVE_LOCK: Final = 1
"""The producer holds a shared lock on byte :data:`LIVE_LOCK_BYTE` of the file for as long as it lives."""
FLAG_FEEDER: Final = 2
"""The heartbeat comes from a background feeder thread, not from the program's own loop."""
KNOWN_HEADER_FLAGS: Final = FLAG_LIVE_LOCK | FLAG_FEEDER
LIVE_LOCK_BYTE: Final = 0
"""Byte of the table file the producer locks (shared, an open-file-description lock) while it lives."""
ACT_LOCK_BYTE: Final = 1
"""Byte of the table file a collector locks (exclusive) while it holds and copies the process."""

# Entry field offsets, relative to the start of the entry.
ENTRY_NAME: Final = 0
ENTRY_ID: Final = 32
ENTRY_VALID: Final = 36
ENTRY_ADDRESS: Final = 40
ENTRY_SIZE_FIELD: Final = 48
ENTRY_KIND: Final = 56
ENTRY_FLAGS: Final = 58
ENTRY_GRAPH: Final = 60

HEADER_STRUCT: Final = struct.Struct("<8sHHHHIIQIIQQQQIIQQQQQ8x")
"""magic, version, header_size, entry_size, flags, capacity, pid, start_time, py_hexversion, state,
generation, heartbeat, last_feed_ns, watchdog_timeout_ns, collector_pid, count, created_ns,
arena_base, arena_size, pidns_ino, pidns_dev."""
ENTRY_STRUCT: Final = struct.Struct("<32sIIQQHHI")
"""name, id, valid, address, size, kind, flags, graph (``reserved`` before object graphs: v1 readers
ignore it, so the word is compatible both ways)."""
FEED_STRUCT: Final = struct.Struct("<QQ")
"""heartbeat, last_feed_ns (for readers; the writer stores them one word at a time)."""

_U64: Final = struct.Struct("<Q")
_U32: Final = struct.Struct("<I")
_U32_MAX: Final = 2**32 - 1
_U64_MAX: Final = 2**64 - 1
_ADDRESS_LIMIT: Final = 2**64
_FREE_FIELDS: Final = (bytes(NAME_SIZE), 0, 0, 0, 0, 0, 0, 0)
KNOWN_ENTRY_FLAGS: Final = FLAG_PERSISTENT
"""Every entry flag bit this format version defines; a reader rejects any other."""
_PERSISTENT: Final = FLAG_PERSISTENT
_OBJECT: Final = KIND_OBJECT
_KINDS: Final = KINDS
_KIND_LIMIT: Final = max(_KINDS) + 1
_KIND_OK: Final = bytes(1 if value in _KINDS else 0 for value in range(_KIND_LIMIT))
"""Indexed by kind: a check at C speed."""
_pack_entry: Final = ENTRY_STRUCT.pack_into
_zero_entry: Final = struct.Struct(f"{ENTRY_SIZE}x").pack_into
"""Writes 64 zero bytes (pack_into zero-fills a struct's padding)."""

# Indexes of the header words the writer changes while readers look (native word views).
_W_GENERATION: Final = OFF_GENERATION // 8
_W_HEARTBEAT: Final = OFF_HEARTBEAT // 8
_W_LAST_FEED_NS: Final = OFF_LAST_FEED_NS // 8
_W_WATCHDOG_TIMEOUT_NS: Final = OFF_WATCHDOG_TIMEOUT_NS // 8
_W_ARENA_BASE: Final = OFF_ARENA_BASE // 8
_W_ARENA_SIZE: Final = OFF_ARENA_SIZE // 8
_I_STATE: Final = OFF_STATE // 4
_I_COLLECTOR_PID: Final = OFF_COLLECTOR_PID // 4
_I_COUNT: Final = OFF_COUNT // 4
_H_FLAGS: Final = OFF_FLAGS // 2

assert HEADER_STRUCT.size == HEADER_SIZE and ENTRY_STRUCT.size == ENTRY_SIZE


STATE_STARTING: Final = 0
"""The table is being set up; entries may be missing (TableState.STARTING)."""
STATE_RUNNING: Final = 1
"""The producer is live and keeps the table current."""
STATE_EXITING: Final = 2
"""The producer is shutting down cleanly; the file is about to be removed."""
STATES: Final = frozenset({STATE_STARTING, STATE_RUNNING, STATE_EXITING})
"""The header's states: the values of their enum, :class:`kmemdump.formats.enums.TableState`."""


# --- results -----------------------------------------------------------------------------------


@frozen
class TableHeader:
    """Every header field, validated as far as the header alone allows."""

    version: int
    header_size: int
    entry_size: int
    flags: int
    capacity: int
    pid: int
    start_time: int
    py_hexversion: int
    state: int
    """One of :data:`STATES` (a :class:`TableState` value)."""
    generation: int
    heartbeat: int
    last_feed_ns: int
    watchdog_timeout_ns: int
    collector_pid: int
    count: int
    created_ns: int
    arena_base: int = 0
    """Address of the first byte of the producer's persistent arena; 0 when it has none."""
    arena_size: int = 0
    """Bytes in the arena; 0 when the producer has none."""
    pidns_ino: int = 0
    """Inode of the producer's pid namespace (``/proc/self/ns/pid``); 0 when not recorded."""
    pidns_dev: int = 0
    """Device of that inode (the ``nsfs`` file system); 0 when not recorded."""

    @property
    def live_lock(self) -> bool:
        """The producer holds a lock on the table file while it lives (:data:`FLAG_LIVE_LOCK`)."""
        return bool(self.flags & FLAG_LIVE_LOCK)

    @property
    def feeder(self) -> bool:
        """The heartbeat comes from a background feeder thread (:data:`FLAG_FEEDER`)."""
        return bool(self.flags & FLAG_FEEDER)

    @property
    def arena_end(self) -> int:
        return self.arena_base + self.arena_size

    @property
    def table_size(self) -> int:
        """Bytes the whole table occupies: the header plus ``capacity`` entries."""
        return table_size(self.capacity)

    @property
    def deadline_ns(self) -> int | None:
        """The monotonic time (ns) by which the next feed is due; None without a watchdog or a feed."""
        return _deadline(self.heartbeat, self.last_feed_ns, self.watchdog_timeout_ns)

    def hung(self, now_ns: int) -> bool:
        """The hang rule: a watchdog is armed and no feed came within its timeout before ``now_ns``."""
        deadline = self.deadline_ns
        return deadline is not None and now_ns >= deadline


if TYPE_CHECKING:

    class _Beat(NamedTuple):
        generation: int
        heartbeat: int
        last_feed_ns: int
        watchdog_timeout_ns: int

else:  # typing.NamedTuple makes the same class, after importing typing
    from collections import namedtuple

    _Beat = namedtuple("_Beat", ("generation", "heartbeat", "last_feed_ns", "watchdog_timeout_ns"))


class TableBeat(_Beat):
    """The four header words a watcher reads between dumps, in one small ``pread``
    (:meth:`TableReader.beat`): nothing else of the header is read or checked."""

    __slots__ = ()

    @property
    def deadline_ns(self) -> int | None:
        """As :attr:`TableHeader.deadline_ns`."""
        return _deadline(self.heartbeat, self.last_feed_ns, self.watchdog_timeout_ns)

    def hung(self, now_ns: int) -> bool:
        """As :meth:`TableHeader.hung`."""
        deadline = self.deadline_ns
        return deadline is not None and now_ns >= deadline


def _deadline(heartbeat: int, last_feed_ns: int, watchdog_timeout_ns: int) -> int | None:
    """When the next feed is due, for header and beat alike; None without a watchdog or a feed."""
    if not watchdog_timeout_ns or not heartbeat:
        return None
    return last_feed_ns + watchdog_timeout_ns


_BEAT_STRUCT: Final = struct.Struct("<QQQQ")
"""generation, heartbeat, last_feed_ns, watchdog_timeout_ns: consecutive from OFF_GENERATION."""
assert (OFF_HEARTBEAT, OFF_LAST_FEED_NS, OFF_WATCHDOG_TIMEOUT_NS) == (
    OFF_GENERATION + 8,
    OFF_GENERATION + 16,
    OFF_GENERATION + 24,
)


@frozen
class TableEntry:
    """One live entry: where it sat in the table and the region it describes."""

    slot: int
    id: int
    name: str
    address: int
    size: int
    kind: int
    """One of :data:`~kmemdump.formats.kinds.KINDS` (a :class:`RegionKind` value)."""
    flags: int
    graph: int = 0
    """The graph word: 0, or ``GRAPH_ROOT | depth`` for the root of a live object graph."""

    @property
    def end(self) -> int:
        return self.address + self.size

    @property
    def graph_depth(self) -> int | None:
        """The depth to walk this root's object graph to at dump time; None when it is not a root."""
        return self.graph & GRAPH_DEPTH_MASK if self.graph & GRAPH_ROOT else None

    @property
    def persistent(self) -> bool:
        """The region lies in the producer's persistent arena (readable after its death)."""
        return bool(self.flags & _PERSISTENT)


_ENTRY_FIELDS = setters(TableEntry)


def _new_entry(  # noqa: PLR0917 - the dataclass's fields, in order
    slot: int, region_id: int, name: str, address: int, size: int, kind: int, flags: int, graph: int
) -> TableEntry:
    """``TableEntry(...)`` at half the cost of the frozen dataclass's ``__init__`` (which sets each
    field through ``object.__setattr__`` by name): every dump parses up to 65,536 entries. The same
    object: the slots are set through their own descriptors."""
    entry: TableEntry = object.__new__(TableEntry)
    set_slot, set_id, set_name, set_address, set_size, set_kind, set_flags, set_graph = _ENTRY_FIELDS
    set_slot(entry, slot)
    set_id(entry, region_id)
    set_name(entry, name)
    set_address(entry, address)
    set_size(entry, size)
    set_kind(entry, kind)
    set_flags(entry, flags)
    set_graph(entry, graph)
    return entry


@frozen
class TableSnapshot:
    """A consistent copy of a table: the header and the live entries, sorted by ID."""

    header: TableHeader
    entries: tuple[TableEntry, ...]


# --- helpers shared by both sides ------------------------------------------------------------------


def table_size(capacity: int) -> int:
    """Size in bytes of a table with ``capacity`` slots (1..:data:`MAX_CAPACITY`)."""
    if isinstance(capacity, bool) or not isinstance(capacity, int) or not 0 < capacity <= MAX_CAPACITY:
        raise TableFormatError(f"capacity must be an int in 1..{MAX_CAPACITY}", capacity=capacity)
    return HEADER_SIZE + capacity * ENTRY_SIZE


def table_path(directory: str | os.PathLike[str], pid: int, start_time: int) -> str:
    """Where the process ``(pid, start_time)`` publishes its table inside ``directory``."""
    return os.path.join(directory, f"{pid}-{start_time}{TABLE_SUFFIX}")


def parse_file_name(name: str, suffix: str = TABLE_SUFFIX) -> tuple[int, int] | None:
    """``(pid, start_time)`` of a ``<pid>-<start_time><suffix>`` file name; None for any other name.

    Only ASCII digits count (``str.isdigit`` also accepts ``²`` and other scripts' digits, which
    ``int`` refuses or reads as another number), without a sign, a leading zero or an absurd length.
    """
    stem = name.removesuffix(suffix)
    if stem == name:
        return None
    pid_text, sep, start_text = stem.partition("-")
    if not (sep and _decimal(pid_text, 10) and _decimal(start_text, 20)):
        return None
    pid = int(pid_text)
    return (pid, int(start_text)) if 0 < pid < 2**31 else None


def _decimal(text: str, longest: int) -> bool:
    return (
        0 < len(text) <= longest
        and text.isascii()
        and text.isdigit()
        and (text == "0" or not text.startswith("0"))
    )


def default_dir() -> str:
    """``$KMEMDUMP_DIR`` if set (as it is set), else ``/dev/shm/kmemdump-<euid>``."""
    configured = os.environ.get("KMEMDUMP_DIR")
    if configured:
        return configured
    return f"/dev/shm/kmemdump-{os.geteuid()}"


DIR_PREFIX: Final = "kmemdump-"
"""Table directories under /dev/shm: ``kmemdump-<uid>``, or a private fallback ``kmemdump-<uid>.<hex>``."""


def parse_dir_name(name: str) -> int | None:
    """The uid a table directory's name says it belongs to (``kmemdump-<uid>`` or the fallback
    ``kmemdump-<uid>.<8 to 32 hex digits>``), ASCII digits only; None for any other name."""
    if not name.startswith(DIR_PREFIX):
        return None
    uid_text, dot, token = name[len(DIR_PREFIX) :].partition(".")
    if not _decimal(uid_text, 10) or int(uid_text) >= 2**32:
        return None
    if dot and not (8 <= len(token) <= 32 and all(c in "0123456789abcdef" for c in token)):
        return None
    return int(uid_text)


def _entry_offset(slot: int) -> int:
    return HEADER_SIZE + slot * ENTRY_SIZE


def _nothing() -> None:
    return None


# --- writer ------------------------------------------------------------------------------------------


class TableWriter:
    """Writes one table into a writable buffer (the table file's mmap, or any bytearray).

    The constructor writes a fresh header (state ``STARTING``, generation 0, no entries) and
    zeroes every slot. :meth:`put` and :meth:`clear` must not run concurrently with each other (the
    backend serialises them); :meth:`feed` may run at any time from any thread, since it writes
    only the heartbeat words.

    Header words that change while readers look (generation, count, heartbeat, last feed, state,
    timeout) are stored through native ``Q``/``I`` views of the buffer: one aligned store each.
    ``struct.pack_into`` would not do there, because it zero-fills its target before writing the
    value, and a reader copying the header at that instant would see a zero (a last feed at time
    0 looks like a hang). Entries change only under the seqlock, so they use ``pack_into``.

    ``feed`` is a plain function attribute, not a method, so that calling it costs one Python
    call: it bumps the heartbeat counter and stores it with ``time.monotonic_ns()``. Every 1024th
    feed also calls ``on_tick`` (the backend checks the collector pid there).

    The views pin the buffer (an mmap cannot be closed while they exist); :meth:`release` drops
    them, after which every write through this writer, ``feed`` included, raises ``ValueError``.
    """

    __slots__ = (
        "_arena_hi",
        "_arena_lo",
        "_buf",
        "_capacity",
        "_count",
        "_gen",
        "_live",
        "_next_beat",
        "_on_tick",
        "_u16",
        "_u32",
        "_u64",
        "feed",
    )

    feed: Callable[[], None]

    def __init__(
        self,
        buf: WritableBuffer,
        *,
        capacity: int,
        pid: int,
        start_time: int,
        py_hexversion: int,
        created_ns: int,
        on_tick: Callable[[], object] | None = None,
        flags: int = 0,
        pidns: tuple[int, int] = (0, 0),
    ) -> None:
        if sys.byteorder != "little":  # the native word views below store little-endian values
            raise TableFormatError("the table writer needs a little-endian CPU")
        size = table_size(capacity)
        with memoryview(buf) as view:
            if view.readonly:
                raise TypeError("the table buffer must be writable")
            if view.nbytes < size:
                raise TableFormatError(
                    "buffer is smaller than the table", length=view.nbytes, capacity=capacity, needed=size
                )
        try:
            HEADER_STRUCT.pack_into(
                buf, 0, MAGIC, VERSION, HEADER_SIZE, ENTRY_SIZE, flags, capacity, pid, start_time,
                py_hexversion, STATE_STARTING, 0, 0, 0, 0, 0, 0, created_ns, 0, 0, pidns[1], pidns[0],
            )  # fmt: skip
        except struct.error as err:
            raise TableFormatError(f"header value out of range: {err}") from err
        buf[HEADER_SIZE:size] = bytes(size - HEADER_SIZE)
        self._buf = buf
        with memoryview(buf) as whole:
            self._u64 = whole[:HEADER_SIZE].cast("Q")
            self._u32 = whole[:HEADER_SIZE].cast("I")
            self._u16 = whole[:HEADER_SIZE].cast("H")
        self._capacity = capacity
        self._count = 0
        self._gen = 0
        self._arena_lo = 0
        self._arena_hi = 0
        self._live = bytearray(capacity)
        self._next_beat = itertools.count(1).__next__
        self._on_tick: Callable[[], object] = on_tick if on_tick is not None else _nothing
        self.feed = make_feed(self._u64, self._next_beat, self._on_tick)

    def release(self) -> None:
        """Drop the views into the buffer; the writer (and its ``feed``) can no longer write."""
        self._u64.release()
        self._u32.release()
        self._u16.release()

    def set_collector_pid(self, pid: int) -> None:
        """Name the collector expected to act on this table (one aligned 32-bit store).

        Collectors write this field themselves once they watch the table; a producer started by a
        supervisor (``kmemdump run``) names it from the start, so that another collector leaves
        the table to it.
        """
        self._u32[_I_COLLECTOR_PID] = pid

    def set_flag(self, flag: int, on: bool) -> None:
        """Set or clear header ``flag`` bits (one aligned 16-bit store)."""
        flags = self._u16[_H_FLAGS]
        self._u16[_H_FLAGS] = (flags | flag) if on else (flags & ~flag)

    # --- heartbeat ---------------------------------------------------------------------------

    def feed_binding(self) -> tuple[memoryview, Callable[[], int], Callable[[], object]]:
        """What a feed function needs: the header's u64 view, the counter's ``next`` and the tick hook.

        :mod:`kmemdump.producer.heartbeat` points its own ``feed`` at these, so that feeding through the
        watchdog or through :attr:`feed` advances one counter.
        """
        return self._u64, self._next_beat, self._on_tick

    def set_watchdog(self, timeout_ns: int) -> bool:
        """Publish the watchdog timeout (0 disables it); True when it differs from the one published
        before (a collector may then expect the next deadline later than it now is)."""
        if isinstance(timeout_ns, bool) or not isinstance(timeout_ns, int) or not 0 <= timeout_ns <= _U64_MAX:
            raise InvalidRegionError(
                "watchdog timeout must be an int of nanoseconds >= 0", timeout_ns=timeout_ns
            )
        changed = self._u64[_W_WATCHDOG_TIMEOUT_NS] != timeout_ns
        self._u64[_W_WATCHDOG_TIMEOUT_NS] = timeout_ns
        return changed

    def set_state(self, state: int) -> None:
        if state not in STATES:
            raise ValueError(f"{state!r} is not a table state")
        self._u32[_I_STATE] = int(state)

    def collector_pid(self) -> int:
        """The pid a collector wrote into the header (0 when none did)."""
        return self._u32[_I_COLLECTOR_PID]

    # --- the persistent arena ----------------------------------------------------------------

    @property
    def arena(self) -> tuple[int, int] | None:
        """``(arena_base, arena_size)`` as published, or None before :meth:`set_arena`."""
        return (self._arena_lo, self._arena_hi - self._arena_lo) if self._arena_hi else None

    def set_arena(self, base: int, size: int) -> None:
        """Publish where the producer's persistent arena lies, under the seqlock; once per table.

        Entries flagged ``PERSISTENT`` are accepted only inside it. Publishing the same range again
        does nothing; another range raises :class:`InvalidRegionError`.
        """
        if (
            isinstance(base, bool)
            or isinstance(size, bool)
            or not isinstance(base, int)
            or not isinstance(size, int)
            or base <= 0
            or size <= 0
            or base + size > _ADDRESS_LIMIT
        ):
            raise InvalidRegionError(
                "arena must be a non-empty range of the 64-bit address space", base=base, size=size
            )
        if self._arena_hi:
            if (base, base + size) != (self._arena_lo, self._arena_hi):
                raise InvalidRegionError(
                    "this table already publishes another arena", base=base, published=self._arena_lo
                )
            return
        words = self._u64
        gen = self._gen + 1
        words[_W_GENERATION] = gen
        words[_W_ARENA_BASE] = base
        words[_W_ARENA_SIZE] = size
        gen += 1
        self._gen = gen
        words[_W_GENERATION] = gen
        self._arena_lo = base
        self._arena_hi = base + size

    # --- entries -----------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def count(self) -> int:
        """Live entries."""
        return self._count

    @property
    def generation(self) -> int:
        return self._gen

    def put(  # noqa: PLR0917 - one positional argument per entry field, as in the format
        self,
        slot: int,
        id: int,
        name: str,
        address: int,
        size: int,
        kind: int,
        flags: int = 0,
        graph: int = 0,
    ) -> int:
        """Write a live entry into ``slot`` (replacing what it held) under the seqlock.

        ``graph`` is the entry's graph word: 0, or ``GRAPH_ROOT | depth`` for an ``OBJECT`` whose object
        graph the collector walks at dump time.

        The writer does not look for the same ID in other slots: keeping IDs unique is the
        caller's job (a reader rejects duplicates). Returns the header's ``collector_pid``, so that
        the caller can grant it ptrace access without another call on its hot path.
        """
        raw = name.encode("utf-8")
        if not (
            0 < id <= _U32_MAX
            and size > 0
            and address >= 0
            and address + size <= _ADDRESS_LIMIT
            and len(raw) <= NAME_MAX
            and 0 not in raw  # much cheaper than b"\0" in raw
            and 0 <= kind < _KIND_LIMIT
            and _KIND_OK[kind]
            and (
                flags == 0
                or (flags == _PERSISTENT and self._arena_lo <= address and address + size <= self._arena_hi)
            )
            and 0 <= slot < self._capacity
            and (graph == 0 or (kind == _OBJECT and _graph_ok(graph)))
        ):
            raise self._refusal(slot, id, name, address, size, kind, flags, graph)
        return self.put_trusted(slot, id, raw, address, size, kind, flags, graph)

    def put_trusted(  # noqa: PLR0917 - as put()
        self,
        slot: int,
        id: int,
        raw_name: bytes,
        address: int,
        size: int,
        kind: int,
        flags: int,
        graph: int = 0,
    ) -> int:
        """:meth:`put` for a caller that has checked every field already (a registry's table).

        ``raw_name`` is the UTF-8 name. Nothing is checked here: a field :meth:`put` would refuse
        makes a table every reader rejects as corrupt.
        """
        words = self._u64
        gen = self._gen + 1
        words[_W_GENERATION] = gen
        _pack_entry(
            self._buf, HEADER_SIZE + slot * ENTRY_SIZE, raw_name, id, VALID, address, size, kind, flags, graph
        )
        live = self._live
        if not live[slot]:
            live[slot] = 1
            self._count += 1
            self._u32[_I_COUNT] = self._count
        gen += 1
        self._gen = gen
        words[_W_GENERATION] = gen
        return self._u32[_I_COLLECTOR_PID]

    def _refusal(  # noqa: PLR0917 - mirrors put()
        self, slot: int, id: int, name: str, address: int, size: int, kind: int, flags: int, graph: int = 0
    ) -> InvalidRegionError:
        """Say which of put()'s arguments the format cannot hold."""
        raw = name.encode("utf-8")
        if len(raw) > NAME_MAX or 0 in raw:
            return InvalidRegionError(f"name must be at most {NAME_MAX} UTF-8 bytes without NUL", name=name)
        if not 0 <= slot < self._capacity:
            return InvalidRegionError("slot out of range", slot=slot, capacity=self._capacity)
        if not 0 < id <= _U32_MAX:
            return InvalidRegionError("id must be in 1..2**32-1", id=id)
        if not (size > 0 and address >= 0 and address + size <= _ADDRESS_LIMIT):
            return InvalidRegionError(
                "region does not fit the 64-bit address space", address=address, size=size
            )
        if not (0 <= kind < _KIND_LIMIT and _KIND_OK[kind]):
            return InvalidRegionError("unknown region kind", kind=kind)
        if not 0 <= flags <= 0xFFFF:
            return InvalidRegionError("flags must fit 16 bits", flags=flags)
        if flags & ~KNOWN_ENTRY_FLAGS:
            return InvalidRegionError("unknown entry flags", flags=flags, known=KNOWN_ENTRY_FLAGS)
        if graph and not _graph_ok(graph):
            return InvalidRegionError(
                f"graph word must be 0 or GRAPH_ROOT | depth (0..{MAX_GRAPH_DEPTH})", graph=graph
            )
        if graph and kind != _OBJECT:
            return InvalidRegionError("only an OBJECT region can be an object-graph root", kind=kind)
        return InvalidRegionError(
            "a PERSISTENT region must lie inside the arena the table publishes",
            address=address,
            size=size,
            arena=self.arena,
        )

    def clear(self, slot: int) -> int:
        """Free ``slot`` (all 64 bytes zero) under the seqlock; a free slot is left alone.

        Returns the header's ``collector_pid``, as :meth:`put` does.
        """
        if not 0 <= slot < self._capacity:
            raise InvalidRegionError("slot out of range", slot=slot, capacity=self._capacity)
        live = self._live
        if not live[slot]:
            return self._u32[_I_COLLECTOR_PID]
        words = self._u64
        gen = self._gen + 1
        words[_W_GENERATION] = gen
        _zero_entry(self._buf, HEADER_SIZE + slot * ENTRY_SIZE)
        live[slot] = 0
        self._count -= 1
        self._u32[_I_COUNT] = self._count
        gen += 1
        self._gen = gen
        words[_W_GENERATION] = gen
        return self._u32[_I_COLLECTOR_PID]


def _graph_ok(graph: int) -> bool:
    """A non-zero graph word this format defines: the root bit, a depth in range, nothing else."""
    return (
        graph & ~(GRAPH_ROOT | GRAPH_DEPTH_MASK) == 0
        and bool(graph & GRAPH_ROOT)
        and (graph & GRAPH_DEPTH_MASK) <= MAX_GRAPH_DEPTH
    )


def make_feed(
    words: memoryview, next_beat: Callable[[], int], on_tick: Callable[[], object]
) -> Callable[[], None]:
    """A feed function over a header's u64 view: its closure cells are ``words``, ``next_beat``,
    ``on_tick`` and ``clock`` (:mod:`kmemdump.producer.heartbeat` repoints the first three)."""
    clock = time.monotonic_ns

    def feed() -> None:
        """Beat the heartbeat: the monotonic clock, then counter + 1 (one aligned store each)."""
        beat = next_beat()
        words[_W_LAST_FEED_NS] = clock()
        words[_W_HEARTBEAT] = beat
        if not beat & FEED_TICK_MASK:
            on_tick()

    return feed


# --- reader ----------------------------------------------------------------------------------------


def parse_header(data: ReadableBuffer) -> TableHeader:
    """Decode and check the 128-byte header at the start of ``data``.

    Checks the magic, version, header and entry sizes, capacity and state. The seqlock-protected
    fields (``count``, ``generation``) are returned as found; :func:`parse_table` checks them.
    """
    length = len(data)
    if length < HEADER_SIZE:
        raise TableFormatError(f"table is shorter than its {HEADER_SIZE}-byte header", length=length)
    (
        magic, version, header_size, entry_size, flags, capacity, pid, start_time, py_hexversion,
        state, generation, heartbeat, last_feed_ns, watchdog_timeout_ns, collector_pid, count, created_ns,
        arena_base, arena_size, pidns_ino, pidns_dev,
    ) = HEADER_STRUCT.unpack_from(data, 0)  # fmt: skip
    if magic != MAGIC:
        raise TableFormatError("not a kmemdump table (bad magic)", magic=magic, offset=OFF_MAGIC)
    if version != VERSION:
        raise TableFormatError(
            f"unsupported table format version {version} (this reader knows {VERSION})", offset=OFF_VERSION
        )
    if header_size != HEADER_SIZE:
        raise TableFormatError(
            f"header_size is {header_size}, format v{VERSION} has {HEADER_SIZE}", offset=OFF_HEADER_SIZE
        )
    if entry_size != ENTRY_SIZE:
        raise TableFormatError(
            f"entry_size is {entry_size}, format v{VERSION} has {ENTRY_SIZE}", offset=OFF_ENTRY_SIZE
        )
    if not 0 < capacity <= MAX_CAPACITY:
        raise TableFormatError(f"capacity {capacity} is outside 1..{MAX_CAPACITY}", offset=OFF_CAPACITY)
    if state not in STATES:
        raise TableFormatError(f"unknown state {state}", offset=OFF_STATE)
    return TableHeader(
        version, header_size, entry_size, flags, capacity, pid, start_time, py_hexversion, state,
        generation, heartbeat, last_feed_ns, watchdog_timeout_ns, collector_pid, count, created_ns,
        arena_base, arena_size, pidns_ino, pidns_dev,
    )  # fmt: skip


def parse_table(data: ReadableBuffer) -> TableSnapshot:
    """Decode and fully check a table copy; any malformation raises :class:`TableFormatError`.

    ``data`` must hold at least the header and ``capacity`` entries (more is ignored). The
    generation must be even; every live entry must carry the valid marker, a non-zero unique ID,
    a NUL-terminated UTF-8 name, a non-zero size that stays within the 64-bit address space, a
    known kind and only known flags, and a ``PERSISTENT`` entry must lie inside the arena the header
    publishes; every free slot must be all zero; ``count`` must equal the live entries.
    """
    header = parse_header(data)
    need = header.table_size
    length = len(data)
    if length < need:
        raise TableFormatError(
            f"table is truncated: capacity {header.capacity} needs {need} bytes", length=length, needed=need
        )
    if header.generation & 1:
        raise TableFormatError(
            "generation is odd: the copy was taken while entries were changing",
            generation=header.generation,
            offset=OFF_GENERATION,
        )
    arena_lo, arena_hi = _arena_bounds(header)
    blob = data if isinstance(data, bytes) and length == need else bytes(data[:need])
    rows = list(ENTRY_STRUCT.iter_unpack(memoryview(blob)[HEADER_SIZE:need]))
    entries = _entries_at_once(rows, arena_lo, arena_hi)
    if entries is None:  # some slot is malformed: the careful loop says which, and why
        entries = _entries_one_by_one(rows, arena_lo, arena_hi)
    if len(entries) != header.count:
        raise TableFormatError(
            f"count says {header.count} live entries, the slots hold {len(entries)}", offset=OFF_COUNT
        )
    entries.sort(key=_by_id)
    return TableSnapshot(header, tuple(entries))


def _entries_at_once(rows: list[tuple[Any, ...]], arena_lo: int, arena_hi: int) -> list[TableEntry] | None:
    """The live entries when every slot passes :func:`parse_table`'s checks, made column by column at
    C speed (a dump of 10,000 regions parses its table in a few milliseconds); None as soon as any
    check fails, for :func:`_entries_one_by_one` to find the slot. It accepts nothing that loop refuses."""
    ids_all = list(map(itemgetter(1), rows))
    live = list(itertools.compress(rows, ids_all))
    free = list(itertools.compress(rows, map(not_, ids_all)))
    if free.count(_FREE_FIELDS) != len(free):
        return None
    count = len(live)
    if not count:
        return []
    raw_names, ids, valids, addresses, sizes, kinds, flags, graphs = zip(*live, strict=True)
    if (
        valids.count(VALID) != count
        or 0 in sizes
        or max(map(add, addresses, sizes)) > _ADDRESS_LIMIT
        or not set(kinds).issubset(_KINDS)
        or len(set(ids)) != count
    ):
        return None
    names: dict[bytes, str] = {}  # tables repeat names ("bytearray" ten thousand times): decode each once
    for raw in set(raw_names):
        end = raw.find(0)
        if end < 0:
            return None
        try:
            names[raw] = raw[:end].decode("utf-8")
        except UnicodeDecodeError:
            return None
    if any(flags):
        for flag, address, size in itertools.compress(zip(flags, addresses, sizes, strict=True), flags):
            if flag & ~KNOWN_ENTRY_FLAGS or not arena_lo <= address or address + size > arena_hi:
                return None
    if any(graphs):
        for graph, kind in itertools.compress(zip(graphs, kinds, strict=True), graphs):
            if kind != _OBJECT or not _graph_ok(graph):
                return None
    entries: list[TableEntry] = list(map(object.__new__, itertools.repeat(TableEntry, count)))
    columns: tuple[Iterable[Any], ...] = (
        itertools.compress(itertools.count(), ids_all),  # the slots
        ids,
        map(names.__getitem__, raw_names),
        addresses,
        sizes,
        kinds,
        flags,
        graphs,
    )
    for set_field, column in zip(_ENTRY_FIELDS, columns, strict=True):
        deque(map(set_field, entries, column), 0)  # the slots' own descriptors, as _new_entry does
    return entries


def _entries_one_by_one(rows: list[tuple[Any, ...]], arena_lo: int, arena_hi: int) -> list[TableEntry]:
    """The live entries, slot by slot: raises :class:`TableFormatError` at the first malformed slot."""
    entries: list[TableEntry] = []
    seen: set[int] = set()
    names: dict[bytes, str] = {}  # tables repeat names ("bytearray" ten thousand times): decode each once
    for slot, fields in enumerate(rows):
        region_id = fields[1]
        if region_id == 0:
            if fields != _FREE_FIELDS:
                raise _entry_error("free slot (id 0) is not all zero", slot)
            continue
        raw_name, region_id, valid, address, size, kind, flags, graph = fields
        if valid != VALID:
            raise _entry_error(f"live slot has valid marker {valid:#x}, not {VALID:#x}", slot, ENTRY_VALID)
        name = names.get(raw_name)
        if name is None:
            name = names[raw_name] = _entry_name(raw_name, slot)
        if size == 0:
            raise _entry_error("size is 0", slot, ENTRY_SIZE_FIELD)
        if address + size > _ADDRESS_LIMIT:
            raise _entry_error("region runs past the end of the 64-bit address space", slot, ENTRY_ADDRESS)
        if kind not in _KINDS:
            raise _entry_error(f"unknown kind {kind}", slot, ENTRY_KIND)
        if flags:
            if flags & ~KNOWN_ENTRY_FLAGS:
                raise _entry_error(f"unknown flags {flags:#x}", slot, ENTRY_FLAGS)
            if not arena_lo <= address or address + size > arena_hi:
                raise _entry_error(
                    "PERSISTENT region lies outside the arena the header names", slot, ENTRY_ADDRESS
                )
        if graph and (kind != _OBJECT or not _graph_ok(graph)):
            raise _entry_error(
                f"graph word {graph:#x} on a kind {kind} entry is not one this format defines",
                slot,
                ENTRY_GRAPH,
            )
        if region_id in seen:
            raise _entry_error(f"id {region_id} appears in two slots", slot, ENTRY_ID)
        seen.add(region_id)
        entries.append(_new_entry(slot, region_id, name, address, size, kind, flags, graph))
    return entries


def _entry_name(raw: bytes, slot: int) -> str:
    """The NUL-terminated UTF-8 name of a slot's 48-byte name field."""
    end = raw.find(0)
    if end < 0:
        raise _entry_error(f"name has no NUL within {NAME_SIZE} bytes", slot, ENTRY_NAME)
    try:
        return raw[:end].decode("utf-8")
    except UnicodeDecodeError:
        raise _entry_error("name is not valid UTF-8", slot, ENTRY_NAME) from None


def _arena_bounds(header: TableHeader) -> tuple[int, int]:
    """``[lo, hi)`` of the header's arena (``(0, 0)``, which holds nothing, when there is none)."""
    base, size = header.arena_base, header.arena_size
    if size == 0:
        if base != 0:
            raise TableFormatError("arena_base is set but arena_size is 0", offset=OFF_ARENA_BASE)
        return 0, 0
    if base == 0:
        raise TableFormatError("arena_size is set but arena_base is 0", offset=OFF_ARENA_BASE)
    if base + size > _ADDRESS_LIMIT:
        raise TableFormatError(
            "the arena runs past the end of the 64-bit address space", offset=OFF_ARENA_SIZE
        )
    return base, base + size


def _by_id(entry: TableEntry) -> int:
    return entry.id


def _entry_error(message: str, slot: int, field: int = 0) -> TableFormatError:
    return TableFormatError(message, slot=slot, offset=_entry_offset(slot) + field)


# --- locks on the table file: the producer's liveness, a collector's hold ------------------------------

_FLOCK: Final = struct.Struct("hhqqi4x")
"""``struct flock`` on Linux x86-64 and arm64: l_type, l_whence, l_start, l_len, l_pid."""


def _ofd(fd: int, command: str, kind: int, byte: int) -> bytes:
    import fcntl

    return fcntl.fcntl(fd, getattr(fcntl, command), _FLOCK.pack(kind, os.SEEK_SET, byte, 1, 0))


def lock_byte(fd: int, byte: int, *, exclusive: bool) -> bool:
    """Take an open-file-description lock on ``byte`` of the file open as ``fd``, without waiting.

    Returns False when another open file description holds a conflicting lock. The lock goes when
    the last descriptor of this open file description is closed, or when its process dies: the
    kernel keeps no lock of a dead process. An exclusive lock needs ``fd`` open for writing.
    """
    import fcntl

    try:
        _ofd(fd, "F_OFD_SETLK", fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK, byte)
    except OSError as err:
        if err.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def unlock_byte(fd: int, byte: int) -> None:
    """Release this open file description's lock on ``byte``."""
    import fcntl

    _ofd(fd, "F_OFD_SETLK", fcntl.F_UNLCK, byte)


def lock_held(fd: int, byte: int) -> bool:
    """Whether another open file description holds a lock on ``byte`` of the file open as ``fd``."""
    import fcntl

    try:
        answer = _ofd(fd, "F_OFD_GETLK", fcntl.F_WRLCK, byte)
    except OSError:
        return False
    return bool(_FLOCK.unpack(answer)[0] != fcntl.F_UNLCK)


def _open_table(path: str | os.PathLike[str], mode: int, dir_fd: int | None = None) -> int:
    """Open a table without following links or blocking; refuse what is not our regular file."""
    return open_owned_file(path, mode, dir_fd=dir_fd)


def open_owned_file(
    path: str | os.PathLike[str],
    mode: int,
    *,
    what: str = "table",
    owner: int | None = None,
    dir_fd: int | None = None,
) -> int:
    """Open a file the producer published (a table, an arena) the way a reader must.

    No symbolic link is followed and a FIFO does not block; the file must be a regular file owned
    by the caller's effective uid, unless the caller is root. ``owner``, when given, is the one uid
    the file may belong to, for root too (an arena must belong to its table's owner). Anything
    else raises :class:`ForeignTableError` (``what`` names the file in the message); a missing
    file raises :class:`FileNotFoundError`. With ``dir_fd`` (an open directory) the file is opened
    by its name in that directory, so no link in the directory's path can redirect it.
    """
    try:
        if dir_fd is None:
            fd = os.open(path, mode | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        else:
            name = os.path.basename(os.fspath(path))
            fd = os.open(name, mode | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ForeignTableError(f"{what} path is a symbolic link", path=str(path)) from err
        if err.errno in (errno.EACCES, errno.EPERM):
            raise ForeignTableError(f"no permission to open the {what}", path=str(path)) from err
        if err.errno in (errno.EISDIR, errno.ENXIO, errno.ENODEV, errno.ETXTBSY):
            raise ForeignTableError(f"{what} path is not a regular file", path=str(path)) from err
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ForeignTableError(f"{what} path is not a regular file", path=str(path))
        euid = os.geteuid()
        if euid not in (0, info.st_uid):
            raise ForeignTableError(f"{what} belongs to another user", path=str(path), uid=info.st_uid)
        if owner is not None and info.st_uid != owner:
            raise ForeignTableError(
                f"{what} belongs to another user than its table", path=str(path), uid=info.st_uid, owner=owner
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def _backoff(attempt: int) -> None:
    """Give a writer that was preempted mid-update the CPU: yield first, then sleep a little."""
    if attempt < 8:
        os.sched_yield()
    else:
        time.sleep(min(50e-6 * 2 ** (attempt - 8), 0.002))


class TableReader:
    """An open table file, read with ``pread`` only; use as a context manager.

    Opening applies the checks of :func:`read_table`. :meth:`header` is cheap (one 128-byte
    ``pread``) for polling heartbeats; :meth:`snapshot` takes a consistent copy.
    """

    def __init__(self, path: str | os.PathLike[str], *, dir_fd: int | None = None) -> None:
        self.path = os.fspath(path)  # not a Path: building one costs more than the read
        self._fd = _open_table(path, os.O_RDONLY, dir_fd)
        info = os.fstat(self._fd)
        self.owner = info.st_uid
        """The uid that owns the table file."""
        self.identity = (info.st_dev, info.st_ino)
        """``(st_dev, st_ino)``: which file this is, whatever its name leads to later."""

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> TableReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pread(self, size: int, offset: int) -> bytes:
        if self._fd < 0:
            raise ValueError("table reader is closed")
        return os.pread(self._fd, size, offset)

    def header(self) -> TableHeader:
        """The current header (heartbeat fields included); entries are not read."""
        return parse_header(self._pread(HEADER_SIZE, 0))

    def beat(self) -> TableBeat:
        """The heartbeat words only (:class:`TableBeat`): what a watcher reads at each deadline, at a
        fraction of :meth:`header`'s cost. Nothing else is checked: use :meth:`header` before acting."""
        data = self._pread(_BEAT_STRUCT.size, OFF_GENERATION)
        if len(data) < _BEAT_STRUCT.size:
            raise TableFormatError("table is truncated: no whole header", length=len(data) + OFF_GENERATION)
        return TableBeat._make(_BEAT_STRUCT.unpack(data))

    def snapshot(self, *, retries: int = 100) -> TableSnapshot:
        """A consistent, fully checked copy of the table (the seqlock read).

        Each attempt reads the generation, then the whole table, then the generation again, and
        accepts the copy only if both reads are equal and even (and the copy holds the same
        value). After ``retries`` failed attempts it raises :class:`TableFormatError`.
        """
        return parse_table(self.copy(retries=retries))

    def copy(self, *, retries: int = 100) -> bytes:
        """The bytes of a consistent copy (the seqlock read of :meth:`snapshot`), not yet checked
        beyond the header: :func:`parse_table` them when needed (a fallback that is rarely used
        costs one ``pread``, not a parse)."""
        need = self.header().table_size
        size = os.fstat(self._fd).st_size
        if size < need:
            raise TableFormatError("table file is shorter than its capacity needs", length=size, needed=need)
        generation = -1
        for attempt in range(max(1, retries)):
            if attempt:
                _backoff(attempt)
            generation = self._generation()
            if generation & 1:
                continue
            data = self._pread(need, 0)
            if len(data) < need:
                raise TableFormatError("table file shrank while being read", length=len(data), needed=need)
            if self._generation() == generation and _U64.unpack_from(data, OFF_GENERATION)[0] == generation:
                return data
        raise TableFormatError(
            f"table kept changing: no stable even generation in {max(1, retries)} attempts",
            path=self.path,
            generation=generation,
        )

    def _generation(self) -> int:
        raw = self._pread(8, OFF_GENERATION)
        if len(raw) < 8:
            raise TableFormatError("table file shrank while being read", length=OFF_GENERATION + len(raw))
        return int(_U64.unpack_from(raw)[0])


def read_table(
    path: str | os.PathLike[str], *, retries: int = 100, dir_fd: int | None = None
) -> TableSnapshot:
    """Read the table at ``path`` consistently and check every byte of it.

    The file is opened with ``O_NOFOLLOW | O_NONBLOCK``; it must be a regular file owned by the
    caller's effective uid, unless the caller is root (:class:`ForeignTableError` otherwise). A
    missing file raises :class:`FileNotFoundError` (the producer exited cleanly).
    """
    with TableReader(path, dir_fd=dir_fd) as reader:
        return reader.snapshot(retries=retries)


def write_collector_pid(path: str | os.PathLike[str], pid: int, *, dir_fd: int | None = None) -> None:
    """Tell the producer of the table at ``path`` which process collects it (``pwrite`` at 72).

    The file gets the same checks as in :func:`read_table`, and its header must parse.
    """
    if isinstance(pid, bool) or not isinstance(pid, int) or not 0 <= pid <= _U32_MAX:
        raise InvalidRegionError("collector pid must fit an unsigned 32-bit field", pid=pid)
    fd = _open_table(path, os.O_RDWR, dir_fd)
    try:
        parse_header(os.pread(fd, HEADER_SIZE, 0))
        os.pwrite(fd, _U32.pack(pid), OFF_COLLECTOR_PID)
    finally:
        os.close(fd)

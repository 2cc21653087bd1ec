"""The record ring, format v1: the last N records of a stream, readable by anyone, torn ones told apart.

A ring is one region (kind ``RING``, usually persistent) that a producer appends records to: log
records (:class:`kmemdump.logging.RingHandler`), uncaught exceptions, snapshots of an event loop.
A reader outside the process — the collector, maybe after a SIGKILL — takes no lock: each slot
carries the record's sequence number twice, once inside the record and once in a *commit* word
written after the record, so a slot whose two numbers differ is a record caught half written.
``docs/formats.md`` gives every byte.

Layout (little-endian): a 64-byte header, then ``capacity`` slots of ``slot_size`` bytes. Record
``n`` (numbered from 1) lives in slot ``(n - 1) % capacity``; a slot holds a 40-byte record header
and up to ``slot_size - 40`` bytes of UTF-8 text. Longer text is cut at a character boundary and
the record says so (flag ``CUT`` and the full length).

Standard library only: the producer imports this module.
"""

from __future__ import annotations

import enum
import itertools
import struct
from collections.abc import Callable
from typing import Final

from kmemdump.errors import DecodeError
from kmemdump.errors import InvalidRegionError
from kmemdump.record import frozen

__all__ = [
    "CUT",
    "HEADER_SIZE",
    "HEADER_STRUCT",
    "MAGIC",
    "MAX_SLOT_SIZE",
    "MIN_SLOT_SIZE",
    "RECORD_STRUCT",
    "SLOT_HEADER",
    "VERSION",
    "Appender",
    "Ring",
    "RingRecord",
    "RingRole",
    "check_geometry",
    "level_name",
    "make_appender",
    "pack_header",
    "parse_ring",
    "ring_size",
]

MAGIC: Final = b"KMDRING\0"
VERSION: Final = 1
HEADER_SIZE: Final = 64
SLOT_HEADER: Final = 40
"""Bytes of a slot before its text: the commit word and the record header."""
MIN_SLOT_SIZE: Final = 64
MAX_SLOT_SIZE: Final = 1 << 20
MAX_CAPACITY: Final = 1 << 20
CUT: Final = 1
"""Record flag: the text was longer than the slot and was cut (``full_length`` has its length)."""

HEADER_STRUCT: Final = struct.Struct("<8sHHIIHHQ32x")
"""magic, version, header_size, slot_size, capacity, role, flags, created_ns (reserved bytes zero)."""
RECORD_STRUCT: Final = struct.Struct("<QdiHHII")
"""At slot offset 8: seq, time, level, flags, reserved, length, full_length (then the text)."""
_COMMIT: Final = struct.Struct("<Q")
_U32_MAX: Final = 2**32 - 1
_I32_MIN: Final = -(2**31)
_I32_MAX: Final = 2**31 - 1

assert HEADER_STRUCT.size == HEADER_SIZE and RECORD_STRUCT.size + _COMMIT.size == SLOT_HEADER


class RingRole(enum.IntEnum):
    """What a ring's records are (the header's ``role``); readers show each kind its own way."""

    LOG = 1
    """Formatted log records (``level`` is the logging level number)."""
    EXCEPTIONS = 2
    """Uncaught exceptions: each record is the traceback text Python would print."""
    ASYNCIO = 3
    """Snapshots of an event loop (JSON): its tasks, where each waits, and what blocks the loop."""


_LEVELS: Final = {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL"}


def level_name(level: int) -> str:
    """``WARNING`` for 30 and the other standard logging levels; ``Level N`` for any other number."""
    return _LEVELS.get(level, f"Level {level}")


def check_geometry(capacity: int, slot_size: int) -> None:
    """:class:`InvalidRegionError` unless ``capacity`` and ``slot_size`` make a valid ring."""
    if isinstance(capacity, bool) or not isinstance(capacity, int) or not 0 < capacity <= MAX_CAPACITY:
        raise InvalidRegionError(f"a ring's capacity must be an int in 1..{MAX_CAPACITY}", capacity=capacity)
    if (
        isinstance(slot_size, bool)
        or not isinstance(slot_size, int)
        or not MIN_SLOT_SIZE <= slot_size <= MAX_SLOT_SIZE
        or slot_size % 8
    ):
        raise InvalidRegionError(
            f"a ring's record size must be a multiple of 8 in {MIN_SLOT_SIZE}..{MAX_SLOT_SIZE} bytes",
            record_size=slot_size,
        )


def ring_size(capacity: int, slot_size: int) -> int:
    """Bytes of a ring of ``capacity`` slots of ``slot_size`` bytes (checked)."""
    check_geometry(capacity, slot_size)
    return HEADER_SIZE + capacity * slot_size


def pack_header(
    buf: bytearray | memoryview, *, capacity: int, slot_size: int, role: RingRole, created_ns: int
) -> None:
    """Write the header at the start of ``buf`` (zeroed, at least :func:`ring_size` bytes)."""
    need = ring_size(capacity, slot_size)
    if len(buf) < need:
        raise InvalidRegionError("the buffer is smaller than the ring", size=len(buf), needed=need)
    HEADER_STRUCT.pack_into(
        buf, 0, MAGIC, VERSION, HEADER_SIZE, slot_size, capacity, int(role), 0, created_ns
    )


Appender = Callable[[str, int, float], int]
"""``append(text, level, time) -> seq``: writes one record, returns its sequence number."""


def make_appender(buf: memoryview, capacity: int, slot_size: int, first: int = 1) -> Appender:
    """The writer of the ring in ``buf`` (its header already packed): a function appending one record.

    The record is stored with one ``pack_into`` (sequence number, time, level, lengths, text, the
    slot's unused bytes zeroed), then its commit word with a second: a reader seeing the commit
    equal to the record's own number knows the record is whole. The returned function costs one
    text encode and two stores.

    Threads may call it concurrently under the GIL: each call takes a number of its own from an
    ``itertools.count`` and each store is one C call. A thread overtaken between its two stores by
    ``capacity`` others shares its slot with a later record; whichever commit comes last, the
    reader sees either a whole record or a torn slot, never a mix. Without a GIL, serialise calls.
    """
    check_geometry(capacity, slot_size)
    room = slot_size - SLOT_HEADER
    record = struct.Struct(f"{RECORD_STRUCT.format}{room}s").pack_into
    commit = _COMMIT.pack_into
    counter = itertools.count(first).__next__

    def append(text: str, level: int, time: float) -> int:
        data = text.encode("utf-8", "backslashreplace")
        length = len(data)
        seq = counter()
        offset = HEADER_SIZE + ((seq - 1) % capacity) * slot_size
        if length <= room:
            flags, full = 0, length
        else:
            data, flags, full = _cut(data, room), CUT, min(length, _U32_MAX)
        try:
            record(buf, offset + 8, seq, time, level, flags, 0, len(data), full, data)
        except (struct.error, TypeError):
            # pack_into stores field by field: a level outside 32 bits (logging allows any int) or a
            # time that is no number would leave the slot half overwritten, the record lost and the
            # sequence broken. Store the record with its level clamped and the time made a number.
            record(buf, offset + 8, seq, _as_time(time), _clamp_level(level), flags, 0, len(data), full, data)
        commit(buf, offset, seq)
        return seq

    return append


def _clamp_level(level: object) -> int:
    """``level`` as a 32-bit signed int (clamped; 0 when it is not an int at all)."""
    if isinstance(level, int):
        return max(_I32_MIN, min(_I32_MAX, level))
    return 0


def _as_time(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return 0.0


def _cut(data: bytes, room: int) -> bytes:
    """The longest prefix of the UTF-8 ``data`` that fits ``room`` bytes and ends on a character."""
    end = room
    while end > 0 and (data[end] & 0xC0) == 0x80:  # data[end] starts the first byte left out
        end -= 1
    return data[:end]


# --- reading ---------------------------------------------------------------------------------------


@frozen
class RingRecord:
    """One whole record read back."""

    seq: int
    time: float
    """Seconds since the epoch (the record's creation time)."""
    level: int
    text: str
    cut: bool
    """The text was longer than its slot; :attr:`full_length` bytes before cutting."""
    full_length: int

    @property
    def level_name(self) -> str:
        return level_name(self.level)


@frozen
class Ring:
    """A ring read back: its geometry and its whole records, oldest first."""

    role: int
    capacity: int
    slot_size: int
    created_ns: int
    records: tuple[RingRecord, ...]
    torn: int
    """Slots caught half written (the commit word disagrees with the record)."""
    invalid: int
    """Slots whose contents break the format (a number in the wrong slot, a length past the slot)."""
    missing_slots: int
    """Slots beyond the bytes the reader was given (a region stored only in part)."""

    @property
    def role_name(self) -> str:
        try:
            return RingRole(self.role).name.lower()
        except ValueError:
            return f"role{self.role}"

    @property
    def last_seq(self) -> int:
        """The highest sequence number among the whole records (how many were ever written, at least)."""
        return self.records[-1].seq if self.records else 0

    @property
    def overwritten(self) -> int:
        """Records written before the oldest one kept (pushed out of the ring)."""
        return self.records[0].seq - 1 if self.records else 0


def parse_ring(data: bytes | bytearray | memoryview) -> Ring:
    """Decode a ring; :class:`DecodeError` if the header is not a v1 ring's.

    Nothing in ``data`` is trusted: every slot is bounds-checked, torn and invalid slots are counted
    and left out, duplicate numbers are dropped, and text is decoded with replacement characters.
    ``data`` may be shorter than the ring (a partly stored region): the slots it holds are read.
    """
    view = memoryview(data).cast("B") if isinstance(data, memoryview) else memoryview(data)
    if len(view) < HEADER_SIZE:
        raise DecodeError(f"a ring is at least {HEADER_SIZE} bytes; this region has {len(view)}")
    magic, version, header_size, slot_size, capacity, role, _flags, created_ns = HEADER_STRUCT.unpack_from(
        view, 0
    )
    if magic != MAGIC:
        raise DecodeError("not a kmemdump record ring (bad magic)")
    if version != VERSION:
        raise DecodeError(f"unsupported ring format version {version} (this reader knows {VERSION})")
    if header_size != HEADER_SIZE:
        raise DecodeError(f"ring header_size is {header_size}, format v{VERSION} has {HEADER_SIZE}")
    try:
        check_geometry(capacity, slot_size)
    except InvalidRegionError as err:
        raise DecodeError(f"ring geometry is invalid: {err.message}", **err.context) from err
    room = slot_size - SLOT_HEADER
    held = min(capacity, max(0, (len(view) - HEADER_SIZE) // slot_size))
    found: dict[int, RingRecord] = {}
    torn = invalid = 0
    for slot in range(held):
        offset = HEADER_SIZE + slot * slot_size
        (commit,) = _COMMIT.unpack_from(view, offset)
        seq, time, level, flags, _reserved, length, full = RECORD_STRUCT.unpack_from(view, offset + 8)
        if commit == 0 and seq == 0:
            continue  # never written
        if commit != seq:
            torn += 1
            continue
        if (seq - 1) % capacity != slot or length > room or full < length or flags & ~CUT or seq in found:
            invalid += 1
            continue
        start = offset + SLOT_HEADER
        text = bytes(view[start : start + length]).decode("utf-8", "replace")
        found[seq] = RingRecord(seq, time, level, text, bool(flags & CUT), full)
    records = tuple(found[seq] for seq in sorted(found))
    if records:  # a ring holds at most its last `capacity` records; older numbers are stale slots
        newest = records[-1].seq
        kept = tuple(r for r in records if r.seq > newest - capacity)
        invalid += len(records) - len(kept)
        records = kept
    return Ring(role, capacity, slot_size, created_ns, records, torn, invalid, capacity - held)

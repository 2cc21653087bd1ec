"""The shared table format v1: layout, writer, validating reader, hostile files.

Everything here works on buffers and files built by the test; the process-level behaviour
(backend, torture, heartbeat) is in ``test_table_backend.py`` and ``test_watchdog.py``.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck
from hypothesis import event
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from budget import examples
from kmemdump.errors import ForeignTableError
from kmemdump.errors import InvalidRegionError
from kmemdump.errors import TableFormatError
from kmemdump.formats import table as fmt
from kmemdump.formats.enums import RegionFlags
from kmemdump.formats.enums import RegionKind
from kmemdump.formats.enums import TableState
from kmemdump.formats.kinds import GRAPH_ROOT
from kmemdump.formats.kinds import graph_word
from kmemdump.formats.table import ENTRY_SIZE
from kmemdump.formats.table import HEADER_SIZE
from kmemdump.formats.table import VALID
from kmemdump.formats.table import TableReader
from kmemdump.formats.table import TableWriter
from kmemdump.formats.table import parse_header
from kmemdump.formats.table import parse_table
from kmemdump.formats.table import read_table
from kmemdump.formats.table import table_size
from kmemdump.formats.table import write_collector_pid

DOCS = Path(__file__).resolve().parents[1] / "docs" / "formats.md"


def new_table(
    capacity: int = 8, *, pid: int = 4321, start_time: int = 98765, py_hexversion: int = sys.hexversion
) -> tuple[bytearray, TableWriter]:
    buf = bytearray(table_size(capacity))
    writer = TableWriter(
        buf,
        capacity=capacity,
        pid=pid,
        start_time=start_time,
        py_hexversion=py_hexversion,
        created_ns=1_700_000_000,
    )
    return buf, writer


ARENA_BASE = 0x5555_0000_0000
ARENA_SIZE = 0x10000


def sample_table(capacity: int = 8) -> bytearray:
    """A valid table with an arena and three live entries in slots 0, 2 (persistent) and 5."""
    buf, writer = new_table(capacity)
    writer.put(0, 16, "state", 0x7F00_0000_1000, 4096, RegionKind.BUFFER)
    writer.set_arena(ARENA_BASE, ARENA_SIZE)
    writer.put(2, 1, "banner", 0x5555_0000_0010, 200, RegionKind.OBJECT, flags=RegionFlags.PERSISTENT)
    writer.put(5, 1024, "naïve ✓", 0xFFFF_FFFF_FFFF_F000, 0x1000, RegionKind.ADDRESS)
    writer.set_state(TableState.RUNNING)
    return buf


def write_file(directory: Path, data: bytes, name: str = "1-2.table") -> Path:
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return path


# --- layout -------------------------------------------------------------------------------------


def test_struct_sizes_match_the_format() -> None:
    assert fmt.HEADER_STRUCT.size == HEADER_SIZE == 128
    assert fmt.ENTRY_STRUCT.size == ENTRY_SIZE == 64
    assert table_size(1) == 192
    assert table_size(201) == 128 + 201 * 64
    assert struct.pack("<I", VALID) == b"ILAV"


def test_every_header_field_lands_at_its_offset() -> None:
    buf, writer = new_table(3, pid=0x01020304, start_time=0x1122334455667788, py_hexversion=0x030B07F0)
    writer.set_state(TableState.EXITING)
    writer.set_watchdog(0x0A0B0C0D0E0F1011)
    writer.put(1, 77, "x", 0x1000, 1, RegionKind.BUFFER)
    writer.set_arena(0x2122232425262728, 0x3132333435363738)
    writer.feed()
    buf[fmt.OFF_COLLECTOR_PID : fmt.OFF_COLLECTOR_PID + 4] = struct.pack("<I", 999)

    def u16(offset: int) -> int:
        return int(struct.unpack_from("<H", buf, offset)[0])

    def u32(offset: int) -> int:
        return int(struct.unpack_from("<I", buf, offset)[0])

    def u64(offset: int) -> int:
        return int(struct.unpack_from("<Q", buf, offset)[0])

    assert bytes(buf[0:8]) == b"KMDTABLE"
    assert (u16(8), u16(10), u16(12), u16(14)) == (1, 128, 64, 0)
    assert u32(16) == 3
    assert u32(20) == 0x01020304
    assert u64(24) == 0x1122334455667788
    assert u32(32) == 0x030B07F0
    assert u32(36) == TableState.EXITING
    assert u64(40) == 4  # two changes (the entry, the arena): odd then even each
    assert u64(48) == 1
    assert abs(u64(56) - time.monotonic_ns()) < 10**9 * 60
    assert u64(64) == 0x0A0B0C0D0E0F1011
    assert u32(72) == 999
    assert u32(76) == 1
    assert u64(80) == 1_700_000_000
    assert (u64(88), u64(96)) == (0x2122232425262728, 0x3132333435363738)
    assert bytes(buf[104:128]) == bytes(24)
    entry = 128 + 64
    assert bytes(buf[entry : entry + 32]) == b"x" + bytes(31)
    assert (u32(entry + 32), u32(entry + 36), u64(entry + 40), u64(entry + 48)) == (77, VALID, 0x1000, 1)
    assert (u16(entry + 56), u16(entry + 58), u32(entry + 60)) == (RegionKind.BUFFER, 0, 0)
    header = parse_header(buf)
    assert (header.collector_pid, header.heartbeat, header.state) == (999, 1, TableState.EXITING)
    assert (header.arena_base, header.arena_size) == (0x2122232425262728, 0x3132333435363738)


def _doc_rows(title: str) -> list[tuple[int, int, str]]:
    text = DOCS.read_text(encoding="utf-8")
    section = text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
    return [
        (int(off), int(size), name)
        for off, size, name in re.findall(r"^\| (\d+) \| (\d+) \| `(\w+)` \|", section, re.MULTILINE)
    ]


def test_docs_describe_the_header_the_code_writes() -> None:
    rows = _doc_rows("Header")
    assert [name for _, _, name in rows][:2] == ["magic", "version"]
    position = 0
    for offset, size, name in rows:
        assert offset == position, name
        if name != "reserved":
            assert getattr(fmt, f"OFF_{name.upper()}") == offset, name
        position += size
    assert position == HEADER_SIZE


def test_docs_describe_the_entry_the_code_writes() -> None:
    rows = _doc_rows("Entries")
    constants = {
        "name": fmt.ENTRY_NAME,
        "id": fmt.ENTRY_ID,
        "valid": fmt.ENTRY_VALID,
        "address": fmt.ENTRY_ADDRESS,
        "size": fmt.ENTRY_SIZE_FIELD,
        "kind": fmt.ENTRY_KIND,
        "flags": fmt.ENTRY_FLAGS,
        "graph": fmt.ENTRY_GRAPH,
    }
    position = 0
    for offset, size, name in rows:
        assert offset == position, name
        if name != "reserved":
            assert constants.pop(name) == offset
        position += size
    assert position == ENTRY_SIZE
    assert constants == {}
    kinds = re.findall(r"^\| (\d) \| ([A-Z]+) \|", DOCS.read_text(encoding="utf-8"), re.MULTILINE)
    assert {int(value): name for value, name in kinds} == {int(k): k.name for k in RegionKind}


# --- writer -----------------------------------------------------------------------------------------


def test_round_trip_and_seqlock_generation() -> None:
    buf = sample_table()
    snap = parse_table(bytes(buf))
    assert snap.header.generation == 8  # four changes (three entries, the arena), two steps each
    assert snap.header.count == 3
    assert snap.header.state == TableState.RUNNING
    assert [(e.slot, e.id, e.name, e.address, e.size, e.kind, e.flags) for e in snap.entries] == [
        (2, 1, "banner", 0x5555_0000_0010, 200, RegionKind.OBJECT, RegionFlags.PERSISTENT),
        (0, 16, "state", 0x7F00_0000_1000, 4096, RegionKind.BUFFER, 0),
        (5, 1024, "naïve ✓", 0xFFFF_FFFF_FFFF_F000, 0x1000, RegionKind.ADDRESS, 0),
    ]
    assert snap.entries[2].end == 2**64
    assert [e.persistent for e in snap.entries] == [True, False, False]
    assert (snap.header.arena_base, snap.header.arena_size) == (ARENA_BASE, ARENA_SIZE)


def test_clear_zeroes_the_slot_and_replacing_keeps_the_count() -> None:
    buf, writer = new_table(4)
    writer.put(1, 20, "a", 0x1000, 10, RegionKind.BUFFER)
    writer.put(1, 21, "b", 0x2000, 20, RegionKind.CTYPES)  # replaces the entry in slot 1
    assert (writer.count, writer.generation) == (1, 4)
    assert [(e.id, e.name) for e in parse_table(buf).entries] == [(21, "b")]
    writer.clear(1)
    writer.clear(1)  # a free slot is left alone: no generation bump
    assert (writer.count, writer.generation) == (0, 6)
    assert bytes(buf[HEADER_SIZE:]) == bytes(4 * ENTRY_SIZE)
    assert parse_table(buf).entries == ()


@pytest.mark.parametrize(
    ("args", "what"),
    [
        ((0, 16, "x" * 32, 0x1000, 1, 1), "name"),
        ((0, 16, "é" * 16, 0x1000, 1, 1), "name"),
        ((0, 16, "a\0b", 0x1000, 1, 1), "name"),
        ((4, 16, "x", 0x1000, 1, 1), "slot"),
        ((-1, 16, "x", 0x1000, 1, 1), "slot"),
        ((0, 0, "x", 0x1000, 1, 1), "id"),
        ((0, 2**32, "x", 0x1000, 1, 1), "id"),
        ((0, 16, "x", 0x1000, 0, 1), "address space"),
        ((0, 16, "x", -1, 1, 1), "address space"),
        ((0, 16, "x", 2**64 - 1, 2, 1), "address space"),
        ((0, 16, "x", 0x1000, 1, 0), "kind"),
        ((0, 16, "x", 0x1000, 1, 99), "kind"),
        ((0, 16, "x", 0x1000, 1, 1, 0x10000), "flags"),
        ((0, 16, "x", 0x1000, 1, 1, 2), "unknown entry flags"),
        ((0, 16, "x", ARENA_BASE + ARENA_SIZE, 1, 1, 1), "inside the arena"),
        ((0, 16, "x", ARENA_BASE - 1, 2, 1, 1), "inside the arena"),
    ],
)
def test_put_refuses_what_the_format_cannot_hold(args: tuple[int | str, ...], what: str) -> None:
    buf, writer = new_table(4)
    writer.set_arena(ARENA_BASE, ARENA_SIZE)
    before = bytes(buf)
    with pytest.raises(InvalidRegionError, match=what):
        writer.put(*args)  # type: ignore[arg-type]
    assert bytes(buf) == before  # refused before the seqlock was touched


def test_persistent_entries_need_an_arena_set_once() -> None:
    buf, writer = new_table(4)
    with pytest.raises(InvalidRegionError, match="inside the arena"):
        writer.put(0, 16, "x", ARENA_BASE, 16, RegionKind.BUFFER, RegionFlags.PERSISTENT)
    assert writer.arena is None and parse_header(buf).arena_size == 0
    writer.set_arena(ARENA_BASE, ARENA_SIZE)
    writer.set_arena(ARENA_BASE, ARENA_SIZE)  # the same range again: nothing changes
    assert writer.generation == 2
    with pytest.raises(InvalidRegionError, match="another arena"):
        writer.set_arena(ARENA_BASE + 16, ARENA_SIZE)
    for base, size in ((0, 16), (16, 0), (2**64 - 8, 16), (True, 16)):
        with pytest.raises(InvalidRegionError, match="arena must be"):
            writer.set_arena(base, size)
    writer.put(0, 16, "x", ARENA_BASE + ARENA_SIZE - 16, 16, RegionKind.BUFFER, RegionFlags.PERSISTENT)
    assert [e.persistent for e in parse_table(buf).entries] == [True]


def test_writer_refuses_small_or_read_only_buffers() -> None:
    with pytest.raises(TableFormatError, match="smaller"):
        TableWriter(
            bytearray(table_size(4) - 1), capacity=4, pid=1, start_time=1, py_hexversion=0, created_ns=0
        )
    with pytest.raises(TypeError):
        TableWriter(bytes(table_size(4)), capacity=4, pid=1, start_time=1, py_hexversion=0, created_ns=0)  # type: ignore[arg-type]
    for capacity in (0, fmt.MAX_CAPACITY + 1, True):
        with pytest.raises(TableFormatError, match="capacity"):
            table_size(capacity)


def test_feed_counts_stamps_and_ticks_every_1024th() -> None:
    ticks: list[int] = []
    buf = bytearray(table_size(1))
    writer = TableWriter(
        buf, capacity=1, pid=1, start_time=1, py_hexversion=0, created_ns=0, on_tick=lambda: ticks.append(1)
    )
    before = time.monotonic_ns()
    for _ in range(2048):
        writer.feed()
    after = time.monotonic_ns()
    header = parse_header(buf)
    assert header.heartbeat == 2048
    assert before <= header.last_feed_ns <= after
    assert len(ticks) == 2
    assert header.generation == 0  # feeding is outside the seqlock


# --- reader: targeted malformations --------------------------------------------------------------------


def _entry(slot: int, field: int = 0) -> int:
    return HEADER_SIZE + slot * ENTRY_SIZE + field


Change = Callable[[bytearray], bytearray]


def poke(offset: int, code: str, value: int | bytes) -> Change:
    """Overwrite one field (``struct`` code ``code``) at ``offset``."""

    def change(buf: bytearray) -> bytearray:
        struct.pack_into("<" + code, buf, offset, value)
        return buf

    return change


def cut(end: int) -> Change:
    return lambda buf: buf[:end]


MALFORMATIONS: list[tuple[str, Change, str]] = [
    ("bad magic", poke(0, "8s", b"KMDTABLX"), "magic"),
    ("version 2", poke(8, "H", 2), "version 2"),
    ("header_size", poke(10, "H", 256), "header_size"),
    ("entry_size", poke(12, "H", 32), "entry_size"),
    ("capacity 0", poke(16, "I", 0), "capacity 0"),
    ("capacity too big", poke(16, "I", 65537), "capacity 65537"),
    ("capacity lies", poke(16, "I", 9), "truncated"),
    ("unknown state", poke(36, "I", 7), "state"),
    ("odd generation", poke(40, "Q", 7), "odd"),
    ("count lies", poke(76, "I", 2), "count says 2"),
    ("short header", cut(100), "shorter than its 128-byte header"),
    ("truncated entries", cut(-1), "truncated"),
    ("valid marker", poke(_entry(0, 36), "I", 0x56414C48), "valid marker"),
    ("name without NUL", poke(_entry(0), "32s", b"n" * 32), "no NUL"),
    ("invalid UTF-8", poke(_entry(0), "3s", b"\xff\xfe\0"), "UTF-8"),
    ("size 0", poke(_entry(0, 48), "Q", 0), "size is 0"),
    ("past 2**64", poke(_entry(0, 48), "Q", 2**64 - 1), "past the end"),
    ("unknown kind", poke(_entry(0, 56), "H", 77), "unknown kind 77"),
    ("duplicate id", poke(_entry(5, 32), "I", 16), "id 16 appears in two slots"),
    ("dirty free slot", poke(_entry(7, 63), "B", 1), "free slot"),
    ("free slot with valid marker", poke(_entry(1, 36), "I", VALID), "free slot"),
    ("unknown flag bit", poke(_entry(0, 58), "H", 4), "unknown flags 0x4"),
    ("persistent outside arena", poke(_entry(0, 58), "H", 1), "outside the arena"),
    ("persistent past arena end", poke(_entry(2, 48), "Q", ARENA_SIZE), "outside the arena"),
    ("arena base without size", poke(96, "Q", 0), "arena_base is set but arena_size is 0"),
    ("arena size without base", poke(88, "Q", 0), "arena_size is set but arena_base is 0"),
    ("arena past 2**64", poke(96, "Q", 2**64 - 1), "past the end of the 64-bit"),
    ("arena moved away", poke(88, "Q", ARENA_BASE + 0x100), "outside the arena"),
]


@pytest.mark.parametrize(
    ("change", "message"), [(m[1], m[2]) for m in MALFORMATIONS], ids=[m[0] for m in MALFORMATIONS]
)
def test_each_malformation_is_named(change: Callable[[bytearray], bytearray], message: str) -> None:
    data = bytes(change(sample_table()))
    with pytest.raises(TableFormatError, match=re.escape(message)):
        parse_table(data)


def test_errors_say_which_slot_and_offset() -> None:
    buf = sample_table()
    struct.pack_into("<H", buf, _entry(5, 56), 9)
    with pytest.raises(TableFormatError) as info:
        parse_table(buf)
    assert info.value.context == {"slot": 5, "offset": _entry(5, 56)}
    assert "slot=5" in str(info.value)


# --- reader: hypothesis ------------------------------------------------------------------------------

HEADER_FIELDS = [(0, "8s"), (8, "H"), (10, "H"), (12, "H"), (16, "I"), (36, "I"), (40, "Q"), (76, "I")]
FIELDS = [*HEADER_FIELDS, (88, "Q"), (96, "Q")] + [
    (_entry(slot, off), code)
    for slot in (0, 1, 2, 7)
    for off, code in ((0, "32s"), (32, "I"), (36, "I"), (40, "Q"), (48, "Q"), (56, "H"), (58, "H"))
]
INTERESTING = [
    0,
    1,
    2,
    5,
    6,
    7,
    16,
    31,
    32,
    64,
    128,
    0x56414C49,
    2**16 - 1,
    2**31,
    2**32 - 1,
    2**63,
    2**64 - 1,
]


@st.composite
def field_writes(draw: st.DrawFn) -> tuple[int, bytes]:
    offset, code = draw(st.sampled_from(FIELDS))
    if code.endswith("s"):
        width = int(code[:-1])
        value = draw(st.one_of(st.binary(min_size=width, max_size=width), st.just(b"KMDTABLE"[:width])))
        return offset, value.ljust(width, b"\0")
    limit = 2 ** (8 * struct.calcsize(code)) - 1
    number = draw(st.one_of(st.sampled_from([v for v in INTERESTING if v <= limit]), st.integers(0, limit)))
    return offset, struct.pack("<" + code, number)


mutations = st.one_of(
    st.tuples(st.just("field"), field_writes()),
    st.tuples(
        st.just("bytes"), st.tuples(st.integers(0, table_size(8) - 1), st.binary(min_size=1, max_size=16))
    ),
)


def _check_consistent(snapshot: fmt.TableSnapshot, length: int) -> None:
    header = snapshot.header
    assert header.generation % 2 == 0
    assert len(snapshot.entries) == header.count <= header.capacity
    assert table_size(header.capacity) <= length
    assert [e.id for e in snapshot.entries] == sorted({e.id for e in snapshot.entries})
    assert header.arena_base + header.arena_size <= 2**64
    assert (header.arena_base == 0) == (header.arena_size == 0)
    for entry in snapshot.entries:
        assert entry.id > 0 and entry.size > 0 and entry.address + entry.size <= 2**64
        assert len(entry.name.encode()) <= 31 and "\0" not in entry.name
        assert 0 <= entry.slot < header.capacity
        assert entry.flags & ~fmt.KNOWN_ENTRY_FLAGS == 0
        if entry.persistent:
            assert header.arena_base <= entry.address and entry.end <= header.arena_end


@settings(max_examples=examples(1500), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    changes=st.lists(mutations, min_size=1, max_size=4),
    cut=st.one_of(st.none(), st.integers(0, table_size(8) + 64)),
    tail=st.binary(max_size=64),
)
def test_hostile_tables_raise_only_table_format_error(
    changes: list[tuple[str, tuple[int, bytes]]], cut: int | None, tail: bytes
) -> None:
    buf = sample_table()
    for _kind, (offset, value) in changes:
        buf[offset : offset + len(value)] = value
        del buf[table_size(8) :]  # a write near the end must not grow the table
    data = bytes(buf) + tail
    if cut is not None:
        data = data[:cut]
    # bytes of exactly this length: any read past the end would raise struct.error / IndexError
    try:
        snapshot = parse_table(data)
    except TableFormatError as err:
        assert str(err)
        return
    _check_consistent(snapshot, len(data))


@settings(max_examples=examples(300), deadline=None)
@given(data=st.binary(max_size=400))
def test_random_bytes_raise_only_table_format_error(data: bytes) -> None:
    for candidate in (data, b"KMDTABLE" + data):
        with contextlib.suppress(TableFormatError):
            _check_consistent(parse_table(candidate), len(candidate))


@settings(
    max_examples=examples(100), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    changes=st.lists(st.tuples(st.just("field"), field_writes()), min_size=1, max_size=3),
    end=st.integers(0, 700),
)
def test_hostile_files_raise_only_table_format_error(
    tmp_path: Path, changes: list[tuple[str, tuple[int, bytes]]], end: int
) -> None:
    buf = sample_table()
    for _kind, (offset, value) in changes:
        buf[offset : offset + len(value)] = value
    with tempfile.TemporaryDirectory(dir=tmp_path) as scratch:
        path = write_file(Path(scratch), bytes(buf[:end]))
        with contextlib.suppress(TableFormatError):
            _check_consistent(read_table(path, retries=2), end)


ENTRY_FIELDS_ALL = [
    (_entry(slot, off), code)
    for slot in (0, 1, 2, 5, 7)
    for off, code in ((0, "32s"), (32, "I"), (36, "I"), (40, "Q"), (48, "Q"), (56, "H"), (58, "H"), (60, "I"))
]


@st.composite
def entry_writes(draw: st.DrawFn) -> tuple[int, bytes]:
    offset, code = draw(st.sampled_from(ENTRY_FIELDS_ALL))
    if code.endswith("s"):
        width = int(code[:-1])
        return offset, draw(st.binary(min_size=width, max_size=width))
    limit = 2 ** (8 * struct.calcsize(code)) - 1
    interesting = [v for v in [*INTERESTING, GRAPH_ROOT | 3, int(RegionKind.OBJECT)] if v <= limit]
    number = draw(st.one_of(st.sampled_from(interesting), st.integers(0, limit)))
    return offset, struct.pack("<" + code, number)


@settings(max_examples=examples(1500), deadline=None)
@given(changes=st.lists(entry_writes(), min_size=1, max_size=4))
def test_the_column_parse_accepts_exactly_what_the_slot_by_slot_parse_accepts(
    changes: list[tuple[int, bytes]],
) -> None:
    """parse_table checks a table column by column and falls back to the slot-by-slot loop (which
    names the bad slot) only when a check fails: the fast path must never accept a table the loop
    refuses, and must build the same entries when both accept it."""
    buf = sample_table()
    for offset, value in changes:
        buf[offset : offset + len(value)] = value
    rows = list(fmt.ENTRY_STRUCT.iter_unpack(bytes(buf[HEADER_SIZE : table_size(8)])))
    bounds = (ARENA_BASE, ARENA_BASE + ARENA_SIZE)
    fast = fmt._entries_at_once(rows, *bounds)
    try:
        careful = fmt._entries_one_by_one(rows, *bounds)
    except TableFormatError:
        event("refused")
        assert fast is None
        return
    event("accepted")
    assert fast is not None  # the same checks: a table the loop accepts passes the columns' too
    assert fast == careful
    assert [(e.slot, e.name, e.kind, type(e.kind)) for e in fast] == [
        (e.slot, e.name, e.kind, type(e.kind)) for e in careful
    ]


def test_a_large_valid_table_is_parsed_column_by_column_into_the_same_entries() -> None:
    buf, writer = new_table(3000)
    writer.set_arena(ARENA_BASE, ARENA_SIZE)
    for slot in range(0, 3000, 2):
        region_id = 5000 - slot  # slots in the opposite order to the IDs
        kind = RegionKind.OBJECT if slot % 3 else RegionKind.BUFFER
        graph = graph_word(2) if kind == RegionKind.OBJECT and slot % 7 == 0 else 0
        writer.put(slot, region_id, f"r{slot % 5}", 0x7F00_0000_0000 + slot * 80, 64, kind, graph=graph)
    writer.put(1, 7, "kept", ARENA_BASE + 64, 32, RegionKind.BUFFER, flags=RegionFlags.PERSISTENT)
    rows = list(fmt.ENTRY_STRUCT.iter_unpack(bytes(buf[HEADER_SIZE : table_size(3000)])))
    bounds = (ARENA_BASE, ARENA_BASE + ARENA_SIZE)
    fast = fmt._entries_at_once(rows, *bounds)
    assert fast is not None and len(fast) == 1501
    assert fast == fmt._entries_one_by_one(rows, *bounds)
    snapshot = parse_table(bytes(buf))
    assert [e.id for e in snapshot.entries] == sorted(e.id for e in fast)
    assert {e.graph_depth for e in snapshot.entries} == {None, 2}


# --- read_table: the file and the seqlock ---------------------------------------------------------------


def test_read_table_round_trip(tmp_path: Path) -> None:
    path = write_file(tmp_path, bytes(sample_table()))
    assert read_table(path) == parse_table(sample_table())
    with TableReader(path) as reader:
        assert reader.header() == parse_header(sample_table())
        assert reader.snapshot().entries == parse_table(sample_table()).entries


def test_read_table_ignores_bytes_after_the_table(tmp_path: Path) -> None:
    path = write_file(tmp_path, bytes(sample_table()) + b"\xff" * 100)
    assert len(read_table(path).entries) == 3


def test_stuck_odd_generation_gives_up(tmp_path: Path) -> None:
    buf = sample_table()
    struct.pack_into("<Q", buf, fmt.OFF_GENERATION, 9)
    path = write_file(tmp_path, bytes(buf))
    started = time.monotonic()
    with pytest.raises(TableFormatError, match="kept changing"):
        read_table(path, retries=20)
    assert time.monotonic() - started < 5


def test_read_table_refuses_a_symlink(tmp_path: Path) -> None:
    real = write_file(tmp_path, bytes(sample_table()))
    link = tmp_path / "link.table"
    link.symlink_to(real)
    with pytest.raises(ForeignTableError, match="symbolic link"):
        read_table(link)


def test_read_table_does_not_block_on_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.table"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(ForeignTableError, match="not a regular file"):
        read_table(fifo)
    with pytest.raises(ForeignTableError, match="not a regular file"):
        read_table(tmp_path)


def test_missing_table_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_table(tmp_path / "9-9.table")


def test_a_table_of_another_uid_is_foreign_to_a_non_root_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_file(tmp_path, bytes(sample_table()))
    monkeypatch.setattr(os, "geteuid", lambda: os.stat(path).st_uid + 1000)
    with pytest.raises(ForeignTableError, match="another user") as info:
        read_table(path)
    assert info.value.context["uid"] == os.stat(path).st_uid
    with pytest.raises(ForeignTableError):
        write_collector_pid(path, 5)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
def test_real_uids_root_reads_all_other_users_read_none() -> None:
    # A world-readable directory outside pytest's private tmp tree, so a setuid child can reach it.
    scratch = Path(tempfile.mkdtemp(prefix="kmd-uid-"))
    try:
        scratch.chmod(0o755)
        path = write_file(scratch, bytes(sample_table()))
        os.chown(path, 4242, 4242)
        path.chmod(0o644)  # readable, so that only the ownership check can refuse it
        assert len(read_table(path).entries) == 3  # root reads every user's tables
        code = textwrap.dedent(
            f"""
            import os, sys
            from kmemdump.errors import ForeignTableError
            from kmemdump.formats.table import read_table
            os.setgid(65534); os.setuid(65534)
            try:
                read_table({str(path)!r})
            except ForeignTableError as err:
                print("foreign:", err)
            else:
                print("accepted")
            """
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
        )
        assert out.stdout.startswith("foreign: table belongs to another user"), out.stdout + out.stderr
    finally:
        for child in scratch.iterdir():
            child.unlink()
        scratch.rmdir()


def test_beat_reads_the_heartbeat_words_of_the_header(tmp_path: Path) -> None:
    buf, writer = new_table(4)
    writer.set_watchdog(2_000_000_000)
    feed = writer.feed
    feed()
    feed()
    path = write_file(tmp_path, bytes(buf))
    with TableReader(path) as reader:
        header, beat = reader.header(), reader.beat()
    assert beat == (header.generation, header.heartbeat, header.last_feed_ns, header.watchdog_timeout_ns)
    assert beat.heartbeat == 2 and beat.deadline_ns == header.deadline_ns
    assert beat.hung(header.last_feed_ns + 2_000_000_000) and not beat.hung(
        header.last_feed_ns + 1_999_999_999
    )
    short = write_file(tmp_path, bytes(buf[:60]), name="3-4.table")
    with TableReader(short) as reader, pytest.raises(TableFormatError, match="truncated"):
        reader.beat()


def test_write_collector_pid(tmp_path: Path) -> None:
    path = write_file(tmp_path, bytes(sample_table()))
    write_collector_pid(path, 31337)
    assert read_table(path).header.collector_pid == 31337
    assert read_table(path).entries == parse_table(sample_table()).entries
    bad = write_file(tmp_path, b"not a table" * 20, name="bad.table")
    with pytest.raises(TableFormatError, match="magic"):
        write_collector_pid(bad, 1)
    assert bad.read_bytes() == b"not a table" * 20
    with pytest.raises(InvalidRegionError):
        write_collector_pid(path, 2**32)


def test_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # str paths (the dump's start-up loads no pathlib), the places pathlib would name
    assert fmt.table_path(tmp_path, 12, 345) == str(tmp_path / "12-345.table")
    assert fmt.table_path(str(tmp_path) + "/", 12, 345) == str(tmp_path / "12-345.table")
    monkeypatch.setenv("KMEMDUMP_DIR", str(tmp_path))
    assert fmt.default_dir() == str(tmp_path)
    monkeypatch.delenv("KMEMDUMP_DIR")
    assert fmt.default_dir() == f"/dev/shm/kmemdump-{os.geteuid()}"


# --- the graph word (offset 60): live object-graph roots --------------------------------------------


def test_a_graph_root_carries_its_depth_in_the_graph_word() -> None:
    buf, writer = new_table()
    writer.put(0, 1030, "state", 0x7F00_0000_2000, 64, RegionKind.OBJECT, graph=GRAPH_ROOT | 3)
    writer.put(1, 1031, "plain", 0x7F00_0000_3000, 64, RegionKind.OBJECT)
    entry_at = HEADER_SIZE
    assert struct.unpack_from("<I", buf, entry_at + fmt.ENTRY_GRAPH)[0] == 0x8000_0003
    root, plain = parse_table(bytes(buf)).entries
    assert (root.graph, root.graph_depth) == (0x8000_0003, 3)
    assert (plain.graph, plain.graph_depth) == (0, None)
    assert graph_word(None) == 0 and graph_word(0) == GRAPH_ROOT


@pytest.mark.parametrize(
    ("kind", "graph", "message"),
    [
        (RegionKind.BUFFER, GRAPH_ROOT | 1, "only an OBJECT region"),
        (RegionKind.OBJECT, GRAPH_ROOT | 65, "graph word"),
        (RegionKind.OBJECT, 3, "graph word"),  # a depth without the root bit
        (RegionKind.OBJECT, GRAPH_ROOT | 0x100, "graph word"),  # a bit this format does not define
    ],
)
def test_the_writer_refuses_graph_words_the_format_does_not_define(
    kind: RegionKind, graph: int, message: str
) -> None:
    _, writer = new_table()
    with pytest.raises(InvalidRegionError, match=message):
        writer.put(0, 1030, "x", 0x7F00_0000_2000, 64, kind, graph=graph)
    assert writer.count == 0


@pytest.mark.parametrize("word", [GRAPH_ROOT | 65, 0x0000_0001, GRAPH_ROOT | 0x4000])
def test_the_reader_refuses_a_corrupt_graph_word(word: int) -> None:
    buf, writer = new_table()
    writer.put(0, 1030, "state", 0x7F00_0000_2000, 64, RegionKind.OBJECT, graph=GRAPH_ROOT | 1)
    struct.pack_into("<I", buf, HEADER_SIZE + fmt.ENTRY_GRAPH, word)
    with pytest.raises(TableFormatError, match="graph word") as caught:
        parse_table(bytes(buf))
    assert caught.value.context["offset"] == HEADER_SIZE + fmt.ENTRY_GRAPH


def test_a_graph_word_on_a_buffer_entry_is_refused() -> None:
    buf, writer = new_table()
    writer.put(0, 1030, "bytes", 0x7F00_0000_2000, 64, RegionKind.BUFFER)
    struct.pack_into("<I", buf, HEADER_SIZE + fmt.ENTRY_GRAPH, GRAPH_ROOT | 1)
    with pytest.raises(TableFormatError, match="graph word"):
        parse_table(bytes(buf))

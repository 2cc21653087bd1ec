"""The record ring format: written by the producer's appender, read back by a reader that trusts nothing.

Round trips (wrapping, cutting at a character boundary), every byte the documentation promises,
a record caught half written at each point of its write, and random damage, which the reader must
survive with a typed error or by counting the slot as torn or invalid.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from budget import examples
from kmemdump.errors import DecodeError
from kmemdump.errors import InvalidRegionError
from kmemdump.formats import ring as fmt
from kmemdump.formats.ring import RingRole


def make(capacity: int = 4, slot: int = 64, role: RingRole = RingRole.LOG) -> tuple[bytearray, fmt.Appender]:
    buf = bytearray(fmt.ring_size(capacity, slot))
    fmt.pack_header(memoryview(buf), capacity=capacity, slot_size=slot, role=role, created_ns=123)
    return buf, fmt.make_appender(memoryview(buf), capacity, slot)


def test_header_and_slot_bytes_are_as_documented() -> None:
    buf, append = make(capacity=3, slot=64)
    assert buf[:8] == b"KMDRING\0"
    assert struct.unpack_from("<HHIIHHQ", buf, 8) == (1, 64, 64, 3, 1, 0, 123)
    assert buf[32:64] == bytes(32)
    seq = append("héllo", 30, 1.5)
    slot = fmt.HEADER_SIZE  # record 1 is in slot 0
    assert seq == 1
    assert struct.unpack_from("<QQdiHHII", buf, slot) == (1, 1, 1.5, 30, 0, 0, 6, 6)
    assert buf[slot + 40 : slot + 46] == "héllo".encode()
    assert buf[slot + 46 : slot + 64] == bytes(18)


def test_records_come_back_in_order_and_the_ring_keeps_the_last_capacity() -> None:
    buf, append = make(capacity=5, slot=64)
    for i in range(23):
        append(f"record {i}", 20, float(i))
    ring = fmt.parse_ring(bytes(buf))
    assert [r.seq for r in ring.records] == list(range(19, 24))
    assert [r.text for r in ring.records] == [f"record {i}" for i in range(18, 23)]
    assert (ring.last_seq, ring.overwritten, ring.torn, ring.invalid, ring.missing_slots) == (23, 18, 0, 0, 0)
    assert (ring.role_name, ring.capacity, ring.slot_size, ring.created_ns) == ("log", 5, 64, 123)


def test_a_long_text_is_cut_at_a_character_boundary_and_says_so() -> None:
    buf, append = make(capacity=2, slot=64)  # 24 bytes of text per slot
    text = "ab" + "€" * 20  # 2 + 60 bytes; 24 bytes would split the 8th euro sign
    append(text, 40, 0.0)
    (record,) = fmt.parse_ring(bytes(buf)).records
    assert record.cut and record.full_length == len(text.encode())
    assert record.text == "ab" + "€" * 7  # 23 bytes: the next character did not fit whole
    assert record.level_name == "ERROR"


def test_unencodable_text_is_escaped_not_lost() -> None:
    buf, append = make()
    append("bad \udcff surrogate", 20, 0.0)
    assert fmt.parse_ring(bytes(buf)).records[0].text == "bad \\udcff surrogate"


@pytest.mark.parametrize(
    ("level", "when", "stored_level", "stored_time"),
    [
        (2**40, 5.0, 2**31 - 1, 5.0),  # logging takes any int as a level
        (-(2**40), 5.0, -(2**31), 5.0),
        (20, "not a time", 20, 0.0),  # a filter that replaced record.created
        (20, 10**400, 20, 0.0),
    ],
    ids=["level-above-32-bits", "level-below-32-bits", "time-a-string", "time-too-big"],
)
def test_a_level_or_time_out_of_range_never_breaks_a_slot(
    level: int, when: object, stored_level: int, stored_time: float
) -> None:
    # GIVEN a full ring of 2 (records 1 and 2)
    buf, append = make(capacity=2, slot=64)
    append("one", 20, 1.0)
    append("two", 20, 2.0)
    # WHEN record 3, over record 1's slot, has a level outside 32 bits or a time that is no number
    assert append("three", level, when) == 3  # type: ignore[arg-type]
    append("four", 30, 4.0)
    # THEN it is stored whole (level clamped, time 0), and the numbering goes on unbroken
    ring = fmt.parse_ring(bytes(buf))
    assert [r.text for r in ring.records] == ["three", "four"]
    assert (ring.records[0].level, ring.records[0].time) == (stored_level, stored_time)
    assert (ring.torn, ring.invalid) == (0, 0)


@pytest.mark.parametrize("stage", ["before", "record", "commit"])
def test_a_record_caught_half_written_is_told_apart(stage: str) -> None:
    # GIVEN a full ring of 3 (records 1..3) and record 4 being written over record 1's slot
    buf, append = make(capacity=3, slot=64)
    for i in range(3):
        append(f"old {i}", 20, 0.0)
    scratch, _ = make(capacity=3, slot=64)
    scratch[:] = buf
    later_append = fmt.make_appender(memoryview(scratch), 3, 64, first=4)
    later_append("new", 30, 1.0)
    slot = slice(fmt.HEADER_SIZE, fmt.HEADER_SIZE + 64)
    # WHEN the writer stopped before, between or after its two stores
    if stage == "record":  # the record is written, its commit word is not
        buf[fmt.HEADER_SIZE + 8 : fmt.HEADER_SIZE + 64] = scratch[fmt.HEADER_SIZE + 8 : fmt.HEADER_SIZE + 64]
    elif stage == "commit":
        buf[slot] = scratch[slot]
    ring = fmt.parse_ring(bytes(buf))
    # THEN only whole records are read: the old one until the new one is committed
    texts = [r.text for r in ring.records]
    if stage == "before":
        assert texts == ["old 0", "old 1", "old 2"] and ring.torn == 0
    elif stage == "record":
        assert texts == ["old 1", "old 2"] and ring.torn == 1
    else:
        assert texts == ["old 1", "old 2", "new"] and ring.torn == 0


def test_a_short_region_reads_the_slots_it_holds() -> None:
    buf, append = make(capacity=4, slot=64)
    for i in range(4):
        append(str(i), 20, 0.0)
    ring = fmt.parse_ring(bytes(buf[: fmt.HEADER_SIZE + 2 * 64 + 10]))
    assert [r.text for r in ring.records] == ["0", "1"] and ring.missing_slots == 2


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (0, b"XMDRING\0", "bad magic"),
        (8, struct.pack("<H", 2), "version 2"),
        (10, struct.pack("<H", 32), "header_size"),
        (12, struct.pack("<I", 60), "geometry"),
        (16, struct.pack("<I", 0), "geometry"),
    ],
)
def test_a_bad_header_is_a_decode_error(offset: int, value: bytes, message: str) -> None:
    buf, _ = make()
    buf[offset : offset + len(value)] = value
    with pytest.raises(DecodeError, match=message):
        fmt.parse_ring(bytes(buf))


def test_hostile_slots_are_counted_invalid() -> None:
    buf, append = make(capacity=4, slot=64)
    for i in range(4):
        append(str(i), 20, 0.0)
    base = fmt.HEADER_SIZE
    struct.pack_into("<QQ", buf, base + 64, 9, 9)  # number 9 belongs in slot 0, not slot 1
    struct.pack_into("<I", buf, base + 128 + 32, 999)  # a length past the slot
    struct.pack_into("<H", buf, base + 192 + 28, 6)  # an unknown flag
    ring = fmt.parse_ring(bytes(buf))
    assert [r.text for r in ring.records] == ["0"] and ring.invalid == 3


@pytest.mark.parametrize(
    ("capacity", "slot"), [(0, 64), (1, 63), (1, 60), (1, 1 << 21), (True, 64), (1, 64.0)]
)
def test_geometry_is_checked(capacity: object, slot: object) -> None:
    with pytest.raises(InvalidRegionError):
        fmt.check_geometry(capacity, slot)  # type: ignore[arg-type]


@given(
    texts=st.lists(st.text(max_size=80), min_size=1, max_size=30),
    capacity=st.integers(1, 6),
    slot=st.sampled_from([64, 72, 128]),
)
@settings(max_examples=examples(200))
def test_round_trip(texts: list[str], capacity: int, slot: int) -> None:
    buf, append = make(capacity=capacity, slot=slot)
    for level, text in enumerate(texts):
        append(text, level, float(level))
    ring = fmt.parse_ring(bytes(buf))
    kept = list(enumerate(texts))[-capacity:]
    assert [r.seq for r in ring.records] == [i + 1 for i, _ in kept]
    for record, (level, text) in zip(ring.records, kept, strict=True):
        encoded = text.encode("utf-8", "backslashreplace")
        assert record.level == level and record.full_length == len(encoded)
        assert encoded.startswith(record.text.encode())
        assert record.cut == (len(encoded) > slot - fmt.SLOT_HEADER)


@given(data=st.binary(max_size=600), flips=st.lists(st.tuples(st.integers(0, 599), st.integers(0, 255))))
@settings(max_examples=examples(300))
def test_damage_never_crashes_the_reader(data: bytes, flips: list[tuple[int, int]]) -> None:
    buf, append = make(capacity=4, slot=64)
    for i in range(6):
        append(f"record {i}", 20, 0.0)
    damaged = bytearray(buf)
    for offset, byte in flips:
        if offset < len(damaged):
            damaged[offset] = byte
    for candidate in (bytes(damaged), data, bytes(buf[:64]) + data):
        try:
            ring = fmt.parse_ring(candidate)
        except DecodeError:
            continue
        assert len(ring.records) <= ring.capacity
        assert [r.seq for r in ring.records] == sorted({r.seq for r in ring.records})

"""The packed region table (metadata v2): round trips, stays small, and refuses what is malformed."""

from __future__ import annotations

import base64
import json
import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from kmemdump.errors import DumpFormatError
from kmemdump.formats.dumpmeta import STATUSES
from kmemdump.formats.dumpmeta import DumpMeta
from kmemdump.formats.dumpmeta import RegionRecord
from kmemdump.formats.dumpmeta import decode_meta
from kmemdump.formats.dumpmeta import encode_meta
from kmemdump.formats.dumpmeta import region_record
from kmemdump.formats.dumpmeta import region_records
from kmemdump.formats.regiontable import INLINE_LIMIT
from kmemdump.formats.regiontable import Record
from kmemdump.formats.regiontable import pack_columns
from kmemdump.formats.regiontable import pack_regions
from kmemdump.formats.regiontable import unpack_regions
from kmemdump.record import fields
from tests.budget import examples


def _records(count: int, *, stride: int = 80, size: int = 64) -> list[RegionRecord]:
    return [
        RegionRecord(16 + i, "bytearray", 1, 0x7F0000000000 + i * stride, size, size, "ok")
        for i in range(count)
    ]


def _meta(regions: list[RegionRecord]) -> DumpMeta:
    return DumpMeta("request", 1, 2, 3, "h", ("python3",), None, 0, 0x30B07F0, tuple(regions), False, True)


_record = st.builds(
    lambda rid, name, kind, address, size, cut, status, error, source: (
        rid,
        name,
        kind,
        address,
        size,
        size - min(cut, size),
        status,
        error,
        source,
    ),
    st.integers(0, 2**32 - 1),
    st.text(max_size=47),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.sampled_from(STATUSES),
    st.text(max_size=200),
    st.sampled_from(("process", "arena")),
)


@settings(max_examples=examples(200), deadline=None)
@given(st.lists(_record, max_size=300))
def test_any_records_round_trip(records: list[Record]) -> None:
    assert unpack_regions(pack_regions(records)) == records


def test_regular_regions_pack_to_a_few_bytes_each() -> None:
    records = [
        (r.id, r.name, r.kind, r.address, r.size, r.stored, r.status, r.error, r.source)
        for r in _records(10_000)
    ]
    packed = pack_regions(records)
    assert len(packed) < 2 * 10_000  # base64 text, compared with about 150 bytes a record as JSON
    assert unpack_regions(packed) == records


def test_few_regions_stay_json_objects_and_many_are_packed() -> None:
    few = json.loads(encode_meta(_meta(_records(INLINE_LIMIT))))
    assert few["version"] == 1 and len(few["regions"]) == INLINE_LIMIT and "region_table" not in few
    many = json.loads(encode_meta(_meta(_records(INLINE_LIMIT + 1))))
    assert many["version"] == 2 and "regions" not in many and isinstance(many["region_table"], str)
    for count in (0, 1, INLINE_LIMIT, INLINE_LIMIT + 1, 5000):
        meta = _meta(_records(count))
        assert decode_meta(encode_meta(meta)) == meta


def test_a_mixed_table_round_trips_through_the_metadata() -> None:
    regions = _records(200)
    regions[3] = RegionRecord(19, "big", 1, 0x1000, 1 << 40, 4096, "partial", "cut by max_region")
    regions[7] = RegionRecord(23, "x", 2, 0x2000, 8, 0, "gone", "process gone during the copy")
    regions[9] = RegionRecord(25, "é☃", 1, 0x3000, 8, 0, "skipped", source="arena")
    meta = _meta(regions)
    assert decode_meta(encode_meta(meta)).regions == tuple(regions)


def test_the_fast_constructor_builds_equal_records() -> None:
    fast = region_record(16, "n", 1, 0x1000, 64, 32, "partial", "why", "arena")
    assert fast == RegionRecord(16, "n", 1, 0x1000, 64, 32, "partial", "why", "arena")
    assert hash(fast) == hash(RegionRecord(16, "n", 1, 0x1000, 64, 32, "partial", "why", "arena"))
    with pytest.raises(AttributeError):
        fast.stored = 0  # type: ignore[misc]  # still frozen


def _astuple(record: RegionRecord) -> tuple[object, ...]:
    return tuple(getattr(record, f.name) for f in fields(record))


def test_the_column_builders_make_what_the_record_builders_make() -> None:
    records = [
        RegionRecord(16 + i, f"n{i % 3}", i % 4, 0x1000 + 80 * i, 64, 64 - i % 2, "ok", "", "process")
        for i in range(300)
    ]
    records[5] = RegionRecord(9, "é☃", 2, 0x100, 8, 0, "gone", "why", "arena")
    columns = [list(column) for column in zip(*(_astuple(r) for r in records), strict=True)]
    built = region_records(*columns)
    assert built == records
    assert [hash(r) for r in built] == [hash(r) for r in records]
    with pytest.raises(AttributeError):
        built[0].stored = 0  # type: ignore[misc]  # still frozen
    as_rows = [_astuple(r) for r in records]
    assert pack_columns(*columns) == pack_regions(as_rows)  # type: ignore[arg-type]
    assert unpack_regions(pack_columns(*columns)) == as_rows
    with pytest.raises(ValueError, match="unknown region status"):
        pack_columns([1], ["a"], [1], [0], [1], [1], ["fine"], [""], ["process"])


def _header(count: int, length: int) -> bytes:
    return struct.pack("<8sII", b"KMDREGS1", count, length)


def _packed(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _good_payload() -> bytes:
    return base64.b64decode(pack_regions([(16, "a", 1, 0x1000, 8, 8, "ok", "", "process")]))[16:]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not base64!", "not base64"),
        (_packed(b"short"), "shorter than its header"),
        (_packed(b"KMDREGS2" + bytes(8)), "bad magic"),
        (_packed(_header(1 << 21, 0)), "too many records"),
        (_packed(_header(1, 10)), "impossible length"),
        (_packed(_header(1, 200) + zlib.compress(bytes(200))), "string list"),
        (_packed(_header(1, 46) + b"garbage"), "damaged"),
        (_packed(_header(2, 200) + zlib.compress(bytes(100))), "does not hold the length"),
    ],
)
def test_malformed_tables_are_refused(text: str, message: str) -> None:
    with pytest.raises(DumpFormatError, match=message):
        unpack_regions(text)


def test_a_record_that_stores_more_than_its_size_is_refused() -> None:
    raw = bytearray(zlib.decompress(_good_payload()))
    struct.pack_into("<Q", raw, 4 + 4 + 8 + 8, 9)  # missing = 9 > size 8
    with pytest.raises(DumpFormatError, match="more than its size"):
        unpack_regions(_packed(_header(1, len(raw)) + zlib.compress(bytes(raw))))


def test_a_record_naming_a_string_that_is_not_there_is_refused() -> None:
    raw = bytearray(zlib.decompress(_good_payload()))
    struct.pack_into("<I", raw, 4 + 4 + 8 + 8 + 8 + 1 + 1, 7)  # name index 7 of 2 strings
    with pytest.raises(DumpFormatError, match="refers to nothing"):
        unpack_regions(_packed(_header(1, len(raw)) + zlib.compress(bytes(raw))))


def test_metadata_with_both_region_forms_or_a_bad_version_is_refused() -> None:
    body = json.loads(encode_meta(_meta(_records(INLINE_LIMIT + 1))))
    both = dict(body, regions=[])
    with pytest.raises(DumpFormatError, match="both or neither"):
        decode_meta(json.dumps(both).encode())
    v1_packed = dict(body, version=1)
    with pytest.raises(DumpFormatError, match="region list"):
        decode_meta(json.dumps(v1_packed).encode())
    with pytest.raises(DumpFormatError, match="version"):
        decode_meta(json.dumps(dict(body, version=3)).encode())

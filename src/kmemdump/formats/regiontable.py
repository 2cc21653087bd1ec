"""The packed region table: many region records in a few bytes each (metadata format v2).

A dump of ten thousand small regions would spend more on describing them in JSON (about 150 bytes a
record) than on storing them. Past :data:`INLINE_LIMIT` regions the metadata note carries them
packed instead: one column per field, in record order, little-endian, then zlib, then base64 (so
the note stays JSON that ``readelf -n`` prints):

=========  ===================  =====================================================================
column     type                 value
=========  ===================  =====================================================================
id         u32 x count          the difference from the previous record's id (mod 2**32; the first: from 0)
kind       u32 x count          the region kind
address    u64 x count          the difference from the previous record's address (mod 2**64)
size       u64 x count          the size registered
missing    u64 x count          ``size - stored``: 0 for a region stored whole
status     u8 x count           index into :data:`STATUSES` order ``ok partial unreadable skipped gone``
source     u8 x count           index into ``process arena``
name       u32 x count          index into the string list
error      u32 x count          index into the string list (string 0 is always ``""``)
strings    u32 n, then n x (u32 length, UTF-8 bytes)
=========  ===================  =====================================================================

The payload is preceded by the 16-byte header ``b"KMDREGS1"``, u32 count, u32 payload length
(uncompressed). Regular columns (ids counting up, addresses a constant stride apart, equal sizes,
all ``ok``) compress to almost nothing. Everything is checked when read: lengths, indexes,
``stored <= size``; the uncompressed payload is bounded by the count it declares.

Standard library only; the records are plain tuples ``(id, name, kind, address, size, stored,
status, error, source)``, so that :mod:`kmemdump.formats.dumpmeta` can build its own type from them.
"""

from __future__ import annotations

import itertools
import operator
import struct
import sys

from kmemdump.errors import DumpFormatError

TYPE_CHECKING = False  # typing is imported for mypy only: the command line starts faster without it
if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["INLINE_LIMIT", "MAX_RECORDS", "Record", "pack_columns", "pack_regions", "unpack_regions"]

INLINE_LIMIT = 64
"""Up to this many regions the metadata lists them as JSON objects (format v1); more are packed."""
MAX_RECORDS = 1 << 20
"""A packed table declaring more records than this is refused (a table holds at most 65,536)."""
_MAX_STRINGS = 8 << 20
"""At most this many bytes of names and errors (a name has at most 47 bytes)."""

Record = tuple[int, str, int, int, int, int, str, str, str]
"""``(id, name, kind, address, size, stored, status, error, source)``."""

_MAGIC = b"KMDREGS1"
_HEAD = struct.Struct("<8sII")
_STATUSES = ("ok", "partial", "unreadable", "skipped", "gone")
_SOURCES = ("process", "arena")
_STATUS_INDEX = {name: i for i, name in enumerate(_STATUSES)}
_SOURCE_INDEX = {name: i for i, name in enumerate(_SOURCES)}
_FIXED = 4 + 4 + 8 + 8 + 8 + 1 + 1 + 4 + 4  # bytes per record in the columns
_M32 = (1 << 32) - 1
_M64 = (1 << 64) - 1
_LITTLE = sys.byteorder == "little"


def _column(code: str, values: Sequence[int] | list[int]) -> bytes:
    from array import array  # here: array loads collections, which reading a small dump never needs

    column = array(code, values)
    if not _LITTLE:
        column.byteswap()
    return column.tobytes()


def pack_regions(records: Sequence[Record]) -> str:
    """The records as the base64 text of a packed table."""
    if not records:
        return pack_columns([], [], [], [], [], [], [], [], [])
    return pack_columns(*zip(*records, strict=True))


def pack_columns(  # noqa: PLR0917 - one column per field of a record, in its order
    ids: Sequence[int],
    names: Sequence[str],
    kinds: Sequence[int],
    addresses: Sequence[int],
    sizes: Sequence[int],
    stored: Sequence[int],
    statuses: Sequence[str],
    errors: Sequence[str],
    sources: Sequence[str],
) -> str:
    """:func:`pack_regions` of records given as columns (the collector has them so, and a column is
    packed at C speed: no loop over the records here)."""
    strings: dict[str, int] = dict.fromkeys(("",), 0)
    for text in (*dict.fromkeys(names), *dict.fromkeys(errors)):  # first-seen order, as records name them
        strings.setdefault(text, len(strings))
    try:
        status_column = bytes(map(_STATUS_INDEX.__getitem__, statuses))
        source_column = bytes(map(_SOURCE_INDEX.__getitem__, sources))
    except KeyError as err:
        raise ValueError(f"unknown region status or source {err}") from None
    table = [struct.pack("<I", len(strings))]
    for text in strings:
        raw = text.encode("utf-8")
        table.append(struct.pack("<I", len(raw)))
        table.append(raw)
    count = len(ids)
    payload = b"".join(
        (
            _deltas("I", ids),
            _column("I", kinds),
            _deltas("Q", addresses),
            _column("Q", sizes),
            _column("Q", list(map(operator.sub, sizes, stored))),
            status_column,
            source_column,
            _column("I", list(map(strings.__getitem__, names))),
            _column("I", list(map(strings.__getitem__, errors))),
            *table,
        )
    )
    import base64
    import zlib

    packed = _HEAD.pack(_MAGIC, count, len(payload)) + zlib.compress(payload, 1)  # 6: 2x the time, 1 KiB less
    return base64.b64encode(packed).decode("ascii")


def _deltas(code: str, values: Sequence[int]) -> bytes:
    """The column of each value's difference from the one before (the first: from 0), modulo
    2**32 (``code`` "I") or 2**64 ("Q"): stored as the signed type of that size where every
    difference fits one (the same bytes, no masking a value), else masked."""
    from array import array

    deltas = list(map(operator.sub, values, itertools.chain((0,), values)))
    try:
        column = array(code.lower(), deltas)
    except OverflowError:
        column = array(code, map((_M32 if code == "I" else _M64).__and__, deltas))
    if not _LITTLE:
        column.byteswap()
    return column.tobytes()


def unpack_regions(text: str) -> list[Record]:
    """The records of a packed table; :class:`DumpFormatError` for anything malformed."""
    import base64
    import binascii
    import zlib
    from array import array
    from itertools import accumulate

    try:
        packed = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error) as err:
        raise DumpFormatError(f"packed region table is not base64: {err}") from None
    if len(packed) < _HEAD.size:
        raise DumpFormatError("packed region table is shorter than its header")
    magic, count, length = _HEAD.unpack_from(packed)
    if magic != _MAGIC:
        raise DumpFormatError("packed region table has a bad magic", magic=magic)
    if count > MAX_RECORDS:
        raise DumpFormatError("packed region table declares too many records", count=count)
    fixed = count * _FIXED
    if length < fixed + 4 or length > fixed + 4 + _MAX_STRINGS:
        raise DumpFormatError("packed region table declares an impossible length", count=count, length=length)
    inflater = zlib.decompressobj()
    try:
        payload = inflater.decompress(packed[_HEAD.size :], length)
    except zlib.error as err:
        raise DumpFormatError(f"packed region table is damaged: {err}") from None
    if len(payload) != length or inflater.unconsumed_tail or not inflater.eof:
        raise DumpFormatError("packed region table does not hold the length it declares", length=length)
    view = memoryview(payload)
    at = 0

    def take(code: str, size: int) -> list[int]:
        nonlocal at
        column = array(code)
        column.frombytes(view[at : at + size * count])
        if not _LITTLE:
            column.byteswap()
        at += size * count
        return column.tolist()

    ids = [v & _M32 for v in accumulate(take("I", 4))]
    kinds = take("I", 4)
    addresses = [v & _M64 for v in accumulate(take("Q", 8))]
    sizes = take("Q", 8)
    missing = take("Q", 8)
    statuses = bytes(view[at : at + count])
    sources = bytes(view[at + count : at + 2 * count])
    at += 2 * count
    names = take("I", 4)
    errors = take("I", 4)
    strings = _strings(view, at)
    records: list[Record] = []
    for i in range(count):
        size, gap = sizes[i], missing[i]
        if gap > size:
            raise DumpFormatError("region record stores more than its size", index=i)
        try:
            records.append(
                (
                    ids[i],
                    strings[names[i]],
                    kinds[i],
                    addresses[i],
                    size,
                    size - gap,
                    _STATUSES[statuses[i]],
                    strings[errors[i]],
                    _SOURCES[sources[i]],
                )
            )
        except IndexError:
            raise DumpFormatError("region record refers to nothing", index=i) from None
    return records


def _strings(view: memoryview, at: int) -> list[str]:
    end = len(view)
    if at + 4 > end:
        raise DumpFormatError("packed region table has no string list")
    (count,) = struct.unpack_from("<I", view, at)
    at += 4
    strings: list[str] = []
    for _ in range(count):
        if at + 4 > end:
            raise DumpFormatError("packed region table's string list is cut short")
        (length,) = struct.unpack_from("<I", view, at)
        at += 4
        if at + length > end:
            raise DumpFormatError("packed region table's string list is cut short")
        try:
            strings.append(bytes(view[at : at + length]).decode("utf-8"))
        except UnicodeDecodeError:
            raise DumpFormatError("a region name in the packed table is not UTF-8") from None
        at += length
    if at != end or not strings or strings[0] != "":
        raise DumpFormatError("packed region table's string list is malformed")
    return strings

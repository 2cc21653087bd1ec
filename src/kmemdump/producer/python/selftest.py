"""The self-test: a layout is used only once it has read live objects right.

It reads objects of every decoded kind through ``/proc/self/mem`` (a bad offset then yields a
failed read rather than a crash) and compares what it finds with what Python says. Standard
library only.
"""

from __future__ import annotations

import os
import struct
import sys

from kmemdump.errors import DecodeError
from kmemdump.formats.pycoreinfo import KEYS_GENERAL
from kmemdump.formats.pycoreinfo import KEYS_SPLIT
from kmemdump.formats.pycoreinfo import KEYS_UNICODE
from kmemdump.formats.pycoreinfo import Layout
from kmemdump.producer.python.layout import TABLE

__all__ = ["self_test"]


class _Mismatch(Exception):
    """One self-test check failed; the message says which."""


class _SelfMemory:
    """Reads this process's memory through ``/proc/self/mem``: a bad address fails, never crashes."""

    def __init__(self) -> None:
        self._fd = os.open("/proc/self/mem", os.O_RDONLY | os.O_CLOEXEC)

    def close(self) -> None:
        os.close(self._fd)

    def read(self, address: int, size: int, what: str) -> bytes:
        if not 0 < address < 1 << 63 or size < 0 or size > 1 << 24:
            raise _Mismatch(f"{what}: address 0x{address:x} is implausible")
        try:
            data = os.pread(self._fd, size, address)
        except OSError as err:
            raise _Mismatch(f"{what}: 0x{address:x} is not readable ({err.strerror})") from None
        if len(data) != size:
            raise _Mismatch(f"{what}: short read at 0x{address:x}")
        return data

    def u64(self, address: int, what: str) -> int:
        value: int = struct.unpack("=Q", self.read(address, 8, what))[0]
        return value

    def i64(self, address: int, what: str) -> int:
        value: int = struct.unpack("=q", self.read(address, 8, what))[0]
        return value


def _expect(what: str, got: object, want: object) -> None:
    if got != want:
        raise _Mismatch(f"{what}: read {got!r}, expected {want!r}")


class _Holder:
    """Instances get a split-table (or embedded-values) ``__dict__``."""

    def __init__(self) -> None:
        self.attribute = 1


class _StrSubclass(str):
    """Instances are non-compact strings: their characters live in a separate buffer."""

    __slots__ = ()


def self_test(layout: Layout) -> str:
    """Check ``layout`` against live objects. Returns ``""`` when it holds, else what disagreed."""
    try:
        mem = _SelfMemory()
    except OSError as err:
        return f"cannot open /proc/self/mem ({err.strerror})"
    try:
        _check_headers(layout, mem)
        _check_str(layout, mem)
        _check_bytes(layout, mem)
        _check_int(layout, mem)
        _check_containers(layout, mem)
        _check_dict(layout, mem)
        if layout.instance_dict:
            _check_instances(layout, mem)
    except _Mismatch as err:
        return str(err)
    finally:
        mem.close()
    return ""


def _check_headers(layout: Layout, mem: _SelfMemory) -> None:
    for obj in ("s", b"b", bytearray(b"x"), 7, True, 1.5, None, (1,), [1], {1: 2}, int):
        what = f"ob_type of {type(obj).__name__}"
        _expect(what, mem.u64(id(obj) + layout.ob_type, what), id(type(obj)))
    _expect("int tp_flags", mem.u64(id(int) + layout.tp_flags, "int tp_flags"), int.__flags__)
    name = mem.u64(id(dict) + layout.tp_name, "dict tp_name")
    _expect("dict tp_name", mem.read(name, 5, "dict tp_name string"), b"dict\0")


def _str_parts(layout: Layout, mem: _SelfMemory, text: str) -> tuple[int, bool, bool, bytes]:
    address = id(text)
    _expect(f"length of {text!r}", mem.i64(address + layout.str_length, "str length"), len(text))
    state = struct.unpack("=I", mem.read(address + layout.str_state, 4, "str state"))[0]
    kind = (state >> layout.str_kind_shift) & 7
    compact = bool(state >> layout.str_compact_bit & 1)
    is_ascii = bool(state >> layout.str_ascii_bit & 1)
    if kind not in (1, 2, 4):
        raise _Mismatch(f"kind of {text!r}: read {kind}")
    if not compact:
        data_address = mem.u64(address + layout.str_compact_data, "str data pointer")
    else:
        data_address = address + (layout.str_ascii_data if is_ascii else layout.str_compact_data)
    data = mem.read(data_address, (len(text) + 1) * kind, f"characters of {text!r}")
    return kind, compact, is_ascii, data


def _check_str(layout: Layout, mem: _SelfMemory) -> None:
    order = "le" if sys.byteorder == "little" else "be"
    codecs = {1: "latin-1", 2: f"utf-16-{order}", 4: f"utf-32-{order}"}
    samples = (
        ("kmemdump", 1, True, True),
        ("caf\xe9 cr\xe8me", 1, False, True),
        ("\u03a9 \u2211 \u4e2d", 2, False, True),
        ("\U0001f600 \u00e9", 4, False, True),
        (_StrSubclass("sub\xe9"), 1, False, False),
    )
    for text, want_kind, want_ascii, want_compact in samples:
        kind, compact, is_ascii, data = _str_parts(layout, mem, text)
        _expect(f"kind of {text!r}", kind, want_kind)
        _expect(f"ascii flag of {text!r}", is_ascii, want_ascii)
        _expect(f"compact flag of {text!r}", compact, want_compact)
        _expect(f"characters of {text!r}", data, (str(text) + "\0").encode(codecs[kind]))


def _check_bytes(layout: Layout, mem: _SelfMemory) -> None:
    for value in (b"", b"kmem\x00dump\xff"):
        address = id(value)
        _expect(f"size of {value!r}", mem.i64(address + layout.bytes_ob_size, "bytes size"), len(value))
        data = mem.read(address + layout.bytes_ob_sval, len(value) + 1, "bytes data")
        _expect(f"data of {value!r}", data, value + b"\0")
    array = bytearray(b"..kmemdump")
    del array[:2]  # moves ob_start past ob_bytes
    address = id(array)
    _expect("bytearray size", mem.i64(address + layout.bytearray_ob_size, "bytearray size"), len(array))
    alloc = mem.i64(address + layout.bytearray_ob_alloc, "bytearray alloc")
    _expect("bytearray alloc", alloc, array.__sizeof__() - bytearray.__basicsize__)
    start = mem.u64(address + layout.bytearray_ob_start, "bytearray start")
    buffer = mem.u64(address + layout.bytearray_ob_bytes, "bytearray buffer")
    if not buffer < start <= buffer + alloc - len(array):  # the deletion advanced ob_start
        raise _Mismatch(f"bytearray start 0x{start:x} is outside its buffer 0x{buffer:x}")
    _expect("bytearray data", mem.read(start, len(array), "bytearray data"), bytes(array))


def _check_int(layout: Layout, mem: _SelfMemory) -> None:
    bits = sys.int_info.bits_per_digit
    size = sys.int_info.sizeof_digit
    for value in (0, 7, -7, 2**40 + 3, -(2**70 + 5), 2**100 - 1, True):
        address = id(value)
        word = mem.i64(address + layout.int_size, "int size")
        if layout.int_layout == "ob_size":
            count, sign = abs(word), (word > 0) - (word < 0)
        else:
            count, sign = word >> 3, 1 - (word & 3)
        if not 0 <= count <= 8 or (count == 0) != (sign == 0):
            raise _Mismatch(f"size of int {int(value)}: read 0x{word:x}")
        raw = mem.read(address + layout.int_digit, count * size, "int digits")
        digits = [int.from_bytes(raw[i : i + size], sys.byteorder) for i in range(0, len(raw), size)]
        magnitude = sum(digit << (bits * i) for i, digit in enumerate(digits))
        _expect(f"int {int(value)}", sign * magnitude, value)
    fval = struct.unpack("=d", mem.read(id(-2.75) + layout.float_fval, 8, "float value"))[0]
    _expect("float -2.75", fval, -2.75)


def _check_containers(layout: Layout, mem: _SelfMemory) -> None:
    items = ("one", 2, None)
    seq = (items[0], items[1], items[2])
    _expect("tuple size", mem.i64(id(seq) + layout.tuple_ob_size, "tuple size"), 3)
    raw = mem.read(id(seq) + layout.tuple_ob_item, 24, "tuple items")
    _expect("tuple items", list(struct.unpack("=3Q", raw)), [id(item) for item in items])
    lst = list(items)
    lst.append("four")
    _expect("list size", mem.i64(id(lst) + layout.list_ob_size, "list size"), 4)
    allocated = mem.i64(id(lst) + layout.list_allocated, "list allocated")
    _expect("list allocated", allocated, (lst.__sizeof__() - list.__basicsize__) // 8)
    array = mem.u64(id(lst) + layout.list_ob_item, "list item array")
    raw = mem.read(array, 32, "list items")
    _expect("list items", list(struct.unpack("=4Q", raw)), [id(item) for item in lst])


def _check_dict(layout: Layout, mem: _SelfMemory) -> None:
    # A str-keyed dict (a unicode table on 3.11+), a general one, and one with a deleted entry.
    unicode_keys = {"alpha": 1, "beta": (2,)}
    general = {1: "one", (2,): None, 3.5: "x"}
    deleted = {"a": 1, "b": 2, 3: "c"}
    del deleted["b"]
    # every field lies inside the dict object itself; what follows it is another object, whose bytes
    # may read as anything (a zero where ma_values should be, say) and so prove nothing
    fields = (layout.dict_ma_used, layout.dict_ma_keys, layout.dict_ma_values)
    _expect("dict fields inside the object", all(f > 0 and f + 8 <= dict.__basicsize__ for f in fields), True)
    for name, mapping in (("str-keyed dict", unicode_keys), ("dict", general), ("dict with a hole", deleted)):
        address = id(mapping)
        _expect(f"{name} used", mem.i64(address + layout.dict_ma_used, "dict used"), len(mapping))
        _expect(f"{name} values", mem.u64(address + layout.dict_ma_values, "dict values"), 0)
        keys = mem.u64(address + layout.dict_ma_keys, "dict keys")
        header = mem.read(keys, layout.dk_indices, "dict keys header")
        try:
            geometry = layout.keys_geometry(header, sys.byteorder)
        except DecodeError as err:
            raise _Mismatch(f"{name} keys: {err}") from None
        _expect(f"{name} keys size", geometry.alloc_size, mapping.__sizeof__() - dict.__basicsize__)
        if layout.dict_keys_layout == "dk_log2":
            want_kind = KEYS_UNICODE if mapping is unicode_keys else KEYS_GENERAL
            _expect(f"{name} keys kind", geometry.kind, want_kind)
        raw = mem.read(
            keys + geometry.entries_offset, geometry.nentries * geometry.entry_size, "dict entries"
        )
        found = []
        for start in range(0, len(raw), geometry.entry_size):
            entry = raw[start : start + geometry.entry_size]
            key, value = struct.unpack_from("=QQ", entry, 8 if geometry.has_hash else 0)
            if value:
                found.append((key, value))
        _expect(f"{name} entries", found, [(id(k), id(v)) for k, v in mapping.items()])
    if sys.version_info[:2] in TABLE:
        # On 3.10-3.13 an instance's __dict__ shares its keys and keeps values apart, so
        # ma_values is set: this catches an ma_values offset that happens to read zeros.
        holder = _Holder()
        attrs = holder.__dict__
        values = mem.u64(id(attrs) + layout.dict_ma_values, "instance dict values")
        _expect("instance dict values set", values != 0, True)


class _Attrs:
    """Instances keep ``first`` and ``second`` in the layout's attribute storage."""

    def __init__(self) -> None:
        self.first = "one"
        self.second = 2.5


class _SlotsAndDict:
    """Slots push the dict (or its managed pointer) elsewhere: other basicsize and dictoffset."""

    __slots__ = ("__dict__", "a", "b", "c")


class _WeakOnly:
    """No ``__dict__``, but a (managed, on 3.12+) weak reference list: its flags differ by one bit."""

    __slots__ = ("__weakref__",)


def _split_values(layout: Layout, mem: _SelfMemory, values: int, what: str) -> list[tuple[int, int]]:
    """``(entry index, value pointer)`` of a split table's values, in insertion order."""
    style = layout.dict_values_layout
    if style == "header":
        capacity, size = mem.read(values, 2, f"{what} header")
        order = list(mem.read(values + 8 + 8 * capacity, size, f"{what} order"))
        base = values + 8
    elif style == "prefix":
        count, prefix = mem.read(values - 2, 2, f"{what} prefix")
        order = list(mem.read(values - 2 - count, count, f"{what} order"))[::-1]
        if prefix < count + 2:
            raise _Mismatch(f"{what}: prefix of {prefix} bytes cannot hold {count} indices")
        base = values
    else:
        raise _Mismatch(f"{what}: values layout {style!r} has no insertion order")
    return [(index, mem.u64(base + 8 * index, f"{what} value")) for index in order]


def _check_instances(layout: Layout, mem: _SelfMemory) -> None:
    for cls in (_Attrs, _SlotsAndDict):
        name = cls.__name__
        _expect(
            f"{name} tp_basicsize", mem.i64(id(cls) + layout.tp_basicsize, "tp_basicsize"), cls.__basicsize__
        )
        got = mem.i64(id(cls) + layout.tp_dictoffset, "tp_dictoffset")
        _expect(f"{name} tp_dictoffset", got, cls.__dictoffset__)
    for mask, what in (
        (layout.flag_managed_dict, "managed dict"),
        (layout.flag_inline_values, "inline values"),
    ):
        if mask:
            _expect(f"{what} flag of an ordinary class", _Attrs.__flags__ & mask == mask, True)
            _expect(f"{what} flag of a class without __dict__", _WeakOnly.__flags__ & mask, 0)
    fresh, opened = _Attrs(), _Attrs()
    fresh.second = opened.second = 2.5  # the same float object everywhere
    keys = mem.u64(id(_Attrs) + layout.ht_cached_keys, "ht_cached_keys")
    header = mem.read(keys, layout.dk_indices, "shared keys header")
    try:
        geometry = layout.keys_geometry(header, sys.byteorder)
    except DecodeError as err:
        raise _Mismatch(f"shared keys: {err}") from None
    if layout.dict_keys_layout == "dk_log2":
        _expect("shared keys kind", geometry.kind, KEYS_SPLIT)
    raw = mem.read(keys + geometry.entries_offset, geometry.nentries * geometry.entry_size, "shared keys")
    skip = 8 if geometry.has_hash else 0
    names = [
        struct.unpack_from("=Q", raw, i * geometry.entry_size + skip)[0] for i in range(geometry.nentries)
    ]
    _expect("shared keys", names[:2], [id(sys.intern("first")), id(sys.intern("second"))])
    want = [(0, id("one")), (1, id(fresh.second))]
    attrs = opened.__dict__  # materialized: now a dict whose values are split (or embedded)
    style = layout.instance_dict
    if style == "dictoffset":
        _expect("instance dict", mem.u64(id(opened) + _Attrs.__dictoffset__, "instance dict"), id(attrs))
    else:
        where = id(fresh) - layout.managed_dict
        dict_pointer = mem.u64(where, "managed dict")
        values = 0
        if style == "managed":
            values = mem.u64(id(fresh) - layout.managed_values, "managed values")
            _expect("managed dict of a fresh instance", dict_pointer, 0)
        elif style == "tagged":
            _expect("tag of a fresh instance's values", dict_pointer & 1, 1)
            values = dict_pointer + 1
        else:
            _expect("managed dict of a fresh instance", dict_pointer, 0)
            values = id(fresh) + _Attrs.__basicsize__
            _expect("inline values valid", mem.read(values + 3, 1, "inline values")[0], 1)
        _expect("fresh instance values", _split_values(layout, mem, values, "instance values"), want)
        opened_pointer = mem.u64(id(opened) - layout.managed_dict, "materialized dict")
        _expect("materialized dict", opened_pointer, id(attrs))
    _expect("materialized dict keys", mem.u64(id(attrs) + layout.dict_ma_keys, "dict keys"), keys)
    values = mem.u64(id(attrs) + layout.dict_ma_values, "dict values")
    if layout.dict_values_layout == "array":
        pairs = [(i, mem.u64(values + 8 * i, "dict values")) for i in range(2)]
    else:
        pairs = _split_values(layout, mem, values, "dict values")
    _expect("materialized dict values", pairs, want)

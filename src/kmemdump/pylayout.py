"""The running interpreter's object layout, checked against live objects, as a PYCOREINFO.

Producer side, standard library only; ``ctypes`` is imported on first use.

* On 3.13+ the offsets come from ``_Py_DebugOffsets``, the first member of ``_PyRuntime``,
  parsed according to its ``version`` field (only the groups this package needs).
* On 3.10 to 3.12, or when the cookie is missing or of an unknown version, they come from
  :data:`TABLE`.
* Either way, :func:`probe` runs a self-test that reads live objects of every decoded kind
  through ``/proc/self/mem`` (a bad offset then yields a failed read rather than a crash) and
  compares what it finds with what Python says. If anything disagrees, decoding is disabled:
  the result carries no :class:`PyCoreInfo`, only the reason.

:class:`LiveInfo` also keeps the type map, which starts with the builtins the decoders know and
grows through :meth:`LiveInfo.add_types` as the registry sees new types.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import sys
import threading
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from .errors import DecodeError
from .formats.pycoreinfo import KEYS_GENERAL
from .formats.pycoreinfo import KEYS_SPLIT
from .formats.pycoreinfo import KEYS_UNICODE
from .formats.pycoreinfo import Layout
from .formats.pycoreinfo import PyCoreInfo
from .formats.pycoreinfo import TypeEntry

__all__ = [
    "KNOWN_TYPES",
    "TABLE",
    "LayoutChoice",
    "LiveInfo",
    "build_layout",
    "builtin_base",
    "default",
    "probe",
    "runtime_layout",
    "self_test",
    "type_entry",
    "without_instances",
]

KNOWN_TYPES: Final[tuple[type, ...]] = (
    str,
    bytes,
    bytearray,
    int,
    bool,
    float,
    type(None),
    tuple,
    list,
    dict,
    type,
)
"""The builtin types the inspector decodes; the type map always holds them."""

_KNOWN_NAMES: Final[Mapping[type, str]] = MappingProxyType({t: t.__name__ for t in KNOWN_TYPES})

_V312 = Layout(
    ob_type=8,
    tp_name=24,
    tp_flags=168,
    str_length=16,
    str_state=32,
    str_kind_shift=2,
    str_compact_bit=5,
    str_ascii_bit=6,
    str_ascii_data=40,
    str_compact_data=56,
    bytes_ob_size=16,
    bytes_ob_sval=32,
    int_layout="lv_tag",
    int_size=16,
    int_digit=24,
    float_fval=16,
    tuple_ob_size=16,
    tuple_ob_item=24,
    list_ob_size=16,
    list_ob_item=24,
    list_allocated=32,
    dict_ma_used=16,
    dict_ma_keys=32,
    dict_ma_values=40,
    dict_keys_layout="dk_log2",
    dk_size=8,
    dk_log2_index_bytes=9,
    dk_kind=10,
    dk_nentries=24,
    dk_indices=32,
    dk_entry_general=24,
    dk_entry_unicode=16,
    bytearray_ob_size=16,
    bytearray_ob_alloc=24,
    bytearray_ob_bytes=32,
    bytearray_ob_start=40,
    tp_basicsize=32,
    tp_dictoffset=288,
    ht_cached_keys=880,
    instance_dict="tagged",
    managed_dict=24,
    flag_managed_dict=1 << 4,
    dict_values_layout="prefix",
)
# 3.10 and 3.11 still carry wstr/wstr_length in str objects and keep the sign in ob_size.
# 3.13 (offsets not in _Py_DebugOffsets): inline values follow the object.
_V313 = dataclasses.replace(
    _V312, instance_dict="inline", flag_inline_values=1 << 2, dict_values_layout="header"
)
_V311 = dataclasses.replace(
    _V312,
    str_ascii_data=48,
    str_compact_data=72,
    int_layout="ob_size",
    ht_cached_keys=872,
    instance_dict="managed",
    managed_values=32,
)
# 3.10 dict keys: Py_ssize_t dk_size, a lookup function pointer, and 24-byte entries only.
_V310 = dataclasses.replace(
    _V311,
    dict_keys_layout="dk_size",
    dk_log2_index_bytes=0,
    dk_kind=0,
    dk_nentries=32,
    dk_indices=40,
    dk_entry_unicode=24,
    instance_dict="dictoffset",
    managed_dict=0,
    managed_values=0,
    flag_managed_dict=0,
    dict_values_layout="array",
)

TABLE: Final[Mapping[tuple[int, int], Layout]] = MappingProxyType(
    {(3, 10): _V310, (3, 11): _V311, (3, 12): _V312, (3, 13): _V313}
)
"""Offsets of x86-64 (and any LP64 little-endian) GIL builds, by ``(major, minor)``."""

# _Py_DebugOffsets is a sequence of u64 words; these are the word indices this package reads
# in the 3.13 layout (cookie, version, free_threaded, then one group per structure).
_DEBUG_COOKIE: Final = b"xdebugpy"
_DEBUG_313_WORDS: Final = 73
_DEBUG_313: Final[Mapping[str, int]] = MappingProxyType(
    {
        "pyobject.size": 44,
        "pyobject.ob_type": 45,
        "type_object.tp_name": 47,
        "type_object.tp_flags": 49,
        "tuple_object.ob_item": 51,
        "tuple_object.ob_size": 52,
        "list_object.ob_item": 54,
        "list_object.ob_size": 55,
        "dict_object.ma_keys": 57,
        "dict_object.ma_values": 58,
        "float_object.ob_fval": 60,
        "long_object.lv_tag": 62,
        "long_object.ob_digit": 63,
        "bytes_object.ob_size": 65,
        "bytes_object.ob_sval": 66,
        "unicode_object.state": 68,
        "unicode_object.length": 69,
        "unicode_object.asciiobject_size": 70,
    }
)


@dataclass(frozen=True, slots=True)
class LayoutChoice:
    """The layout picked for this interpreter before any check: where from, and any remark."""

    layout: Layout | None
    source: str
    """``"debug_offsets"``, ``"table"`` or ``""`` (no layout)."""
    note: str
    """Why the table was used instead of debug offsets, or why there is no layout."""


def runtime_layout() -> LayoutChoice:
    """Pick the offsets for the running interpreter (not yet checked; see :func:`probe`)."""
    if sys.implementation.name != "cpython":
        return LayoutChoice(None, "", f"{sys.implementation.name} is not CPython")
    minor = sys.version_info[:2]
    if minor < (3, 10):
        return LayoutChoice(None, "", f"Python {minor[0]}.{minor[1]} is older than 3.10")
    if struct.calcsize("P") != 8:
        return LayoutChoice(None, "", "only 64-bit interpreters are supported")
    note = ""
    if minor >= (3, 13):
        layout, note = _from_debug_offsets()
        if layout is not None:
            return LayoutChoice(layout, "debug_offsets", "")
    if _free_threaded():
        return LayoutChoice(None, "", f"no layout for free-threaded {minor[0]}.{minor[1]} ({note})")
    known = TABLE.get(minor)
    if known is None:
        newest = max(TABLE)
        known = TABLE[newest]
        note = f"{note}; " if note else ""
        note += f"no table for {minor[0]}.{minor[1]}, trying the {newest[0]}.{newest[1]} one"
    return LayoutChoice(known, "table", note)


def _free_threaded() -> bool:
    import sysconfig  # only needed once, by the probe

    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def _from_debug_offsets() -> tuple[Layout | None, str]:
    import ctypes  # loaded lazily: import kmemdump must stay cheap

    try:
        runtime = ctypes.c_char.in_dll(ctypes.pythonapi, "_PyRuntime")
    except (ValueError, AttributeError, OSError) as err:
        return None, f"_PyRuntime not found ({err})"
    base = ctypes.addressof(runtime)
    cookie, version, free_threaded = struct.unpack("=8sQQ", ctypes.string_at(base, 24))
    if cookie != _DEBUG_COOKIE:
        return None, "_Py_DebugOffsets cookie missing"
    if version != sys.hexversion:
        return None, f"_Py_DebugOffsets version 0x{version:x} is not sys.hexversion"
    if version >> 16 != 0x030D:
        return None, f"_Py_DebugOffsets layout of 0x{version:x} is unknown"
    words = struct.unpack(f"={_DEBUG_313_WORDS}Q", ctypes.string_at(base, 8 * _DEBUG_313_WORDS))
    return _layout_313({name: words[index] for name, index in _DEBUG_313.items()}, bool(free_threaded)), ""


def _layout_313(off: Mapping[str, int], free_threaded: bool) -> Layout:
    """A :class:`Layout` from 3.13 debug offsets, plus the facts they do not hold.

    The missing ones sit at fixed distances from fields that are there: ``allocated`` follows
    ``ob_item`` in a list, ``ma_used`` follows the object header in a dict, a bytearray's four
    fields follow its header, and a compact non-ASCII str adds ``utf8_length`` and ``utf8`` to
    ``PyASCIIObject``. The self-test checks all of them.
    """
    header = off["pyobject.size"]
    ascii_size = off["unicode_object.asciiobject_size"]
    layout = dataclasses.replace(
        _V313,
        ob_type=off["pyobject.ob_type"],
        tp_name=off["type_object.tp_name"],
        tp_flags=off["type_object.tp_flags"],
        str_length=off["unicode_object.length"],
        str_state=off["unicode_object.state"],
        str_ascii_data=ascii_size,
        str_compact_data=ascii_size + 16,
        bytes_ob_size=off["bytes_object.ob_size"],
        bytes_ob_sval=off["bytes_object.ob_sval"],
        int_size=off["long_object.lv_tag"],
        int_digit=off["long_object.ob_digit"],
        float_fval=off["float_object.ob_fval"],
        tuple_ob_size=off["tuple_object.ob_size"],
        tuple_ob_item=off["tuple_object.ob_item"],
        list_ob_size=off["list_object.ob_size"],
        list_ob_item=off["list_object.ob_item"],
        list_allocated=off["list_object.ob_item"] + 8,
        dict_ma_used=header,
        dict_ma_keys=off["dict_object.ma_keys"],
        dict_ma_values=off["dict_object.ma_values"],
        bytearray_ob_size=header,
        bytearray_ob_alloc=header + 8,
        bytearray_ob_bytes=header + 16,
        bytearray_ob_start=header + 24,
    )
    if free_threaded:  # ``interned`` is a whole byte there (unverified; the self-test decides)
        layout = dataclasses.replace(layout, str_kind_shift=8, str_compact_bit=11, str_ascii_bit=12)
    return layout


# --- the self-test ---------------------------------------------------------------------


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


# --- the type map and the live PYCOREINFO ----------------------------------------------


def builtin_base(cls: type) -> str:
    """The name of the nearest decodable builtin in ``cls``'s MRO, or ``""``."""
    try:
        mro = type.__getattribute__(cls, "__mro__")
    except (AttributeError, TypeError):
        return ""
    for klass in mro:
        name = _KNOWN_NAMES.get(klass)
        if name is not None:
            return name
    return ""


def type_entry(cls: type) -> TypeEntry:
    """The type-map entry for ``cls``: bare names for builtins, ``module.qualname`` otherwise."""
    name = _KNOWN_NAMES.get(cls)
    if name is None:
        module = type.__getattribute__(cls, "__module__")
        qualname = type.__getattribute__(cls, "__qualname__")
        module = module if isinstance(module, str) else ""
        name = qualname if module in ("", "builtins") else f"{module}.{qualname}"
    return TypeEntry(name=name, flags=int(type.__getattribute__(cls, "__flags__")), base=builtin_base(cls))


class LiveInfo:
    """The running interpreter's PYCOREINFO (or why there is none) and its growing type map.

    Safe to share between threads. Types added are kept alive, so their addresses cannot be
    reused by other types while the map names them.
    """

    def __init__(self, base: PyCoreInfo | None, reason: str) -> None:
        self._base = base
        self._reason = reason
        self._lock = threading.Lock()
        self._types: dict[int, type] = {}
        self._entries: dict[int, TypeEntry] = {}
        self._current: PyCoreInfo | None = base
        if base is not None:
            self.add_types(KNOWN_TYPES)

    @property
    def enabled(self) -> bool:
        """Whether objects can be decoded (the layout passed the self-test)."""
        return self._base is not None

    @property
    def reason(self) -> str:
        """Why decoding is disabled, or remarks about the layout's origin (may be empty)."""
        return self._reason

    @property
    def layout(self) -> Layout | None:
        """The checked layout, or None when decoding is disabled."""
        return None if self._base is None else self._base.layout

    @property
    def info(self) -> PyCoreInfo | None:
        """The current PYCOREINFO, type map included; None when decoding is disabled."""
        current = self._current
        if current is not None and len(current.types) != len(self._entries):
            with self._lock:
                assert self._base is not None
                current = self._current = self._base.with_types(self._entries)
        return current

    def encode(self) -> bytes | None:
        """The PYCOREINFO blob, or None when decoding is disabled."""
        info = self.info
        return None if info is None else info.encode()

    def add_types(self, types: Iterable[type]) -> bool:
        """Add these types to the map; True when the map changed (the blob must be rewritten)."""
        if self._base is None:
            return False
        changed = False
        for cls in types:
            address = id(cls)
            if address in self._types:
                continue
            if not isinstance(cls, type):
                raise TypeError(f"add_types takes types, not {type(cls).__name__}")
            entry = type_entry(cls)
            with self._lock:
                if address not in self._types:
                    self._types[address] = cls
                    self._entries[address] = entry
                    changed = True
        return changed


def probe(layout: Layout | None = None, *, strict: bool = False) -> LiveInfo:
    """Build and check the PYCOREINFO of this interpreter.

    ``layout`` overrides the offsets (for tests and experiments); it is checked all the same.
    A failed check returns a disabled :class:`LiveInfo`, or raises :class:`DecodeError` when
    ``strict``.
    """
    if layout is None:
        choice = runtime_layout()
        layout, source, note = choice.layout, choice.source, choice.note
    else:
        source, note = "given", ""
    if layout is None:
        return _disabled(f"no layout: {note}", strict)
    failure = self_test(layout)
    if failure and layout.instance_dict:
        # the core offsets may hold even if the attribute storage ones do not: keep the former
        bare = without_instances(layout)
        if not self_test(bare):
            note = f"{note}; " if note else ""
            note += f"instance attributes disabled: {failure}"
            layout, failure = bare, ""
    if failure:
        where = f" ({source} offsets{'; ' + note if note else ''})"
        return _disabled(f"self-test failed: {failure}{where}", strict)
    base = PyCoreInfo(
        hexversion=sys.hexversion,
        implementation=sys.implementation.name,
        free_threaded=_free_threaded(),
        bits_per_digit=sys.int_info.bits_per_digit,
        sizeof_digit=sys.int_info.sizeof_digit,
        pointer_size=struct.calcsize("P"),
        byteorder=sys.byteorder,
        source=source,
        layout=layout,
        types={},
        constants={id(None): "None", id(True): "True", id(False): "False"},
    )
    return LiveInfo(base, note)


def without_instances(layout: Layout) -> Layout:
    """``layout`` with instance attribute decoding turned off (its fields at their defaults)."""
    return dataclasses.replace(
        layout,
        tp_basicsize=0,
        tp_dictoffset=0,
        ht_cached_keys=0,
        instance_dict="",
        managed_dict=0,
        managed_values=0,
        flag_managed_dict=0,
        flag_inline_values=0,
        dict_values_layout="",
    )


def _disabled(reason: str, strict: bool) -> LiveInfo:
    if strict:
        raise DecodeError(f"Python object decoding is disabled: {reason}")
    return LiveInfo(None, reason)


def build_layout() -> LiveInfo:
    """The process-wide :class:`LiveInfo` (see :func:`default`); raises :class:`DecodeError`
    with the reason when decoding is disabled."""
    live = default()
    if not live.enabled:
        raise DecodeError(f"Python object decoding is disabled: {live.reason}")
    return live


_default_lock = threading.Lock()
_default: list[LiveInfo] = []


def default() -> LiveInfo:
    """The process-wide :class:`LiveInfo`, probed once on first use."""
    if not _default:
        with _default_lock:
            if not _default:
                _default.append(probe())
    return _default[0]

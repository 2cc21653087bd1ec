"""Decode CPython objects from a selective dump, with a PYCOREINFO and no binaries.

:func:`decode` reads an object through a :class:`~kmemdump.memory.MemorySource`, names its type
through the PYCOREINFO type map (falling back to the type object's ``tp_name``/``tp_flags`` when
the dump holds them), and turns it into a JSON-able value. Memory the dump lacks never raises:
the piece that could not be read becomes a marker, and a sentence saying what and where goes
into :attr:`Decoded.missing`. Sizes, counts and depth are bounded, so garbage cannot make a
decode run away.

Values (what :attr:`Decoded.value` holds)
    ``None``, ``bool``, ``int``, ``float`` (``nan``/``inf`` included) and ``str`` stand for
    themselves, a ``list`` for a list; the rest are one-key objects whose key starts with ``$``:

    ==========================================  ============================================
    ``{"$bytes": "6869"}``                      bytes (hex)
    ``{"$bytearray": "6869"}``                  bytearray (hex)
    ``{"$int": "-0x1f…"}``                      an int of more than 13,000 bits (hex): beyond what
                                                Python turns into decimal text by default
    ``{"$tuple": [...]}``                       tuple
    ``{"k": v, ...}``                           dict whose keys are all str not starting with $
    ``{"$dict": [[k, v], ...]}``                any other dict, in insertion order
    ``{"$class": "name"}``                      a type object
    ``{"$object": "0x…", "type": "name"}``      an object of a type no decoder handles
    ``{"$object": …, "type": …, "attrs": {…}}``  an instance of a Python class, with its
                                                ``__dict__`` (a dict value, as above)
    ``{"$cycle": "0x…"}``                       a container already being decoded (a cycle)
    ``{"$missing": "0x…", "reason": "…"}``      an object that could not be decoded
    ==========================================  ============================================

    Truncated strings, bytes and containers keep their leading part; the truncation is
    reported in ``missing``. :func:`to_python` turns a value back into Python objects and
    :func:`encode_value` does the reverse.

Why one module of this size: one decoder per CPython type over one value model and one set of
bounds; split, every part would need the whole model and the bounds again.
"""

from __future__ import annotations

import struct
import sys
import time
from array import array
from collections.abc import Callable

from kmemdump.errors import DecodeError
from kmemdump.errors import UnreadableMemoryError
from kmemdump.formats.pycoreinfo import CONSTANT_NAMES
from kmemdump.formats.pycoreinfo import KEYS_SPLIT
from kmemdump.formats.pycoreinfo import KeysGeometry
from kmemdump.formats.pycoreinfo import PyCoreInfo
from kmemdump.record import field
from kmemdump.record import frozen

TYPE_CHECKING = False  # typing is imported for mypy only: it costs the command line milliseconds
if TYPE_CHECKING:
    from typing import Any
    from typing import Final
    from typing import Literal
    from typing import TypeAlias
    from typing import Union

    from kmemdump.memory import MemorySource

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_ITEMS",
    "INT_TEXT_BITS",
    "Decoded",
    "JSONValue",
    "Unresolved",
    "decode",
    "decode_buffer",
    "encode_value",
    "to_python",
]

if TYPE_CHECKING:
    JSONValue: TypeAlias = Union[bool, int, float, str, list["JSONValue"], dict[str, "JSONValue"], None]  # noqa: UP007
    _Decoder_t: TypeAlias = Callable[["_Decoder", int, str, int], JSONValue]
else:  # the union is for mypy; at run time the name stays importable without importing typing
    JSONValue = object

DEFAULT_MAX_DEPTH: Final[int] = 16
DEFAULT_MAX_ITEMS: Final[int] = 10_000
DEFAULT_MAX_BYTES: Final[int] = 4 * 1024 * 1024
_DEPTH_CEILING: Final[int] = 100  # each level costs a few Python frames
_NAME_MAX: Final[int] = 128  # py-spy reads tp_name the same way

# tp_flags "fast subclass" bits (stable since Python 3.0).
_FLAG_KINDS: Final = (
    (1 << 24, "int"),
    (1 << 25, "list"),
    (1 << 26, "tuple"),
    (1 << 27, "bytes"),
    (1 << 28, "str"),
    (1 << 29, "dict"),
    (1 << 31, "type"),
)
# Types recognised by tp_name when the type object is read from the dump (no flag bit).
_NAMED_KINDS: Final = frozenset({"bool", "float", "NoneType", "bytearray"})
_TPFLAGS_READY: Final = 1 << 12
_TPFLAGS_TYPE_SUBCLASS: Final = 1 << 31
INT_TEXT_BITS: Final = 13_000
"""Ints larger than this (about 3,900 decimal digits) are given in hex, not as JSON numbers."""
_USER_END: Final = 1 << 56
"""No user-space pointer reaches this high (x86_64 with 5-level paging stops just below it)."""


@frozen
class Decoded:
    """One decoded object: its type's name, its value, and what could not be read."""

    address: int
    type_name: str
    value: JSONValue
    complete: bool
    """True when every reachable piece was decoded, untruncated."""
    missing: tuple[str, ...]
    """One sentence per piece not decoded: ``"$[3]: list item 3 ... not in dump ..."``."""
    objects: int = 0
    """Objects visited (each counts against ``max_items``)."""
    bytes_read: int = 0
    """Bytes read (each read counts against ``max_bytes``, repeated reads again)."""
    timed_out: bool = False
    """True when the ``deadline`` passed before everything was decoded."""


@frozen
class Unresolved:
    """What :func:`to_python` puts where the value held a marker (``cycle``, ``missing``, ``object``)."""

    kind: str
    address: int
    detail: str = ""
    attrs: Any = field(default=None, compare=False)
    """For an instance decoded with its attributes: them, as Python objects (not compared)."""


class _Problem(Exception):
    """A piece of the object graph cannot be decoded; the message says what and where."""


class _Decoder:
    def __init__(
        self,
        mem: MemorySource,
        info: PyCoreInfo,
        max_depth: int,
        max_items: int,
        max_bytes: int,
        *,
        checked: bool = False,
        deadline: float | None = None,
    ):
        self.mem = mem
        self.checked = checked
        self.deadline = deadline
        self.timed_out = False
        self.type_verdicts: dict[int, str] = {}
        self.info = info
        self.layout = info.layout
        self.order: Literal["little", "big"] = "big" if info.byteorder == "big" else "little"
        self.prefix = ">" if self.order == "big" else "<"
        self.max_depth = max_depth
        self.items_left = max_items
        self.bytes_left = max_bytes
        self.missing: list[str] = []
        self.active: set[int] = set()
        self.top_type = "?"

    # --- memory ------------------------------------------------------------------------

    def read(self, address: int, size: int, what: str) -> bytes:
        if size == 0:
            return b""
        if not 0 < address < 1 << 64 or size < 0 or address + size > 1 << 64:
            raise _Problem(f"{what} at 0x{address:x}: impossible address or size ({size})")
        if size > self.bytes_left:
            raise _Problem(f"{what} at 0x{address:x}: {size} bytes exceed the max_bytes budget")
        self.bytes_left -= size
        try:
            data = self.mem.read(address, size)
        except UnreadableMemoryError as err:
            readable = err.readable
            self.bytes_left += size  # nothing was read: a lying length must not spend the budget
            raise _Problem(
                f"{what} at 0x{address:x}: not in dump ({readable} of {size} bytes readable)"
            ) from None
        if len(data) != size:
            raise _Problem(f"{what} at 0x{address:x}: the memory source returned {len(data)} of {size} bytes")
        return data

    def word(self, address: int, what: str, *, signed: bool = False) -> int:
        return int.from_bytes(self.read(address, 8, what), self.order, signed=signed)

    def u32(self, address: int, what: str) -> int:
        return int.from_bytes(self.read(address, 4, what), self.order)

    def cstring(self, address: int) -> str:
        """A NUL-terminated name of at most ``_NAME_MAX`` bytes; raises _Problem if unreadable."""
        if not 0 < address < (1 << 64) - _NAME_MAX:
            raise _Problem(f"type name at 0x{address:x}: impossible address")
        try:
            data = self.mem.read(address, _NAME_MAX)
        except UnreadableMemoryError as err:
            size = min(err.readable, _NAME_MAX)
            data = self.read(address, size, "type name") if size > 0 else b""
        else:
            if len(data) > self.bytes_left:
                raise _Problem(f"type name at 0x{address:x}: the max_bytes budget is spent") from None
            self.bytes_left -= len(data)
        end = data.find(b"\0")
        if end < 0:
            raise _Problem(f"type name at 0x{address:x}: no terminating NUL in {len(data)} bytes")
        return data[:end].decode("utf-8", errors="replace")

    def note(self, path: str, message: str) -> None:
        self.missing.append(f"{path}: {message}")

    # --- dispatch ----------------------------------------------------------------------

    def type_of(self, type_address: int) -> tuple[str, str]:
        """``(name, decoder kind)`` of the type object at ``type_address``."""
        entry = self.info.types.get(type_address)
        if entry is not None:
            return entry.name, entry.base or _kind_from_flags(entry.flags)
        try:
            flags = self.word(type_address + self.layout.tp_flags, "type flags")
            name = self.cstring(self.word(type_address + self.layout.tp_name, "type name pointer"))
        except _Problem:
            return f"<type at 0x{type_address:x}>", ""
        if name in _NAMED_KINDS:
            return name, name
        return name, _kind_from_flags(flags)

    def check_type(self, type_address: int) -> None:
        """Checked mode: ``type_address`` must be a type the PYCOREINFO names, or a type object whose
        own header checks out (readable, its type a metatype, ``Py_TPFLAGS_READY`` set)."""
        if type_address in self.info.types:
            return
        verdict = self.type_verdicts.get(type_address)
        if verdict is None:
            verdict = self.type_verdicts[type_address] = self.type_problem(type_address)
        if verdict:
            raise _Problem(verdict)

    def type_problem(self, address: int) -> str:
        here = f"type pointer 0x{address:x}"
        if address % 8 or not 0 < address < _USER_END:
            return f"implausible {here} (misaligned, NULL or outside user space)"
        try:
            meta = self.word(address + self.layout.ob_type, f"{here}: its header")
            flags = self.word(address + self.layout.tp_flags, f"{here}: its tp_flags")
        except _Problem as problem:
            return f"{here} does not point at a type object ({problem})"
        if not self.is_metatype(meta):
            return f"{here} does not point at a type object (its own type 0x{meta:x} is not a metatype)"
        if not flags & _TPFLAGS_READY:
            return f"{here} does not point at a ready type object (tp_flags 0x{flags:x})"
        return ""

    def is_metatype(self, address: int) -> bool:
        """``type`` itself, or a metaclass: a type object whose own type is ``type``."""
        entry = self.info.types.get(address)
        if entry is not None:
            return entry.base == "type" or bool(entry.flags & _TPFLAGS_TYPE_SUBCLASS)
        if address % 8 or not 0 < address < _USER_END:
            return False
        try:
            meta = self.word(address + self.layout.ob_type, "metatype header")
            flags = self.word(address + self.layout.tp_flags, "metatype flags")
        except _Problem:
            return False
        known = self.info.types.get(meta)
        return known is not None and known.base == "type" and bool(flags & _TPFLAGS_TYPE_SUBCLASS)

    def expect_dict(self, address: int, what: str) -> None:
        """Raise unless ``address`` holds a dict: an instance's ``__dict__`` is decoded at the instance's
        own depth, so anything else there (another instance, say) could chain without end."""
        if address in self.info.constants:
            raise _Problem(f"{what} at 0x{address:x} is {self.info.constants[address]}, not a dict")
        if address % 8 or not 0 < address < _USER_END:
            raise _Problem(f"{what} pointer 0x{address:x} is misaligned or outside user space")
        type_address = self.word(address + self.layout.ob_type, f"{what} header")
        if self.checked:
            self.check_type(type_address)
        name, kind = self.type_of(type_address)
        if kind != "dict":
            raise _Problem(f"{what} at 0x{address:x} has type {name}, not dict")

    def type_flags(self, type_address: int) -> int:
        """``tp_flags`` of a type, from the type map or the dump (0 when neither has it)."""
        entry = self.info.types.get(type_address)
        if entry is not None:
            return entry.flags
        try:
            return self.word(type_address + self.layout.tp_flags, "type flags")
        except _Problem:
            return 0

    def value(self, address: int, path: str, depth: int) -> JSONValue:
        constant = self.info.constants.get(address)
        if constant is not None:
            if depth == 0 and self.top_type == "?":
                self.top_type = "NoneType" if constant == "None" else "bool"
            return CONSTANT_NAMES[constant]
        here = f"0x{address:x}"
        if address == 0:
            return self.give_up(path, here, "NULL object pointer")
        if address in self.active:
            return {"$cycle": here}
        if self.checked and (address % 8 or address >= _USER_END):
            where = "misaligned" if address % 8 else "outside user space"
            return self.give_up(path, here, f"object pointer {here} is {where}: not followed")
        if depth > self.max_depth:
            return self.give_up(path, here, f"object at {here} not decoded (max_depth={self.max_depth})")
        if len(self.active) > 2 * self.max_depth + 2:  # each level nests a container and an instance at most
            return self.give_up(path, here, f"object at {here} not decoded (nested too deep)")
        if self.items_room() <= 0:
            return self.give_up(path, here, f"object at {here} not decoded ({self.items_bound()} reached)")
        self.items_left -= 1
        try:
            type_address = self.word(address + self.layout.ob_type, "object header")
            if self.checked:
                self.check_type(type_address)
            name, kind = self.type_of(type_address)
            if depth == 0 and self.top_type == "?":  # (an instance's __dict__ is at its depth too)
                self.top_type = name
            decoder = _DECODERS.get(kind)
            if decoder is None and not kind and self.layout.instance_dict:
                flags = self.type_flags(type_address)
                if flags & _HEAPTYPE:  # an instance of a class defined in Python
                    decoder = _decode_instance
            if decoder is None:
                self.note(path, f"object at {here} has type {name}, which no decoder handles")
                return {"$object": here, "type": name}
            self.active.add(address)
            try:
                return decoder(self, address, path, depth)
            finally:
                self.active.discard(address)
        except _Problem as problem:
            return self.give_up(path, here, str(problem))

    def items_room(self) -> int:
        """Objects that may still be decoded: none once the deadline has passed."""
        if not self.timed_out and self.deadline is not None and time.monotonic() > self.deadline:
            self.timed_out = True
        return 0 if self.timed_out else self.items_left

    def items_bound(self) -> str:
        """The bound that ends the decoding of more objects, as the ``missing`` sentences name it."""
        return "time limit" if self.timed_out else "max_items"

    def give_up(self, path: str, here: str, reason: str) -> JSONValue:
        self.note(path, reason)
        return {"$missing": here, "reason": reason}

    def items(self, pointers: list[int], path: str, depth: int) -> list[JSONValue]:
        """The items at ``pointers``; once no object may be decoded any more, the leading part
        (one ``missing`` sentence for the rest, not one per item)."""
        values: list[JSONValue] = []
        for i, pointer in enumerate(pointers):
            if self.items_room() <= 0 and pointer not in self.info.constants:
                self.stopped(path, len(pointers) - i, len(pointers), "items")
                break
            values.append(self.value(pointer, f"{path}[{i}]", depth + 1))
        return values

    def stopped(self, path: str, rest: int, count: int, what: str) -> None:
        self.note(path, f"the last {rest} of {count} {what} not decoded ({self.items_bound()} reached)")

    def pointers(self, address: int, count: int, what: str, path: str) -> list[int]:
        """Read up to ``count`` item pointers, fewer if the item budget is smaller."""
        if count < 0:
            raise _Problem(f"{what} at 0x{address:x}: negative size {count}")
        take = min(count, max(self.items_room(), 0))
        if take < count:
            self.note(path, f"{what}: {take} of {count} items decoded ({self.items_bound()})")
        if take * 8 > self.bytes_left:
            take = self.bytes_left // 8
            self.note(path, f"{what}: {take} of {count} items decoded (max_bytes)")
        raw = self.read(address, take * 8, what)
        return list(struct.unpack(f"{self.prefix}{take}Q", raw))


# --- decoders ----------------------------------------------------------------------------


def _kind_from_flags(flags: int) -> str:
    for bit, kind in _FLAG_KINDS:
        if flags & bit:
            return kind
    return ""


def _decode_str(d: _Decoder, address: int, path: str, depth: int) -> JSONValue:
    lay = d.layout
    here = f"str at 0x{address:x}"
    length = d.word(address + lay.str_length, f"{here} length", signed=True)
    state = d.u32(address + lay.str_state, f"{here} state")
    kind = (state >> lay.str_kind_shift) & 7
    if kind not in (1, 2, 4) or length < 0:
        raise _Problem(f"{here}: invalid header (kind {kind}, length {length})")
    if state >> lay.str_compact_bit & 1:
        data = address + (lay.str_ascii_data if state >> lay.str_ascii_bit & 1 else lay.str_compact_data)
    else:
        data = d.word(address + lay.str_compact_data, f"{here} data pointer")
    take = min(length, d.bytes_left // kind)
    if take < length:
        d.note(path, f"{here}: {take} of {length} characters decoded (max_bytes)")
    raw = d.read(data, take * kind, f"{here} characters")
    if kind == 1:
        return raw.decode("latin-1")
    codes = array("H" if kind == 2 else _UINT32, raw)
    if (sys.byteorder == "big") != (d.order == "big"):
        codes.byteswap()
    if kind == 4 and codes and max(codes) > sys.maxunicode:
        raise _Problem(f"{here}: character code 0x{max(codes):x} is not Unicode")
    return "".join(map(chr, codes))


def _decode_bytes(d: _Decoder, address: int, path: str, depth: int) -> JSONValue:
    here = f"bytes at 0x{address:x}"
    size = d.word(address + d.layout.bytes_ob_size, f"{here} size", signed=True)
    return {"$bytes": _read_blob(d, address + d.layout.bytes_ob_sval, size, here, path).hex()}


def _decode_bytearray(d: _Decoder, address: int, path: str, depth: int) -> JSONValue:
    here = f"bytearray at 0x{address:x}"
    size = d.word(address + d.layout.bytearray_ob_size, f"{here} size", signed=True)
    start = d.word(address + d.layout.bytearray_ob_start, f"{here} start pointer") if size else 0
    return {"$bytearray": _read_blob(d, start, size, f"{here} buffer", path).hex()}


def _read_blob(d: _Decoder, data: int, size: int, here: str, path: str) -> bytes:
    if size < 0:
        raise _Problem(f"{here}: negative size {size}")
    take = min(size, d.bytes_left)
    if take < size:
        d.note(path, f"{here}: {take} of {size} bytes decoded (max_bytes)")
    return d.read(data, take, f"{here} data")


def _int_value(d: _Decoder, address: int) -> int:
    lay, info = d.layout, d.info
    here = f"int at 0x{address:x}"
    word = d.word(address + lay.int_size, f"{here} size", signed=lay.int_layout == "ob_size")
    if lay.int_layout == "ob_size":
        count, sign = abs(word), (word > 0) - (word < 0)
    else:
        if word & 3 == 3:
            raise _Problem(f"{here}: invalid sign in lv_tag 0x{word:x}")
        count, sign = word >> 3, 1 - (word & 3)
    if sign == 0:
        return 0
    if count == 0:
        raise _Problem(f"{here}: a non-zero int without digits")
    if count * info.sizeof_digit > d.bytes_left:
        raise _Problem(f"{here}: {count} digits exceed the max_bytes budget")
    raw = d.read(address + lay.int_digit, count * info.sizeof_digit, f"{here} digits")
    digits = array("H" if info.sizeof_digit == 2 else _UINT32, raw)
    if (sys.byteorder == "big") != (d.order == "big"):
        digits.byteswap()
    if max(digits) >> info.bits_per_digit:
        raise _Problem(f"{here}: a digit exceeds {info.bits_per_digit} bits")
    return sign * _combine(digits, 0, len(digits), info.bits_per_digit)


def _combine(digits: array[int], start: int, stop: int, bits: int) -> int:
    """Sum of ``digits[i] << bits*(i-start)``, halving so that huge ints stay fast."""
    if stop - start <= 64:
        value = 0
        for index in range(stop - 1, start - 1, -1):
            value = (value << bits) | digits[index]
        return value
    middle = (start + stop) // 2
    low = _combine(digits, start, middle, bits)
    return low | (_combine(digits, middle, stop, bits) << (bits * (middle - start)))


def _decode_int(d: _Decoder, address: int, path: str, depth: int) -> JSONValue:
    return _int_json(_int_value(d, address))


def _int_json(value: int) -> JSONValue:
    """An int as a JSON number, or as ``{"$int": hex}`` when its decimal text would be too long to
    make (Python refuses ints over 4,300 digits, and the conversion is quadratic before 3.11)."""
    if value.bit_length() <= INT_TEXT_BITS:
        return value
    return {"$int": hex(value)}


def _decode_bool(d: _Decoder, address: int, path: str, depth: int) -> JSONValue:
    value = _int_value(d, address)
    if value not in (0, 1):
        raise _Problem(f"bool at 0x{address:x}: holds {value}")
    return bool(value)


def _decode_float(d: _Decoder, address: int, path: str, depth: int) -> JSONValue:
    raw = d.read(address + d.layout.float_fval, 8, f"float at 0x{address:x} value")
    value: float = struct.unpack(f"{d.prefix}d", raw)[0]
    return value


def _decode_none(d: _Decoder, address: int, path: str, depth: int) -> JSONValue:
    return None


def _decode_tuple(d: _Decoder, address: int, path: str, depth: int) -> JSONValue:
    here = f"tuple at 0x{address:x}"
    size = d.word(address + d.layout.tuple_ob_size, f"{here} size", signed=True)
    pointers = d.pointers(address + d.layout.tuple_ob_item, size, f"{here} items", path)
    return {"$tuple": d.items(pointers, path, depth)}


def _decode_list(d: _Decoder, address: int, path: str, depth: int) -> JSONValue:
    here = f"list at 0x{address:x}"
    size = d.word(address + d.layout.list_ob_size, f"{here} size", signed=True)
    if size == 0:
        return []
    array_address = d.word(address + d.layout.list_ob_item, f"{here} item array pointer")
    pointers = d.pointers(array_address, size, f"{here} item array", path)
    return d.items(pointers, path, depth)


def _decode_dict(d: _Decoder, address: int, path: str, depth: int) -> JSONValue:
    lay = d.layout
    here = f"dict at 0x{address:x}"
    used = d.word(address + lay.dict_ma_used, f"{here} size", signed=True)
    if used < 0:
        raise _Problem(f"{here}: negative size {used}")
    if used == 0:  # 3.10 gives empty dicts a static values array: nothing to read either way
        return {}
    keys = d.word(address + lay.dict_ma_keys, f"{here} keys pointer")
    values = d.word(address + lay.dict_ma_values, f"{here} values pointer")
    if values and lay.dict_keys_layout != "dk_size" and lay.dict_values_layout not in ("prefix", "header"):
        raise _Problem(
            f"{here}: split-table dicts (values at 0x{values:x}) are not described by this PYCOREINFO"
        )
    try:
        geometry = lay.keys_geometry(d.read(keys, lay.dk_indices, f"{here} keys header"), d.order)
    except DecodeError as err:
        raise _Problem(f"{here}: keys at 0x{keys:x}: {err}") from None
    if geometry.kind == KEYS_SPLIT and not values:
        raise _Problem(f"{here}: shared keys without values")
    count = geometry.nentries
    take = min(count, d.items_room() + max(count - used, 0), d.bytes_left // (geometry.entry_size + 8))
    if take < count:
        d.note(path, f"{here}: {take} of {count} entries read ({d.items_bound()}/max_bytes)")
    entries = _key_entries(d, keys, geometry, take, here)
    if values:  # a split table: the keys are shared, the values are the dict's own
        entries = _split_entries(d, values, entries, geometry.nentries, here)
    return _decode_pairs(d, entries, used=used, whole=take == count, here=here, path=path, depth=depth)


def _key_entries(
    d: _Decoder, keys: int, geometry: KeysGeometry, take: int, here: str
) -> list[tuple[int, int]]:
    """``(key, value)`` pointers of the first ``take`` entries of a keys table."""
    raw = d.read(keys + geometry.entries_offset, take * geometry.entry_size, f"{here} entries")
    skip = 8 if geometry.has_hash else 0
    return [struct.unpack_from(f"{d.prefix}QQ", raw, i * geometry.entry_size + skip) for i in range(take)]


def _split_entries(
    d: _Decoder, values: int, entries: list[tuple[int, int]], nentries: int, here: str
) -> list[tuple[int, int]]:
    """Pair shared keys with a split table's values, in the table's insertion order."""
    lay = d.layout
    take = len(entries)
    if lay.dict_keys_layout == "dk_size" or lay.dict_values_layout == "array":  # 3.10: key order
        pointers = struct.unpack(f"{d.prefix}{take}Q", d.read(values, take * 8, f"{here} values"))
        return [(key, value) for (key, _), value in zip(entries, pointers, strict=True)]
    if lay.dict_values_layout == "prefix":
        count, prefix = d.read(values - 2, 2, f"{here} values prefix")
        if prefix < count + 2:
            raise _Problem(f"{here}: values prefix of {prefix} bytes cannot order {count} entries")
        order = d.read(values - 2 - count, count, f"{here} insertion order")[::-1]
        base = values
    else:  # "header": capacity, size, embedded, valid; pointers; order bytes
        capacity, count = d.read(values, 2, f"{here} values header")
        if count > capacity:
            raise _Problem(f"{here}: values hold {count} entries but have room for {capacity}")
        order = d.read(values + 8 + 8 * capacity, count, f"{here} insertion order")
        base = values + 8
    if any(index >= nentries for index in order):
        raise _Problem(f"{here}: insertion order names an entry beyond the {nentries} keys")
    order = bytes(index for index in order if index < take)  # the rest fell to max_items/max_bytes
    need = max(order) + 1 if order else 0
    pointers = struct.unpack(f"{d.prefix}{need}Q", d.read(base, need * 8, f"{here} values"))
    return [(entries[index][0], pointers[index]) for index in order]


def _decode_pairs(
    d: _Decoder,
    entries: list[tuple[int, int]],
    *,
    used: int,
    whole: bool,
    here: str,
    path: str,
    depth: int,
) -> JSONValue:
    pairs: list[tuple[JSONValue, JSONValue]] = []
    for index, (key, value) in enumerate(entries):
        if not value:
            continue  # a deleted entry, or a shared key this dict does not use
        if d.items_room() <= 0:
            live = [v for _, v in entries if v]
            d.stopped(path, sum(1 for _, v in entries[index:] if v), len(live), "entries")
            whole = False
            break
        if not key:
            d.note(path, f"{here}: entry {index} has a value but no key")
            continue
        decoded_key = d.value(key, f"{path}{{key {len(pairs)}}}", depth + 1)
        label = repr(decoded_key)
        label = label if len(label) <= 40 else label[:37] + "..."
        pairs.append((decoded_key, d.value(value, f"{path}[{label}]", depth + 1)))
    if whole and used >= 0 and len(pairs) != used:
        d.note(path, f"{here}: ma_used is {used} but {len(pairs)} entries are live")
    if all(isinstance(k, str) and not k.startswith("$") for k, _ in pairs):
        return {str(k): v for k, v in pairs}
    listed: list[JSONValue] = [[k, v] for k, v in pairs]
    return {"$dict": listed}


_HEAPTYPE: Final = 1 << 9


def _decode_instance(d: _Decoder, address: int, path: str, depth: int) -> JSONValue:
    """An instance of a Python class: ``{"$object": "0x…", "type": name, "attrs": {...}}``."""
    lay = d.layout
    here = f"0x{address:x}"
    type_address = d.word(address + lay.ob_type, "object header")
    name, _ = d.type_of(type_address)
    result: dict[str, JSONValue] = {"$object": here, "type": name}
    try:
        attrs = _instance_attrs(d, address, type_address, path, depth)
    except _Problem as problem:
        reason = f"attributes of {name} object at {here}: {problem}"
        d.note(path, reason)
        attrs = {"$missing": here, "reason": reason}
    if attrs is not None:
        result["attrs"] = attrs
    return result


def _instance_attrs(d: _Decoder, address: int, type_address: int, path: str, depth: int) -> JSONValue:
    lay = d.layout
    here = f"instance at 0x{address:x}"
    flags = d.type_flags(type_address)
    style = lay.instance_dict
    values = 0
    if lay.flag_managed_dict and flags & lay.flag_managed_dict:
        dict_pointer = d.word(address - lay.managed_dict, f"{here} managed dict pointer")
        if style == "managed":
            values = d.word(address - lay.managed_values, f"{here} values pointer")
        elif style == "tagged" and dict_pointer & 1:
            dict_pointer, values = 0, dict_pointer + 1
        elif style == "inline" and not dict_pointer and flags & lay.flag_inline_values:
            basicsize = d.word(type_address + lay.tp_basicsize, f"{here} type's tp_basicsize", signed=True)
            if not 0 < basicsize < 1 << 20:
                raise _Problem(f"{here}: implausible tp_basicsize {basicsize}")
            values = address + basicsize
            if not d.read(values + 3, 1, f"{here} inline values header")[0]:
                raise _Problem(f"{here}: inline values are invalid and there is no dict")
    else:
        offset = d.word(type_address + lay.tp_dictoffset, f"{here} type's tp_dictoffset", signed=True)
        if offset == 0:
            d.note(path, f"{here}: its class has no __dict__ (__slots__?): attributes are not decoded")
            return None
        if not 0 < offset < 1 << 20:
            raise _Problem(f"{here}: tp_dictoffset {offset} (variable-size objects) is not supported")
        dict_pointer = d.word(address + offset, f"{here} dict pointer")
    if dict_pointer:
        d.expect_dict(dict_pointer, f"{here} __dict__")
        return d.value(dict_pointer, f"{path}.__dict__", depth)
    if not values:
        return {}
    keys = d.word(type_address + lay.ht_cached_keys, f"{here} type's shared keys pointer")
    try:
        geometry = lay.keys_geometry(d.read(keys, lay.dk_indices, f"{here} shared keys header"), d.order)
    except DecodeError as err:
        raise _Problem(f"{here}: shared keys at 0x{keys:x}: {err}") from None
    count = geometry.nentries
    take = min(count, d.items_left + count, d.bytes_left // (geometry.entry_size + 8))
    if take < count:
        d.note(path, f"{here}: {take} of {count} shared keys read (max_bytes)")
    entries = _key_entries(d, keys, geometry, take, f"{here} shared keys")
    pairs = _split_entries(d, values, entries, count, f"{here} values")
    return _decode_pairs(d, pairs, used=-1, whole=take == count, here=here, path=path, depth=depth)


def _decode_type(d: _Decoder, address: int, path: str, depth: int) -> JSONValue:
    entry = d.info.types.get(address)
    if entry is not None:
        return {"$class": entry.name}
    name_pointer = d.word(address + d.layout.tp_name, f"type at 0x{address:x} name pointer")
    return {"$class": d.cstring(name_pointer)}


_UINT32: Final = "I" if array("I").itemsize == 4 else "L"

_DECODERS: Final[dict[str, _Decoder_t]] = {
    "str": _decode_str,
    "bytes": _decode_bytes,
    "bytearray": _decode_bytearray,
    "int": _decode_int,
    "bool": _decode_bool,
    "float": _decode_float,
    "NoneType": _decode_none,
    "tuple": _decode_tuple,
    "list": _decode_list,
    "dict": _decode_dict,
    "type": _decode_type,
}


# --- the public functions --------------------------------------------------------------


def decode(
    mem: MemorySource,
    address: int,
    info: PyCoreInfo,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_items: int = DEFAULT_MAX_ITEMS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    checked: bool = False,
    deadline: float | None = None,
) -> Decoded:
    """Decode the object at ``address``.

    ``max_depth`` bounds nesting (0 decodes only the object itself), ``max_items`` the number
    of objects decoded, ``max_bytes`` the bytes read. Memory the dump lacks, garbage and limits
    never raise; they are reported in :attr:`Decoded.missing`. Raises :class:`DecodeError`
    only for an ``info`` or arguments this decoder cannot work with.

    ``checked`` trusts no pointer it has not checked, for memory that may hold anything (a live
    process, see :mod:`kmemdump.collector.graphs`): an object pointer must be aligned and in user
    space, and its type pointer must be a type the PYCOREINFO names or a type object whose own
    header checks out. What fails is reported as missing and not followed.

    ``deadline`` (a :func:`time.monotonic` value) bounds the time: past it no more objects are
    decoded, each one left out is reported as missing (``time limit``) and :attr:`Decoded.timed_out`
    is set. For a walk in a live process held meanwhile.
    """
    if info.pointer_size != 8:
        raise DecodeError("only 64-bit dumps can be decoded", pointer_size=info.pointer_size)
    if info.sizeof_digit not in (2, 4):
        raise DecodeError("unsupported int digit size", sizeof_digit=info.sizeof_digit)
    for name, limit, ceiling in (
        ("max_depth", max_depth, _DEPTH_CEILING),
        ("max_items", max_items, None),
        ("max_bytes", max_bytes, None),
    ):
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise DecodeError(f"{name} must be a non-negative int", value=limit)
        if ceiling is not None and limit > ceiling:
            raise DecodeError(f"{name} is above {ceiling}", value=limit)
    if isinstance(address, bool) or not isinstance(address, int):
        raise DecodeError(f"address must be an int, not {type(address).__name__}")
    decoder = _Decoder(mem, info, max_depth, max_items, max_bytes, checked=checked, deadline=deadline)
    value = decoder.value(address, "$", 0)
    missing = tuple(decoder.missing)
    return Decoded(
        address=address,
        type_name=decoder.top_type,
        value=value,
        complete=not missing,
        missing=missing,
        objects=max_items - decoder.items_left,
        bytes_read=max_bytes - decoder.bytes_left,
        timed_out=decoder.timed_out,
    )


def decode_buffer(data: bytes, *, preview: int = 256) -> dict[str, Any]:
    """Describe a plain buffer: size, a hex preview, and its text when it is mostly printable.

    Returns ``{"size": n, "hex": "...", "truncated": bool, "text": str | None}``; trailing NUL
    bytes are ignored when judging and showing the text.
    """
    sample = bytes(data[:preview])
    text: str | None = None
    stripped = sample.rstrip(b"\0")
    if stripped:
        decoded = stripped.decode("utf-8", errors="replace")
        printable = sum(1 for ch in decoded if ch.isprintable() or ch in "\t\n\r")
        if printable >= 0.9 * len(decoded):
            text = decoded
    return {"size": len(data), "hex": sample.hex(), "truncated": len(data) > preview, "text": text}


def encode_value(obj: Any) -> JSONValue:
    """The value :func:`decode` gives for a live ``obj`` (subclasses map to their builtin base).

    Objects of other types become ``{"$object": ..., "type": ...}`` (without the ``attrs`` a
    decoded instance has: reading ``__dict__`` could change the object); types ``{"$class": name}``
    with the bare ``__name__`` for builtins and ``module.qualname`` otherwise.
    """
    if type(obj) is int:
        return _int_json(obj)
    if obj is None or type(obj) in (bool, str, float):
        return obj  # type: ignore[no-any-return]
    if isinstance(obj, str):
        return str.__str__(obj)
    if isinstance(obj, float):
        return float.__float__(obj)
    if isinstance(obj, int):
        return _int_json(int.__int__(obj))
    if isinstance(obj, bytes):
        return {"$bytes": bytes(obj).hex()}
    if isinstance(obj, bytearray):
        return {"$bytearray": bytes(obj).hex()}
    if isinstance(obj, tuple):
        return {"$tuple": [encode_value(item) for item in tuple.__iter__(obj)]}
    if isinstance(obj, list):
        return [encode_value(item) for item in list.__iter__(obj)]
    if isinstance(obj, dict):
        pairs = [(encode_value(k), encode_value(v)) for k, v in dict.items(obj)]
        if all(isinstance(k, str) and not k.startswith("$") for k, _ in pairs):
            return {str(k): v for k, v in pairs}
        return {"$dict": [[k, v] for k, v in pairs]}
    if isinstance(obj, type):
        module = obj.__module__
        return {"$class": obj.__qualname__ if module == "builtins" else f"{module}.{obj.__qualname__}"}
    cls = type(obj)
    module = cls.__module__
    name = cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
    return {"$object": f"0x{id(obj):x}", "type": name}


def to_python(value: JSONValue) -> Any:
    """Turn a decoded value back into Python objects (markers become :class:`Unresolved`)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [to_python(item) for item in value]
    if (len(value) <= 2 and value) or (len(value) == 3 and "$object" in value and "attrs" in value):
        tag = next(iter(value))
        payload = value[tag]
        if tag == "$bytes" and isinstance(payload, str):
            return bytes.fromhex(payload)
        if tag == "$bytearray" and isinstance(payload, str):
            return bytearray.fromhex(payload)
        if tag == "$int" and isinstance(payload, str):
            return int(payload, 16)
        if tag == "$tuple" and isinstance(payload, list):
            return tuple(to_python(item) for item in payload)
        if tag == "$dict" and isinstance(payload, list):
            return {
                _hashable(to_python(pair[0])): to_python(pair[1])
                for pair in payload
                if isinstance(pair, list)
            }
        if tag == "$class" and isinstance(payload, str):
            return Unresolved("class", 0, payload)
        if tag in ("$cycle", "$missing", "$object") and isinstance(payload, str):
            detail = value.get("reason", value.get("type", ""))
            attrs = to_python(value["attrs"]) if "attrs" in value else None
            return Unresolved(tag[1:], int(payload, 16), detail if isinstance(detail, str) else "", attrs)
    return {key: to_python(item) for key, item in value.items()}


def _hashable(key: Any) -> Any:
    if isinstance(key, (list, dict, bytearray)):
        return Unresolved("unhashable", 0, repr(key)[:80])
    return key

"""The PYCOREINFO blob (format v1): what a reader needs to decode CPython objects without binaries.

A selective dump holds neither libpython nor the type objects, so the producer describes its
interpreter once, the way the kernel's VMCOREINFO describes a kernel: the Python version, the
object layout offsets the decoders use, and a map from type-object addresses to names.

Standard library only: the producer (which writes the blob) and the inspector (which reads it)
share this module.

Byte layout (integers in little-endian)::

    offset  size  field
    0       12    magic  b"PYCOREINFO\\0\\0"
    12      4     u32 format version (1)
    16      4     u32 payload length N
    20      N     payload: UTF-8 JSON object (keys below)
    20+N    ...   optional NUL padding (ELF notes are 4-byte aligned)

JSON keys: ``hexversion``, ``implementation``, ``free_threaded``, ``bits_per_digit``,
``sizeof_digit``, ``pointer_size``, ``byteorder``, ``source``, ``layout`` (one integer or
string per :class:`Layout` field), ``types`` (``{"0x<address>": {"name", "flags", "base"}}``)
and ``constants`` (``{"0x<address>": "None" | "True" | "False"}``). Unknown keys are ignored so
that later producers may add facts; missing or mistyped keys are errors.
"""

from __future__ import annotations

import struct
import types

from kmemdump.errors import DecodeError
from kmemdump.errors import DumpFormatError
from kmemdump.formats import jsonscan
from kmemdump.record import MISSING
from kmemdump.record import fields
from kmemdump.record import frozen
from kmemdump.record import replace

TYPE_CHECKING = False  # typing is imported for mypy only: it costs the command line milliseconds
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any
    from typing import Final
    from typing import Literal

__all__ = [
    "CONSTANT_NAMES",
    "FORMAT_VERSION",
    "INSTANCE_LAYOUTS",
    "INT_LAYOUTS",
    "KEYS_GENERAL",
    "KEYS_LAYOUTS",
    "KEYS_SPLIT",
    "KEYS_UNICODE",
    "MAGIC",
    "MAX_PAYLOAD",
    "VALUES_LAYOUTS",
    "KeysGeometry",
    "Layout",
    "PyCoreInfo",
    "TypeEntry",
    "decode",
]

MAGIC: Final[bytes] = b"PYCOREINFO\0\0"
FORMAT_VERSION: Final[int] = 1
MAX_PAYLOAD: Final[int] = 64 * 1024 * 1024
"""Largest payload a reader accepts (a type map of a few hundred thousand types)."""

_PREFIX = struct.Struct("<12sII")

INT_LAYOUTS: Final[frozenset[str]] = frozenset({"ob_size", "lv_tag"})
"""``ob_size``: sign times digit count in ``ob_size`` (3.10, 3.11); ``lv_tag``: 3.12+ tag word."""

KEYS_LAYOUTS: Final[frozenset[str]] = frozenset({"dk_size", "dk_log2"})
"""``dk_size``: 3.10 dict keys (``Py_ssize_t dk_size``); ``dk_log2``: 3.11+ (``dk_log2_size`` u8)."""

INSTANCE_LAYOUTS: Final[frozenset[str]] = frozenset({"", "dictoffset", "managed", "tagged", "inline"})
"""Where an instance keeps its attributes: ``""`` not supported (older blobs); ``dictoffset``:
a dict pointer at ``tp_dictoffset`` (3.10); ``managed``: dict and values pointers before the
object (3.11); ``tagged``: one pointer before the object, to values when its bit 0 is set (3.12);
``inline``: a dict pointer before the object and values right after it (3.13)."""

VALUES_LAYOUTS: Final[frozenset[str]] = frozenset({"", "array", "prefix", "header"})
"""How a split table's values are laid out: ``array``: bare pointers in key order (3.10);
``prefix``: pointers preceded by insertion-order bytes, the last byte the prefix size and the one
before it the count (3.11, 3.12); ``header``: a 4-byte header (capacity, size, embedded, valid),
pointers from byte 8, then insertion-order bytes (3.13). ``""``: not supported (older blobs)."""

CONSTANT_NAMES: Final[Mapping[str, bool | None]] = types.MappingProxyType(
    {"None": None, "True": True, "False": False}
)
"""Singletons a reader recognises by address alone, so they need no memory in the dump."""

_MAX_OFFSET = 1 << 16
_MAX_ADDRESS = 1 << 64
_MAX_LOG2_KEYS = 40  # 2**40 slots would be a 16+ TiB table; anything above is garbage

KEYS_GENERAL: Final[int] = 0
"""``dk_kind`` of tables whose entries hold (hash, key, value); the only kind before 3.11."""
KEYS_UNICODE: Final[int] = 1
"""``dk_kind`` of str-keyed combined tables: entries hold (key, value)."""
KEYS_SPLIT: Final[int] = 2
"""``dk_kind`` of shared-key tables; their values live in the dict's ``ma_values``."""


@frozen
class KeysGeometry:
    """Where things are in one dict keys object, computed from its header."""

    kind: int
    """:data:`KEYS_GENERAL`, :data:`KEYS_UNICODE` or :data:`KEYS_SPLIT`."""
    slots: int
    """Hash table size (``dk_size`` / ``1 << dk_log2_size``)."""
    nentries: int
    """Entries in use or deleted; live ones have a non-NULL value."""
    usable: int
    """Entries the allocation has room for."""
    entries_offset: int
    entry_size: int
    alloc_size: int
    """Bytes of the whole allocation: header, indices and every usable entry."""

    @property
    def has_hash(self) -> bool:
        """Entries start with the cached hash (general tables)."""
        return self.kind == KEYS_GENERAL

    @property
    def used_size(self) -> int:
        """Bytes up to the end of the last entry in use (a reader needs no more)."""
        return self.entries_offset + self.nentries * self.entry_size


@frozen
class Layout:
    """Byte offsets (from the object's address) and bit numbers of the fields the decoders read."""

    ob_type: int
    tp_name: int
    tp_flags: int
    str_length: int
    str_state: int
    str_kind_shift: int
    """``kind`` is ``(state >> str_kind_shift) & 7``: 1, 2 or 4 bytes a character."""
    str_compact_bit: int
    str_ascii_bit: int
    str_ascii_data: int
    """Where the characters of a compact ASCII string start (``sizeof(PyASCIIObject)``)."""
    str_compact_data: int
    """Where the characters of other compact strings start; for non-compact strings (instances
    of str subclasses) the pointer to the characters is stored here."""
    bytes_ob_size: int
    bytes_ob_sval: int
    int_layout: str
    int_size: int
    """Offset of ``ob_size`` (``int_layout == "ob_size"``) or of ``lv_tag``."""
    int_digit: int
    float_fval: int
    tuple_ob_size: int
    tuple_ob_item: int
    list_ob_size: int
    list_ob_item: int
    list_allocated: int
    dict_ma_used: int
    dict_ma_keys: int
    dict_ma_values: int
    dict_keys_layout: str
    dk_size: int
    """3.10: offset of ``dk_size``; 3.11+: offset of the u8 ``dk_log2_size``."""
    dk_log2_index_bytes: int
    dk_kind: int
    dk_nentries: int
    dk_indices: int
    dk_entry_general: int
    """Size of an entry holding (hash, key, value)."""
    dk_entry_unicode: int
    """Size of an entry holding (key, value) in str-only tables (3.11+)."""
    bytearray_ob_size: int
    bytearray_ob_alloc: int
    bytearray_ob_bytes: int
    bytearray_ob_start: int
    # Instances of ordinary classes. Added after the first release: older blobs lack them, and
    # the defaults mean "not supported" (the reader then reports attributes as missing).
    tp_basicsize: int = 0
    tp_dictoffset: int = 0
    ht_cached_keys: int = 0
    """Offset, in a heap type, of the keys object its instances share (split tables)."""
    instance_dict: str = ""
    """One of :data:`INSTANCE_LAYOUTS`."""
    managed_dict: int = 0
    """How many bytes *before* the object its managed dict pointer lies (3.11+)."""
    managed_values: int = 0
    """How many bytes before the object its values pointer lies (3.11 only)."""
    flag_managed_dict: int = 0
    """``tp_flags`` mask of ``Py_TPFLAGS_MANAGED_DICT`` (0: none)."""
    flag_inline_values: int = 0
    """``tp_flags`` mask of ``Py_TPFLAGS_INLINE_VALUES`` (0: none)."""
    dict_values_layout: str = ""
    """One of :data:`VALUES_LAYOUTS`."""

    def keys_geometry(self, header: bytes, byteorder: str = "little") -> KeysGeometry:
        """Interpret the first ``dk_indices`` bytes of a dict keys object.

        Raises :class:`DecodeError` when the header is inconsistent (garbage, or not a keys object).
        """
        if len(header) < self.dk_indices:
            raise DecodeError("dict keys header is short", size=len(header), need=self.dk_indices)
        order: Literal["little", "big"] = "big" if byteorder == "big" else "little"

        def word(offset: int, size: int) -> int:
            return int.from_bytes(header[offset : offset + size], order, signed=True)

        nentries = word(self.dk_nentries, 8)
        if self.dict_keys_layout == "dk_size":
            slots = word(self.dk_size, 8)
            if slots <= 0 or slots & (slots - 1) or slots > 1 << _MAX_LOG2_KEYS:
                raise DecodeError("dict keys dk_size is not a power of two", dk_size=slots)
            width = 1 if slots <= 0xFF else 2 if slots <= 0xFFFF else 4 if slots <= 0xFFFFFFFF else 8
            index_bytes = slots * width
            kind = KEYS_GENERAL
            entry_size = self.dk_entry_general
        else:
            log2_size = header[self.dk_size]
            log2_index = header[self.dk_log2_index_bytes]
            kind = header[self.dk_kind]
            if log2_size > _MAX_LOG2_KEYS or not log2_size <= log2_index <= log2_size + 3:
                raise DecodeError(
                    "dict keys sizes are inconsistent", log2_size=log2_size, log2_index_bytes=log2_index
                )
            if kind not in (KEYS_GENERAL, KEYS_UNICODE, KEYS_SPLIT):
                raise DecodeError("dict keys kind is unknown", dk_kind=kind)
            slots = 1 << log2_size
            index_bytes = 1 << log2_index
            entry_size = self.dk_entry_general if kind == KEYS_GENERAL else self.dk_entry_unicode
        usable = (slots << 1) // 3
        if not 0 <= nentries <= usable:
            raise DecodeError("dict keys dk_nentries is out of range", dk_nentries=nentries, usable=usable)
        entries_offset = self.dk_indices + index_bytes
        return KeysGeometry(
            kind=kind,
            slots=slots,
            nentries=nentries,
            usable=usable,
            entries_offset=entries_offset,
            entry_size=entry_size,
            alloc_size=entries_offset + usable * entry_size,
        )

    def to_json(self) -> dict[str, int | str]:
        """The layout as a JSON object (field name -> value)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: object) -> Layout:
        """Check and convert a ``layout`` JSON object; raises :class:`DumpFormatError`."""
        obj = _as_object(data, "layout")
        values: dict[str, Any] = {}
        for field in fields(cls):
            where = f"layout.{field.name}"
            if field.name not in obj and field.default is not MISSING:
                continue  # a fact added later: an older producer did not know it
            if field.name == "int_layout":
                values[field.name] = _choice(obj, field.name, INT_LAYOUTS, where)
            elif field.name == "dict_keys_layout":
                values[field.name] = _choice(obj, field.name, KEYS_LAYOUTS, where)
            elif field.name == "instance_dict":
                values[field.name] = _choice(obj, field.name, INSTANCE_LAYOUTS, where)
            elif field.name == "dict_values_layout":
                values[field.name] = _choice(obj, field.name, VALUES_LAYOUTS, where)
            else:
                values[field.name] = _int(obj, field.name, where, 0, _MAX_OFFSET)
        for name in ("dk_entry_general", "dk_entry_unicode"):
            if values[name] < 8:
                raise DumpFormatError(f"PYCOREINFO layout.{name} is too small", value=values[name])
        return cls(**values)


@frozen
class TypeEntry:
    """What the reader knows about one type object: its name, ``tp_flags`` and decodable base.

    ``name`` is the bare name for builtins (``"int"``, ``"NoneType"``) and ``module.qualname``
    otherwise. ``base`` names the nearest builtin in the MRO that the decoders handle
    (``"dict"`` for ``collections.OrderedDict``), or is empty.
    """

    name: str
    flags: int
    base: str = ""


@frozen
class PyCoreInfo:
    """The decoded PYCOREINFO payload. ``types`` and ``constants`` are keyed by address."""

    hexversion: int
    implementation: str
    free_threaded: bool
    bits_per_digit: int
    sizeof_digit: int
    pointer_size: int
    byteorder: str
    source: str
    """Where the offsets came from: ``"debug_offsets"`` (``_Py_DebugOffsets``) or ``"table"``."""
    layout: Layout
    types: Mapping[int, TypeEntry]
    constants: Mapping[int, str]

    def __post_init__(self) -> None:
        # Freeze the maps too: a PyCoreInfo is a value.
        object.__setattr__(self, "types", types.MappingProxyType(dict(self.types)))
        object.__setattr__(self, "constants", types.MappingProxyType(dict(self.constants)))

    @property
    def version(self) -> tuple[int, int, int]:
        """``(major, minor, micro)`` from ``hexversion``."""
        h = self.hexversion
        return (h >> 24) & 0xFF, (h >> 16) & 0xFF, (h >> 8) & 0xFF

    @property
    def version_string(self) -> str:
        return ".".join(str(part) for part in self.version)

    def with_types(self, extra: Mapping[int, TypeEntry]) -> PyCoreInfo:
        """A copy whose type map also holds ``extra`` (which wins on conflicts)."""
        merged = dict(self.types)
        merged.update(extra)
        return replace(self, types=merged)

    def to_json(self) -> dict[str, Any]:
        """The payload as a JSON object."""
        return {
            "hexversion": self.hexversion,
            "implementation": self.implementation,
            "free_threaded": self.free_threaded,
            "bits_per_digit": self.bits_per_digit,
            "sizeof_digit": self.sizeof_digit,
            "pointer_size": self.pointer_size,
            "byteorder": self.byteorder,
            "source": self.source,
            "layout": self.layout.to_json(),
            "types": {
                f"0x{address:x}": {"name": entry.name, "flags": entry.flags, "base": entry.base}
                for address, entry in sorted(self.types.items())
            },
            "constants": {f"0x{address:x}": name for address, name in sorted(self.constants.items())},
        }

    @classmethod
    def decode(cls, data: bytes) -> PyCoreInfo:
        """Parse a blob (same as the module-level :func:`decode`)."""
        return decode(data)

    def encode(self) -> bytes:
        """The blob: binary prefix then compact UTF-8 JSON."""
        import json  # here: the reader decodes with jsonscan (json imports re)

        payload = json.dumps(self.to_json(), separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(payload) > MAX_PAYLOAD:
            raise DumpFormatError("PYCOREINFO payload too large", size=len(payload), limit=MAX_PAYLOAD)
        return _PREFIX.pack(MAGIC, FORMAT_VERSION, len(payload)) + payload

    @classmethod
    def from_json(cls, data: object) -> PyCoreInfo:
        """Check and convert a payload JSON object; raises :class:`DumpFormatError`."""
        obj = _as_object(data, "payload")
        byteorder = _choice(obj, "byteorder", frozenset({"little", "big"}), "byteorder")
        pointer_size = _int(obj, "pointer_size", "pointer_size", 4, 8)
        if pointer_size not in (4, 8):
            raise DumpFormatError("PYCOREINFO pointer_size must be 4 or 8", pointer_size=pointer_size)
        sizeof_digit = _int(obj, "sizeof_digit", "sizeof_digit", 2, 4)
        if sizeof_digit == 3:
            raise DumpFormatError("PYCOREINFO sizeof_digit must be 2 or 4", sizeof_digit=3)
        bits = _int(obj, "bits_per_digit", "bits_per_digit", 1, 8 * sizeof_digit)
        return cls(
            hexversion=_int(obj, "hexversion", "hexversion", 1, 2**32 - 1),
            implementation=_str(obj, "implementation", "implementation"),
            free_threaded=_bool(obj, "free_threaded", "free_threaded"),
            bits_per_digit=bits,
            sizeof_digit=sizeof_digit,
            pointer_size=pointer_size,
            byteorder=byteorder,
            source=_str(obj, "source", "source"),
            layout=Layout.from_json(_get(obj, "layout", "layout")),
            types=_type_map(_get(obj, "types", "types")),
            constants=_constants(_get(obj, "constants", "constants")),
        )


def decode(data: bytes) -> PyCoreInfo:
    """Parse a PYCOREINFO blob. Every defect raises :class:`DumpFormatError`, never anything else."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DumpFormatError(f"PYCOREINFO must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) < _PREFIX.size:
        raise DumpFormatError("PYCOREINFO blob is shorter than its header", size=len(data))
    magic, version, length = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise DumpFormatError("not a PYCOREINFO blob: magic does not match", magic=magic.hex())
    if version != FORMAT_VERSION:
        raise DumpFormatError(
            "PYCOREINFO format version is not supported by this kmemdump",
            version=version,
            supported=FORMAT_VERSION,
        )
    if length > MAX_PAYLOAD:
        raise DumpFormatError("PYCOREINFO payload length is implausible", length=length, limit=MAX_PAYLOAD)
    end = _PREFIX.size + length
    if len(data) < end:
        raise DumpFormatError(
            "PYCOREINFO blob is truncated", length=length, available=len(data) - _PREFIX.size
        )
    if data[end:].strip(b"\0"):
        raise DumpFormatError("PYCOREINFO blob has bytes after its payload", extra=len(data) - end)
    try:
        parsed = jsonscan.loads(data[_PREFIX.size : end].decode("utf-8"))
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise DumpFormatError(f"PYCOREINFO payload is not valid UTF-8 JSON: {err}") from err
    return PyCoreInfo.from_json(parsed)


# --- checking helpers ------------------------------------------------------------------


def _as_object(data: object, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise DumpFormatError(f"PYCOREINFO {where} must be a JSON object, not {_json_kind(data)}")
    return data


def _get(obj: dict[str, Any], key: str, where: str) -> Any:
    try:
        return obj[key]
    except KeyError:
        raise DumpFormatError(f"PYCOREINFO lacks the key {where!r}") from None


def _int(obj: dict[str, Any], key: str, where: str, low: int, high: int) -> int:
    value = _get(obj, key, where)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DumpFormatError(f"PYCOREINFO {where} must be an integer, not {_json_kind(value)}")
    if not low <= value <= high:
        raise DumpFormatError(f"PYCOREINFO {where} is out of range", value=value, low=low, high=high)
    return value


def _str(obj: dict[str, Any], key: str, where: str) -> str:
    value = _get(obj, key, where)
    if not isinstance(value, str):
        raise DumpFormatError(f"PYCOREINFO {where} must be a string, not {_json_kind(value)}")
    return value


def _bool(obj: dict[str, Any], key: str, where: str) -> bool:
    value = _get(obj, key, where)
    if not isinstance(value, bool):
        raise DumpFormatError(f"PYCOREINFO {where} must be true or false, not {_json_kind(value)}")
    return value


def _choice(obj: dict[str, Any], key: str, allowed: frozenset[str], where: str) -> str:
    value = _str(obj, key, where)
    if value not in allowed:
        raise DumpFormatError(
            f"PYCOREINFO {where} has an unknown value", value=value[:40], allowed="/".join(sorted(allowed))
        )
    return value


def _address(key: str, where: str) -> int:
    text = key[2:] if key[:2] in ("0x", "0X") else ""
    try:
        address = int(text, 16) if text and text.isascii() and text.isalnum() else -1
    except ValueError:
        address = -1
    if not 0 < address < _MAX_ADDRESS:
        raise DumpFormatError(f"PYCOREINFO {where} key is not a hex address", key=key[:40])
    return address


def _type_map(data: object) -> dict[int, TypeEntry]:
    obj = _as_object(data, "types")
    result: dict[int, TypeEntry] = {}
    for key, value in obj.items():
        address = _address(key, "types")
        entry = _as_object(value, f"types[{key[:40]}]")
        where = f"types[{key[:40]}]"
        result[address] = TypeEntry(
            name=_str(entry, "name", f"{where}.name"),
            flags=_int(entry, "flags", f"{where}.flags", 0, 2**64 - 1),
            base=_str(entry, "base", f"{where}.base"),
        )
    return result


def _constants(data: object) -> dict[int, str]:
    obj = _as_object(data, "constants")
    result: dict[int, str] = {}
    for key, value in obj.items():
        address = _address(key, "constants")
        if not isinstance(value, str) or value not in CONSTANT_NAMES:
            raise DumpFormatError(
                "PYCOREINFO constants must name None, True or False", key=key[:40], value=str(value)[:40]
            )
        result[address] = value
    return result


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__

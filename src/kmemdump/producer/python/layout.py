"""The running interpreter's object layout: offset tables and ``_Py_DebugOffsets``.

Producer side, standard library only; ``ctypes`` is imported on first use.

* On 3.13+ the offsets come from ``_Py_DebugOffsets``, the first member of ``_PyRuntime``,
  parsed according to its ``version`` field (only the groups this package needs).
* On 3.10 to 3.12, or when the cookie is missing or of an unknown version, they come from
  :data:`TABLE`.

Nothing here is trusted until :func:`kmemdump.producer.python.selftest.self_test` has checked it
against live objects (see :func:`kmemdump.producer.python.live.probe`).
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from kmemdump.formats.pycoreinfo import Layout
from kmemdump.record import frozen
from kmemdump.record import replace

__all__ = ["TABLE", "LayoutChoice", "free_threaded", "runtime_layout", "without_instances"]

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
_V313 = replace(_V312, instance_dict="inline", flag_inline_values=1 << 2, dict_values_layout="header")
_V311 = replace(
    _V312,
    str_ascii_data=48,
    str_compact_data=72,
    int_layout="ob_size",
    ht_cached_keys=872,
    instance_dict="managed",
    managed_values=32,
)
# 3.10 dict keys: Py_ssize_t dk_size, a lookup function pointer, and 24-byte entries only.
_V310 = replace(
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


@frozen
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
    if free_threaded():
        return LayoutChoice(None, "", f"no layout for free-threaded {minor[0]}.{minor[1]} ({note})")
    known = TABLE.get(minor)
    if known is None:
        newest = max(TABLE)
        known = TABLE[newest]
        note = f"{note}; " if note else ""
        note += f"no table for {minor[0]}.{minor[1]}, trying the {newest[0]}.{newest[1]} one"
    return LayoutChoice(known, "table", note)


def free_threaded() -> bool:
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
    layout = replace(
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
        layout = replace(layout, str_kind_shift=8, str_compact_bit=11, str_ascii_bit=12)
    return layout


def without_instances(layout: Layout) -> Layout:
    """``layout`` with instance attribute decoding turned off (its fields at their defaults)."""
    return replace(
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

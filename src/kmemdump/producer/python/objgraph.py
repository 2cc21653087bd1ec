"""The memory ranges a reader needs to decode a Python object (and, to some depth, its contents).

Producer side, standard library only. A list's header says where its item array is, a dict's
where its keys table is, a bytearray's where its buffer is: those out-of-line allocations must
be dumped as well as the object; so must an instance's attribute storage (its dict, or its
values and its class's shared keys). With ``depth > 0`` the items of lists and tuples, the keys
and values of dicts and the attribute names and values of instances are followed too, breadth
first, each object listed once.

Pointers are read with ``ctypes`` only when the process-wide layout passed its self-test (see
:mod:`kmemdump.producer.python.layout`); without it, only the objects themselves are listed.
"""

from __future__ import annotations

import struct
import sys
from collections import deque
from collections.abc import Callable
from typing import Any
from typing import Final

from kmemdump.errors import DecodeError
from kmemdump.errors import InvalidRegionError
from kmemdump.formats.pycoreinfo import Layout
from kmemdump.producer.python.live import builtin_base
from kmemdump.producer.python.live import default

__all__ = ["MAX_DEPTH", "object_regions"]

MAX_DEPTH: Final[int] = 64
"""Deepest ``depth`` accepted."""

_SINGLETONS: Final = (None, True, False)
_WORD = struct.Struct("=q")
_UWORD = struct.Struct("=Q")
_U32 = struct.Struct("=I")
# The builtin's own __sizeof__: a subclass's override could claim more than the object holds.
_SIZEOF: Final[dict[str, Callable[[Any], int]]] = {
    "bytes": bytes.__sizeof__,
    "int": int.__sizeof__,
    "bool": int.__sizeof__,
    "float": float.__sizeof__,
    "tuple": tuple.__sizeof__,
}


def object_regions(
    obj: Any, depth: int = 0, *, layout: Layout | None = None, limit: int | None = None
) -> list[tuple[int, int, str, Any]]:
    """``[(address, size, label, keepalive), ...]`` needed to decode ``obj`` from a dump.

    The first entry is always ``obj`` itself. Labels name what a range holds: ``"list"``,
    ``"list.ob_item"``, ``"dict.ma_keys"``, ``"dict.ma_values"`` (3.10 split tables),
    ``"bytearray.ob_bytes"``, ``"str.data"``,
    ``"type.tp_name"``, or ``"object"`` for objects no decoder handles. An instance of a Python
    class adds what holds its attributes: ``"object.preheader"`` (pointers before it, 3.11+),
    its dict's ranges, or ``"object.values"`` with ``"type.cached_keys"`` and
    ``"type.ht_cached_keys"``; and ``"type.tp_dictoffset"`` or ``"type.tp_basicsize"``.
    ``keepalive`` is the object whose lifetime the range depends on.

    Referents that are ``None``, ``True`` or ``False`` are skipped: the reader recognises them
    by address. ``layout`` defaults to the process-wide checked one; pass one only if it has
    passed :func:`kmemdump.producer.python.selftest.self_test`. ``limit`` caps the number of ranges
    (:class:`InvalidRegionError` beyond it).
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= MAX_DEPTH:
        raise InvalidRegionError(f"depth must be an int from 0 to {MAX_DEPTH}", depth=depth)
    if layout is None:
        layout = default().layout
    regions: list[tuple[int, int, str, Any]] = []
    seen: set[int] = set()
    spans: set[tuple[int, int]] = set()  # instances of one class share the class's ranges
    queue: deque[tuple[Any, int]] = deque([(obj, depth)])
    first = True
    while queue:
        item, left = queue.popleft()
        if id(item) in seen or (not first and any(item is s for s in _SINGLETONS)):
            continue
        first = False
        seen.add(id(item))
        base = builtin_base(type(item))
        children: list[Any] = []
        parts = _ranges(item, base, layout)
        if base == "" and layout is not None and layout.instance_dict:
            storage, children = _instance_parts(item, layout)
            parts.extend(storage)
        for part in parts:
            if (part[0], part[1]) not in spans:
                spans.add((part[0], part[1]))
                regions.append(part)
        if limit is not None and len(regions) > limit:
            raise InvalidRegionError("the object graph needs more ranges than the limit", limit=limit)
        if left:
            children = children or _referents(item, base)
            queue.extend((child, left - 1) for child in children if id(child) not in seen)
    return regions


def _referents(obj: Any, base: str) -> list[Any]:
    try:
        if base == "list":
            return list.copy(obj)
        if base == "tuple":
            return list(tuple.__iter__(obj))
        if base == "dict":
            return [part for pair in dict.items(obj) for part in pair]
    except RuntimeError:  # changed size during iteration (another thread): follow nothing
        return []
    return []


def _bytes(address: int, size: int = -1) -> bytes:
    """``size`` bytes at ``address`` (up to the first NUL when ``size`` is -1)."""
    import ctypes  # loaded lazily: import kmemdump must stay cheap

    return ctypes.string_at(address, size)


def _read(address: int, fmt: struct.Struct) -> int:
    value: int = fmt.unpack(_bytes(address, fmt.size))[0]
    return value


def _ranges(obj: Any, base: str, layout: Layout | None) -> list[tuple[int, int, str, Any]]:
    address = id(obj)
    if base in ("", "NoneType"):
        return [(address, object.__sizeof__(obj), base or "object", obj)]
    if base in ("bytes", "int", "bool", "float", "tuple"):
        return [(address, _SIZEOF[base](obj), base, obj)]
    if base == "str":
        return _str_ranges(obj, layout)
    if base == "type":
        return _type_ranges(obj, layout)
    own = (address, type(obj).__basicsize__, base, obj)
    if layout is None:
        return [own]
    if base == "list":
        items = _read(address + layout.list_ob_item, _UWORD)
        allocated = _read(address + layout.list_allocated, _WORD)
        extra = [(items, allocated * 8, "list.ob_item", obj)] if items and allocated > 0 else []
        return [own, *extra]
    if base == "bytearray":
        buffer = _read(address + layout.bytearray_ob_bytes, _UWORD)
        alloc = _read(address + layout.bytearray_ob_alloc, _WORD)
        extra = [(buffer, alloc, "bytearray.ob_bytes", obj)] if buffer and alloc > 0 else []
        return [own, *extra]
    # dict
    keys = _read(address + layout.dict_ma_keys, _UWORD)
    try:
        geometry = layout.keys_geometry(_bytes(keys, layout.dk_indices), sys.byteorder)
    except DecodeError:  # a layout that passed the self-test should never get here
        return [own]
    parts = [own, (keys, geometry.alloc_size, "dict.ma_keys", obj)]
    values = _read(address + layout.dict_ma_values, _UWORD)
    if values and layout.dict_keys_layout == "dk_size" and geometry.usable and len(obj):
        # 3.10 split table (an instance __dict__): one value pointer per shared-key entry
        parts.append((values, geometry.usable * 8, "dict.ma_values", obj))
    elif values and layout.dict_values_layout in ("prefix", "header"):
        parts.append((*_values_span(layout, values, geometry.usable), "dict.ma_values", obj))
    return parts


def _values_span(layout: Layout, values: int, usable: int) -> tuple[int, int]:
    """``(address, size)`` of split-table values, insertion-order bytes included."""
    if layout.dict_values_layout == "header":  # capacity in byte 0; pointers, then one order byte each
        capacity = _bytes(values, 1)[0]
        return values, 8 + capacity * 9
    prefix = _bytes(values - 1, 1)[0]  # "prefix": order bytes before the pointers
    return values - prefix, prefix + usable * 8


_HEAPTYPE: Final = 1 << 9


def _instance_parts(obj: Any, layout: Layout) -> tuple[list[tuple[int, int, str, Any]], list[Any]]:
    """Ranges holding an instance's attributes (beyond the object), and the attribute names and values.

    Never touches ``obj.__dict__``: on 3.11+ that would create the dict the instance had avoided.
    """
    cls = type(obj)
    flags = type.__getattribute__(cls, "__flags__")
    if not flags & _HEAPTYPE:
        return [], []
    address = id(obj)
    parts: list[tuple[int, int, str, Any]] = []
    style = layout.instance_dict
    dict_pointer = values = 0
    if layout.flag_managed_dict and flags & layout.flag_managed_dict:
        if style == "managed":  # values pointer, then dict pointer
            values = _read(address - layout.managed_values, _UWORD)
            span = layout.managed_values - layout.managed_dict + 8
            parts.append((address - layout.managed_values, span, "object.preheader", obj))
        else:
            parts.append((address - layout.managed_dict, 8, "object.preheader", obj))
        dict_pointer = _read(address - layout.managed_dict, _UWORD)
        if style == "tagged" and dict_pointer & 1:
            dict_pointer, values = 0, dict_pointer + 1
        if style == "inline" and not dict_pointer and layout.flag_inline_values & flags:
            parts.append((id(cls) + layout.tp_basicsize, 8, "type.tp_basicsize", cls))
            values = address + type.__getattribute__(cls, "__basicsize__")
            if not _bytes(values + 3, 1)[0]:  # not valid: the attributes moved to a dict
                values = 0
    else:
        # the reader needs the offset even when it is 0: that says "no __dict__" (__slots__)
        parts.append((id(cls) + layout.tp_dictoffset, 8, "type.tp_dictoffset", cls))
        offset = type.__getattribute__(cls, "__dictoffset__")
        if offset <= 0:  # no dict, or one at the end of a variable-size object: not supported
            return parts, []
        dict_pointer = _read(address + offset, _UWORD)
    if dict_pointer:
        try:  # the dict exists already, so this creates nothing
            attrs = object.__getattribute__(obj, "__dict__")
        except Exception:  # a class may define __dict__ as it likes
            return parts, []
        if type(attrs) is not dict or id(attrs) != dict_pointer:  # overridden, or replaced meanwhile
            return parts, []
        parts.extend(_ranges(attrs, "dict", layout))
        return parts, [part for pair in dict.items(attrs) for part in pair]
    if not values:
        return parts, []
    return _values_parts(obj, cls, values, layout, parts)


def _values_parts(
    obj: Any, cls: type, values: int, layout: Layout, parts: list[tuple[int, int, str, Any]]
) -> tuple[list[tuple[int, int, str, Any]], list[Any]]:
    import ctypes
    import gc

    keys = _read(id(cls) + layout.ht_cached_keys, _UWORD)
    try:
        geometry = layout.keys_geometry(_bytes(keys, layout.dk_indices), sys.byteorder)
    except DecodeError:  # a layout that passed the self-test should never get here
        return parts, []
    parts.append((id(cls) + layout.ht_cached_keys, 8, "type.ht_cached_keys", cls))
    parts.append((keys, geometry.alloc_size, "type.cached_keys", cls))
    parts.append((*_values_span(layout, values, geometry.usable), "object.values", obj))
    base = values if layout.dict_values_layout == "prefix" else values + 8
    # the names of the attributes set: shared keys live as long as the class does
    names = []
    for index in range(geometry.nentries):
        if _read(base + 8 * index, _UWORD):
            entry = keys + geometry.entries_offset + index * geometry.entry_size
            key = _read(entry + (8 if geometry.has_hash else 0), _UWORD)
            if key:
                names.append(ctypes.cast(key, ctypes.py_object).value)
    return parts, names + [r for r in gc.get_referents(obj) if r is not cls]


def _str_ranges(text: str, layout: Layout | None) -> list[tuple[int, int, str, Any]]:
    address = id(text)
    if layout is None:  # __sizeof__ may count a cached UTF-8 copy kept elsewhere; good enough
        size = str.__sizeof__(text) if type(text) is str else type(text).__basicsize__
        return [(address, size, "str", text)]
    state = _read(address + layout.str_state, _U32)
    kind = (state >> layout.str_kind_shift) & 7
    length = len(text)
    if state >> layout.str_compact_bit & 1:
        start = layout.str_ascii_data if state >> layout.str_ascii_bit & 1 else layout.str_compact_data
        return [(address, start + (length + 1) * kind, "str", text)]
    data = _read(address + layout.str_compact_data, _UWORD)
    own = (address, type(text).__basicsize__, "str", text)
    return [own, (data, (length + 1) * kind, "str.data", text)] if data else [own]


def _type_ranges(cls: type, layout: Layout | None) -> list[tuple[int, int, str, Any]]:
    own = (id(cls), type.__sizeof__(cls), "type", cls)
    if layout is None:
        return [own]
    name = _read(id(cls) + layout.tp_name, _UWORD)
    if not name:
        return [own]
    return [own, (name, len(_bytes(name)) + 1, "type.tp_name", cls)]

"""What a registered region is, and how a Python target becomes (address, size, kind).

Standard library only: this module is imported into production processes. ``ctypes`` is
imported lazily, on the first registration that needs it, to keep ``import kmemdump`` cheap.
"""

from __future__ import annotations

import sys
from typing import Any
from typing import NamedTuple

from kmemdump.errors import InvalidRegionError
from kmemdump.formats.enums import RegionKind
from kmemdump.formats.kinds import NAME_MAX
from kmemdump.record import frozen

__all__ = [
    "Region",
    "Resolved",
    "buffer_address",
    "clean_name",
    "make_region",
    "object_size",
    "resolve_target",
]

_ADDRESS_LIMIT = 2**64
_OBJECT_SIZEOF: Any = object.__sizeof__


@frozen
class Region:
    """One registered region, as the registry and every backend see it."""

    id: int
    address: int
    size: int
    kind: RegionKind
    name: str
    type_name: str = ""
    flags: int = 0
    """:class:`RegionFlags` bits (a plain int, to keep registration cheap)."""
    graph_depth: int | None = None
    """For the root of a live object graph (``register_object``): the depth the collector walks it to
    in the live process at dump time. None for every other region."""

    @property
    def end(self) -> int:
        return self.address + self.size


_SET_ID, _SET_ADDRESS, _SET_SIZE, _SET_KIND, _SET_NAME, _SET_TYPE_NAME, _SET_FLAGS, _SET_DEPTH = (
    Region.__dict__[name].__set__
    for name in ("id", "address", "size", "kind", "name", "type_name", "flags", "graph_depth")
)


def make_region(  # noqa: PLR0917 - Region's own fields, in order
    id: int,
    address: int,
    size: int,
    kind: RegionKind,
    name: str,
    type_name: str = "",
    flags: int = 0,
    graph_depth: int | None = None,
) -> Region:
    """``Region(...)`` for the registry's hot path: the same frozen object, built in half the time.

    The generated ``__init__`` of a frozen dataclass stores each field through ``object.__setattr__``;
    the slot descriptors store them directly. Fields are not checked here, as they are not there.
    """
    region: Region = object.__new__(Region)
    _SET_ID(region, id)
    _SET_ADDRESS(region, address)
    _SET_SIZE(region, size)
    _SET_KIND(region, kind)
    _SET_NAME(region, name)
    _SET_TYPE_NAME(region, type_name)
    _SET_FLAGS(region, flags)
    _SET_DEPTH(region, graph_depth)
    return region


class Resolved(NamedTuple):
    """A target turned into memory: where, how big, what kind, and what keeps it in place.

    Internal, on the registration hot path: a tuple costs a third of a frozen dataclass to build,
    and the registry unpacks it straight into its arguments.
    """

    address: int
    size: int
    kind: RegionKind
    type_name: str
    keepalive: Any


def clean_name(name: str) -> str:
    """Make ``name`` safe for the table: printable ASCII-or-UTF-8, at most ``NAME_MAX`` bytes."""
    if not isinstance(name, str):
        raise InvalidRegionError(f"name must be a str, not {type(name).__name__}")
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in name)
    data = cleaned.encode("utf-8")[:NAME_MAX]
    return data.decode("utf-8", errors="ignore")


def _check_size(size: int, available: int | None, what: str) -> int:
    if isinstance(size, bool) or not isinstance(size, int):
        raise InvalidRegionError(f"size must be an int, not {type(size).__name__}")
    if size <= 0:
        raise InvalidRegionError("size must be positive", size=size)
    if available is not None and size > available:
        raise InvalidRegionError(f"size is larger than the {what}", size=size, available=available)
    return size


def _ctypes_target(target: Any) -> bool:
    ct = sys.modules.get("ctypes")
    if ct is None:  # no ctypes instance can exist before ctypes is imported
        return False
    cdata = (ct._SimpleCData, ct.Structure, ct.Union, ct.Array, ct._Pointer)
    return isinstance(target, cdata)


def resolve_target(target: Any, size: int | None = None, *, as_object: bool = False) -> Resolved:
    """Turn a registration target into a :class:`Resolved`.

    * ``int`` (not ``bool``) with ``size``: a raw address;
    * a ctypes instance: its storage (``addressof``/``sizeof``);
    * an object with the buffer protocol: its bytes, which must be C-contiguous; the returned
      ``keepalive`` holds a buffer export, so a bytearray, array or mmap cannot be resized or
      closed (and so cannot move) while registered;
    * anything else, or anything when ``as_object``: the object's own memory at ``id(obj)``,
      ``obj.__sizeof__()`` bytes.
    """
    type_name = type(target).__qualname__
    if as_object:
        return _resolve_object(target, size)
    if isinstance(target, int) and not isinstance(target, bool):
        if size is None:
            raise InvalidRegionError(
                "an int target is a raw address and needs size=; "
                "to register the int object itself use register_object()",
                address=target,
            )
        length = _check_size(size, None, "address space")
        if not 0 < target < _ADDRESS_LIMIT or target + length > _ADDRESS_LIMIT:
            raise InvalidRegionError("address out of range", address=target, size=length)
        return Resolved(target, length, RegionKind.ADDRESS, "", None)
    if _ctypes_target(target):
        import ctypes

        available = ctypes.sizeof(target)
        length = available if size is None else _check_size(size, available, "ctypes object")
        return Resolved(ctypes.addressof(target), length, RegionKind.CTYPES, type_name, target)
    try:
        view = memoryview(target)
    except TypeError:
        return _resolve_object(target, size)
    except (BufferError, ValueError) as err:  # a closed mmap, a released memoryview …
        raise InvalidRegionError(f"cannot get the buffer: {err}", type=type_name) from err
    return _resolve_buffer(view, size, type_name)


def _resolve_object(target: Any, size: int | None) -> Resolved:
    available = object_size(target)
    length = available if size is None else _check_size(size, available, "object")
    return Resolved(id(target), length, RegionKind.OBJECT, type(target).__qualname__, target)


def object_size(target: Any) -> int:
    """How many bytes of ``target`` lie at ``id(target)``: its own memory, nothing it points to.

    ``__sizeof__`` is right for objects whose variable part is stored inline (``str``, ``int``,
    ``tuple``, ``bytes``, plain instances). Fixed-size types that override it (``list``, ``dict``,
    ``set``, ``bytearray``, ``deque`` …) add storage allocated elsewhere, which does not follow the
    object in memory; for those only the fixed part counts.
    """
    cls = type(target)
    sizeof: Any = cls.__sizeof__  # looked up on the type: a class's own __sizeof__ is unbound
    try:
        reported = int(sizeof(target))
    except Exception as err:
        raise InvalidRegionError("cannot tell the object's size", type=cls.__name__) from err
    if cls.__itemsize__ == 0 and not isinstance(target, str) and sizeof is not _OBJECT_SIZEOF:
        reported = min(reported, _OBJECT_SIZEOF(target))
    if reported <= 0:
        raise InvalidRegionError("the object reports no size", type=cls.__name__, size=reported)
    return reported


def _resolve_buffer(view: memoryview, size: int | None, type_name: str) -> Resolved:
    if not view.c_contiguous:
        view.release()
        raise InvalidRegionError("buffer is not C-contiguous", type=type_name)
    available = view.nbytes
    if available == 0:
        view.release()
        raise InvalidRegionError("buffer is empty", type=type_name)
    try:
        length = available if size is None else _check_size(size, available, "buffer")
    except InvalidRegionError:
        view.release()
        raise
    return Resolved(buffer_address(view), length, RegionKind.BUFFER, type_name, view)


def buffer_address(view: memoryview) -> int:
    """The address of the first byte of a C-contiguous buffer, read-only ones included."""
    import ctypes

    if not view.readonly and view.format in ("B", "b", "c") and view.ndim == 1:
        return ctypes.addressof(ctypes.c_char.from_buffer(view))
    return _getbuffer_address(view)


def _getbuffer_address(view: memoryview) -> int:
    import ctypes

    class PyBuffer(ctypes.Structure):
        _fields_ = (
            ("buf", ctypes.c_void_p),
            ("obj", ctypes.c_void_p),
            ("len", ctypes.c_ssize_t),
            ("itemsize", ctypes.c_ssize_t),
            ("readonly", ctypes.c_int),
            ("ndim", ctypes.c_int),
            ("format", ctypes.c_char_p),
            ("shape", ctypes.c_void_p),
            ("strides", ctypes.c_void_p),
            ("suboffsets", ctypes.c_void_p),
            ("internal", ctypes.c_void_p),
        )

    api = ctypes.pythonapi
    buf = PyBuffer()
    pybuf_records_ro = 0x0010 | 0x0008 | 0x0004  # PyBUF_STRIDES | PyBUF_FORMAT
    if api.PyObject_GetBuffer(ctypes.py_object(view), ctypes.byref(buf), pybuf_records_ro) != 0:
        raise InvalidRegionError("cannot get the buffer's address")
    try:
        return int(buf.buf or 0)
    finally:
        api.PyBuffer_Release(ctypes.byref(buf))

"""Every kind of registration target, read back from the registered address.

Each test registers a real object and reads ``region.size`` bytes at ``region.address`` with
``ctypes.string_at``, exactly as a collector would copy them, and compares them with what the
object holds. Objects are checked against their CPython layout (type pointer, sizes, pointers
to out-of-line storage), so an address or size that is off fails.
"""

from __future__ import annotations

import array
import ctypes
import mmap
import struct
import sys
from pathlib import Path
from typing import Any

import pytest

from kmemdump import InvalidRegionError
from kmemdump import Region
from kmemdump import RegionKind
from kmemdump import Registry

WORD = struct.calcsize("P")


def _read(region: Region) -> bytes:
    return ctypes.string_at(region.address, region.size)


def _register(target: Any, size: int | None = None, **kw: Any) -> tuple[Registry, Region]:
    registry = Registry()
    rid = registry.register(target, size, **kw)
    return registry, registry.get(rid)


def _word(raw: bytes, offset: int) -> int:
    value: int = struct.unpack_from("=Q", raw, offset)[0]
    return value


# --- buffers ----------------------------------------------------------------------------------


def test_bytes() -> None:
    data = bytes(range(256)) * 3
    _, region = _register(data)
    assert (region.kind, region.size, region.type_name) == (RegionKind.BUFFER, len(data), "bytes")
    assert _read(region) == data


def test_bytearray_is_the_live_memory() -> None:
    buf = bytearray(b"kmemdump bytearray target")
    _, region = _register(buf)
    assert region.size == len(buf)
    assert _read(region) == buf
    buf[0:8] = b"KMEMDUMP"
    assert _read(region) == b"KMEMDUMP bytearray target"


def test_bytearray_prefix_with_size() -> None:
    buf = bytearray(b"0123456789")
    _, region = _register(buf, 4)
    assert _read(region) == b"0123"


def test_memoryview_whole_and_slice() -> None:
    buf = bytearray(bytes(range(64)))
    view = memoryview(buf)
    _, whole = _register(view)
    assert _read(whole) == bytes(range(64))
    _, part = _register(view[10:20])
    assert part.address == whole.address + 10
    assert _read(part) == bytes(range(10, 20))


def test_memoryview_read_only() -> None:
    buf = bytearray(b"read-only view of a writable buffer")
    _, region = _register(memoryview(buf).toreadonly()[5:14])
    assert _read(region) == b"only view"
    data = b"a bytes object seen through a view"
    _, region = _register(memoryview(data)[2:7])
    assert _read(region) == b"bytes"


def test_memoryview_of_other_format() -> None:
    values = array.array("H", range(32))
    view = memoryview(values)[4:8]
    _, region = _register(view)
    assert region.size == 8
    assert _read(region) == values[4:8].tobytes()


def test_mmap_anonymous_writable() -> None:
    with mmap.mmap(-1, mmap.PAGESIZE) as mem:
        mem[:11] = b"anon mapped"
        registry, region = _register(mem)
        assert region.size == mmap.PAGESIZE
        raw = _read(region)
        assert raw[:11] == b"anon mapped"
        assert raw[11:] == bytes(mmap.PAGESIZE - 11)
        with pytest.raises(BufferError):
            mem.close()  # pinned while registered: it cannot be unmapped under the collector
        registry.unregister(region.id)


def test_mmap_prot_read(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    payload = bytes(range(256)) * 32
    path.write_bytes(payload)
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, prot=mmap.PROT_READ) as mem:
        registry, region = _register(mem)
        assert _read(region) == payload
        registry.unregister(region.id)


def test_mmap_anonymous_prot_read() -> None:
    with mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ) as mem:
        registry, region = _register(mem)
        assert _read(region) == bytes(mmap.PAGESIZE)
        registry.unregister(region.id)


def test_closed_mmap_refused() -> None:
    mem = mmap.mmap(-1, mmap.PAGESIZE)
    mem.close()
    with pytest.raises(InvalidRegionError):
        Registry().register(mem)


def test_released_memoryview_refused() -> None:
    view = memoryview(bytearray(8))
    view.release()
    with pytest.raises(InvalidRegionError):
        Registry().register(view)


def test_array_array() -> None:
    values = array.array("i", [i * 7919 - 5000 for i in range(100)])
    _, region = _register(values)
    assert region.size == 100 * values.itemsize
    assert _read(region) == values.tobytes()


def test_array_array_is_pinned() -> None:
    values = array.array("d", [1.5, 2.5])
    registry, region = _register(values)
    with pytest.raises(BufferError):
        values.append(3.5)
    registry.unregister(region.id)
    values.append(3.5)


# --- ctypes -------------------------------------------------------------------------------------


def test_ctypes_int() -> None:
    value = ctypes.c_int(0x12345678)
    _, region = _register(value)
    assert (region.kind, region.address, region.size) == (RegionKind.CTYPES, ctypes.addressof(value), 4)
    assert _read(region) == struct.pack("=i", 0x12345678)
    value.value = -2
    assert _read(region) == struct.pack("=i", -2)


class _Point(ctypes.Structure):
    _fields_ = (("x", ctypes.c_int32), ("y", ctypes.c_double), ("tag", ctypes.c_char * 6))


def test_ctypes_structure() -> None:
    point = _Point(7, 2.5, b"north")
    _, region = _register(point)
    assert region.size == ctypes.sizeof(_Point)
    assert region.type_name == "_Point"
    assert _read(region) == bytes(point)
    raw = _read(region)
    assert struct.unpack_from("=i", raw, _Point.x.offset)[0] == 7
    assert struct.unpack_from("=d", raw, _Point.y.offset)[0] == 2.5


def test_ctypes_array_and_prefix() -> None:
    values = (ctypes.c_uint16 * 8)(*range(100, 108))
    _, region = _register(values)
    assert _read(region) == struct.pack("=8H", *range(100, 108))
    _, head = _register(values, 4)
    assert _read(head) == struct.pack("=2H", 100, 101)
    with pytest.raises(InvalidRegionError, match="larger"):
        Registry().register(values, 17)


def test_ctypes_string_buffer() -> None:
    buf = ctypes.create_string_buffer(b"from ctypes", 32)
    _, region = _register(buf)
    assert region.size == 32
    assert _read(region) == b"from ctypes" + bytes(21)


# --- a raw address and size ------------------------------------------------------------------------


def test_raw_address_and_size() -> None:
    buf = ctypes.create_string_buffer(b"raw address target", 64)
    address = ctypes.addressof(buf)
    registry, region = _register(address, 18, name="raw")
    assert (region.kind, region.address, region.size, region.name) == (RegionKind.ADDRESS, address, 18, "raw")
    assert region.type_name == ""
    assert _read(region) == b"raw address target"
    registry.unregister(region.id)


def test_raw_address_needs_size() -> None:
    with pytest.raises(InvalidRegionError, match="size="):
        Registry().register(id(object()))


@pytest.mark.parametrize(
    ("address", "size"),
    [
        (0x1000, 0),
        (0x1000, -4),
        (0, 16),
        (-4096, 16),
        (2**64, 1),
        (2**64 - 8, 9),
        (0x1000, "16"),
        (0x1000, 1.5),
    ],
    ids=[
        "size0",
        "negative-size",
        "address0",
        "negative-address",
        "beyond",
        "wraps",
        "str-size",
        "float-size",
    ],
)
def test_raw_address_out_of_range_refused(address: int, size: Any) -> None:
    registry = Registry()
    with pytest.raises(InvalidRegionError):
        registry.register(address, size)
    assert registry.regions() == ()


# --- numpy ----------------------------------------------------------------------------------------


def test_numpy_array() -> None:
    np = pytest.importorskip("numpy", reason="numpy is not installed (optional target kind)")
    values = np.arange(64, dtype=np.float64).reshape(8, 8)
    _, region = _register(values)
    assert region.address == values.ctypes.data
    assert region.size == values.nbytes
    assert _read(region) == values.tobytes()
    _, rows = _register(values[2:4])
    assert _read(rows) == values[2:4].tobytes()
    with pytest.raises(InvalidRegionError, match="contiguous"):
        Registry().register(values[:, 1])
    with pytest.raises(InvalidRegionError, match="contiguous"):
        Registry().register(values.T)


# --- whole Python objects ----------------------------------------------------------------------------


def _header(raw: bytes) -> tuple[int, int]:
    """(ob_refcnt, ob_type) of a CPython object header."""
    return _word(raw, 0), _word(raw, WORD)


def test_str_object() -> None:
    text = "".join(["kmemdump ", "ascii ", "text"])  # built at run time: no cached UTF-8 copy
    _, region = _register(text)
    assert (region.kind, region.address, region.type_name) == (RegionKind.OBJECT, id(text), "str")
    raw = _read(region)
    assert _header(raw)[1] == id(str)
    assert raw.endswith(text.encode("ascii") + b"\0")  # compact ASCII data follows the header
    assert region.size == text.__sizeof__()


def test_str_object_two_byte_kind() -> None:
    text = "".join(["ключ ", "значение"])
    _, region = _register(text)
    raw = _read(region)
    assert _header(raw)[1] == id(str)
    assert raw.endswith(text.encode("utf-16-le") + b"\0\0")


def _digits(n: int) -> list[int]:
    shift = sys.int_info.bits_per_digit
    out = []
    while n:
        out.append(n & ((1 << shift) - 1))
        n >>= shift
    return out


def test_int_object() -> None:
    number = 2**100 + 123456789
    registry = Registry()
    region = registry.get(registry.register_object(number))
    assert (region.address, region.kind, region.size) == (id(number), RegionKind.OBJECT, number.__sizeof__())
    raw = _read(region)
    assert _header(raw)[1] == id(int)
    digits = _digits(number)
    width = sys.int_info.sizeof_digit
    tail = raw[len(raw) - width * len(digits) :]
    assert list(struct.unpack(f"={len(digits)}I", tail)) == digits


def test_int_target_is_an_address_not_an_object() -> None:
    with pytest.raises(InvalidRegionError, match="register_object"):
        Registry().register(2**100)


def test_list_object_is_its_header_only() -> None:
    items = [object() for _ in range(5)]
    _, region = _register(items)
    assert region.size == list.__basicsize__  # the item array lives elsewhere
    raw = _read(region)
    assert _header(raw)[1] == id(list)
    assert _word(raw, 2 * WORD) == len(items)  # ob_size
    ob_item, allocated = _word(raw, 3 * WORD), _word(raw, 4 * WORD)
    assert allocated >= len(items)
    pointers = struct.unpack(f"={len(items)}Q", ctypes.string_at(ob_item, WORD * len(items)))
    assert list(pointers) == [id(x) for x in items]


def test_large_list_region_does_not_run_past_the_object() -> None:
    items = list(range(200_000))
    _, region = _register(items)
    assert items.__sizeof__() > 1_000_000
    assert region.size == list.__basicsize__


@pytest.mark.parametrize(
    "make",
    [lambda: {"a": 1}, lambda: {1, 2, 3}, lambda: frozenset("xyz" * 20)],
    ids=["dict", "set", "frozenset"],
)
def test_containers_with_out_of_line_storage_are_their_fixed_part(make: Any) -> None:
    obj = make()
    _, region = _register(obj)
    assert region.size == type(obj).__basicsize__
    assert _header(_read(region))[1] == id(type(obj))


class _Custom:
    def __init__(self) -> None:
        self.payload = "payload"


def test_generic_object() -> None:
    obj = _Custom()
    _, region = _register(obj, name="custom")
    assert (region.address, region.kind, region.type_name) == (id(obj), RegionKind.OBJECT, "_Custom")
    assert region.size == object.__sizeof__(obj)
    assert _header(_read(region))[1] == id(_Custom)


def test_tuple_object_holds_item_pointers() -> None:
    a, b = object(), object()
    pair = (a, b)
    _, region = _register(pair)
    raw = _read(region)
    assert region.size == pair.__sizeof__()
    assert _header(raw)[1] == id(tuple)
    assert raw[-2 * WORD :] == struct.pack("=2Q", id(a), id(b))


def test_object_with_lying_sizeof_refused() -> None:
    class Liar:
        def __sizeof__(self) -> int:
            return -5

    with pytest.raises(InvalidRegionError, match="size"):
        Registry().register(Liar())


def test_object_with_huge_sizeof_is_bounded() -> None:
    class Boaster:
        def __sizeof__(self) -> int:
            return 1 << 40

    obj = Boaster()
    _, region = _register(obj)
    assert region.size == object.__sizeof__(obj)


def test_class_object() -> None:
    _, region = _register(_Custom)
    assert region.address == id(_Custom)
    assert _header(_read(region))[1] == id(type)


# --- refusals --------------------------------------------------------------------------------------


def test_non_contiguous_buffer_refused() -> None:
    buf = bytearray(range(32))
    registry = Registry()
    with pytest.raises(InvalidRegionError, match="contiguous"):
        registry.register(memoryview(buf)[::2])
    with pytest.raises(InvalidRegionError, match="contiguous"):
        registry.register(memoryview(array.array("i", range(8)))[::-1])
    assert registry.regions() == ()
    buf.append(0)  # the refused view released its export


@pytest.mark.parametrize("size", [0, -1, 33, True, "8", 2.0], ids=repr)
def test_bad_buffer_size_refused(size: Any) -> None:
    buf = bytearray(32)
    registry = Registry()
    with pytest.raises(InvalidRegionError):
        registry.register(buf, size)
    assert registry.regions() == ()
    buf.append(0)


def test_empty_buffer_refused() -> None:
    with pytest.raises(InvalidRegionError, match="empty"):
        Registry().register(bytearray())
    with pytest.raises(InvalidRegionError, match="empty"):
        Registry().register(b"")


def test_object_size_too_large_refused() -> None:
    text = "short"
    with pytest.raises(InvalidRegionError, match="larger"):
        Registry().register(text, 10_000)


# --- a registered buffer cannot move ----------------------------------------------------------------


def test_registered_bytearray_cannot_be_resized_until_unregistered() -> None:
    buf = bytearray(b"pinned")
    registry = Registry()
    rid = registry.register(buf)
    with pytest.raises(BufferError):
        buf.extend(b" more")
    with pytest.raises(BufferError):
        del buf[0]
    buf[0:1] = b"P"  # same-size writes are fine
    registry.unregister(rid)
    buf.extend(b" free")
    assert buf == b"Pinned free"


def test_bytearray_resizable_again_after_free() -> None:
    from kmemdump.producer.alloc import free

    buf = bytearray(8)
    registry = Registry()
    registry.register(buf)
    registry.register(memoryview(buf)[2:4])
    with pytest.raises(BufferError):
        buf.append(1)
    free(registry, buf)
    assert registry.regions() == ()
    buf.append(1)

"""Decoding CPython objects from selected memory ranges, in-process and across interpreters.

In-process tests read this process's own memory, but only inside the ranges
``object_regions`` chose, so leaving a range out behaves like a dump that lacks it. The
cross-version tests run a producer script under every installed CPython (3.10 to 3.13), copy
the ranges out, and decode them here, under the venv's interpreter, from the copies alone.
"""

from __future__ import annotations

import bisect
import collections
import ctypes
import enum
import functools
import json
import math
import pickle
import struct
import subprocess
import sys
from base64 import b64decode
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from budget import examples
from kmemdump import record as records
from kmemdump.errors import DecodeError
from kmemdump.errors import InvalidRegionError
from kmemdump.errors import UnreadableMemoryError
from kmemdump.formats import pycoreinfo
from kmemdump.formats.pycoreinfo import PyCoreInfo
from kmemdump.inspect.cpython import Decoded
from kmemdump.inspect.cpython import Unresolved
from kmemdump.inspect.cpython import decode
from kmemdump.inspect.cpython import decode_buffer
from kmemdump.inspect.cpython import encode_value
from kmemdump.inspect.cpython import to_python
from kmemdump.producer.python import layout as layouts
from kmemdump.producer.python import live as pylive
from kmemdump.producer.python.objgraph import object_regions

SRC = Path(__file__).resolve().parents[1] / "src"
PYENV = Path("/root/.pyenv/versions")
INTERPRETERS = ("3.10.13", "3.11.7", "3.12.1", "3.13.0")


# --- memory sources ----------------------------------------------------------------------


def _merge(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


class _Ranges:
    """Answers "how many bytes from ``address`` on are covered" for a set of ranges."""

    def __init__(self, ranges: Iterable[tuple[int, int]]) -> None:
        self.spans = _merge((start, start + size) for start, size in ranges if size > 0)
        self.starts = [start for start, _ in self.spans]

    def readable(self, address: int, size: int) -> int:
        index = bisect.bisect_right(self.starts, address) - 1
        if index < 0:
            return 0
        start, end = self.spans[index]
        return max(0, min(end - address, size)) if address >= start else 0

    def check(self, address: int, size: int) -> None:
        readable = self.readable(address, size)
        if readable < size:
            raise UnreadableMemoryError(
                "not in the selected ranges", address=address, size=size, readable=readable
            )


class LiveRanges:
    """This process's memory through ``ctypes.string_at``, restricted to the given ranges."""

    def __init__(self, ranges: Iterable[tuple[int, int]]) -> None:
        self.ranges = _Ranges(ranges)

    def read(self, address: int, size: int) -> bytes:
        self.ranges.check(address, size)
        return ctypes.string_at(address, size)


class SnapshotMemory:
    """Bytes copied at known addresses (what a dump holds)."""

    def __init__(self, chunks: Iterable[tuple[int, bytes]]) -> None:
        self.chunks = dict(chunks)
        self.ranges = _Ranges((address, len(data)) for address, data in self.chunks.items())
        # copy overlapping chunks into one buffer per merged span
        self.buffers: dict[int, bytearray] = {
            start: bytearray(end - start) for start, end in self.ranges.spans
        }
        for address, data in sorted(self.chunks.items()):
            index = bisect.bisect_right(self.ranges.starts, address) - 1
            start = self.ranges.starts[index]
            self.buffers[start][address - start : address - start + len(data)] = data

    def read(self, address: int, size: int) -> bytes:
        self.ranges.check(address, size)
        start = self.ranges.starts[bisect.bisect_right(self.ranges.starts, address) - 1]
        return bytes(self.buffers[start][address - start : address - start + size])


def regions_of(*objects: Any, depth: int = 8) -> list[tuple[int, int]]:
    return [(address, size) for obj in objects for address, size, _, _ in object_regions(obj, depth)]


@pytest.fixture(scope="module")
def live() -> pylive.LiveInfo:
    result = pylive.probe()
    assert result.enabled, result.reason
    return result


@pytest.fixture(scope="module")
def info(live: pylive.LiveInfo) -> PyCoreInfo:
    extra = (Widget, StrChild, Colour, collections.OrderedDict, collections.defaultdict, object)
    live.add_types([*extra, Session, Inner, Slotted])
    found = live.info
    assert found is not None
    return found


def decode_live(obj: Any, info: PyCoreInfo, **limits: int) -> Decoded:
    return decode(LiveRanges(regions_of(obj)), id(obj), info, **limits)


# --- sample objects ----------------------------------------------------------------------


class Widget:
    def __init__(self) -> None:
        self.size = 3


class StrChild(str):
    pass


class Inner:
    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.numbers = (1, 2.5)


class Session:
    def __init__(self) -> None:
        self.user = "alice"
        self.n = 3
        self.inner = Inner("nested")
        self.items = [1, "two", None]
        self.meta = {"k": [True], "big": 2**80}


class Slotted:
    __slots__ = ("a", "b")

    def __init__(self) -> None:
        self.a = 1
        self.b = "two"


def expected_instance(obj: Any) -> Any:
    """What decoding an instance gives: reads ``__dict__``, so call it after decoding."""
    if type(obj) in (Session, Inner, Widget):
        attrs = {name: expected_instance(value) for name, value in vars(obj).items()}
        name = f"{__name__}.{type(obj).__qualname__}"
        return {"$object": f"0x{id(obj):x}", "type": name, "attrs": attrs}
    if isinstance(obj, dict):
        return {key: expected_instance(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [expected_instance(value) for value in obj]
    return encode_value(obj)


class Colour(enum.IntEnum):
    RED = 1
    BIG = 2**70


def _with_hole() -> dict[Any, Any]:
    mapping: dict[Any, Any] = {"a": 1, "gone": 2, 3: "c", "z": [None]}
    del mapping["gone"]
    return mapping


def _front_trimmed() -> bytearray:
    data = bytearray(b"xxpayload")
    del data[:2]
    return data


SAMPLES: dict[str, Any] = {
    "str-empty": "",
    "str-ascii": "kmemdump ascii",
    "str-latin1": "caf\xe9 \xff",
    "str-ucs2": "\u03a9 \u2211 \u4e2d\u6587 \ud800 lone surrogate",
    "str-ucs4": "\U0001f600 \U0010ffff astral",
    "str-subclass": StrChild("sub\u03a9class"),
    "bytes-empty": b"",
    "bytes": b"\x00\xffbinary\x00",
    "bytearray": bytearray(b"hello"),
    "bytearray-empty": bytearray(),
    "bytearray-trimmed": _front_trimmed(),
    "int-zero": 0,
    "int-small": 5,
    "int-negative": -5,
    "int-digit-edge": 2**30,
    "int-big": 2**1000 + 12345,
    "int-big-negative": -(3**500),
    "int-text-edge": 2**13000 - 1,  # the largest int given as a JSON number
    "int-huge": 10**5000 + 1,  # beyond Python's 4,300-digit str(): given in hex
    "int-huge-negative": -(7**9000),
    "int-enum": Colour.BIG,
    "bool-true": True,
    "bool-false": False,
    "none": None,
    "float": 1.5,
    "float-negative-zero": -0.0,
    "float-huge": 1e308,
    "float-inf": float("-inf"),
    "tuple-empty": (),
    "tuple": (1, "a", None, (2.5, b"x")),
    "list-empty": [],
    "list-nested": [1, [2, [3, [4, "deep"]]], {"k": (5,)}],
    "dict-empty": {},
    "dict-str": {"alpha": 1, "beta": [2, 3], "gamma": {"x": None}},
    "dict-general": {1: "one", (2, 3): [4], 2.5: b"f", "s": True},
    "dict-dollar-key": {"$tuple": 1},
    "dict-hole": _with_hole(),
    "dict-large": {f"k{i}": i for i in range(300)},
    "dict-int-large": dict.fromkeys(range(700)),
    "ordered-dict": collections.OrderedDict([("b", 2), ("a", 1)]),
    "defaultdict": collections.defaultdict(list, {"x": [1]}),
}


def plain(obj: Any) -> Any:
    """``obj`` with subclasses of builtins replaced by the builtins (what decoding yields)."""
    if obj is None or isinstance(obj, bool):
        return obj
    if isinstance(obj, str):
        return str.__str__(obj)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, (bytes, bytearray)):
        return type(obj)(obj)
    if isinstance(obj, tuple):
        return tuple(plain(item) for item in obj)
    if isinstance(obj, list):
        return [plain(item) for item in obj]
    if isinstance(obj, dict):
        return {plain(k): plain(v) for k, v in obj.items()}
    raise AssertionError(f"no plain form for {type(obj)}")


def same(decoded: Any, expected: Any) -> bool:
    """Equality that also tells -0.0 from 0.0 and True from 1."""
    if type(decoded) is not type(expected):
        return False
    if isinstance(expected, float):
        return decoded == expected and math.copysign(1, decoded) == math.copysign(1, expected)
    if isinstance(expected, (tuple, list)):
        return len(decoded) == len(expected) and all(
            same(a, b) for a, b in zip(decoded, expected, strict=True)
        )
    if isinstance(expected, dict):
        return list(decoded) == list(expected) and all(same(decoded[k], expected[k]) for k in expected)
    return bool(decoded == expected)


# --- in-process decoding -----------------------------------------------------------------


@pytest.mark.parametrize("name", list(SAMPLES))
def test_decodes_every_sample_exactly(name: str, info: PyCoreInfo) -> None:
    obj = SAMPLES[name]
    decoded = decode_live(obj, info)
    assert decoded.missing == ()
    assert decoded.complete
    assert same(to_python(decoded.value), plain(obj))
    assert decoded.value == encode_value(obj)
    json.dumps(decoded.value)  # JSON-able


def test_type_names_come_from_the_type_map(info: PyCoreInfo) -> None:
    assert decode_live("x", info).type_name == "str"
    assert decode_live(Colour.RED, info).type_name == f"{__name__}.Colour"
    assert decode_live(collections.OrderedDict(), info).type_name == "collections.OrderedDict"
    assert decode_live(None, info).type_name == "NoneType"
    assert decode_live(True, info).type_name == "bool"


def test_singletons_need_no_memory(info: PyCoreInfo) -> None:
    empty = LiveRanges([])
    for value in (None, True, False):
        decoded = decode(empty, id(value), info)
        assert decoded.value is value
        assert decoded.complete
    # as items they are recognised by address too: object_regions leaves them out
    items = [None, True, False]
    assert [label for _, _, label, _ in object_regions(items, 1)] == ["list", "list.ob_item"]
    assert decode_live(items, info).value == [None, True, False]


def test_object_of_unknown_type_is_named(info: PyCoreInfo) -> None:
    thing = object()
    decoded = decode_live([thing], info)
    assert decoded.value == [{"$object": f"0x{id(thing):x}", "type": "object"}]
    assert not decoded.complete
    assert "no decoder handles" in decoded.missing[0]


def test_type_object_decodes_to_its_name(info: PyCoreInfo) -> None:
    assert decode_live(int, info).value == {"$class": "int"}
    assert decode_live(Widget, info).value == {"$class": f"{__name__}.Widget"}


def test_type_outside_the_map_is_read_from_the_dump(live: pylive.LiveInfo) -> None:
    bare = live.info
    assert bare is not None
    info = records.replace(
        bare, types={k: v for k, v in bare.types.items() if v.name != "collections.Counter"}
    )
    counter = collections.Counter(a=2)
    # GIVEN the Counter type object and its tp_name are in the dump, but not in the type map
    with_type = LiveRanges(regions_of(counter, collections.Counter))
    # WHEN decoding THEN the name comes from tp_name and the dict decoder from tp_flags
    decoded = decode(with_type, id(counter), info)
    assert decoded.type_name == "Counter"
    assert decoded.value == {"a": 2}
    # and without the type object, the type is reported as unknown
    without = decode(LiveRanges(regions_of(counter)), id(counter), info)
    assert without.value == {
        "$object": f"0x{id(counter):x}",
        "type": f"<type at 0x{id(collections.Counter):x}>",
    }
    assert not without.complete


def test_missing_item_array_is_reported(info: PyCoreInfo) -> None:
    items = [1, "two", [3]]
    regions = object_regions(items, 4)
    kept = [(a, s) for a, s, label, _ in regions if label != "list.ob_item"]
    decoded = decode(LiveRanges(kept), id(items), info)
    assert not decoded.complete
    assert decoded.value == {"$missing": f"0x{id(items):x}", "reason": decoded.missing[0][3:]}
    assert decoded.missing[0].startswith("$: list at")
    assert "item array" in decoded.missing[0] and "not in dump (0 of 24 bytes readable)" in decoded.missing[0]


def test_missing_nested_item_keeps_the_rest(info: PyCoreInfo) -> None:
    inner = ["inner"]
    outer = [1, inner, {"k": "v"}]
    kept = [(a, s) for a, s in regions_of(outer) if a != id(inner)]
    decoded = decode(LiveRanges(kept), id(outer), info)
    assert decoded.value[0] == 1  # type: ignore[index]
    assert decoded.value[1]["$missing"] == f"0x{id(inner):x}"  # type: ignore[index, call-overload]
    assert decoded.value[2] == {"k": "v"}  # type: ignore[index]
    assert len(decoded.missing) == 1
    assert decoded.missing[0].startswith("$[1]: ")


def test_partial_range_reports_readable_bytes(info: PyCoreInfo) -> None:
    text = "a fairly long string " * 4
    decoded = decode(LiveRanges([(id(text), 50)]), id(text), info)
    assert not decoded.complete
    assert "of" in decoded.missing[0] and "readable" in decoded.missing[0]


def test_missing_dict_value_path_names_the_key(info: PyCoreInfo) -> None:
    value = [1, 2]
    mapping = {"key": value}
    kept = [(a, s) for a, s in regions_of(mapping) if a != id(value)]
    decoded = decode(LiveRanges(kept), id(mapping), info)
    assert decoded.missing[0].startswith("$['key']: ")


def test_cycles_are_marked(info: PyCoreInfo) -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    mapping: dict[str, Any] = {}
    mapping["self"] = mapping
    decoded = decode_live(loop, info)
    assert decoded.value == [1, {"$cycle": f"0x{id(loop):x}"}]
    assert decoded.complete
    assert decode_live(mapping, info).value == {"self": {"$cycle": f"0x{id(mapping):x}"}}
    assert to_python(decoded.value)[1] == Unresolved("cycle", id(loop))


def test_shared_items_are_not_cycles(info: PyCoreInfo) -> None:
    shared = [7]
    decoded = decode_live([shared, shared], info)
    assert decoded.value == [[7], [7]]


def test_depth_limit(info: PyCoreInfo) -> None:
    nested: list[Any] = ["bottom"]
    for _ in range(5):
        nested = [nested]
    decoded = decode_live(nested, info, max_depth=3)
    assert not decoded.complete
    assert "max_depth=3" in decoded.missing[0]
    assert decoded.missing[0].startswith("$[0][0][0][0]: ")
    assert decode_live(nested, info, max_depth=6).complete


def test_item_budget(info: PyCoreInfo) -> None:
    numbers = list(range(1000, 1100))
    decoded = decode_live(numbers, info, max_items=11)
    assert decoded.value == numbers[:10]
    assert not decoded.complete
    assert "10 of 100 items" in decoded.missing[0]


def test_byte_budget_truncates_strings(info: PyCoreInfo) -> None:
    text = "\u03a9" * 5000
    decoded = decode_live(text, info, max_bytes=1000)
    assert isinstance(decoded.value, str)
    assert text.startswith(decoded.value) and 0 < len(decoded.value) < 500
    assert "characters decoded (max_bytes)" in decoded.missing[0]


def test_split_dict_decodes_in_insertion_order(info: PyCoreInfo) -> None:
    if sys.version_info < (3, 11):
        pytest.skip("3.10 turns a split table into a combined one when an attribute is deleted")
    widget = Widget()
    widget.later = "x"
    del widget.size
    widget.size = 4  # now after "later": on 3.11+ the order lives beside the values, not in the keys
    attrs = widget.__dict__
    values = struct.unpack("=Q", ctypes.string_at(id(attrs) + info.layout.dict_ma_values, 8))[0]
    assert values  # a split table (shared keys, values apart)
    decoded = decode_live(attrs, info)
    assert decoded.missing == ()
    assert list(decoded.value.items()) == list(attrs.items())  # type: ignore[union-attr]


def test_split_dict_without_values_layout_is_reported(info: PyCoreInfo) -> None:
    # GIVEN a PYCOREINFO from a producer that predates the values layouts
    attrs = Widget().__dict__
    old = records.replace(info, layout=layouts.without_instances(info.layout))
    decoded = decode(LiveRanges(regions_of(attrs)), id(attrs), old)
    if info.layout.dict_keys_layout == "dk_size":  # 3.10 split tables needed no new field
        assert decoded.value == {"size": 3}
    else:
        assert "split-table" in decoded.missing[0] and not decoded.complete


# --- instances of Python classes ----------------------------------------------------------


def _session(materialize: bool) -> Session:
    session = Session()
    session.late = "added later"
    del session.n
    session.n = 4  # deleted and set again: now last in insertion order
    if materialize:
        session.__dict__  # noqa: B018 - creates the dict on 3.11+ (it always exists on 3.10)
    return session


@pytest.mark.parametrize("materialize", [False, True], ids=["values", "dict"])
def test_instance_decodes_to_its_attributes(materialize: bool, info: PyCoreInfo) -> None:
    session = _session(materialize)
    decoded = decode_live(session, info)
    assert decoded.missing == ()
    assert decoded.type_name == f"{__name__}.Session"
    assert decoded.value == expected_instance(session)
    assert list(decoded.value["attrs"]) == ["user", "inner", "items", "meta", "late", "n"]  # type: ignore[index, call-overload]
    json.dumps(decoded.value)
    python = to_python(decoded.value)
    assert python == Unresolved("object", id(session), f"{__name__}.Session")
    assert python.attrs["inner"].attrs == {"tag": "nested", "numbers": (1, 2.5)}


def test_instance_cycle_is_marked(info: PyCoreInfo) -> None:
    node = Inner("loop")
    node.me = node  # type: ignore[attr-defined]
    decoded = decode_live(node, info)
    assert decoded.complete
    assert decoded.value["attrs"]["me"] == {"$cycle": f"0x{id(node):x}"}  # type: ignore[index, call-overload]


def test_instance_ranges_are_all_needed(info: PyCoreInfo) -> None:
    for materialize in (False, True):
        # GIVEN the ranges of an instance, its attribute names and values
        widget = Widget()
        widget.name = "w"  # type: ignore[attr-defined]
        if materialize:
            widget.__dict__  # noqa: B018
        regions = [(a, s) for a, s, _, _ in object_regions(widget, 1)]
        assert regions[0] == (id(widget), object.__sizeof__(widget))
        complete = decode(LiveRanges(regions), id(widget), info)
        assert complete.missing == ()
        assert complete.value["attrs"] == {"size": 3, "name": "w"}  # type: ignore[index, call-overload]
        # WHEN any one of them is left out THEN decoding reports something missing
        for index in range(1, len(regions)):
            kept = regions[:index] + regions[index + 1 :]
            decoded = decode(LiveRanges(kept), id(widget), info)
            assert not decoded.complete, (materialize, index)


def test_instance_ranges_per_version(info: PyCoreInfo) -> None:
    session = Session()
    labels = [label for _, _, label, _ in object_regions(session, 0)]
    style = info.layout.instance_dict
    # 3.10: the instance dict shares its class's keys (values apart) until the class's instances
    # disagree on their attributes, which earlier tests in this process may have made them do
    split = (
        style == "dictoffset"
        and struct.unpack("=Q", ctypes.string_at(id(session.__dict__) + info.layout.dict_ma_values, 8))[0]
    )
    want = {
        "dictoffset": ["object", "type.tp_dictoffset", "dict", "dict.ma_keys"]
        + (["dict.ma_values"] if split else []),
        "managed": ["object", "object.preheader", "type.ht_cached_keys", "type.cached_keys", "object.values"],
        "tagged": ["object", "object.preheader", "type.ht_cached_keys", "type.cached_keys", "object.values"],
        "inline": [
            "object",
            "object.preheader",
            "type.tp_basicsize",
            "type.ht_cached_keys",
            "type.cached_keys",
            "object.values",
        ],
    }
    assert labels == want[style]
    # the class's ranges are listed once however many instances share them
    pair = [Session(), Session()]
    ranges = [(a, s) for a, s, _, _ in object_regions(pair, 1)]
    assert len(ranges) == len(set(ranges))


def test_instance_without_dict_is_reported(info: PyCoreInfo) -> None:
    slotted = Slotted()
    decoded = decode_live(slotted, info)
    assert decoded.value == {"$object": f"0x{id(slotted):x}", "type": f"{__name__}.Slotted"}
    assert not decoded.complete
    assert "no __dict__ (__slots__?)" in decoded.missing[0]


def test_instance_with_missing_storage_is_reported_not_raised(info: PyCoreInfo) -> None:
    session = _session(False)
    only_object = decode(LiveRanges([(id(session), object.__sizeof__(session))]), id(session), info)
    assert only_object.value["attrs"]["$missing"] == f"0x{id(session):x}"  # type: ignore[index, call-overload]
    assert "not in dump" in only_object.missing[0]
    old = records.replace(info, layout=layouts.without_instances(info.layout))
    decoded = decode(LiveRanges(regions_of(session)), id(session), old)
    assert decoded.value == {"$object": f"0x{id(session):x}", "type": f"{__name__}.Session"}
    assert "no decoder handles" in decoded.missing[0]


def test_bad_arguments_raise_decode_error(info: PyCoreInfo) -> None:
    mem = LiveRanges([])
    with pytest.raises(DecodeError, match="max_depth"):
        decode(mem, 1, info, max_depth=-1)
    with pytest.raises(DecodeError, match="max_depth"):
        decode(mem, 1, info, max_depth=10_000)
    with pytest.raises(DecodeError, match="max_items"):
        decode(mem, 1, info, max_items=True)
    with pytest.raises(DecodeError, match="64-bit"):
        decode(mem, 1, records.replace(info, pointer_size=4))


def test_null_and_impossible_addresses_are_missing(info: PyCoreInfo) -> None:
    mem = LiveRanges([])
    for address in (0, -8, 2**64 - 4):
        decoded = decode(mem, address, info)
        assert not decoded.complete
        assert decoded.value["$missing"] == f"0x{address:x}"  # type: ignore[index, call-overload]


def test_to_python_round_trips_markers() -> None:
    assert to_python({"$dict": [[{"$tuple": [1]}, {"$bytes": "00"}]]}) == {(1,): b"\x00"}
    assert to_python({"$bytearray": "6869"}) == bytearray(b"hi")
    missing = to_python({"$missing": "0x10", "reason": "gone"})
    assert missing == Unresolved("missing", 16, "gone")
    assert to_python({"$dict": [[[1], 2]]}) == {Unresolved("unhashable", 0, "[1]"): 2}


# --- plain buffers -----------------------------------------------------------------------


def test_decode_buffer_text_and_binary() -> None:
    text = decode_buffer(b"hello, world\n\0\0\0")
    assert text == {
        "size": 16,
        "hex": b"hello, world\n\0\0\0".hex(),
        "truncated": False,
        "text": "hello, world\n",
    }
    binary = decode_buffer(bytes(range(256)) * 2)
    assert binary["text"] is None
    assert binary["truncated"] is True
    assert binary["hex"] == bytes(range(256)).hex()
    assert decode_buffer(b"\0" * 8)["text"] is None
    assert decode_buffer("h\xe9llo".encode())["text"] == "h\xe9llo"


# --- object_regions ------------------------------------------------------------------------


def test_object_regions_cover_out_of_line_storage(info: PyCoreInfo) -> None:
    lay = info.layout
    items = [1, 2, 3]
    items.append(4)
    regions = {label: (address, size) for address, size, label, _ in object_regions(items)}
    allocated = struct.unpack("=q", ctypes.string_at(id(items) + lay.list_allocated, 8))[0]
    assert regions["list"] == (id(items), list.__basicsize__)
    assert regions["list.ob_item"][1] == allocated * 8
    mapping = {"a": 1, "b": 2}
    regions = {label: (address, size) for address, size, label, _ in object_regions(mapping)}
    assert regions["dict"] == (id(mapping), dict.__basicsize__)
    assert regions["dict.ma_keys"][1] == mapping.__sizeof__() - dict.__basicsize__
    data = bytearray(b"abc")
    regions = {label: (address, size) for address, size, label, _ in object_regions(data)}
    assert regions["bytearray.ob_bytes"][1] == data.__sizeof__() - bytearray.__basicsize__


def test_object_regions_depth_and_dedup() -> None:
    shared = "shared-string"
    graph = [shared, [shared, (shared,)]]
    top = object_regions(graph, 0)
    assert [label for _, _, label, _ in top] == ["list", "list.ob_item"]
    deep = object_regions(graph, 3)
    addresses = [address for address, _, _, _ in deep]
    assert len(addresses) == len(set(addresses))
    assert addresses.count(id(shared)) == 1
    assert {label for _, _, label, _ in deep} == {"list", "list.ob_item", "str", "tuple"}


def test_object_regions_rejects_bad_depth_and_limit() -> None:
    with pytest.raises(InvalidRegionError):
        object_regions([], -1)
    with pytest.raises(InvalidRegionError):
        object_regions([], True)
    with pytest.raises(InvalidRegionError, match="limit"):
        object_regions(list(range(1000, 1100)), 1, limit=10)


def test_str_region_excludes_a_cached_utf8_copy() -> None:
    text = "".join(["caf", "\xe9", "!"])
    text.encode("utf-8")  # may cache a UTF-8 copy outside the object
    ((_, size, _, _),) = object_regions(text)
    assert size <= str.__sizeof__(text)
    assert size == 72 - (16 if sys.version_info >= (3, 12) else 0) + len(text) + 1


# --- random memory -------------------------------------------------------------------------


BLOCK = 0x1000
BASE = 0x7F0000000000
# str states (kind 1/2/4, compact, ascii) and int tags (sign, digit count) seen in real objects
SMALL_WORDS = (0x64, 0xE4, 0x24, 0x28, 0x30, 0xA8, 0xB0, 0x20, 0x1, 0x8, 0xA, 0x10, 0x12)


# one interpreter version per distinct table layout: 3.10, 3.11, 3.12, 3.13
LAYOUT_VERSIONS = {layout: version for version, layout in reversed(list(layouts.TABLE.items()))}


@functools.cache
def _info_with_layout(version: tuple[int, int]) -> PyCoreInfo:
    found = pylive.default().info
    assert found is not None
    return records.replace(found, layout=layouts.TABLE[version])


@pytest.mark.parametrize(
    "version", [pytest.param(v, id=f"layout={v[0]}.{v[1]}") for v in LAYOUT_VERSIONS.values()]
)
@settings(max_examples=examples(200), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_memory_never_crashes(version: tuple[int, int], data: st.DataObject) -> None:
    info = _info_with_layout(version)
    type_addresses = sorted(info.types)
    count = data.draw(st.integers(1, 6), label="blocks")
    blocks = []
    for index in range(count):
        raw = bytearray(data.draw(st.binary(min_size=64, max_size=256), label=f"block{index}"))
        # make most blocks look like objects of a type the decoders know
        type_address = data.draw(st.sampled_from([*type_addresses, 0, BASE + 8]), label="type")
        raw[info.layout.ob_type : info.layout.ob_type + 8] = type_address.to_bytes(8, "little")
        blocks.append(raw)
    for _ in range(data.draw(st.integers(0, 12), label="pointers")):
        source = data.draw(st.integers(0, count - 1))
        offset = data.draw(st.integers(16, len(blocks[source]) - 8)) // 8 * 8
        target = BASE + BLOCK * data.draw(st.integers(0, count - 1)) + data.draw(st.sampled_from([0, 0, 24]))
        blocks[source][offset : offset + 8] = target.to_bytes(8, "little")
    # Header words (sizes, tags, str states, pointers) in the plausible range, so that decoders
    # get past their headers and follow pointers into the other blocks.
    pointers = st.builds(
        lambda i, o: BASE + BLOCK * i + o, st.integers(0, count - 1), st.sampled_from([0, 24, 40])
    )
    small = st.sampled_from(SMALL_WORDS) | st.integers(0, 12)
    plausible = st.one_of(small, small, pointers, pointers, st.integers(0, 2**64 - 1))
    for raw in blocks:
        words = data.draw(st.lists(plausible, min_size=4, max_size=4), label="header")
        for index, word in enumerate(words):
            raw[16 + 8 * index : 24 + 8 * index] = word.to_bytes(8, "little")
    memory = SnapshotMemory((BASE + BLOCK * i, bytes(raw)) for i, raw in enumerate(blocks))
    try:
        result = decode(memory, BASE, info, max_depth=8, max_items=64, max_bytes=1 << 16)
    except (DecodeError, UnreadableMemoryError):
        return
    assert isinstance(result, Decoded)
    assert result.complete == (not result.missing)
    json.dumps(result.value)


@functools.cache
def _real_snapshot() -> tuple[int, tuple[tuple[int, bytes], ...]]:
    composite = list(SAMPLES.values())
    _KEEP.append(composite)
    chunks = {
        address: ctypes.string_at(address, size) for address, size, _, _ in object_regions(composite, 8)
    }
    return id(composite), tuple(sorted(chunks.items()))


_KEEP: list[Any] = []


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_corrupted_real_objects_never_crash(data: st.DataObject) -> None:
    # GIVEN a copy of real objects of every kind, with a few words overwritten
    root, chunks = _real_snapshot()
    blocks = [bytearray(raw) for _, raw in chunks]
    addresses = [address for address, _ in chunks]
    for _ in range(data.draw(st.integers(1, 8), label="mutations")):
        index = data.draw(st.integers(0, len(blocks) - 1), label="chunk")
        offset = data.draw(st.integers(0, max(0, len(blocks[index]) - 8)), label="offset")
        word = data.draw(
            st.sampled_from(SMALL_WORDS)
            | st.integers(0, 2**64 - 1)
            | st.sampled_from(addresses)
            | st.just(2**63 - 1),
            label="word",
        )
        size = min(8, len(blocks[index]) - offset)
        blocks[index][offset : offset + size] = word.to_bytes(8, "little")[:size]
    memory = SnapshotMemory(zip(addresses, map(bytes, blocks), strict=True))
    info = pylive.default().info
    assert info is not None
    # WHEN decoding THEN it returns (with what went wrong in missing) or raises a typed error
    try:
        result = decode(memory, root, info, max_items=2000, max_bytes=1 << 20)
    except (DecodeError, UnreadableMemoryError):
        return
    assert result.complete == (not result.missing)
    json.dumps(result.value)


# --- across interpreters -------------------------------------------------------------------

PRODUCER = r"""
import base64, collections, ctypes, enum, json, pickle, sys
sys.path.insert(0, sys.argv[1])
from kmemdump.producer.python import layout as layouts
from kmemdump.producer.python import live as pylive
from kmemdump.producer.python import selftest
from kmemdump.producer.python.objgraph import object_regions

assert "kmemdump.inspect" not in sys.modules

class Widget:
    pass

class Colour(enum.IntEnum):
    BIG = -(2**90)

class Text(str):
    pass

def hole():
    d = {"a": 1, "gone": 2, 3: "c"}
    del d["gone"]
    return d

def trimmed():
    b = bytearray(b"--payload")
    del b[:2]
    return b

loop = [1, "x"]
loop.append(loop)
values = {
    "str-ascii": "plain ascii", "str-latin1": "caf\xe9 \xff", "str-ucs2": "\u03a9\u2211 \ud800",
    "str-ucs4": "\U0001f600\U0010ffff", "str-empty": "", "str-subclass": Text("t\xe9xt"),
    "bytes": b"\x00\xff\x01", "bytes-empty": b"", "bytearray": bytearray(b"mutable"),
    "bytearray-trimmed": trimmed(), "bytearray-empty": bytearray(),
    "ints": [0, 1, -1, 5, -5, 2**30 - 1, 2**30, 2**40, -(2**70), 2**1000 + 7, -(3**400)],
    "int-enum": Colour.BIG, "bools": [True, False, None],
    "floats": [0.0, -0.0, 1.5, -2.25, 1e300, float("inf"), float("-inf"), 5e-324],
    "tuple": (1, ("nested", (2.5,)), None), "tuple-empty": (),
    "list": [1, [2, [3, [4, ["deep"]]]], "s", b"b"], "list-empty": [],
    "dict-str": {"alpha": 1, "beta": [2, {"gamma": (3,)}]},
    "dict-general": {1: "one", (2, 3): [4], 2.5: None},
    "dict-hole": hole(), "dict-empty": {}, "dict-big": {i: str(i) for i in range(1500)},
    "ordered": collections.OrderedDict([("z", 1), ("a", 2)]),
}
widget = Widget()
widget.size = 3
widget.name = "w"
specials = {"nan": float("nan"), "widget": widget, "type": int, "loop": loop, "attrs": widget.__dict__}

class Inner:
    def __init__(self, tag):
        self.tag = tag
        self.numbers = (1, 2.5)

class Session:
    def __init__(self):
        self.user = "alice"
        self.n = 3
        self.inner = Inner("nested")
        self.items = [1, "two", None]
        self.meta = {"k": [True], "big": 2**80}

class Slotted:
    __slots__ = ("a",)
    def __init__(self):
        self.a = 1

session = Session()
session.late = "x"
del session.n
session.n = 4
opened = Session()
opened.__dict__
node = Inner("loop")
node.me = node
instances = {"session": session, "opened": opened, "node": node}
specials.update(instances, slotted=Slotted())

live = pylive.probe()
if not live.enabled:
    raise SystemExit("disabled: " + live.reason)
everything = {**values, **specials}
live.add_types({type(v) for v in everything.values()})
chunks, objects = {}, []
for name, obj in everything.items():
    for address, size, label, keep in object_regions(obj, depth=8):
        chunks[address] = ctypes.string_at(address, size)
    objects.append({"name": name, "address": id(obj), "type": pylive.type_entry(type(obj)).name})

def plain(o):
    if o is None or type(o) in (bool, int, float, str, bytes, bytearray):
        return o
    for base in (bool, str, int, float):
        if isinstance(o, base):
            return base(o) if base is not str else str.__str__(o)
    if isinstance(o, tuple):
        return tuple(plain(i) for i in o)
    if isinstance(o, list):
        return [plain(i) for i in o]
    if isinstance(o, dict):
        return {plain(k): plain(v) for k, v in o.items()}
    raise TypeError(type(o))

def expect(o, active=()):  # after the copy: vars() creates the dict 3.11+ had avoided
    if type(o) in (Session, Inner, Widget):
        if id(o) in active:
            return {"$cycle": "0x%x" % id(o)}
        attrs = {k: expect(v, active + (id(o),)) for k, v in vars(o).items()}
        return {"$object": "0x%x" % id(o), "type": "__main__." + type(o).__qualname__, "attrs": attrs}
    if isinstance(o, dict):
        return {k: expect(v, active) for k, v in o.items()}
    if isinstance(o, list):
        return [expect(v, active) for v in o]
    if isinstance(o, tuple):
        return {"$tuple": [expect(v, active) for v in o]}
    return o

json.dump({
    "instances": {name: expect(obj) for name, obj in {**instances, "widget": widget}.items()},
    "version": list(sys.version_info[:2]),
    "blob": live.encode().hex(),
    "chunks": [[address, data.hex()] for address, data in chunks.items()],
    "objects": objects,
    "expected": base64.b64encode(pickle.dumps({k: plain(v) for k, v in values.items()}, protocol=4)).decode(),
    "extra": {"widget_type": id(Widget)},
}, open(sys.argv[2], "w"))
"""


def _interpreters() -> list[Any]:
    params = []
    for version in INTERPRETERS:
        path = PYENV / version / "bin" / "python"
        short = ".".join(version.split(".")[:2])
        marks = [] if path.exists() else [pytest.mark.skip(reason=f"{path} is not installed")]
        params.append(pytest.param(path, id=f"python={short}", marks=marks))
    return params


@pytest.mark.parametrize("python", _interpreters())
def test_decodes_objects_from_another_interpreter(python: Path, tmp_path: Path) -> None:
    # GIVEN a producer under that interpreter that copied out exactly object_regions' ranges
    script = tmp_path / "producer.py"
    script.write_text(PRODUCER)
    out = tmp_path / "capture.json"
    done = subprocess.run(
        [str(python), "-I", str(script), str(SRC), str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    capture = json.loads(out.read_text())
    info = pycoreinfo.decode(bytes.fromhex(capture["blob"]))
    memory = SnapshotMemory((address, bytes.fromhex(data)) for address, data in capture["chunks"])
    expected = pickle.loads(b64decode(capture["expected"]))
    objects = {entry["name"]: entry for entry in capture["objects"]}
    assert tuple(capture["version"]) == info.version[:2]
    assert info.source == ("debug_offsets" if info.version[:2] >= (3, 13) else "table")

    # WHEN each object is decoded from the copies alone THEN it equals the original
    for name, value in expected.items():
        entry = objects[name]
        decoded = decode(memory, entry["address"], info, max_items=100_000)
        assert decoded.missing == (), name
        assert decoded.type_name == entry["type"], name
        assert same(to_python(decoded.value), value), name
        assert decoded.value == encode_value(value), name

    nan = decode(memory, objects["nan"]["address"], info).value
    assert isinstance(nan, float) and math.isnan(nan)
    assert decode(memory, objects["type"]["address"], info).value == {"$class": "int"}
    attrs = decode(memory, objects["attrs"]["address"], info)
    assert (attrs.value, attrs.complete) == ({"size": 3, "name": "w"}, True)  # a split table
    # instances (attribute values, a materialized __dict__, a cycle) decode to their attributes
    for name, want in capture["instances"].items():
        decoded = decode(memory, objects[name]["address"], info)
        assert decoded.missing == (), name
        assert decoded.value == want, name
    assert list(capture["instances"]["session"]["attrs"])[-2:] == ["late", "n"]
    slotted = decode(memory, objects["slotted"]["address"], info)
    assert "no __dict__" in slotted.missing[0] and "attrs" not in slotted.value  # type: ignore[operator]
    # a blob without the instance fields (an older producer) reports them, and decodes the rest
    old = records.replace(info, layout=layouts.without_instances(info.layout))
    session = decode(memory, objects["session"]["address"], old)
    assert session.value == {"$object": f"0x{objects['session']['address']:x}", "type": "__main__.Session"}
    assert "no decoder handles" in session.missing[0]
    loop = objects["loop"]["address"]
    assert decode(memory, loop, info).value == [1, "x", {"$cycle": f"0x{loop:x}"}]

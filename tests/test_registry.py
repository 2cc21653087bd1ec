"""The registry's kernel outcomes: IDs, NO_ID, duplicates, a full table, unregister, replace.

Mirrors ``kmemdump_register_id()`` / ``kmemdump_unregister()`` of the kernel series (see
``shared/reference/kernel-kmemdump.md`` §2) and the seed's "API" and "Data structures" sections.
Each test drives a private :class:`Registry`; the process-wide one is left alone.
"""

from __future__ import annotations

import ctypes
import gc

import pytest

from kmemdump import ID
from kmemdump import NO_ID
from kmemdump import InvalidRegionError
from kmemdump import Region
from kmemdump import RegionExistsError
from kmemdump import RegionKind
from kmemdump import Registry
from kmemdump import RegistryFullError
from kmemdump import UnknownRegionError
from kmemdump.formats.kinds import NAME_MAX
from kmemdump.ids import DYNAMIC_START
from kmemdump.ids import MAX_ID
from kmemdump.producer.registry import DEFAULT_CAPACITY
from kmemdump.producer.registry import MAX_CAPACITY
from test_backends import RecordingBackend


def _snapshot(registry: Registry) -> tuple[Region, ...]:
    return registry.regions()


# --- register returns an ID: the requested one, or a new one for NO_ID ---------------------------


def test_register_returns_requested_id() -> None:
    registry = Registry()
    assert registry.register(bytearray(8), id=ID.USER_START) == ID.USER_START
    assert registry.register(bytearray(8), id=ID.USER_END) == ID.USER_END
    assert registry.register(bytearray(8), id=ID.BANNER) == ID.BANNER
    assert registry.register(bytearray(8), id=MAX_ID) == MAX_ID
    assert [r.id for r in registry.regions()] == [ID.BANNER, ID.USER_START, ID.USER_END, MAX_ID]


def test_no_id_allocates_from_dynamic_start_upwards() -> None:
    registry = Registry()
    ids = [registry.register(bytearray(8)) for _ in range(5)]
    assert ids == list(range(DYNAMIC_START, DYNAMIC_START + 5))
    assert DYNAMIC_START > ID.USER_END  # above every named ID and the application band
    assert registry.register(bytearray(8), id=NO_ID) == DYNAMIC_START + 5


def test_no_id_gets_lowest_free_dynamic_id_after_unregister() -> None:
    registry = Registry()
    ids = [registry.register(bytearray(8)) for _ in range(6)]
    registry.unregister(ids[4])
    registry.unregister(ids[1])
    registry.unregister(ids[2])
    assert registry.register(bytearray(8)) == ids[1]
    assert registry.register(bytearray(8)) == ids[2]
    assert registry.register(bytearray(8)) == ids[4]
    assert registry.register(bytearray(8)) == ids[5] + 1


def test_no_id_skips_dynamic_ids_taken_explicitly() -> None:
    registry = Registry()
    registry.register(bytearray(8), id=DYNAMIC_START)
    registry.register(bytearray(8), id=DYNAMIC_START + 2)
    assert registry.register(bytearray(8)) == DYNAMIC_START + 1
    assert registry.register(bytearray(8)) == DYNAMIC_START + 3
    registry.unregister(DYNAMIC_START + 2)
    assert registry.register(bytearray(8)) == DYNAMIC_START + 2


def test_no_id_does_not_reuse_a_freed_id_taken_explicitly_meanwhile() -> None:
    registry = Registry()
    first = registry.register(bytearray(8))
    registry.register(bytearray(8))
    registry.unregister(first)
    registry.register(bytearray(8), id=first)  # explicit claim of the freed dynamic ID
    new = registry.register(bytearray(8))
    assert new not in (first, first + 1)
    assert len({r.id for r in registry.regions()}) == 3


def test_explicit_user_band_ids_are_never_allocated_for_no_id() -> None:
    registry = Registry(capacity=300)
    ids = [registry.register(bytearray(1)) for _ in range(300)]
    assert min(ids) == DYNAMIC_START
    assert not any(ID.BANNER <= rid <= ID.USER_END for rid in ids)


# --- invalid IDs: the kernel's -EINVAL -----------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [0, -2, -1024, MAX_ID + 1, 2**64, True, False, 1.0, -1.0, "16", None],
    ids=repr,
)
def test_invalid_id_refused_and_table_unchanged(bad: object) -> None:
    registry = Registry()
    backend = RecordingBackend()
    registry.backend_register(backend)
    registry.register(bytearray(8), id=ID.USER_START)
    before = _snapshot(registry)
    buf = bytearray(8)

    with pytest.raises(InvalidRegionError):
        registry.register(buf, id=bad)  # type: ignore[arg-type]

    assert _snapshot(registry) == before
    assert backend.calls() == [("register", ID.USER_START)]
    buf.append(1)  # the refused buffer is not pinned
    assert registry.register(bytearray(8)) == DYNAMIC_START  # no dynamic ID was consumed


def test_invalid_region_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="ID"):
        Registry().register(bytearray(1), id=0)


# --- a second registration with the same ID: the kernel's -EALREADY -------------------------------


def test_second_registration_same_id_refused() -> None:
    registry = Registry()
    backend = RecordingBackend()
    registry.backend_register(backend)
    first = bytearray(b"first")
    registry.register(first, id=ID.USER_START)
    before = _snapshot(registry)
    second = bytearray(b"second")

    with pytest.raises(RegionExistsError) as info:
        registry.register(second, id=ID.USER_START)

    assert info.value.context == {"id": ID.USER_START}
    assert "unregister" in RegionExistsError.help.lower()
    assert _snapshot(registry) == before
    assert registry.get(ID.USER_START).address == ctypes.addressof(ctypes.c_char.from_buffer(first))
    assert backend.calls() == [("register", ID.USER_START)]
    second.extend(b"!")  # the refused buffer is not pinned, even while the traceback lives


def test_reregistration_allowed_after_unregister() -> None:
    registry = Registry()
    registry.register(bytearray(8), id=ID.USER_START)
    registry.unregister(ID.USER_START)
    data = bytearray(b"again")
    assert registry.register(data, id=ID.USER_START) == ID.USER_START
    assert registry.get(ID.USER_START).size == 5


def test_duplicate_dynamic_id_refused() -> None:
    registry = Registry()
    rid = registry.register(bytearray(8))
    with pytest.raises(RegionExistsError):
        registry.register(bytearray(8), id=rid)


# --- the fixed-size table: the kernel's -ENOSPC ----------------------------------------------------


def test_default_capacity_is_kernel_max_zones() -> None:
    registry = Registry()
    assert registry.capacity == DEFAULT_CAPACITY == 201
    for _ in range(201):
        registry.register(bytearray(1))
    with pytest.raises(RegistryFullError):
        registry.register(bytearray(1))


@pytest.mark.parametrize("wanted", [NO_ID, ID.USER_START], ids=["NO_ID", "explicit"])
def test_full_registry_refuses_and_table_unchanged(wanted: int) -> None:
    registry = Registry(capacity=3)
    backend = RecordingBackend()
    registry.backend_register(backend)
    ids = [registry.register(bytearray(4)) for _ in range(3)]
    before = _snapshot(registry)
    calls = backend.calls()
    buf = bytearray(4)

    with pytest.raises(RegistryFullError) as info:
        registry.register(buf, id=wanted)

    assert info.value.context == {"capacity": 3}
    assert _snapshot(registry) == before
    assert backend.calls() == calls  # the backend never saw the request
    buf.append(0)  # not pinned
    # the refused request consumed no ID: the next free slot gets the lowest free dynamic ID
    registry.unregister(ids[0])
    assert registry.register(bytearray(4)) == ids[0]


def test_len_and_capacity() -> None:
    registry = Registry(capacity=5)
    assert (len(registry), registry.capacity) == (0, 5)
    rid = registry.register(bytearray(1))
    assert len(registry) == 1
    registry.unregister(rid)
    assert len(registry) == 0


@pytest.mark.parametrize("bad", [0, -1, MAX_CAPACITY + 1, True, 2.0], ids=repr)
def test_invalid_capacity_refused(bad: object) -> None:
    with pytest.raises(InvalidRegionError):
        Registry(capacity=bad)  # type: ignore[arg-type]


def test_set_capacity_only_while_empty_with_noop_backend() -> None:
    registry = Registry()
    registry.set_capacity(7)
    assert registry.capacity == 7
    rid = registry.register(bytearray(1))
    with pytest.raises(InvalidRegionError, match="capacity"):
        registry.set_capacity(9)
    registry.set_capacity(7)  # the same capacity is fine
    registry.unregister(rid)
    registry.backend_register(RecordingBackend())
    with pytest.raises(InvalidRegionError, match="capacity"):
        registry.set_capacity(9)
    assert registry.capacity == 7


# --- unregister ------------------------------------------------------------------------------


def test_unregister_unknown_id_raises() -> None:
    registry = Registry()
    backend = RecordingBackend()
    registry.backend_register(backend)
    rid = registry.register(bytearray(1))
    with pytest.raises(UnknownRegionError) as info:
        registry.unregister(rid + 1)
    assert isinstance(info.value, KeyError)
    assert str(info.value) == f"no region with this ID (id={rid + 1})"
    registry.unregister(rid)
    with pytest.raises(UnknownRegionError):
        registry.unregister(rid)  # twice
    with pytest.raises(UnknownRegionError):
        registry.unregister(0)
    assert backend.calls() == [("register", rid), ("unregister", rid)]


def test_unregister_takes_the_id() -> None:
    registry = Registry()
    keep = registry.register(bytearray(1), id=ID.USER_START)
    drop = registry.register(bytearray(2))
    registry.unregister(drop)
    assert [r.id for r in registry.regions()] == [keep]
    with pytest.raises(UnknownRegionError):
        registry.get(drop)


def test_unregister_releases_the_buffer() -> None:
    registry = Registry()
    buf = bytearray(16)
    rid = registry.register(buf)
    with pytest.raises(BufferError):
        buf.append(1)
    registry.unregister(rid)
    buf.append(1)
    assert len(buf) == 17


# --- what a region records --------------------------------------------------------------------


def test_region_records_address_size_kind_name() -> None:
    registry = Registry()
    buf = bytearray(b"0123456789")
    rid = registry.register(buf, 4, name="head")
    region = registry.get(rid)
    assert region == Region(
        rid, ctypes.addressof(ctypes.c_char.from_buffer(buf)), 4, RegionKind.BUFFER, "head", "bytearray"
    )
    assert region.end == region.address + 4
    # without a name, the type's name is used
    other = registry.get(registry.register(bytearray(1)))
    assert other.name == other.type_name == "bytearray"


def test_region_names_are_sanitised_and_bounded() -> None:
    registry = Registry()
    long = registry.get(registry.register(bytearray(1), name="x" * 100))
    assert long.name == "x" * NAME_MAX
    ctrl = registry.get(registry.register(bytearray(1), name="a\nb\0c"))
    assert ctrl.name == "a?b?c"
    wide = registry.get(registry.register(bytearray(1), name="é" * 40))
    assert len(wide.name.encode()) <= NAME_MAX
    assert wide.name == "é" * (NAME_MAX // 2)


def test_regions_is_an_id_ordered_snapshot() -> None:
    registry = Registry()
    registry.register(bytearray(1))
    registry.register(bytearray(1), id=ID.USER_START)
    registry.register(bytearray(1), id=ID.BANNER)
    snap = registry.regions()
    assert [r.id for r in snap] == sorted(r.id for r in snap)
    registry.register(bytearray(1))
    assert len(snap) == 3  # a snapshot, not a view
    assert ID.BANNER in registry
    assert 12345 not in registry


# --- replace ----------------------------------------------------------------------------------


def test_replace_swaps_target_under_same_id() -> None:
    registry = Registry()
    backend = RecordingBackend()
    registry.backend_register(backend)
    old = bytearray(8)
    registry.register(old, id=ID.USER_START)
    new = bytearray(32)

    assert registry.replace(ID.USER_START, new, name="grown") == ID.USER_START

    region = registry.get(ID.USER_START)
    assert (region.size, region.name) == (32, "grown")
    assert backend.calls() == [
        ("register", ID.USER_START),
        ("unregister", ID.USER_START),
        ("register", ID.USER_START),
    ]
    old.append(1)  # the old buffer is released
    assert backend.regions[ID.USER_START] == region


def test_replace_of_absent_id_registers_and_kind_override() -> None:
    registry = Registry()
    rid = registry.replace(ID.PYCOREINFO, bytearray(b"{}"), kind=RegionKind.PYCOREINFO)
    assert rid == ID.PYCOREINFO
    assert registry.get(rid).kind is RegionKind.PYCOREINFO


def test_replace_in_a_full_registry_reuses_the_slot() -> None:
    registry = Registry(capacity=1)
    registry.register(bytearray(1), id=ID.USER_START)
    assert registry.replace(ID.USER_START, bytearray(2)) == ID.USER_START
    assert registry.get(ID.USER_START).size == 2


# --- objects and object graphs ------------------------------------------------------------------


class _Plain:
    pass


def test_type_listener_hears_object_registrations_only() -> None:
    registry = Registry()
    heard: list[set[type]] = []
    registry.set_type_listener(heard.append)
    registry.register(bytearray(4))
    obj = _Plain()
    registry.register(obj)
    assert heard == [{_Plain}]
    assert registry.object_types() == {_Plain}
    registry.set_type_listener(None)
    registry.register(_Plain())
    assert len(heard) == 1


def test_register_object_is_a_live_graph_root_alone() -> None:
    registry = Registry()
    backend = RecordingBackend()
    registry.backend_register(backend)
    data = [f"item{i}" for i in range(3)]

    rid = registry.register_object(data, name="items", depth=2)

    (root,) = registry.regions()  # the items are walked at dump time, not registered now
    assert (root.id, root.address, root.kind, root.name) == (rid, id(data), RegionKind.OBJECT, "items")
    assert (root.graph_depth, root.flags) == (2, 0)
    assert root.size == list.__basicsize__
    assert backend.regions[rid].graph_depth == 2  # a callback backend hears the depth too
    plain = registry.get(registry.register(bytearray(4)))
    assert plain.graph_depth is None
    with pytest.raises(InvalidRegionError, match="depth"):
        registry.register_object(data, depth=65)


def test_register_object_snapshot_root_and_parts_unregistered_together() -> None:
    registry = Registry()
    backend = RecordingBackend()
    registry.backend_register(backend)
    data = [f"item{i}" for i in range(3)]

    rid = registry.register_object(data, name="items", depth=1, snapshot=True)

    regions = registry.regions()
    root = registry.get(rid)
    assert (root.address, root.kind, root.name, root.graph_depth) == (
        id(data),
        RegionKind.OBJECT,
        "items",
        None,
    )
    assert len(regions) > 1  # the item array and the items came along
    addresses = {r.address for r in regions}
    assert all(id(item) in addresses for item in data)
    assert registry.ids_of(data) == [rid]  # parts are not listed as targets of their own
    assert registry.object_types() >= {list, str}
    registry.unregister(rid)
    assert registry.regions() == ()
    assert backend.regions == {}
    assert backend.violations == []


def test_register_with_depth_is_register_object() -> None:
    registry = Registry()
    data = {"k": "v"}
    rid = registry.register(data, depth=0)
    assert registry.get(rid).address == id(data)
    assert registry.get(rid).kind is RegionKind.OBJECT


@pytest.mark.parametrize("bad", [-1, True, 1.5])
def test_register_object_bad_depth_refused(bad: object) -> None:
    registry = Registry()
    with pytest.raises(InvalidRegionError, match="depth"):
        registry.register_object([1], depth=bad)  # type: ignore[arg-type]
    assert registry.regions() == ()


def test_register_object_graph_larger_than_free_slots_refused_whole() -> None:
    registry = Registry(capacity=3)
    data = [f"s{i}" for i in range(10)]
    with pytest.raises(RegistryFullError):
        registry.register_object(data, depth=1, snapshot=True)
    assert registry.regions() == ()


def test_part_unregistered_alone_then_id_reused_survives_root_unregister() -> None:
    registry = Registry()
    data = ["alpha", "beta"]
    root = registry.register_object(data, depth=1, snapshot=True)
    part = max(r.id for r in registry.regions())
    registry.unregister(part)
    unrelated = registry.register(bytearray(b"unrelated"))
    assert unrelated == part  # the part's dynamic ID was reused

    registry.unregister(root)

    assert [r.id for r in registry.regions()] == [unrelated]


def test_replace_of_object_graph_root_drops_its_parts() -> None:
    registry = Registry()
    registry.register_object(["x", "y"], id=ID.USER_START, depth=1, snapshot=True)
    registry.replace(ID.USER_START, bytearray(4))
    assert [r.id for r in registry.regions()] == [ID.USER_START]


def test_ids_of_matches_target_and_views_of_it() -> None:
    registry = Registry()
    buf = bytearray(64)
    whole = registry.register(buf)
    view = memoryview(buf)[8:16]
    part = registry.register(view)
    cell = ctypes.create_string_buffer(8)
    address = ctypes.addressof(cell)
    raw = registry.register(address, 8)
    assert registry.ids_of(buf) == [whole, part]
    assert registry.ids_of(view) == [part]
    assert registry.ids_of(None) == []
    assert registry.ids_of(bytearray(64)) == []
    assert registry.ids_of(address) == []  # a raw address is no object
    assert raw in registry


def test_registered_object_is_kept_alive() -> None:
    registry = Registry()
    rid = registry.register(_Plain())
    gc.collect()
    address = registry.get(rid).address
    assert any(id(o) == address for o in gc.get_objects() if isinstance(o, _Plain))


# --- IDs are predefined; the table is a preallocated fixed-size array ----------------------------------


def test_predefined_ids() -> None:
    from kmemdump.ids import id_label

    assert (ID.BANNER, ID.PYCOREINFO, ID.USER_START, ID.USER_END) == (1, 2, 16, 1023)
    assert DYNAMIC_START == ID.USER_END + 1
    assert MAX_ID == 2**32 - 1
    assert [id_label(i) for i in (1, 2, 3, 16, 1023, 1024, 1030)] == [
        "BANNER",
        "PYCOREINFO",
        "reserved3",
        "user+0",
        "user+1007",
        "dyn+0",
        "dyn+6",
    ]
    assert 0 not in {int(member) for member in ID}  # 0 marks a free slot, as in the kernel


def test_slots_are_preallocated_and_never_grow() -> None:
    registry = Registry(capacity=50)
    slots = registry._slots
    assert len(slots) == 50
    ids = [registry.register(bytearray(1)) for _ in range(50)]
    with pytest.raises(RegistryFullError):
        registry.register(bytearray(1))
    assert registry._slots is slots
    assert len(slots) == 50
    assert all(entry is not None for entry in slots)
    for rid in ids:
        registry.unregister(rid)
    assert registry._slots is slots
    assert all(entry is None for entry in slots)


def test_full_default_registry_costs_little_memory() -> None:
    import tracemalloc

    buffers = [bytearray(16) for _ in range(DEFAULT_CAPACITY)]
    tracemalloc.start()
    try:
        registry = Registry()
        for buf in buffers:
            registry.register(buf)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(registry) == DEFAULT_CAPACITY
    assert peak < 512 * 1024  # a few hundred entries: well under a megabyte of bookkeeping


@pytest.mark.parametrize("name", [5, b"orders", ["orders"]])
def test_a_name_that_is_not_a_str_is_refused_in_kmemdumps_terms(name: object) -> None:
    registry = Registry(capacity=4)
    for target, size in ((bytearray(8), None), (ctypes.addressof(ctypes.create_string_buffer(8)), 8)):
        with pytest.raises(InvalidRegionError, match="name must be a str"):
            registry.register(target, size, name=name)  # type: ignore[arg-type]
    assert len(registry) == 0

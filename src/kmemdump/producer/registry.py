"""The registry: a fixed-size table of regions, one lock, and the current backend.

It mirrors the kernel's ``kmemdump_zones[MAX_ZONES]`` and ``kmemdump_lock``: registration takes a
free slot, unregistration frees it, and the current backend is told about each change. Register
and unregister are O(1): a stack of free slots, a dict from ID to slot and a heap of freed dynamic
IDs; nothing scans the table.

Why one module of this size: the registration hot path (register, unregister, the backend's slot
functions) is written out inline for speed, and every operation must hold the same lock over the
same structures; it reads best in one place.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable
from typing import Any
from typing import Final

from kmemdump.errors import BackendError
from kmemdump.errors import InvalidRegionError
from kmemdump.errors import KmemdumpError
from kmemdump.errors import RegionExistsError
from kmemdump.errors import RegistryFullError
from kmemdump.errors import UnknownRegionError
from kmemdump.formats.enums import RegionFlags
from kmemdump.formats.enums import RegionKind
from kmemdump.formats.kinds import GRAPH_DEPTH_MASK
from kmemdump.formats.kinds import GRAPH_ROOT
from kmemdump.formats.kinds import MAX_GRAPH_DEPTH
from kmemdump.formats.kinds import graph_word
from kmemdump.ids import DYNAMIC_START
from kmemdump.ids import MAX_ID
from kmemdump.ids import NO_ID
from kmemdump.producer.backends.base import Backend
from kmemdump.producer.backends.base import NoopBackend
from kmemdump.producer.backends.base import SlotSink
from kmemdump.producer.forksafe import fork_safe_lock
from kmemdump.producer.forksafe import hold_across_fork
from kmemdump.producer.region import Region
from kmemdump.producer.region import Resolved
from kmemdump.producer.region import clean_name
from kmemdump.producer.region import make_region
from kmemdump.producer.region import resolve_target
from kmemdump.record import frozen

__all__ = ["DEFAULT_CAPACITY", "MAX_CAPACITY", "Registry", "ReplayFailure", "SwapReport"]

log = logging.getLogger("kmemdump")

DEFAULT_CAPACITY = 201
"""The kernel's ``MAX_ZONES`` (itself the Qualcomm minidump table's 201 regions)."""
MAX_CAPACITY = 65536
_ADDRESS_LIMIT = 2**64
_PERSISTENT = int(RegionFlags.PERSISTENT)
_ADDRESS_KIND = RegionKind.ADDRESS
_GRAPH_SHIFT = 16
"""An entry's flags int holds its RegionFlags below this bit and its graph word from it on."""


@frozen
class ReplayFailure:
    """A region the new backend refused while the registry replayed it."""

    region: Region
    error: str


@frozen
class SwapReport:
    """The outcome of :meth:`Registry.backend_register`."""

    backend: str
    replayed: int
    failures: tuple[ReplayFailure, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.failures


# One registered region, as a tuple: built in a fraction of an object's time on the hot path.
# (slot, id, address, size, kind, name, type_name, flags, keepalive, owner, parent)
_Entry = tuple[int, int, int, int, RegionKind, str, str, int, Any, Any, "int | None"]
_SLOT: Final = 0
_ID: Final = 1
_ADDRESS: Final = 2
_SIZE: Final = 3
_KIND: Final = 4
_NAME: Final = 5
_TYPE_NAME: Final = 6
_FLAGS: Final = 7
_KEEPALIVE: Final = 8
_OWNER: Final = 9
_PARENT: Final = 10
"""``keepalive`` pins the target's memory; ``owner`` is what the caller registered (None for raw
addresses and object-graph parts); ``parent`` the ID of the object-graph root a part belongs to."""


def _region(entry: _Entry) -> Region:
    _slot, rid, address, size, kind, name, type_name, flags, _keepalive, _owner, _parent = entry
    graph = flags >> _GRAPH_SHIFT
    depth = graph & GRAPH_DEPTH_MASK if graph & GRAPH_ROOT else None
    return make_region(rid, address, size, kind, name, type_name, flags & 0xFFFF, depth)


def _put(sink: SlotSink, entry: _Entry) -> None:
    slot, rid, address, size, kind, name, _type_name, flags, _keepalive, _owner, _parent = entry
    sink.put(slot, rid, name, address, size, kind, flags)


def _release(keepalive: Any) -> None:
    """Drop the buffer export that pinned a registered buffer, so it may move again."""
    if isinstance(keepalive, memoryview):
        keepalive.release()


TypeListener = Callable[[set[type]], None]


class Registry:
    """A fixed-size, thread-safe table of regions and the backend that publishes them.

    The current backend hears of every change through its two callbacks, each given a
    :class:`Region`. A backend that offers ``bind`` (a :class:`~.backends.base.SlotBackend`, as the
    shared table is) is driven through the slot functions it returns instead, under this
    registry's lock and with this registry's slot numbers: no :class:`Region` object is built on
    the hot path and no second lock is taken. Regions are built when someone asks for them.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self._lock = fork_safe_lock()
        hold_across_fork(self._lock)  # a child starts from a registry no thread was changing
        noop = NoopBackend()
        self._backend: Backend = noop
        self._sink: SlotSink | None = noop.bind(self._lock, capacity)
        self._by_id: dict[int, _Entry] = {}
        self._children: dict[int, tuple[int, ...]] = {}
        """The object-graph parts registered with a root, by the root's ID."""
        self._unpublished: set[int] = set()
        """IDs the current backend refused on replay: it is not asked to forget them."""
        self._regions: dict[int, Region] = {}
        """Regions built for readers, by ID; dropped when the entry changes."""
        self._dyn_heap: list[int] = []
        self._dyn_next = DYNAMIC_START
        self._type_listener: TypeListener | None = None
        self._persistent_lo = 0
        self._persistent_hi = 0  # [lo, hi) of the persistent arena; empty (0, 0) when none
        self._set_slots(_check_capacity(capacity))

    # --- capacity ----------------------------------------------------------------------

    def _set_slots(self, capacity: int) -> None:
        self._slots: list[_Entry | None] = [None] * capacity
        self._free: list[int] = list(range(capacity - 1, -1, -1))  # pop() gives the lowest slot

    @property
    def capacity(self) -> int:
        return len(self._slots)

    def set_capacity(self, capacity: int) -> None:
        """Resize the table; allowed only while it is empty and the no-op backend is current."""
        capacity = _check_capacity(capacity)
        with self._lock:
            if capacity == len(self._slots):
                return
            if self._by_id or not isinstance(self._backend, NoopBackend):
                raise InvalidRegionError(
                    "capacity can only change before any region or backend is registered",
                    capacity=capacity,
                    registered=len(self._by_id),
                )
            self._set_slots(capacity)

    def __len__(self) -> int:
        return len(self._by_id)

    # --- the persistent arena ---------------------------------------------------------------

    @property
    def persistent_range(self) -> tuple[int, int] | None:
        """``(base, size)`` of the memory whose regions are flagged PERSISTENT, or None."""
        lo, hi = self._persistent_lo, self._persistent_hi
        return (lo, hi - lo) if hi else None

    def set_persistent_range(self, base: int | None, size: int = 0) -> None:
        """Flag as PERSISTENT every region inside ``[base, base + size)`` (the process's arena).

        ``None`` clears it (in a forked child, whose inherited arena is its parent's). Regions
        already registered are re-flagged; the backend is not told (a table backend flags entries
        against the arena it publishes itself).
        """
        if base is None or size == 0:
            lo = hi = 0
        elif (
            isinstance(base, bool)
            or not isinstance(base, int)
            or isinstance(size, bool)
            or not isinstance(size, int)
            or base <= 0
            or size < 0
            or base + size > _ADDRESS_LIMIT
        ):
            raise InvalidRegionError("persistent range out of the address space", base=base, size=size)
        else:
            lo, hi = base, base + size
        with self._lock:
            self._persistent_lo, self._persistent_hi = lo, hi
            for rid, entry in list(self._by_id.items()):
                address, flags = entry[_ADDRESS], entry[_FLAGS]
                wanted = _PERSISTENT if lo <= address and address + entry[_SIZE] <= hi else 0
                if wanted != flags & _PERSISTENT:
                    slot, _, _, size, kind, name, type_name, _, keepalive, owner, parent = entry
                    new_flags = (flags & ~_PERSISTENT) | wanted
                    changed = (
                        slot,
                        rid,
                        address,
                        size,
                        kind,
                        name,
                        type_name,
                        new_flags,
                        keepalive,
                        owner,
                        parent,
                    )
                    self._by_id[rid] = self._slots[entry[_SLOT]] = changed
                    self._regions.pop(rid, None)

    # --- IDs -----------------------------------------------------------------------------

    def _take_id(self, wanted: int) -> int:
        """Reserve ``wanted`` (checked) or the lowest free dynamic ID. Caller holds the lock."""
        if type(wanted) is not int:  # the common case costs one check; IntEnum IDs are ints too
            if isinstance(wanted, bool) or not isinstance(wanted, int):
                raise InvalidRegionError(f"ID must be an int, not {type(wanted).__name__}", id=wanted)
            wanted = int(wanted)
        by_id = self._by_id
        if wanted != NO_ID:
            if not 0 < wanted <= MAX_ID:
                raise InvalidRegionError("ID outside the ID space", id=wanted)
            if wanted in by_id:
                raise RegionExistsError("ID already registered", id=wanted)
            return wanted
        heap = self._dyn_heap
        while heap:
            candidate = heapq.heappop(heap)
            if candidate not in by_id:  # may have been taken explicitly meanwhile
                return candidate
        candidate = self._dyn_next
        while candidate in by_id:
            candidate += 1
        if candidate > MAX_ID:
            raise RegistryFullError("dynamic IDs exhausted")
        self._dyn_next = candidate + 1
        return candidate

    def _give_back_id(self, region_id: int) -> None:
        if region_id >= DYNAMIC_START and region_id < self._dyn_next:
            heapq.heappush(self._dyn_heap, region_id)

    # --- register / unregister -------------------------------------------------------------

    def register(
        self,
        target: Any,
        size: int | None = None,
        *,
        id: int = NO_ID,
        name: str | None = None,
        depth: int | None = None,
    ) -> int:
        """Register ``target`` and return its ID. See :func:`kmemdump.register`."""
        if (  # the hot path: a raw address and size, checked here without building a Resolved
            type(target) is int
            and type(size) is int
            and depth is None
            and target > 0
            and size > 0
            and target + size <= _ADDRESS_LIMIT
        ):
            label = clean_name(name) if name else ""
            lock = self._lock
            lock.acquire()  # not "with": on this path acquire/release costs half as much
            try:
                sink, free, by_id, heap = self._sink, self._free, self._by_id, self._dyn_heap
                rid = heap[0] if heap else self._dyn_next  # the lowest free dynamic ID, unless taken
                if (  # the commonest case, written out: a dynamic ID, a free slot, a slot backend
                    id == NO_ID
                    and type(id) is int
                    and rid not in by_id
                    and rid <= MAX_ID
                    and free
                    and sink is not None
                ):
                    slot = free[-1]
                    flags = (
                        _PERSISTENT
                        if target + size <= self._persistent_hi and self._persistent_lo <= target
                        else 0
                    )
                    try:
                        sink.put(slot, rid, label, target, size, _ADDRESS_KIND, flags)
                    except Exception as err:
                        raise BackendError(
                            f"backend {_backend_name(self._backend)!r} refused the region: {err}", id=rid
                        ) from err
                    if heap:
                        heapq.heappop(heap)
                    else:
                        self._dyn_next = rid + 1
                    free.pop()
                    by_id[rid] = self._slots[slot] = (
                        slot, rid, target, size, _ADDRESS_KIND, label, "", flags, None, None, None
                    )  # fmt: skip
                    return rid
                return self._register_locked(target, size, _ADDRESS_KIND, "", None, id, label, None)
            finally:
                lock.release()
        if depth is not None:
            return self.register_object(target, id=id, name=name, depth=depth)
        resolved = resolve_target(target, size)
        rid = self._register_resolved(resolved, id, name, _owner(resolved, target))
        if resolved.kind is RegionKind.OBJECT:
            self._notify_types({type(target)})
        return rid

    def register_object(
        self,
        obj: Any,
        *,
        id: int = NO_ID,
        name: str | None = None,
        depth: int = 0,
        snapshot: bool = False,
    ) -> int:
        """Register ``obj`` as the root of a live object graph, ``depth`` levels deep.

        The table marks the root with its depth; at dump time the collector walks the graph in the
        held process, so the dump holds the values of the moment (see
        :mod:`kmemdump.collector.graphs`). Only the object's own memory is registered now.

        With ``snapshot=True`` the memory ranges the graph occupies *now* are registered instead
        (:mod:`.python.objgraph`), each as a region of its own with a dynamic ID, unregistered with
        the root: what the object held at registration, for memory that outlives the process (the
        collector reads nothing else once the process is gone).
        """
        from kmemdump.producer.python.objgraph import object_regions

        if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= MAX_GRAPH_DEPTH:
            raise InvalidRegionError(f"depth must be an int from 0 to {MAX_GRAPH_DEPTH}", depth=depth)
        parts = object_regions(obj, depth if snapshot else 0)
        root = resolve_target(obj, as_object=True)
        if parts and parts[0][0] == root.address and 0 < parts[0][1] <= root.size:
            # the graph walker knows the object's exact extent (e.g. a str without its UTF-8 cache)
            root = root._replace(size=parts[0][1])
        if not snapshot:
            base = clean_name(name) if name else root.type_name
            with self._lock:
                rid = self._register_locked(*root, id, base, obj, graph=graph_word(depth))
            self._notify_types({type(obj)})
            return rid
        extra = [
            # a part at its keepalive's own address is an object; anything else is storage it owns
            Resolved(
                addr, size, RegionKind.OBJECT if addr == _address(keep) else RegionKind.BUFFER, label, keep
            )
            for addr, size, label, keep in parts
            if addr != root.address
        ]
        base = clean_name(name) if name else root.type_name
        with self._lock:
            if len(self._free) < 1 + len(extra):
                raise RegistryFullError(
                    "not enough free slots for the object graph", needed=1 + len(extra), free=len(self._free)
                )
            rid = self._register_locked(*root, id, base, obj)
            children: list[int] = []
            try:
                for part in extra:
                    label = clean_name(f"{base}>{part.type_name}")
                    children.append(self._register_locked(*part, NO_ID, label, None, parent=rid))
            except BaseException:
                for child in children:
                    self._unregister_locked(child)
                self._unregister_locked(rid)
                raise
            if children:
                self._children[rid] = tuple(children)
        types = {type(obj)} | {type(p[3]) for p in parts if p[3] is not None}
        self._notify_types(types)
        return rid

    def register_kind(
        self, target: Any, kind: RegionKind, *, id: int = NO_ID, name: str | None = None
    ) -> int:
        """Register the buffer ``target`` as a region of ``kind``: bytes laid out in one of our formats
        (a :data:`RegionKind.RING` of records, say), which the inspector decodes by that kind."""
        resolved = resolve_target(target)._replace(kind=RegionKind(kind))
        return self._register_resolved(resolved, id, name, _owner(resolved, target))

    def _register_resolved(self, resolved: Resolved, wanted: int, name: str | None, owner: Any) -> int:
        label = clean_name(name) if name else resolved.type_name
        with self._lock:
            return self._register_locked(*resolved, wanted, label, owner)

    def _register_locked(  # noqa: PLR0917 - a Resolved unpacked, then the registration facts
        self,
        address: int,
        size: int,
        kind: RegionKind,
        type_name: str,
        keepalive: Any,
        wanted: int,
        name: str,
        owner: Any,
        parent: int | None = None,
        graph: int = 0,
    ) -> int:
        """Take an ID and a slot and tell the backend; on any failure nothing stays taken.

        ``graph`` is the entry's graph word (a live object-graph root); it rides in ``flags`` from
        bit 16 on."""
        by_id = self._by_id
        rid = 0
        if wanted == NO_ID and type(wanted) is int:  # _take_id's common cases, inlined: the hot path
            heap = self._dyn_heap
            if heap:
                rid = heapq.heappop(heap)
                if rid in by_id:  # taken explicitly meanwhile: let _take_id look further
                    rid = 0
            elif self._dyn_next not in by_id and self._dyn_next <= MAX_ID:
                rid = self._dyn_next
                self._dyn_next = rid + 1
        if not rid:
            try:
                rid = self._take_id(wanted)
            except KmemdumpError:
                _release(keepalive)  # a refused bytearray must be resizable again at once
                raise
        free = self._free
        if not free:
            self._give_back_id(rid)
            _release(keepalive)
            raise RegistryFullError("no free slot", capacity=len(self._slots))
        # hi is 0 when there is no arena
        flags = _PERSISTENT if address + size <= self._persistent_hi and self._persistent_lo <= address else 0
        if graph:
            flags |= graph << _GRAPH_SHIFT
        slot = free[-1]
        sink = self._sink
        try:
            if sink is not None:
                sink.put(slot, rid, name, address, size, kind, flags)
            else:
                graph_depth = graph & GRAPH_DEPTH_MASK if graph else None
                self._backend.register_region(
                    make_region(rid, address, size, kind, name, type_name, flags & 0xFFFF, graph_depth)
                )
        except Exception as err:
            self._give_back_id(rid)
            _release(keepalive)
            raise BackendError(
                f"backend {_backend_name(self._backend)!r} refused the region: {err}", id=rid
            ) from err
        free.pop()
        by_id[rid] = self._slots[slot] = (
            slot, rid, address, size, kind, name, type_name, flags, keepalive, owner, parent
        )  # fmt: skip
        return rid

    def unregister(self, region_id: int) -> None:
        """Remove a region (and the extra regions an object graph brought with it)."""
        lock = self._lock
        lock.acquire()
        try:
            entry = self._by_id.get(region_id)
            if entry is None:
                raise UnknownRegionError("no region with this ID", id=region_id)
            sink = self._sink
            if (  # the commonest case, written out: no graph, no cached Region, no pin, a slot backend
                sink is None
                or entry[_KEEPALIVE] is not None
                or self._children
                or self._unpublished
                or self._regions
                or region_id < DYNAMIC_START
            ):
                if self._children and region_id in self._children:
                    self._unregister_tree_locked(region_id)
                else:
                    self._unregister_locked(region_id)
                return
            del self._by_id[region_id]
            slot = entry[_SLOT]
            try:
                sink.clear(slot)
            except Exception:
                log.exception(
                    "backend %r failed to unregister region %d", _backend_name(self._backend), region_id
                )
            self._slots[slot] = None
            self._free.append(slot)
            if region_id < self._dyn_next:
                heapq.heappush(self._dyn_heap, region_id)
        finally:
            lock.release()

    def _unregister_tree_locked(self, region_id: int) -> None:
        """Unregister a region and the object-graph parts still registered with it."""
        for child in self._children.pop(region_id, ()):
            part = self._by_id.get(child)
            # a part unregistered on its own may have had its ID reused by an unrelated region
            if part is not None and part[_PARENT] == region_id:
                self._unregister_locked(child)
        self._unregister_locked(region_id)

    def _unregister_locked(self, region_id: int) -> None:
        entry = self._by_id.pop(region_id)
        slot = entry[_SLOT]
        if self._regions:
            self._regions.pop(region_id, None)
        if self._unpublished and region_id in self._unpublished:
            self._unpublished.discard(region_id)  # refused on replay: not the backend's to forget
        else:
            sink = self._sink
            try:
                if sink is not None:
                    sink.clear(slot)
                else:
                    self._backend.unregister_region(_region(entry))
            except Exception:
                log.exception(
                    "backend %r failed to unregister region %d", _backend_name(self._backend), region_id
                )
        self._slots[slot] = None
        self._free.append(slot)
        if DYNAMIC_START <= region_id < self._dyn_next:  # _give_back_id, inlined: the hot path
            heapq.heappush(self._dyn_heap, region_id)
        keepalive = entry[_KEEPALIVE]
        if keepalive is not None:
            _release(keepalive)

    def replace(
        self,
        region_id: int,
        target: Any,
        size: int | None = None,
        *,
        name: str | None = None,
        kind: RegionKind | None = None,
    ) -> int:
        """Unregister ``region_id`` if present, then register ``target`` under it, under one lock hold.

        No other thread sees the ID missing in between. If the new target is refused (by the
        backend, say), the old registration is gone all the same, as with the kernel's
        ``kmemdump_alloc_id_size_replace``. ``kind`` overrides the kind recorded for the region
        (e.g. ``RegionKind.PYCOREINFO``).
        """
        resolved = resolve_target(target, size)
        if kind is not None:
            resolved = resolved._replace(kind=kind)
        label = clean_name(name) if name else resolved.type_name
        with self._lock:
            if region_id in self._by_id:
                self._unregister_tree_locked(region_id)
            return self._register_locked(*resolved, region_id, label, _owner(resolved, target))

    def replace_own(
        self,
        region_id: int,
        expected: int | None,
        target: Any,
        size: int | None = None,
        *,
        name: str | None = None,
        kind: RegionKind | None = None,
    ) -> int:
        """:meth:`replace`, only while ``region_id`` is free (``expected`` None) or still the region at
        address ``expected`` (the caller's own): a region someone else registered under the ID is
        never replaced. :class:`RegionExistsError` then, and nothing changes.
        """
        resolved = resolve_target(target, size)
        if kind is not None:
            resolved = resolved._replace(kind=kind)
        label = clean_name(name) if name else resolved.type_name
        with self._lock:
            entry = self._by_id.get(region_id)
            if entry is not None and (expected is None or entry[_ADDRESS] != expected):
                _release(resolved.keepalive)
                raise RegionExistsError(
                    "the ID is registered by someone else; left in place", id=region_id, name=entry[_NAME]
                )
            if entry is not None:
                self._unregister_tree_locked(region_id)
            return self._register_locked(*resolved, region_id, label, _owner(resolved, target))

    # --- lookups ---------------------------------------------------------------------------

    def _region_locked(self, region_id: int, entry: _Entry) -> Region:
        region = self._regions.get(region_id)
        if region is None:
            region = self._regions[region_id] = _region(entry)
        return region

    def regions(self) -> tuple[Region, ...]:
        """A consistent snapshot of every region, in ID order."""
        with self._lock:
            found = [self._region_locked(rid, entry) for rid, entry in self._by_id.items()]
        return tuple(sorted(found, key=lambda r: r.id))

    def get(self, region_id: int) -> Region:
        with self._lock:
            entry = self._by_id.get(region_id)
            if entry is not None:
                return self._region_locked(region_id, entry)
        raise UnknownRegionError("no region with this ID", id=region_id)

    def __contains__(self, region_id: object) -> bool:
        return region_id in self._by_id

    def ids_of(self, obj: Any) -> list[int]:
        """The IDs registered with ``obj`` as their target, or with a buffer view of it.

        Object-graph parts are not listed (their root is); nor are raw addresses.
        """
        with self._lock:
            return sorted(rid for rid, e in self._by_id.items() if e[_PARENT] is None and _targets(e, obj))

    def object_types(self) -> set[type]:
        """The types of the Python objects registered now (roots and object-graph parts)."""
        with self._lock:
            return {type(e[_KEEPALIVE]) for e in self._by_id.values() if e[_KIND] is RegionKind.OBJECT}

    # --- backends ----------------------------------------------------------------------------

    def current_backend(self) -> Backend:
        return self._backend

    def backend_register(self, backend: Backend) -> SwapReport:
        """Make ``backend`` current: unregister every region from the old one, then replay all.

        A backend lacking either callback is refused with :class:`BackendError` (the kernel's
        ``-EINVAL``). Regions the new backend refuses stay registered; they are logged and listed
        in the returned report, and the backend is not asked to unregister them later. Calls go
        in ID order.
        """
        _check_backend(backend)
        with self._lock:
            live = sorted(self._by_id.values(), key=lambda e: e[_ID])
            self._deregister_all_locked(live)
            self._backend = backend
            bind = getattr(backend, "bind", None)
            self._sink = bind(self._lock, len(self._slots)) if callable(bind) else None
            failures = []
            for entry in live:
                try:
                    if self._sink is not None:
                        _put(self._sink, entry)
                    else:
                        backend.register_region(_region(entry))
                except Exception as err:  # reported, not dropped
                    failures.append(ReplayFailure(_region(entry), f"{type(err).__name__}: {err}"))
                    self._unpublished.add(entry[_ID])
        name = _backend_name(backend)
        for failure in failures:
            log.warning("backend %r refused region %d on replay: %s", name, failure.region.id, failure.error)
        return SwapReport(name, len(live) - len(failures), tuple(failures))

    def backend_unregister(self, backend: Backend) -> bool:
        """Remove ``backend`` if it is current: deregister every region from it, revert to no-op.

        Returns False (and does nothing) when ``backend`` is not the current backend.
        """
        with self._lock:
            if backend is not self._backend:
                return False
            live = sorted(self._by_id.values(), key=lambda e: e[_ID])
            self._deregister_all_locked(live)
            noop = NoopBackend()  # which takes everything
            self._backend, self._sink = noop, noop.bind(self._lock, len(self._slots))
            return True

    def _deregister_all_locked(self, entries: list[_Entry]) -> None:
        """Tell the current backend to forget every region it holds; failures are logged."""
        backend, sink, refused = self._backend, self._sink, self._unpublished
        for entry in entries:
            if entry[_ID] in refused:
                continue
            try:
                if sink is not None:
                    sink.clear(entry[_SLOT])
                else:
                    backend.unregister_region(_region(entry))
            except Exception:
                log.exception("backend %r failed to unregister region %d", _backend_name(backend), entry[_ID])
        refused.clear()
        if sink is not None:
            self._sink = None
            sink.unbind()

    # --- types of registered objects (for the PYCOREINFO type map) -------------------------------

    def set_type_listener(self, listener: TypeListener | None) -> None:
        """Call ``listener(types)`` after each object registration, outside the lock."""
        self._type_listener = listener

    def _notify_types(self, types: set[type]) -> None:
        listener = self._type_listener
        if listener is not None:
            listener(types)


def _owner(resolved: Resolved, target: Any) -> Any:
    """What :meth:`Registry.ids_of` matches a region by: the target, unless it was a raw address."""
    return None if resolved.kind is RegionKind.ADDRESS else target


def _address(obj: Any) -> int:
    """``id(obj)``, for methods whose ``id`` parameter (the kernel's name) hides the builtin."""
    return id(obj)


def _targets(entry: _Entry, obj: Any) -> bool:
    owner = entry[_OWNER]
    if owner is None:
        return False
    if owner is obj:
        return True
    view = entry[_KEEPALIVE]
    return isinstance(view, memoryview) and not _released(view) and view.obj is obj


def _released(view: memoryview) -> bool:
    try:
        view.obj  # noqa: B018 - raises ValueError once released
    except ValueError:
        return True
    return False


def _backend_name(backend: Any) -> str:
    return str(getattr(backend, "name", type(backend).__name__))


def _check_backend(backend: Any) -> None:
    for callback in ("register_region", "unregister_region"):
        if not callable(getattr(backend, callback, None)):
            raise BackendError(
                f"backend lacks the mandatory {callback}() callback", backend=_backend_name(backend)
            )


def _check_capacity(capacity: int) -> int:
    if isinstance(capacity, bool) or not isinstance(capacity, int) or not 0 < capacity <= MAX_CAPACITY:
        raise InvalidRegionError(f"capacity must be an int in 1..{MAX_CAPACITY}", capacity=capacity)
    return capacity

"""Allocation wrappers: allocate and register in one call, unregister and release in another.

These are the kernel design's "wrappers on top of allocation functions which are given as parameters"
(the kernel's ``kmemdump_alloc_id_size(id, sz, fn, ...)`` and ``kmemdump_free_id(id, fn, ...)``).
:func:`alloc_persistent` allocates in the process's persistent arena (:mod:`kmemdump.producer.arena`)
instead, and :func:`free` returns such a block to it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING
from typing import Any
from typing import TypeVar

from kmemdump.errors import InvalidRegionError
from kmemdump.errors import UnknownRegionError
from kmemdump.formats.enums import RegionKind
from kmemdump.ids import NO_ID
from kmemdump.producer.registry import Registry

if TYPE_CHECKING:
    from kmemdump.producer.arena import Arena
    from kmemdump.producer.arena import Block

__all__ = ["alloc", "alloc_persistent", "alloc_with", "allocated", "free"]

T = TypeVar("T")


def alloc(
    registry: Registry,
    size: int,
    *,
    id: int = NO_ID,
    name: str | None = None,
    replace: bool = False,
) -> bytearray:
    """A zeroed ``bytearray`` of ``size`` bytes, registered; it cannot be resized while registered.

    With ``replace=True`` an existing region under ``id`` is unregistered first (the kernel's
    ``kmemdump_alloc_id_size_replace``).
    """
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise InvalidRegionError("size must be a positive int", size=size)
    buf = bytearray(size)
    _register(registry, buf, size=None, rid=id, name=name, replace=replace)
    return buf


def alloc_persistent(
    registry: Registry,
    arena: Arena,
    size: int,
    *,
    id: int = NO_ID,
    name: str | None = None,
    kind: RegionKind | None = None,
) -> memoryview:
    """A zeroed, registered ``memoryview`` of exactly ``size`` bytes inside ``arena``.

    The registry must flag ``arena``'s range as persistent (:meth:`Registry.set_persistent_range`)
    for the region to be published as PERSISTENT. ``kind`` records the region as that kind instead
    of a plain buffer (one of our formats). If registration fails the block goes back to the arena
    and the error propagates.
    """
    block = arena.allocate(size)
    try:
        if kind is None:
            registry.register(block.view, id=id, name=name)
        else:
            registry.register_kind(block.view, kind, id=id, name=name)
    except BaseException:
        arena.release(block)
        raise
    return block.view


def alloc_with(
    registry: Registry,
    fn: Callable[..., T],
    *args: Any,
    id: int = NO_ID,
    name: str | None = None,
    size: int | None = None,
    replace: bool = False,
    **kwargs: Any,
) -> T:
    """Call any allocator ``fn(*args, **kwargs)`` and register what it returns.

    The result must be registrable (a buffer, a ctypes object, or an object); ``size`` limits
    the region to the first ``size`` bytes, for allocators that round up. If registration fails
    the result is returned to no one: the error propagates and the object is dropped.
    """
    obj = fn(*args, **kwargs)
    _register(registry, obj, size=size, rid=id, name=name, replace=replace)
    return obj


def _register(
    registry: Registry, obj: Any, *, size: int | None, rid: int, name: str | None, replace: bool
) -> int:
    if replace and rid != NO_ID:
        return registry.replace(rid, obj, size, name=name)
    return registry.register(obj, size, id=rid, name=name)


def free(
    registry: Registry,
    obj_or_id: Any,
    fn: Callable[..., Any] | None = None,
    *args: Any,
    arena: Arena | None = None,
) -> None:
    """Unregister a region by ID, or every region registered for an object; then ``fn(*args)``.

    ``fn`` is the matching release function (``mmap.close``, a pool's ``release`` …), called
    after unregistering so the region is never published while its memory is gone.

    A persistent buffer of ``arena`` (the view :func:`alloc_persistent` returned, or its ID) is
    released as well: the view is released (so a later use of it raises ``ValueError``), every
    region overlapping the block is unregistered, and the block returns to the arena, zeroed.
    If something still exports the view (``numpy.frombuffer`` …), :class:`InvalidRegionError` is
    raised and nothing changes.
    """
    if arena is not None and _free_block(registry, arena, obj_or_id):
        if fn is not None:
            fn(*args)
        return
    if isinstance(obj_or_id, int) and not isinstance(obj_or_id, bool):
        registry.unregister(obj_or_id)
    else:
        ids = registry.ids_of(obj_or_id)
        if not ids:
            raise UnknownRegionError("object is not registered", type=type(obj_or_id).__name__)
        for rid in ids:
            registry.unregister(rid)
    if fn is not None:
        fn(*args)


def _free_block(registry: Registry, arena: Arena, obj_or_id: Any) -> bool:
    """Free ``obj_or_id`` if it names one of ``arena``'s blocks; False when it does not."""
    with arena.lock:
        block = _find_block(registry, arena, obj_or_id)
        if block is None:
            return False
        try:
            block.view.release()
        except BufferError as err:
            raise InvalidRegionError(
                f"the persistent buffer is still in use ({err}); drop what was made from it first",
                address=block.address,
                size=block.size,
            ) from err
        for region in registry.regions():
            if region.address < block.end and block.address < region.end:
                with contextlib.suppress(UnknownRegionError):  # a graph part, gone with its root
                    registry.unregister(region.id)
        arena.release_locked(block)
    return True


def _find_block(registry: Registry, arena: Arena, obj_or_id: Any) -> Block | None:
    if isinstance(obj_or_id, int) and not isinstance(obj_or_id, bool):
        region = registry.get(obj_or_id)  # UnknownRegionError for an unknown ID
        block = arena.block_at(region.address)
        return block if block is not None and block.size == region.size else None
    if isinstance(obj_or_id, memoryview):
        return arena.block_of(obj_or_id)
    return None


@contextmanager
def allocated(
    registry: Registry,
    size: int,
    *,
    id: int = NO_ID,
    name: str | None = None,
) -> Iterator[bytearray]:
    """``with allocated(n) as buf:`` — a registered buffer, unregistered on exit."""
    buf = alloc(registry, size, id=id, name=name)
    try:
        yield buf
    finally:
        ids = registry.ids_of(buf)
        for rid in ids:
            registry.unregister(rid)

"""The backend contract (the kernel's ``struct kmemdump_backend``) and the default no-op backend."""

from __future__ import annotations

import threading
from typing import Protocol
from typing import runtime_checkable

from kmemdump.producer.region import Region

__all__ = ["Backend", "NoopBackend", "SlotBackend", "SlotSink"]


@runtime_checkable
class Backend(Protocol):
    """What the registry drives. Both callbacks are mandatory.

    The registry calls them under its lock, one at a time. ``register_region`` refuses a region
    by raising; ``unregister_region`` should not raise (a failure is logged, the region is gone).
    A backend must not call back into the registry from a callback.
    """

    name: str

    def register_region(self, region: Region) -> None: ...

    def unregister_region(self, region: Region) -> None: ...


class SlotSink(Protocol):
    """The slot functions a :class:`SlotBackend` gives the registry that binds it.

    Both are called with the registry's lock held, with the registry's slot number (below the
    capacity given to :meth:`SlotBackend.bind`). ``put`` refuses a region by raising. Its ``flags``
    holds the :class:`RegionFlags` bits in bits 0-15 and the entry's graph word (see
    :func:`kmemdump.formats.kinds.graph_word`) from bit 16 on.
    """

    def put(  # noqa: PLR0917 - the entry's fields, as the table format has them
        self, slot: int, id: int, name: str, address: int, size: int, kind: int, flags: int
    ) -> None: ...

    def clear(self, slot: int) -> None: ...

    def unbind(self) -> None:
        """The registry lets go: the backend is on its own again (and holds no region from it)."""
        ...


class SlotBackend(Backend, Protocol):
    """A backend that can also be driven by slot, with no :class:`Region` built and no lock of its own.

    The registry calls ``bind(lock, capacity)`` when the backend becomes current; a backend that
    returns a :class:`SlotSink` promises to take ``lock`` for every change of its own state until
    :meth:`SlotSink.unbind`. Returning None (say, it already holds regions) keeps the two callbacks.
    """

    def bind(self, lock: threading.Lock, capacity: int) -> SlotSink | None: ...


class NoopBackend:
    """The backend current from import on: accepts everything, publishes nothing."""

    name = "noop"

    def bind(self, lock: threading.Lock, capacity: int) -> SlotSink:
        """Driven by slot, it has nothing to do either."""
        return self

    def put(  # noqa: PLR0917 - as SlotSink.put
        self, slot: int, id: int, name: str, address: int, size: int, kind: int, flags: int
    ) -> None:
        return None

    def clear(self, slot: int) -> None:
        return None

    def unbind(self) -> None:
        return None

    def register_region(self, region: Region) -> None:
        return None

    def unregister_region(self, region: Region) -> None:
        return None

    def __repr__(self) -> str:
        return "NoopBackend()"

"""Record rings in the persistent arena: the producer's side of :mod:`kmemdump.formats.ring`.

A :class:`PersistentRing` is one region of kind ``RING`` in this process's arena file, so its
records outlive the process (SIGKILL included) and the collector reads them from the file after a
death. :mod:`kmemdump.producer.ringlog` (the logging handler), :mod:`kmemdump.producer.faults`
(uncaught exceptions) and :mod:`kmemdump.producer.aiowatch` (event loops) each keep one.

Fork: a child inherits the mapping of its parent's arena file, so a record appended there would
land in the parent's ring. After a fork every ring of the child forgets its parent's region and,
once the child publishes a table of its own (``kmemdump.init(table=True)`` in the child), opens a
new one in the child's own arena on its next record; records before that are dropped.

Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import time
import weakref
from typing import Protocol

from kmemdump.errors import KmemdumpError
from kmemdump.formats.ring import Appender
from kmemdump.formats.ring import RingRole
from kmemdump.formats.ring import make_appender
from kmemdump.formats.ring import pack_header
from kmemdump.formats.ring import ring_size
from kmemdump.producer.forksafe import fork_safe_lock

__all__ = ["PersistentRing", "RingHost"]


class RingHost(Protocol):
    """Where a ring's memory comes from: the process's registry and persistent arena
    (:func:`kmemdump.producer.api.ring_host`)."""

    def allocate(self, size: int, name: str) -> tuple[memoryview, int]:
        """A zeroed persistent buffer registered as a ``RING`` region: the buffer and its ID."""
        ...

    def free(self, view: memoryview) -> None:
        """Unregister the buffer and give it back to the arena."""
        ...

    def forget(self, region_id: int) -> None:
        """Unregister ``region_id`` only (a forked child's record of its parent's ring)."""
        ...

    def publishing(self) -> bool:
        """Whether this process publishes a table (a forked child may not, yet)."""
        ...


_rings: weakref.WeakSet[PersistentRing] = weakref.WeakSet()


def _dropped(text: str, level: int, when: float) -> int:
    return 0


class PersistentRing:
    """A ring of ``capacity`` records of at most ``record_size`` bytes each, in the persistent arena.

    :attr:`append` (``append(text, level, time) -> seq``) writes one record; callers that may run
    concurrently use :meth:`write`, which takes the ring's lock. :meth:`free` gives the memory
    back. Creating one needs the arena: call ``kmemdump.init(table=True)`` first, so that the
    arena sits beside the table the collector reads.
    """

    def __init__(self, capacity: int, record_size: int, role: RingRole, name: str, *, host: RingHost) -> None:
        self.size = ring_size(capacity, record_size)
        self.host = host
        self.capacity = capacity
        self.record_size = record_size
        self.role = role
        self.name = name
        self.lock = fork_safe_lock()
        self.view: memoryview | None = None
        self.region_id = 0
        self.append: Appender = _dropped
        self._reopened: Appender | None = None
        self._open()
        _rings.add(self)

    def __repr__(self) -> str:
        return (
            f"PersistentRing({self.name!r}, capacity={self.capacity}, record_size={self.record_size}, "
            f"region={self.region_id})"
        )

    def _open(self) -> None:
        view, self.region_id = self.host.allocate(self.size, self.name)
        pack_header(
            view,
            capacity=self.capacity,
            slot_size=self.record_size,
            role=self.role,
            created_ns=time.time_ns(),
        )
        self.view = view
        self.append = make_appender(view, self.capacity, self.record_size)

    def write(self, text: str, level: int = 0, when: float | None = None) -> int:
        """Append one record under the ring's lock; its sequence number (0 once freed)."""
        with self.lock:
            return self.append(text, level, time.time() if when is None else when)

    def free(self) -> None:
        """Unregister the ring and give its memory back to the arena; later records are dropped."""
        with self.lock:
            view, self.view = self.view, None
            self.append = _dropped
            if view is None:
                return
            with contextlib.suppress(KmemdumpError, ValueError):
                self.host.free(view)

    def _append_after_fork(self, text: str, level: int, when: float) -> int:
        """A forked child's record: once the child publishes a table of its own, open a ring in its
        own arena and append there; until then drop the record (no collector could read it)."""
        with self.lock:
            if self.append is self._reopened:
                return self.append(text, level, when)  # another thread reopened it meanwhile
            if not self.host.publishing():
                return 0
            old, self.region_id = self.region_id, 0
            with contextlib.suppress(KmemdumpError):
                self.host.forget(old)  # the child's record of the parent's ring, not the parent's table
            try:
                self._open()
            except KmemdumpError:
                self.append = _dropped  # no arena for the child: records are dropped, never misplaced
                return 0
            self._reopened = self.append
        return self.append(text, level, when)

    def _after_fork_in_child(self) -> None:
        if self.view is not None:
            self.view = None  # the parent's memory: never written, never freed here
            self.append = self._append_after_fork


def _after_fork_in_child() -> None:
    for ring in list(_rings):
        ring._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)

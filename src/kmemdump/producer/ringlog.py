"""``RingHandler``: a ``logging.Handler`` that keeps the last N records where a dump finds them.

The Linux kernel's kmemdump registers its log buffer before anything else: the last lines a
machine printed are what one wants first from a dead one. This is the same for a Python process:
the handler formats each record and stores it in a ring of fixed-size slots in the persistent
arena (:class:`~kmemdump.producer.rings.PersistentRing`, format :mod:`kmemdump.formats.ring`), so
the records are in every dump of the process, and still in the dump taken after a SIGKILL or an
OOM kill. ``kmemdump show`` prints them in order with their levels and times.

Public as :mod:`kmemdump.logging`. Standard library only.
"""

from __future__ import annotations

import logging
import sys

from kmemdump.formats.ring import RingRole
from kmemdump.producer.api import ring_host
from kmemdump.producer.rings import PersistentRing

__all__ = ["DEFAULT_CAPACITY", "DEFAULT_FORMAT", "DEFAULT_RECORD_SIZE", "RingHandler"]

DEFAULT_CAPACITY = 1000
DEFAULT_RECORD_SIZE = 256
DEFAULT_FORMAT = "%(name)s: %(message)s"
"""The formatter a handler starts with; the level and time are stored beside the text anyway."""
_NO_GIL = not getattr(sys, "_is_gil_enabled", lambda: True)()


class RingHandler(logging.Handler):
    """Keep the last ``capacity`` formatted records in a persistent ring that dumps carry.

    Each record takes one slot of ``record_size`` bytes (40 of them for its number, time, level and
    lengths, the rest for its UTF-8 text); a longer text is cut at a character boundary and the
    record says so. The ring is allocated at once in this process's persistent arena (call
    ``kmemdump.init(table=True)`` first, so that the arena lies beside the published table), as a
    region named ``name`` of kind ``RING``: ``capacity * record_size + 64`` bytes, fixed.

    Readers take no lock: a record is written with one store and committed with a second, so a
    reader (the collector, after a SIGKILL) tells whole records from one caught half written.
    Writing costs a text encode and two stores, and no system call.

    :meth:`close` (which ``logging.shutdown`` calls at exit) keeps the records, so a dump taken
    after it still has them; :meth:`free` gives the memory back.
    """

    def __init__(
        self,
        capacity: int = DEFAULT_CAPACITY,
        record_size: int = DEFAULT_RECORD_SIZE,
        *,
        level: int | str = logging.NOTSET,
        name: str = "log",
    ) -> None:
        super().__init__(level)
        self.ring = PersistentRing(capacity, record_size, RingRole.LOG, name, host=ring_host())
        self.setFormatter(logging.Formatter(DEFAULT_FORMAT))

    @property
    def capacity(self) -> int:
        return self.ring.capacity

    @property
    def record_size(self) -> int:
        return self.ring.record_size

    @property
    def region_id(self) -> int:
        """The ID of the ring's region (0 once released)."""
        return self.ring.region_id if self.ring.view is not None else 0

    def handle(self, record: logging.LogRecord) -> logging.LogRecord | bool:  # type: ignore[override]
        """Filter and emit ``record``; with the GIL, without taking the handler's lock.

        Writers need no lock: each record is claimed a sequence number of its own and stored with
        one call, then committed with another (see :func:`kmemdump.formats.ring.make_appender`); if
        a writer is overtaken by a whole ring of others, the reader sees its slot as torn rather
        than mixed. A free-threaded interpreter takes the lock, as ``logging.Handler`` does.
        """
        if _NO_GIL:
            return super().handle(record)
        rv = self.filter(record)
        if isinstance(rv, logging.LogRecord):  # 3.12+: a filter may return a replacement record
            record = rv
        if rv:
            self.emit(record)
        return rv

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.ring.append(self.format(record), record.levelno, record.created)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def free(self) -> None:
        """Close the handler and give the ring's memory back (its records leave future dumps).

        (Not ``release``: ``logging.Handler.release`` is the handler's lock.)
        """
        self.close()
        self.ring.free()

    def __repr__(self) -> str:
        level = logging.getLevelName(self.level)
        return f"<RingHandler {self.ring.name} capacity={self.capacity} ({level})>"

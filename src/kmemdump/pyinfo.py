"""Publishing the Python layout description (PYCOREINFO) as the ``ID.PYCOREINFO`` region.

The blob is rebuilt and swapped in whenever an object of a type the map does not know yet is
registered, so the inspector can name every registered object's type without the binaries.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from .ids import ID
from .region import RegionKind
from .registry import Registry

__all__ = ["PyInfoPublisher", "publisher"]

log = logging.getLogger("kmemdump")


class PyInfoPublisher:
    """Keeps the registered PYCOREINFO blob in step with the types of registered objects."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._layout: Any = None
        self._registry: Registry | None = None
        self._blob: bytearray | None = None

    def start(self, registry: Registry) -> int:
        from .pylayout import build_layout

        with self._lock:
            self._layout = build_layout()
            self._registry = registry
            self._publish_locked()
        registry.set_type_listener(self.note_types)
        return int(ID.PYCOREINFO)

    def note_types(self, types: set[type]) -> None:
        with self._lock:
            if self._layout is None or not self._layout.add_types(types):
                return
            self._publish_locked()

    def _publish_locked(self) -> None:
        assert self._registry is not None
        blob = bytearray(self._layout.encode())
        self._registry.replace(ID.PYCOREINFO, blob, name="pycoreinfo", kind=RegionKind.PYCOREINFO)
        self._blob = blob


publisher = PyInfoPublisher()

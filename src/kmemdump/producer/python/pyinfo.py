"""Publishing the Python layout description (PYCOREINFO) as the ``ID.PYCOREINFO`` region.

The blob comes from :func:`kmemdump.producer.python.live.default` (the interpreter's checked layout plus a
type map). It is rebuilt and swapped in whenever an object of a type the map does not know yet is
registered, so the inspector can name every registered object's type without the binaries.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from kmemdump.errors import DecodeError
from kmemdump.errors import RegionExistsError
from kmemdump.formats.enums import RegionKind
from kmemdump.idenum import ID
from kmemdump.producer.forksafe import fork_safe_lock
from kmemdump.producer.registry import Registry

if TYPE_CHECKING:
    from kmemdump.producer.python.live import LiveInfo

__all__ = ["PyInfoPublisher", "publisher"]

log = logging.getLogger("kmemdump")


class PyInfoPublisher:
    """Keeps the registered PYCOREINFO blob in step with the types of registered objects."""

    def __init__(self) -> None:
        self._lock = fork_safe_lock()
        self._info: LiveInfo | None = None
        self._registry: Registry | None = None
        self._blob: bytearray | None = None
        self._address: int | None = None
        """Where the registered blob is: the region under ID.PYCOREINFO is ours only while it is there."""

    def start(self, registry: Registry) -> int:
        """Register the blob as ``ID.PYCOREINFO`` in ``registry`` and follow its object types.

        Raises :class:`DecodeError` when the layout failed its self-test (decoding is disabled
        on this interpreter), and :class:`RegionExistsError` when the application registered a region
        of its own under ``ID.PYCOREINFO`` (it is left in place); nothing is registered then.
        """
        from kmemdump.producer.python.live import default

        info = default()
        if not info.enabled:
            raise DecodeError(f"Python object decoding is disabled: {info.reason}")
        with self._lock:
            self._info = info
            self._registry = registry
        registry.set_type_listener(self.note_types)
        # objects registered before init() have types the map must name as well
        info.add_types(registry.object_types())
        try:
            with self._lock:
                self._publish_locked()
        except RegionExistsError:
            registry.set_type_listener(None)
            with self._lock:
                self._info = None
            raise
        return int(ID.PYCOREINFO)

    def published(self, registry: Registry) -> int | None:
        """``ID.PYCOREINFO`` while the region under it in ``registry`` is the blob published here."""
        if self._registry is not registry or self._address is None or ID.PYCOREINFO not in registry:
            return None
        return int(ID.PYCOREINFO) if registry.get(ID.PYCOREINFO).address == self._address else None

    def note_types(self, types: set[type]) -> None:
        """The registry's type listener: republish when ``types`` adds to the map."""
        with self._lock:
            if self._info is None or not self._info.add_types(types):
                return
            self._publish_locked()

    def _publish_locked(self) -> None:
        assert self._registry is not None and self._info is not None
        encoded = self._info.encode()
        if encoded is None:  # cannot happen for an enabled LiveInfo
            return
        blob = bytearray(encoded)
        try:
            self._registry.replace_own(
                ID.PYCOREINFO, self._address, blob, name="pycoreinfo", kind=RegionKind.PYCOREINFO
            )
        except RegionExistsError as err:
            if self._address is None:  # the first publication: init() reports it
                raise RegionExistsError(
                    f"ID.PYCOREINFO ({int(ID.PYCOREINFO)}) is already registered by the application "
                    f"(region {err.context.get('name')!r}); it was left in place and no layout was published",
                    id=int(ID.PYCOREINFO),
                ) from None
            log.warning("ID.PYCOREINFO now holds another region; the layout is no longer kept up to date")
            self._info = None
            return
        self._blob = blob
        self._address = self._registry.get(ID.PYCOREINFO).address


publisher = PyInfoPublisher()

"""The backend contract (the kernel's ``struct kmemdump_backend``) and the default no-op backend."""

from __future__ import annotations

from typing import Protocol
from typing import runtime_checkable

from kmemdump.producer.region import Region

__all__ = ["Backend", "NoopBackend"]


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


class NoopBackend:
    """The backend current from import on: accepts everything, publishes nothing."""

    name = "noop"

    def register_region(self, region: Region) -> None:
        return None

    def unregister_region(self, region: Region) -> None:
        return None

    def __repr__(self) -> str:
        return "NoopBackend()"

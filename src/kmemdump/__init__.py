"""kmemdump: register chosen memory regions so that an outside collector can dump just those.

The producer side (this package's top level) uses only the standard library and stays cheap to
import. See ``docs/api.md``.

    import kmemdump
    kmemdump.init(table=True, watchdog=5.0)
    state = kmemdump.alloc(4096, name="state")
    journal = kmemdump.alloc(4096, name="journal", persistent=True)  # survives a SIGKILL
    while serving:
        kmemdump.feed()
        ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from typing import Any

from kmemdump._version import __version__
from kmemdump.errors import AccessDeniedError
from kmemdump.errors import BackendError
from kmemdump.errors import CollectorError
from kmemdump.errors import DecodeError
from kmemdump.errors import DumpFormatError
from kmemdump.errors import ForeignTableError
from kmemdump.errors import InvalidRegionError
from kmemdump.errors import KmemdumpError
from kmemdump.errors import MissingExtraError
from kmemdump.errors import ProcessGoneError
from kmemdump.errors import RegionExistsError
from kmemdump.errors import RegistryFullError
from kmemdump.errors import TableFormatError
from kmemdump.errors import UnknownRegionError
from kmemdump.errors import UnreadableMemoryError
from kmemdump.errors import UsageError
from kmemdump.formats.kinds import RegionFlags
from kmemdump.formats.kinds import RegionKind
from kmemdump.ids import ID
from kmemdump.ids import NO_ID
from kmemdump.producer.api import InitReport
from kmemdump.producer.api import alloc
from kmemdump.producer.api import alloc_with
from kmemdump.producer.api import allocated
from kmemdump.producer.api import backend_register
from kmemdump.producer.api import backend_unregister
from kmemdump.producer.api import current_backend
from kmemdump.producer.api import default_registry
from kmemdump.producer.api import free
from kmemdump.producer.api import init
from kmemdump.producer.api import regions
from kmemdump.producer.api import register
from kmemdump.producer.api import register_object
from kmemdump.producer.api import replace
from kmemdump.producer.api import shutdown
from kmemdump.producer.api import static
from kmemdump.producer.api import unregister
from kmemdump.producer.backends.base import Backend
from kmemdump.producer.backends.base import NoopBackend
from kmemdump.producer.heartbeat import feed
from kmemdump.producer.heartbeat import set_watchdog as watchdog
from kmemdump.producer.heartbeat import start_feeder
from kmemdump.producer.heartbeat import stop_feeder
from kmemdump.producer.region import Region
from kmemdump.producer.registry import Registry
from kmemdump.producer.registry import ReplayFailure
from kmemdump.producer.registry import SwapReport

if TYPE_CHECKING:
    from kmemdump.producer.backends.table import SharedTableBackend

__all__ = [
    "ID",
    "NO_ID",
    "AccessDeniedError",
    "Backend",
    "BackendError",
    "CollectorError",
    "DecodeError",
    "DumpFormatError",
    "ForeignTableError",
    "InitReport",
    "InvalidRegionError",
    "KmemdumpError",
    "MissingExtraError",
    "NoopBackend",
    "ProcessGoneError",
    "Region",
    "RegionExistsError",
    "RegionFlags",
    "RegionKind",
    "Registry",
    "RegistryFullError",
    "ReplayFailure",
    "SharedTableBackend",
    "SwapReport",
    "TableFormatError",
    "UnknownRegionError",
    "UnreadableMemoryError",
    "UsageError",
    "__version__",
    "alloc",
    "alloc_with",
    "allocated",
    "backend_register",
    "backend_unregister",
    "current_backend",
    "default_registry",
    "feed",
    "free",
    "init",
    "regions",
    "register",
    "register_object",
    "replace",
    "shutdown",
    "start_feeder",
    "static",
    "stop_feeder",
    "unregister",
    "watchdog",
]


def __getattr__(name: str) -> Any:
    if name == "SharedTableBackend":
        from kmemdump.producer.backends.table import SharedTableBackend

        return SharedTableBackend
    raise AttributeError(f"module 'kmemdump' has no attribute {name!r}")

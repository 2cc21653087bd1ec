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

from .api import InitReport
from .api import alloc
from .api import alloc_with
from .api import allocated
from .api import backend_register
from .api import backend_unregister
from .api import current_backend
from .api import default_registry
from .api import free
from .api import init
from .api import regions
from .api import register
from .api import register_object
from .api import replace
from .api import static
from .api import unregister
from .backends.base import Backend
from .backends.base import NoopBackend
from .errors import AccessDeniedError
from .errors import BackendError
from .errors import CollectorError
from .errors import DecodeError
from .errors import DumpFormatError
from .errors import ForeignTableError
from .errors import InvalidRegionError
from .errors import KmemdumpError
from .errors import ProcessGoneError
from .errors import RegionExistsError
from .errors import RegistryFullError
from .errors import TableFormatError
from .errors import UnknownRegionError
from .errors import UnreadableMemoryError
from .heartbeat import feed
from .heartbeat import set_watchdog as watchdog
from .heartbeat import start_feeder
from .heartbeat import stop_feeder
from .ids import ID
from .ids import NO_ID
from .region import Region
from .region import RegionFlags
from .region import RegionKind
from .registry import Registry
from .registry import ReplayFailure
from .registry import SwapReport

if TYPE_CHECKING:
    from .backends.table import SharedTableBackend

__version__ = "0.1.0"

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
    "start_feeder",
    "static",
    "stop_feeder",
    "unregister",
    "watchdog",
]


def __getattr__(name: str) -> Any:
    if name == "SharedTableBackend":
        from .backends.table import SharedTableBackend

        return SharedTableBackend
    raise AttributeError(f"module 'kmemdump' has no attribute {name!r}")

"""kmemdump: register chosen memory regions so that an outside collector can dump just those.

The producer side (this package's top level) uses only the standard library and stays cheap to
import: ``import kmemdump`` loads the errors, and the IDs, the kinds and each function or class of
the producer's API the first time it is used (so the command line, which imports this package too,
never loads the producer). See ``docs/api.md``.

    import kmemdump
    kmemdump.init(table=True, watchdog=5.0)
    state = kmemdump.alloc(4096, name="state")
    journal = kmemdump.alloc(4096, name="journal", persistent=True)  # survives a SIGKILL
    while serving:
        kmemdump.feed()
        ...
"""

from __future__ import annotations

from kmemdump._version import __version__
from kmemdump.errors import AccessDeniedError
from kmemdump.errors import BackendError
from kmemdump.errors import CollectorBusyError
from kmemdump.errors import CollectorError
from kmemdump.errors import DecodeError
from kmemdump.errors import DumpFormatError
from kmemdump.errors import ForeignProcessError
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

TYPE_CHECKING = False  # typing is not imported at run time: it costs milliseconds
if TYPE_CHECKING:
    from typing import Any

    from kmemdump.formats.enums import RegionFlags
    from kmemdump.formats.enums import RegionKind
    from kmemdump.idenum import ID
    from kmemdump.ids import NO_ID
    from kmemdump.producer.api import InitReport
    from kmemdump.producer.api import alloc
    from kmemdump.producer.api import alloc_with
    from kmemdump.producer.api import allocated
    from kmemdump.producer.api import backend_register
    from kmemdump.producer.api import backend_unregister
    from kmemdump.producer.api import current_backend
    from kmemdump.producer.api import default_registry
    from kmemdump.producer.api import fault_file
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
    from kmemdump.producer.backends.table import SharedTableBackend
    from kmemdump.producer.heartbeat import feed
    from kmemdump.producer.heartbeat import set_watchdog as watchdog
    from kmemdump.producer.heartbeat import start_feeder
    from kmemdump.producer.heartbeat import stop_feeder
    from kmemdump.producer.region import Region
    from kmemdump.producer.registry import Registry
    from kmemdump.producer.registry import ReplayFailure
    from kmemdump.producer.registry import SwapReport

_LAZY: dict[str, tuple[str, str]] = {
    "ID": ("kmemdump.idenum", "ID"),
    "NO_ID": ("kmemdump.ids", "NO_ID"),
    "RegionFlags": ("kmemdump.formats.enums", "RegionFlags"),
    "RegionKind": ("kmemdump.formats.enums", "RegionKind"),
    "InitReport": ("kmemdump.producer.api", "InitReport"),
    "alloc": ("kmemdump.producer.api", "alloc"),
    "alloc_with": ("kmemdump.producer.api", "alloc_with"),
    "allocated": ("kmemdump.producer.api", "allocated"),
    "backend_register": ("kmemdump.producer.api", "backend_register"),
    "backend_unregister": ("kmemdump.producer.api", "backend_unregister"),
    "current_backend": ("kmemdump.producer.api", "current_backend"),
    "default_registry": ("kmemdump.producer.api", "default_registry"),
    "fault_file": ("kmemdump.producer.api", "fault_file"),
    "free": ("kmemdump.producer.api", "free"),
    "init": ("kmemdump.producer.api", "init"),
    "regions": ("kmemdump.producer.api", "regions"),
    "register": ("kmemdump.producer.api", "register"),
    "register_object": ("kmemdump.producer.api", "register_object"),
    "replace": ("kmemdump.producer.api", "replace"),
    "shutdown": ("kmemdump.producer.api", "shutdown"),
    "static": ("kmemdump.producer.api", "static"),
    "unregister": ("kmemdump.producer.api", "unregister"),
    "Backend": ("kmemdump.producer.backends.base", "Backend"),
    "NoopBackend": ("kmemdump.producer.backends.base", "NoopBackend"),
    "feed": ("kmemdump.producer.heartbeat", "feed"),
    "watchdog": ("kmemdump.producer.heartbeat", "set_watchdog"),
    "start_feeder": ("kmemdump.producer.heartbeat", "start_feeder"),
    "stop_feeder": ("kmemdump.producer.heartbeat", "stop_feeder"),
    "Region": ("kmemdump.producer.region", "Region"),
    "Registry": ("kmemdump.producer.registry", "Registry"),
    "ReplayFailure": ("kmemdump.producer.registry", "ReplayFailure"),
    "SwapReport": ("kmemdump.producer.registry", "SwapReport"),
    "SharedTableBackend": ("kmemdump.producer.backends.table", "SharedTableBackend"),
}
"""The producer's API, and the IDs and kinds (enums: ``enum`` costs milliseconds to import): each name is
imported from its module the first time it is used."""

__all__ = [
    "ID",
    "NO_ID",
    "AccessDeniedError",
    "Backend",
    "BackendError",
    "CollectorBusyError",
    "CollectorError",
    "DecodeError",
    "DumpFormatError",
    "ForeignProcessError",
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
    "fault_file",
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
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module 'kmemdump' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(where[0]), where[1])
    globals()[name] = value  # later uses find it directly, at no cost
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

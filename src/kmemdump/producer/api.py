"""The module-level API: every function acts on one process-wide default registry."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import IO
from typing import TYPE_CHECKING
from typing import Any
from typing import Literal
from typing import TypeVar
from typing import overload

from kmemdump.errors import InvalidRegionError
from kmemdump.errors import KmemdumpError
from kmemdump.errors import RegionExistsError
from kmemdump.formats.enums import RegionFlags
from kmemdump.formats.enums import RegionKind
from kmemdump.idenum import ID
from kmemdump.ids import NO_ID
from kmemdump.producer import alloc as _alloc
from kmemdump.producer import heartbeat as _heartbeat
from kmemdump.producer.annotations import Annotation
from kmemdump.producer.annotations import caller_origin
from kmemdump.producer.annotations import section
from kmemdump.producer.backends.base import Backend
from kmemdump.producer.forksafe import fork_safe_lock
from kmemdump.producer.heartbeat import stop_feeder
from kmemdump.producer.region import Region
from kmemdump.producer.registry import Registry
from kmemdump.producer.registry import SwapReport
from kmemdump.record import frozen

if TYPE_CHECKING:
    from kmemdump.producer.arena import Arena

__all__ = [
    "InitReport",
    "alloc",
    "alloc_with",
    "allocated",
    "backend_register",
    "backend_unregister",
    "current_backend",
    "default_registry",
    "fault_file",
    "free",
    "init",
    "regions",
    "register",
    "register_object",
    "replace",
    "shutdown",
    "static",
    "unregister",
]

log = logging.getLogger("kmemdump")
T = TypeVar("T")

_registry = Registry()


def default_registry() -> Registry:
    """The registry the module-level functions use."""
    return _registry


def register(
    target: Any,
    size: int | None = None,
    *,
    id: int = NO_ID,
    name: str | None = None,
    depth: int | None = None,
) -> int:
    """Register a memory region and return its ID (the requested one, or a new one for ``NO_ID``).

    ``target`` is a buffer (bytes, bytearray, memoryview, mmap, array.array, a C-contiguous
    numpy array), a ctypes instance, a raw ``int`` address with ``size``, or any other object (its
    own memory at ``id(obj)``). ``depth`` registers an object graph (see :func:`register_object`).
    """
    return _registry.register(target, size, id=id, name=name, depth=depth)


def register_object(
    obj: Any, *, id: int = NO_ID, name: str | None = None, depth: int = 0, snapshot: bool = False
) -> int:
    """Register ``obj`` as the root of a live object graph: at dump time the collector walks it,
    ``depth`` levels deep, in the held process, so the dump shows the values of that moment.

    ``snapshot=True`` registers the memory the graph occupies now instead (what it held at
    registration; see :meth:`Registry.register_object`).
    """
    return _registry.register_object(obj, id=id, name=name, depth=depth, snapshot=snapshot)


def unregister(region_id: int) -> None:
    """Remove the region; an unknown ID raises :class:`UnknownRegionError`."""
    _registry.unregister(region_id)


def replace(region_id: int, target: Any, size: int | None = None, *, name: str | None = None) -> int:
    """Atomically swap what ``region_id`` points at (e.g. after a buffer was reallocated)."""
    return _registry.replace(region_id, target, size, name=name)


def regions() -> tuple[Region, ...]:
    """A consistent snapshot of the registered regions, in ID order."""
    return _registry.regions()


@overload
def alloc(
    size: int,
    *,
    id: int = NO_ID,
    name: str | None = None,
    replace: bool = False,
    persistent: Literal[False] = False,
) -> bytearray: ...


@overload
def alloc(
    size: int, *, id: int = NO_ID, name: str | None = None, replace: bool = False, persistent: Literal[True]
) -> memoryview: ...


@overload
def alloc(
    size: int, *, id: int = NO_ID, name: str | None = None, replace: bool = False, persistent: bool
) -> bytearray | memoryview: ...


def alloc(
    size: int, *, id: int = NO_ID, name: str | None = None, replace: bool = False, persistent: bool = False
) -> bytearray | memoryview:
    """A registered, zeroed buffer of ``size`` bytes: a ``bytearray``, or with ``persistent=True``
    a writable ``memoryview`` into this process's persistent arena.

    A persistent buffer lives in a shared file beside the table, so its contents survive the death
    of the process (SIGKILL included; not a reboot) and the collector reads them from the file. It
    has a fixed size; the arena's size is set by ``init(arena_size=...)`` (1 MiB by default) and a
    full arena raises :class:`RegistryFullError`. Give it back with :func:`free`.
    """
    if not persistent:
        return _alloc.alloc(_registry, size, id=id, name=name, replace=replace)
    arena = _ensure_arena()
    if replace and id != NO_ID and id in _registry:
        _alloc.free(_registry, id, arena=arena)
    return _alloc.alloc_persistent(_registry, arena, size, id=id, name=name)


def _persistent_buffer(size: int, *, kind: RegionKind, name: str) -> memoryview:
    """A zeroed persistent buffer registered as ``kind`` (one of our formats, such as a record ring).

    For kmemdump's own integrations (:mod:`kmemdump.logging` …); give it back with :func:`free`.
    """
    return _alloc.alloc_persistent(_registry, _ensure_arena(), size, name=name, kind=kind)


class _RingHost:
    """What a record ring (:class:`~kmemdump.producer.rings.PersistentRing`) takes from this module:
    persistent buffers of kind ``RING`` in the default registry."""

    def allocate(self, size: int, name: str) -> tuple[memoryview, int]:
        view = _persistent_buffer(size, kind=RegionKind.RING, name=name)
        return view, _registry.ids_of(view)[0]

    def free(self, view: memoryview) -> None:
        free(view)

    def forget(self, region_id: int) -> None:
        unregister(region_id)

    def publishing(self) -> bool:
        return bool(getattr(_registry.current_backend(), "published", False))


_ring_host = _RingHost()


def ring_host() -> _RingHost:
    """The host of the process's record rings (the default registry and the persistent arena)."""
    return _ring_host


def _ensure_arena() -> Arena:
    from kmemdump.producer import arena as _arena

    arena = _arena.ensure()
    if _registry.persistent_range != (arena.base, arena.size):  # new, or a forked child's own
        _registry.set_persistent_range(arena.base, arena.size)
    return arena


def _current_arena() -> Arena | None:
    """The persistent arena, if this process has one (without importing the module otherwise)."""
    module = sys.modules.get(f"{__package__}.arena")
    if module is None:
        return None
    arena: Arena | None = module.current()
    return arena


def alloc_with(
    fn: Callable[..., T],
    *args: Any,
    id: int = NO_ID,
    name: str | None = None,
    size: int | None = None,
    replace: bool = False,
    **kwargs: Any,
) -> T:
    """Call the allocator ``fn(*args, **kwargs)`` and register its result."""
    return _alloc.alloc_with(_registry, fn, *args, id=id, name=name, size=size, replace=replace, **kwargs)


def free(obj_or_id: Any, fn: Callable[..., Any] | None = None, *args: Any) -> None:
    """Unregister by ID or object, then call the release function ``fn(*args)`` if given.

    A persistent buffer (from ``alloc(..., persistent=True)``, or its ID) also goes back to the
    arena: the view is released, so using it afterwards raises ``ValueError``.
    """
    _alloc.free(_registry, obj_or_id, fn, *args, arena=_current_arena())


def allocated(size: int, *, id: int = NO_ID, name: str | None = None) -> AbstractContextManager[bytearray]:
    """``with kmemdump.allocated(n) as buf:`` — registered for the block's duration."""
    return _alloc.allocated(_registry, size, id=id, name=name)


def static(
    obj: T,
    *,
    id: int = NO_ID,
    name: str | None = None,
    size: int | None = None,
    depth: int | None = None,
) -> T:
    """Annotate a long-lived object for registration by :func:`init`; returns ``obj`` unchanged.

    ``BUF = kmemdump.static(bytearray(4096), id=kmemdump.ID.USER_START, name="events")``
    """
    section.record(Annotation(obj, id, name, size, depth, caller_origin()))
    return obj


def backend_register(backend: Backend) -> SwapReport:
    """Make ``backend`` current; every registered region is replayed into it."""
    report = _registry.backend_register(backend)
    _attach_watchdog(backend)
    return report


def backend_unregister(backend: Backend) -> bool:
    """Remove ``backend`` if current (reverting to the no-op backend); False otherwise."""
    removed = _registry.backend_unregister(backend)
    if removed:
        _attach_watchdog(None)
    return removed


def current_backend() -> Backend:
    """The backend the registry drives now (:class:`NoopBackend` until one is registered)."""
    return _registry.current_backend()


def _attach_watchdog(backend: Backend | None) -> None:
    _heartbeat.attach(backend)


# --- init ----------------------------------------------------------------------------------


@frozen
class InitReport:
    """What :func:`init` did."""

    banner_id: int | None
    pycoreinfo_id: int | None
    annotations: tuple[int, ...]
    failures: tuple[tuple[str, str], ...]
    table: str | None
    """Path of the shared table, when one is published."""


class _InitState:
    """Whether the first :func:`init` has run, in which process, and the lock that makes it run once."""

    def __init__(self) -> None:
        self.lock = fork_safe_lock()
        self.done = False
        self.pid = 0
        """The process the banner was made for (a forked child re-arms: its own pid, its own argv)."""
        self.banner_address: int | None = None
        """Where the banner init() registered is: the region under ID.BANNER is ours only while there."""
        self.started_by = ""
        """Who made the first call on the program's behalf (``kmemdump run``'s autoinit), or ""."""


_init = _InitState()


def init(
    *,
    capacity: int | None = None,
    table: bool = False,
    directory: str | os.PathLike[str] | None = None,
    arena_size: int | None = None,
    watchdog: float | None = None,
    feeder: bool = False,
    banner: bool = True,
    pycoreinfo: bool = True,
    entry_points: bool = True,
    stop_signals: bool = True,
    faulthandler: bool = False,
    excepthook: bool = False,
) -> InitReport:
    """Set kmemdump up for this process. Safe to call more than once.

    The first call sizes the registry (``capacity``, default 201 slots), registers the banner and the
    Python layout description, and walks the static annotations. ``table=True`` publishes the registry
    in a shared table (under ``directory``, default ``$KMEMDUMP_DIR`` or ``/dev/shm/kmemdump-<uid>``);
    ``watchdog=S`` arms a heartbeat timeout of S seconds, fed by :func:`kmemdump.feed` from your main
    loop, or by a background thread with ``feeder=True`` (which detects only whole-process stalls).
    ``arena_size`` is the size in bytes of the persistent arena (default 1 MiB), created beside the
    table on the first ``alloc(..., persistent=True)``, or by ``table=True``, which moves the banner
    into it so that even the dump of a killed process says which process it was; it can be set
    until the arena exists.
    With ``table=True`` a graceful stop is not taken for a death: where SIGTERM and SIGINT still
    have their default disposition, a handler removes the table and the arena, then lets the
    signal end the process as before (``stop_signals=False`` leaves the signals alone; see
    :mod:`kmemdump.producer.stopping`).
    ``faulthandler=True`` points :mod:`faulthandler` at a file beside the table, so that the Python
    traceback of a SIGSEGV, SIGABRT, SIGBUS, SIGFPE or SIGILL (and of each
    ``faulthandler.dump_traceback_later`` given :func:`fault_file`) is in the process's dumps, even
    its death dump. ``excepthook=True`` records every uncaught exception's traceback in a persistent
    ring, and an exception that ends the program leaves its table for the collector, so that its
    death dump says why it exited with status 1 (see ``docs/integrations.md``).
    Later calls only add what earlier ones did not enable. Under ``kmemdump run`` the autoinit hook
    makes the first call before the program starts, with ``run --capacity N`` (default 201): a
    program's ``init(capacity=M)`` with another M then raises :class:`InvalidRegionError` naming
    the ``--capacity`` to give, rather than going on with a registry of the wrong size.

    In a forked child (``os.fork``, a ``multiprocessing`` or gunicorn worker) the parent's table,
    watchdog and feeder are not inherited; the child's first call re-arms it: a banner with the
    child's own pid and argv, and its own table and watchdog when asked for. A child that does not
    call it publishes nothing.
    """
    failures: list[tuple[str, str]] = []
    with _init.lock:
        if _init.done and _init.started_by and capacity is not None and capacity != _registry.capacity:
            raise InvalidRegionError(
                f"{_init.started_by} started kmemdump in this process with {_registry.capacity} region "
                f"slots before the program's init(capacity={capacity}), and a published registry cannot "
                f"be resized: start the program with '{_init.started_by} --capacity {capacity}'",
                capacity=capacity,
                current=_registry.capacity,
            )
        if arena_size is not None or (table and directory is not None):
            from kmemdump.producer import arena as _arena  # checked first: a bad size changes nothing

            _arena.configure(size=arena_size, directory=directory if table else None)
        if _init.done and _init.pid != os.getpid() and banner and ID.BANNER in _registry:
            _register_banner(failures)  # a forked child: its own pid and argv (moved to its own arena below)
        _init.pid = os.getpid()
        first = not _init.done
        if first and capacity is not None:
            _registry.set_capacity(capacity)
        banner_id = _register_banner(failures) if first and banner else _own_banner()
        info_id = _publish_pycoreinfo(failures) if first and pycoreinfo else _own_pycoreinfo()
        walked = section.walk(_registry, entry_points=entry_points) if first else None
        _init.done = True
        if table:  # before the table exists: a stop signal from now on removes what is published
            _on_stop_and_end(stop_signals)
        table_path = _ensure_table(directory, failures) if table else _current_table_path()
        if table and banner and _own_banner() is not None:
            _persist_banner(failures)
        if table:
            _check_dumpable(failures)
        if faulthandler:
            _enable_faulthandler(table_path)
        if excepthook:
            from kmemdump.producer.faults import install_excepthook

            install_excepthook(ring_host())
        if watchdog is not None:
            _heartbeat.set_watchdog(watchdog)
        if feeder:
            _heartbeat.start_feeder()
    if walked is not None:
        failures.extend(walked.failed)
    return InitReport(banner_id, info_id, walked.registered if walked else (), tuple(failures), table_path)


def _started_by(who: str) -> None:
    """Say that the first :func:`init` was made on the program's behalf (``kmemdump run``'s autoinit
    hook): a later ``init(capacity=N)`` of the program that cannot be honoured then raises."""
    with _init.lock:
        _init.started_by = who


def shutdown() -> None:
    """Remove this process's table and persistent arena now, as a clean exit would.

    What follows is not a death for a collector: call it before ``os._exit`` (which skips the
    ``atexit`` hook that does this on a normal exit). ``multiprocessing`` children are taken care
    of without it. Registration goes on working (into no table); ``init(table=True)`` publishes a
    new table.
    """
    stop_feeder()
    backend = _registry.current_backend()
    from kmemdump.producer.backends.table import SharedTableBackend

    if isinstance(backend, SharedTableBackend):
        backend.close()
    arena = _current_arena()
    if arena is not None:
        arena.remove_file()
    _remove_fault_file()


def _remove_for_stop() -> None:
    """A stop signal's cleanup: no lock taken (the interrupted code may hold one), the process ends next."""
    backend = _registry.current_backend()
    remove = getattr(backend, "remove_for_stop", None)
    if callable(remove):
        remove()
    arena = _current_arena()
    if arena is not None:
        arena.remove_file()
    _remove_fault_file()


def _enable_faulthandler(table_path: str | None) -> None:
    from pathlib import Path

    from kmemdump.producer import faults

    if table_path is not None:
        where = Path(table_path).parent
    else:
        arena = _current_arena()
        if arena is not None:
            where = arena.directory
        else:
            from kmemdump.formats.table import default_dir

            where = Path(default_dir())
    faults.enable_faulthandler(where)


def fault_file() -> IO[bytes] | None:
    """The file ``init(faulthandler=True)`` pointed :mod:`faulthandler` at (None before that).

    Give it to ``faulthandler.dump_traceback_later(timeout, file=kmemdump.fault_file())`` and the
    tracebacks of a timeout land in the process's dumps too.
    """
    module = sys.modules.get(f"{__package__}.faults")
    if module is None:
        return None
    found: IO[bytes] | None = module.fault_file()
    return found


def _remove_fault_file() -> None:
    module = sys.modules.get(f"{__package__}.faults")
    if module is not None:
        module.remove_file()


def _on_stop_and_end(stop_signals: bool) -> None:
    from kmemdump.producer import stopping

    if stop_signals:
        stopping.install(_remove_for_stop)
    stopping.at_process_end(shutdown)


def _check_dumpable(failures: list[tuple[str, str]]) -> None:
    from kmemdump.producer.backends.table import is_dumpable

    if not is_dumpable():
        failures.append(
            (
                "dumpable",
                "this process is not dumpable (it changed user, or called prctl(PR_SET_DUMPABLE, 0)): only a "
                "collector with CAP_SYS_PTRACE can read it; if that is acceptable for this program, call "
                "prctl(PR_SET_DUMPABLE, 1) after dropping privileges (see docs/collector.md)",
            )
        )


def _persist_banner(failures: list[tuple[str, str]]) -> None:
    """Move the banner into the persistent arena, so that even a death dump says who died."""
    if _registry.get(ID.BANNER).flags & RegionFlags.PERSISTENT:
        return
    from kmemdump.producer.python.banner import make_banner

    data = make_banner()
    try:
        view = alloc(len(data), id=ID.BANNER, name="banner", replace=True, persistent=True)
    except KmemdumpError as err:
        failures.append(("banner", f"kept in ordinary memory, not in the arena: {err}"))
        _register_banner(failures)
        return
    view[:] = data
    _init.banner_address = _registry.get(ID.BANNER).address


def _own_pycoreinfo() -> int | None:
    """``ID.PYCOREINFO`` while the region under it is the layout init() published."""
    module = sys.modules.get(f"{__package__}.python.pyinfo")
    return None if module is None else module.publisher.published(_registry)


def _own_banner() -> int | None:
    """``ID.BANNER`` while the region registered under it is the banner init() put there."""
    address = _init.banner_address
    if address is None or ID.BANNER not in _registry:
        return None
    return int(ID.BANNER) if _registry.get(ID.BANNER).address == address else None


def _register_banner(failures: list[tuple[str, str]]) -> int | None:
    """Register this process's banner under ``ID.BANNER`` (or refresh ours, in a forked child).

    The kernel design's rule holds for our own IDs too: a region the application registered under
    ``ID.BANNER`` is left in place, never replaced or freed; ``failures`` says so.
    """
    from kmemdump.producer.python.banner import make_banner

    try:
        rid = _registry.replace_own(ID.BANNER, _init.banner_address, make_banner(), name="banner")
    except RegionExistsError as err:
        failures.append(
            (
                "banner",
                f"ID.BANNER ({int(ID.BANNER)}) is already registered by the application (region "
                f"{err.context.get('name')!r}); it was left in place and no banner was registered",
            )
        )
        return None
    _init.banner_address = _registry.get(ID.BANNER).address
    return rid


def _publish_pycoreinfo(failures: list[tuple[str, str]]) -> int | None:
    from kmemdump.producer.python.pyinfo import publisher

    try:
        return publisher.start(_registry)
    except KmemdumpError as err:
        failures.append(("pycoreinfo", str(err)))
        log.warning("Python layout description not published: %s", err)
    except Exception as err:  # optional metadata must not break the application's start-up
        failures.append(("pycoreinfo", f"{type(err).__name__}: {err}"))
        log.warning("Python layout description not published", exc_info=True)
    return None


def _current_table_path() -> str | None:
    path = getattr(_registry.current_backend(), "path", None)
    return None if path is None else str(path)


def _ensure_table(directory: str | os.PathLike[str] | None, failures: list[tuple[str, str]]) -> str:
    from kmemdump.producer.backends.table import SharedTableBackend

    current = _registry.current_backend()
    if isinstance(current, SharedTableBackend) and not current.closed:
        if not current.published:  # a forked child: the parent's table was left to the parent
            return str(current.reopen_for_child())
        return str(current.path)
    backend = SharedTableBackend(directory, capacity=_registry.capacity)
    if backend.fallback:  # a squatted or untrustworthy directory: published in a private one instead
        failures.append(("table", backend.fallback))
    report = backend_register(backend)
    for failure in report.failures:
        log.warning("region %d not published in the table: %s", failure.region.id, failure.error)
    return str(backend.path)

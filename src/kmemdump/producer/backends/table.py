"""``SharedTableBackend``: publishes the registry's regions in this process's shared table file.

The kernel design's backend "notes the address and size in a table written to shared memory that
firmware can read". Here the table is a file ``<pid>-<start_time>.table`` in a private directory
on tmpfs (``$KMEMDUMP_DIR`` or ``/dev/shm/kmemdump-<uid>``), mmapped and laid out as described in
:mod:`kmemdump.formats.table`. The collector finds it there, reads it with ``pread`` and copies
the regions it lists.

Life cycle: the table is built under a temporary name and hard-linked into place once complete
(state ``RUNNING``), so a reader never sees a half-initialised table. :meth:`close` (also run at
interpreter exit) sets ``EXITING`` and removes the file; a process that dies or hangs leaves it
for the collector. A forked child detaches from the parent's mapping at once and publishes
nothing until its owner calls :meth:`SharedTableBackend.reopen_for_child`.

Standard library only; ``ctypes`` is imported on the first ``prctl`` call.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import mmap
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

from kmemdump.errors import BackendError
from kmemdump.errors import RegionExistsError
from kmemdump.errors import RegistryFullError
from kmemdump.formats.enums import RegionFlags
from kmemdump.formats.enums import TableState
from kmemdump.formats.kinds import graph_word
from kmemdump.formats.table import FLAG_LIVE_LOCK
from kmemdump.formats.table import LIVE_LOCK_BYTE
from kmemdump.formats.table import MAX_CAPACITY
from kmemdump.formats.table import TABLE_SUFFIX
from kmemdump.formats.table import TableWriter
from kmemdump.formats.table import default_dir
from kmemdump.formats.table import lock_byte
from kmemdump.formats.table import table_size
from kmemdump.procinfo import self_start_time
from kmemdump.producer import arena as _arena
from kmemdump.producer.backends.base import SlotSink
from kmemdump.producer.forksafe import fork_safe_lock
from kmemdump.producer.heartbeat import current as _watchdog_current
from kmemdump.producer.heartbeat import detach as _watchdog_detach
from kmemdump.producer.heartbeat import refresh as _watchdog_refresh
from kmemdump.producer.region import Region
from kmemdump.producer.sharedfile import TABLES_STAGE
from kmemdump.producer.sharedfile import cancel_at_exit
from kmemdump.producer.sharedfile import create_mapped
from kmemdump.producer.sharedfile import live_paths
from kmemdump.producer.sharedfile import on_exit
from kmemdump.producer.sharedfile import open_table_dir

__all__ = ["DEFAULT_CAPACITY", "PR_SET_PTRACER", "SharedTableBackend", "is_dumpable"]

log = logging.getLogger("kmemdump")

DEFAULT_CAPACITY = 201
PR_SET_PTRACER = 0x59616D61
"""``prctl`` option of the Yama LSM: let one named process ptrace us (``'Yama'`` in ASCII)."""

_PERSISTENT = int(RegionFlags.PERSISTENT)
_GRAPH_SHIFT = 16
"""A region's flags from the registry carry the entry's graph word from this bit on (see SlotSink.put)."""

_backends: weakref.WeakSet[SharedTableBackend] = weakref.WeakSet()
_Fields = tuple[int, str, int, int, int, int]
"""A region as the table stores it: (id, name, address, size, kind, flags)."""


class SharedTableBackend:
    """A backend that publishes every region in a shared table file (format v1).

    ``directory`` defaults to :func:`kmemdump.formats.table.default_dir`; it is created with mode
    0700, and an existing one must be a real directory owned by us and not writable by group or
    others. ``capacity`` is the number of entry slots (use the registry's capacity). Registration
    and unregistration are O(1) and thread-safe.
    """

    name = "shared-table"

    def __init__(
        self, directory: str | os.PathLike[str] | None = None, *, capacity: int = DEFAULT_CAPACITY
    ) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or not 0 < capacity <= MAX_CAPACITY:
            raise BackendError(f"capacity must be an int in 1..{MAX_CAPACITY}", capacity=capacity)
        self.directory = Path(directory if directory is not None else default_dir())
        self.capacity = capacity
        self._lock = fork_safe_lock()
        self._own_lock = self._lock
        self._entries: dict[int, _Fields] = {}
        """What each used slot holds, by slot: (id, name, address, size, kind, flags)."""
        self._slot_of: dict[int, int] = {}
        """Slot by region ID, for the callbacks (a binding registry names slots itself)."""
        self._free = list(range(capacity - 1, -1, -1))  # pop() gives the lowest slot
        self._bound = False
        self._writer: TableWriter | None = None
        self._mm: mmap.mmap | None = None
        self._path: Path | None = None
        self._dir_fd = -1
        self._live_fd = -1
        """Holds the liveness lock on the table file (the kernel drops it when this process dies)."""
        self._owner_pid = 0
        self._granted = 0
        self._closed = False
        self._arena_range: tuple[int, int] | None = None
        """``[base, end)`` of the arena this table publishes; PERSISTENT is kept only inside it."""
        self._dir_fd, self.directory, self.fallback = open_table_dir(self.directory)
        """Why the table is not in the directory asked for ("" when it is): see :func:`open_table_dir`."""
        try:
            self._publish()
        except BaseException:
            os.close(self._dir_fd)
            self._dir_fd = -1
            raise
        _backends.add(self)
        on_exit(TABLES_STAGE, self.close)

    def __repr__(self) -> str:
        where = self._path if self._path is not None else "unpublished"
        return f"SharedTableBackend({str(where)!r}, capacity={self.capacity}, regions={len(self._entries)})"

    def __len__(self) -> int:
        return len(self._entries)

    # --- state -------------------------------------------------------------------------------

    @property
    def published(self) -> bool:
        """True while this process has a table it keeps current."""
        return self._writer is not None

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran: this backend publishes nothing any more."""
        return self._closed

    @property
    def path(self) -> Path:
        """The table file; :class:`BackendError` when none is published (closed, or a forked child)."""
        if self._path is None:
            raise BackendError("no table is published", backend=self.name)
        return self._path

    @property
    def writer(self) -> TableWriter:
        """The table's writer; :class:`BackendError` when none is published."""
        writer = self._writer
        if writer is None:
            raise BackendError("no table is published", backend=self.name)
        return writer

    @property
    def granted_pid(self) -> int:
        """The collector pid last passed to ``prctl(PR_SET_PTRACER)`` (0 when none)."""
        return self._granted

    # --- the Backend protocol -------------------------------------------------------------------

    def register_region(self, region: Region) -> None:
        """Publish ``region`` in a free slot; raises (refusing it) when the table cannot hold it."""
        with self._lock:
            self._check_unbound()
            region_id = region.id
            if region_id in self._slot_of:
                raise RegionExistsError("ID already in the shared table", id=region_id)
            free = self._free
            if not free:
                raise RegistryFullError("the shared table is full", capacity=self.capacity)
            slot = free[-1]
            flags = region.flags | graph_word(region.graph_depth) << _GRAPH_SHIFT
            self._put_checked(slot, region_id, region.name, region.address, region.size, region.kind, flags)
            free.pop()
            self._slot_of[region_id] = slot

    def unregister_region(self, region: Region) -> None:
        """Remove ``region`` from the table; an ID the table does not hold is ignored."""
        with self._lock:
            self._check_unbound()
            slot = self._slot_of.pop(region.id, None)
            if slot is not None:
                self.clear(slot)
                self._free.append(slot)

    def _check_unbound(self) -> None:
        if self._bound:
            raise BackendError("this table is driven by the registry it was registered with", id=None)

    # --- driven by slot, by the registry that holds this backend ------------------------------------

    def bind(self, lock: threading.Lock, capacity: int) -> SlotSink | None:
        """Let the registry drive this table by slot under ``lock`` (see :class:`SlotBackend`).

        Refused (None) while the table holds regions or has fewer slots than the registry.
        """
        with self._lock:
            if self._entries or capacity > self.capacity or self._bound:
                return None
            self._bound = True
            self._lock = lock
        return self

    def unbind(self) -> None:
        """The registry let go (it has cleared every slot it used); back to this table's own lock."""
        self._bound = False
        self._slot_of = {fields[0]: slot for slot, fields in self._entries.items()}
        self._free = sorted(set(range(self.capacity)) - set(self._entries), reverse=True)
        self._lock = self._own_lock

    def put(  # noqa: PLR0917 - the entry's fields, as the format has them
        self, slot: int, id: int, name: str, address: int, size: int, kind: int, flags: int
    ) -> None:
        """:class:`SlotSink`: publish a region in ``slot`` (the caller holds the lock).

        The binding registry has checked every field (IDs, the address range, a clean name, a
        known kind), so the entry is written unchecked.
        """
        writer = self._writer  # None once closed (or in a forked child until it publishes)
        if writer is not None:
            raw = name.encode() if name else b""
            if flags:  # persistent, or an object-graph root: the rare case, kept off the common path
                table_flags = self._table_flags(address, size, writer) if flags & _PERSISTENT else 0
                collector = writer.put_trusted(
                    slot, id, raw, address, size, kind, table_flags, flags >> _GRAPH_SHIFT
                )
            else:
                collector = writer.put_trusted(slot, id, raw, address, size, kind, 0)
            if collector and collector != self._granted:
                self._grant(collector)
        elif self._closed:
            raise BackendError("the shared table is closed", id=id)
        self._entries[slot] = (id, name, address, size, kind, flags)

    def _put_checked(  # noqa: PLR0917 - as put()
        self, slot: int, id: int, name: str, address: int, size: int, kind: int, flags: int
    ) -> None:
        if self._closed:
            raise BackendError("the shared table is closed", id=id)
        writer = self._writer
        if writer is not None:
            table_flags = self._table_flags(address, size, writer) if flags & _PERSISTENT else 0
            collector = writer.put(slot, id, name, address, size, kind, table_flags, flags >> _GRAPH_SHIFT)
            if collector and collector != self._granted:
                self._grant(collector)
        self._entries[slot] = (id, name, address, size, kind, flags)

    def clear(self, slot: int) -> None:
        """:class:`SlotSink`: free ``slot`` (the caller holds the lock)."""
        if self._entries.pop(slot, None) is None:
            return
        writer = self._writer
        if writer is not None:
            collector = writer.clear(slot)
            if collector and collector != self._granted:
                self._grant(collector)

    # --- the persistent arena ---------------------------------------------------------------------

    def _table_flags(self, address: int, size: int, writer: TableWriter) -> int:
        """The entry flags of a persistent region: PERSISTENT only when it lies in the arena this
        table names.

        The first persistent region publishes the process's arena in the header. A region flagged
        persistent outside that arena (a forked child's inherited buffer, an arena in another
        directory) is published as an ordinary region.
        """
        if self._arena_range is None:
            self._publish_arena(writer)
        span = self._arena_range
        if span is not None and span[0] <= address and address + size <= span[1]:
            return _PERSISTENT
        return 0

    def _publish_arena(self, writer: TableWriter) -> None:
        """Name this process's arena in the header, if it has one beside this table."""
        arena = _arena.current()
        if arena is None or arena.inherited:
            return
        if arena.directory_identity != self._directory_identity():
            log.warning(
                "the persistent arena %s is not in the table directory %s; its buffers are published "
                "as ordinary regions (create the table before the first persistent allocation, or "
                "use the same directory)",
                arena.path,
                self.directory,
            )
            self._arena_range = (0, 0)
            return
        writer.set_arena(arena.base, arena.size)
        self._arena_range = (arena.base, arena.end)

    def _directory_identity(self) -> tuple[int, int] | None:
        try:
            info = os.fstat(self._dir_fd)
        except OSError:
            return None
        return info.st_dev, info.st_ino

    # --- ptrace permission for the collector ----------------------------------------------------------

    def grant_ptrace(self) -> bool:
        """Let the collector named in the table ptrace (and so read) this process under Yama.

        Calls ``prctl(PR_SET_PTRACER, pid)`` when the table holds a collector pid other than the
        one granted last. Returns True when a ``prctl`` call succeeded now. Without Yama the call
        fails with ``EINVAL`` and nothing is needed; that is not an error.
        """
        writer = self._writer
        if writer is None:
            return False
        pid = writer.collector_pid()
        if not pid or pid == self._granted:
            return False
        return self._grant(pid)

    def expect_collector(self, pid: int) -> None:
        """Name ``pid`` as this table's collector before it reads the table, and let it ptrace us.

        ``kmemdump run`` starts its program with its own pid for this: a collector that finds the
        table meanwhile leaves it to the supervisor for a moment instead of racing it.
        """
        with self._lock:
            writer = self._writer
            if writer is not None:
                writer.set_collector_pid(pid)
                self._grant(pid)

    def _grant(self, pid: int) -> bool:
        self._granted = pid
        return _set_ptracer(pid)

    # --- publishing -------------------------------------------------------------------------------

    def _publish(self) -> None:
        """Build a complete table under a temporary name, then link it into place."""
        pid = os.getpid()
        start = self_start_time()
        final = f"{pid}-{start}{TABLE_SUFFIX}"
        # named before it exists: a stop signal that arrives once the file is linked, before this
        # method returns, still finds what to remove (remove_for_stop)
        self._path, self._owner_pid = self.directory / final, pid

        def fill(mm: mmap.mmap) -> TableWriter:
            writer = TableWriter(
                mm,
                capacity=self.capacity,
                pid=pid,
                start_time=start,
                py_hexversion=sys.hexversion,
                created_ns=time.time_ns(),
                on_tick=_weak_tick(self),
                pidns=_own_pid_namespace(),
            )
            self._arena_range = None
            self._publish_arena(writer)
            for slot, (rid, name, address, size, kind, flags) in self._entries.items():
                # a reopened table starts with every region
                table_flags = self._table_flags(address, size, writer) if flags & _PERSISTENT else 0
                writer.put(slot, rid, name, address, size, kind, table_flags, flags >> _GRAPH_SHIFT)
            writer.set_state(TableState.RUNNING)
            return writer

        try:
            mm, writer = create_mapped(
                self._dir_fd,
                self.directory,
                final,
                table_size(self.capacity),
                what="table",
                fill=fill,
                undo=TableWriter.release,
                prepare=self._hold_live_lock,
            )
        except BaseException:
            self._drop_live_lock()
            self._path = None
            raise
        self._mm = mm
        self._writer = writer
        self._path = self.directory / final
        self._owner_pid = pid
        self._granted = 0
        live_paths.add(str(self._path))
        self.grant_ptrace()

    def touch(self) -> None:
        """Change the table file's times, which a collector watching the directory hears (inotify): it
        reads the table when told so, or when the deadline it last read may have passed. Called after
        the watchdog is armed with a new timeout, whose next deadline may come sooner."""
        # by its name: inotify names the file by the name it was reached through (the descriptors
        # were opened under a temporary name, removed since)
        if self._path is not None and self._dir_fd >= 0 and self._owner_pid == os.getpid():
            with contextlib.suppress(OSError):
                os.utime(self._path.name, dir_fd=self._dir_fd, follow_symlinks=False)

    def _hold_live_lock(self, fd: int, writer: TableWriter) -> None:
        """Lock the new table file for as long as this process lives, and say so in its header.

        A collector that cannot find the process (it runs in another pid namespace) learns from
        the lock whether it lives. Where the lock cannot be taken, the flag stays clear.
        """
        self._drop_live_lock()
        held = os.dup(fd)  # the same open file description; not inherited by exec
        try:
            locked = lock_byte(held, LIVE_LOCK_BYTE, exclusive=False)
        except OSError as err:
            log.debug("no liveness lock on the table: %s", err)
            locked = False
        if not locked:
            os.close(held)
            return
        self._live_fd = held
        writer.set_flag(FLAG_LIVE_LOCK, True)

    def _drop_live_lock(self) -> None:
        fd, self._live_fd = self._live_fd, -1
        if fd >= 0:
            os.close(fd)

    def reopen_for_child(self) -> Path:
        """In a forked child: publish a fresh table for this pid holding every current region.

        The registry owner decides whether a child publishes (``kmemdump.init(table=True)`` in the
        child calls this); until then the child's backend only keeps its bookkeeping. If the
        watchdog was attached to this backend, it follows the new table.
        """
        with self._lock:
            if self._closed:
                raise BackendError("the shared table is closed")
            if self._writer is not None:
                raise BackendError("this process already publishes its table", path=str(self._path))
            self._publish()
            path = self.path
        if _watchdog_current() is self:
            _watchdog_refresh()
        return path

    def _detach_after_fork(self) -> None:
        """In a forked child: drop the parent's table without touching it."""
        # its locks were made free again in place (forksafe); a bound table keeps its registry's
        mm, self._mm = self._mm, None
        writer, self._writer = self._writer, None
        self._path = None
        self._granted = 0  # PR_SET_PTRACER is not inherited
        # the parent's liveness lock belongs to the open file description both share: closing the
        # child's copy of the descriptor leaves it held for the parent, and the child never holds it
        self._drop_live_lock()
        if writer is not None:
            writer.release()  # a stray feed or put through an old reference now raises
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                log.warning("the parent's table is still exported in the child; not unmapped")

    # --- closing -------------------------------------------------------------------------------

    def close(self) -> None:
        """Mark the table ``EXITING`` and remove it. Run at interpreter exit; idempotent.

        The mapping itself is left to the garbage collector, so that a feeder thread caught in
        the middle of a beat writes into the unlinked file instead of failing.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            cancel_at_exit(self.close)
            if _watchdog_current() is self:
                _watchdog_detach()
            writer, path = self._writer, self._path
            if writer is not None and path is not None and self._owner_pid == os.getpid():
                writer.set_state(TableState.EXITING)
                self._unlink(path)
                live_paths.discard(str(path))
            # only now: a stop signal that interrupts this (a pool worker ending as its pool is
            # terminated) finds the table still named here and removes it itself (remove_for_stop)
            self._writer = self._mm = self._path = None
            self._drop_live_lock()
            if self._dir_fd >= 0:
                os.close(self._dir_fd)
                self._dir_fd = -1

    def remove_for_stop(self) -> None:
        """Mark the table ``EXITING`` and remove it, taking no lock: for a process that ends next.

        A stop signal's handler runs between two bytecodes of the main thread, which may hold the
        lock itself; the process dies right after, so nothing can change the table any more.
        """
        writer, path = self._writer, self._path
        if path is None or self._owner_pid != os.getpid() or self._dir_fd < 0:
            return
        if writer is not None:  # None: caught between the link and the end of _publish
            with contextlib.suppress(ValueError):  # released meanwhile
                writer.set_state(TableState.EXITING)
        self._unlink(path)
        live_paths.discard(str(path))

    def _unlink(self, path: Path) -> None:
        try:
            os.unlink(path.name, dir_fd=self._dir_fd)
        except FileNotFoundError:
            pass  # removed by someone else (a collector cleaning up)
        except OSError as err:
            log.warning("could not remove the table %s: %s", path, err)


def _own_pid_namespace() -> tuple[int, int]:
    """``(st_dev, st_ino)`` of this process's pid namespace; ``(0, 0)`` where it cannot be read."""
    try:
        info = os.stat("/proc/self/ns/pid")
    except OSError:
        return 0, 0
    return info.st_dev, info.st_ino


def _weak_tick(backend: SharedTableBackend) -> Callable[[], object]:
    """The writer's every-1024th-feed hook, without a reference cycle through the backend."""
    ref = weakref.ref(backend)

    def tick() -> None:
        target = ref()
        if target is not None:
            target.grant_ptrace()

    return tick


@functools.cache
def _prctl() -> Callable[[int, int, int, int, int], int]:
    import ctypes  # lazily: most processes never meet a collector

    function = ctypes.CDLL(None, use_errno=True).prctl
    function.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    function.restype = ctypes.c_int
    return function


PR_GET_DUMPABLE = 3


def is_dumpable() -> bool:
    """Whether a collector running as this process's own user may read it.

    The kernel clears the flag when a process changes credentials (a daemon started as root that
    drops to a service user, a setuid program) or calls ``prctl(PR_SET_DUMPABLE, 0)``; then only a
    collector with ``CAP_SYS_PTRACE`` (root) can read its memory.
    """
    return bool(_prctl()(PR_GET_DUMPABLE, 0, 0, 0, 0) == 1)


def _set_ptracer(pid: int) -> bool:
    """``prctl(PR_SET_PTRACER, pid)``; False (and no error) when it fails, e.g. without Yama."""
    if _prctl()(PR_SET_PTRACER, pid, 0, 0, 0) == 0:
        return True
    import ctypes  # loaded by _prctl already

    err = ctypes.get_errno()
    if err != errno.EINVAL:  # EINVAL: no Yama, or the pid is gone; nothing to do either way
        log.debug("prctl(PR_SET_PTRACER, %d) failed: %s", pid, os.strerror(err))
    return False


def _after_fork_in_child() -> None:
    for backend in list(_backends):
        backend._detach_after_fork()
    live_paths.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)

"""Which process a table belongs to, as this collector sees it, across pid namespaces.

A table names its producer by ``(pid, start_time)`` as the producer sees itself, and (from format
v1's namespace fields on) by the inode of its pid namespace. A collector in the same namespace
finds the process under that pid. A collector in a parent namespace (a per-host collector, a
container's producer) finds it through the ``NSpid`` line of ``/proc/PID/status``: the process
whose last NSpid is the table's pid, in that namespace, with that start time. A collector that
cannot see the namespace at all (a sibling container) says so and leaves the table alone.

Whether the producer lives at all is also told by the table itself: a producer that sets the
header's ``LIVE_LOCK`` flag holds a lock on the file for as long as it lives, which the kernel
drops when it dies, whatever the namespaces. So a process the collector cannot find is dead only
when that lock is free (or, for a table without the flag, when its namespace is visible here and
the process is not in it): never a false death, never a live table deleted.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from kmemdump.errors import CollectorError
from kmemdump.errors import KmemdumpError
from kmemdump.errors import ProcessGoneError
from kmemdump.formats.table import LIVE_LOCK_BYTE
from kmemdump.formats.table import TableHeader
from kmemdump.formats.table import TableReader
from kmemdump.formats.table import lock_held
from kmemdump.formats.table import table_path
from kmemdump.procinfo import ns_pids
from kmemdump.procinfo import pid_namespace
from kmemdump.procinfo import process_start_time
from kmemdump.record import frozen

__all__ = ["Identity", "NotVisibleError", "find_table", "identify", "locate_in_namespace", "own_namespace"]


class NotVisibleError(CollectorError):
    """The producer is alive (or may be) in a pid namespace this collector cannot see into."""


@frozen
class Identity:
    """A table's producer, found."""

    pid: int
    """Its pid as this collector sees it (what /proc, signals and memory reads take)."""
    table_pid: int
    """Its pid as the table names it (in its own pid namespace)."""
    start_time: int
    foreign: bool
    """It lives in another pid namespace than the collector (a container, seen from the host)."""


_own: list[tuple[int, int]] = []


def own_namespace() -> tuple[int, int]:
    """``(st_dev, st_ino)`` of this collector's pid namespace."""
    if not _own:
        _own.append(pid_namespace("self"))
    return _own[0]


def identify(pid: int, start: int, header: TableHeader, fd: int | None = None) -> Identity:
    """Find the process ``(pid, start)`` (a table's file name) of pid namespace and liveness lock
    as in ``header``; ``fd`` is the open table (for its liveness lock).

    Raises :class:`ProcessGoneError` when the process is certainly gone, :class:`NotVisibleError`
    when it lives (or may live) where this collector cannot see it.
    """
    held = lock_held(fd, LIVE_LOCK_BYTE) if fd is not None and header.live_lock else None
    ns = (header.pidns_dev, header.pidns_ino)
    if not header.pidns_ino or ns == own_namespace():
        try:
            same = process_start_time(pid) == start
        except ProcessGoneError:
            same = False
        if same:
            return Identity(pid, pid, start, foreign=False)
        if held:
            raise NotVisibleError(
                "the table's process still holds its table, but pid "
                f"{pid} here is not it: it lives in a pid namespace this collector does not see",
                pid=pid,
            )
        raise ProcessGoneError("the table's process is gone", pid=pid, start_time=start)
    found = locate_in_namespace(ns, pid, start)
    if found is not None:
        return Identity(found, pid, start, foreign=True)
    if held is False or (held is None and _namespace_visible(ns)):
        raise ProcessGoneError("the table's process is gone", pid=pid, start_time=start, pidns=ns[1])
    raise NotVisibleError(
        f"the process is pid {pid} in pid namespace {ns[1]}, which this collector cannot see "
        "(run the collector in that namespace or in one of its ancestors, e.g. on the host)",
        pid=pid,
        pidns=ns[1],
    )


def locate_in_namespace(ns: tuple[int, int], pid: int, start_time: int) -> int | None:
    """The pid, as seen here, of the process that is ``pid`` in the pid namespace ``ns``."""
    for entry in _proc_pids():
        try:
            if ns_pids(entry)[-1] != pid or pid_namespace(entry) != ns:
                continue
            if process_start_time(entry) == start_time:
                return entry
        except KmemdumpError:
            continue
    return None


def _namespace_visible(ns: tuple[int, int]) -> bool:
    """Whether any process this collector can see lives in the pid namespace ``ns``."""
    for entry in _proc_pids():
        try:
            if pid_namespace(entry) == ns:
                return True
        except KmemdumpError:
            continue
    return False


def _proc_pids() -> list[int]:
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    return [int(name) for name in names if name.isdigit()]


def find_table(
    pid: int, start_time: int, directories: Iterable[str | os.PathLike[str]]
) -> tuple[str, int] | None:
    """The table of the process ``pid`` (as seen here) in ``directories``, and the pid it names it by.

    A process in a pid namespace of its own (a container seen from the host) names its table after
    its pid there, the last value of its ``NSpid``; the table's header must then record the very
    namespace the process is in.
    """
    try:
        inner = ns_pids(pid)[-1]
    except KmemdumpError:
        inner = pid
    names = [inner] if inner == pid else [inner, pid]
    for directory in directories:
        for table_pid in names:
            path = table_path(directory, table_pid, start_time)
            if os.path.exists(path) and (table_pid == pid or _same_namespace(path, pid)):
                return path, table_pid
    return None


def _same_namespace(path: str, pid: int) -> bool:
    try:
        with TableReader(path) as reader:
            header = reader.header()
        return (header.pidns_dev, header.pidns_ino) == pid_namespace(pid)
    except (KmemdumpError, OSError):
        return False

"""Watching producers: a missed heartbeat, a death, or a new table.

One :class:`Watcher` serves every table in its directories, and its idle cost grows with the
deadlines it keeps, not with tables times wake-ups. It sleeps in ``poll`` until the earliest moment
a heartbeat could go stale, or inotify says a table directory changed (a name came or went, a table
was touched, or a file was closed after writing: a producer's exit closes its table). No descriptor
is held per process: whether a process lives is asked (:mod:`.liveness`) when inotify or the kernel's
process events hint at its end, before a stale heartbeat is taken for a hang, and at least once every
quiet period (``max_sleep``).
A table is read only when its deadline may have passed: its last feed plus its timeout is a lower
bound of its next deadline (feeds only move it later), so a process feeding every second with a
5 s watchdog has its table read about once every four seconds, and a stall is still seen within a
few milliseconds of its deadline; between deadlines only the four heartbeat words are read
(:meth:`TableReader.beat`), the whole header before anything is done. A producer that arms its
watchdog or changes its timeout touches its table file, and inotify has the table read at once.
Each table is read at least every ``max_sleep`` (:data:`_QUIET_S` by default) anyway, to keep a
recent consistent copy of it for a process that dies in the middle of an update. Directories are
listed again when inotify reports a change, and every :data:`_LIST_AGAIN_S` besides (every
:data:`_RESCAN_S` where inotify cannot be had).

A table whose process is already gone when the watcher finds it (the process died before any
collector ran) is removed; if the table names a persistent arena, one "death" dump of what the
arena holds is written first. An arena file left without a table by a process that is gone is
removed as well.

Why one module of this size: the watcher is one loop over one set of targets. Discovery, deadlines,
deaths, the per-user limits and the order of dumps all read and change the same per-target state, and
its invariants are easier to keep in one place than spread over several files; what stands alone
(inotify in :mod:`.dirwatch`, exit events in :mod:`.exits`, holds in :mod:`.hold`, retention in
:mod:`.retention`) lives apart.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import select
import signal
import stat
import time
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from kmemdump.collector.authority import ProcessHandle
from kmemdump.collector.authority import check_authority
from kmemdump.collector.authority import ended_owner
from kmemdump.collector.claim import Claim
from kmemdump.collector.claim import try_claim
from kmemdump.collector.dirwatch import Changes
from kmemdump.collector.dirwatch import DirWatch
from kmemdump.collector.dump import DumpOptions
from kmemdump.collector.dump import DumpResult
from kmemdump.collector.dump import ExitHold
from kmemdump.collector.dump import dump_target
from kmemdump.collector.exits import ExitListener
from kmemdump.collector.exits import zombie_status
from kmemdump.collector.hold import pending
from kmemdump.collector.hold import recover
from kmemdump.collector.hold import tidy
from kmemdump.collector.identify import NotVisibleError
from kmemdump.collector.identify import identify
from kmemdump.collector.liveness import liveness
from kmemdump.collector.registers import ThreadRegisters
from kmemdump.collector.retention import Policy
from kmemdump.collector.retention import enforce as enforce_retention
from kmemdump.errors import CollectorBusyError
from kmemdump.errors import ForeignProcessError
from kmemdump.errors import KmemdumpError
from kmemdump.errors import ProcessGoneError
from kmemdump.errors import TableFormatError
from kmemdump.formats.arena import ARENA_SUFFIX
from kmemdump.formats.arena import arena_path_of
from kmemdump.formats.dumpmeta import Death
from kmemdump.formats.dumpmeta import Held
from kmemdump.formats.faults import FAULT_SUFFIX
from kmemdump.formats.faults import fault_path_of
from kmemdump.formats.table import LIVE_LOCK_BYTE
from kmemdump.formats.table import TABLE_SUFFIX
from kmemdump.formats.table import TableBeat
from kmemdump.formats.table import TableReader
from kmemdump.formats.table import TableSnapshot
from kmemdump.formats.table import lock_held
from kmemdump.formats.table import open_owned_file
from kmemdump.formats.table import parse_dir_name
from kmemdump.formats.table import parse_file_name
from kmemdump.formats.table import write_collector_pid
from kmemdump.procinfo import process_cmdline
from kmemdump.procinfo import process_exe
from kmemdump.procinfo import process_start_time
from kmemdump.record import field
from kmemdump.record import frozen
from kmemdump.record import mutable
from kmemdump.record import replace

__all__ = ["AFTER_HANG", "DEFAULT_MAX_DUMPS", "DEFAULT_MAX_PER_USER", "Event", "EventKind", "Watcher"]

log = logging.getLogger("kmemdump.collector")

AFTER_HANG = ("leave", "kill", "abort")
DEFAULT_MAX_DUMPS = 10
"""Hang dumps of one process before the collector stops dumping it (a death is always dumped)."""
_RESCAN_S = 0.25
"""Rescans without inotify; how soon a hung (or unreadable) table is read again."""
_QUIET_S = 5.0
"""The default longest sleep: the latest each table is read again."""
_LIST_AGAIN_S = 60.0
"""With inotify, the directories are listed again this often anyway (a safety net; a listing of 500
tables costs about as much as 100 table reads)."""
_COALESCE_S = 0.05
"""A burst of directory changes brings one rescan, this long after the first; inotify is read at most
once in this long."""
_EARLY_NS = 250_000_000
"""Tables whose deadline may pass within this long are read together, in one wake-up."""
_EXITS_S = 1.0
"""The kernel's process events are drained at least this often (its socket buffer must not fill)."""
_SHM = Path("/dev/shm")
_LOOK_AGAIN_S = 1.0
_ADOPT_TRIES = 3
"""Seqlock reads of a new table in one scan: one that is mid-update is looked at again later."""
_RETRY_MAX_S = 8.0
"""The longest pause before a table that failed for a passing reason is looked at again."""
DEFAULT_MAX_PER_USER = 256
"""Tables of one user watched at once unless told otherwise."""
_SPENT_HALF_LIFE_S = 60.0
"""How fast a user's past dump time is forgotten when hung processes are ordered."""
_MAX_NAMES = 4096
"""Names of one table directory looked at in one scan (a table, an arena and a fault file per process)."""
_GRACE_NS = 5_000_000_000
"""How long a new table that names another collector is left to it."""


EventKind = Literal["watch", "hang", "death", "exit", "error", "skip"]
"""A new table adopted; a hang dumped; a death dumped; a clean exit; a failure; something left alone."""


@frozen
class Event:
    """Something the collector noticed or did; one log line each."""

    kind: EventKind
    pid: int
    message: str
    dump: DumpResult | None = None
    exit_status: int | None = None

    def line(self) -> str:
        text = f"{self.kind} pid={self.pid} {self.message}"
        if self.dump is not None:
            meta = self.dump.meta
            text += f" dump={self.dump.path} regions={len(meta.regions)} bytes={meta.stored_bytes}"
            if meta.partial:
                text += " partial"
        return text


@mutable
class _Target:
    pid: int
    start_time: int
    table: Path
    claim: Claim
    """This collector's lock on the table, held without a descriptor (:mod:`.claim`)."""
    identity: tuple[int, int]
    """The table file's ``(st_dev, st_ino)`` when adopted: every later open must find that file."""
    argv: list[str]
    exe: str | None
    snapshot: TableSnapshot | None = None
    dumped_at_beat: int | None = None
    """Heartbeat counter at the last hang dump: one dump per stall, re-armed by a new beat."""
    deadline_ns: int | None = None
    check_ns: int = 0
    """When to read its header next (monotonic ns): its deadline's lower bound, or sooner."""
    limit_reported: bool = False
    """The max_dumps limit was logged for this process (once)."""
    table_pid: int = 0
    """The pid the table names the process by (its own pid namespace's), when not ``pid``."""
    owner: int = -1
    """The table file's owner: the user on whose behalf the process is dumped."""
    ended_by_us: bool = False
    """We killed or aborted it after its hang dump: its death needs no second dump."""
    busy_said: bool = False
    """A dump of it met another collector's lock on its table (said once; retried at the next step)."""
    errors: int = 0
    dying: int = 0
    """Checks in a row that found its main thread ending: the next is a little later each time."""
    suspect: bool = True
    """Something hinted at its end (or it is new, or ending): whether it lives is asked at its next check."""
    alive_ns: int = 0
    """When it was last found alive (monotonic ns): asked again at least every quiet period, and before
    a stale heartbeat is taken for a hang."""
    ident: tuple[int, int] = (0, 0)
    """Its table's name: the key of :attr:`Watcher.targets`."""
    lost: bool = False
    """Its table's name no longer leads to the file adopted (removed, or replaced): the next listing
    forgets it, and adopts afresh a file found under that name."""
    dumps: list[DumpResult] = field(default_factory=list)

    def open(self) -> TableReader | None:
        """The table opened anew for one read (no descriptor is kept between reads): by its name in
        its directory, neither followed through a link; None when that name no longer leads to the
        file adopted (removed, replaced, its directory replaced by a link)."""
        try:
            dir_fd = os.open(self.table.parent, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as err:
            if err.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                return None
            raise
        try:
            reader = TableReader(self.table, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        finally:
            os.close(dir_fd)
        if reader.identity != self.identity or reader.owner != self.owner:
            reader.close()
            return None
        return reader


class Watcher:
    """The collector's loop over every table in ``directories``."""

    def __init__(
        self,
        directories: Iterable[Path],
        options: DumpOptions,
        *,
        after_hang: str = "leave",
        on_event: Callable[[Event], None] | None = None,
        only_pid: int | None = None,
        max_sleep: float = _QUIET_S,
        max_dumps: int | None = DEFAULT_MAX_DUMPS,
        max_per_user: int | None = DEFAULT_MAX_PER_USER,
        retention: Policy | None = None,
        rediscover: Callable[[], list[Path]] | None = None,
        death_of: Callable[[int], Death | None] | None = None,
        exit_events: bool = True,
    ) -> None:
        if after_hang not in AFTER_HANG:
            raise ValueError(f"after_hang must be one of {AFTER_HANG}")
        if max_dumps is not None and max_dumps < 1:
            raise ValueError("max_dumps must be at least 1 (or None for no limit)")
        self.max_dumps = max_dumps
        self.directories = [Path(d) for d in directories]
        self.options = options
        self.after_hang = after_hang
        self.on_event = on_event or (lambda e: log.info("%s", e.line()))
        self.only_pid = only_pid
        self.max_sleep = max_sleep
        self.targets: dict[tuple[int, int], _Target] = {}
        self._bad: dict[Path, float] = {}
        self._later: dict[Path, float] = {}
        self._retries: dict[Path, int] = {}
        self._dirs: dict[Path, tuple[int, int, int]] = {}
        """Each table directory as last checked: (device, inode, owner)."""
        self._dir_warned: set[tuple[Path, str]] = set()
        self._truncated: set[Path] = set()
        """Directories this scan listed only in part (:data:`_MAX_NAMES`)."""
        self.rediscover = rediscover
        """Lists the table directories anew at every scan (new users' directories appear)."""
        self._over_quota: set[int] = set()
        self._spent: dict[int, float] = {}
        """Per user: the collector's time their dumps took (decaying), so that one user's big dumps
        delay another user's hang by one dump at most, never by all of theirs."""
        self._spent_at: dict[int, float] = {}
        self._last_spent = 0.0
        self.max_per_user = max_per_user
        """Watched tables per user at most (None: no limit)."""
        self.retention = retention if retention is not None and not retention.empty else None
        self._kept_said: tuple[int, str] = (0, "")
        """Applied to the dump directory after each dump (:mod:`kmemdump.collector.retention`)."""
        if self.retention is not None:
            self.options = _within_retention(options, self.retention)
        """Tables to look at again only from this monotonic time on (claimed elsewhere, out of sight)."""
        self._elsewhere: set[Path] = set()
        self._unseen: set[Path] = set()
        self._poller = select.poll()
        self._scan_at = 0.0
        """When to list the directories again (monotonic): a change was reported, or the timer."""
        self._dirwatch = DirWatch.open()
        if self._dirwatch is not None:
            self._poller.register(self._dirwatch.fileno(), select.POLLIN)
        self._muted_until: float | None = None
        """Until when inotify is not waited on (monotonic), after its events were read: see _mute."""
        self._emitted: list[Event] = []
        self.header_reads = 0
        """Heartbeat reads of watched tables so far (a statistic: what the idle cost grows with)."""
        self.death_of = death_of
        """How a target ended, asked first when it dies (``run`` passes its wait status)."""
        self._exits = ExitListener() if exit_events else None
        """Every exit on the machine, heard from the kernel: read at each step (at least every
        :data:`_EXITS_S` while there are targets), never waited on (an idle collector must not wake for
        other processes' exits)."""

    # --- discovery -----------------------------------------------------------------------

    def scan(self) -> list[Event]:
        """Pick up new tables; forget targets whose table vanished (a clean exit)."""
        mark = len(self._emitted)
        now = time.monotonic()
        watching = self._dirwatch is not None
        seen: set[tuple[int, int]] = set()
        self._truncated.clear()
        if self.rediscover is not None:
            found = self.rediscover()
            listed = set(found)
            watched = {target.table.parent for target in self.targets.values()}  # never dropped from sight
            self.directories = found + sorted(watched - listed)
            if self._dirwatch is not None:  # new users' directories appear there
                watching = self._dirwatch.watch(str(_SHM), prefix="kmemdump-") and watching
        for directory in self.directories:
            names = self._list_dir(directory)
            if names is None:  # not there yet, or not to be trusted: listed again on the short timer
                watching = False
                continue
            if self._dirwatch is not None:
                watching = self._dirwatch.watch(str(directory)) and watching
            arenas: list[tuple[tuple[int, int], str]] = []
            for name in names:
                ident = parse_file_name(name)
                if ident is None:  # an arena or a fault file: removed once nothing names it
                    suffix = FAULT_SUFFIX if name.endswith(FAULT_SUFFIX) else ARENA_SUFFIX
                    arena = parse_file_name(name, suffix)
                    if arena is not None and (self.only_pid is None or arena[0] == self.only_pid):
                        arenas.append((arena, name))
                    continue
                if self.only_pid is not None and ident[0] != self.only_pid:
                    continue
                seen.add(ident)
                known = self.targets.get(ident)
                if known is not None and known.lost:  # another file under its name now: adopted afresh
                    self._forget(ident)
                    known = None
                if known is None:
                    self._adopt(ident, directory / name)
            for ident, name in arenas:
                if ident not in seen:  # a table listed now took care of its arena
                    self._check_orphan_arena(ident, directory / name)
            if not names and _is_fallback(directory):
                self._remove_unused(directory)
        for ident in [k for k in self.targets if k not in seen]:
            target = self.targets[ident]
            if target.table.parent in self._truncated:
                continue  # not listed whole: its absence says nothing
            if target.ended_by_us:
                self._emit(Event("exit", target.pid, f"ended ({self.after_hang}) after its hang dump"))
            elif liveness(target.pid, target.start_time) == "ended":
                self._emit(Event("exit", target.pid, "exited cleanly"))
            else:
                self._emit(Event("exit", target.pid, "table removed (clean exit)"))
            self._forget(ident)
        self._scan_at = now + (max(self.max_sleep, _LIST_AGAIN_S) if watching else _RESCAN_S)
        later = [when for when in self._later.values() if when > now]
        if later:  # a table to look at again: a retry, one claimed elsewhere for now
            self._scan_at = min(self._scan_at, *later)
        return self._emitted[mark:]

    def _list_dir(self, directory: Path) -> list[str] | None:
        """The names in a table directory, once it is checked: not a link (its own name included),
        owned by the uid its name says (``/dev/shm/kmemdump-<uid>[.<hex>]``), not writable by group
        or others. A directory that fails is said once and left alone: nothing in it is read or
        removed."""
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as err:
            if err.errno in _TRANSIENT_ERRNOS:
                self._dir_problem(directory, f"cannot be opened now, will retry: {err.strerror}", final=False)
                return None
            link = err.errno in (errno.ELOOP, errno.ENOTDIR)
            self._dir_problem(directory, "is a symbolic link or not a directory" if link else str(err))
            return None
        try:
            info = os.fstat(fd)
            named = parse_dir_name(directory.name) if directory.parent == _SHM else None
            if named is not None and info.st_uid != named:
                self._dir_problem(
                    directory, f"belongs to uid {info.st_uid}, not to the uid {named} of its name"
                )
                return None
            if info.st_mode & 0o022:
                self._dir_problem(
                    directory, f"is writable by group or others (mode {info.st_mode & 0o7777:o})"
                )
                return None
            self._dirs[directory] = (info.st_dev, info.st_ino, info.st_uid)
            return self._names(directory, fd)
        except OSError as err:
            passing = err.errno in _TRANSIENT_ERRNOS
            self._dir_problem(
                directory,
                f"cannot be listed{', will retry' if passing else ''}: {err.strerror}",
                final=not passing,
            )
            return None
        finally:
            os.close(fd)

    def _names(self, directory: Path, fd: int) -> list[str]:
        """At most :data:`_MAX_NAMES` names of a directory: a user who fills theirs with junk costs one
        scan no more than that (said once)."""
        names: list[str] = []
        with os.scandir(fd) as entries:
            for entry in entries:
                if len(names) >= _MAX_NAMES:
                    self._truncated.add(directory)
                    if (directory, "full") not in self._dir_warned:
                        self._dir_warned.add((directory, "full"))
                        self._emit(
                            Event(
                                "skip",
                                0,
                                f"table directory {directory} holds more than {_MAX_NAMES} names; "
                                "only the first are looked at",
                            )
                        )
                    break
                names.append(entry.name)
        return names

    def _dir_problem(self, directory: Path, problem: str, *, final: bool = True) -> None:
        """Say once what is wrong with a table directory (it is looked at again at every scan)."""
        self._dirs.pop(directory, None)
        if (directory, problem) not in self._dir_warned:
            self._dir_warned.add((directory, problem))
            if final:
                self._emit(Event("skip", 0, f"table directory {directory} {problem}: left alone"))
            else:
                self._emit(Event("error", 0, f"table directory {directory} {problem}"))

    def _remove_unused(self, directory: Path) -> None:
        """Remove an empty fallback table directory (``/dev/shm/kmemdump-<uid>.<hex>``) no producer uses:
        its producers ended (their files removed by them, or by this collector after a death). Every
        producer holds a shared ``flock`` on its table directory while it may publish there (a forked
        child too), so the exclusive one taken here first is had only when none does."""
        known = self._dirs.get(directory)
        if known is None:
            return
        try:
            shm = os.open(_SHM, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            fd = os.open(
                directory.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=shm
            )
            try:
                info = os.fstat(fd)
                if (info.st_dev, info.st_ino) != known[:2]:
                    return
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: a producer uses it
                with os.scandir(fd) as entries:
                    if next(entries, None) is not None:
                        return  # a file came meanwhile
                os.rmdir(directory.name, dir_fd=shm)  # only ever an empty directory
            finally:
                os.close(fd)
        except OSError:
            return
        finally:
            os.close(shm)
        self._dirs.pop(directory, None)
        self.directories = [d for d in self.directories if d != directory]
        self._emit(Event("skip", 0, f"fallback table directory {directory} is empty and unused; removed it"))

    def _unlink(self, *paths: Path) -> None:
        """Remove files of a checked table directory, through the directory itself: if its name now
        leads elsewhere (replaced by a link), nothing is removed."""
        for path in paths:
            known = self._dirs.get(path.parent)
            if known is None:
                continue
            try:
                fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                info = os.fstat(fd)
                if (info.st_dev, info.st_ino) == known[:2]:
                    os.unlink(path.name, dir_fd=fd)
            except OSError:
                pass
            finally:
                os.close(fd)

    def _adopt(self, ident: tuple[int, int], path: Path) -> None:
        pid, start_time = ident
        mtime = _mtime(path)
        if self._bad.get(path) == mtime:
            return  # already reported, unchanged since
        if self._later.get(path, 0.0) > time.monotonic():
            return  # another collector's, or out of sight: looked at again a little later
        reader: TableReader | None = None
        try:
            reader = TableReader(path)
            dir_owner = self._dirs.get(path.parent, (0, 0, 0))[2]
            if dir_owner not in (0, reader.owner):
                raise ForeignProcessError(
                    "the table's owner is not its directory's", table_owner=reader.owner, dir_owner=dir_owner
                )
            if not self._within_quota(reader.owner, pid, path):
                return
            if not self._claim(reader, pid, path):
                return
            found = identify(pid, start_time, reader.header(), reader.fileno())
            _check_owner(found.pid, start_time, reader.owner, self.options)
            snapshot = reader.snapshot(retries=_ADOPT_TRIES)  # a table that never settles waits its turn
            claim = Claim.hold(reader.fileno())  # the lock outlives the descriptor, closed below
        except NotVisibleError as err:
            self._out_of_sight(pid, path, err)
            return
        except ProcessGoneError:
            self._bad[path] = mtime
            self._on_stale(pid, start_time, path)  # under our claim: no other collector does it too
            return
        except FileNotFoundError:
            return  # removed between the listing and the open: a clean exit
        except ForeignProcessError as err:
            self._bad[path] = mtime
            self._emit(Event("skip", pid, f"refusing table {path}: {err}"))
            return
        except (KmemdumpError, OSError) as err:
            if _transient(err):
                self._retry_later(pid, path, err)  # a full descriptor table, a table mid-update: not final
                return
            self._bad[path] = mtime
            self._emit(Event("error", pid, f"skipping table {path}: {err}"))
            return
        finally:
            if reader is not None:
                reader.close()  # and with it the lock, unless the claim holds it now
        pid = found.pid
        target = _Target(
            pid, start_time, path, claim, reader.identity, process_cmdline(pid), process_exe(pid), snapshot
        )
        target.ident = ident
        target.table_pid = found.table_pid
        target.owner = reader.owner
        with contextlib.suppress(OSError):
            write_collector_pid(path, os.getpid())
        self.targets[ident] = target
        if self._exits is not None:
            self._exits.wanted.add(pid)
        self._retries.pop(path, None)
        self._emit(Event("watch", pid, f"{' '.join(target.argv)[:80]!r} table={path}"))

    def _retry_later(self, pid: int, path: Path, err: BaseException) -> None:
        """Look at a table again after a transient failure, with a growing pause (capped); said once."""
        tries = self._retries.get(path, 0) + 1
        self._retries[path] = tries
        self._later[path] = time.monotonic() + min(_RESCAN_S * 2 ** (tries - 1), _RETRY_MAX_S)
        if tries == 1:
            self._emit(Event("error", pid, f"table {path} not adopted yet, will retry: {err}"))

    def _within_quota(self, owner: int, pid: int, path: Path) -> bool:
        """At most :attr:`max_per_user` watched tables per user: one user's flood of tables cannot take
        the descriptors (two per watched table) every other user's tables need."""
        if self.max_per_user is None:
            return True
        watched = sum(1 for target in self.targets.values() if target.owner == owner)
        if watched < self.max_per_user:
            return True
        self._later[path] = time.monotonic() + _RETRY_MAX_S
        if owner not in self._over_quota:
            self._over_quota.add(owner)
            self._emit(
                Event(
                    "skip",
                    pid,
                    f"user {owner} has {watched} watched tables already (the limit); {path} waits",
                )
            )
        return False

    def _claim(self, reader: TableReader, pid: int, path: Path) -> bool:
        """Make this collector the one that watches the table; False (said once) when another is.

        An exclusive ``flock`` on the table file, held as long as the table is watched (by a
        :class:`~kmemdump.collector.claim.Claim`, without a descriptor) and dropped by the kernel when
        this collector dies, so another one takes over.
        """
        if self._supervised_elsewhere(reader, path):
            return False
        if not try_claim(reader.fileno()):
            self._later[path] = time.monotonic() + _LOOK_AGAIN_S
            if path not in self._elsewhere:
                self._elsewhere.add(path)
                holder = _quietly_int(lambda: reader.header().collector_pid)
                self._emit(
                    Event(
                        "skip",
                        pid,
                        f"table {path} is watched by another collector (pid {holder}); not watching it",
                    )
                )
            return False
        self._elsewhere.discard(path)
        return True

    def _supervised_elsewhere(self, reader: TableReader, path: Path) -> bool:
        """A new table made for another, living collector (``kmemdump run`` names itself in the
        tables of the program it starts): left to it for a moment, so that the two do not race."""
        try:
            header = reader.header()
        except (KmemdumpError, OSError):
            return False
        collector = header.collector_pid
        if not collector or collector == os.getpid() or time.time_ns() - header.created_ns > _GRACE_NS:
            return False
        try:
            os.kill(collector, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # alive, another user's
        self._later[path] = time.monotonic() + _RESCAN_S
        return True

    def _out_of_sight(self, pid: int, path: Path, err: NotVisibleError) -> None:
        """A table whose process lives (or may) where this collector cannot see: said once, left alone."""
        self._later[path] = time.monotonic() + _LOOK_AGAIN_S
        if path not in self._unseen:
            self._unseen.add(path)
            self._emit(Event("skip", pid, f"table {path} left alone: {err}"))

    def _on_stale(self, pid: int, start_time: int, path: Path) -> None:
        """A table whose process is gone: dump what its arena and fault file kept (if any), then
        remove them all."""
        kept = _companions(path)
        if any(p.exists() or p.is_symlink() for p in kept):
            event = self._dump_dead(pid, start_time, path)
            if event.dump is not None:
                self._report_arena(pid, event.dump)
        else:
            self._emit(Event("skip", pid, f"stale table {path} (process gone); removing it"))
        self._unlink(path, *kept)

    def _dump_dead(self, pid: int, start_time: int, path: Path) -> Event:
        why = "process was gone before the collector saw it; persistent regions read from its arena"
        death = Death.unknown("the process had ended before the collector found its table")
        try:
            result = dump_target(pid, start_time, path, reason="death", options=self.options, death=death)
        except (KmemdumpError, OSError) as err:
            return self._emit(Event("error", pid, f"death dump of stale table {path} failed: {err}"))
        return self._emit(Event("death", pid, why, result))

    def _report_arena(self, pid: int, result: DumpResult) -> None:
        state = result.meta.arena
        if state not in ("ok", "none", "unused"):
            self._emit(Event("error", pid, f"persistent regions not recovered: {state}"))

    def _check_orphan_arena(self, ident: tuple[int, int], path: Path) -> None:
        """Remove an arena (or a fault file) whose process is gone and whose table is gone too."""
        pid, start_time = ident
        if ident in self.targets or path.with_name(f"{pid}-{start_time}.table").exists():
            return
        try:
            if stat.S_ISDIR(os.lstat(path).st_mode):
                return  # a directory by that name cannot be removed: said never, not at every scan
        except OSError:
            return  # gone already
        if _arena_held(path):
            return  # its process still holds it (wherever that process is)
        try:
            if process_start_time(pid) == start_time:
                return  # alive: its table may be on its way, or it runs without one
        except ProcessGoneError:
            pass
        except (KmemdumpError, OSError):
            return
        what = "fault file" if path.name.endswith(FAULT_SUFFIX) else "arena"
        self._emit(Event("skip", pid, f"{what} {path} without a table (process gone); removing it"))
        self._unlink(path)

    def _forget(self, ident: tuple[int, int]) -> None:
        target = self.targets.pop(ident)
        target.claim.release()
        if self._exits is not None:
            self._exits.wanted.discard(target.pid)

    # --- the loop ----------------------------------------------------------------------------

    def recover(self) -> None:
        """Undo what a collector that died left in the dump directory: continue the processes it
        left stopped, remove its temporary files (:func:`kmemdump.collector.hold.recover`)."""
        for line in recover(self.options.directory):
            self._emit(Event("skip", 0, line))

    def run(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        self.recover()
        self.scan()
        while not should_stop():
            self.step()

    def wake_on(self, fd: int) -> None:
        """Also end :meth:`step`'s wait when ``fd`` polls readable (the caller reads it; a supervisor's
        tracer, its child's pidfd). The caller keeps the descriptor open while the watcher runs."""
        self._poller.register(fd, select.POLLIN)

    def step(self) -> list[Event]:
        """Wait for the next thing to happen (at most ``max_sleep``), handle it, return the events."""
        self._emitted = []
        tidy()
        if self._muted_until is not None and time.monotonic() >= self._muted_until:
            self._unmute()
        if self._exits is not None and self.targets:
            self._exits.drain()  # keep the socket's buffer from filling up: it would drop new exits
            self._check_soon(self._exits.news())
        timeout = self._timeout()
        for fd, _mask in self._poller.poll(max(0.0, timeout) * 1000):
            if self._dirwatch is not None and fd == self._dirwatch.fileno():
                self._on_changes(self._dirwatch.changed())
                self._mute()
        now = time.monotonic_ns()
        due = now + _EARLY_NS
        ready = [t for t in self.targets.values() if t.check_ns <= due]
        for target in sorted(ready, key=lambda t: self._spent_by(t.owner)):
            if self._check_heartbeat(target, now):
                break  # one dump a step: the next serves first the user whose dumps took least time
        if time.monotonic() >= self._scan_at:
            self.scan()
        events, self._emitted = self._emitted, []
        return events

    @property
    def _quiet_s(self) -> float:
        """The slow timer: directories listed and tables read again at least this often (with inotify)."""
        return max(self.max_sleep, _RESCAN_S)

    def _timeout(self) -> float:
        """Seconds until the next thing to do: a table's deadline may have passed, a rescan is due,
        a hold is to be finished; at most ``max_sleep``."""
        now = time.monotonic_ns()
        wake = min(self.max_sleep, self._scan_at - time.monotonic())
        if self.targets:
            wake = min(wake, (min(t.check_ns for t in self.targets.values()) - now) / 1e9)
        if pending():
            wake = min(wake, _RESCAN_S)
        if self._muted_until is not None:
            wake = min(wake, self._muted_until - time.monotonic())
        if self._exits is not None and self._exits.fileno() >= 0 and self.targets:
            wake = min(wake, _EXITS_S)
        return wake

    def _mute(self) -> None:
        """Leave inotify unread for :data:`_COALESCE_S` after reading it: however fast producers come,
        go or arm their watchdogs, their events wake the watcher at most 1/_COALESCE_S times a second
        (a deadline that near is not a watchdog's)."""
        if self._dirwatch is not None:
            self._poller.modify(self._dirwatch.fileno(), 0)
            self._muted_until = time.monotonic() + _COALESCE_S

    def _unmute(self) -> None:
        self._muted_until = None
        if self._dirwatch is not None:
            self._poller.modify(self._dirwatch.fileno(), select.POLLIN)

    def _on_changes(self, changes: Changes) -> None:
        """What inotify said: names that came or went bring one listing a moment later (a burst of new
        tables is listed once); a table touched by its producer (it armed or changed its watchdog) is
        read at once."""
        soon = time.monotonic() + _COALESCE_S
        if changes.listed or changes.overflow:
            self._scan_at = min(self._scan_at, soon)
        if changes.overflow:  # a producer's last close may be among the events lost: ask each
            self._check_soon(target.pid for target in self.targets.values())
        elif changes.closed:
            self._check_soon(_closed_pids(changes.closed))
        if changes.touched:
            known = {str(target.table): target for target in self.targets.values()}
            for name in changes.touched:
                target = known.get(name)
                if target is not None:
                    target.check_ns = 0
                else:  # not watched (yet): adopting it may be due now
                    self._scan_at = min(self._scan_at, soon)

    def _check_soon(self, pids: Iterable[int]) -> None:
        """Something hinted that these processes ended (a last close of their files, an exit event):
        whether they did is asked at once, in this step (:meth:`_check_heartbeat`)."""
        wanted = set(pids)
        if not wanted:
            return
        for target in self.targets.values():
            if target.pid in wanted or target.table_pid in wanted:
                target.suspect = True
                target.check_ns = 0

    def _check_heartbeat(self, target: _Target, now: int) -> bool:
        """Dump the target if it died or its heartbeat is stale; True when that took the collector's
        time (a dump put off for another collector's lock, or one over the max_dumps limit, takes
        none)."""
        if target.suspect or now - target.alive_ns >= int(self._quiet_s * 1e9):
            ended = self._check_alive(target, now)  # hinted, or the periodic check (a child kept its table)
            if ended is not None:
                return ended
        target.check_ns = now + int(_RESCAN_S * 1e9)  # unless the header says when (below)
        self.header_reads += 1
        try:
            reader = target.open()
        except (KmemdumpError, OSError) as err:
            self._unreadable(target, err)
            return False
        if reader is None:  # gone (a clean exit, an exec) or replaced: the next listing says which
            target.lost = True
            self._scan_at = min(self._scan_at, time.monotonic() + _COALESCE_S)
            return False
        with reader:
            header = self._stale_beat(target, reader, now)
        if header is None:
            return False
        if target.alive_ns != now:  # a stale heartbeat may be a death nothing hinted: not a hang then
            ended = self._check_alive(target, now)
            if ended is not None:
                return ended
        target.dumped_at_beat = header.heartbeat
        age = (now - header.last_feed_ns) / 1e9
        timeout = header.watchdog_timeout_ns / 1e9
        sig = _AFTER_SIGNALS.get(self.after_hang)
        why = f"heartbeat {age:.3f}s old (timeout {timeout:g}s)"
        self._last_spent = 0.0
        event = self._dump(target, "hang", why, then_signal=sig)
        if event.dump is not None and sig is not None:
            target.ended_by_us = True
        return self._last_spent > 0.0

    def _check_alive(self, target: _Target, now: int) -> bool | None:
        """Ask whether the target still lives (:func:`~kmemdump.collector.liveness.liveness`). None
        when it does; otherwise its death is handled (or, while it is ending, asked again shortly) and
        the answer is whether that took the collector's time."""
        state = liveness(target.pid, target.start_time)
        if state == "alive":
            target.suspect = False
            target.dying = 0
            target.alive_ns = now
            return None
        if state == "ended":
            self._last_spent = 0.0
            self._on_death(target.ident)
            return self._last_spent > 0.0
        # inside its exit (a hint came from its last close), or its main thread ended before the others
        target.suspect = True
        target.dying += 1
        pause = min(0.002 * 2 ** min(target.dying, 16), self._quiet_s)
        target.check_ns = now + int(pause * 1e9)
        return False

    def _stale_beat(self, target: _Target, reader: TableReader, now: int) -> TableBeat | None:
        """Read the heartbeat (and, when it changed, a fresh snapshot); the beat when it is stale, its
        stall not dumped yet, and a second read of the whole header agrees; None otherwise."""
        try:
            header = reader.beat()  # the four words that say when; all is checked before a dump
        except (KmemdumpError, OSError) as err:
            self._unreadable(target, err)
            return None
        if header.generation % 2 == 0 and header.generation != _generation(target.snapshot):
            # keep the latest consistent picture, for a process that dies or freezes mid-update
            with contextlib.suppress(KmemdumpError, OSError):
                target.snapshot = reader.snapshot(retries=3)
        if not header.hung(now):
            target.deadline_ns = deadline = header.deadline_ns
            # nothing can happen before its deadline (a feed moves it later): read it then, or after the
            # quiet period (for a recent copy of the table) when it has no watchdog
            quiet = now + int(self._quiet_s * 1e9)
            target.check_ns = quiet if deadline is None else min(deadline, quiet)
            return None
        target.deadline_ns = None
        if target.dumped_at_beat == header.heartbeat:
            return None  # this stall was dumped already
        try:
            again = reader.header()  # the whole header, checked, before dumping (or killing) anything
        except (KmemdumpError, OSError) as err:
            self._unreadable(target, err)
            return None
        if again.heartbeat != header.heartbeat or again.last_feed_ns != header.last_feed_ns:
            return None  # a beat landed meanwhile (or a torn read); look again
        return header

    def _unreadable(self, target: _Target, err: BaseException) -> None:
        target.errors += 1
        if target.errors == 1:
            self._emit(Event("error", target.pid, f"table unreadable: {err}"))

    def _on_death(self, ident: tuple[int, int]) -> None:
        target = self.targets.get(ident)
        if target is None:
            return
        left_table = target.table.exists()  # a clean exit removes the table first
        if target.ended_by_us:
            self._emit(Event("exit", target.pid, f"ended ({self.after_hang}) after its hang dump"))
        elif left_table:
            death = self._death_of(target)  # first: its parent may reap it any moment
            event = self._dump(target, "death", f"process died ({death.describe()})", death=death)
            if event.dump is not None:
                self._report_arena(target.pid, event.dump)
        else:
            self._emit(Event("exit", target.pid, "exited cleanly"))
        if left_table:  # the producer cannot remove its files any more; we own the clean-up
            self._unlink(target.table, *_companions(target.table))
        self._forget(ident)

    def _death_of(self, target: _Target) -> Death:
        """How ``target`` ended, from the best source this collector has (see :mod:`.exits`)."""
        if self.death_of is not None:
            found = self.death_of(target.pid)
            if found is not None:
                return found
        status = zombie_status(target.pid, target.start_time)
        if status is not None:
            return Death.from_wait_status(status, "proc stat")
        listener = self._exits
        if listener is not None and listener.fileno() >= 0:
            status = listener.take(target.pid, wait=0.2)
            if status is not None:
                return Death.from_wait_status(status, "proc connector")
            return Death.unknown("the kernel's process events did not report its exit in time")
        why = "its parent reaped it before the collector could read its exit status"
        if listener is not None and listener.failure:
            why += f"; {listener.failure}"
        return Death.unknown(why)

    def program_replaced(self, pid: int) -> Event | None:
        """``pid`` called ``execve`` (the caller holds it before its new program runs): not a death.
        The old program's table and arena describe memory that no longer exists; they are removed and
        the process forgotten, so that the table the new program publishes (same pid and start time,
        hence the same name) is adopted afresh, even when the old one was not adopted yet. None when
        the old program had published no table."""
        stale: list[Path] = []
        for ident in [key for key in self.targets if key[0] == pid]:
            stale.append(self.targets[ident].table)
            self._forget(ident)
        for directory in self.directories:
            for name in self._list_dir(directory) or ():
                named = parse_file_name(name)
                if named is not None and named[0] == pid and directory / name not in stale:
                    stale.append(directory / name)
        for table in stale:
            self._unlink(table, arena_path_of(table))
            self._bad.pop(table, None)
            self._later.pop(table, None)
        if not stale:
            return None
        return self._emit(Event("exit", pid, "exec: a new program replaced the one that published its table"))

    def dump_held(
        self,
        pid: int,
        why: str,
        registers: Mapping[int, ThreadRegisters] | None = None,
        death: Death | None = None,
        *,
        exit_hold: ExitHold | None = None,
    ) -> Event | None:
        """Dump ``pid`` as a death now, while something holds it at its exit with its memory mapped
        (a ptrace exit stop, under ``kmemdump run --trace-exit``); then forget it, so that the report of
        the exit brings no second dump. ``exit_hold`` says how to let it go as soon as nothing
        more needs it, before the file is written (see :func:`dump_target`).

        Returns None, dumping nothing, when the watcher holds no table for it (a clean exit removed
        it, or none was published) or ended it itself after a hang dump.
        """
        self.scan()  # adopt a table published since the last scan; forget one a clean exit removed
        ident = next((key for key in self.targets if key[0] == pid), None)
        if ident is None or self.targets[ident].ended_by_us:
            return None
        target = self.targets[ident]
        event = self._dump(
            target,
            "death",
            why,
            held="exit stop",
            registers=registers,
            death=death,
            exit_hold=exit_hold,
        )
        if event.dump is not None:
            self._report_arena(pid, event.dump)
        self._unlink(target.table, *_companions(target.table))  # the producer cannot remove them now
        self._forget(ident)
        return event

    def _dump(
        self,
        target: _Target,
        reason: Literal["hang", "death"],
        why: str,
        *,
        held: Held = "",
        registers: Mapping[int, ThreadRegisters] | None = None,
        death: Death | None = None,
        then_signal: int | None = None,
        exit_hold: ExitHold | None = None,
    ) -> Event:
        hangs = sum(1 for d in target.dumps if d.meta.reason == "hang")
        if reason == "hang" and self.max_dumps is not None and hangs >= self.max_dumps:
            # a process that stalls again and again: its first dumps tell the story, and the disk stays free
            event = Event("skip", target.pid, f"{why}; not dumped: {hangs} hang dumps of it already")
            if target.limit_reported:
                return event
            target.limit_reported = True
            return self._emit(event)
        began = time.monotonic()
        try:
            result = dump_target(
                target.pid,
                target.start_time,
                target.table,
                reason=reason,
                options=self.options,
                snapshot=target.snapshot,
                argv=target.argv,
                exe=target.exe,
                held=held,
                registers=registers,
                death=death,
                table_pid=target.table_pid or None,
                table_owner=target.owner,
                then_signal=then_signal,
                exit_hold=exit_hold,
                act_wait=0.0,  # one loop serves all users: it never waits on a lock any table writer can take
            )
        except CollectorBusyError as err:  # nothing was done: no time spent
            if reason == "hang":
                target.dumped_at_beat = None  # the stall is tried again at the next step
            what = "put off" if reason == "hang" else "failed"
            event = Event("error", target.pid, f"{reason} dump {what}: {err}")
            if target.busy_said:
                return event
            target.busy_said = True
            return self._emit(event)
        except (KmemdumpError, OSError) as err:
            self._spend(target.owner, began)
            return self._emit(Event("error", target.pid, f"{reason} dump failed: {err}"))
        self._spend(target.owner, began)
        target.dumps.append(result)
        target.busy_said = False
        event = self._emit(Event(reason, target.pid, why, result))
        self._retain(result)
        return event

    def _spend(self, owner: int, began: float) -> None:
        """Count the collector's time a dump of ``owner``'s took (halved every :data:`_SPENT_HALF_LIFE_S`)."""
        now = time.monotonic()
        self._spent[owner] = self._spent_by(owner, now) + (now - began)
        self._spent_at[owner] = now
        self._last_spent = now - began

    def _spent_by(self, owner: int, now: float | None = None) -> float:
        """The collector's time ``owner``'s dumps took lately: the user with least goes first."""
        spent = self._spent.get(owner, 0.0)
        if not spent:
            return 0.0
        now = time.monotonic() if now is None else now
        return float(spent * 0.5 ** ((now - self._spent_at[owner]) / _SPENT_HALF_LIFE_S))

    def _retain(self, result: DumpResult) -> None:
        """Apply the retention policy after a dump: oldest dumps removed first, each said in the log."""
        self.retain(keep=(result.path.name,))

    def retain(self, keep: Iterable[str] = ()) -> None:
        """Apply the retention policy now (after a dump; once dumps are shipped): each removal said in
        the log, and, when it changes, how many dumps not shipped yet are kept past a limit."""
        if self.retention is None:
            return
        try:
            outcome = enforce_retention(Path(self.options.directory), self.retention, keep=keep)
        except KmemdumpError as err:
            self._emit(Event("error", 0, f"retention not applied: {err}"))
            return
        for removal in outcome.removals:
            self._emit(
                Event("skip", 0, f"removed {removal.file.name} ({removal.file.size} bytes): {removal.why}")
            )
        said = (len(outcome.kept), outcome.ledger_problem)
        if said == self._kept_said:
            return
        self._kept_said = said
        if outcome.ledger_problem:
            self._emit(Event("error", 0, f"retention: {outcome.ledger_problem}; no dump counts as shipped"))
        if outcome.kept:
            self._emit(Event("skip", 0, outcome.kept_line()))

    def _emit(self, event: Event) -> Event:
        self._emitted.append(event)
        self.on_event(event)
        return event

    def close(self) -> None:
        for ident in list(self.targets):
            self._forget(ident)
        if self._exits is not None:
            self._exits.close()
        if self._dirwatch is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._poller.unregister(self._dirwatch.fileno())
            self._dirwatch.close()
            self._dirwatch = None


_AFTER_SIGNALS = {"kill": signal.SIGKILL, "abort": signal.SIGABRT}
"""What --after-hang sends, while the dumped process is still held."""


_TRANSIENT_ERRNOS = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN, errno.EINTR, errno.ENOBUFS}
)


def _transient(err: BaseException) -> bool:
    """A failure that says nothing about the table: out of descriptors or memory, or a table that was
    mid-update at every read (it is read again later, a few times, without stalling the others)."""
    if isinstance(err, OSError) and err.errno in _TRANSIENT_ERRNOS:
        return True
    if isinstance(err, KmemdumpError) and err.context.get("errno") in _TRANSIENT_ERRNOS:
        return True
    return isinstance(err, TableFormatError) and err.message.startswith("table kept changing")


def _within_retention(options: DumpOptions, policy: Policy) -> DumpOptions:
    """One dump never needs more than a user, or the directory, may hold: the budget is capped so."""
    sizes = [n for n in (options.budget, policy.per_user.size, policy.total.size) if n is not None]
    return replace(options, budget=min(sizes)) if sizes else options


def _check_owner(pid: int, start_time: int, owner: int, options: DumpOptions) -> None:
    """Refuse (:class:`ForeignProcessError`) a table whose owner may not have its process dumped."""
    try:
        process = ProcessHandle.open(pid, start_time)
    except ProcessGoneError:
        # ended already: its death is handled as any other, and only its arena is read; but a zombie
        # still says whose it was, and another user's end (its exit status) is not the table's to learn
        ended = ended_owner(pid, start_time)
        if ended is not None and ended != owner:
            raise ForeignProcessError(
                "the table names an ended process of another user; left alone",
                pid=pid,
                table_owner=owner,
                process_uid=ended,
            ) from None
        return
    with process:
        check_authority(process, owner, allow_nondumpable=options.allow_nondumpable)


def _is_fallback(directory: Path) -> bool:
    """A producer's private fallback table directory, ``/dev/shm/kmemdump-<uid>.<hex>``."""
    return directory.parent == _SHM and "." in directory.name and parse_dir_name(directory.name) is not None


def _closed_pids(paths: Iterable[str]) -> set[int]:
    """The pids named by files closed after writing: tables, arenas, fault files, and the temporary
    names a producer builds them under (``.<pid>-<start time>-<tag>.tmp``; its descriptors and mappings
    keep that name after the file is linked into place and the temporary name removed)."""
    pids: set[int] = set()
    for path in paths:
        name = os.path.basename(path)
        if name.startswith(".") and name.endswith(".tmp"):
            pid_text = name[1:].partition("-")[0]
            if pid_text.isascii() and pid_text.isdigit() and len(pid_text) <= 10:
                pids.add(int(pid_text))
            continue
        for suffix in (TABLE_SUFFIX, ARENA_SUFFIX, FAULT_SUFFIX):
            ident = parse_file_name(name, suffix)
            if ident is not None:
                pids.add(ident[0])
                break
    return pids


def _companions(table: Path) -> tuple[Path, Path]:
    """The files a producer keeps beside its table: the arena and the fault file."""
    return arena_path_of(table), Path(fault_path_of(table))


def _arena_held(path: Path) -> bool:
    """Whether a live process holds the arena's liveness lock (producers lock it as they lock a table)."""
    try:
        fd = open_owned_file(path, os.O_RDONLY, what="arena")
    except (KmemdumpError, OSError):
        return False
    try:
        return lock_held(fd, LIVE_LOCK_BYTE)
    finally:
        os.close(fd)


def _quietly_int(read: Callable[[], int]) -> int | str:
    try:
        return read()
    except (KmemdumpError, OSError):
        return "unknown"


def _generation(snapshot: TableSnapshot | None) -> int | None:
    return None if snapshot is None else snapshot.header.generation


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError as err:
        if err.errno == errno.ENOENT:
            return 0.0
        raise

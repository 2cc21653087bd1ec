"""The sweep: dumps of the dump directory not confirmed shipped are queued for their upload.

``watch --ship`` queues each dump it writes. Dumps written while no shipper ran (``watch`` without
``--ship``, stopped, or killed; ``kmemdump run`` or ``dump`` into the same directory) or given up
while the store was away (the spool full) would stay local for good; the shipper sweeps the
directory at start, when an outage ends, and every ``--ship-sweep-every`` seconds, and queues what
the ledger (:mod:`kmemdump.fleet.ledger`) does not list as shipped.

The directory may hold files nobody should ship, so a file is queued only when it is

* named as the collector names dumps (hidden, temporary and other names are left alone);
* a regular file, looked at without following a link (``lstat``, then ``O_NOFOLLOW|O_NONBLOCK``:
  a FIFO never blocks the shipper) and hard-linked into the spool without following one; the link
  is checked to be that very inode (a name swapped in between is caught), else it is removed;
* this user's, or any user's when nobody else may write to the directory (a root collector gives
  each dump to its process's user); in a directory others may write to, only this user's files;
* settled: not modified for ``settle_s`` seconds (a file still being written waits for a later
  sweep), and not older than ``max_age_s``;
* not recorded as shipped, not refused before as not a dump (same inode, size and time), and
  within what the spool has room for: the sweep never pushes a queued upload out.

Each sweep is bounded: at most :data:`SCAN_LIMIT` names looked at, and :data:`SWEEP_SECONDS`
seconds; a file's checks are a few system calls (reading and checking the dump itself happens at
its upload, where one that is not a dump is dropped and remembered). One log line says what was
queued and why anything was left.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path

from kmemdump.fleet.catalog import is_dump_name
from kmemdump.fleet.ledger import Ledger
from kmemdump.fleet.ledger import identity_of
from kmemdump.fleet.spool import MANIFEST_SUFFIX
from kmemdump.fleet.spool import Spool
from kmemdump.record import frozen

__all__ = ["SCAN_LIMIT", "SWEEP_SECONDS", "SweepResult", "sweep"]

SCAN_LIMIT = 100_000
"""Names of the dump directory one sweep looks at, at most."""
SWEEP_SECONDS = 10.0
"""How long one sweep may take before it stops (the rest waits for the next one)."""


@frozen
class SweepResult:
    queued: int = 0
    queued_bytes: int = 0
    shipped: int = 0
    """Dumps the ledger lists as shipped (nothing to do)."""
    settling: int = 0
    """Modified within the settling time: maybe still being written; the next sweep looks again."""
    future: int = 0
    """Modified more than a second in the future (a wrong clock, or planted): left, and no early sweep."""
    too_old: int = 0
    not_regular: int = 0
    """Named as dumps but links, FIFOs, directories, sockets or devices."""
    foreign: int = 0
    """Other users' files in a directory others may write to."""
    refused: int = 0
    """Found before not to be dumps (unchanged since)."""
    no_room: int = 0
    """Left for a later sweep: the spool had no room (in dumps or bytes)."""
    too_large: int = 0
    """Larger than the whole spool: never shipped."""
    cut_short: str = ""
    """Why the sweep stopped before the end of the directory ("" when it did not)."""
    present: frozenset[str] = frozenset()
    """Every dump name seen (when the sweep was not cut short): the ledger forgets the others."""

    def line(self, directory: Path) -> str:
        """One log line, or "" when there is nothing to say."""
        left = [
            (self.settling, "still being written (looked at again later)", ""),
            (self.future, "modified in the future", ""),
            (self.too_old, "older than the sweep's age limit", ""),
            (self.not_regular, "not a regular file (a link, a FIFO …)", "not regular files (links, FIFOs …)"),
            (
                self.foreign,
                "another user's file in a directory others may write to",
                "other users' files in a directory others may write to",
            ),
            (self.refused, "not a readable dump", "not readable dumps"),
            (self.no_room, "no room in the spool yet", ""),
            (self.too_large, "larger than the whole spool", ""),
        ]
        said = [f"{count} {one if count == 1 or not many else many}" for count, one, many in left if count]
        if not self.queued and not said and not self.cut_short:
            return ""
        queued = f"{_dumps(self.queued)} ({self.queued_bytes} bytes)"
        head = f"ship sweep of {directory}: queued {queued} not shipped yet"
        tail = f"; left: {', '.join(said)}" if said else ""
        cut = f"; stopped early: {self.cut_short}" if self.cut_short else ""
        return head + tail + cut


def _dumps(count: int) -> str:
    return f"{count} dump" if count == 1 else f"{count} dumps"


def sweep(
    directory: Path,
    spool: Spool,
    ledger: Ledger | None,
    *,
    settle_s: float,
    max_age_s: float | None,
    refused: Callable[[tuple[int, int, int, int]], bool] = lambda identity: False,
    now_ns: int | None = None,
    seconds: float = SWEEP_SECONDS,
) -> SweepResult:
    """Queue the dumps of ``directory`` that are not confirmed shipped (see the module)."""
    now = time.time_ns() if now_ns is None else now_ns
    deadline = time.monotonic() + seconds
    queued_names = set()
    waiting = spool.entries()
    with contextlib.suppress(OSError):
        queued_names = {n for n in os.listdir(spool.directory) if not n.endswith(MANIFEST_SUFFIX)}
    room_dumps = spool.max_dumps - len(waiting)
    room_bytes = spool.max_bytes - sum(e.size for e in waiting)
    euid = os.geteuid()
    counts = dict.fromkeys(
        (
            "shipped",
            "settling",
            "future",
            "too_old",
            "not_regular",
            "foreign",
            "refused",
            "no_room",
            "too_large",
        ),
        0,
    )
    cut = ""
    present: set[str] = set()
    candidates: list[tuple[int, str, os.stat_result]] = []
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        shared = bool(os.fstat(dir_fd).st_mode & 0o022)
        with os.scandir(dir_fd) as names:
            for looked, entry in enumerate(names):
                if looked >= SCAN_LIMIT:
                    cut = f"more than {SCAN_LIMIT} names in the directory"
                    break
                if looked % 256 == 0 and time.monotonic() > deadline:
                    cut = f"took more than {seconds:g} s"
                    break
                name = entry.name
                if not is_dump_name(name):
                    continue
                present.add(name)
                if name in queued_names:
                    continue
                try:
                    info = os.lstat(name, dir_fd=dir_fd)
                except OSError:
                    continue
                if not stat.S_ISREG(info.st_mode):
                    counts["not_regular"] += 1
                elif info.st_uid != euid and (shared or euid != 0):
                    counts["foreign"] += 1
                elif ledger is not None and ledger.shipped(name, info):
                    counts["shipped"] += 1
                elif refused(identity_of(info)):
                    counts["refused"] += 1
                elif info.st_mtime_ns > now + 1_000_000_000:
                    counts["future"] += 1
                elif now - info.st_mtime_ns < settle_s * 1e9:
                    counts["settling"] += 1
                elif max_age_s is not None and now - info.st_mtime_ns > max_age_s * 1e9:
                    counts["too_old"] += 1
                elif info.st_size > spool.max_bytes:
                    counts["too_large"] += 1
                else:
                    candidates.append((info.st_mtime_ns, name, info))
        queued = queued_bytes = 0
        for _mtime, name, info in sorted(candidates, key=lambda c: (c[0], c[1])):
            if room_dumps <= 0 or info.st_size > room_bytes:
                counts["no_room"] += 1
                continue
            if time.monotonic() > deadline:
                cut = cut or f"took more than {seconds:g} s"
                counts["no_room"] += 1
                continue
            if not _link_in(dir_fd, name, info, spool.directory):
                continue
            if spool.admit(directory / name) is None:
                continue
            queued += 1
            queued_bytes += info.st_size
            room_dumps -= 1
            room_bytes -= info.st_size
    finally:
        os.close(dir_fd)
    return SweepResult(
        queued,
        queued_bytes,
        cut_short=cut,
        present=frozenset(present) if not cut else frozenset(),
        **counts,
    )


def _link_in(dir_fd: int, name: str, info: os.stat_result, spool_dir: Path) -> bool:
    """Put the file ``name`` (as ``info`` saw it) into the spool: a hard link by name that follows no
    link, checked to be that very inode, else (another file system) a copy from a descriptor opened
    without following a link; False when the file is no longer the one looked at (replaced, now a
    link or a FIFO) or cannot be read."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return False
    target = spool_dir / name
    try:
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode) or identity_of(now) != identity_of(info):
            return False
        copied = False
        try:  # by name, no link followed; what was linked is checked below (a swapped name is caught)
            os.link(name, target, src_dir_fd=dir_fd, follow_symlinks=False)
        except FileExistsError:
            return False
        except OSError as err:
            if err.errno not in (errno.EXDEV, errno.EPERM, errno.ENOENT, errno.EMLINK, errno.EACCES):
                return False
            _copy_from(fd, spool_dir, name)
            copied = True
        linked = os.lstat(target)
        same = (
            linked.st_size == info.st_size
            if copied
            else (linked.st_dev, linked.st_ino) == (info.st_dev, info.st_ino)
        )
        if not stat.S_ISREG(linked.st_mode) or not same:
            with contextlib.suppress(OSError):
                os.unlink(target)
            return False
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _copy_from(fd: int, spool_dir: Path, name: str) -> None:
    """A copy of the open file ``fd`` as ``spool_dir/name`` (written under a hidden name, synced)."""
    temporary = spool_dir / f".{name}.sweep.tmp"
    try:
        with open(os.dup(fd), "rb") as source, open(temporary, "xb") as out:
            source.seek(0)
            shutil.copyfileobj(source, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        os.link(temporary, spool_dir / name)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temporary)

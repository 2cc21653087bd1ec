"""Creating the producer's shared files (the table, the arena) without trusting the directory.

Both files are built under a temporary name (``O_CREAT|O_EXCL|O_NOFOLLOW``, mode 0600 whatever the
umask) and then hard-linked to their final name, so a reader never sees a half-built file and a
symbolic link planted at the final name makes creation fail instead of being followed. A file
already at the final name is replaced only when it is a stale regular file of ours: same pid and
start time as ours, so left over from an earlier boot in a directory that survives reboots.

Standard library only: the producer imports this module.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import itertools
import logging
import mmap
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from kmemdump.errors import BackendError
from kmemdump.formats.table import DIR_PREFIX

__all__ = [
    "ARENAS_STAGE",
    "DIR_MODE",
    "FILE_MODE",
    "TABLES_STAGE",
    "cancel_at_exit",
    "create_mapped",
    "keep_at_exit",
    "link_into_place",
    "live_paths",
    "on_exit",
    "open_private_dir",
    "open_table_dir",
    "open_temporary",
    "remove_temporary",
    "temporary_name",
]

log = logging.getLogger("kmemdump")
T = TypeVar("T")

FILE_MODE = 0o600
DIR_MODE = 0o700
TABLES_STAGE = 0
ARENAS_STAGE = 1
"""At exit, tables are closed first, then arenas: a collector never sees a live table whose arena is gone."""
live_paths: set[str] = set()
"""Paths of the shared files this process published and still holds (never "stale")."""
_serial = itertools.count()


def temporary_name(pid: int, start_time: int, tag: str = "") -> str:
    """``.<pid>-<start_time>-<tag><n>.tmp``: readers ignore names that do not end in their suffix."""
    return f".{pid}-{start_time}-{tag}{next(_serial)}.tmp"


def open_temporary(dir_fd: int, directory: Path, temp: str, what: str) -> int:
    """Create ``temp`` in the directory open as ``dir_fd``, read-write, mode 0600."""
    try:
        fd = os.open(
            temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE, dir_fd=dir_fd
        )
    except OSError as err:
        raise BackendError(
            f"cannot create the {what} file: {err.strerror}", path=str(directory / temp)
        ) from err
    try:
        os.fchmod(fd, FILE_MODE)  # whatever the umask
    except OSError as err:
        os.close(fd)
        remove_temporary(dir_fd, directory, temp, what)
        raise BackendError(
            f"cannot set the {what} file's mode: {err.strerror}", path=str(directory / temp)
        ) from err
    return fd


def remove_temporary(dir_fd: int, directory: Path, temp: str, what: str) -> None:
    try:
        os.unlink(temp, dir_fd=dir_fd)
    except OSError:
        log.warning("could not remove the temporary %s %s", what, directory / temp)


def link_into_place(dir_fd: int, directory: Path, temp: str, final: str, what: str) -> None:
    """Give ``temp`` its final name; replace only a stale regular file of ours (never a link)."""
    try:
        os.link(temp, final, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return
    except FileExistsError:
        if not _stale(dir_fd, directory, final):
            raise BackendError(
                f"refusing to create the {what}: its path exists and is not a stale {what} of ours",
                path=str(directory / final),
            ) from None
    os.unlink(final, dir_fd=dir_fd)
    try:
        os.link(temp, final, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except FileExistsError:
        raise BackendError(
            f"the {what} path was taken while creating it", path=str(directory / final)
        ) from None


def create_mapped(
    dir_fd: int,
    directory: Path,
    final: str,
    size: int,
    *,
    what: str,
    fill: Callable[[mmap.mmap], T],
    undo: Callable[[T], object] = lambda _: None,
    prepare: Callable[[int, T], object] | None = None,
) -> tuple[mmap.mmap, T]:
    """Create the shared file ``final`` of ``size`` bytes, mapped ``MAP_SHARED``, filled by ``fill``.

    The file is built under a temporary name (:func:`open_temporary`), sized, mapped and filled,
    and only then linked to ``final`` (:func:`link_into_place`), so a reader never sees it half
    made. ``prepare(fd, filled)``, when given, runs last before the link, with the file still open
    (the table takes its liveness lock there, so the lock is held before anyone can see the file).
    Returns the mapping and what ``fill`` returned. On any failure nothing is left behind:
    ``undo`` gets what ``fill`` returned, the mapping is closed and the temporary name removed.
    """
    pid, _, start = final.partition("-")
    temp = temporary_name(int(pid), int(start.partition(".")[0]), what[:1])
    fd = open_temporary(dir_fd, directory, temp, what)
    mm: mmap.mmap | None = None
    filled: list[T] = []
    linked = False
    try:
        os.ftruncate(fd, size)
        mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        filled.append(fill(mm))
        if prepare is not None:
            prepare(fd, filled[0])
        link_into_place(dir_fd, directory, temp, final, what)
        linked = True
    except OSError as err:
        raise BackendError(f"cannot create the {what} file: {err.strerror}", path=str(directory)) from err
    finally:
        os.close(fd)
        remove_temporary(dir_fd, directory, temp, what)
        if not linked:
            for made in filled:
                undo(made)
            if mm is not None:
                mm.close()
    return mm, filled[0]


def _stale(dir_fd: int, directory: Path, final: str) -> bool:
    if str(directory / final) in live_paths:
        return False
    try:
        info = os.lstat(final, dir_fd=dir_fd)
    except FileNotFoundError:
        return True
    if not (stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid()):
        return False
    return not _held_by_a_live_process(dir_fd, final)


def _held_by_a_live_process(dir_fd: int, final: str) -> bool:
    """Whether a live process holds the file's liveness lock: the same name in a directory two pid
    namespaces share (two containers' pid 1, started in the same clock tick) is not ours to replace."""
    from kmemdump.formats.table import LIVE_LOCK_BYTE
    from kmemdump.formats.table import lock_held

    try:
        fd = os.open(final, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        return lock_held(fd, LIVE_LOCK_BYTE)
    finally:
        os.close(fd)


_fallbacks: dict[str, Path] = {}
"""Requested table directory → the private one used instead (the table and the arena agree)."""


def open_table_dir(directory: Path) -> tuple[int, Path, str]:
    """Open the table directory, or a private fallback when it cannot be trusted.

    Returns ``(descriptor, directory used, why it is not the one asked for)``. A directory that is a
    link, belongs to another user or is writable by others (someone created it first, a squatter) is
    refused, and a fresh private one is made instead: ``/dev/shm/kmemdump-<uid>.<random>`` (mode 0700),
    which a collector run by this user or by root finds too. :class:`BackendError` only when the
    fallback cannot be made either.
    """
    known = _fallbacks.get(str(directory))
    if known is not None:
        with contextlib.suppress(BackendError):
            return open_private_dir(known), known, f"{directory} was refused earlier; using {known}"
    try:
        return open_private_dir(directory), directory, ""
    except BackendError as err:
        refused = str(err)
    for _ in range(8):
        candidate = Path(f"/dev/shm/{DIR_PREFIX}{os.geteuid()}.{os.urandom(8).hex()}")
        try:
            os.mkdir(candidate, DIR_MODE)
        except FileExistsError:
            continue
        except OSError as err:
            raise BackendError(
                f"{refused}; and no private table directory could be made: {err.strerror}",
                path=str(candidate),
            ) from err
        fd = open_private_dir(candidate)
        _fallbacks[str(directory)] = candidate
        note = f"{refused}; using the private table directory {candidate} instead"
        log.warning("kmemdump: %s", note)
        return fd, candidate, note
    raise BackendError(f"{refused}; and no private table directory could be made", path=str(directory))


def open_private_dir(directory: Path) -> int:
    """Create or check the table directory and return an ``O_DIRECTORY`` descriptor for it.

    The descriptor holds a shared ``flock`` on the directory for as long as it (or a forked child's
    copy) is open: a collector removes an empty fallback directory only under an exclusive one, so
    never one a producer is about to publish in. A directory removed between its creation and the lock
    is made again.
    """
    for _ in range(_DIR_TRIES):
        dir_fd = _open_private_dir(directory)
        try:
            fcntl.flock(dir_fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # a collector is removing it right now: make it again
            os.close(dir_fd)
            continue
        except OSError:
            pass  # no flock on this file system: no collector can lock it to remove it either
        try:
            info = os.fstat(dir_fd)
            named = os.lstat(directory)
            if (named.st_dev, named.st_ino) == (info.st_dev, info.st_ino):
                return dir_fd
        except OSError:  # removed before our lock: made again
            pass
        os.close(dir_fd)
    raise BackendError("the table directory kept being removed while it was opened", path=str(directory))


_DIR_TRIES = 8


def _open_private_dir(directory: Path) -> int:
    created = False
    try:
        os.mkdir(directory, DIR_MODE)
        created = True
    except FileExistsError:
        pass
    except OSError as err:
        raise BackendError(f"cannot create the table directory: {err.strerror}", path=str(directory)) from err
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            raise BackendError(
                "the table directory is a symbolic link or not a directory", path=str(directory)
            ) from err
        raise BackendError(f"cannot open the table directory: {err.strerror}", path=str(directory)) from err
    try:
        info = os.fstat(dir_fd)
        if info.st_uid != os.geteuid():
            raise BackendError(
                "the table directory belongs to another user", path=str(directory), uid=info.st_uid
            )
        if created:
            os.fchmod(dir_fd, DIR_MODE)  # whatever the umask
        elif info.st_mode & 0o022:
            raise BackendError(
                "the table directory is writable by group or others",
                path=str(directory),
                mode=oct(stat.S_IMODE(info.st_mode)),
            )
    except BaseException:
        os.close(dir_fd)
        raise
    return dir_fd


_exit_hooks: list[tuple[int, Callable[[], None]]] = []


def on_exit(stage: int, hook: Callable[[], None]) -> None:
    """Run ``hook`` at interpreter exit, after every hook of an earlier ``stage`` (tables, then arenas)."""
    _exit_hooks.append((stage, hook))


def cancel_at_exit(hook: Callable[[], None]) -> None:
    """Forget ``hook`` (a table closed before the exit)."""
    _exit_hooks[:] = [(stage, known) for stage, known in _exit_hooks if known != hook]


_kept: list[bool] = []


def keep_at_exit() -> None:
    """Leave the shared files in place at interpreter exit, as a crash would: the exit hooks do not
    run, and a collector takes the exit for a death and dumps what the arena holds (an uncaught
    exception that ends the program, recorded by ``init(excepthook=True)``)."""
    _kept[:] = [True]


def _run_exit_hooks() -> None:
    if _kept:
        log.debug("kmemdump: shared files kept at exit for the collector")
        return
    hooks = sorted(_exit_hooks, key=lambda item: item[0])  # stable: registration order within a stage
    _exit_hooks.clear()
    for _stage, hook in hooks:
        try:
            hook()
        except Exception:
            log.exception("kmemdump exit hook %r failed", hook)
    _remove_empty_fallbacks()


def _remove_empty_fallbacks() -> None:
    """At a clean exit, once this process's files are removed: remove the private fallback directories
    it used if they are empty and no other process may publish there (each holds a shared ``flock`` on
    its table directory, a forked child too; the exclusive one is had only when none does). One left
    behind is removed by the collector watching it, later."""
    for directory in set(_fallbacks.values()):
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            with os.scandir(fd) as entries:
                empty = next(entries, None) is None
            if empty:
                os.rmdir(directory)  # never a link, never a directory that holds anything
        except OSError:
            pass
        finally:
            os.close(fd)


atexit.register(_run_exit_hooks)

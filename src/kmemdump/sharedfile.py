"""Creating the producer's shared files (the table, the arena) without trusting the directory.

Both files are built under a temporary name (``O_CREAT|O_EXCL|O_NOFOLLOW``, mode 0600 whatever the
umask) and then hard-linked to their final name, so a reader never sees a half-built file and a
symbolic link planted at the final name makes creation fail instead of being followed. A file
already at the final name is replaced only when it is a stale regular file of ours: same pid and
start time as ours, so left over from an earlier boot in a directory that survives reboots.

Standard library only: the producer imports this module.
"""

from __future__ import annotations

import itertools
import logging
import os
import stat
from pathlib import Path

from .errors import BackendError

__all__ = [
    "FILE_MODE",
    "link_into_place",
    "live_paths",
    "open_temporary",
    "remove_temporary",
    "temporary_name",
]

log = logging.getLogger("kmemdump")

FILE_MODE = 0o600
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


def _stale(dir_fd: int, directory: Path, final: str) -> bool:
    if str(directory / final) in live_paths:
        return False
    try:
        info = os.lstat(final, dir_fd=dir_fd)
    except FileNotFoundError:
        return True
    return stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid()

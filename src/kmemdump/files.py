"""Making a finished file appear under its final name, once, durably.

The collector (dumps) and the command line (``extract``) both write a temporary file beside the
final one, sync it, and then give it its name without ever replacing a file that is already there;
then they sync the directory so the name survives a crash. Standard library only.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["rename_noreplace", "sync_directory"]

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def _load_renameat2() -> Callable[..., int] | None:
    try:
        func = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


_renameat2 = _load_renameat2()


def rename_noreplace(source: Path, target: Path) -> None:
    """Move ``source`` to ``target`` unless ``target`` exists (``FileExistsError`` then).

    ``renameat2(RENAME_NOREPLACE)`` where the kernel and file system have it; else a hard link
    (which fails rather than replace) and an unlink; else, on a file system without hard links,
    a check and a rename, which leaves a narrow race.
    """
    if _renameat2 is not None:
        if _renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # else: not supported here
            raise OSError(code, os.strerror(code), os.fspath(target))
    try:
        os.link(source, target)  # fails with EEXIST rather than replacing
    except FileExistsError:
        raise
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EMLINK, errno.EXDEV):
            raise
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(target)) from err
        os.rename(source, target)
        return
    os.unlink(source)


def sync_directory(directory: Path) -> None:
    """``fsync`` the directory, so that a name just given in it survives a crash.

    File systems that cannot sync a directory (``EINVAL``, ``ENOTSUP``, ``EROFS``) are passed over;
    other failures raise ``OSError``.
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EROFS):
            raise
    finally:
        os.close(fd)

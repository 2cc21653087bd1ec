"""Making a finished file appear under its final name, once, durably.

The collector (dumps) and the command line (``extract``) both write a temporary file beside the
final one, sync it, and then give it its name without ever replacing a file that is already there
(:func:`rename_noreplace`), or, when asked to, replacing only a regular file, never a device, a FIFO,
a socket, a directory or a symbolic link (:func:`replace_regular`); then they sync the directory
so the name survives a crash. Standard library only.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Callable

__all__ = [
    "NotRegularFileError",
    "file_kind",
    "rename_noreplace",
    "replace_regular",
    "sync_directory",
]

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_UNSUPPORTED = (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP)


class NotRegularFileError(OSError):
    """The name to replace holds something other than a regular file; it was left as it was."""

    def __init__(self, kind: str, path: str) -> None:
        super().__init__(errno.EEXIST, f"it is {kind}, not a regular file", path)
        self.kind = kind


def file_kind(mode: int) -> str:
    """What ``mode`` (of ``lstat``) says the file is, with its article: 'a FIFO', 'a directory' …"""
    for test, kind in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "a special file"


def _load_renameat2() -> Callable[..., int] | None:
    try:
        func = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


_renameat2 = _load_renameat2()


def rename_noreplace(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Move ``source`` to ``target`` unless ``target`` exists (``FileExistsError`` then).

    ``renameat2(RENAME_NOREPLACE)`` where the kernel and file system have it; else a hard link
    (which fails rather than replace) and an unlink; else, on a file system without hard links,
    a check and a rename, which leaves a narrow race.
    """
    if _renameat2 is not None:
        if _renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in _UNSUPPORTED:  # else: not supported here
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


def replace_regular(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Move ``source`` to ``target``, replacing ``target`` only if it is a regular file (or absent).

    Anything else under that name — a device node, a FIFO, a socket, a directory, a symbolic link
    (whose target is never written either) — is left as it was: :class:`NotRegularFileError`.
    ``renameat2(RENAME_EXCHANGE)`` swaps the two names atomically and the file that comes back is
    looked at: a regular one is removed, anything else is swapped back at once, so no check can be
    raced. Where the kernel or file system lacks it: a check with ``lstat`` and a rename.
    """
    for _ in range(8):  # the name may come and go between the attempts; each one is atomic
        if _renameat2 is None:
            break
        src, dst = os.fsencode(source), os.fsencode(target)
        if _renameat2(_AT_FDCWD, src, _AT_FDCWD, dst, _RENAME_EXCHANGE) == 0:
            mode = os.lstat(source).st_mode  # what was under the target's name
            if stat.S_ISREG(mode):
                os.unlink(source)
                return
            if _renameat2(_AT_FDCWD, src, _AT_FDCWD, dst, _RENAME_EXCHANGE) != 0:
                code = ctypes.get_errno()
                raise OSError(
                    code, f"{os.strerror(code)}; what was there is now {os.fspath(source)}", os.fspath(target)
                )
            raise NotRegularFileError(file_kind(mode), os.fspath(target))
        code = ctypes.get_errno()
        if code == errno.ENOENT:  # nothing to exchange with: give the name, unless it appeared meanwhile
            try:
                rename_noreplace(source, target)
            except FileExistsError:
                continue
            return
        if code in _UNSUPPORTED:
            break
        raise OSError(code, os.strerror(code), os.fspath(target))
    else:
        raise OSError(errno.EAGAIN, "the output kept changing while it was replaced", os.fspath(target))
    try:
        mode = os.lstat(target).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(file_kind(mode), os.fspath(target))
    except FileNotFoundError:
        pass
    os.replace(source, target)


def sync_directory(directory: str | os.PathLike[str]) -> None:
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

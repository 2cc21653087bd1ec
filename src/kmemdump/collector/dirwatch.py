"""Being told when table directories change (inotify), so that an idle collector need not list them.

:class:`DirWatch` is one inotify descriptor watching directories for names that appear or go
(``IN_CREATE``, ``IN_MOVED_TO``, ``IN_DELETE``, ``IN_MOVED_FROM``), for a file's times changing
(``IN_ATTRIB``: a producer touches its table when it arms or changes its watchdog, so that a collector
reads it at once instead of at its next quiet read), for a file opened for writing being closed for the
last time (``IN_CLOSE_WRITE``: a producer's exit closes its table and arena, so the collector learns of a
death without a pidfd per process; its own read-only opens raise only ``IN_CLOSE_NOWRITE``, which is not
watched) and for the directory itself going. Files unlinked since they were opened are reported too (no
``IN_EXCL_UNLINK``): a producer builds its table under a temporary name and links it into place, so its
descriptor and mapping name the temporary file, unlinked since, and their last close is reported under
that name (``.<pid>-<start time>-<tag>.tmp``). The watcher
polls its descriptor with everything else; it lists a directory again only when told (and, as a
safety net, on a slow timer). Where inotify is missing or refused (no more instances or watches for
this user, a seccomp filter) :meth:`DirWatch.open` gives None, :meth:`DirWatch.watch` False, and the
watcher lists on a timer.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct
from collections.abc import Callable

from kmemdump.record import frozen

__all__ = ["Changes", "DirWatch"]

_IN_ATTRIB = 0x00000004
_IN_CLOSE_WRITE = 0x00000008
_IN_MOVED_FROM = 0x00000040
_IN_MOVED_TO = 0x00000080
_IN_CREATE = 0x00000100
_IN_DELETE = 0x00000200
_IN_DELETE_SELF = 0x00000400
_IN_MOVE_SELF = 0x00000800
_IN_Q_OVERFLOW = 0x00004000
_IN_IGNORED = 0x00008000
_IN_ONLYDIR = 0x01000000
_IN_DONT_FOLLOW = 0x02000000
_LISTING = _IN_CREATE | _IN_MOVED_TO | _IN_DELETE | _IN_MOVED_FROM
_GONE = _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_IGNORED
_MASK = _LISTING | _IN_ATTRIB | _IN_CLOSE_WRITE | _IN_DELETE_SELF | _IN_MOVE_SELF
_FLAGS = _IN_ONLYDIR | _IN_DONT_FOLLOW
_EVENT = struct.Struct("iIII")
_READ_SIZE = 64 * 1024

_Init = Callable[[int], int]
_AddWatch = Callable[[int, bytes, int], int]


def _load() -> tuple[_Init, _AddWatch] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        init, add = libc.inotify_init1, libc.inotify_add_watch
    except (OSError, AttributeError):
        return None
    init.argtypes = [ctypes.c_int]
    init.restype = ctypes.c_int
    add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    add.restype = ctypes.c_int
    return init, add


_calls = _load()


@frozen
class Changes:
    """What :meth:`DirWatch.changed` saw since it was last asked."""

    listed: frozenset[str]
    """Directories where a name came or went, or that went themselves: to be listed again."""
    touched: frozenset[str]
    """Paths (directory/name) whose attributes changed: a table to read now."""
    overflow: bool
    """Events were lost (the kernel's queue overflowed, or the descriptor failed): list everything."""
    closed: frozenset[str] = frozenset()
    """Paths (directory/name) of files closed after writing: the hint of a producer's exit."""

    def __bool__(self) -> bool:
        return bool(self.listed or self.touched or self.closed or self.overflow)


class DirWatch:
    """Watches directories; :meth:`changed` says what changed since it was last asked."""

    def __init__(self, fd: int, add: _AddWatch) -> None:
        self._fd = fd
        self._add = add
        self._watched: dict[str, int] = {}
        self._names: dict[int, str] = {}
        self._prefixes: dict[int, bytes] = {}

    @classmethod
    def open(cls) -> DirWatch | None:
        """A new watch, or None where inotify cannot be had (the caller lists on a timer then)."""
        if _calls is None:
            return None
        init, add = _calls
        fd = init(os.O_NONBLOCK | os.O_CLOEXEC)
        return None if fd < 0 else cls(fd, add)

    def fileno(self) -> int:
        return self._fd

    def watching(self, directory: str) -> bool:
        return directory in self._watched

    def watch(self, directory: str, prefix: str = "") -> bool:
        """Watch ``directory`` (not through a symbolic link) for names starting with ``prefix``; False
        when it cannot be watched (too many watches for this user, gone): the caller's timer covers it
        then."""
        if directory in self._watched:
            return True
        if self._fd < 0:
            return False
        wd = self._add(self._fd, os.fsencode(directory), _MASK | _FLAGS)
        if wd < 0:
            return False
        self._watched[directory] = wd
        self._names[wd] = directory
        self._prefixes[wd] = os.fsencode(prefix)
        return True

    def changed(self) -> Changes:
        """Read every pending event (the descriptor is non-blocking)."""
        listed: set[str] = set()
        touched: set[str] = set()
        closed: set[str] = set()
        overflow = False
        while self._fd >= 0:
            try:
                data = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                break
            except OSError:
                overflow = True
                break
            if not data:
                break
            overflow = self._parse(data, listed, touched, closed) or overflow
        return Changes(frozenset(listed), frozenset(touched), overflow, frozenset(closed))

    def _parse(self, data: bytes, listed: set[str], touched: set[str], closed: set[str]) -> bool:
        overflow = False
        at = 0
        while at + _EVENT.size <= len(data):
            wd, mask, _cookie, size = _EVENT.unpack_from(data, at)
            name = data[at + _EVENT.size : at + _EVENT.size + size].rstrip(b"\0")
            at += _EVENT.size + size
            if mask & _IN_Q_OVERFLOW:
                overflow = True
                continue
            directory = self._names.get(wd)
            if directory is None:
                continue
            if mask & _GONE:  # watched no more (the kernel drops the watch): watched again when listed
                self._names.pop(wd, None)
                self._prefixes.pop(wd, None)
                if self._watched.get(directory) == wd:
                    del self._watched[directory]
                listed.add(directory)
                continue
            if not name.startswith(self._prefixes.get(wd, b"")):
                continue
            if mask & _LISTING:
                listed.add(directory)
            elif mask & (_IN_ATTRIB | _IN_CLOSE_WRITE):
                path = os.path.join(directory, os.fsdecode(name))
                if mask & _IN_ATTRIB:
                    touched.add(path)
                if mask & _IN_CLOSE_WRITE:
                    closed.add(path)
        return overflow

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1

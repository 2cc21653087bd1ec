"""Which dumps of a dump directory are confirmed shipped: the ledger, ``DIR/.shipped/``.

The shipper writes one small record per dump once both its objects are stored (``NAME.json``: the
dump's inode, size and modification time when it was shipped, and its ``s3://`` URL), under a
temporary name, synced and renamed into place. A record stands for that file only: a dump replaced
under the same name (another inode, size or time) is not shipped. Retention reads the ledger to
remove shipped dumps first and keep those not shipped yet; the shipper's sweep reads it to find the
dumps still to ship after a restart or an outage.

A dump directory with a ledger is a *shipping* directory. The ledger is trusted only when it is a
real directory (no link followed) owned by this user or by the dump directory's owner, and writable
by nobody else; every record is
read by name in it, no link followed, at most :data:`MAX_RECORD` bytes, and checked field by field.
It holds no secret (names, sizes and object URLs); the dump directory's mode protects it as it
protects the dumps' names.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
import time
from pathlib import Path
from typing import Any

from kmemdump.record import frozen

__all__ = ["LEDGER_DIR", "MAX_RECORD", "Ledger", "LedgerError", "ShippedRecord", "identity_of"]

LEDGER_DIR = ".shipped"
MAX_RECORD = 4096
_SUFFIX = ".json"
_FORMAT = "kmemdump-shipped"
_VERSION = 1


class LedgerError(OSError):
    """The ledger cannot be used (not a directory of this user's, or not writable only by them)."""


@frozen
class ShippedRecord:
    name: str
    identity: tuple[int, int, int, int]
    """(st_dev, st_ino, st_size, st_mtime_ns) of the dump file when it was shipped."""
    url: str
    shipped_ns: int


def identity_of(info: os.stat_result) -> tuple[int, int, int, int]:
    """What a record matches a dump file by: the same file, not changed since."""
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


class Ledger:
    """The ledger of one dump directory; :meth:`open` it, :meth:`close` it (or use ``with``)."""

    def __init__(self, directory: Path, fd: int) -> None:
        self.directory = directory
        self._fd = fd

    @classmethod
    def open(cls, dump_dir: Path, *, create: bool = False) -> Ledger | None:
        """The ledger of ``dump_dir``; None when it has none (and ``create`` is false).

        :class:`LedgerError` when ``DIR/.shipped`` is a link, not a directory, not this user's, or
        writable by others (something planted it: it is not trusted)."""
        path = Path(dump_dir) / LEDGER_DIR
        try:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(path, 0o755)
            owners = {os.geteuid(), os.stat(dump_dir).st_uid}
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as err:
            raise LedgerError(f"the ship ledger {path} cannot be made or opened: {err.strerror}") from err
        info = os.fstat(fd)
        if info.st_uid not in owners or info.st_mode & 0o022:
            os.close(fd)
            raise LedgerError(
                f"the ship ledger {path} is not trusted: it belongs to uid {info.st_uid} (mode "
                f"{stat.S_IMODE(info.st_mode):o}), neither this user ({os.geteuid()}) nor the dump "
                "directory's owner, or others may write to it (remove it)"
            )
        return cls(path, fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writing ----------------------------------------------------------------------------------

    def record(self, name: str, info: os.stat_result, url: str) -> None:
        """Say that the dump ``name`` (the file ``info`` describes) is stored at ``url``."""
        _check_name(name)
        body = json.dumps(
            {
                "format": _FORMAT,
                "version": _VERSION,
                "name": name,
                "identity": list(identity_of(info)),
                "url": url[:2000],
                "shipped_ns": time.time_ns(),
            }
        ).encode()
        temporary = f".{name}.{secrets.token_hex(6)}.tmp"
        fd = os.open(
            temporary,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o644,
            dir_fd=self._fd,
        )
        try:
            try:
                os.write(fd, body)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, name + _SUFFIX, src_dir_fd=self._fd, dst_dir_fd=self._fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=self._fd)
            raise
        with contextlib.suppress(OSError):
            os.fsync(self._fd)

    def forget(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError, ValueError):
            _check_name(name)
            os.unlink(name + _SUFFIX, dir_fd=self._fd)

    # --- reading ----------------------------------------------------------------------------------

    def read(self, name: str) -> ShippedRecord | None:
        """The record of ``name``, or None (none, or not a well-formed record)."""
        try:
            _check_name(name)
            fd = os.open(
                name + _SUFFIX, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=self._fd
            )
        except (OSError, ValueError):
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            raw: Any = json.loads(os.read(fd, MAX_RECORD + 1)[: MAX_RECORD + 1])
            identity = tuple(int(v) for v in raw["identity"])
            if raw.get("format") != _FORMAT or raw.get("version") != _VERSION or raw.get("name") != name:
                return None
            if len(identity) != 4:
                return None
            return ShippedRecord(name, identity, str(raw.get("url", "")), int(raw.get("shipped_ns", 0)))
        except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError):
            return None
        finally:
            os.close(fd)

    def shipped(self, name: str, info: os.stat_result) -> bool:
        """Whether the dump file ``name``, as ``info`` describes it now, is the one shipped."""
        record = self.read(name)
        return record is not None and record.identity == identity_of(info)

    def names(self, limit: int = 1_000_000) -> list[str]:
        """The dump names that have a record (at most ``limit`` looked at)."""
        found = []
        with os.scandir(self._fd) as entries:
            for count, entry in enumerate(entries):
                if count >= limit:
                    break
                if entry.name.endswith(_SUFFIX) and not entry.name.startswith("."):
                    found.append(entry.name[: -len(_SUFFIX)])
        return found

    def tidy(self, present: set[str]) -> int:
        """Remove the records of dumps no longer in the directory, and stale temporary files."""
        removed = 0
        for name in self.names():
            if name not in present:
                self.forget(name)
                removed += 1
        with os.scandir(self._fd) as entries:
            stale = [e.name for e in entries if e.name.startswith(".") and e.name.endswith(".tmp")]
        for name in stale:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=self._fd)
        return removed


def _check_name(name: str) -> None:
    if not name or "/" in name or name.startswith(".") or "\0" in name or len(name) > 200:
        raise ValueError(f"not a dump name: {name!r}")

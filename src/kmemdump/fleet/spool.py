"""The ship spool: a directory of dumps waiting to be uploaded, which survives restarts and outages.

Each entry is the dump itself — a hard link to the file in the dump directory, so it costs no space
while both exist (a copy where a link is impossible) — and a small manifest beside it,
``NAME.ship.json``: when it was queued, where it came from, how many uploads failed. Every file is
written under a temporary name (starting with ``.``), synced and renamed into place, so a crash at
any moment leaves either the old state or the new one:

* a dump without a manifest (the collector died right after linking it) is admitted again;
* a manifest without its dump, or one that cannot be read, is removed (the dump is re-admitted);
* temporary files are removed.

The spool is bounded in bytes and in dumps: admitting a dump that does not fit drops the oldest
entries (the local dump itself is kept; only its upload is given up), and a dump larger than the
whole spool is refused. Both are logged.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kmemdump.record import frozen
from kmemdump.record import replace

__all__ = ["MANIFEST_SUFFIX", "Spool", "SpoolEntry"]

MANIFEST_SUFFIX = ".ship.json"
_FORMAT = "kmemdump-spool"
_VERSION = 1
_MAX_MANIFEST = 64 * 1024


@frozen
class SpoolEntry:
    name: str
    path: Path
    size: int
    queued_ns: int
    source: str = ""
    """The dump's path in the dump directory ("" when unknown)."""
    source_id: tuple[int, int] = (0, 0)
    """(st_dev, st_ino) of that file when it was queued: it is removed after the upload only if
    the file there is still the same one."""
    attempts: int = 0
    last_error: str = ""


class Spool:
    """The spool directory; used by one shipper thread (``link`` may be called from another)."""

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        max_dumps: int,
        log: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.max_dumps = max_dumps
        self.log = log

    def prepare(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    # --- queueing ---------------------------------------------------------------------------------

    def link(self, dump: Path) -> bool:
        """Hard-link ``dump`` into the spool (fast: safe to call from the collector's loop).
        False when that is impossible (another file system …): :meth:`admit` copies it then."""
        try:
            os.link(dump, self.directory / dump.name, follow_symlinks=False)
        except FileExistsError:
            return True
        except OSError:
            return False
        return True

    def admit(self, dump: Path) -> SpoolEntry | None:
        """Make ``dump`` an entry (copying it if it is not linked yet) and keep the spool within
        bounds; None when it was refused or could not be queued (logged)."""
        target = self.directory / dump.name
        try:
            if not target.exists():
                self._copy(dump, target)
            stat = target.stat()
        except OSError as err:
            self.log(f"ship cannot queue {dump}: {err}")
            return None
        source_id = (0, 0)
        with contextlib.suppress(OSError):
            original = os.stat(dump, follow_symlinks=False)
            source_id = (original.st_dev, original.st_ino)
        entry = SpoolEntry(
            dump.name,
            target,
            stat.st_size,
            time.time_ns(),
            source=str(dump) if dump.parent != self.directory else "",
            source_id=source_id if dump.parent != self.directory else (0, 0),
        )
        if entry.size > self.max_bytes:
            self.log(
                f"ship spool refused {entry.name}: {entry.size} bytes is more than the whole spool "
                f"({self.max_bytes} bytes); the local dump is kept"
            )
            _unlink(target)
            return None
        try:
            self._write_manifest(entry)
        except OSError as err:
            self.log(f"ship cannot queue {dump}: {err}")
            _unlink(target)
            return None
        self._bound(entry)
        return entry

    def _bound(self, newest: SpoolEntry) -> None:
        entries = self.entries()
        total = sum(e.size for e in entries)
        while entries and (total > self.max_bytes or len(entries) > self.max_dumps):
            oldest = entries.pop(0)
            if oldest.name == newest.name and entries:
                entries.append(oldest)  # never drop the one just admitted while older ones remain
                continue
            self.remove(oldest)
            total -= oldest.size
            self.log(
                f"ship spool full (limits: {self.max_dumps} dumps, {self.max_bytes} bytes): gave up "
                f"uploading {oldest.name}, the oldest; the local dump is kept"
            )

    def _copy(self, dump: Path, target: Path) -> None:
        temporary = self.directory / f".{target.name}.tmp"
        try:
            with open(dump, "rb") as source, open(temporary, "xb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())
            os.link(temporary, target)  # never replaces an existing entry
        finally:
            _unlink(temporary)
        self._sync_directory()

    # --- the entries ------------------------------------------------------------------------------

    def recover(self) -> list[Path]:
        """Tidy after a crash; returns the dumps that lack a manifest (to :meth:`admit` again)."""
        try:
            names = {entry.name for entry in os.scandir(self.directory)}
        except FileNotFoundError:
            return []
        for name in sorted(names):
            path = self.directory / name
            if name.startswith("."):
                _unlink(path)
                names.discard(name)
            elif name.endswith(MANIFEST_SUFFIX):
                dump_name = name[: -len(MANIFEST_SUFFIX)]
                if dump_name not in names or self._read(dump_name) is None:
                    _unlink(path)
                    names.discard(name)
        return [
            self.directory / name
            for name in sorted(names)
            if not name.endswith(MANIFEST_SUFFIX) and name + MANIFEST_SUFFIX not in names
        ]

    def entries(self) -> list[SpoolEntry]:
        """Every queued dump, oldest first."""
        try:
            names = [e.name for e in os.scandir(self.directory) if e.name.endswith(MANIFEST_SUFFIX)]
        except FileNotFoundError:
            return []
        found = [self._read(n[: -len(MANIFEST_SUFFIX)]) for n in names if not n.startswith(".")]
        return sorted((e for e in found if e is not None), key=lambda e: (e.queued_ns, e.name))

    def record_failure(self, entry: SpoolEntry, error: str) -> SpoolEntry:
        updated = replace(entry, attempts=entry.attempts + 1, last_error=error[:500])
        with contextlib.suppress(OSError):
            self._write_manifest(updated)
        return updated

    def remove(self, entry: SpoolEntry) -> None:
        """Forget an entry: the manifest first, so a crash in between leaves a dump to re-admit."""
        _unlink(self.directory / (entry.name + MANIFEST_SUFFIX))
        _unlink(entry.path)

    # --- manifests --------------------------------------------------------------------------------

    def _write_manifest(self, entry: SpoolEntry) -> None:
        body = {
            "format": _FORMAT,
            "version": _VERSION,
            "name": entry.name,
            "queued_ns": entry.queued_ns,
            "source": entry.source,
            "source_id": list(entry.source_id),
            "attempts": entry.attempts,
            "last_error": entry.last_error,
        }
        final = self.directory / (entry.name + MANIFEST_SUFFIX)
        temporary = self.directory / f".{final.name}.tmp"
        try:
            with open(temporary, "w", encoding="utf-8") as out:
                json.dump(body, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, final)
        finally:
            _unlink(temporary)
        self._sync_directory()

    def _read(self, name: str) -> SpoolEntry | None:
        path = self.directory / name
        try:
            with open(self.directory / (name + MANIFEST_SUFFIX), "rb") as handle:
                raw: Any = json.loads(handle.read(_MAX_MANIFEST + 1)[:_MAX_MANIFEST])
            stat = os.stat(path, follow_symlinks=False)
        except (OSError, ValueError):
            return None
        try:
            if raw.get("format") != _FORMAT or raw.get("version") != _VERSION or raw.get("name") != name:
                return None
            dev, ino = raw.get("source_id", [0, 0])
            return SpoolEntry(
                name,
                path,
                stat.st_size,
                int(raw["queued_ns"]),
                str(raw.get("source", "")),
                (int(dev), int(ino)),
                int(raw.get("attempts", 0)),
                str(raw.get("last_error", "")),
            )
        except (AttributeError, KeyError, TypeError, ValueError):
            return None

    def _sync_directory(self) -> None:
        with contextlib.suppress(OSError):
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
        path.unlink()

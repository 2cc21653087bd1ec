"""Store-and-forward shipping of finished dumps, in a thread of its own.

The collector calls :meth:`Shipper.submit` once a dump is complete: a hard link into the spool, and
nothing else on the collector's path. The shipper's thread uploads the spool's entries oldest first:
the dump with a conditional PUT (``If-None-Match: *``) at a key made of its host, pid, start time,
reason and capture time, then its index object the same way. "Exists" is success when the object
there has the same content (its ETag is the MD5 of ours, or its bytes hash the same), so an upload
retried after a crash or an outage never writes twice. Only then is the entry removed from the spool
(and, when asked, the local dump too).

Any failure keeps the entry and waits before the next attempt: exponential backoff from
``retry_min`` doubling to ``retry_max``, each wait drawn between half and all of that (jitter, so a
fleet that lost its store does not come back in step). Credentials and secrets never reach the log.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from kmemdump.errors import DumpFormatError
from kmemdump.errors import KmemdumpError
from kmemdump.fleet.catalog import Digest
from kmemdump.fleet.catalog import build_index
from kmemdump.fleet.catalog import digest_file
from kmemdump.fleet.catalog import index_key_of
from kmemdump.fleet.errors import StoreError
from kmemdump.fleet.errors import StoreTooLargeError
from kmemdump.fleet.ledger import Ledger
from kmemdump.fleet.ledger import LedgerError
from kmemdump.fleet.ledger import identity_of
from kmemdump.fleet.s3 import ObjectStore
from kmemdump.fleet.spool import Spool
from kmemdump.fleet.spool import SpoolEntry
from kmemdump.fleet.sweep import sweep
from kmemdump.fleet.url import StoreURL
from kmemdump.formats.dumpindex import MAX_INDEX_BYTES
from kmemdump.formats.dumpindex import DumpIndex
from kmemdump.formats.dumpindex import encode_index
from kmemdump.record import frozen
from kmemdump.record import replace

__all__ = ["DEFAULT_SPOOL_BYTES", "DEFAULT_SPOOL_DUMPS", "ShipOptions", "Shipper", "backoff_delay"]

DEFAULT_SPOOL_BYTES = 4 * 1024**3
DEFAULT_SPOOL_DUMPS = 1000


@frozen
class ShipOptions:
    url: StoreURL
    spool: Path
    max_spool_bytes: int = DEFAULT_SPOOL_BYTES
    max_spool_dumps: int = DEFAULT_SPOOL_DUMPS
    retry_min: float = 1.0
    """Seconds before the first retry."""
    retry_max: float = 300.0
    """The longest wait between two attempts."""
    delete_local: bool = False
    """Remove the dump from the dump directory once its upload is confirmed."""
    dump_dir: Path | None = None
    """The dump directory: its ledger records what is shipped, and the sweep queues what is not."""
    sweep: bool = True
    """Sweep ``dump_dir`` at start, after an outage and every ``sweep_every`` seconds."""
    sweep_every: float = 600.0
    sweep_max_age: float | None = 7 * 86400.0
    """Dumps modified longer ago than this are left to the dump directory (None: no limit)."""
    settle_s: float = 5.0
    """A file modified less than this long ago may still be being written: a later sweep takes it."""


def backoff_delay(failures: int, retry_min: float, retry_max: float, rng: random.Random) -> float:
    """The wait after ``failures`` failures in a row: ``retry_min * 2**(failures-1)`` capped at
    ``retry_max``, then drawn uniformly between half of it and all of it."""
    ceiling = min(retry_max, retry_min * 2 ** min(max(failures - 1, 0), 60))
    return rng.uniform(ceiling / 2, ceiling)


class Shipper:
    """The upload thread and its spool. ``start()``, ``submit(path)`` per dump, ``stop()``."""

    def __init__(
        self,
        options: ShipOptions,
        *,
        log: Callable[[str], None],
        store: Callable[[StoreURL], ObjectStore] = ObjectStore,
    ) -> None:
        self.options = options
        self.log = log
        self.spool = Spool(
            options.spool, max_bytes=options.max_spool_bytes, max_dumps=options.max_spool_dumps, log=log
        )
        self._make_store = store
        self._store: ObjectStore | None = None
        self._lock = threading.Condition()
        self._submitted: list[Path] = []
        self._stopping = False
        self._busy = False
        self._thread: threading.Thread | None = None
        self._rng = random.Random()
        self.failures = 0
        """Failed attempts in a row (0 after a success)."""
        self.uploaded = 0
        self.ledger: Ledger | None = None
        self._sweep_at: float | None = None
        """Monotonic time of the next sweep (None: none due)."""
        self._sweep_for_room = False
        """The last sweep left dumps for want of room in the spool: sweep again once it is emptied."""
        self._swept_line = ""
        """What the last sweep said (the same leftovers are not said again every time)."""
        self._refused: dict[tuple[int, int, int, int], None] = {}
        """Files found not to be dumps (identity; oldest first, bounded): no sweep queues them again."""
        self.shipped_since = 0
        """Uploads confirmed since :meth:`take_shipped` last asked (retention may remove them now)."""

    # --- the collector's side ---------------------------------------------------------------------

    def start(self) -> None:
        """Check the settings (errors are raised here, before any dump), recover the spool, start."""
        self._client()
        self.spool.prepare()
        if self.options.dump_dir is not None:
            try:
                self.ledger = Ledger.open(self.options.dump_dir, create=True)
            except LedgerError as err:
                self.log(f"ship: {err}; what is shipped is not recorded, and the dump directory is not swept")
            if self.ledger is not None and self.options.sweep:
                self._sweep_at = time.monotonic()
        with self._lock:
            self._submitted.extend(self.spool.recover())
        self._thread = threading.Thread(target=self._run, name="kmemdump-shipper", daemon=True)
        self._thread.start()

    def submit(self, dump: Path) -> None:
        """Queue a finished dump: a hard link into the spool, then the thread takes over."""
        self.spool.link(dump)  # where it cannot link, the thread copies the dump instead
        with self._lock:
            self._submitted.append(dump)
            self._lock.notify_all()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the request in flight (the spool keeps what is left for the next start)."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def take_shipped(self) -> int:
        """How many uploads were confirmed since the last call (the collector applies retention)."""
        with self._lock:
            count, self.shipped_since = self.shipped_since, 0
        return count

    def wait_idle(self, timeout: float) -> bool:
        """Until nothing is queued and no upload is in flight (for tests and benchmarks)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._submitted or self._busy or self.spool.entries():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 0.1))
        return True

    # --- the thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._stopping:
                    return
                submitted, self._submitted = self._submitted, []
                self._busy = True
            for dump in submitted:
                self.spool.admit(dump)
            if self._sweep_at is not None and time.monotonic() >= self._sweep_at:
                self._sweep()  # also during an outage: what it queues waits in the spool, within its bounds
            delay: float | None = None
            for entry in self.spool.entries():
                if self._stopping:
                    break
                try:
                    self._ship(entry)
                except Exception as unexpected:  # never let the thread die: shipping would stop for good
                    err = (
                        unexpected
                        if isinstance(unexpected, StoreError)
                        else StoreError(f"unexpected {type(unexpected).__name__}: {unexpected}")
                    )
                    self.failures += 1
                    self.spool.record_failure(entry, str(err))
                    delay = backoff_delay(
                        self.failures, self.options.retry_min, self.options.retry_max, self._rng
                    )
                    self.log(
                        f"ship {entry.name}: attempt {self.failures} failed: {err}; next try in {delay:.3g} s"
                    )
                    if type(unexpected) is StoreError:
                        continue  # this dump's keys hold other content: the others may still go
                    break  # the store (or something else, not this dump) failed: wait before any other
                if self.failures and self.ledger is not None and self.options.sweep:
                    self._sweep_at = time.monotonic()  # the outage is over: what it left behind goes too
                self.failures = 0
            if delay is None and self._sweep_for_room and not self._stopping:
                self._sweep_at = time.monotonic()  # the spool has room again for what the sweep left
            with self._lock:
                self._busy = False
                self._lock.notify_all()
                if self._stopping:
                    return
                if delay is not None:
                    self._lock.wait(delay)  # a new dump does not cut the wait short: the store is down
                elif not self._submitted:
                    if self._sweep_at is None:
                        self._lock.wait()
                    elif self._sweep_at > time.monotonic():
                        self._lock.wait(self._sweep_at - time.monotonic())

    def _sweep(self) -> None:
        """Queue the dump directory's dumps not confirmed shipped (:mod:`kmemdump.fleet.sweep`)."""
        options = self.options
        directory = options.dump_dir
        if directory is None:
            self._sweep_at = None
            return
        self._sweep_at = time.monotonic() + options.sweep_every
        try:
            result = sweep(
                directory,
                self.spool,
                self.ledger,
                settle_s=options.settle_s,
                max_age_s=options.sweep_max_age,
                refused=lambda identity: identity in self._refused,
            )
        except OSError as err:
            self.log(f"ship sweep of {directory} failed: {err}")
            return
        line = result.line(directory)
        if line and (result.queued or line != self._swept_line):  # the same leftovers are said once
            self.log(line)
        self._swept_line = line
        if result.settling:  # look again once they have settled (at most once a second)
            self._sweep_at = min(self._sweep_at, time.monotonic() + max(options.settle_s, 1.0))
        self._sweep_for_room = result.no_room > 0
        if result.present and self.ledger is not None:
            with contextlib.suppress(OSError):
                self.ledger.tidy(set(result.present))

    def _client(self) -> ObjectStore:
        if self._store is None:
            self._store = self._make_store(self.options.url)
        return self._store

    def _ship(self, entry: SpoolEntry) -> None:
        """Upload one entry, or raise :class:`StoreError` (the entry stays)."""
        try:
            before = os.stat(entry.path, follow_symlinks=False)
            digest = digest_file(entry.path)
            index = build_index(entry.path, self.options.url, digest)
            owner = self._owner(entry, before)
            if owner not in (os.geteuid(), index.uid):
                raise DumpFormatError(
                    f"its file belongs to uid {owner}, but it says it is a dump of a process of "
                    f"uid {index.uid}: not a dump this collector wrote"
                )
        except (DumpFormatError, OSError) as err:
            self.log(
                f"ship {entry.name}: not uploaded, it is not a readable dump ({err}); dropped from the spool"
            )
            self._refuse(entry)
            return
        except KmemdumpError as err:
            self.log(f"ship {entry.name}: not uploaded ({err}); dropped from the spool")
            self._refuse(entry)
            return
        store = self._client()
        key = self._put_dump(store, entry, index.key, digest)
        if key != index.key:
            index = _with_key(index, key)
        self._put_index(store, index)
        self.spool.remove(entry)
        self.uploaded += 1
        after = (time.time_ns() - index.captured_ns) / 1e9
        self.log(
            f"ship pid={index.pid} uploaded s3://{self.options.url.bucket}/{key} ({index.size} bytes, "
            f"{after:.3f} s after capture)"
        )
        if self.options.delete_local:
            self._delete_local(entry)
        else:
            self._record(entry, before, f"s3://{self.options.url.bucket}/{key}")
        with self._lock:
            self.shipped_since += 1

    @staticmethod
    def _owner(entry: SpoolEntry, spooled: os.stat_result) -> int:
        """The owner of the dump directory's file (a copy in the spool is this user's)."""
        if entry.source:
            with contextlib.suppress(OSError):
                original = os.stat(entry.source, follow_symlinks=False)
                if (original.st_dev, original.st_ino) == entry.source_id:
                    return original.st_uid
        return spooled.st_uid

    def _refuse(self, entry: SpoolEntry) -> None:
        """Drop an entry that is not a dump, and remember its file so that no sweep queues it again."""
        with contextlib.suppress(OSError):
            self._refused[identity_of(os.stat(entry.path, follow_symlinks=False))] = None
            while len(self._refused) > 10_000:
                del self._refused[next(iter(self._refused))]
        self.spool.remove(entry)

    def _record(self, entry: SpoolEntry, before: os.stat_result, url: str) -> None:
        """Note in the ledger that the dump directory's file is shipped, if it is still the one that
        was uploaded (same inode, size and modification time as before the upload)."""
        if self.ledger is None or not entry.source:
            return
        source = Path(entry.source)
        if self.options.dump_dir is None or source.parent.resolve() != self.options.dump_dir.resolve():
            return
        try:
            now = os.stat(source, follow_symlinks=False)
            if (now.st_dev, now.st_ino) != entry.source_id:
                return
            if (before.st_dev, before.st_ino) == (now.st_dev, now.st_ino):  # linked: the very file uploaded
                changed = identity_of(now) != identity_of(before)
            else:  # a copy was uploaded: the original must not have changed since it was queued
                changed = now.st_size != before.st_size or now.st_mtime_ns > entry.queued_ns
            if changed:
                self.log(
                    f"ship {entry.name}: the file changed while it was uploaded; not recorded as shipped"
                )
                return
            self.ledger.record(entry.name, now, url)
        except OSError as err:
            self.log(f"ship {entry.name}: uploaded, but not recorded as shipped: {err}")

    def _put_dump(self, store: ObjectStore, entry: SpoolEntry, key: str, digest: Digest) -> str:
        if store.put_if_absent(key, entry.path) == "created" or self._same(store, key, digest):
            return key
        # Another dump already has this key (two hosts with one name, and the same pid, start and
        # capture time): keep both, ours under a key that carries its own hash.
        stem, dot, suffix = key.partition(".core")
        other = f"{stem}~{digest.sha256[:12]}{dot}{suffix}"
        self.log(f"ship {entry.name}: {key} holds another dump; uploading as {other}")
        if store.put_if_absent(other, entry.path) == "exists" and not self._same(store, other, digest):
            raise StoreError("the dump's keys hold other content", key=other)
        return other

    def _same(self, store: ObjectStore, key: str, digest: Digest) -> bool:
        """Whether the object at ``key`` holds the bytes ``digest`` describes."""
        info = store.head(key)
        if info is None:
            raise StoreError("the store said the object exists, then that it does not", key=key)
        if info.size != digest.size:
            return False
        if info.etag is not None and len(info.etag) == 32 and "-" not in info.etag:
            return info.etag.lower() == digest.md5
        with tempfile.TemporaryFile() as copy:  # an ETag that is not an MD5 (multipart, SSE-KMS)
            store.download(key, copy, limit=digest.size)
            copy.seek(0)
            sha = hashlib.sha256()
            while chunk := copy.read(1 << 20):
                sha.update(chunk)
        return sha.hexdigest() == digest.sha256

    def _put_index(self, store: ObjectStore, index: DumpIndex) -> None:
        key = index_key_of(index.key)
        if store.put_if_absent(key, encode_index(index)) == "created":
            return
        try:
            theirs = json.loads(store.get(key, limit=MAX_INDEX_BYTES))
        except (ValueError, RecursionError, StoreTooLargeError):  # another tenant's object, not ours
            theirs = None
        if not (
            isinstance(theirs, dict)
            and theirs.get("key") == index.key
            and theirs.get("sha256") == index.sha256
        ):
            raise StoreError("the index object's key holds another index", key=key)

    def _delete_local(self, entry: SpoolEntry) -> None:
        if not entry.source:
            return
        with contextlib.suppress(OSError):
            stat = os.stat(entry.source, follow_symlinks=False)
            if (stat.st_dev, stat.st_ino) == entry.source_id:
                os.unlink(entry.source)
                self.log(f"ship removed the local copy {entry.source}")


def _with_key(index: DumpIndex, key: str) -> DumpIndex:
    return replace(index, key=key)

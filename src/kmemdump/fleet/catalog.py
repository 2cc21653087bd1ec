"""Where a dump and its index object go in a bucket, and the index of a dump file.

Keys are ``PREFIX/DAY/HOST/NAME`` (e.g. ``dumps/2026-11-28/web-7/kmemdump-4242-98765-hang-
20261128T101500.123456Z.core.zst``), the index object beside it with ``.index.json`` in place of
``.core`` or ``.core.zst``. Every part comes from the dump's own metadata (host, pid, start time,
reason, capture time), so a retried or repeated upload of a dump lands on the same keys; and ``ls``
can filter by day, host, pid and reason on the keys alone, before reading any index object.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from datetime import timezone
from pathlib import Path

from kmemdump._version import __version__
from kmemdump.errors import DumpFormatError
from kmemdump.fleet.url import StoreURL
from kmemdump.formats.dumpindex import DumpIndex
from kmemdump.formats.dumpmeta import DumpMeta
from kmemdump.inspect.dumpfile import Dump
from kmemdump.inspect.dumpfile import command_line
from kmemdump.inspect.signature import compute_signature
from kmemdump.record import frozen

__all__ = [
    "INDEX_SUFFIX",
    "Digest",
    "KeyFacts",
    "build_index",
    "day_of",
    "digest_file",
    "dump_key",
    "host_segment",
    "index_key_of",
    "is_dump_name",
    "parse_key",
]

INDEX_SUFFIX = ".index.json"
_NAME = re.compile(
    r"kmemdump-(?P<pid>[0-9]{1,10})-(?P<start>[0-9]{1,20})-(?P<reason>[a-z]{1,16})-"
    r"(?P<stamp>[0-9]{8}T[0-9]{6}\.[0-9]{6}Z)(?:~[0-9a-f]{12})?(?P<suffix>\.core|\.core\.zst|\.index\.json)\Z",
    re.ASCII,
)
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}\Z", re.ASCII)


def host_segment(host: str) -> str:
    """``host`` as one key segment: letters, digits, ``.``, ``_`` and ``-``, at most 100 of them."""
    clean = re.sub(r"[^A-Za-z0-9._-]", "_", host, flags=re.ASCII)[:100]
    return clean if clean.strip(".") else "unknown-host"


def _stamp(captured_ns: int) -> datetime:
    try:
        return datetime.fromtimestamp(captured_ns / 1e9, tz=timezone.utc)  # as the collector names files
    except (OverflowError, OSError, ValueError) as err:
        raise DumpFormatError("the dump's capture time is out of range", captured_ns=captured_ns) from err


def day_of(captured_ns: int) -> str:
    return _stamp(captured_ns).strftime("%Y-%m-%d")


def dump_key(url: StoreURL, meta: DumpMeta, *, compressed: bool) -> str:
    """The dump's object key under ``url``."""
    stamp = _stamp(meta.captured_ns).strftime("%Y%m%dT%H%M%S.%fZ")
    name = f"kmemdump-{meta.pid}-{meta.start_time}-{meta.reason}-{stamp}.core" + (
        ".zst" if compressed else ""
    )
    return url.key(day_of(meta.captured_ns), host_segment(meta.host), name)


def is_dump_name(name: str) -> bool:
    """Whether ``name`` is a dump file's name as the collector writes it
    (``kmemdump-PID-START-REASON-YYYYmmddTHHMMSS.ffffffZ.core`` or ``.core.zst``)."""
    match = _NAME.match(name)
    return match is not None and match["suffix"] != INDEX_SUFFIX and "~" not in name


def index_key_of(key: str) -> str:
    """The index object's key for the dump at ``key``."""
    for suffix in (".core.zst", ".core"):
        if key.endswith(suffix):
            return key[: -len(suffix)] + INDEX_SUFFIX
    return key + INDEX_SUFFIX


@frozen
class KeyFacts:
    """What a key of kmemdump's layout says without reading the object."""

    day: str
    host: str
    pid: int
    start_time: int
    reason: str
    captured_ns: int
    kind: str
    """``dump`` or ``index``."""


def parse_key(key: str) -> KeyFacts | None:
    """The facts in ``…/DAY/HOST/NAME``, or None for a key not of this layout."""
    parts = key.rsplit("/", 3)
    if len(parts) < 3:
        return None
    day, host, name = parts[-3:]
    match = _NAME.match(name)
    if match is None or not _DAY.match(day):
        return None
    try:
        stamp = datetime.strptime(match["stamp"], "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    captured_ns = (int(stamp.timestamp()) * 1_000_000 + stamp.microsecond) * 1000
    kind = "index" if match["suffix"] == INDEX_SUFFIX else "dump"
    return KeyFacts(day, host, int(match["pid"]), int(match["start"]), match["reason"], captured_ns, kind)


@frozen
class Digest:
    size: int
    sha256: str
    md5: str
    """What S3 gives as the ETag of an object uploaded in one PUT."""


def digest_file(path: Path) -> Digest:
    sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            sha.update(chunk)
            md5.update(chunk)
            size += len(chunk)
    return Digest(size, sha.hexdigest(), md5.hexdigest())


def build_index(path: Path, url: StoreURL, digest: Digest | None = None) -> DumpIndex:
    """The index object of the dump file at ``path`` when shipped under ``url``.

    Raises :class:`~kmemdump.errors.DumpFormatError` when the file is not a readable dump.
    """
    digest = digest or digest_file(path)
    with Dump.open(path) as dump:
        meta = dump.meta
        signature = compute_signature(meta, dump.stacks)
        compressed = dump.compressed
    death = meta.death.describe() if meta.death is not None else None
    collector = meta.collector.get("version") if isinstance(meta.collector, dict) else None
    return DumpIndex(
        key=dump_key(url, meta, compressed=compressed),
        host=_short(meta.host),
        pid=meta.pid,
        start_time=meta.start_time,
        reason=meta.reason,
        captured_ns=meta.captured_ns,
        command=_short(command_line(meta)),
        exe=None if meta.exe is None else _short(meta.exe),
        uid=meta.uid,
        size=digest.size,
        sha256=digest.sha256,
        compressed=compressed,
        regions=len(meta.regions),
        stored_bytes=meta.stored_bytes,
        partial=meta.partial,
        signature=signature.id,
        frames=tuple(_short(f) for f in signature.frames),
        signature_basis=_short(signature.basis),
        death=death,
        python=meta.python_version,
        collector=str(collector) if collector else __version__,
    )


def _short(text: str, limit: int = 2000) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"

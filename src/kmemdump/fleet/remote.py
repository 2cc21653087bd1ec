"""Reading a bucket back: listing a fleet's dumps from their index objects, and fetching one dump.

:func:`list_indexes` walks ``PREFIX/DAY/HOST/`` and reads only index objects, and only those whose
key passes the filter (day, host, pid, reason and time are in the key), several at a time. Index
objects are untrusted: one that is too large, malformed or not kmemdump's is reported through
``on_error`` and left out.

:func:`fetch_dump` downloads a dump named by an ``s3://`` URL (its key, or its index object's) into a
private temporary directory, refusing one larger than a cap, checks it against the SHA-256 of its
index object when there is one, and removes it when the process exits.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kmemdump.errors import DumpFormatError
from kmemdump.errors import KmemdumpError
from kmemdump.fleet.catalog import INDEX_SUFFIX
from kmemdump.fleet.catalog import KeyFacts
from kmemdump.fleet.catalog import day_of
from kmemdump.fleet.catalog import host_segment
from kmemdump.fleet.catalog import index_key_of
from kmemdump.fleet.catalog import parse_key
from kmemdump.fleet.errors import StoreError
from kmemdump.fleet.errors import StoreNotFoundError
from kmemdump.fleet.errors import StoreTooLargeError
from kmemdump.fleet.s3 import ObjectStore
from kmemdump.fleet.url import StoreURL
from kmemdump.fleet.url import parse_url
from kmemdump.formats.dumpindex import MAX_INDEX_BYTES
from kmemdump.formats.dumpindex import DumpIndex
from kmemdump.formats.dumpindex import decode_index
from kmemdump.inspect.filters import DumpFilter

__all__ = [
    "DEFAULT_DOWNLOAD_LIMIT",
    "DOWNLOAD_LIMIT_VARIABLE",
    "download_limit",
    "fetch_dump",
    "keep_download",
    "list_indexes",
    "read_index",
]

DEFAULT_DOWNLOAD_LIMIT = 4 * 1024**3
DOWNLOAD_LIMIT_VARIABLE = "KMEMDUMP_MAX_DOWNLOAD"
_READERS = 16


def read_index(store: ObjectStore, key: str) -> DumpIndex:
    """The index object at ``key``, read and checked. At most :data:`MAX_INDEX_BYTES` of it are
    read: a larger object (anyone who may write to the bucket can plant one) is refused from its
    size alone, as :class:`~kmemdump.errors.DumpFormatError`."""
    try:
        data = store.get(key, limit=MAX_INDEX_BYTES)
    except StoreTooLargeError as err:
        size = f"{err.size} bytes" if err.size is not None else "larger"
        raise DumpFormatError(
            f"the index object is {size}, more than the {MAX_INDEX_BYTES} bytes an index object may "
            "have: kmemdump did not write it, and reads no more of it",
            key=key,
        ) from err
    return decode_index(data)


def _days(store: ObjectStore, url: StoreURL, wanted: DumpFilter) -> list[str]:
    first = day_of(wanted.since_ns) if wanted.since_ns is not None else None
    last = day_of(wanted.until_ns) if wanted.until_ns is not None else None
    days = []
    for directory in store.list_dirs(url.prefix):
        day = directory.rsplit("/", 1)[-1]
        if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", day):
            continue  # not one of our day directories
        if (first is None or day >= first) and (last is None or day <= last):
            days.append(day)
    return sorted(days)


def _wanted(facts: KeyFacts, wanted: DumpFilter, hosts: set[str]) -> bool:
    if hosts and facts.host not in hosts:
        return False
    return wanted.matches(pid=facts.pid, reason=facts.reason, captured_ns=facts.captured_ns)


def list_indexes(
    store: ObjectStore,
    url: StoreURL,
    wanted: DumpFilter | None = None,
    *,
    on_error: Callable[[str, KmemdumpError], None] = lambda key, err: None,
) -> list[DumpIndex]:
    """The index objects under ``url`` that pass ``wanted``, oldest capture first."""
    wanted = wanted or DumpFilter()
    hosts = {host_segment(h) for h in wanted.hosts}
    keys: list[str] = []
    for day in _days(store, url, wanted):
        places = [url.key(day, h) for h in sorted(hosts)] if hosts else [url.key(day)]
        for place in places:
            for info in store.objects(place):
                if not info.key.endswith(INDEX_SUFFIX):
                    continue
                facts = parse_key(info.key)
                if facts is None or not _wanted(facts, wanted, hosts):
                    continue
                if info.size > MAX_INDEX_BYTES:
                    on_error(info.key, DumpFormatError("index object is too large", size=info.size))
                    continue
                keys.append(info.key)

    def read(key: str) -> DumpIndex | None:
        try:
            index = read_index(store, key)
        except StoreNotFoundError:
            return None  # removed since the listing
        except DumpFormatError as err:
            on_error(key, err)
            return None
        if index_key_of(index.key) != key:
            on_error(key, DumpFormatError("index object names a dump that is not beside it", dump=index.key))
            return None
        return index

    with ThreadPoolExecutor(max_workers=_READERS) as pool:
        found = [index for index in pool.map(read, keys) if index is not None]
    kept = [
        i
        for i in found
        if wanted.matches(pid=i.pid, reason=i.reason, captured_ns=i.captured_ns)
        and (not wanted.hosts or i.host in wanted.hosts or host_segment(i.host) in hosts)
    ]
    return sorted(kept, key=lambda i: (i.captured_ns, i.key))


def download_limit() -> int:
    raw = os.environ.get(DOWNLOAD_LIMIT_VARIABLE, "")
    return int(raw) if raw.isascii() and raw.isdigit() and int(raw) > 0 else DEFAULT_DOWNLOAD_LIMIT


_TEMPORARY: list[Path] = []


def _remove_temporary() -> None:
    while _TEMPORARY:
        shutil.rmtree(_TEMPORARY.pop(), ignore_errors=True)


def keep_download(path: Path) -> bool:
    """Leave the downloaded dump at ``path`` in place at exit (its reader outlives us: a printed gdb
    command); False when it is not one of ours."""
    for directory in _TEMPORARY:
        if path.parent == directory:
            _TEMPORARY.remove(directory)
            return True
    return False


def fetch_dump(
    text: str,
    store: ObjectStore | None = None,
    *,
    on_warning: Callable[[str], None] = lambda message: None,
) -> Path:
    """Download the dump ``text`` (``s3://BUCKET/KEY`` of a dump or of its index object) to a
    private temporary file, removed at exit; returns its path. An index object beside the dump
    that cannot be used (malformed, too large) is said through ``on_warning``, and the dump is
    read without it."""
    url = parse_url(text)
    if not url.prefix:
        raise StoreError("the URL names a bucket, not a dump (kmemdump ls s3://BUCKET lists them)", url=text)
    store = store or ObjectStore(url)
    key = url.prefix
    index: DumpIndex | None = None
    if key.endswith(INDEX_SUFFIX):
        index = read_index(store, key)
        key = index.key
    info = store.head(key)
    if info is None:
        raise StoreNotFoundError(
            "no such dump in the bucket (kmemdump ls s3://BUCKET/PREFIX lists them)",
            bucket=url.bucket,
            key=key,
        )
    limit = download_limit()
    if info.size > limit:
        raise StoreError(
            f"the dump is {info.size} bytes, more than the {limit}-byte download limit "
            f"(set {DOWNLOAD_LIMIT_VARIABLE}=BYTES to raise it)",
            key=key,
        )
    if index is None:
        try:
            index = read_index(store, index_key_of(key))
        except StoreNotFoundError:
            index = None  # a dump without an index can still be read
        except DumpFormatError as err:
            on_warning(f"the dump's index object is not used: {err}; the dump is not checked against it")
            index = None
    directory = Path(tempfile.mkdtemp(prefix="kmemdump-s3-"))  # mode 0700
    if not _TEMPORARY:
        atexit.register(_remove_temporary)
    _TEMPORARY.append(directory)
    name = key.rsplit("/", 1)[-1]
    target = directory / (name if name.endswith((".core", ".core.zst")) else name + ".core")
    sha = hashlib.sha256()
    with open(target, "xb") as out:
        store.download(key, _Hashing(out, sha), limit=limit)  # type: ignore[arg-type]
    if index is not None and index.key == key and index.sha256 != sha.hexdigest():
        raise DumpFormatError(
            "the dump in the bucket does not match the SHA-256 of its index object (damaged or replaced)",
            key=key,
        )
    return target


class _Hashing:
    """A file that hashes what is written to it."""

    def __init__(self, out: object, sha: hashlib._Hash) -> None:
        self._out = out
        self._sha = sha

    def write(self, data: memoryview) -> int:
        self._sha.update(data)
        return int(self._out.write(data))  # type: ignore[attr-defined]

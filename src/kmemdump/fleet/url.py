"""``s3://BUCKET/PREFIX``: where a fleet's dumps live.

A prefix is a ``/``-separated path of segments; empty, ``.`` and ``..`` segments and control
characters are refused, so every key kmemdump builds is one the stores and their clients agree on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kmemdump.fleet.errors import StoreURLError

__all__ = ["SCHEME", "StoreURL", "check_key", "is_remote", "parse_url"]

SCHEME = "s3://"
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]\Z")


def is_remote(text: object) -> bool:
    """Whether ``text`` names an object store rather than a local path."""
    return isinstance(text, str) and text.lower().startswith(SCHEME)


@dataclass(frozen=True, slots=True)
class StoreURL:
    """A bucket and a prefix inside it (``""`` for the whole bucket)."""

    bucket: str
    prefix: str = ""

    def key(self, *parts: str) -> str:
        """The full key of ``parts`` under the prefix."""
        return "/".join(p for p in (self.prefix, *parts) if p)

    def child(self, key: str) -> StoreURL:
        """The URL of a key of this bucket (``s3://BUCKET/KEY``)."""
        return StoreURL(self.bucket, check_key(key))

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}" if self.prefix else f"{SCHEME}{self.bucket}"


def parse_url(text: str) -> StoreURL:
    """``s3://BUCKET[/PREFIX]`` → :class:`StoreURL`; :class:`StoreURLError` for anything else."""
    if not is_remote(text):
        raise StoreURLError("not an s3:// URL", url=text)
    rest = text[len(SCHEME) :]
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise StoreURLError("not a valid bucket name", url=text, bucket=bucket)
    return StoreURL(bucket, check_key(prefix.strip("/"), url=text) if prefix.strip("/") else "")


def check_key(key: str, *, url: str | None = None) -> str:
    """``key`` itself when every segment is a plain name; :class:`StoreURLError` otherwise."""
    for segment in key.split("/"):
        if segment in ("", ".", "..") or any(ord(c) < 0x20 or ord(c) == 0x7F for c in segment):
            raise StoreURLError(
                "the key has an empty, '.' or '..' segment, or a control character", url=url or key
            )
    return key

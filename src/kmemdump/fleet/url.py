"""``s3://BUCKET/PREFIX``: where a fleet's dumps live.

A prefix is a ``/``-separated path of segments; empty, ``.`` and ``..`` segments and control
characters are refused, so every key kmemdump builds is one the stores and their clients agree on.
"""

from __future__ import annotations

import re

from kmemdump.fleet.errors import StoreURLError
from kmemdump.record import frozen

__all__ = ["SCHEME", "StoreURL", "check_key", "is_remote", "parse_url"]

SCHEME = "s3://"
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]\Z")


def is_remote(text: object) -> bool:
    """Whether ``text`` names an object store rather than a local path."""
    return isinstance(text, str) and text.lower().startswith(SCHEME)


@frozen
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
    """``s3://BUCKET[/PREFIX]`` → :class:`StoreURL`; :class:`StoreURLError` for anything else.

    The message says what is wrong in one line and never repeats what may be a secret (a
    ``user:password@`` part is refused without being echoed)."""
    if not is_remote(text):
        raise StoreURLError("not an s3:// URL", url=_shown(text))
    rest = text[len(SCHEME) :]
    bucket, _, prefix = rest.partition("/")
    if "@" in bucket:
        raise StoreURLError(
            "an s3:// URL carries no credentials (user:password@): give them in AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or a profile"
        )
    problem = _bucket_problem(bucket)
    if problem:
        raise StoreURLError(f"not a valid bucket name: {problem}", url=_shown(text), bucket=_shown(bucket))
    if any(c in prefix for c in "?#"):
        raise StoreURLError(
            "an s3:// URL takes no query or fragment ('?', '#'): give the bucket and the prefix only",
            url=_shown(text),
        )
    if prefix.startswith("/"):
        raise StoreURLError(
            "the prefix starts with an empty segment ('//' after the bucket)", url=_shown(text)
        )
    prefix = prefix.rstrip("/")
    return StoreURL(bucket, check_key(prefix, url=text) if prefix else "")


def _bucket_problem(bucket: str) -> str:
    """What is wrong with ``bucket`` as a bucket name ("" when nothing is)."""
    if not bucket:
        return "it is empty (s3://BUCKET/PREFIX)"
    if ":" in bucket:
        return "it has a ':' (a port? the endpoint goes in AWS_ENDPOINT_URL, not in the URL)"
    if not 3 <= len(bucket) <= 63:
        return f"{len(bucket)} character{'' if len(bucket) == 1 else 's'}, where a bucket name has 3 to 63"
    if not _BUCKET.match(bucket):
        return "only letters, digits, '.' and '-' (and '_'), starting and ending with a letter or digit"
    if ".." in bucket:
        return "it has '..'"
    return ""


def _shown(text: str, limit: int = 200) -> str:
    """``text`` as an error may show it: control characters escaped, cut to ``limit`` characters."""
    clean = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"


def check_key(key: str, *, url: str | None = None) -> str:
    """``key`` itself when every segment is a plain name; :class:`StoreURLError` otherwise."""
    for segment in key.split("/"):
        if segment in ("", ".", "..") or any(ord(c) < 0x20 or ord(c) == 0x7F for c in segment):
            raise StoreURLError(
                "the key has an empty, '.' or '..' segment, or a control character", url=_shown(url or key)
            )
    return key

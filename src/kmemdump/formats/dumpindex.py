"""The index object: a small JSON document stored beside each shipped dump, format v1.

Listing a fleet reads these and never the dumps. Written by the shipper, read by ``kmemdump ls
s3://…``; both go through this module, and a document that does not check out raises
:class:`~kmemdump.errors.DumpFormatError` (a bucket is shared: treat every object as hostile). The
fields are described in ``docs/fleet.md``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from kmemdump.errors import DumpFormatError
from kmemdump.record import asdict
from kmemdump.record import frozen

__all__ = ["INDEX_FORMAT", "INDEX_VERSION", "MAX_INDEX_BYTES", "DumpIndex", "decode_index", "encode_index"]

INDEX_FORMAT = "kmemdump-index"
INDEX_VERSION = 1
MAX_INDEX_BYTES = 64 * 1024
"""An index object larger than this is refused unread."""
_MAX_TEXT = 4096
_HEX = re.compile(r"[0-9a-f]+\Z")


@frozen
class DumpIndex:
    """What ``kmemdump ls`` shows of a shipped dump, and where the dump is."""

    key: str
    """The dump's object key in the bucket."""
    host: str
    pid: int
    start_time: int
    reason: str
    captured_ns: int
    command: str
    exe: str | None
    uid: int
    size: int
    """Bytes of the dump object."""
    sha256: str
    compressed: bool
    regions: int
    stored_bytes: int
    partial: bool
    signature: str
    frames: tuple[str, ...]
    signature_basis: str
    death: str | None = None
    """How the process ended (a death dump whose cause was learnt), e.g. ``killed by SIGSEGV``."""
    python: str = ""
    collector: str = ""
    """The kmemdump version that wrote the dump."""

    @property
    def title(self) -> str:
        return self.frames[0] if self.frames else self.signature_basis

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["frames"] = list(self.frames)
        return body


_FIELDS: dict[str, type | tuple[type, ...]] = {
    "key": str,
    "host": str,
    "pid": int,
    "start_time": int,
    "reason": str,
    "captured_ns": int,
    "command": str,
    "exe": (str, type(None)),
    "uid": int,
    "size": int,
    "sha256": str,
    "compressed": bool,
    "regions": int,
    "stored_bytes": int,
    "partial": bool,
    "signature": str,
    "frames": list,
    "signature_basis": str,
    "death": (str, type(None)),
    "python": str,
    "collector": str,
}
_OPTIONAL = {"death": None, "python": "", "collector": ""}


def encode_index(index: DumpIndex) -> bytes:
    body = {"format": INDEX_FORMAT, "version": INDEX_VERSION, **index.to_json()}
    return json.dumps(body, sort_keys=True, ensure_ascii=True).encode()


def decode_index(data: bytes) -> DumpIndex:
    """Parse and check an index object."""
    if len(data) > MAX_INDEX_BYTES:
        raise DumpFormatError("index object is too large", size=len(data), limit=MAX_INDEX_BYTES)
    try:
        body = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise DumpFormatError(f"index object is not valid JSON: {err}") from err
    if not isinstance(body, dict) or body.get("format") != INDEX_FORMAT:
        raise DumpFormatError("not a kmemdump index object")
    if body.get("version") != INDEX_VERSION:
        raise DumpFormatError(
            "index object version is not supported by this kmemdump",
            version=body.get("version"),
            supported=INDEX_VERSION,
        )
    values: dict[str, Any] = {}
    for key, kind in _FIELDS.items():
        if key not in body:
            if key in _OPTIONAL:
                values[key] = _OPTIONAL[key]
                continue
            raise DumpFormatError("index object lacks a field", field=key)
        value = body[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
            raise DumpFormatError("index object field has the wrong type", field=key)
        if isinstance(value, str) and len(value) > _MAX_TEXT:
            raise DumpFormatError("index object field is too long", field=key)
        if isinstance(value, int) and not isinstance(value, bool) and value < 0:
            raise DumpFormatError("index object field is negative", field=key)
        values[key] = value
    frames = values["frames"]
    if len(frames) > 64 or not all(isinstance(f, str) and len(f) <= _MAX_TEXT for f in frames):
        raise DumpFormatError("index object frames are not a short list of strings")
    values["frames"] = tuple(frames)
    if not (_HEX.match(values["sha256"]) and len(values["sha256"]) == 64):
        raise DumpFormatError("index object sha256 is not 64 hex digits")
    if not (_HEX.match(values["signature"]) and len(values["signature"]) <= 64):
        raise DumpFormatError("index object signature is not hex")
    if values["captured_ns"] >= 1 << 63:
        raise DumpFormatError("index object capture time is out of range")
    return DumpIndex(**values)

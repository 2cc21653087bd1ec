"""The dump's metadata: the JSON carried by the ``KMEMDUMP`` note (type ``0x4B4D0001``), format v1.

Written by the collector, read by the inspector; both go through this module. The note is plain
UTF-8 JSON so ``readelf -n`` users and other languages can read it; see ``docs/dump-format.md``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import Literal
from typing import get_args

from kmemdump.errors import DumpFormatError

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "REASONS",
    "SOURCES",
    "STATUSES",
    "DumpMeta",
    "Held",
    "Reason",
    "RegionRecord",
    "Source",
    "Status",
    "decode_meta",
    "encode_meta",
]

FORMAT_NAME = "kmemdump-dump"
FORMAT_VERSION = 1
Reason = Literal["hang", "death", "request"]
"""Why the dump was taken: a missed heartbeat, the end of the process, or someone asked."""
Status = Literal["ok", "partial", "unreadable", "skipped", "gone"]
"""Per region: all bytes stored; a readable prefix stored; nothing readable; left out by the byte
budget; the process vanished before the region could be read."""
Source = Literal["process", "arena"]
"""Where a region's bytes were (or would have been) read: the live process's memory, or the
persistent arena file it left behind."""
Held = Literal["", "SIGSTOP", "exit stop"]
"""How the target was held while it was copied: not at all, by SIGSTOP, or at its ptrace exit stop."""
REASONS: tuple[Reason, ...] = get_args(Reason)
STATUSES: tuple[Status, ...] = get_args(Status)
SOURCES: tuple[Source, ...] = get_args(Source)


@dataclass(frozen=True, slots=True)
class RegionRecord:
    """One table entry as the collector found it, and what it stored of it."""

    id: int
    name: str
    kind: int
    address: int
    size: int
    stored: int
    status: Status
    error: str = ""
    source: Source = "process"
    """One of :data:`SOURCES`; dumps written before persistent regions existed say nothing (process)."""


@dataclass(frozen=True, slots=True)
class DumpMeta:
    """Everything the dump says about itself besides the memory."""

    reason: Reason
    pid: int
    start_time: int
    captured_ns: int
    """Wall-clock time of the capture (``time.time_ns()``)."""
    host: str
    argv: tuple[str, ...]
    exe: str | None
    uid: int
    py_hexversion: int
    regions: tuple[RegionRecord, ...]
    partial: bool
    stopped: bool
    """The target was held still while its memory was copied (see ``held``)."""
    held: Held = ""
    """How it was held: "SIGSTOP", "exit stop" (a ptrace exit stop, under ``run --trace-exit``), or ""."""
    heartbeat: int = 0
    heartbeat_age_s: float | None = None
    watchdog_timeout_s: float | None = None
    table: str = ""
    table_torn: bool = False
    """The table was mid-update when the process froze; the last consistent snapshot was used."""
    budget: int | None = None
    stacks: str = "absent"
    """"ok", "absent", or why the Python stacks are missing."""
    copy_ms: float = 0.0
    collector: dict[str, Any] = field(default_factory=dict)
    arena: str = "none"
    """The persistent arena: "none" (the table names none), "unused" (the live process was read),
    "ok" (persistent regions were read from it), or why it could not be read."""

    @property
    def stored_bytes(self) -> int:
        return sum(r.stored for r in self.regions)

    @property
    def python_version(self) -> str:
        if not self.py_hexversion:
            return ""
        v = self.py_hexversion
        return f"{v >> 24}.{(v >> 16) & 0xFF}.{(v >> 8) & 0xFF}"


def encode_meta(meta: DumpMeta) -> bytes:
    body = asdict(meta)
    body["argv"] = list(meta.argv)
    body["regions"] = [asdict(r) for r in meta.regions]
    return json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION, **body}, sort_keys=True).encode()


_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "reason": str,
    "pid": int,
    "start_time": int,
    "captured_ns": int,
    "host": str,
    "argv": list,
    "uid": int,
    "py_hexversion": int,
    "regions": list,
    "partial": bool,
    "stopped": bool,
}
_OPTIONAL: dict[str, type | tuple[type, ...]] = {
    "held": str,
    "exe": (str, type(None)),
    "heartbeat": int,
    "heartbeat_age_s": (int, float, type(None)),
    "watchdog_timeout_s": (int, float, type(None)),
    "table": str,
    "table_torn": bool,
    "budget": (int, type(None)),
    "stacks": str,
    "copy_ms": (int, float),
    "collector": dict,
    "arena": str,
}
_REGION_FIELDS: dict[str, type] = {
    "id": int,
    "name": str,
    "kind": int,
    "address": int,
    "size": int,
    "stored": int,
    "status": str,
    "error": str,
    "source": str,
}
_REGION_DEFAULTS: dict[str, str] = {"error": "", "source": "process"}
"""Region fields a dump may leave out (older dumps have no ``source``)."""


def decode_meta(data: bytes) -> DumpMeta:
    """Parse and check a KMEMDUMP note; anything malformed raises :class:`DumpFormatError`."""
    try:
        body = json.loads(data.rstrip(b"\0").decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DumpFormatError(f"KMEMDUMP note is not valid JSON: {err}") from err
    if not isinstance(body, dict) or body.get("format") != FORMAT_NAME:
        raise DumpFormatError("KMEMDUMP note does not describe a kmemdump dump")
    if body.get("version") != FORMAT_VERSION:
        raise DumpFormatError(
            "dump metadata version is not supported by this kmemdump",
            version=body.get("version"),
            supported=FORMAT_VERSION,
        )
    values: dict[str, Any] = {}
    for key, kind in _REQUIRED.items():
        values[key] = _field(body, key, kind)
    for key, kind in _OPTIONAL.items():
        if key in body:
            values[key] = _field(body, key, kind)
    if values["reason"] not in REASONS:
        raise DumpFormatError("unknown dump reason", reason=values["reason"])
    if values.get("held", "") not in get_args(Held):
        raise DumpFormatError("unknown way of holding the process", held=values["held"])
    values["argv"] = tuple(str(a) for a in values["argv"])
    values["regions"] = tuple(_region(r, i) for i, r in enumerate(values["regions"]))
    return DumpMeta(**values)


def _field(body: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in body:
        raise DumpFormatError("dump metadata lacks a field", field=key)
    value = body[key]
    bad_bool = isinstance(value, bool) and kind in (int, (int, float, type(None)), (int, float))
    if not isinstance(value, kind) or bad_bool:
        raise DumpFormatError("dump metadata field has the wrong type", field=key)
    return value


def _region(raw: Any, index: int) -> RegionRecord:
    if not isinstance(raw, dict):
        raise DumpFormatError("region record is not an object", index=index)
    values: dict[str, Any] = {}
    for key, kind in _REGION_FIELDS.items():
        value = raw.get(key, _REGION_DEFAULTS.get(key))
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise DumpFormatError("region record field missing or of the wrong type", index=index, field=key)
        values[key] = value
    if values["status"] not in STATUSES:
        raise DumpFormatError("unknown region status", index=index, status=values["status"])
    if values["source"] not in SOURCES:
        raise DumpFormatError("unknown region source", index=index, source=values["source"])
    if values["stored"] < 0 or values["stored"] > values["size"]:
        raise DumpFormatError("region record stores more than its size", index=index)
    return RegionRecord(**values)

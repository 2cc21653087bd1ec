"""The Python stacks note: ``KMEMDUMP`` note type ``0x4B4D0002``, UTF-8 JSON, format v1.

Taken by the collector out of process while the target is held, read by the inspector.
"""

from __future__ import annotations

from kmemdump.errors import DumpFormatError
from kmemdump.formats import jsonscan
from kmemdump.formats.jsonwrite import dumps
from kmemdump.record import frozen

TYPE_CHECKING = False  # typing is imported for mypy only: it costs the command line milliseconds
if TYPE_CHECKING:
    from typing import Any

__all__ = ["STACKS_FORMAT", "Frame", "Stacks", "ThreadStack", "decode_stacks", "encode_stacks"]

STACKS_FORMAT = "kmemdump-stacks"
_VERSION = 1


@frozen
class Frame:
    function: str
    filename: str
    line: int


@frozen
class ThreadStack:
    """One thread's Python stack, innermost frame first."""

    thread_id: int
    name: str | None
    native_id: int | None
    active: bool
    owns_gil: bool
    frames: tuple[Frame, ...]


@frozen
class Stacks:
    source: str
    """Which reader took them (e.g. ``py-spy 0.4.3``)."""
    threads: tuple[ThreadStack, ...]


def encode_stacks(stacks: Stacks) -> bytes:
    body = {
        "format": STACKS_FORMAT,
        "version": _VERSION,
        "source": stacks.source,
        "threads": [
            {
                "thread_id": t.thread_id,
                "name": t.name,
                "native_id": t.native_id,
                "active": t.active,
                "owns_gil": t.owns_gil,
                "frames": [
                    {"function": f.function, "filename": f.filename, "line": f.line} for f in t.frames
                ],
            }
            for t in stacks.threads
        ],
    }
    return dumps(body).encode()


def decode_stacks(data: bytes) -> Stacks:
    try:
        body = jsonscan.loads(data.rstrip(b"\0").decode("utf-8"))
    except ValueError as err:  # UnicodeDecodeError, json.JSONDecodeError
        raise DumpFormatError(f"stacks note is not valid JSON: {err}") from err
    if not isinstance(body, dict) or body.get("format") != STACKS_FORMAT or body.get("version") != _VERSION:
        raise DumpFormatError("stacks note has an unknown format or version")
    try:
        threads = tuple(_thread(t) for t in body["threads"])
        return Stacks(str(body["source"]), threads)
    except (KeyError, TypeError, ValueError) as err:
        raise DumpFormatError(f"stacks note is malformed: {err}") from err


def _thread(raw: dict[str, Any]) -> ThreadStack:
    frames = tuple(Frame(str(f["function"]), str(f["filename"]), int(f["line"])) for f in raw["frames"])
    name = raw.get("name")
    native = raw.get("native_id")
    return ThreadStack(
        int(raw["thread_id"]),
        None if name is None else str(name),
        None if native is None else int(native),
        bool(raw["active"]),
        bool(raw["owns_gil"]),
        frames,
    )

"""Text for what a process wrote about itself: log records, uncaught exceptions, event-loop snapshots.

These come from rings (:mod:`kmemdump.formats.ring`, decoded by :func:`kmemdump.inspect.dumpfile.ring_json`)
and from faulthandler's file; all of it is text the target wrote, so it is treated as hostile:
control characters are shown escaped (a terminal never receives an escape sequence from a dump)
and nothing is trusted to be well formed.
"""

from __future__ import annotations

import time

TYPE_CHECKING = False  # show imports this module: typing and datetime would cost its start-up milliseconds
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

__all__ = [
    "asyncio_lines",
    "clean",
    "death_summary",
    "exception_lines",
    "log_lines",
    "ring_summary",
    "text_lines",
]

_ESCAPED = {
    code: f"\\x{code:02x}" if code < 256 else f"\\u{code:04x}"
    for first, last in (
        (0x00, 0x08),
        (0x0B, 0x1F),
        (0x7F, 0x9F),
        (0x2028, 0x2029),
        (0x202A, 0x202E),
        (0x2066, 0x2069),
    )
    for code in range(first, last + 1)
}
"""Control characters (tab and newline aside), line and paragraph separators, bidi overrides and
isolates, each written as its escape (a table for ``str.translate``: no ``re``, a third of show's
start-up)."""


def clean(text: str) -> str:
    """``text`` with control characters (escape sequences, bidi overrides …) shown escaped."""
    return text.translate(_ESCAPED)


def text_lines(text: str, indent: str = "    ") -> list[str]:
    """``text`` cleaned, one indented line per line (tabs kept)."""
    return [indent + clean(line) for line in text.splitlines()] or [indent]


def _stamp(seconds: Any) -> str:
    try:
        millis = int(float(seconds) * 1000 // 1)  # truncated to the millisecond, as before
        moment = time.gmtime(millis // 1000)
        if not 1 <= moment.tm_year <= 9999:
            raise ValueError(moment.tm_year)
    except (OverflowError, OSError, ValueError, TypeError):
        return f"(time {seconds!r})"
    return time.strftime("%Y-%m-%d %H:%M:%S.", moment) + f"{millis % 1000:03d}"


_ROLES = {"log": "log records", "exceptions": "uncaught exceptions", "asyncio": "event-loop snapshots"}


def ring_summary(value: dict[str, Any]) -> str:
    """One line about a ring: what it holds, how many records were written and kept, what was lost."""
    records = value.get("records") or []
    written = int(value.get("written") or 0)
    what = _ROLES.get(str(value.get("role")), f"{clean(str(value.get('role')))} records")
    slots = f"{value.get('capacity')} slots of {value.get('record_size')} bytes"
    line = f"ring of {what}, {slots}; {len(records)} kept"
    if written:
        line += f" of {written} written"
    losses = [
        f"{value[key]} {label}"
        for key, label in (("torn", "torn"), ("invalid", "invalid"), ("missing_slots", "slots not stored"))
        if value.get(key)
    ]
    return line + (f" ({', '.join(losses)})" if losses else "")


def _cut_note(record: dict[str, Any]) -> str:
    if not record.get("cut"):
        return ""
    return f" [cut: {len(str(record.get('text', '')).encode())} of {record.get('full_length')} bytes kept]"


def log_lines(value: dict[str, Any]) -> list[str]:
    """Every record of a log ring, oldest first: time (UTC), level, text; continuation lines indented."""
    lines: list[str] = []
    for record in value.get("records") or []:
        text = str(record.get("text", ""))
        first, *rest = text.splitlines() or [""]
        head = f"{_stamp(record.get('time'))} {record.get('level_name', '')!s:<8} "
        lines.append(head + clean(first) + _cut_note(record))
        lines.extend(" " * len(head) + clean(line) for line in rest)
    return lines


def exception_lines(value: dict[str, Any]) -> list[str]:
    """Every uncaught exception of an exceptions ring, oldest first, as Python printed it."""
    lines: list[str] = []
    for number, record in enumerate(value.get("records") or []):
        if number:
            lines.append("")
        lines.append(f"at {_stamp(record.get('time'))} UTC{_cut_note(record)}:")
        lines.extend(text_lines(str(record.get("text", ""))))
    return lines


def asyncio_lines(value: dict[str, Any], captured: float | None = None, *, hang: bool = False) -> list[str]:
    """The newest event-loop snapshot of an asyncio ring: the blocking task, then every task.

    ``captured`` (seconds since the epoch) is when the dump was taken: the snapshot's age is then
    given; in a ``hang`` dump, a snapshot of a running loop taken long before is said to be stale
    (nothing ran to record the hang: a C call that held the GIL; the Python stacks show it).
    """
    records = value.get("records") or []
    snapshot = next(
        (r.get("snapshot") for r in reversed(records) if isinstance(r.get("snapshot"), dict)), None
    )
    if snapshot is None:
        return ["(no readable snapshot of the event loop)"]
    state = "blocked" if snapshot.get("blocked") else "running"
    taken, timeout = snapshot.get("time"), snapshot.get("timeout_s")
    age = captured - taken if captured is not None and isinstance(taken, (int, float)) else None
    when = f" ({_seconds(age)} before the dump)" if age is not None else ""
    lines = [
        f"snapshot at {_stamp(taken)} UTC{when}: loop {state}, last turn "
        f"{_seconds(snapshot.get('loop_age_s'))} before, {snapshot.get('task_count', '?')} tasks"
    ]
    if (
        hang
        and age is not None
        and not snapshot.get("blocked")
        and isinstance(timeout, (int, float))
        and age > timeout / 2
    ):
        lines.append(
            "  the loop did not turn after it, and nothing recorded what held it (a C call holding the GIL "
            "stops the monitor thread too): the Python stacks show where the loop thread was"
        )
    current = snapshot.get("current")
    if isinstance(current, dict):
        lines.append(f"blocking the loop: {_task_line(current)}, in (most recent call last):")
        stack = _frame_lines(current.get("stack"), "    ")
        if len(stack) > _STACK_LINES:
            lines.append(f"    … {len(stack) - _STACK_LINES} outer frames (kmemdump show --json has them)")
        lines.extend(stack[-_STACK_LINES:])
    for task in _dicts(snapshot.get("tasks")):
        lines.append(f"  {_task_line(task)}")
        lines.extend(_frame_lines(task.get("awaiting"), "      "))
    omitted = snapshot.get("omitted")
    if omitted:
        lines.append(f"  … {omitted} more tasks not recorded")
    return lines


_STACK_LINES = 8


def _dicts(items: Any) -> Iterable[dict[str, Any]]:
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


def _seconds(value: Any) -> str:
    return f"{value:.3f} s" if isinstance(value, (int, float)) else "?"


def _task_line(task: dict[str, Any]) -> str:
    name = clean(str(task.get("name", "?")))
    coro = clean(str(task.get("coro", "?")))
    state = clean(str(task.get("state", "")))
    return f"task {name!s}: coroutine {coro}" + (f" ({state})" if state else "")


def _frame_lines(frames: Any, indent: str) -> list[str]:
    lines = []
    for frame in _dicts(frames):
        where, function = clean(str(frame.get("file", "?"))), clean(str(frame.get("function", "?")))
        lines.append(f'{indent}File "{where}", line {frame.get("line", "?")}, in {function}')
    return lines


def death_summary(path: Any) -> list[str]:
    """Why the process of the dump at ``path`` ended, in a few lines, from what it wrote itself: its
    last uncaught exception (``init(excepthook=True)``) and what faulthandler wrote as it crashed
    (``init(faulthandler=True)``). Empty when it wrote neither, or the dump cannot be read here."""
    try:
        from kmemdump.errors import KmemdumpError
        from kmemdump.formats.enums import RegionKind
        from kmemdump.formats.ring import RingRole
        from kmemdump.formats.ring import parse_ring
        from kmemdump.inspect.dumpfile import Dump
    except ImportError:  # the inspect extra is missing: the dump itself is fine
        return []
    lines: list[str] = []
    try:
        with Dump.open(path) as dump:
            for record in dump.meta.regions:
                if record.kind != RegionKind.RING or record.stored == 0:
                    continue
                ring = parse_ring(dump.region_bytes(record))
                if ring.role == RingRole.EXCEPTIONS and ring.records:
                    lines.extend(_exception_summary(ring.records[-1].text))
            fault = dump.faulthandler
            if fault is not None:
                lines.extend(_fault_summary(fault.text))
    except (KmemdumpError, OSError):
        return []
    return lines


def _exception_summary(text: str) -> list[str]:
    body = [line for line in text.splitlines() if line.strip()]
    if not body:
        return []
    where = [line.strip() for line in body if line.lstrip().startswith("File ")]
    lines = [f"uncaught exception: {clean(body[-1])[:300]}"]
    if where:
        lines.append(f"  raised at {clean(where[-1])[:300]}")
    return lines


def _fault_summary(text: str) -> list[str]:
    body = [line.strip() for line in text.splitlines() if line.strip()]
    heads = [line for line in body if line.startswith(("Fatal Python error", "Timeout ("))]
    if not heads:
        return []
    last = max(i for i, line in enumerate(body) if line in heads)
    lines = [f"faulthandler: {clean(body[last])[:300]}"]
    frames = []
    for line in body[last + 1 :]:  # the first thread listed is the one that crashed (or timed out)
        if line.startswith("File "):
            frames.append(line)
        elif frames:
            break
    lines.extend(f"  {clean(frame)[:300]}" for frame in frames[:3])
    if len(frames) > 3:
        lines.append(f"  … {len(frames) - 3} more frames (kmemdump show has them all)")
    return lines

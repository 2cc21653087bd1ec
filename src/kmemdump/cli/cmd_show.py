"""Show a dump: what it is, its banner, its regions decoded, and the Python stacks.

First the facts (why and when the dump was taken, which process, its Python, its watchdog), then
the banner the process registered, a table of the regions, every region decoded (CPython objects
through the dump's PYCOREINFO, buffers as text or hex), and last the Python stack of every thread
at capture time, innermost call last as in a traceback.

DUMP is a path; a bare file name is also looked up in the default dump directory. --json prints
everything as one JSON document, decoded values included.
"""

from __future__ import annotations

from kmemdump.cli import records
from kmemdump.cli.options import add_dump_argument
from kmemdump.cli.options import dump_path
from kmemdump.cli.quick import Option
from kmemdump.cli.quick import Positional
from kmemdump.cli.quick import parse_words
from kmemdump.cli.render import Column
from kmemdump.cli.render import Output
from kmemdump.cli.render import format_address
from kmemdump.cli.render import format_duration
from kmemdump.cli.render import format_size
from kmemdump.cli.render import format_time
from kmemdump.cli.render import hexdump_lines
from kmemdump.cli.render import json_text
from kmemdump.formats.dumpmeta import DumpMeta
from kmemdump.formats.dumpmeta import GraphRecord
from kmemdump.formats.dumpmeta import RegionRecord
from kmemdump.formats.dumpmeta import ThreadState
from kmemdump.formats.enums import RegionKind
from kmemdump.ids import id_label
from kmemdump.inspect.cpython import INT_TEXT_BITS
from kmemdump.inspect.cpython import Unresolved
from kmemdump.inspect.cpython import to_python
from kmemdump.inspect.dumpfile import DecodedRegion
from kmemdump.inspect.dumpfile import Dump
from kmemdump.inspect.dumpfile import command_line
from kmemdump.inspect.dumpfile import kind_name
from kmemdump.inspect.dumpfile import plural
from kmemdump.inspect.dumpfile import pycoreinfo_summary
from kmemdump.inspect.dumpfile import shell_quote
from kmemdump.record import asdict
from kmemdump.record import fields
from kmemdump.record import frozen

TYPE_CHECKING = False  # typing is imported for mypy only: it costs the command line milliseconds
if TYPE_CHECKING:
    import argparse
    from pathlib import Path
    from typing import Any

    from kmemdump.formats.stacks import ThreadStack

__all__ = ["EPILOG", "document", "prepare", "quick_parse", "run"]

EPILOG = """\
exit status: 0 shown; 1 not a dump, damaged, or unreadable; 2 bad usage

--json prints one document: "path", "file_size", "compressed", "dump" (the metadata), "problems",
"banner", "pycoreinfo", "pycoreinfo_error", "regions" (each with "decoded" unless --no-decode) and
"stacks"; docs/cli.md describes every field.
"""

MAX_VALUE_LINES = 40
"""Text output shows at most this many lines of one decoded value (--json has everything)."""
MAX_MISSING = 8

_REGION_COLUMNS = (  # on a narrow terminal SOURCE, then SIZE, then ADDRESS make way
    Column("ID", right=True, wrap=False),
    Column("LABEL", wrap=False),
    Column("NAME", min_width=10),
    Column("KIND", wrap=False),
    Column("ADDRESS", wrap=False, drop=3),
    Column("SIZE", right=True, wrap=False, drop=2),
    Column("STORED", right=True, wrap=False),
    Column("SOURCE", wrap=False, drop=1),
    Column("STATUS", min_width=10),
)

_REASONS = {
    "hang": "hang: the process stopped feeding its watchdog",
    "death": "death: the process exited or was killed",
    "request": "request: a dump was asked for while the process ran",
}


def prepare(parser: argparse.ArgumentParser) -> None:
    add_dump_argument(parser)
    parser.add_argument("--json", action="store_true", help="print everything as one JSON document")
    parser.add_argument(
        "--no-decode",
        dest="decode",
        action="store_false",
        help="list the regions without decoding their contents",
    )
    parser.add_argument("--plain", action="store_true", help="plain text even on a terminal")


def _path(text: str) -> Path:
    from pathlib import Path  # only for --dir: show's own reading uses no pathlib

    return Path(text)


_QUICK_FLAGS = {"--json": ("json", True), "--no-decode": ("decode", False), "--plain": ("plain", True)}
_QUICK_OPTIONS = {"--dir": Option("dir", _path)}
_QUICK_DEFAULTS = {"dump": None, "dir": None, "json": False, "decode": True, "plain": False}


def quick_parse(words: list[str]) -> argparse.Namespace | None:
    """show's arguments as :func:`prepare`'s parser would read them, without argparse (see
    :mod:`kmemdump.cli.quick`); None for what only argparse handles."""
    return parse_words(
        words,
        defaults=_QUICK_DEFAULTS,
        flags=_QUICK_FLAGS,
        options=_QUICK_OPTIONS,
        positional=Positional("dump"),
    )


def run(args: argparse.Namespace) -> int:
    with Dump.open(dump_path(args.dump, args.dir)) as dump:
        decoded = {r.id: dump.decode_region(r) for r in dump.meta.regions} if args.decode else {}
        if args.json:
            print(json_text(document(dump, decoded if args.decode else None)))
        else:
            _show(dump, decoded, Output(plain=args.plain))
    return 0


# --- JSON ----------------------------------------------------------------------------------------


def document(dump: Dump, decoded: dict[int, DecodedRegion] | None) -> dict[str, Any]:
    """The whole dump as one JSON-able document (``decoded`` None leaves values out)."""
    meta = dump.meta
    about = {f.name: getattr(meta, f.name) for f in fields(meta) if f.name != "regions"}
    about["argv"] = list(meta.argv)
    if meta.death is not None:
        about["death"] = {**asdict(meta.death), "description": meta.death.describe()}
    about["threads"] = [{**asdict(t), "description": t.describe()} for t in meta.threads]
    about["graphs"] = [asdict(g) for g in meta.graphs]
    about["missing"] = list(meta.missing)
    about["python_version"] = meta.python_version
    about["stored_bytes"] = meta.stored_bytes
    info = dump.pycoreinfo
    regions = []
    for record in meta.regions:
        entry: dict[str, Any] = {
            **asdict(record),
            "label": id_label(record.id),
            "kind_name": kind_name(record.kind),
        }
        if decoded is not None:
            entry["decoded"] = decoded[record.id].to_json()
        regions.append(entry)
    stacks = dump.stacks
    fault = dump.faulthandler
    return {
        "path": str(dump.path),
        "file_size": dump.file_size,
        "compressed": dump.compressed,
        "dump": about,
        "problems": list(dump.problems),
        "banner": dump.banner(),
        "pycoreinfo": None if info is None else pycoreinfo_summary(info),
        "pycoreinfo_error": dump.pycoreinfo_reason or None,
        "regions": regions,
        "stacks": {
            "state": dump.stacks_state,
            "source": None if stacks is None else stacks.source,
            "threads": [] if stacks is None else [asdict(t) for t in stacks.threads],
        },
        "faulthandler": None if fault is None else {**asdict(fault), "cut": fault.cut},
        "faulthandler_error": dump.faulthandler_error or None,
    }


# --- text ----------------------------------------------------------------------------------------


def _show(dump: Dump, decoded: dict[int, DecodedRegion], out: Output) -> None:
    out.fields(_about(dump))
    for problem in dump.problems:
        out.line(f"warning: {problem}")
    out.heading("Banner")
    banner = dump.banner()
    if banner is None:
        out.line("(no banner in the dump)")
    else:
        for text in banner.splitlines():
            out.line(f"    {text}")
    out.table(_REGION_COLUMNS, [_region_row(r) for r in dump.meta.regions], title="Regions")
    if decoded:
        out.heading("Decoded")
        for record in dump.meta.regions:
            _show_decoded(record, decoded[record.id], out, dump.graph(record.id))
    _show_rings(dump, decoded, ("exceptions",), out)
    _show_faulthandler(dump, out)
    _show_rings(dump, decoded, ("asyncio",), out)
    _show_stacks(dump, out)
    _show_rings(dump, decoded, ("log",), out)


def _about(dump: Dump) -> list[tuple[str, str]]:
    meta = dump.meta
    size = format_size(dump.file_size) + (", zstd-compressed" if dump.compressed else "")
    rows = [
        ("Dump", str(dump.path)),
        ("File", size),
        ("Reason", _reason_line(meta)),
        ("Captured", format_time(meta.captured_ns)),
        ("Host", meta.host or "?"),
        ("Process", f"pid {meta.pid} (start time {meta.start_time}), uid {meta.uid}"),
        ("Command", command_line(meta, dump.banner())),
    ]
    if meta.exe:
        rows.append(("Executable", meta.exe))
    python = meta.python_version or "unknown"
    if dump.pycoreinfo is not None:
        python += f"; objects decoded with its PYCOREINFO ({dump.pycoreinfo.source} offsets)"
    else:
        python += f"; objects cannot be decoded: {dump.pycoreinfo_reason}"
    rows.append(("Python", python))
    rows.append(("Watchdog", _watchdog(dump)))
    copy = f", copy took {meta.copy_ms:g} ms" if meta.copy_ms else ""
    if meta.stopped and meta.shadow:
        held = f" for {meta.hold_ms:g} ms" if meta.hold_ms is not None else ""
        rows.append(
            (
                "Stopped",
                f"yes, held at its ptrace exit stop{held}; its memory was read afterwards from a shadow "
                f"sharing it{copy}",
            )
        )
    elif meta.stopped:
        ways = {"exit stop": "at its ptrace exit stop", "ptrace": "in ptrace stops"}
        how = ways.get(meta.held, "with SIGSTOP")
        held = f" ({meta.hold_ms:g} ms in all)" if meta.hold_ms is not None else ""
        rows.append(("Stopped", f"yes, held {how} while its memory was copied{copy}{held}"))
    elif meta.reason == "death":
        rows.append(("Stopped", f"no: the process was gone; what survived came from its arena{copy}"))
    else:
        rows.append(("Stopped", f"no, regions were copied while it ran{copy}"))
    total = sum(r.size for r in meta.regions)
    stored = sum(r.stored for r in meta.regions)
    contents = f"{plural(len(meta.regions), 'region')}, {format_size(stored)} of {format_size(total)} stored"
    if meta.budget is not None:
        contents += f" (budget {format_size(meta.budget)})"
    rows.append(("Contents", contents + (" — PARTIAL" if meta.partial else ", complete")))
    if meta.graphs:
        rows.append(("Graphs", _graphs_line(meta)))
    for number, line in enumerate(meta.missing):
        if number == MAX_MISSING:
            rows.append(("", f"… {len(meta.missing) - MAX_MISSING} more (kmemdump show --json has them all)"))
            break
        rows.append(("Missing" if number == 0 else "", line))
    if meta.table_torn:
        rows.append(("Table", "torn: the process froze mid-update; the last consistent snapshot was used"))
    if meta.arena != "none":
        rows.append(("Arena", _arena_line(meta.arena)))
    rows.append(("Stacks", _stacks_line(dump)))
    rows.append(("Capture", _capture_line(meta)))
    readers = _readers_line(dump)
    if readers:
        rows.append(("", readers))
    return rows


def _readers_line(dump: Dump) -> str:
    """At the stacks level, what pystack and py-bt lack on this machine (the executable) and what to
    give them; "" when nothing is missing."""
    modules = dump.modules if dump.meta.capture == "stacks" else None
    if not modules:
        return ""
    from kmemdump.inspect.binaries import find_binaries
    from kmemdump.inspect.binaries import missing_interpreter

    interpreter = [m for m in modules if m.role in ("exe", "libpython")]
    name = "DUMP" if dump.compressed else shell_quote(dump.path)  # pystack reads no .zst
    return missing_interpreter(find_binaries(interpreter), name, lead=True)


def _capture_line(meta: DumpMeta) -> str:
    if meta.capture == "stacks":
        line = "stacks: thread stacks and interpreter state stored (pystack core; kmemdump gdb: bt, py-bt)"
        return line if meta.capture_state == "ok" else f"{line}; not stored: {meta.capture_state}"
    return "regions: registers and module headers (kmemdump gdb shows where each thread is)"


def _graphs_line(meta: DumpMeta) -> str:
    """The live object graphs: how many were walked at the freeze, and how much they hold."""
    walked = [g for g in meta.graphs if g.status in ("ok", "partial")]
    others = len(meta.graphs) - len(walked)
    if not walked:
        why = sorted({g.status for g in meta.graphs})
        return f"{plural(others, 'object graph')}, none walked ({', '.join(why)}; see Missing)"
    where = "the held process" if meta.stopped else "the running process (not held: values may be torn)"
    text = (
        f"{plural(len(walked), 'object graph')} walked in {where} "
        f"({plural(sum(g.objects for g in walked), 'object')}, {format_size(sum(g.stored for g in walked))})"
    )
    if others:
        text += f"; {others} not walked"
    return text


def _reason_line(meta: DumpMeta) -> str:
    """Why the dump was taken; for a death, how the process ended (or that nobody could tell)."""
    if meta.reason == "death" and meta.death is not None:
        death = meta.death
        where = f" in thread {death.tid}" if death.tid is not None else ""
        late = ", ".join(str(t) for t in death.late[:8]) + (" …" if len(death.late) > 8 else "")
        unheld = f"; not at their exit stop in time (registers from /proc): {late}" if death.late else ""
        return f"death: {death.describe()}{where}{unheld}"
    return _REASONS.get(meta.reason, meta.reason)


def _arena_line(state: str) -> str:
    if state == "ok":
        return "persistent regions were read from the arena file the process left behind"
    if state == "unused":
        return "the process had a persistent arena; its regions were read from the live process"
    return f"persistent regions could not be recovered: {state}"


def _watchdog(dump: Dump) -> str:
    meta = dump.meta
    if meta.watchdog_timeout_s is None and not meta.heartbeat:
        return "none armed"
    parts = []
    if meta.heartbeat_age_s is not None:
        parts.append(f"last fed {format_duration(meta.heartbeat_age_s)} before the capture")
    elif not meta.heartbeat:
        parts.append("never fed")
    if meta.watchdog_timeout_s is not None:
        parts.append(f"timeout {format_duration(meta.watchdog_timeout_s)}")
    parts.append(plural(meta.heartbeat, "beat"))
    return ", ".join(parts)


def _stacks_line(dump: Dump) -> str:
    stacks = dump.stacks
    if stacks is None:
        return f"none ({dump.stacks_state})"
    return f"{plural(len(stacks.threads), 'thread')}, taken by {stacks.source}"


def _region_row(record: RegionRecord) -> list[str]:
    status = record.status if not record.error else f"{record.status}: {record.error}"
    return [
        str(record.id),
        id_label(record.id),
        record.name,
        kind_name(record.kind),
        format_address(record.address),
        str(record.size),
        str(record.stored),
        record.source,
        status,
    ]


def _show_decoded(
    record: RegionRecord, decoded: DecodedRegion, out: Output, graph: GraphRecord | None = None
) -> None:
    head = f"[{record.id}] {record.name}: {decoded.type_name}"
    if graph is not None and graph.status in ("ok", "partial") and decoded.error is None:
        head += f" (walked at the freeze, depth {graph.depth}: {plural(graph.objects, 'object')})"
    if decoded.error is not None:
        out.line(f"{head} — {decoded.error}")
        return
    if not decoded.complete:
        head += " (incomplete)"
    out.line(head)
    if record.kind == RegionKind.OBJECT:
        lines = _value_lines(decoded.value)
    elif record.kind == RegionKind.PYCOREINFO:
        lines = [_pycoreinfo_line(decoded.value)]
    elif record.kind == RegionKind.RING and isinstance(decoded.value, dict):
        lines = [records.ring_summary(decoded.value) + _ring_where(decoded.value)]
    else:
        lines = _buffer_lines(decoded.value, record)
    for text in lines[:MAX_VALUE_LINES]:
        out.line(f"    {text}")
    if len(lines) > MAX_VALUE_LINES:
        out.line(f"    … {len(lines) - MAX_VALUE_LINES} more lines (kmemdump show --json has all)")
    for reason in decoded.missing[:MAX_MISSING]:
        out.line(f"    missing: {reason}")
    if len(decoded.missing) > MAX_MISSING:
        out.line(f"    … {len(decoded.missing) - MAX_MISSING} more missing pieces")


@frozen
class _Shown:
    """Stands in for a decoder marker so that pprint prints ``text`` as it is."""

    text: str

    def __repr__(self) -> str:
        return self.text


def _value_lines(value: Any) -> list[str]:
    """A decoded object as Python-like text; markers become ``<...>``."""
    import pprint  # only for a dump with objects to print

    return pprint.pformat(_readable(to_python(value)), width=100, sort_dicts=False).splitlines()


def _readable(obj: Any) -> Any:
    if isinstance(obj, Unresolved):
        if obj.kind == "class":
            return _Shown(f"<class {obj.detail!r}>")
        if obj.kind == "object" and isinstance(obj.attrs, dict):
            fields = ", ".join(f"{key}={_readable(value)!r}" for key, value in obj.attrs.items())
            return _Shown(f"{obj.detail.rsplit('.', 1)[-1]}({fields})")  # like a dataclass's repr
        if obj.kind == "object":
            return _Shown(f"<{obj.detail} object at 0x{obj.address:x}>")
        if obj.kind == "cycle":
            return _Shown(f"<cycle: 0x{obj.address:x}>")
        detail = f": {obj.detail}" if obj.detail else ""
        return _Shown(f"<{obj.kind} 0x{obj.address:x}{detail}>")
    if type(obj) is int and obj.bit_length() > INT_TEXT_BITS:  # repr() would refuse it
        digits = hex(obj)
        return _Shown(f"<int of {obj.bit_length():,} bits: {digits[:18]}…{digits[-8:]}>")
    if isinstance(obj, list):
        return [_readable(item) for item in obj]
    if isinstance(obj, tuple):
        return tuple(_readable(item) for item in obj)
    if isinstance(obj, dict):
        return {_readable(key): _readable(item) for key, item in obj.items()}
    return obj


def _buffer_lines(value: Any, record: RegionRecord) -> list[str]:
    """A buffer description (``decode_buffer``): its text when it reads as text, else a hex preview."""
    if not isinstance(value, dict):
        return _value_lines(value)
    size = value.get("size", record.stored)
    text = value.get("text")
    if isinstance(text, str):
        lines = [repr(line) for line in text.splitlines()] or ["''"]
    else:
        lines = list(hexdump_lines(bytes.fromhex(str(value.get("hex", ""))), record.address))[:-1]
    if value.get("truncated"):
        lines.append(f"… {size} bytes in all (kmemdump hexdump DUMP {record.id})")
    return lines


def _pycoreinfo_line(value: Any) -> str:
    if not isinstance(value, dict):
        return repr(value)
    return (
        f"{value.get('implementation')} {value.get('python')}, {value.get('pointer_size')}-byte pointers, "
        f"offsets from {value.get('source')}, {plural(int(value.get('types') or 0), 'type')} named"
    )


_RING_TITLES = {
    "exceptions": "Uncaught exceptions",
    "asyncio": "Event loop",
    "log": "Log records (oldest first, UTC)",
}
_RING_LINES = {
    "exceptions": records.exception_lines,
    "asyncio": records.asyncio_lines,
    "log": records.log_lines,
}


def _ring_where(value: dict[str, Any]) -> str:
    title = _RING_TITLES.get(str(value.get("role")))
    return f"; shown under {title!r}" if title else ""


def _show_rings(dump: Dump, decoded: dict[int, DecodedRegion], roles: tuple[str, ...], out: Output) -> None:
    """One section per ring of these roles (log records, uncaught exceptions, event loops)."""
    for record in dump.meta.regions:
        found = decoded.get(record.id)
        if record.kind != RegionKind.RING or found is None or not isinstance(found.value, dict):
            continue
        role = str(found.value.get("role"))
        if role not in roles:
            continue
        out.heading(f"{_RING_TITLES[role]} — [{record.id}] {records.clean(record.name)}")
        if role == "asyncio":
            lines = records.asyncio_lines(
                found.value, dump.meta.captured_ns / 1e9, hang=dump.meta.reason == "hang"
            )
        else:
            lines = _RING_LINES[role](found.value)
        for text in lines or ["(none recorded)"]:
            out.line(text)


def _show_faulthandler(dump: Dump, out: Output) -> None:
    fault = dump.faulthandler
    if fault is None and not dump.faulthandler_error:
        return
    out.heading("faulthandler (what the process wrote as it crashed or timed out)")
    if fault is None:
        out.line(f"(unreadable: {dump.faulthandler_error})")
        return
    if fault.cut:
        out.line(f"(the last {fault.kept} of {fault.size} bytes)")
    for text in records.text_lines(fault.text, ""):
        out.line(text)


def _show_stacks(dump: Dump, out: Output) -> None:
    out.heading("Python stacks (most recent call last)")
    states = {t.tid: t for t in dump.meta.threads}
    taken = dump.meta.threads_taken
    stacks = dump.stacks
    if stacks is None:
        out.line(f"(no stacks: {dump.stacks_state})")
    elif not stacks.threads:
        out.line(f"(no Python threads; taken by {stacks.source})")
    shown: set[int] = set()
    for number, thread in enumerate(stacks.threads if stacks is not None else ()):
        if number:
            out.line()
        state = states.get(thread.native_id) if thread.native_id is not None else None
        if state is not None:
            shown.add(state.tid)
        out.line(_thread_title(thread, state))
        if state is not None:
            out.line(f"  {taken}: {state.describe()}")
        if not thread.frames:
            out.line("  (no Python frames)")
        for frame in reversed(thread.frames):
            out.line(f'  File "{frame.filename}", line {frame.line}, in {frame.function}')
    others = [t for t in dump.meta.threads if t.tid not in shown]
    if others:
        out.heading(f"Threads {taken}" if stacks is None else f"Other threads ({taken}, no Python stack)")
        for state in others:
            out.line(f'Thread {state.tid} "{state.name}": {state.describe()}')


def _thread_title(thread: ThreadStack, state: ThreadState | None) -> str:
    """The thread's name and ids; py-spy's "active"/"idle" guess only when the dump has no scheduler
    state from before the hold (a held process looks idle everywhere)."""
    name = f' "{thread.name}"' if thread.name else ""
    native = f", native id {thread.native_id}" if thread.native_id is not None else ""
    doing = [] if state is not None else ["active" if thread.active else "idle"]
    if thread.owns_gil:
        doing.append("holds the GIL")
    return f"Thread 0x{thread.thread_id:x}{name}{native}" + (f" ({', '.join(doing)})" if doing else "") + ":"

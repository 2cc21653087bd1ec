"""A dump opened for inspection: its metadata, memory, Python layout and stacks in one object.

Every inspector command goes through :class:`Dump`. Opening checks what must be sound (an ELF
core image carrying a valid ``KMEMDUMP`` metadata note) and raises
:class:`~kmemdump.errors.DumpFormatError` otherwise. Optional parts that are missing or damaged
(the PYCOREINFO layout, the stacks note, a region's bytes) do not stop the inspection: the dump
records why they are unavailable, and the commands say so.

:func:`catalog` numbers the dumps of a directory, oldest first, from their file names alone (the
numbers ``kmemdump ls`` shows and the other commands accept); :func:`list_dumps` summarises them,
reporting (not raising on) files it cannot read.

Why one module of this size: :class:`Dump` and the directory catalog share the dump-name grammar and
the summary types every reader command uses. The catalog could stand as a module of its own; it has
not been moved yet because every reader command imports it from here.
"""

from __future__ import annotations

import os

from kmemdump.errors import DecodeError
from kmemdump.errors import DumpFormatError
from kmemdump.errors import KmemdumpError
from kmemdump.errors import UnknownRegionError
from kmemdump.errors import UnreadableMemoryError
from kmemdump.formats import dumpmeta
from kmemdump.formats.dumpmeta import DumpMeta
from kmemdump.formats.dumpmeta import GraphRecord
from kmemdump.formats.dumpmeta import RegionRecord
from kmemdump.formats.dumpmeta import decode_meta
from kmemdump.formats.elf import KMD_NOTE_FAULTS
from kmemdump.formats.elf import KMD_NOTE_META
from kmemdump.formats.elf import KMD_NOTE_MODULES
from kmemdump.formats.elf import KMD_NOTE_STACKS
from kmemdump.formats.elf import OWNER_KMEMDUMP
from kmemdump.formats.elf import OWNER_PYCOREINFO
from kmemdump.formats.elf import PYCOREINFO_NOTE
from kmemdump.inspect.wording import plural
from kmemdump.inspect.wording import what_is_missing
from kmemdump.memory.core import CoreImage
from kmemdump.record import asdict
from kmemdump.record import frozen

TYPE_CHECKING = False  # typing is imported for mypy only: it costs the command line milliseconds
if TYPE_CHECKING:
    from collections.abc import Callable
    from collections.abc import Iterable
    from collections.abc import Sequence
    from types import TracebackType
    from typing import Any

    from kmemdump.formats.corenotes import Module
    from kmemdump.formats.faults import FaultText
    from kmemdump.formats.pycoreinfo import PyCoreInfo
    from kmemdump.formats.ring import Ring
    from kmemdump.formats.stacks import Stacks

if TYPE_CHECKING:
    from functools import cached_property
else:

    class cached_property:  # functools' name; functools costs ls a tenth of its start-up
        """What :func:`functools.cached_property` does for these classes: computed on first use and
        kept in the instance's ``__dict__``, which later lookups find first."""

        def __init__(self, compute):
            self.compute = compute
            self.name = compute.__name__
            self.__doc__ = compute.__doc__

        def __set_name__(self, owner, name):
            self.name = name

        def __get__(self, instance, owner=None):
            if instance is None:
                return self
            value = instance.__dict__[self.name] = self.compute(instance)
            return value


__all__ = [
    "DUMP_SUFFIXES",
    "CatalogEntry",
    "DecodedRegion",
    "Dump",
    "DumpSummary",
    "catalog",
    "command_line",
    "dump_files",
    "kind_name",
    "list_dumps",
    "parse_dump_name",
    "plural",
    "pycoreinfo_summary",
    "ring_json",
    "shell_quote",
    "summarize",
    "what_is_missing",
]


def _warn_skipped(path: str, err: KmemdumpError) -> None:
    import logging  # only when it is needed: the command line starts faster without it

    logging.getLogger("kmemdump.inspect").warning("skipped %s: %s", path, err)


DUMP_SUFFIXES = (".core", ".core.zst")
"""File names :func:`dump_files` picks up (dump writers' temporary files start with a dot)."""


def kind_name(kind: int) -> str:
    """``BUFFER``, ``OBJECT`` …, or ``kind<N>`` for a number this version does not know."""
    from kmemdump.formats.enums import RegionKind  # enum: loaded by what decodes, not by ls

    try:
        return RegionKind(kind).name
    except ValueError:
        return f"kind{kind}"


@frozen
class DecodedRegion:
    """What a region's bytes mean, or why they cannot be decoded (``error``)."""

    type_name: str
    value: Any
    """JSON-able: a decoded Python value, a buffer description, or a layout summary."""
    complete: bool
    """False when some of the memory the value needs is not in the dump."""
    missing: tuple[Any, ...] = ()
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "type_name": self.type_name,
            "value": self.value,
            "complete": self.complete,
            "missing": list(self.missing),
            "error": self.error,
        }


@frozen
class DumpSummary:
    """One line of ``kmemdump ls``: what, when, whose, how big."""

    path: str
    file_size: int
    compressed: bool
    captured_ns: int
    reason: str
    pid: int
    start_time: int
    command: str
    exe: str | None
    regions: int
    stored_bytes: int
    partial: bool
    stacks: str
    host: str = ""
    missing: tuple[str, ...] = ()
    """What the dump lacks, one sentence each (see :attr:`DumpMeta.missing`)."""
    lacking: str = ""
    """The same in a few words (:func:`what_is_missing`)."""

    @property
    def state(self) -> str:
        """``complete``, or ``partial`` with what is missing, in a few words."""
        if not self.partial:
            return "complete"
        return f"partial: {self.lacking}" if self.lacking else "partial"

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["missing"] = list(self.missing)
        del body["lacking"]  # the text listing's few words; "missing" says it all
        return body


class Dump:
    """An open dump. Use :meth:`open`, preferably as a context manager."""

    def __init__(self, path: str, core: CoreImage, meta: DumpMeta, file_size: int) -> None:
        self.path = path
        self.core = core
        self.meta = meta
        self.file_size = file_size

    # The optional parts are read on first use: ``kmemdump ls`` needs only the metadata.

    @cached_property
    def _pyinfo(self) -> tuple[PyCoreInfo | None, str]:
        return self._load_pycoreinfo()

    @property
    def pycoreinfo(self) -> PyCoreInfo | None:
        """The Python layout description objects are decoded with, if the dump has a valid one."""
        return self._pyinfo[0]

    @property
    def pycoreinfo_reason(self) -> str:
        """Why :attr:`pycoreinfo` is None (empty when it is not)."""
        return self._pyinfo[1]

    @cached_property
    def _stacks(self) -> tuple[Stacks | None, str]:
        return self._load_stacks()

    @property
    def stacks(self) -> Stacks | None:
        """The Python stacks of every thread at capture time, if the dump has them."""
        return self._stacks[0]

    @property
    def stacks_state(self) -> str:
        """``"ok"`` when :attr:`stacks` is set, otherwise why there are none."""
        return self._stacks[1]

    @cached_property
    def modules(self) -> tuple[Module, ...] | None:
        """The ELF files the process mapped, with their build-ids; None for a dump without the
        modules note (older versions, or a process already gone) or with a damaged one."""
        note = self.core.note(OWNER_KMEMDUMP, KMD_NOTE_MODULES)
        if note is None:
            return None
        try:
            from kmemdump.formats.corenotes import decode_modules  # on use: ls needs only the metadata

            return decode_modules(note.desc)
        except DumpFormatError:
            return None

    @cached_property
    def problems(self) -> tuple[str, ...]:
        """Inconsistencies between the metadata and the stored memory, one sentence each."""
        return self._check_regions()

    # --- opening ------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Dump:
        """Open ``path`` (a plain or zstd-compressed dump); :class:`DumpFormatError` if it is not one."""
        where = os.fspath(path)
        if os.path.isdir(where):
            raise DumpFormatError(
                "this is a directory, not a dump (kmemdump ls DIR lists dumps)", path=str(where)
            )
        core = CoreImage.open(where)
        try:
            note = core.note(OWNER_KMEMDUMP, KMD_NOTE_META)
            if note is None:
                raise DumpFormatError(
                    "not a kmemdump dump: the core image has no KMEMDUMP metadata note "
                    "(a core from gcore or the kernel can be opened with gdb instead)",
                    path=str(where),
                )
            try:
                meta = decode_meta(note.desc)
            except DumpFormatError as err:
                raise DumpFormatError(err.message, **{**err.context, "path": str(where)}) from err
            try:
                size = os.stat(where).st_size
            except OSError as err:
                raise DumpFormatError(f"cannot stat the dump: {err.strerror}", path=str(where)) from err
            return cls(where, core, meta, size)
        except BaseException:
            core.close()
            raise

    def close(self) -> None:
        self.core.close()

    def __enter__(self) -> Dump:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def compressed(self) -> bool:
        return bool(getattr(self.core, "compressed", self.path.endswith(".zst")))

    def _load_pycoreinfo(self) -> tuple[PyCoreInfo | None, str]:
        note = self.core.note(OWNER_PYCOREINFO, PYCOREINFO_NOTE)
        if note is not None:
            blob, where = bytes(note.desc), "note"
        else:
            from kmemdump.idenum import ID  # the ids and kinds are enums: loaded by what decodes, not by ls

            record = self._by_id(ID.PYCOREINFO)
            if record is None:
                return None, "the process published no Python layout (no PYCOREINFO region)"
            if record.status != "ok":
                return None, f"the PYCOREINFO region was not stored whole (status {record.status})"
            try:
                blob, where = self.region_bytes(record), "region"
            except UnreadableMemoryError as err:
                return None, f"the PYCOREINFO region is not in the image: {err}"
        try:
            from kmemdump.formats.pycoreinfo import PyCoreInfo  # the layout and the stacks are read on use

            return PyCoreInfo.decode(blob), ""
        except DumpFormatError as err:
            return None, f"the PYCOREINFO {where} is invalid: {err}"

    def _load_stacks(self) -> tuple[Stacks | None, str]:
        note = self.core.note(OWNER_KMEMDUMP, KMD_NOTE_STACKS)
        if note is None:
            recorded = self.meta.stacks
            return None, recorded if recorded != "ok" else "the stacks note is missing from the dump"
        try:
            from kmemdump.formats.stacks import decode_stacks

            return decode_stacks(note.desc), "ok"
        except DumpFormatError as err:
            return None, f"the stacks note is invalid: {err}"

    @cached_property
    def _faults(self) -> tuple[FaultText | None, str]:
        note = self.core.note(OWNER_KMEMDUMP, KMD_NOTE_FAULTS)
        if note is None:
            return None, ""
        try:
            from kmemdump.formats.faults import decode_fault_note

            return decode_fault_note(note.desc), ""
        except DumpFormatError as err:
            return None, str(err)

    @property
    def faulthandler(self) -> FaultText | None:
        """What faulthandler wrote (``init(faulthandler=True)``): crash and timeout tracebacks, if any."""
        return self._faults[0]

    @property
    def faulthandler_error(self) -> str:
        """Why the faulthandler note could not be read (empty when it could, or there is none)."""
        return self._faults[1]

    def _check_regions(self) -> tuple[str, ...]:
        problems = []
        for record in self.meta.regions:
            if record.stored == 0:
                continue
            held = len(self.core.read_upto(record.address, record.stored))
            if held != record.stored:
                problems.append(
                    f"region {record.id} ({record.name}) claims {record.stored} stored bytes "
                    f"at 0x{record.address:x}, the image holds {held}"
                )
        return tuple(problems)

    # --- regions ------------------------------------------------------------------------------

    def _by_id(self, region_id: int) -> RegionRecord | None:
        return next((r for r in self.meta.regions if r.id == region_id), None)

    def graph(self, region_id: int) -> GraphRecord | None:
        """The live object graph rooted at region ``region_id``, if the producer published one."""
        return next((g for g in self.meta.graphs if g.id == region_id), None)

    def region(self, selector: str | int) -> RegionRecord:
        """The region chosen by ``selector``: an ID (``17``, ``0x11``), a region name, a predefined
        ID name (``BANNER``, ``pycoreinfo``) or a label (``user+0``, ``dyn+3``).

        :class:`UnknownRegionError` when nothing (or more than one region, by name) matches.
        """
        if isinstance(selector, int) and not isinstance(selector, bool):
            found = self._by_id(selector)
            if found is None:
                raise UnknownRegionError(
                    "no region with this ID in the dump", id=selector, path=str(self.path)
                )
            return found
        from kmemdump.idenum import ID
        from kmemdump.ids import id_label

        text = str(selector).strip()
        number = _parse_id(text)
        if number is not None and (found := self._by_id(number)) is not None:
            return found
        named = [r for r in self.meta.regions if r.name == text]
        if len(named) == 1:
            return named[0]
        if len(named) > 1:
            raise UnknownRegionError(
                f"{len(named)} regions are named {text!r}; choose one by ID",
                ids=", ".join(str(r.id) for r in named),
            )
        predefined = ID.__members__.get(text.upper())
        if predefined is not None and (found := self._by_id(predefined)) is not None:
            return found
        labelled = [r for r in self.meta.regions if id_label(r.id).lower() == text.lower()]
        if labelled:
            return labelled[0]
        known = ", ".join(f"{r.id} {r.name}" for r in self.meta.regions[:12])
        more = " …" if len(self.meta.regions) > 12 else ""
        raise UnknownRegionError(
            f"no region {text!r} in the dump (give an ID, a name, or a label such as BANNER)",
            regions=(known + more) or "none",
        )

    def region_bytes(self, record: RegionRecord) -> bytes:
        """The stored bytes of ``record`` (``record.stored`` of them, from its address).

        :class:`UnreadableMemoryError` when the dump holds none, or fewer than the metadata says.
        """
        if record.stored == 0:
            why = f"; {record.error}" if record.error else ""
            raise UnreadableMemoryError(
                f"region {record.id} ({record.name}) has no bytes in the dump (status {record.status}{why})",
                id=record.id,
                readable=0,
            )
        return bytes(self.core.read(record.address, record.stored))

    def banner(self) -> str | None:
        """The text of the ``ID.BANNER`` region up to its first NUL, or None if it was not stored."""
        from kmemdump.idenum import ID

        record = self._by_id(ID.BANNER)
        if record is None or record.stored == 0:
            return None
        try:
            data = self.region_bytes(record)
        except UnreadableMemoryError:
            return None
        return data.split(b"\0", 1)[0].decode("utf-8", errors="replace")

    # --- decoding -----------------------------------------------------------------------------

    def decode_region(self, record: RegionRecord) -> DecodedRegion:
        """Decode ``record``'s bytes according to its kind; failures become ``error``, not exceptions."""
        from kmemdump.formats.enums import RegionKind

        kind = kind_name(record.kind).lower()
        if record.stored == 0:
            why = f": {record.error}" if record.error else ""
            graph = self.graph(record.id)
            if graph is not None and graph.status != "ok" and graph.error and graph.error != record.error:
                why += f"; its object graph: {graph.error}"
            return DecodedRegion(kind, None, False, error=f"not stored (status {record.status}){why}")
        try:
            if record.kind == RegionKind.OBJECT:
                return self._decode_object(record)
            if record.kind == RegionKind.PYCOREINFO:
                return self._decode_pycoreinfo(record)
            if record.kind == RegionKind.RING:
                return self._decode_ring(record)
            from kmemdump.inspect.cpython import decode_buffer

            value = decode_buffer(self.region_bytes(record))
            return DecodedRegion(kind, value, record.status == "ok")
        except (DecodeError, UnreadableMemoryError, DumpFormatError) as err:
            return DecodedRegion(kind, None, False, error=str(err))

    def _decode_object(self, record: RegionRecord) -> DecodedRegion:
        if self.pycoreinfo is None:
            return DecodedRegion(
                "object", None, False, error=f"cannot decode objects: {self.pycoreinfo_reason}"
            )
        from kmemdump.formats.kinds import MAX_GRAPH_DEPTH
        from kmemdump.inspect.cpython import decode

        graph = self.graph(record.id)
        if graph is not None and graph.status in ("ok", "partial") and graph.max_objects and graph.max_bytes:
            # exactly as the collector walked it in the live process: the same bounds, checked mode
            # (within the reader's own: a diamond of shared lists 64 deep is 2**64 visits)
            decoded = decode(
                self.core,
                record.address,
                self.pycoreinfo,
                max_depth=min(graph.depth, MAX_GRAPH_DEPTH),
                max_items=min(graph.max_objects, dumpmeta.GRAPH_MAX_OBJECTS),
                max_bytes=min(graph.max_bytes, dumpmeta.GRAPH_MAX_BYTES),
                checked=True,
            )
        else:
            decoded = decode(self.core, record.address, self.pycoreinfo)
        return DecodedRegion(decoded.type_name, decoded.value, decoded.complete, tuple(decoded.missing))

    def _decode_ring(self, record: RegionRecord) -> DecodedRegion:
        from kmemdump.formats.ring import parse_ring  # read on use, as the layout and the stacks

        ring = parse_ring(self.region_bytes(record))
        whole = record.status == "ok" and not ring.missing_slots
        return DecodedRegion(f"ring:{ring.role_name}", ring_json(ring), whole)

    def _decode_pycoreinfo(self, record: RegionRecord) -> DecodedRegion:
        from kmemdump.formats.pycoreinfo import PyCoreInfo

        info = PyCoreInfo.decode(self.region_bytes(record))
        return DecodedRegion("pycoreinfo", pycoreinfo_summary(info), record.status == "ok")

    # --- summaries ----------------------------------------------------------------------------

    def summary(self) -> DumpSummary:
        meta = self.meta
        return DumpSummary(
            path=self.path,
            file_size=self.file_size,
            compressed=self.compressed,
            captured_ns=meta.captured_ns,
            reason=meta.reason,
            pid=meta.pid,
            start_time=meta.start_time,
            command=command_line(meta),
            exe=meta.exe,
            regions=len(meta.regions),
            stored_bytes=meta.stored_bytes,
            partial=meta.partial,
            stacks=meta.stacks,
            host=meta.host,
            missing=meta.missing,
            lacking=what_is_missing(meta),
        )

    def __repr__(self) -> str:
        return f"Dump({str(self.path)!r}, pid={self.meta.pid}, reason={self.meta.reason!r})"


def ring_json(ring: Ring) -> dict[str, Any]:
    """A record ring as JSON: its geometry, its whole records oldest first, and what was lost.

    A record of an ``asyncio`` ring is a JSON snapshot: it is decoded into ``snapshot`` (``None``
    when the text is not valid JSON, e.g. a record that was cut).
    """
    from kmemdump.formats.ring import RingRole

    records = []
    for item in ring.records:
        entry: dict[str, Any] = {
            "seq": item.seq,
            "time": item.time,
            "level": item.level,
            "level_name": item.level_name,
            "text": item.text,
            "cut": item.cut,
            "full_length": item.full_length,
        }
        if ring.role == RingRole.ASYNCIO:
            entry["snapshot"] = _json_or_none(item.text)
        records.append(entry)
    return {
        "role": ring.role_name,
        "capacity": ring.capacity,
        "record_size": ring.slot_size,
        "created_ns": ring.created_ns,
        "written": ring.last_seq,
        "overwritten": ring.overwritten,
        "torn": ring.torn,
        "invalid": ring.invalid,
        "missing_slots": ring.missing_slots,
        "records": records,
    }


def _json_or_none(text: str) -> Any:
    import json

    try:
        return json.loads(text)
    except ValueError:
        return None


def pycoreinfo_summary(info: PyCoreInfo) -> dict[str, Any]:
    """What a person wants to know about a layout description, as JSON."""
    return {
        "python": info.version_string,
        "implementation": info.implementation,
        "free_threaded": info.free_threaded,
        "pointer_size": info.pointer_size,
        "byteorder": info.byteorder,
        "source": info.source,
        "types": len(info.types),
        "constants": len(info.constants),
    }


def command_line(meta: DumpMeta, banner: str | None = None) -> str:
    """The target's command line, shell-quoted; else the ``argv:`` line of its banner (a dump written
    after the process was gone, by an older collector); else its executable."""
    if meta.argv:
        return " ".join(map(shell_quote, meta.argv))
    for line in (banner or "").splitlines():
        key, _, value = line.partition(": ")
        if key == "argv" and value.strip() and value.strip() != "?":
            return value.strip()
    return meta.exe or "?"


_SHELL_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_@%+=:,./-")


def shell_quote(word: str) -> str:
    """What :func:`shlex.quote` makes of ``word`` (shlex imports ``re``, a sixth of ``ls``'s start-up)."""
    if not word:
        return "''"
    if _SHELL_SAFE.issuperset(word):
        return word
    return "'" + word.replace("'", "'\"'\"'") + "'"


def _parse_id(text: str) -> int | None:
    if text.isascii() and text.isdigit():
        return int(text)
    if text[:2].lower() == "0x":
        try:
            return int(text[2:], 16)
        except ValueError:
            return None
    return None


# --- directories ----------------------------------------------------------------------------------


def dump_files(directory: str | os.PathLike[str]) -> list[str]:
    """The dump files in ``directory`` (``*.core``, ``*.core.zst``, not hidden), sorted by name.

    A path to a single file is returned as it is. A missing directory holds no dumps.
    """
    where = os.fspath(directory)
    try:
        if os.path.isfile(where):
            return [where]
        entries = list(os.scandir(where))
    except FileNotFoundError:
        return []
    except OSError as err:
        raise DumpFormatError(f"cannot list the dump directory: {err.strerror}", path=str(where)) from err
    found = []
    for entry in entries:
        if entry.name.startswith(".") or not entry.name.endswith(DUMP_SUFFIXES):
            continue
        try:
            if entry.is_file():
                found.append(entry.path)
        except OSError:
            continue
    return sorted(found)


def parse_dump_name(name: str) -> tuple[int, int, str] | None:
    """``(pid, captured_ns, reason)`` from a name kmemdump writes
    (``kmemdump-PID-STARTTIME-REASON-YYYYmmddTHHMMSS.ffffffZ.core[.zst]``); None for any other name."""
    stem = name.removesuffix(".zst").removesuffix(".core")
    parts = stem.split("-")
    if len(parts) != 5 or parts[0] != "kmemdump" or stem == name:
        return None
    _, pid, start, reason, stamp = parts
    if not (pid.isascii() and pid.isdigit() and start.isascii() and start.isdigit() and reason.isalpha()):
        return None
    if len(stamp) != 23 or stamp[8] != "T" or stamp[15] != "." or stamp[-1] != "Z":
        return None
    digits = stamp[:8] + stamp[9:15] + stamp[16:22]
    if not (digits.isascii() and digits.isdigit()):
        return None
    year, month, day = int(stamp[0:4]), int(stamp[4:6]), int(stamp[6:8])
    hour, minute, second = int(stamp[9:11]), int(stamp[11:13]), int(stamp[13:15])
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second <= 60):
        return None
    epoch = ((_days_since_epoch(year, month, day) * 24 + hour) * 60 + minute) * 60 + second
    return int(pid), epoch * 1_000_000_000 + int(stamp[16:22]) * 1000, reason


def _days_since_epoch(year: int, month: int, day: int) -> int:
    """Days from 1970-01-01 to a date of the proleptic Gregorian calendar (what calendar.timegm
    counts, without importing it)."""
    year -= month <= 2
    era = year // 400
    of_era = year - era * 400
    of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    of_cycle = of_era * 365 + of_era // 4 - of_era // 100 + of_year
    return era * 146097 + of_cycle - 719468


@frozen
class CatalogEntry:
    """One dump of a directory, as far as its name (or, for another name, its metadata) tells."""

    index: int
    """1 for the oldest capture; the number ``kmemdump ls`` shows and every DUMP argument accepts."""
    path: str
    captured_ns: int
    pid: int
    reason: str


def catalog(
    directory: str | os.PathLike[str],
    *,
    on_error: Callable[[str, KmemdumpError], None] | None = None,
) -> list[CatalogEntry]:
    """The dumps of ``directory``, oldest capture first, numbered from 1.

    Names kmemdump writes carry the pid, reason and capture time, so listing a directory opens no
    dump; a file of another name is opened for its metadata (and passed to ``on_error``, or logged,
    when it cannot be read: it gets no number).
    """
    known: list[tuple[int, str, str, int, str]] = []
    for path in dump_files(directory):
        name = os.path.basename(path)
        parsed = parse_dump_name(name)
        if parsed is None:
            try:
                summary = summarize(path)
            except KmemdumpError as err:
                if on_error is None:
                    _warn_skipped(path, err)
                else:
                    on_error(path, err)
                continue
            parsed = (summary.pid, summary.captured_ns, summary.reason)
        pid, captured_ns, reason = parsed
        known.append((captured_ns, name, path, pid, reason))
    known.sort(key=lambda item: (item[0], item[1]))
    return [
        CatalogEntry(index, path, captured_ns, pid, reason)
        for index, (captured_ns, _, path, pid, reason) in enumerate(known, start=1)
    ]


def summarize(path: str | os.PathLike[str]) -> DumpSummary:
    """Open ``path`` just long enough to summarise it."""
    with Dump.open(path) as dump:
        return dump.summary()


def list_dumps(
    directory: str | os.PathLike[str],
    *,
    on_error: Callable[[str, KmemdumpError], None] | None = None,
    iterate: Callable[[Sequence[str]], Iterable[str]] | None = None,
) -> list[DumpSummary]:
    """Summaries of the dumps in ``directory``, oldest capture first (the order of :func:`catalog`).

    Files that cannot be read as dumps are left out and passed to ``on_error`` (logged as warnings
    when it is None). ``iterate`` wraps the file list, e.g. with a progress bar.
    """
    files = [entry.path for entry in catalog(directory, on_error=on_error)]
    summaries: list[DumpSummary] = []
    for path in iterate(files) if iterate is not None else files:
        try:
            summaries.append(summarize(path))
        except KmemdumpError as err:
            if on_error is None:
                _warn_skipped(path, err)
            else:
                on_error(path, err)
    return summaries

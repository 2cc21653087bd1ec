"""The dump file: a small ELF core image (``ET_CORE``), its writer and its reader.

The writer is ours (no library writes a selective core well): an ELF64 header, one ``PT_NOTE``
program header, one ``PT_LOAD`` per stored segment (``p_vaddr`` = the original address,
``p_filesz == p_memsz`` = the bytes stored, never more), then the notes, then the segment bytes
packed back to back. ``docs/dump-format.md`` lists every byte. Files are written atomically
(temporary file, fsync, rename without replacing, fsync of the directory) and optionally
compressed with zstd.

The reader, :class:`CoreImage`, is built on pyelftools, accepts plain and zstd files, and turns
every defect of a file into :class:`~kmemdump.errors.DumpFormatError`; its :meth:`CoreImage.read`
is a :class:`~kmemdump.memory.MemorySource`.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import errno
import fcntl
import mmap
import os
import platform
import secrets
import struct
import sys
import tempfile
from collections.abc import Iterable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from types import ModuleType
from types import TracebackType
from typing import IO
from typing import Any

from kmemdump.errors import CollectorError
from kmemdump.errors import DumpFormatError
from kmemdump.errors import InvalidRegionError
from kmemdump.errors import UnreadableMemoryError

__all__ = [
    "EM_AARCH64",
    "EM_X86_64",
    "KMD_NOTE_META",
    "KMD_NOTE_STACKS",
    "NT_PRPSINFO",
    "NT_PRSTATUS",
    "OWNER_CORE",
    "OWNER_KMEMDUMP",
    "OWNER_PYCOREINFO",
    "PYCOREINFO_NOTE",
    "CoreImage",
    "CoreWriter",
    "LoadSegment",
    "Note",
    "PsInfo",
    "Segment",
    "host_machine",
    "parse_prpsinfo",
    "prpsinfo_note",
    "prstatus_note",
    "write_core",
]

# --- numbers from the ELF specification and Linux's <elf.h> ----------------------------------------

ELF_MAGIC = b"\x7fELF"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ELFCLASS64 = 2
ELFDATA2LSB = 1
EV_CURRENT = 1
ELFOSABI_NONE = 0
ET_CORE = 4
EM_X86_64 = 62
EM_AARCH64 = 183
PT_LOAD = 1
PT_NOTE = 4
PF_W = 2
PF_R = 4
PN_XNUM = 0xFFFF  # e_phnum value meaning "the count is in section header 0's sh_info"

NT_PRSTATUS = 1
NT_PRPSINFO = 3
OWNER_CORE = "CORE"
OWNER_KMEMDUMP = "KMEMDUMP"
OWNER_PYCOREINFO = "PYCOREINFO"
KMD_NOTE_META = 1
KMD_NOTE_STACKS = 2
PYCOREINFO_NOTE = 1

_EHDR = struct.Struct("<4sBBBBB7xHHIQQQIHHHHHH")  # Elf64_Ehdr, 64 bytes
_PHDR = struct.Struct("<IIQQQQQQ")  # Elf64_Phdr, 56 bytes
_SHDR = struct.Struct("<IIQQQQIIQQ")  # Elf64_Shdr, 64 bytes (only for PN_XNUM)
_NHDR = struct.Struct("<III")  # Elf64_Nhdr: namesz, descsz, type
# struct elf_prpsinfo (x86_64 and aarch64 alike): state, sname, zomb, nice, 4 pad, flag,
# uid, gid, pid, ppid, pgrp, sid, fname[16], psargs[80]
_PRPSINFO = struct.Struct("<bcbb4xQIIiiii16s80s")
# struct elf_prstatus: pr_pid after elf_siginfo (12), pr_cursig (2 + 2 pad), sigpend, sighold
_PRSTATUS_PID_OFFSET = 32
_PRSTATUS_SIZE = {EM_X86_64: 336, EM_AARCH64: 392}  # 112 common + 27 or 34 registers + fpvalid
_MACHINES = {"x86_64": EM_X86_64, "amd64": EM_X86_64, "aarch64": EM_AARCH64, "arm64": EM_AARCH64}
_U32 = 1 << 32
_ADDRESS_END = 1 << 64
_ZSTD_CHUNK = 8 << 20
_WRITE_BATCH = 1024  # iovecs per writev


def host_machine() -> int:
    """The ELF ``e_machine`` of this computer; :class:`CollectorError` where cores are unsupported."""
    name = platform.machine().lower()
    try:
        return _MACHINES[name]
    except KeyError:
        raise CollectorError(
            f"kmemdump writes core images for x86_64 and aarch64 only, not for {name or 'this machine'}"
        ) from None


def _check_machine(machine: int | None) -> int:
    if machine is None:
        return host_machine()
    if machine not in _PRSTATUS_SIZE:
        raise CollectorError(f"unsupported ELF machine {machine}: only x86_64 (62) and aarch64 (183)")
    return machine


# --- what goes in ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Note:
    """One ELF note: ``owner`` (the note's name), ``type`` and the raw descriptor bytes."""

    owner: str
    type: int
    desc: bytes

    def __post_init__(self) -> None:
        if "\0" in self.owner:
            raise DumpFormatError(f"note owner {self.owner!r} contains a NUL character")
        if not 0 <= self.type < _U32:
            raise DumpFormatError(f"note type {self.type} does not fit in 32 bits", owner=self.owner)
        if len(self.desc) >= _U32:
            raise DumpFormatError(f"note descriptor of {len(self.desc)} bytes is too large", owner=self.owner)

    def encode(self) -> bytes:
        """The note as stored: header, NUL-terminated owner and descriptor, each padded to 4."""
        name = self.owner.encode() + b"\0"
        return b"".join(
            (
                _NHDR.pack(len(name), len(self.desc), self.type),
                name,
                bytes(-len(name) % 4),
                self.desc,
                bytes(-len(self.desc) % 4),
            )
        )


@dataclass(frozen=True, slots=True)
class Segment:
    """Bytes copied from ``address`` in the target; stored as one ``PT_LOAD``."""

    address: int
    data: bytes | bytearray | memoryview
    size: int = field(init=False, repr=True, compare=False)

    def __post_init__(self) -> None:
        try:
            size = memoryview(self.data).cast("B").nbytes
        except TypeError as err:
            raise InvalidRegionError(
                f"segment data of type {type(self.data).__name__} is not contiguous bytes"
            ) from err
        if not 0 <= self.address < _ADDRESS_END or self.address + size > _ADDRESS_END:
            raise InvalidRegionError(
                f"segment at {self.address:#x} of {size} bytes does not fit in a 64-bit address space",
                address=self.address,
                size=size,
            )
        object.__setattr__(self, "size", size)


def prpsinfo_note(
    pid: int, fname: str, psargs: str, state: str = "R", *, ppid: int = 0, uid: int = 0, gid: int = 0
) -> Note:
    """A ``CORE/NT_PRPSINFO`` note (``struct elf_prpsinfo``, 136 bytes): gdb prints ``psargs`` as
    "Core was generated by `...'". ``fname`` is cut to 15 bytes and ``psargs`` to 79, as the kernel
    does; ``state`` is the one-letter process state of ``/proc/PID/stat``."""
    letter = (state or "R")[0]
    number = "RSDTZW".find(letter)
    desc = _PRPSINFO.pack(
        number if number >= 0 else 6,
        letter.encode("ascii", "replace")[:1],
        1 if letter == "Z" else 0,
        0,
        0,
        uid & 0xFFFFFFFF,
        gid & 0xFFFFFFFF,
        pid,
        ppid,
        0,  # pr_pgrp
        0,  # pr_sid
        _cut(fname, 15),
        _cut(psargs, 79),
    )
    return Note(OWNER_CORE, NT_PRPSINFO, desc)


def _cut(text: str, limit: int) -> bytes:
    """``text`` as bytes, cut to ``limit`` without splitting a UTF-8 character (struct pads with NULs)."""
    raw = os.fsencode(text)
    if len(raw) <= limit:
        return raw
    cut = limit
    while cut > 0 and raw[cut] & 0xC0 == 0x80:  # raw[cut] continues a character begun before it
        cut -= 1
    return raw[:cut]


def prstatus_note(pid: int, *, machine: int | None = None) -> Note:
    """A ``CORE/NT_PRSTATUS`` note with zeroed registers and ``pr_pid`` set (336 bytes on x86_64,
    392 on aarch64), so gdb finds one thread and does not warn about missing registers."""
    desc = bytearray(_PRSTATUS_SIZE[_check_machine(machine)])
    struct.pack_into("<i", desc, _PRSTATUS_PID_OFFSET, pid)
    return Note(OWNER_CORE, NT_PRSTATUS, bytes(desc))


@dataclass(frozen=True, slots=True)
class PsInfo:
    """The decoded fields of an ``NT_PRPSINFO`` note."""

    pid: int
    ppid: int
    uid: int
    gid: int
    state: str
    fname: str
    psargs: str


def parse_prpsinfo(desc: bytes) -> PsInfo:
    """Decode an ``NT_PRPSINFO`` descriptor (x86_64/aarch64 layout)."""
    if len(desc) < _PRPSINFO.size:
        raise DumpFormatError(f"NT_PRPSINFO note of {len(desc)} bytes, expected {_PRPSINFO.size}")
    _state, sname, _zomb, _nice, _flag, uid, gid, pid, ppid, _pgrp, _sid, fname, psargs = (
        _PRPSINFO.unpack_from(desc)
    )
    return PsInfo(
        pid=pid,
        ppid=ppid,
        uid=uid,
        gid=gid,
        state=sname.decode("latin-1"),
        fname=fname.split(b"\0", 1)[0].decode(errors="replace"),
        psargs=psargs.split(b"\0", 1)[0].decode(errors="replace"),
    )


# --- the writer --------------------------------------------------------------------------------------


def _layout(spans: Sequence[tuple[int, int]], notes: Sequence[Note], machine: int) -> tuple[bytes, int]:
    """Everything before the segment bytes (header, program headers, notes); and the total size."""
    phnum = 1 + len(spans)
    extended = phnum >= PN_XNUM
    phoff = _EHDR.size
    shoff = phoff + phnum * _PHDR.size if extended else 0
    notes_offset = phoff + phnum * _PHDR.size + (_SHDR.size if extended else 0)
    notes_blob = b"".join(note.encode() for note in notes)
    header = _elf_header(machine, phoff, phnum, shoff)
    parts = [header, _PHDR.pack(PT_NOTE, 0, notes_offset, 0, 0, len(notes_blob), 0, 4)]
    offset = notes_offset + len(notes_blob)
    for address, size in spans:
        parts.append(_PHDR.pack(PT_LOAD, PF_R | PF_W, offset, address, 0, size, size, 1))
        offset += size
    if extended:  # section header 0 carries the real program header count in sh_info
        parts.append(_SHDR.pack(0, 0, 0, 0, 0, 0, 0, phnum, 0, 0))
    parts.append(notes_blob)
    return b"".join(parts), offset


def write_core(
    path: str | os.PathLike[str],
    segments: Sequence[Segment],
    notes: Sequence[Note],
    *,
    compress: bool = False,
    level: int = 3,
    machine: int | None = None,
) -> Path:
    """Write a core image atomically and return its final path.

    With ``compress=True`` the file is one zstd frame of the same image and ``.zst`` is appended
    to the name when missing. An existing final path is never replaced. Any failure removes the
    temporary file and raises :class:`CollectorError` (with ``path=`` and ``errno=``).
    """
    machine = _check_machine(machine)
    final = Path(path)
    if compress and not final.name.endswith(".zst"):
        final = final.with_name(final.name + ".zst")
    compressor = _compressor(level, final) if compress else None
    views = [memoryview(segment.data).cast("B") for segment in segments]
    spans = [(segment.address, view.nbytes) for segment, view in zip(segments, views, strict=True)]
    for segment, (address, size) in zip(segments, spans, strict=True):
        if size != segment.size:  # a bytearray resized since the Segment was made
            raise InvalidRegionError(
                f"segment at {address:#x} changed size from {segment.size} to {size} bytes",
                address=address,
                size=size,
            )
    head, total = _layout(spans, notes, machine)
    if os.path.lexists(final):
        raise _exists(final)
    directory = final.parent
    temporary = directory / f".{final.name}.{secrets.token_hex(6)}.tmp"
    fd = -1
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        os.fchmod(fd, 0o640)  # whatever the umask
        if compressor is None:
            _write_views(fd, [memoryview(head), *views])
        else:
            compressor.set_pledged_input_size(total)
            _write_compressed(fd, [memoryview(head), *views], compressor)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        _rename_noreplace(temporary, final)
    except BaseException as err:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(err, FileExistsError) and err.filename == os.fspath(final):
            raise _exists(final) from err
        if isinstance(err, OSError):
            raise _write_error(err, final) from err
        raise
    _sync_directory(directory, final)
    return final


def _exists(final: Path) -> CollectorError:
    return CollectorError(
        f"refusing to overwrite {final}: a file is already there; move it away or choose another name",
        path=str(final),
        errno=errno.EEXIST,
    )


def _write_error(err: OSError, final: Path) -> CollectorError:
    where = final.parent
    code = err.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        what = f"no space left in {where} for the dump: free space there (or lower the dump size budget)"
    elif code == errno.EFBIG:
        what = f"the dump exceeds the file size limit ('ulimit -f') in {where}: raise it or lower the budget"
    elif code == errno.EROFS:
        what = f"{where} is on a read-only file system: choose another dump directory"
    elif code in (errno.EACCES, errno.EPERM):
        what = f"permission denied writing in {where}: fix the directory's permissions or choose another one"
    elif code in (errno.ENOENT, errno.ENOTDIR):
        what = f"the dump directory {where} does not exist: create it or choose another one"
    else:
        what = f"writing the dump in {where} failed: {err.strerror or err}"
    return CollectorError(what, path=str(final), errno=code)


def _write_views(fd: int, views: list[memoryview]) -> None:
    """Write every view in order with ``writev``, resuming after short writes."""
    pending = [v for v in views if v.nbytes]
    start = 0
    while start < len(pending):
        batch = pending[start : start + _WRITE_BATCH]
        written = os.writev(fd, batch)
        for view in batch:
            if written >= view.nbytes:
                written -= view.nbytes
                start += 1
                continue
            pending[start] = view[written:]  # short write: the rest of this view comes next
            break


def _write_compressed(fd: int, views: list[memoryview], compressor: Any) -> None:
    out: list[memoryview] = []
    held = 0
    for view in views:
        for begin in range(0, view.nbytes, _ZSTD_CHUNK):
            chunk = compressor.compress(view[begin : begin + _ZSTD_CHUNK])
            if chunk:
                out.append(memoryview(chunk))
                held += len(chunk)
            if held >= _ZSTD_CHUNK:
                _write_views(fd, out)
                out, held = [], 0
    out.append(memoryview(compressor.flush()))
    _write_views(fd, out)


def _zstd() -> ModuleType:
    if sys.version_info >= (3, 14):
        import compression.zstd as module
    else:
        import backports.zstd as module
    return module


def _compressor(level: int, final: Path) -> Any:
    try:
        module = _zstd()
    except ImportError as err:
        raise CollectorError(
            "zstd compression needs the backports.zstd package on Python < 3.14 "
            "(pip install 'kmemdump[collector]')",
            path=str(final),
        ) from err
    try:
        return module.ZstdCompressor(level=level)
    except (ValueError, TypeError, module.ZstdError) as err:
        raise CollectorError(f"invalid zstd level {level}: {err}", path=str(final)) from err


def _load_renameat2() -> Any:
    try:
        func = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


_renameat2 = _load_renameat2()
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def _rename_noreplace(source: Path, target: Path) -> None:
    """Move ``source`` to ``target`` unless ``target`` exists (``FileExistsError`` then)."""
    if _renameat2 is not None:
        if _renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # else: not supported here
            raise OSError(code, os.strerror(code), os.fspath(target))
    try:
        os.link(source, target)  # fails with EEXIST rather than replacing
    except FileExistsError:
        raise
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EMLINK):
            raise
        # no hard links on this file system: check, then rename (a narrow race remains)
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(target)) from err
        os.rename(source, target)
        return
    os.unlink(source)


def _sync_directory(directory: Path, final: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise CollectorError(
            f"the dump was written but its directory {directory} cannot be opened to sync it: {err.strerror}",
            path=str(final),
            errno=err.errno,
        ) from err
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EROFS):
            raise CollectorError(
                f"the dump was written but syncing {directory} failed: {err.strerror}; "
                "it may not survive a crash",
                path=str(final),
                errno=err.errno,
            ) from err
    finally:
        os.close(fd)


class CoreWriter:
    """Stream a core image to disk: segment bytes go out as they are copied, the headers last.

    The collector copies a region straight from the target into a small reused buffer and from
    there into the file, so a dump of gigabytes needs megabytes of memory, and how many bytes each
    region really gave is known only afterwards. So a streamed image puts the ELF header at 0, the
    segment bytes from offset 64 on, back to back, then the notes, then the program header table
    (``e_phoff`` points at it; ELF allows it anywhere). Readers (gdb, readelf, pyelftools, lldb)
    follow the offsets and see the same image :func:`write_core` makes.

    Bytes are gathered in a 4 MiB page-aligned staging buffer and written with ``O_DIRECT`` where
    the file system allows it: a dump then bypasses the page cache, so writing it neither needs
    free page-cache memory on a host short of memory nor evicts the cache of the programs still
    running. File systems without ``O_DIRECT`` (tmpfs) get ordinary writes.

        with CoreWriter(path) as out:
            out.begin(address)
            out.write(chunk)            # as many times as there are chunks
            stored = out.end()          # 0: nothing stored, no PT_LOAD for it
            final = out.finish(notes)   # atomic: temporary file, fsync, rename, fsync dir

    Leaving the ``with`` block without :meth:`finish` (an exception) removes the temporary file.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, machine: int | None = None, direct: bool = True
    ) -> None:
        self._machine = _check_machine(machine)
        self.final = Path(path)
        if os.path.lexists(self.final):
            raise _exists(self.final)
        self._temporary = self.final.parent / f".{self.final.name}.{secrets.token_hex(6)}.tmp"
        self._spans: list[tuple[int, int, int]] = []  # (address, file offset, size)
        self._open: list[int] | None = None  # [address, offset, size] of the segment being written
        self._stage = mmap.mmap(-1, _STAGE_SIZE)  # page-aligned, as O_DIRECT wants
        self._staged = _EHDR.size  # the stage holds the file from offset _flushed on; the header comes last
        self._flushed = 0
        self._fd = -1
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        self.direct = direct and hasattr(os, "O_DIRECT")
        try:
            try:
                self._fd = os.open(self._temporary, flags | (os.O_DIRECT if self.direct else 0), 0o640)
            except OSError as err:
                if err.errno != errno.EINVAL or not self.direct:
                    raise
                self.direct = False  # the file system does not do O_DIRECT (tmpfs)
                self._fd = os.open(self._temporary, flags, 0o640)
            os.fchmod(self._fd, 0o640)
        except OSError as err:
            self._stage.close()
            raise _write_error(err, self.final) from err

    @property
    def bytes_stored(self) -> int:
        return sum(size for _, _, size in self._spans)

    @property
    def _offset(self) -> int:
        return self._flushed + self._staged

    def begin(self, address: int) -> None:
        """Start the segment for memory at ``address``."""
        if self._open is not None:
            raise ValueError("a segment is already open; call end() first")
        if not 0 <= address < _ADDRESS_END:
            raise InvalidRegionError("segment address out of range", address=address)
        self._open = [address, self._offset, 0]

    def write(self, data: Any) -> None:
        """Append bytes to the open segment."""
        if self._open is None:
            raise ValueError("no segment is open; call begin() first")
        view = memoryview(data).cast("B")
        if self._open[0] + self._open[2] + view.nbytes > _ADDRESS_END:
            raise InvalidRegionError("segment runs past the end of the address space", address=self._open[0])
        self._open[2] += view.nbytes
        try:
            while view.nbytes:
                room = _STAGE_SIZE - self._staged
                take = min(room, view.nbytes)
                self._stage[self._staged : self._staged + take] = view[:take]
                self._staged += take
                view = view[take:]
                if self._staged == _STAGE_SIZE:
                    self._flush_stage()
        except OSError as err:
            self.abort()
            raise _write_error(err, self.final) from err

    def _flush_stage(self) -> None:
        """Write the full stage at its (stage-aligned) file offset."""
        try:
            written = os.pwrite(self._fd, self._stage, self._flushed)
        except OSError as err:
            if err.errno != errno.EINVAL or not self.direct:
                raise
            self._buffered()  # O_DIRECT refused after all: carry on with ordinary writes
            written = os.pwrite(self._fd, self._stage, self._flushed)
        if written != _STAGE_SIZE:
            _write_rest(self._fd, memoryview(self._stage)[written:], self._flushed + written)
        self._flushed += _STAGE_SIZE
        self._staged = 0

    def _buffered(self) -> None:
        if self.direct:
            fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) & ~os.O_DIRECT)
            self.direct = False

    def end(self) -> int:
        """Close the open segment; return how many bytes it stored (0: no PT_LOAD for it)."""
        if self._open is None:
            raise ValueError("no segment is open")
        address, offset, size = self._open
        self._open = None
        if size:
            self._spans.append((address, offset, size))
        return size

    def add(self, address: int, data: Any) -> int:
        """A whole segment at once."""
        self.begin(address)
        self.write(data)
        return self.end()

    def finish(self, notes: Sequence[Note]) -> Path:
        """Write the notes and the headers, make the file durable and give it its final name."""
        if self._open is not None:
            self.end()
        try:
            end = self._offset
            if self._staged:
                if self.direct:  # O_DIRECT writes whole blocks: pad, then cut the file back
                    padded = -(-self._staged // _DIRECT_BLOCK) * _DIRECT_BLOCK
                    self._stage[self._staged : padded] = bytes(padded - self._staged)
                    _write_rest(self._fd, memoryview(self._stage)[:padded], self._flushed)
                else:
                    _write_rest(self._fd, memoryview(self._stage)[: self._staged], self._flushed)
            self._buffered()
            os.ftruncate(self._fd, end)
            notes_blob = b"".join(note.encode() for note in notes)
            phoff = end + len(notes_blob)
            phnum = 1 + len(self._spans)
            extended = phnum >= PN_XNUM
            shoff = phoff + phnum * _PHDR.size if extended else 0
            table = [_PHDR.pack(PT_NOTE, 0, end, 0, 0, len(notes_blob), 0, 4)]
            table.extend(
                _PHDR.pack(PT_LOAD, PF_R | PF_W, offset, address, 0, size, size, 1)
                for address, offset, size in self._spans
            )
            if extended:
                table.append(_SHDR.pack(0, 0, 0, 0, 0, 0, 0, phnum, 0, 0))
            _write_rest(self._fd, memoryview(notes_blob + b"".join(table)), end)
            _write_rest(self._fd, memoryview(_elf_header(self._machine, phoff, phnum, shoff)), 0)
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            self._stage.close()
            _rename_noreplace(self._temporary, self.final)
        except BaseException as err:
            self.abort()
            if isinstance(err, FileExistsError) and err.filename == os.fspath(self.final):
                raise _exists(self.final) from err
            if isinstance(err, OSError):
                raise _write_error(err, self.final) from err
            raise
        _sync_directory(self.final.parent, self.final)
        return self.final

    def abort(self) -> None:
        """Give up: close and remove the temporary file (harmless when already done)."""
        if not self._stage.closed:
            # a view held by an exception's traceback keeps it exported; it is freed with that view
            with contextlib.suppress(BufferError):
                self._stage.close()
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
            with contextlib.suppress(OSError):
                os.unlink(self._temporary)

    def __enter__(self) -> CoreWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.abort()


_STAGE_SIZE = 4 << 20
_DIRECT_BLOCK = 4096


def _write_rest(fd: int, view: memoryview, offset: int) -> None:
    """``pwrite`` all of ``view`` at ``offset``, resuming after short writes."""
    while view.nbytes:
        written = os.pwrite(fd, view, offset)
        if written <= 0:
            raise OSError(errno.EIO, "write made no progress")
        view = view[written:]
        offset += written


def _elf_header(machine: int, phoff: int, phnum: int, shoff: int) -> bytes:
    extended = phnum >= PN_XNUM
    return _EHDR.pack(
        ELF_MAGIC,
        ELFCLASS64,
        ELFDATA2LSB,
        EV_CURRENT,
        ELFOSABI_NONE,
        0,  # EI_ABIVERSION
        ET_CORE,
        machine,
        EV_CURRENT,
        0,  # e_entry
        phoff,
        shoff,
        0,  # e_flags
        _EHDR.size,
        _PHDR.size,
        PN_XNUM if extended else phnum,
        _SHDR.size if extended else 0,
        1 if extended else 0,
        0,  # e_shstrndx: SHN_UNDEF
    )


# --- the reader --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoadSegment:
    """A ``PT_LOAD`` of a core: ``size`` bytes of memory from ``address``, stored at file ``offset``."""

    address: int
    size: int
    offset: int

    @property
    def end(self) -> int:
        return self.address + self.size


@dataclass(frozen=True, slots=True)
class _Piece:
    start: int
    end: int
    offset: int


def _pieces(segments: Iterable[LoadSegment]) -> list[_Piece]:
    """Disjoint, sorted stretches of memory with their file offsets (first segment wins overlaps)."""
    pieces: list[_Piece] = []
    covered = -1
    for seg in sorted(segments, key=lambda s: (s.address, -s.size)):
        if seg.size == 0 or seg.end <= covered:
            continue
        start = max(seg.address, covered)
        pieces.append(_Piece(start, seg.end, seg.offset + (start - seg.address)))
        covered = seg.end
    return pieces


class CoreImage:
    """A core image opened for reading; use :meth:`open`."""

    def __init__(
        self,
        path: Path,
        handle: IO[bytes],
        data: mmap.mmap,
        *,
        compressed: bool,
        machine: int,
        notes: tuple[Note, ...],
        segments: tuple[LoadSegment, ...],
    ) -> None:
        self.path = path
        self.compressed = compressed
        self.machine = machine
        self.notes = notes
        self.segments = segments
        self._handle = handle
        self._data = data
        self._pieces = _pieces(segments)
        self._starts = [piece.start for piece in self._pieces]

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> CoreImage:
        """Open a core image (plain or zstd); :class:`DumpFormatError` if it is not a sound one."""
        where = Path(path)
        try:
            handle: IO[bytes] = open(where, "rb")  # noqa: SIM115 - kept open by the CoreImage
        except OSError as err:
            raise DumpFormatError(f"cannot open {where}: {err.strerror or err}", path=str(where)) from err
        compressed = False
        try:
            if handle.read(4) == ZSTD_MAGIC:
                compressed = True
                handle.seek(0)
                handle = _decompress(handle, where)
            size = os.fstat(handle.fileno()).st_size
            if size == 0:
                raise DumpFormatError("not an ELF file: the file is empty", path=str(where))
            data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except DumpFormatError:
            handle.close()
            raise
        except (OSError, ValueError) as err:
            handle.close()
            raise DumpFormatError(f"cannot read {where}: {err}", path=str(where)) from err
        try:
            machine, notes, segments = _parse(handle, data, where)
        except BaseException:
            data.close()
            handle.close()
            raise
        return cls(
            where, handle, data, compressed=compressed, machine=machine, notes=notes, segments=segments
        )

    # -- notes --

    def note(self, owner: str, type: int) -> Note | None:
        """The first note with this owner and type, if any."""
        for note in self.notes:
            if note.owner == owner and note.type == type:
                return note
        return None

    # -- memory --

    def segment_data(self, segment: LoadSegment) -> bytes:
        """The stored bytes of one of this image's segments."""
        return self._data[segment.offset : segment.offset + segment.size]

    def read(self, address: int, size: int) -> bytes:
        """Exactly ``size`` bytes at ``address`` (across adjacent segments), or
        :class:`UnreadableMemoryError` with ``readable=`` the leading bytes the image holds."""
        data = self.read_upto(address, size)
        if len(data) != size:
            raise UnreadableMemoryError(
                f"the dump holds only {len(data)} of {size} bytes at {address:#x}",
                address=address,
                size=size,
                readable=len(data),
                path=str(self.path),
            )
        return data

    def read_upto(self, address: int, size: int) -> bytes:
        """The leading bytes of ``size`` bytes at ``address`` that the image holds (maybe ``b""``)."""
        if address < 0 or size <= 0:
            return b""
        pieces, data = self._pieces, self._data
        index = bisect.bisect_right(self._starts, address) - 1
        end = address + size
        if index >= 0:  # fast path: one piece holds it all
            piece = pieces[index]
            if end <= piece.end:
                begin = piece.offset + address - piece.start
                return data[begin : begin + size]
        parts: list[bytes] = []
        position = address
        while position < end and index >= 0 and index < len(pieces):
            piece = pieces[index]
            if not piece.start <= position < piece.end:
                break
            stop = min(end, piece.end)
            begin = piece.offset + position - piece.start
            parts.append(data[begin : begin + stop - position])
            position = stop
            index += 1
        return b"".join(parts)

    # -- lifetime --

    def close(self) -> None:
        self._data.close()
        self._handle.close()

    def __enter__(self) -> CoreImage:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"CoreImage({str(self.path)!r}, segments={len(self.segments)}, notes={len(self.notes)}, "
            f"compressed={self.compressed})"
        )


def _decompress(handle: IO[bytes], where: Path) -> IO[bytes]:
    """The decompressed image in an anonymous temporary file (``handle`` is closed)."""
    try:
        module = _zstd()
    except ImportError as err:
        handle.close()
        raise DumpFormatError(
            "the dump is zstd-compressed and reading it needs the backports.zstd package on Python < 3.14",
            path=str(where),
        ) from err
    out: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - returned to the caller
    try:
        with module.ZstdFile(handle, "rb") as source:
            while chunk := source.read(_ZSTD_CHUNK):
                out.write(chunk)
        out.flush()
    except (module.ZstdError, EOFError) as err:
        out.close()
        raise DumpFormatError(f"corrupt or truncated zstd data: {err}", path=str(where)) from err
    except BaseException:
        out.close()
        raise
    finally:
        handle.close()
    return out


def _parse(
    handle: IO[bytes], data: mmap.mmap, where: Path
) -> tuple[int, tuple[Note, ...], tuple[LoadSegment, ...]]:
    """Validate the image and return its machine, notes and loadable segments."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    size = len(data)
    context = {"path": str(where)}
    if data[:4] != ELF_MAGIC:
        raise DumpFormatError("not an ELF file (no ELF magic at offset 0)", **context)
    if size < _EHDR.size:
        raise DumpFormatError(
            f"truncated: the file has {size} bytes, the ELF header alone needs 64", **context
        )
    if data[4] != ELFCLASS64:
        raise DumpFormatError(f"not a 64-bit ELF file (EI_CLASS={data[4]})", **context)
    if data[5] != ELFDATA2LSB:
        raise DumpFormatError(f"not a little-endian ELF file (EI_DATA={data[5]})", **context)
    try:
        elf = ELFFile(handle)
        if elf["e_type"] != "ET_CORE":
            raise DumpFormatError(f"not a core file (e_type={elf['e_type']})", **context)
        if elf["e_phentsize"] != _PHDR.size:
            raise DumpFormatError(f"program header size {elf['e_phentsize']}, expected 56", **context)
        phoff = elf["e_phoff"]
        phnum = elf.num_segments()
        if phoff + phnum * _PHDR.size > size:
            raise DumpFormatError(
                f"truncated: {phnum} program headers at offset {phoff} end "
                f"{phoff + phnum * _PHDR.size - size} bytes past end of file",
                **context,
            )
        machine = int(_EHDR.unpack_from(data)[7])
        notes: list[Note] = []
        segments: list[LoadSegment] = []
        for number in range(phnum):
            header = elf.get_segment(number).header
            kind = header["p_type"]
            offset, filesz, vaddr = header["p_offset"], header["p_filesz"], header["p_vaddr"]
            if kind not in ("PT_LOAD", "PT_NOTE"):
                continue
            if offset + filesz > size:
                what = f"segment at {vaddr:#x}" if kind == "PT_LOAD" else f"note segment at offset {offset}"
                raise DumpFormatError(
                    f"truncated: {what} claims {offset + filesz - size} bytes past end of file", **context
                )
            if kind == "PT_NOTE":
                notes.extend(_parse_notes(data, offset, filesz, context))
            else:
                if vaddr + filesz > _ADDRESS_END:
                    raise DumpFormatError(
                        f"segment at {vaddr:#x} of {filesz} bytes runs past the 64-bit address space",
                        **context,
                    )
                segments.append(LoadSegment(address=vaddr, size=filesz, offset=offset))
    except DumpFormatError:
        raise
    except (
        ELFError,
        struct.error,
        ValueError,
        KeyError,
        IndexError,
        TypeError,
        AttributeError,
        OSError,
    ) as err:
        raise DumpFormatError(f"malformed ELF core: {err}", **context) from err
    except Exception as err:  # pyelftools and construct raise many kinds; none may escape as is
        raise DumpFormatError(f"malformed ELF core ({type(err).__name__}: {err})", **context) from err
    return machine, tuple(notes), tuple(segments)


def _parse_notes(data: mmap.mmap, offset: int, size: int, context: dict[str, Any]) -> list[Note]:
    notes: list[Note] = []
    position, end = offset, offset + size
    while position + _NHDR.size <= end:
        namesz, descsz, kind = _NHDR.unpack_from(data, position)
        name_at = position + _NHDR.size
        desc_at = name_at + namesz + (-namesz % 4)
        next_at = desc_at + descsz + (-descsz % 4)
        if desc_at + descsz > end:
            raise DumpFormatError(
                f"truncated: note at offset {position} claims {desc_at + descsz - end} bytes "
                "past the end of its segment",
                **context,
            )
        name = data[name_at : name_at + namesz].split(b"\0", 1)[0]
        notes.append(Note(name.decode(errors="replace"), kind, data[desc_at : desc_at + descsz]))
        position = next_at
    return notes

"""The bytes of a dump: a small ELF64 core image (``ET_CORE``), shared by its writer and its reader.

An image is an ELF header, one ``PT_NOTE`` program header, one ``PT_LOAD`` per stored segment
(``p_vaddr`` = the original address, ``p_filesz == p_memsz`` = the bytes stored, never more), the
notes, and the segment bytes. ``docs/dump-format.md`` lists every byte. This module builds the
headers and notes (:mod:`kmemdump.collector.corewriter` writes files with them) and checks and
takes apart an image's headers (:mod:`kmemdump.memory.core` reads files with it). Standard
library only.
"""

from __future__ import annotations

import mmap
import os
import struct

from kmemdump.errors import CollectorError
from kmemdump.errors import DumpFormatError
from kmemdump.errors import InvalidRegionError
from kmemdump.record import field
from kmemdump.record import frozen

TYPE_CHECKING = False  # typing is imported for mypy only: it costs the command line milliseconds
if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "ADDRESS_END",
    "EHDR_SIZE",
    "ELF_MAGIC",
    "EM_AARCH64",
    "EM_X86_64",
    "KMD_NOTE_FAULTS",
    "KMD_NOTE_META",
    "KMD_NOTE_MODULES",
    "KMD_NOTE_STACKS",
    "LEGACY_NOTE_TYPES",
    "NT_PRPSINFO",
    "NT_PRSTATUS",
    "NT_SIGINFO",
    "OWNER_CORE",
    "OWNER_KMEMDUMP",
    "OWNER_PYCOREINFO",
    "PHDR_SIZE",
    "PN_XNUM",
    "PYCOREINFO_NOTE",
    "LoadSegment",
    "Note",
    "PrStatus",
    "PsInfo",
    "Segment",
    "check_machine",
    "elf_header",
    "find_note",
    "host_machine",
    "parse_core",
    "parse_prpsinfo",
    "parse_prstatus",
    "program_headers",
    "prpsinfo_note",
    "prstatus_note",
    "siginfo_note",
    "table_size",
]

# --- numbers from the ELF specification and Linux's <elf.h> ----------------------------------------

ELF_MAGIC = b"\x7fELF"
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
NT_SIGINFO = 0x53494749  # "SIGI": the siginfo_t of the signal that ended the process
OWNER_CORE = "CORE"
OWNER_KMEMDUMP = "KMEMDUMP"
OWNER_PYCOREINFO = "PYCOREINFO"

# Our own notes. Readers of core files (BFD in gdb and binutils, elfutils, pyelftools) pick the
# meaning of a core note by its type number whatever its owner: a type 1 of 336 bytes becomes a
# phantom thread in gdb, a type 2 an FPU register set it warns about. So ours take numbers in a
# range none of them interprets: 0x4B4D ("KM") in the upper half, listed as unknown vendor notes.
KMD_NOTE_META = 0x4B4D0001
"""``KMEMDUMP``: the dump's metadata, JSON (:mod:`kmemdump.formats.dumpmeta`)."""
KMD_NOTE_STACKS = 0x4B4D0002
"""``KMEMDUMP``: the Python stacks taken by py-spy, JSON (:mod:`kmemdump.formats.stacks`)."""
KMD_NOTE_MODULES = 0x4B4D0003
"""``KMEMDUMP``: the mapped ELF files and their build-ids, JSON (:mod:`kmemdump.formats.corenotes`)."""
KMD_NOTE_FAULTS = 0x4B4D0004
"""``KMEMDUMP``: what faulthandler wrote (crashes, timeouts), JSON (:mod:`kmemdump.formats.faults`)."""
PYCOREINFO_NOTE = 0x4B4D0101
"""``PYCOREINFO``: the Python layout facts (:mod:`kmemdump.formats.pycoreinfo`)."""
LEGACY_NOTE_TYPES = {
    (OWNER_KMEMDUMP, KMD_NOTE_META): 1,
    (OWNER_KMEMDUMP, KMD_NOTE_STACKS): 2,
    (OWNER_PYCOREINFO, PYCOREINFO_NOTE): 1,
}
"""The type numbers the first development versions wrote (they collide with ``NT_PRSTATUS`` and
``NT_FPREGSET``); readers still accept them (see :func:`find_note`)."""

_EHDR = struct.Struct("<4sBBBBB7xHHIQQQIHHHHHH")  # Elf64_Ehdr, 64 bytes
_PHDR = struct.Struct("<IIQQQQQQ")  # Elf64_Phdr, 56 bytes
_SHDR = struct.Struct("<IIQQQQIIQQ")  # Elf64_Shdr, 64 bytes (only for PN_XNUM)
_NHDR = struct.Struct("<III")  # Elf64_Nhdr: namesz, descsz, type
# struct elf_prpsinfo (x86_64 and aarch64 alike): state, sname, zomb, nice, 4 pad, flag,
# uid, gid, pid, ppid, pgrp, sid, fname[16], psargs[80]
_PRPSINFO = struct.Struct("<bcbb4xQIIiiii16s80s")
# struct elf_prstatus: elf_siginfo (signo, code, errno), pr_cursig (2 + 2 pad), sigpend, sighold,
# pid, ppid, pgrp, sid, four struct timeval (utime, stime, cutime, cstime); then pr_reg, pr_fpvalid
_PRSTATUS_HEAD = struct.Struct("<iiih2xQQiiii8q")  # 112 bytes
# siginfo_t (x86_64 and aarch64 alike): si_signo, si_errno, si_code (errno before code, unlike
# elf_siginfo), 4 pad, then the union at 16; 128 bytes in all
_SIGINFO = struct.Struct("<iii4x")
_SIGINFO_SIZE = 128
_SIGINFO_UNION = 16
_FAULT_SIGNALS = frozenset({4, 7, 8, 11})  # SIGILL, SIGBUS, SIGFPE, SIGSEGV: the union holds si_addr
_PRSTATUS_REGISTERS = {EM_X86_64: 27, EM_AARCH64: 34}
_PRSTATUS_SIZE = {EM_X86_64: 336, EM_AARCH64: 392}  # 112 common + 27 or 34 registers + fpvalid + pad
_MACHINES = {"x86_64": EM_X86_64, "amd64": EM_X86_64, "aarch64": EM_AARCH64, "arm64": EM_AARCH64}
_U32 = 1 << 32
ADDRESS_END = 1 << 64
"""One past the last address of a 64-bit address space."""
EHDR_SIZE = _EHDR.size
PHDR_SIZE = _PHDR.size


def host_machine() -> int:
    """The ELF ``e_machine`` of this computer; :class:`CollectorError` where cores are unsupported."""
    name = os.uname().machine.lower()  # platform.machine(), without platform's regular expressions
    try:
        return _MACHINES[name]
    except KeyError:
        raise CollectorError(
            f"kmemdump writes core images for x86_64 and aarch64 only, not for {name or 'this machine'}"
        ) from None


def check_machine(machine: int | None) -> int:
    """``machine``, or this computer's when None; :class:`CollectorError` for an unsupported one."""
    if machine is None:
        return host_machine()
    if machine not in _PRSTATUS_SIZE:
        raise CollectorError(f"unsupported ELF machine {machine}: only x86_64 (62) and aarch64 (183)")
    return machine


# --- notes and segments ---------------------------------------------------------------------------


@frozen
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


@frozen
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
        if not 0 <= self.address < ADDRESS_END or self.address + size > ADDRESS_END:
            raise InvalidRegionError(
                f"segment at {self.address:#x} of {size} bytes does not fit in a 64-bit address space",
                address=self.address,
                size=size,
            )
        object.__setattr__(self, "size", size)


@frozen
class LoadSegment:
    """A ``PT_LOAD`` of a core: ``size`` bytes of memory from ``address``, stored at file ``offset``."""

    address: int
    size: int
    offset: int

    @property
    def end(self) -> int:
        return self.address + self.size


def prpsinfo_note(
    pid: int,
    fname: str,
    psargs: str,
    state: str = "R",
    *,
    ppid: int = 0,
    uid: int = 0,
    gid: int = 0,
    pgrp: int = 0,
    sid: int = 0,
    nice: int = 0,
    flag: int = 0,
) -> Note:
    """A ``CORE/NT_PRPSINFO`` note (``struct elf_prpsinfo``, 136 bytes): gdb prints ``psargs`` as
    "Core was generated by `...'". ``fname`` is cut to 15 bytes and ``psargs`` to 79, as the kernel
    does; ``state`` is the one-letter process state of ``/proc/PID/stat``, ``flag`` its task flags."""
    letter = (state or "R")[0]
    number = "RSDTZW".find(letter)
    desc = _PRPSINFO.pack(
        number if number >= 0 else 6,
        letter.encode("ascii", "replace")[:1],
        1 if letter == "Z" else 0,
        max(-128, min(127, nice)),
        flag & 0xFFFFFFFFFFFFFFFF,
        uid & 0xFFFFFFFF,
        gid & 0xFFFFFFFF,
        pid,
        ppid,
        pgrp,
        sid,
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


def prstatus_note(
    pid: int,
    *,
    machine: int | None = None,
    registers: Sequence[int] = (),
    cursig: int = 0,
    ppid: int = 0,
    pgrp: int = 0,
    sid: int = 0,
    sigpend: int = 0,
    sighold: int = 0,
    utime_us: int = 0,
    stime_us: int = 0,
) -> Note:
    """A ``CORE/NT_PRSTATUS`` note: one thread (``pid`` is its tid) and its general registers, the
    ``pr_reg`` words in the kernel's order (:data:`kmemdump.formats.corenotes.REGISTER_NAMES`; zeros
    when not given). 336 bytes on x86_64, 392 on aarch64. ``cursig`` is the signal that ended the
    process (0: none), written to ``pr_cursig`` and ``pr_info.si_signo`` of every thread's note as
    the kernel does: gdb takes the signal of the *last* PRSTATUS note it reads ("Program terminated
    with signal ...")."""
    if not 0 <= cursig < 1 << 15:
        raise DumpFormatError(f"signal number {cursig} does not fit pr_cursig")
    machine = check_machine(machine)
    count = _PRSTATUS_REGISTERS[machine]
    if len(registers) > count:
        raise DumpFormatError(f"{len(registers)} registers given, the machine has {count}")
    words = [w & 0xFFFFFFFFFFFFFFFF for w in registers] + [0] * (count - len(registers))
    times = (utime_us // 1_000_000, utime_us % 1_000_000, stime_us // 1_000_000, stime_us % 1_000_000)
    desc = bytearray(_PRSTATUS_SIZE[machine])
    _PRSTATUS_HEAD.pack_into(
        desc, 0, cursig, 0, 0, cursig, sigpend, sighold, pid, ppid, pgrp, sid, *times, 0, 0, 0, 0
    )
    struct.pack_into(f"<{count}Q", desc, _PRSTATUS_HEAD.size, *words)
    return Note(OWNER_CORE, NT_PRSTATUS, bytes(desc))


def siginfo_note(
    signo: int,
    code: int = 0,
    errno: int = 0,
    address: int = 0,
    *,
    sender_pid: int | None = None,
    sender_uid: int = 0,
) -> Note:
    """A ``CORE/NT_SIGINFO`` note: the 128-byte ``siginfo_t`` of the signal that ended the process.

    The union at offset 16 holds ``si_addr`` (``address``) for SIGSEGV, SIGBUS, SIGILL and SIGFPE,
    or ``si_pid``/``si_uid`` when ``sender_pid`` is given (a signal sent with ``kill``/``tgkill``).
    gdb shows it as ``$_siginfo``; eu-readelf and pystack print the fault address from it.
    """
    for name, value in (("signo", signo), ("code", code), ("errno", errno)):
        if not -(1 << 31) <= value < 1 << 31:
            raise DumpFormatError(f"siginfo {name} {value} does not fit 32 bits")
    if not 0 <= address < ADDRESS_END:
        raise DumpFormatError(f"siginfo address {address:#x} does not fit 64 bits")
    desc = bytearray(_SIGINFO_SIZE)
    _SIGINFO.pack_into(desc, 0, signo, errno, code)
    if signo in _FAULT_SIGNALS and sender_pid is None:
        struct.pack_into("<Q", desc, _SIGINFO_UNION, address)
    elif sender_pid is not None:
        struct.pack_into("<iI", desc, _SIGINFO_UNION, sender_pid, sender_uid & 0xFFFFFFFF)
    return Note(OWNER_CORE, NT_SIGINFO, bytes(desc))


@frozen
class PrStatus:
    """The decoded fields of an ``NT_PRSTATUS`` note."""

    pid: int
    cursig: int
    ppid: int
    pgrp: int
    sid: int
    registers: tuple[int, ...]


def parse_prstatus(desc: bytes, machine: int) -> PrStatus:
    """Decode an ``NT_PRSTATUS`` descriptor of ``machine`` (x86_64 or aarch64)."""
    size = _PRSTATUS_SIZE.get(machine)
    if size is None:
        raise DumpFormatError(f"NT_PRSTATUS of unsupported machine {machine}")
    if len(desc) < size:
        raise DumpFormatError(f"NT_PRSTATUS note of {len(desc)} bytes, expected {size}")
    _signo, _code, _errno, cursig, _pend, _hold, pid, ppid, pgrp, sid, *_ = _PRSTATUS_HEAD.unpack_from(desc)
    count = _PRSTATUS_REGISTERS[machine]
    registers = struct.unpack_from(f"<{count}Q", desc, _PRSTATUS_HEAD.size)
    return PrStatus(pid, cursig, ppid, pgrp, sid, registers)


@frozen
class PsInfo:
    """The decoded fields of an ``NT_PRPSINFO`` note."""

    pid: int
    ppid: int
    pgrp: int
    sid: int
    uid: int
    gid: int
    state: str
    fname: str
    psargs: str


def parse_prpsinfo(desc: bytes) -> PsInfo:
    """Decode an ``NT_PRPSINFO`` descriptor (x86_64/aarch64 layout)."""
    if len(desc) < _PRPSINFO.size:
        raise DumpFormatError(f"NT_PRPSINFO note of {len(desc)} bytes, expected {_PRPSINFO.size}")
    _state, sname, _zomb, _nice, _flag, uid, gid, pid, ppid, pgrp, sid, fname, psargs = _PRPSINFO.unpack_from(
        desc
    )
    return PsInfo(
        pid=pid,
        ppid=ppid,
        pgrp=pgrp,
        sid=sid,
        uid=uid,
        gid=gid,
        state=sname.decode("latin-1"),
        fname=fname.split(b"\0", 1)[0].decode(errors="replace"),
        psargs=psargs.split(b"\0", 1)[0].decode(errors="replace"),
    )


def find_note(notes: Sequence[Note], owner: str, type: int) -> Note | None:
    """The first note with this owner and type; for our own notes, else one with the type number
    that dumps of the first development versions used (:data:`LEGACY_NOTE_TYPES`)."""
    legacy = LEGACY_NOTE_TYPES.get((owner, type))
    fallback: Note | None = None
    for note in notes:
        if note.owner != owner:
            continue
        if note.type == type:
            return note
        if fallback is None and note.type == legacy:
            fallback = note
    return fallback


# --- headers, for the writer ---------------------------------------------------------------------


def elf_header(machine: int, phoff: int, phnum: int, shoff: int) -> bytes:
    """The 64-byte ELF header of a core with ``phnum`` program headers at ``phoff``.

    With ``phnum >= PN_XNUM`` the count goes in section header 0 at ``shoff`` (see
    :func:`program_headers`).
    """
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


def program_headers(notes_offset: int, notes_size: int, loads: Sequence[tuple[int, int, int]]) -> bytes:
    """The program header table: ``PT_NOTE``, then a ``PT_LOAD`` per ``(address, offset, size)`` in
    ascending address order (whatever the order of the bytes in the file), then, when the count needs
    extended numbering, section header 0 holding it.

    The order matters: elfutils (``eu-unstrip``, ``eu-stack``, pystack) takes a core's segments for
    sorted, as the kernel writes them, and finds no module in a core whose segments are not."""
    phnum = 1 + len(loads)
    table = [_PHDR.pack(PT_NOTE, 0, notes_offset, 0, 0, notes_size, 0, 4)]
    table.extend(
        _PHDR.pack(PT_LOAD, PF_R | PF_W, offset, address, 0, size, size, 1)
        for address, offset, size in sorted(loads, key=lambda load: load[0])
    )
    if phnum >= PN_XNUM:  # section header 0 carries the real program header count in sh_info
        table.append(_SHDR.pack(0, 0, 0, 0, 0, 0, 0, phnum, 0, 0))
    return b"".join(table)


def table_size(loads: int) -> int:
    """Bytes of :func:`program_headers` for ``loads`` segments."""
    phnum = 1 + loads
    return phnum * _PHDR.size + (_SHDR.size if phnum >= PN_XNUM else 0)


# --- the reader's side ---------------------------------------------------------------------------


def parse_core(
    data: bytes | bytearray | mmap.mmap, where: str
) -> tuple[int, tuple[Note, ...], tuple[LoadSegment, ...]]:
    """Check a whole image's headers and return its machine, notes and loadable segments.

    ``data`` is the image (a buffer: bytes or an mmap). Every defect becomes
    :class:`DumpFormatError` naming ``where``: a reader never trusts an offset or a count it has not
    checked against the file's size.
    """
    view = data  # slices and struct.unpack_from work on bytes and mmap alike, with no view to release
    size = len(view)
    context = {"path": where}
    if view[:4] != ELF_MAGIC:
        raise DumpFormatError("not an ELF file (no ELF magic at offset 0)", **context)
    if size < _EHDR.size:
        raise DumpFormatError(
            f"truncated: the file has {size} bytes, the ELF header alone needs 64", **context
        )
    if view[4] != ELFCLASS64:
        raise DumpFormatError(f"not a 64-bit ELF file (EI_CLASS={view[4]})", **context)
    if view[5] != ELFDATA2LSB:
        raise DumpFormatError(f"not a little-endian ELF file (EI_DATA={view[5]})", **context)
    (_m, _c, _d, _v, _abi, _abiv, e_type, machine, _ver, _entry, phoff, shoff, _flags, _ehsize, phentsize,
     phnum, shentsize, shnum, _shstrndx) = _EHDR.unpack_from(view)  # fmt: skip
    if e_type != ET_CORE:
        raise DumpFormatError(f"not a core file (e_type={e_type})", **context)
    if phentsize != _PHDR.size:
        raise DumpFormatError(f"program header size {phentsize}, expected 56", **context)
    if phnum == PN_XNUM:
        if shnum < 1 or shentsize != _SHDR.size or shoff + _SHDR.size > size:
            raise DumpFormatError(
                "extended program header numbering without a readable section header 0", **context
            )
        phnum = _SHDR.unpack_from(view, shoff)[7]
    if phoff + phnum * _PHDR.size > size:
        raise DumpFormatError(
            f"truncated: {phnum} program headers at offset {phoff} end "
            f"{phoff + phnum * _PHDR.size - size} bytes past end of file",
            **context,
        )
    notes: list[Note] = []
    segments: list[LoadSegment] = []
    for number in range(phnum):
        kind, _pflags, offset, vaddr, _paddr, filesz, _memsz, _align = _PHDR.unpack_from(
            view, phoff + number * _PHDR.size
        )
        if kind not in (PT_LOAD, PT_NOTE):
            continue
        if offset + filesz > size:
            what = f"segment at {vaddr:#x}" if kind == PT_LOAD else f"note segment at offset {offset}"
            raise DumpFormatError(
                f"truncated: {what} claims {offset + filesz - size} bytes past end of file", **context
            )
        if kind == PT_NOTE:
            notes.extend(_parse_notes(view, offset, filesz, context))
        else:
            if vaddr + filesz > ADDRESS_END:
                raise DumpFormatError(
                    f"segment at {vaddr:#x} of {filesz} bytes runs past the 64-bit address space", **context
                )
            segments.append(LoadSegment(address=vaddr, size=filesz, offset=offset))
    return machine, tuple(notes), tuple(segments)


def _parse_notes(
    view: bytes | bytearray | mmap.mmap, offset: int, size: int, context: dict[str, str]
) -> list[Note]:
    notes: list[Note] = []
    position, end = offset, offset + size
    while position + _NHDR.size <= end:
        namesz, descsz, kind = _NHDR.unpack_from(view, position)
        name_at = position + _NHDR.size
        desc_at = name_at + namesz + (-namesz % 4)
        next_at = desc_at + descsz + (-descsz % 4)
        if desc_at + descsz > end:
            raise DumpFormatError(
                f"truncated: note at offset {position} claims {desc_at + descsz - end} bytes "
                "past the end of its segment",
                **context,
            )
        name = bytes(view[name_at : name_at + namesz]).split(b"\0", 1)[0]
        notes.append(Note(name.decode(errors="replace"), kind, bytes(view[desc_at : desc_at + descsz])))
        position = next_at
    return notes

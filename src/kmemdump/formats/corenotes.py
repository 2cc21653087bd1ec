"""The notes that give a core its process's shape: registers, auxiliary vector, mapped files, modules.

Debuggers need more than memory to make sense of a core: each thread's registers
(``CORE/NT_PRSTATUS``, built by :func:`kmemdump.formats.elf.prstatus_note` from the register words
laid out here), the auxiliary vector (``CORE/NT_AUXV``: where the executable's program headers
are, its entry point, the vDSO), the files mapped and where (``CORE/NT_FILE``), all as the Linux
kernel writes them. Our own ``KMEMDUMP`` modules note adds the GNU build-id of every mapped ELF
file, so that a reader can check that the binaries it loads are the ones the process ran.
``docs/dump-format.md`` gives every byte. Standard library only.
"""

from __future__ import annotations

import struct

from kmemdump.errors import DumpFormatError
from kmemdump.formats.elf import EM_AARCH64
from kmemdump.formats.elf import EM_X86_64
from kmemdump.formats.elf import KMD_NOTE_MODULES
from kmemdump.formats.elf import OWNER_CORE
from kmemdump.formats.elf import OWNER_KMEMDUMP
from kmemdump.formats.elf import Note
from kmemdump.formats.jsonwrite import dumps
from kmemdump.record import frozen

TYPE_CHECKING = False  # typing and json (the reader's) are not loaded to write a dump
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

__all__ = [
    "AT_BASE",
    "AT_EXECFN",
    "AT_NULL",
    "AT_PHDR",
    "AT_PHNUM",
    "AT_SYSINFO_EHDR",
    "MAX_FILE_NOTE",
    "NT_AUXV",
    "NT_FILE",
    "REGISTER_NAMES",
    "SYSCALL_REGISTERS",
    "FileMapping",
    "Module",
    "auxv_note",
    "decode_modules",
    "encode_modules",
    "file_note",
    "modules_note",
    "parse_auxv",
    "parse_file_note",
    "pc_and_sp",
    "registers_from",
]

NT_AUXV = 6
NT_FILE = 0x46494C45  # "FILE"
AT_NULL = 0
AT_PHDR = 3
AT_PHNUM = 5
AT_BASE = 7
AT_SYSINFO_EHDR = 33
AT_EXECFN = 31
MAX_FILE_NOTE = 4 << 20
"""The kernel leaves ``NT_FILE`` out when it would be larger than this; so do we."""

REGISTER_NAMES: dict[int, tuple[str, ...]] = {
    # struct user_regs_struct (arch/x86/include/asm/user_64.h): the order of elf_gregset_t
    EM_X86_64: (
        *("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx"),
        *("rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base"),
        *("ds", "es", "fs", "gs"),
    ),
    # struct user_pt_regs (arch/arm64/include/uapi/asm/ptrace.h)
    EM_AARCH64: (*(f"x{n}" for n in range(31)), "sp", "pc", "pstate"),
}
"""The general registers of ``pr_reg`` in a core's ``NT_PRSTATUS``, per ``e_machine``."""
_PC_SP = {EM_X86_64: ("rip", "rsp"), EM_AARCH64: ("pc", "sp")}
SYSCALL_REGISTERS = {
    EM_X86_64: ("orig_rax", "rdi", "rsi", "rdx", "r10", "r8", "r9"),
    EM_AARCH64: ("x8", "x0", "x1", "x2", "x3", "x4", "x5"),
}
"""The registers holding a system call's number and six arguments, per ``e_machine``."""


def registers_from(machine: int, values: dict[str, int]) -> tuple[int, ...]:
    """The ``pr_reg`` words of ``machine`` with the named ``values`` set and the others zero."""
    names = REGISTER_NAMES[machine]
    unknown = set(values) - set(names)
    if unknown:
        raise ValueError(f"no such register: {', '.join(sorted(unknown))}")
    return tuple(values.get(name, 0) & 0xFFFFFFFFFFFFFFFF for name in names)


def pc_and_sp(machine: int, words: Sequence[int]) -> tuple[int, int]:
    """The program counter and stack pointer among ``pr_reg`` words."""
    names = REGISTER_NAMES[machine]
    pc, sp = _PC_SP[machine]
    return words[names.index(pc)], words[names.index(sp)]


# --- NT_AUXV ---------------------------------------------------------------------------------------


def auxv_note(raw: bytes) -> Note:
    """``CORE/NT_AUXV``: the bytes of ``/proc/PID/auxv`` as they are (pairs of 8-byte words)."""
    return Note(OWNER_CORE, NT_AUXV, bytes(raw[: len(raw) // 16 * 16]))


def parse_auxv(desc: bytes) -> dict[int, int]:
    """``a_type -> a_val`` of an auxiliary vector, up to ``AT_NULL``."""
    out: dict[int, int] = {}
    for kind, value in struct.iter_unpack("<QQ", desc[: len(desc) // 16 * 16]):
        if kind == AT_NULL:
            break
        out.setdefault(kind, value)
    return out


# --- NT_FILE ---------------------------------------------------------------------------------------


@frozen
class FileMapping:
    """One file-backed mapping: ``[start, end)`` maps ``path`` from byte ``offset`` on."""

    start: int
    end: int
    offset: int
    path: str


def file_note(mappings: Sequence[FileMapping], page_size: int) -> Note | None:
    """``CORE/NT_FILE`` as the kernel writes it, or None when it would exceed :data:`MAX_FILE_NOTE`.

    ``count, page_size``, then ``count`` triples ``start, end, offset / page_size``, then the
    ``count`` NUL-terminated paths, in the order given (address order).
    """
    head = struct.pack("<QQ", len(mappings), page_size)
    triples = b"".join(struct.pack("<QQQ", m.start, m.end, m.offset // page_size) for m in mappings)
    names = b"".join(m.path.encode("utf-8", "surrogateescape").replace(b"\0", b"") + b"\0" for m in mappings)
    desc = head + triples + names
    if len(desc) > MAX_FILE_NOTE:
        return None
    return Note(OWNER_CORE, NT_FILE, desc)


def parse_file_note(desc: bytes) -> tuple[FileMapping, ...]:
    """The mappings of an ``NT_FILE`` descriptor; :class:`DumpFormatError` if it is malformed."""
    if len(desc) < 16:
        raise DumpFormatError(f"NT_FILE note of {len(desc)} bytes is too short")
    count, page_size = struct.unpack_from("<QQ", desc)
    names_at = 16 + 24 * count
    if names_at > len(desc) or not page_size:
        raise DumpFormatError(f"NT_FILE note claims {count} mappings it does not hold")
    names = desc[names_at:].split(b"\0")
    if len(names) < count:
        raise DumpFormatError(f"NT_FILE note holds fewer than {count} paths")
    out = []
    for index in range(count):
        start, end, page = struct.unpack_from("<QQQ", desc, 16 + 24 * index)
        out.append(FileMapping(start, end, page * page_size, names[index].decode("utf-8", "surrogateescape")))
    return tuple(out)


# --- the KMEMDUMP modules note --------------------------------------------------------------------

MODULES_FORMAT = "kmemdump-modules"
_MODULES_VERSION = 1


@frozen
class Module:
    """An ELF file mapped by the process: where its image starts, and its build-id."""

    path: str
    base: int
    """The address of its ELF header (the mapping of file offset 0)."""
    end: int
    """One past its last mapping."""
    build_id: str | None
    """The GNU build-id in hex, read from the mapped image; None when it has none."""
    role: str = ""
    """``"exe"`` for the executable, ``"libpython"`` for the interpreter's shared library, else ``""``."""


def modules_note(modules: Sequence[Module]) -> Note:
    """``KMEMDUMP`` modules note: JSON, see ``docs/dump-format.md``."""
    return Note(OWNER_KMEMDUMP, KMD_NOTE_MODULES, encode_modules(modules))


def encode_modules(modules: Sequence[Module]) -> bytes:
    body = {
        "format": MODULES_FORMAT,
        "version": _MODULES_VERSION,
        "modules": [
            {"path": m.path, "base": m.base, "end": m.end, "build_id": m.build_id, "role": m.role}
            for m in modules
        ],
    }
    return dumps(body).encode()


def decode_modules(data: bytes) -> tuple[Module, ...]:
    """The modules of a modules note; :class:`DumpFormatError` when it is not a valid one."""
    from kmemdump.formats import jsonscan

    try:
        body = jsonscan.loads(data.rstrip(b"\0").decode("utf-8"))
    except ValueError as err:  # UnicodeDecodeError, json.JSONDecodeError
        raise DumpFormatError(f"modules note is not valid JSON: {err}") from err
    if not isinstance(body, dict) or body.get("format") != MODULES_FORMAT:
        raise DumpFormatError("modules note has an unknown format")
    if body.get("version") != _MODULES_VERSION:
        raise DumpFormatError("modules note version is not supported", version=body.get("version"))
    raw = body.get("modules")
    if not isinstance(raw, list):
        raise DumpFormatError("modules note has no module list")
    return tuple(_module(item, index) for index, item in enumerate(raw))


def _module(item: Any, index: int) -> Module:
    if not isinstance(item, dict):
        raise DumpFormatError("module record is not an object", index=index)
    path, base, end = item.get("path"), item.get("base"), item.get("end")
    build_id, role = item.get("build_id"), item.get("role", "")
    ints_ok = all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (base, end))
    if not isinstance(path, str) or not ints_ok or not isinstance(role, str):
        raise DumpFormatError("module record has a missing or mistyped field", index=index)
    if not isinstance(base, int) or not isinstance(end, int):
        raise DumpFormatError("module record has a missing or mistyped field", index=index)
    if build_id is not None and (
        not isinstance(build_id, str) or not build_id or any(c not in "0123456789abcdef" for c in build_id)
    ):
        raise DumpFormatError("module record has an invalid build-id", index=index)
    return Module(path, base, end, build_id, role)

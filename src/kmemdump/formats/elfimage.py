"""The ELF files a process maps, as they lie in its memory: headers, build-id, dynamic symbols.

The collector reads a target's executable and libraries where the dynamic linker put them, not
from disk: the target may live in another mount namespace, and its files may have been replaced
since it started. Everything here parses bytes handed in by the caller (a ``read(address, size)``
function for what lies further on) and trusts none of them: every count and offset is bounded,
and a malformed image gives ``None`` or :class:`ElfImageError`, never a huge read. Standard
library only; 64-bit little-endian images (x86_64, aarch64).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from kmemdump.record import frozen

__all__ = [
    "PT_DYNAMIC",
    "PT_LOAD",
    "PT_NOTE",
    "ElfImageError",
    "ImageHeader",
    "ProgramHeader",
    "build_id_from_notes",
    "dynamic_entries",
    "find_dynamic_symbol",
    "gnu_hash",
    "parse_image_header",
]

PT_LOAD = 1
PT_DYNAMIC = 2
PT_NOTE = 4
PT_PHDR = 6
NT_GNU_BUILD_ID = 3
DT_NULL = 0
DT_STRTAB = 5
DT_SYMTAB = 6
DT_STRSZ = 10
DT_SYMENT = 11
DT_DEBUG = 21
DT_GNU_HASH = 0x6FFFFEF5

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_SYM = struct.Struct("<IBBHQQ")  # Elf64_Sym: st_name, st_info, st_other, st_shndx, st_value, st_size
_MAX_PHNUM = 256
_MAX_BUILD_ID = 64
_MAX_DYNAMIC = 512  # entries read from a PT_DYNAMIC
_MAX_BUCKETS = 1 << 20
_MAX_CHAIN = 4096

Read = Callable[[int, int], bytes]
"""``read(address, size)``: the bytes of the target there, possibly fewer (a short read)."""


class ElfImageError(ValueError):
    """The bytes are not a sound 64-bit little-endian ELF image."""


@frozen
class ProgramHeader:
    type: int
    flags: int
    offset: int
    vaddr: int
    filesz: int
    memsz: int


@frozen
class ImageHeader:
    """An ELF header and its program headers, as mapped at ``base`` (the file's offset 0)."""

    base: int
    e_type: int
    machine: int
    phoff: int
    program_headers: tuple[ProgramHeader, ...]

    @property
    def header_end(self) -> int:
        """Bytes from ``base`` that hold the ELF header and the program headers."""
        return max(_EHDR.size, self.phoff + _PHDR.size * len(self.program_headers))

    @property
    def bias(self) -> int:
        """What to add to a ``p_vaddr`` to get its address in the process (the load bias)."""
        loads = [ph.vaddr - ph.offset for ph in self.program_headers if ph.type == PT_LOAD]
        return self.base - min(loads) if loads else self.base

    def notes(self) -> list[tuple[int, int]]:
        """``(address, size)`` of every ``PT_NOTE`` in the process."""
        bias = self.bias
        return [(bias + ph.vaddr, ph.filesz) for ph in self.program_headers if ph.type == PT_NOTE]

    def dynamic(self) -> tuple[int, int] | None:
        """``(address, size)`` of the ``PT_DYNAMIC`` in the process, if the image has one."""
        for ph in self.program_headers:
            if ph.type == PT_DYNAMIC:
                return self.bias + ph.vaddr, ph.memsz
        return None


def parse_image_header(base: int, data: bytes) -> ImageHeader:
    """The header of the ELF image whose first bytes (at least its program headers) are ``data``."""
    if len(data) < _EHDR.size or data[:4] != b"\x7fELF":
        raise ElfImageError("no ELF magic")
    ident, e_type, machine, _version, _entry, phoff, _shoff, _flags, _ehsize, phentsize, phnum, *_ = (
        _EHDR.unpack_from(data)
    )
    if ident[4] != 2 or ident[5] != 1:
        raise ElfImageError("not a 64-bit little-endian ELF image")
    if phentsize != _PHDR.size or not 0 < phnum <= _MAX_PHNUM:
        raise ElfImageError(f"unexpected program headers ({phnum} of {phentsize} bytes)")
    if phoff + phnum * _PHDR.size > len(data):
        raise ElfImageError("the program headers lie beyond the bytes given")
    headers = []
    for index in range(phnum):
        p_type, flags, offset, vaddr, _paddr, filesz, memsz, _align = _PHDR.unpack_from(
            data, phoff + index * _PHDR.size
        )
        headers.append(ProgramHeader(p_type, flags, offset, vaddr, filesz, memsz))
    return ImageHeader(base, e_type, machine, phoff, tuple(headers))


def build_id_from_notes(data: bytes) -> str | None:
    """The GNU build-id (owner ``GNU``, type 3) of an ELF note area, in hex."""
    position = 0
    while position + 12 <= len(data):
        namesz, descsz, kind = struct.unpack_from("<III", data, position)
        name_at = position + 12
        desc_at = name_at + ((namesz + 3) & ~3)
        if desc_at + descsz > len(data):
            return None
        if kind == NT_GNU_BUILD_ID and data[name_at : name_at + namesz].rstrip(b"\0") == b"GNU":
            if not 0 < descsz <= _MAX_BUILD_ID:
                return None
            return data[desc_at : desc_at + descsz].hex()
        position = desc_at + ((descsz + 3) & ~3)
    return None


def dynamic_entries(data: bytes) -> dict[int, int]:
    """The ``d_tag -> d_val`` pairs of a dynamic section, up to ``DT_NULL`` (the first of each tag)."""
    out: dict[int, int] = {}
    for index in range(min(len(data) // 16, _MAX_DYNAMIC)):
        tag, value = struct.unpack_from("<qQ", data, 16 * index)
        if tag == DT_NULL:
            break
        out.setdefault(tag, value)
    return out


def gnu_hash(name: bytes) -> int:
    """The GNU symbol hash (``dl_new_hash``)."""
    value = 5381
    for byte in name:
        value = (value * 33 + byte) & 0xFFFFFFFF
    return value


def find_dynamic_symbol(read: Read, image: ImageHeader, dynamic: dict[int, int], name: str) -> int | None:
    """The address in the process of the defined dynamic symbol ``name``, by the image's GNU hash table.

    ``dynamic`` is the image's dynamic section (:func:`dynamic_entries`) as found in memory, where
    the dynamic linker may have relocated the pointers already (glibc does on x86_64) or not.
    """
    bias = image.bias

    def pointer(tag: int) -> int | None:
        value = dynamic.get(tag)
        if value is None:
            return None
        return value if value >= image.base else value + bias

    table, symtab, strtab = pointer(DT_GNU_HASH), pointer(DT_SYMTAB), pointer(DT_STRTAB)
    strsz = dynamic.get(DT_STRSZ, 0)
    if table is None or symtab is None or strtab is None or dynamic.get(DT_SYMENT, _SYM.size) != _SYM.size:
        return None
    head = read(table, 16)
    if len(head) < 16:
        return None
    nbuckets, symoffset, bloom_size, _shift = struct.unpack("<IIII", head)
    if not 0 < nbuckets <= _MAX_BUCKETS or bloom_size > _MAX_BUCKETS:
        return None
    wanted = name.encode()
    hashed = gnu_hash(wanted)
    buckets_at = table + 16 + 8 * bloom_size
    raw = read(buckets_at + 4 * (hashed % nbuckets), 4)
    if len(raw) < 4:
        return None
    index = struct.unpack("<I", raw)[0]
    if index < symoffset:
        return None
    chains_at = buckets_at + 4 * nbuckets
    for _ in range(_MAX_CHAIN):
        raw = read(chains_at + 4 * (index - symoffset), 4)
        if len(raw) < 4:
            return None
        chain = struct.unpack("<I", raw)[0]
        if (chain | 1) == (hashed | 1):
            symbol = read(symtab + _SYM.size * index, _SYM.size)
            if len(symbol) < _SYM.size:
                return None
            st_name, _info, _other, shndx, value, _size = _SYM.unpack(symbol)
            address: int = value + bias
            if st_name + len(wanted) < strsz or not strsz:
                text = read(strtab + st_name, len(wanted) + 1)
                if text == wanted + b"\0" and shndx != 0:
                    return address
        if chain & 1:
            return None
        index += 1
    return None

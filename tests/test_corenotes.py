"""The process-shape notes and the ELF image reader, byte for byte, and their readers' refusals."""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kmemdump.collector.coreshape import parse_maps
from kmemdump.collector.registers import parse_syscall_file
from kmemdump.errors import DumpFormatError
from kmemdump.formats.corenotes import REGISTER_NAMES
from kmemdump.formats.corenotes import FileMapping
from kmemdump.formats.corenotes import Module
from kmemdump.formats.corenotes import auxv_note
from kmemdump.formats.corenotes import decode_modules
from kmemdump.formats.corenotes import encode_modules
from kmemdump.formats.corenotes import file_note
from kmemdump.formats.corenotes import parse_auxv
from kmemdump.formats.corenotes import parse_file_note
from kmemdump.formats.corenotes import pc_and_sp
from kmemdump.formats.corenotes import registers_from
from kmemdump.formats.elf import EM_AARCH64
from kmemdump.formats.elf import EM_X86_64
from kmemdump.formats.elf import parse_prstatus
from kmemdump.formats.elf import prstatus_note
from kmemdump.formats.elfimage import ElfImageError
from kmemdump.formats.elfimage import dynamic_entries
from kmemdump.formats.elfimage import find_dynamic_symbol
from kmemdump.formats.elfimage import parse_image_header
from kmemdump.memory.process import ProcessMemory
from kmemdump.procinfo import read_proc


def test_file_note_is_the_kernels_layout() -> None:
    maps = [FileMapping(0x400000, 0x401000, 0, "/usr/bin/python3"), FileMapping(0x7F00, 0x9F00, 0x3000, "/a")]
    note = file_note(maps, 4096)
    assert note is not None and (note.owner, note.type) == ("CORE", 0x46494C45)
    assert note.desc[:16] == struct.pack("<QQ", 2, 4096)
    assert note.desc[16:64] == struct.pack("<6Q", 0x400000, 0x401000, 0, 0x7F00, 0x9F00, 3)
    assert note.desc[64:] == b"/usr/bin/python3\0/a\0"
    assert parse_file_note(note.desc) == tuple(maps)
    assert file_note([FileMapping(0, 1, 0, "/x" * 3_000_000)], 4096) is None  # over 4 MiB: left out
    with pytest.raises(DumpFormatError):
        parse_file_note(struct.pack("<QQ", 1_000_000, 4096))


def test_auxv_note_keeps_the_bytes_and_parses_to_at_null() -> None:
    raw = struct.pack("<6Q", 3, 0x1234, 31, 0x7FFF0000, 0, 0) + b"junk"
    note = auxv_note(raw)
    assert (note.type, note.desc) == (6, raw[:48])
    assert parse_auxv(note.desc) == {3: 0x1234, 31: 0x7FFF0000}


@pytest.mark.parametrize(("machine", "size"), [(EM_X86_64, 336), (EM_AARCH64, 392)])
def test_prstatus_carries_registers_tid_and_signal(machine: int, size: int) -> None:
    names = REGISTER_NAMES[machine]
    pc, sp = ("rip", "rsp") if machine == EM_X86_64 else ("pc", "sp")
    words = registers_from(machine, {pc: 0x7F0012345678, sp: 0x7FFD00001000})
    note = prstatus_note(4242, machine=machine, registers=words, cursig=11, ppid=1, pgrp=7, sid=7)
    assert len(note.desc) == size
    status = parse_prstatus(note.desc, machine)
    assert (status.pid, status.cursig, status.ppid, status.pgrp, status.sid) == (4242, 11, 1, 7, 7)
    assert struct.unpack_from("<i", note.desc, 0)[0] == 11  # pr_info.si_signo as well
    assert pc_and_sp(machine, status.registers) == (0x7F0012345678, 0x7FFD00001000)
    assert status.registers[names.index(pc)] == 0x7F0012345678
    with pytest.raises(ValueError, match="no such register"):
        registers_from(machine, {"eip": 1})


def test_syscall_file_gives_pc_sp_and_the_call() -> None:
    blocked = parse_syscall_file("202 0x55d0 0x189 0x0 0x0 0x0 0xffffffff 0x7ffc10 0x7f9b16\n", EM_X86_64)
    assert blocked is not None
    regs = dict(zip(REGISTER_NAMES[EM_X86_64], blocked, strict=True))
    assert (regs["orig_rax"], regs["rdi"], regs["rsi"], regs["r9"]) == (202, 0x55D0, 0x189, 0xFFFFFFFF)
    assert (regs["rsp"], regs["rip"]) == (0x7FFC10, 0x7F9B16)
    outside = parse_syscall_file("-1 0x7ffc10 0x7f9b16", EM_AARCH64)
    assert outside is not None and pc_and_sp(EM_AARCH64, outside) == (0x7F9B16, 0x7FFC10)
    assert parse_syscall_file("running", EM_X86_64) is None
    assert parse_syscall_file("1 2 3", EM_X86_64) is None


def test_modules_note_round_trip_and_refusals() -> None:
    modules = (Module("/usr/bin/python3", 0x400000, 0x900000, "ab12", "exe"), Module("/l.so", 1, 2, None))
    assert decode_modules(encode_modules(modules)) == modules
    bad = [
        b"[]",
        b'{"format": "kmemdump-modules", "version": 2, "modules": []}',
        b'{"format": "kmemdump-modules", "version": 1, "modules": [{"path": 1, "base": 0, "end": 0}]}',
        b'{"format": "kmemdump-modules", "version": 1, "modules": [{"path": "x", "base": -1, "end": 0}]}',
        b'{"format": "kmemdump-modules", "version": 1, "modules": [{"path": "x", "base": 0, "end": 0,'
        b' "build_id": "XYZ"}]}',
    ]
    for blob in bad:
        with pytest.raises(DumpFormatError):
            decode_modules(blob)


@given(st.binary(max_size=600))
def test_hostile_modules_and_file_notes_raise_only_format_errors(blob: bytes) -> None:
    for reader in (decode_modules, parse_file_note):
        with contextlib.suppress(DumpFormatError):  # and nothing else
            reader(blob)


@given(st.binary(max_size=400))
def test_hostile_elf_headers_raise_only_elf_errors(blob: bytes) -> None:
    with contextlib.suppress(ElfImageError):  # and nothing else
        parse_image_header(0x1000, b"\x7fELF\x02\x01" + blob)


def test_this_process_is_read_like_any_target() -> None:
    """Our own interpreter, read through /proc like a target: its modules' headers, build-ids and a
    dynamic symbol found by the GNU hash table, against what ctypes says of the same symbol."""
    maps = parse_maps(read_proc(os.getpid(), "maps"))
    module = next(m for m in maps if m.offset == 0 and "libc.so" in m.path)
    with ProcessMemory(os.getpid()) as mem:
        image = parse_image_header(module.start, mem.read(module.start, 4096))
        dynamic_at, dynamic_size = image.dynamic()  # type: ignore[misc]
        entries = dynamic_entries(mem.read(dynamic_at, dynamic_size))
        found = find_dynamic_symbol(mem.read_upto, image, entries, "getpid")
        missing = find_dynamic_symbol(mem.read_upto, image, entries, "no_such_symbol_anywhere")
    libc = ctypes.CDLL(module.path)
    assert found == ctypes.cast(libc.getpid, ctypes.c_void_p).value
    assert missing is None

"""The ELF core image: our writer against our reader, pyelftools, readelf and gdb; damaged files."""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.segments import NoteSegment
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from budget import examples
from kmemdump import files
from kmemdump.collector.corewriter import write_core
from kmemdump.errors import CollectorError
from kmemdump.errors import DumpFormatError
from kmemdump.errors import InvalidRegionError
from kmemdump.errors import UnreadableMemoryError
from kmemdump.formats import elf
from kmemdump.formats import zstd
from kmemdump.formats.elf import EM_AARCH64
from kmemdump.formats.elf import EM_X86_64
from kmemdump.formats.elf import KMD_NOTE_META
from kmemdump.formats.elf import KMD_NOTE_STACKS
from kmemdump.formats.elf import NT_PRPSINFO
from kmemdump.formats.elf import NT_PRSTATUS
from kmemdump.formats.elf import NT_SIGINFO
from kmemdump.formats.elf import OWNER_CORE
from kmemdump.formats.elf import OWNER_KMEMDUMP
from kmemdump.formats.elf import OWNER_PYCOREINFO
from kmemdump.formats.elf import PYCOREINFO_NOTE
from kmemdump.formats.elf import Note
from kmemdump.formats.elf import Segment
from kmemdump.formats.elf import host_machine
from kmemdump.formats.elf import parse_prpsinfo
from kmemdump.formats.elf import prpsinfo_note
from kmemdump.formats.elf import prstatus_note
from kmemdump.formats.elf import siginfo_note
from kmemdump.memory import MemorySource
from kmemdump.memory.core import CoreImage

ZSTD = zstd.module()


def require_tool(name: str) -> str:
    """The tool's path; skips the test (saying which tool) when it is not installed."""
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed: it serves as an independent oracle here")
    return found


def make_segments(seed: int = 7) -> list[Segment]:
    rng = random.Random(seed)
    base = 0x7F12_3456_0000
    return [
        Segment(base, b"kmemdump says hello\0" + rng.randbytes(45)),  # a C string first
        Segment(base + 65, bytearray(rng.randbytes(100))),  # adjacent to the first
        Segment(base + 0x10000, memoryview(rng.randbytes(4096))),
        Segment(base + 0x20001, rng.randbytes(3)),  # odd address and size
        Segment(0x1000, b""),  # empty: declared, holds nothing
    ]


def by_address(segments: list[Segment]) -> list[Segment]:
    """Segments in the order of a core's program headers: by address, ties in the order given."""
    return sorted(segments, key=lambda segment: segment.address)


def make_notes() -> list[Note]:
    return [
        prpsinfo_note(4321, "python3.11", "python3 -m service --port 8080", "S", ppid=1, uid=1000, gid=100),
        prstatus_note(4321),
        Note(OWNER_KMEMDUMP, KMD_NOTE_META, json.dumps({"reason": "hang", "pid": 4321}).encode()),
        Note(OWNER_KMEMDUMP, KMD_NOTE_STACKS, b"[]"),  # 2 bytes: padded to 4 in the file
        Note(OWNER_PYCOREINFO, PYCOREINFO_NOTE, bytes(range(256)) * 3),
    ]


@pytest.fixture
def written(tmp_path: Path) -> tuple[Path, list[Segment], list[Note]]:
    segments, notes = make_segments(), make_notes()
    return write_core(tmp_path / "app.core", segments, notes), segments, notes


# --- round trip ----------------------------------------------------------------------------------


def test_round_trip_notes_segments_and_bytes(written: tuple[Path, list[Segment], list[Note]]) -> None:
    path, segments, notes = written
    with CoreImage.open(path) as image:
        assert isinstance(image, MemorySource)
        assert image.path == str(path)
        assert image.compressed is False
        assert image.machine == elf.host_machine()
        assert image.notes == tuple(notes)
        assert image.note(OWNER_PYCOREINFO, PYCOREINFO_NOTE) == notes[4]
        assert image.note(OWNER_KMEMDUMP, 99) is None
        in_order = by_address(segments)  # the program headers list segments by address, as the kernel does
        assert [(s.address, s.size) for s in image.segments] == [(s.address, s.size) for s in in_order]
        for stored, segment in zip(image.segments, in_order, strict=True):
            assert image.segment_data(stored) == bytes(segment.data)
            if segment.size:
                assert image.read(segment.address, segment.size) == bytes(segment.data)
        info = parse_prpsinfo(image.note(OWNER_CORE, NT_PRPSINFO).desc)  # type: ignore[union-attr]
        assert (info.pid, info.ppid, info.uid, info.gid, info.state) == (4321, 1, 1000, 100, "S")
        assert (info.fname, info.psargs) == ("python3.11", "python3 -m service --port 8080")


def test_layout_is_packed_and_declares_only_stored_bytes(
    written: tuple[Path, list[Segment], list[Note]],
) -> None:
    path, segments, notes = written
    raw = path.read_bytes()
    notes_size = sum(len(n.encode()) for n in notes)
    header_size = 64 + 56 * (1 + len(segments))
    assert len(raw) == header_size + notes_size + sum(s.size for s in segments)
    phdrs = [struct.unpack_from("<IIQQQQQQ", raw, 64 + 56 * i) for i in range(1 + len(segments))]
    assert phdrs[0][:3] == (4, 0, header_size)  # PT_NOTE first, notes right after the headers
    for (p_type, flags, offset, vaddr, paddr, filesz, memsz, align), segment in zip(
        phdrs[1:], by_address(segments), strict=True
    ):
        assert (p_type, flags, vaddr, paddr, filesz, memsz, align) == (
            1,
            6,
            segment.address,
            0,
            segment.size,
            segment.size,
            1,
        )
        assert raw[offset : offset + filesz] == bytes(segment.data)


def test_pyelftools_reads_what_we_wrote(written: tuple[Path, list[Segment], list[Note]]) -> None:
    path, segments, notes = written
    with path.open("rb") as handle:
        elf = ELFFile(handle)
        assert elf["e_type"] == "ET_CORE"
        assert elf["e_machine"] == {EM_X86_64: "EM_X86_64", EM_AARCH64: "EM_AARCH64"}[host_machine()]
        assert elf.num_sections() == 0
        found = list(elf.iter_segments())
        assert found[0]["p_type"] == "PT_NOTE"
        loads = found[1:]
        assert [s["p_type"] for s in loads] == ["PT_LOAD"] * len(segments)
        for load, segment in zip(loads, by_address(segments), strict=True):
            assert load["p_vaddr"] == segment.address
            assert load["p_filesz"] == load["p_memsz"] == segment.size
            assert load.data() == bytes(segment.data)
        assert isinstance(found[0], NoteSegment)
        seen = list(found[0].iter_notes())
        assert [(n["n_name"], n["n_descdata"]) for n in seen] == [(n.owner, n.desc) for n in notes]
        psinfo = seen[0]["n_desc"]  # pyelftools decodes struct elf_prpsinfo with its own layout
        assert psinfo["pr_pid"] == 4321
        assert psinfo["pr_ppid"] == 1
        assert psinfo["pr_uid"] == 1000
        assert psinfo["pr_sname"] == b"S"
        assert psinfo["pr_fname"].rstrip(b"\0") == b"python3.11"
        assert psinfo["pr_psargs"].rstrip(b"\0") == b"python3 -m service --port 8080"


def test_readelf_lists_one_load_per_segment_and_the_notes(
    written: tuple[Path, list[Segment], list[Note]],
) -> None:
    path, segments, notes = written
    out = subprocess.run(
        [require_tool("readelf"), "-lnW", str(path)], capture_output=True, text=True, check=True
    )
    assert "CORE (Core file)" in out.stdout
    assert out.stderr == ""
    loads = re.findall(
        r"^\s*LOAD\s+0x[0-9a-f]+\s+0x([0-9a-f]+)\s+0x[0-9a-f]+\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)",
        out.stdout,
        re.M,
    )
    assert [(int(v, 16), int(f, 16), int(m, 16)) for v, f, m in loads] == [
        (s.address, s.size, s.size) for s in by_address(segments)
    ]
    owners = re.findall(r"^\s+(CORE|KMEMDUMP|PYCOREINFO)\s+0x([0-9a-f]+)", out.stdout, re.M)
    assert [(o, int(size, 16)) for o, size in owners] == [(n.owner, len(n.desc)) for n in notes]


def test_gdb_prints_a_string_at_its_address(written: tuple[Path, list[Segment], list[Note]]) -> None:
    path, segments, _ = written
    address = segments[0].address
    missing = segments[2].address + segments[2].size + 0x100
    out = subprocess.run(
        [
            require_tool("gdb"),
            "-nx",
            "-batch",
            "-c",
            str(path),
            "-ex",
            f"x/s {address:#x}",
            "-ex",
            f"x/gx {missing:#x}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Core was generated by `python3 -m service --port 8080'." in out.stdout
    assert f'{address:#x}:\t"kmemdump says hello"' in out.stdout
    assert f"Cannot access memory at address {missing:#x}" in out.stderr
    assert "Couldn't find general-purpose registers" not in out.stderr


# --- reads -----------------------------------------------------------------------------------------


def test_read_spans_adjacent_segments_and_reports_the_readable_prefix(
    written: tuple[Path, list[Segment], list[Note]],
) -> None:
    path, segments, _ = written
    first, second = segments[0], segments[1]
    joined = bytes(first.data) + bytes(second.data)
    with CoreImage.open(path) as image:
        assert image.read(first.address + 10, 150) == joined[10:160]
        assert image.read(first.address, len(joined)) == joined
        with pytest.raises(UnreadableMemoryError) as caught:
            image.read(first.address + 5, len(joined))  # runs 5 bytes past the second segment
        assert caught.value.context["readable"] == len(joined) - 5
        assert image.read_upto(first.address + 5, len(joined)) == joined[5:]
        with pytest.raises(UnreadableMemoryError) as caught:
            image.read(first.address - 1, 4)  # starts in a gap
        assert caught.value.context["readable"] == 0
        with pytest.raises(UnreadableMemoryError) as caught:
            image.read(segments[3].address + 1, 8)
        assert caught.value.context["readable"] == 2
        assert image.read(segments[3].address, 0) == b""
        assert image.read_upto(-5, 10) == b""
        assert image.read_upto(2**64 - 1, 10) == b""


def test_overlapping_segments_are_readable(tmp_path: Path) -> None:
    data = bytes(range(200))
    segments = [Segment(1000, data[:120]), Segment(1100, data[100:]), Segment(1050, data[50:60])]
    with CoreImage.open(write_core(tmp_path / "c", segments, [])) as image:
        assert image.read(1000, 200) == data
        assert image.read(1055, 100) == data[55:155]


def test_streamed_writes_survive_short_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_writev = os.writev
    calls = []

    def stingy_writev(fd: int, buffers: list[memoryview]) -> int:
        calls.append(len(buffers))
        return real_writev(fd, [buffers[0][:777]])  # at most 777 bytes of the first buffer

    monkeypatch.setattr(os, "writev", stingy_writev)
    rng = random.Random(3)
    segments = [Segment(0x10000 * i, rng.randbytes(rng.randrange(1, 3000))) for i in range(1, 40)]
    path = write_core(tmp_path / "c", segments, make_notes())
    assert len(calls) > 40
    with CoreImage.open(path) as image:
        for segment in segments:
            assert image.read(segment.address, segment.size) == segment.data


def test_many_segments_use_extended_program_header_numbering(tmp_path: Path) -> None:
    count = 0xFFFF + 10  # more program headers than e_phnum can count
    segments = [Segment(0x100000 + 16 * i, i.to_bytes(4, "little")) for i in range(count)]
    path = write_core(tmp_path / "many", segments, [prstatus_note(1)])
    with path.open("rb") as handle:
        elf = ELFFile(handle)
        assert elf["e_phnum"] == 0xFFFF
        assert elf.num_segments() == count + 1
    with CoreImage.open(path) as image:
        assert len(image.segments) == count
        last = segments[-1]
        assert image.read(last.address, 4) == last.data


# --- the CORE notes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("machine", "size"), [(EM_X86_64, 336), (EM_AARCH64, 392)])
def test_prstatus_layout(machine: int, size: int) -> None:
    note = prstatus_note(98765, machine=machine)
    assert (note.owner, note.type, len(note.desc)) == (OWNER_CORE, NT_PRSTATUS, size)
    assert struct.unpack_from("<i", note.desc, 32)[0] == 98765
    assert note.desc[:32] == bytes(32)  # siginfo, cursig, sigpend, sighold
    assert note.desc[36:] == bytes(size - 36)  # ppid ... registers, fpvalid


def test_prstatus_carries_the_fatal_signal() -> None:
    note = prstatus_note(42, cursig=11)
    si_signo, si_code, si_errno, cursig = struct.unpack_from("<iiih", note.desc)
    assert (si_signo, si_code, si_errno, cursig) == (11, 0, 0, 11)
    assert struct.unpack_from("<i", note.desc, 32)[0] == 42
    with pytest.raises(DumpFormatError):
        prstatus_note(1, cursig=1 << 16)


def test_siginfo_layout_fault_and_sender() -> None:
    fault = siginfo_note(11, 1, 0, 0xDEADBEEF)
    assert (fault.owner, fault.type, len(fault.desc)) == (OWNER_CORE, NT_SIGINFO, 128)
    assert struct.unpack_from("<iii", fault.desc) == (11, 0, 1)  # signo, errno, code
    assert struct.unpack_from("<Q", fault.desc, 16)[0] == 0xDEADBEEF
    assert fault.desc[24:] == bytes(104)
    sent = siginfo_note(15, 0, sender_pid=1234, sender_uid=1000)
    assert struct.unpack_from("<iiiiiI", sent.desc) == (15, 0, 0, 0, 1234, 1000)
    assert siginfo_note(9).desc == struct.pack("<i", 9) + bytes(124)  # SIGKILL: nothing more is known
    with pytest.raises(DumpFormatError):
        siginfo_note(11, address=-1)


def test_gdb_and_eu_readelf_name_the_signal(tmp_path: Path) -> None:
    """gdb's "Program terminated with signal" comes from pr_cursig; $_siginfo from NT_SIGINFO."""
    notes = [
        prpsinfo_note(77, "python3", "python3 crash.py"),
        prstatus_note(77, cursig=11),
        siginfo_note(11, 1, 0, 0xDEADBEEF),
    ]
    path = write_core(tmp_path / "segv.core", [Segment(0x7F00_0000_0000, b"x" * 16)], notes)
    out = subprocess.run(
        [
            require_tool("gdb"),
            "-nx",
            "-batch",
            "-c",
            str(path),
            "-ex",
            "p $_siginfo._sifields._sigfault.si_addr",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Program terminated with signal SIGSEGV, Segmentation fault." in out.stdout
    assert "0xdeadbeef" in out.stdout
    eu = subprocess.run(
        [require_tool("eu-readelf"), "-n", str(path)], capture_output=True, text=True, check=True
    )
    assert "si_signo: 11" in eu.stdout
    assert "fault address: 0xdeadbeef" in eu.stdout


def test_prpsinfo_cuts_names_like_the_kernel_without_splitting_characters() -> None:
    note = prpsinfo_note(1, "a-very-long-process-name", "é" * 60)
    assert len(note.desc) == 136
    info = parse_prpsinfo(note.desc)
    assert info.fname == "a-very-long-pro"  # 15 bytes
    assert info.psargs == "é" * 39  # 78 of the 79 bytes: the 40th 'é' would be split
    assert parse_prpsinfo(prpsinfo_note(1, "x", "y", "Z").desc).state == "Z"
    with pytest.raises(DumpFormatError):
        parse_prpsinfo(b"short")


def test_aarch64_core_on_any_host(tmp_path: Path) -> None:
    path = write_core(
        tmp_path / "arm",
        [Segment(0x4000, b"arm")],
        [prstatus_note(7, machine=EM_AARCH64)],
        machine=EM_AARCH64,
    )
    with path.open("rb") as handle:
        assert ELFFile(handle)["e_machine"] == "EM_AARCH64"
    with CoreImage.open(path) as image:
        assert image.machine == EM_AARCH64


def test_unsupported_machine_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.uname()
    riscv = os.uname_result((real.sysname, real.nodename, real.release, real.version, "riscv64"))
    monkeypatch.setattr(os, "uname", lambda: riscv)
    with pytest.raises(CollectorError, match="x86_64 and aarch64 only, not for riscv64"):
        write_core(tmp_path / "c", [], [])
    with pytest.raises(CollectorError):
        prstatus_note(1)
    with pytest.raises(CollectorError, match="unsupported ELF machine 8"):
        write_core(tmp_path / "c", [], [], machine=8)
    assert list(tmp_path.iterdir()) == []


def test_bad_segments_and_notes_are_typed_errors() -> None:
    with pytest.raises(InvalidRegionError):
        Segment(-1, b"x")
    with pytest.raises(InvalidRegionError):
        Segment(2**64 - 1, b"ab")
    with pytest.raises(InvalidRegionError):
        Segment(0, "text")  # type: ignore[arg-type]
    with pytest.raises(InvalidRegionError):
        Segment(0, memoryview(bytes(8))[::2])
    assert Segment(2**64 - 2, b"ab").size == 2
    with pytest.raises(DumpFormatError):
        Note("CO\0RE", 1, b"")
    with pytest.raises(DumpFormatError):
        Note("CORE", 2**32, b"")


# --- compression -------------------------------------------------------------------------------------


def test_zstd_round_trip_holds_the_same_image(tmp_path: Path) -> None:
    segments, notes = make_segments(), make_notes()
    plain = write_core(tmp_path / "plain.core", segments, notes)
    packed = write_core(tmp_path / "packed.core", segments, notes, compress=True, level=5)
    assert packed.name == "packed.core.zst"
    raw = packed.read_bytes()
    assert raw[:4] == b"\x28\xb5\x2f\xfd"
    assert ZSTD.decompress(raw) == plain.read_bytes()
    assert ZSTD.get_frame_info(raw).decompressed_size == plain.stat().st_size
    with CoreImage.open(packed) as image:
        assert image.compressed is True
        assert image.notes == tuple(notes)
        assert image.read(segments[2].address, segments[2].size) == bytes(segments[2].data)
    # found by its magic whatever the name; a plain ELF named .zst is read as it is
    renamed = packed.rename(tmp_path / "no-suffix")
    with CoreImage.open(renamed) as image:
        assert image.compressed is True
    misnamed = plain.rename(tmp_path / "plain.zst")
    with CoreImage.open(misnamed) as image:
        assert image.compressed is False
    assert write_core(tmp_path / "given.zst", segments, notes, compress=True).name == "given.zst"


def test_corrupt_zstd_is_a_format_error(tmp_path: Path) -> None:
    packed = write_core(tmp_path / "c", make_segments(), make_notes(), compress=True).read_bytes()
    (tmp_path / "cut").write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DumpFormatError, match="zstd"):
        CoreImage.open(tmp_path / "cut")
    (tmp_path / "junk").write_bytes(packed[:4] + bytes(60))
    with pytest.raises(DumpFormatError, match="zstd"):
        CoreImage.open(tmp_path / "junk")


def test_invalid_level_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CollectorError, match="invalid zstd level"):
        write_core(tmp_path / "c", [], [], compress=True, level=1000)
    assert list(tmp_path.iterdir()) == []


# --- atomic, careful writes --------------------------------------------------------------------------


def test_file_mode_is_0640_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        path = write_core(tmp_path / "c", [], [])
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "c"
    target.write_bytes(b"precious")
    with pytest.raises(CollectorError, match="refusing to overwrite") as caught:
        write_core(target, make_segments(), [])
    assert caught.value.context["errno"] == errno.EEXIST
    assert target.read_bytes() == b"precious"
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")  # a dangling link counts as there
    with pytest.raises(CollectorError, match="refusing to overwrite"):
        write_core(tmp_path / "link", [], [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "link"]


@pytest.mark.parametrize("use_renameat2", [True, False])
def test_final_step_never_replaces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, use_renameat2: bool
) -> None:
    if not use_renameat2:
        monkeypatch.setattr(files, "_renameat2", None)  # the link() + unlink() way
    source, target = tmp_path / "new", tmp_path / "old"
    source.write_bytes(b"new")
    target.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        files.rename_noreplace(source, target)
    assert (source.read_bytes(), target.read_bytes()) == (b"new", b"old")
    target.unlink()
    files.rename_noreplace(source, target)
    assert target.read_bytes() == b"new"
    assert not source.exists()


def test_a_file_appearing_meanwhile_is_not_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "c"
    real_fsync = os.fsync

    def fsync_then_race(fd: int) -> None:
        real_fsync(fd)
        if not target.exists():
            target.write_bytes(b"winner")  # another writer gets there between our check and rename

    monkeypatch.setattr(os, "fsync", fsync_then_race)
    with pytest.raises(CollectorError, match="refusing to overwrite"):
        write_core(target, make_segments(), make_notes())
    assert [p.name for p in tmp_path.iterdir()] == ["c"]
    assert target.read_bytes() == b"winner"


def test_full_disk_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_writev = os.writev
    calls = 0

    def writev_until_full(fd: int, buffers: list[memoryview]) -> int:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_writev(fd, [buffers[0][:100]])

    monkeypatch.setattr(os, "writev", writev_until_full)
    with pytest.raises(CollectorError, match=r"no space left .* free space") as caught:
        write_core(tmp_path / "c", make_segments(), make_notes())
    assert caught.value.context["errno"] == errno.ENOSPC
    assert caught.value.context["path"] == str(tmp_path / "c")
    assert list(tmp_path.iterdir()) == []


def test_file_size_limit_from_the_kernel_leaves_nothing_behind(tmp_path: Path) -> None:
    # A real kernel error without root or mounts: RLIMIT_FSIZE makes write() fail with EFBIG.
    script = f"""
import json, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (10000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
from kmemdump.errors import CollectorError
from kmemdump.formats.elf import Segment
from kmemdump.collector.corewriter import write_core
try:
    write_core({str(tmp_path / "c")!r}, [Segment(0x1000, bytes(50000))], [])
except CollectorError as err:
    print(json.dumps({{"errno": err.errno, "message": str(err)}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    result = json.loads(out.stdout)
    assert result["errno"] == errno.EFBIG
    assert "ulimit -f" in result["message"]
    assert list(tmp_path.iterdir()) == []


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(CollectorError, match="does not exist: create it") as caught:
        write_core(tmp_path / "absent" / "c", [], [])
    assert caught.value.context["errno"] == errno.ENOENT
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(CollectorError, match="file is not a directory: choose a directory") as caught:
        write_core(tmp_path / "file" / "c", [], [])
    assert caught.value.context["errno"] == errno.ENOTDIR
    # a directory that exists but takes no new files is not said to be missing
    with pytest.raises(CollectorError, match="no file can be created in /proc/self") as caught:
        write_core(Path("/proc/self/c"), [], [])
    assert caught.value.context["errno"] == errno.ENOENT


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a tiny tmpfs")
def test_real_enospc_on_a_tiny_tmpfs(tmp_path: Path) -> None:
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {done.stderr.decode().strip()}")
    try:
        with pytest.raises(CollectorError, match="no space left") as caught:
            write_core(mount / "c", [Segment(0x1000, bytes(1 << 20))], [])
        assert caught.value.context["errno"] == errno.ENOSPC
        assert list(mount.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mount)], check=True)


# --- damaged and foreign files -----------------------------------------------------------------------


def test_not_a_core(tmp_path: Path) -> None:
    cases = {
        "empty": (b"", "empty"),
        "text": (b"hello, world\n" * 10, "not an ELF file"),
        "short": (b"\x7fELF\x02\x01", "truncated"),
        "elf32": (b"\x7fELF\x01\x01\x01" + bytes(57), "not a 64-bit ELF"),
        "bigendian": (b"\x7fELF\x02\x02\x01" + bytes(57), "not a little-endian"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DumpFormatError, match=message):
            CoreImage.open(tmp_path / name)
    with pytest.raises(DumpFormatError, match="cannot open"):
        CoreImage.open(tmp_path / "absent")
    with pytest.raises(DumpFormatError, match="cannot"):
        CoreImage.open(tmp_path)
    with pytest.raises(DumpFormatError, match="not a core file"):
        CoreImage.open(sys.executable)


def test_truncated_segment_names_its_address(tmp_path: Path) -> None:
    segments = [s for s in make_segments() if s.size]
    path = write_core(tmp_path / "whole", segments, make_notes())
    raw = path.read_bytes()
    cut = path.with_name("cut")
    cut.write_bytes(raw[:-100])  # the last segment holds 3 bytes, the one before 4096
    address = segments[2].address
    with pytest.raises(
        DumpFormatError, match=f"truncated: segment at {address:#x} claims 97 bytes past end of file"
    ):
        CoreImage.open(cut)


def _exercise(path: Path) -> None:
    """Everything a reader might do with an image; only our two errors may come out."""
    try:
        with CoreImage.open(path) as image:
            for note in image.notes:
                assert isinstance(note.desc, bytes)
            image.note(OWNER_CORE, NT_PRPSINFO)
            for segment in image.segments[:50]:
                image.segment_data(segment)
                try:
                    image.read(segment.address, min(segment.size, 1 << 16))
                    image.read(segment.address + 1, 70)
                except UnreadableMemoryError:
                    pass
    except DumpFormatError:
        pass


def _valid_image(compress: bool) -> bytes:
    with tempfile.TemporaryDirectory() as directory:
        return write_core(
            Path(directory) / "valid", make_segments(), make_notes(), compress=compress
        ).read_bytes()


_VALID_BYTES = _valid_image(compress=False)
_VALID_ZST = _valid_image(compress=True)


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cut=st.integers(min_value=0, max_value=len(_VALID_BYTES)),
    flips=st.lists(st.tuples(st.integers(0, len(_VALID_BYTES) - 1), st.integers(1, 255)), max_size=8),
    words=st.lists(
        st.tuples(st.integers(0, 64 + 56 * 6 + 40), st.sampled_from([4, 8]), st.integers(0, 2**64 - 1)),
        max_size=3,
    ),
)
def test_damaged_plain_cores_give_only_typed_errors(
    cut: int, flips: list[tuple[int, int]], words: list[tuple[int, int, int]]
) -> None:
    raw = bytearray(_VALID_BYTES)
    for position, mask in flips:
        raw[position] ^= mask
    for position, width, value in words:  # header fields set to hostile values
        raw[position : position + width] = (value % (1 << (8 * width))).to_bytes(width, "little")
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "damaged"
        path.write_bytes(bytes(raw))
        _exercise(path)
        path.write_bytes(bytes(raw[:cut]))
        _exercise(path)


@settings(max_examples=examples(100), deadline=None)
@given(
    cut=st.integers(min_value=0, max_value=len(_VALID_ZST)),
    flips=st.lists(st.tuples(st.integers(0, len(_VALID_ZST) - 1), st.integers(1, 255)), max_size=4),
)
def test_damaged_compressed_cores_give_only_typed_errors(cut: int, flips: list[tuple[int, int]]) -> None:
    raw = bytearray(_VALID_ZST[:cut])
    for position, mask in flips:
        if position < len(raw):
            raw[position] ^= mask
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "damaged.zst"
        path.write_bytes(bytes(raw))
        _exercise(path)

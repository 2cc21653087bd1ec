"""The streamed core writer: bytes straight from the copy into the file, headers written last."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from conftest import require_tool
from kmemdump.collector.corewriter import CoreWriter
from kmemdump.errors import CollectorError
from kmemdump.formats.elf import KMD_NOTE_META
from kmemdump.formats.elf import Note
from kmemdump.memory.core import CoreImage

MiB = 1 << 20
# sizes chosen to start, cross and end exactly on the 4 MiB staging boundary
SEGMENTS = [
    (0x10000, 10),
    (0x7F0000000000, 5 * MiB + 3),
    (0x20000, 3),
    (0x7F1000000000, 4 * MiB - 16 - 64 + 3),
]


def _payload(size: int, seed: int) -> bytes:
    block = bytes((seed + i) % 251 for i in range(4096))
    return (block * (size // 4096 + 1))[:size]


def _stream(path: Path, *, chunk: int = 1_000_003, durable: bool = True) -> CoreWriter:
    writer = CoreWriter(path, durable=durable)
    for seed, (address, size) in enumerate(SEGMENTS):
        data = memoryview(_payload(size, seed))
        writer.begin(address)
        for start in range(0, size, chunk):
            writer.write(data[start : start + chunk])
        assert writer.end() == size
    assert writer.begin(0x30000) is None and writer.end() == 0  # an empty segment stores nothing
    return writer


@pytest.mark.parametrize("where", ["disk", "disk, page cache", "tmpfs"])
def test_streamed_core_reads_back_exactly(where: str, tmp_path: Path) -> None:
    # disk: O_DIRECT (durable); disk, page cache (the default): 1 MiB a pwrite; tmpfs: no O_DIRECT
    base = tmp_path if where.startswith("disk") else Path("/dev/shm")
    if where == "tmpfs" and not base.is_dir():
        pytest.skip("no /dev/shm on this machine")
    path = base / f"streamed-{os.getpid()}-{where.replace(', ', '-').replace(' ', '-')}.core"
    try:
        writer = _stream(path, durable=where != "disk, page cache")
        assert not writer.direct or where != "disk, page cache"
        final = Path(writer.finish([Note("KMEMDUMP", KMD_NOTE_META, b'{"hello": 1}')]))
        if where == "tmpfs":
            assert not writer.direct  # tmpfs has no O_DIRECT: ordinary writes
        with CoreImage.open(final) as core:
            # written in copy order, listed in address order (as the kernel lists a core's segments)
            assert [(s.address, s.size) for s in core.segments] == sorted(SEGMENTS)
            for seed, (address, size) in enumerate(SEGMENTS):
                assert core.read(address, size) == _payload(size, seed)
            note = core.note("KMEMDUMP", KMD_NOTE_META)
            assert note is not None and note.desc == b'{"hello": 1}'
        assert final.stat().st_size == 64 + sum(s for _, s in SEGMENTS) + len(
            Note("KMEMDUMP", KMD_NOTE_META, b'{"hello": 1}').encode()
        ) + 56 * (1 + len(SEGMENTS))
        with open(final, "rb") as f:  # an independent reader
            elf = ELFFile(f)
            loads = [
                (s["p_vaddr"], s["p_filesz"], s["p_memsz"])
                for s in elf.iter_segments()
                if s["p_type"] == "PT_LOAD"
            ]
        assert loads == [(a, s, s) for a, s in sorted(SEGMENTS)]
        assert [p.name for p in final.parent.iterdir() if p.name.startswith(f".{final.name}")] == []
    finally:
        path.unlink(missing_ok=True)


def test_streamed_core_opens_in_readelf_and_gdb(tmp_path: Path) -> None:
    writer = CoreWriter(tmp_path / "c.core")
    writer.add(0x5550000, b"streamed banner\0")
    final = writer.finish([])
    out = subprocess.run(
        [require_tool("readelf"), "-lW", str(final)], capture_output=True, text=True, check=True
    ).stdout
    assert out.count("LOAD ") == 1 and "NOTE" in out
    gdb = subprocess.run(
        [require_tool("gdb"), "-nx", "-batch", "-c", str(final), "-ex", "x/s 0x5550000"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
    assert "streamed banner" in gdb


def test_an_exception_midway_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "c.core"
    with pytest.raises(RuntimeError), CoreWriter(target) as writer:
        writer.begin(0x1000)
        writer.write(bytes(5 * MiB))
        raise RuntimeError("copy failed")
    assert list(tmp_path.iterdir()) == []


def test_refuses_an_existing_final_path(tmp_path: Path) -> None:
    target = tmp_path / "c.core"
    target.write_bytes(b"keep me")
    with pytest.raises(CollectorError, match="refusing to overwrite"):
        CoreWriter(target)
    assert target.read_bytes() == b"keep me"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a tiny tmpfs")
def test_full_disk_while_streaming_leaves_nothing_behind(tmp_path: Path) -> None:
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {done.stderr.decode().strip()}")
    try:
        with (
            pytest.raises(CollectorError, match="no space left") as caught,
            CoreWriter(mount / "c") as writer,
        ):
            writer.add(0x1000, bytes(8 * MiB))
            writer.finish([])
        assert caught.value.context["errno"] == 28
        assert list(mount.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mount)], check=True)

"""Streamed compressed dumps: the header's own frame, a skippable frame, then the image; any zstd reader
decompresses them in order into the same ELF image, and each frame's checksum catches damage."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from kmemdump.collector.corewriter import CoreWriter
from kmemdump.collector.imagefile import HEAD_ROOM
from kmemdump.collector.imagefile import STAGE_SIZE
from kmemdump.errors import DumpFormatError
from kmemdump.formats import zstd
from kmemdump.formats.elf import prstatus_note
from kmemdump.memory.core import CoreImage

pytest.importorskip("backports.zstd" if zstd.MISSING.endswith("3.14)") else "compression.zstd")


def _write(tmp_path: Path, name: str, *, compress: bool, segments: list[tuple[int, bytes]]) -> Path:
    with CoreWriter(tmp_path / name, compress=compress, durable=False) as writer:
        for address, data in segments:
            writer.add(address, data)
        return Path(writer.finish([prstatus_note(7)]))


def _segments() -> list[tuple[int, bytes]]:
    # several staging buffers' worth: random, then compressible records, then a small tail
    records = b"".join(i.to_bytes(8, "little") + b"name-%08x" % i + bytes(40) for i in range(100_000))
    return [(0x10000, os.urandom(STAGE_SIZE + 123)), (0x7F0000000000, records), (0x20, b"tail")]


def test_the_stream_is_a_header_frame_a_skippable_frame_and_the_image(tmp_path: Path) -> None:
    segments = _segments()
    packed = _write(tmp_path, "a.core", compress=True, segments=segments)
    plain = _write(tmp_path, "b.core", compress=False, segments=segments)
    raw = packed.read_bytes()
    # THEN the file starts with a frame holding the 64-byte header alone (no size declared) ...
    declared, checksum = zstd.frame_header(raw[:18])
    assert declared is None and checksum
    head = zstd.module().ZstdDecompressor()
    assert head.decompress(raw[:HEAD_ROOM]) == plain.read_bytes()[:64]
    # ... then a skippable frame filling the room, then the rest of the image
    end_of_head = HEAD_ROOM - len(head.unused_data)
    magic, size = struct.unpack_from("<II", raw, end_of_head)
    assert magic == 0x184D2A50 and end_of_head + 8 + size == HEAD_ROOM
    assert raw[HEAD_ROOM : HEAD_ROOM + 4] == zstd.MAGIC
    # the whole file decompresses into exactly the plain image, which every ELF reader opens
    assert zstd.module().decompress(raw) == plain.read_bytes()
    with CoreImage.open(packed) as image:
        assert image.compressed
        for address, data in segments:
            assert image.read(address, len(data)) == data
    with plain.open("rb") as handle:
        assert len([s for s in ELFFile(handle).iter_segments() if s["p_type"] == "PT_LOAD"]) == 3
    assert len(raw) < plain.stat().st_size  # the records compress


def test_the_zstd_command_reads_a_streamed_dump(tmp_path: Path) -> None:
    tool = shutil.which("zstd")
    if tool is None:
        pytest.skip("the zstd command is not installed (an independent reader of the stream)")
    segments = _segments()
    packed = _write(tmp_path, "a.core", compress=True, segments=segments)
    plain = _write(tmp_path, "b.core", compress=False, segments=segments)
    out = subprocess.run([tool, "-d", "-c", str(packed)], capture_output=True, check=True, timeout=60).stdout
    assert out == plain.read_bytes()


def test_damage_anywhere_in_the_stream_is_refused(tmp_path: Path) -> None:
    packed = _write(tmp_path, "a.core", compress=True, segments=_segments())
    raw = packed.read_bytes()
    # in the header's frame, in the image's frame, in its checksum at the very end
    for where in (12, HEAD_ROOM + 4096, len(raw) - 2):
        damaged = tmp_path / f"d{where}.core.zst"
        data = bytearray(raw)
        data[where] ^= 0x55
        damaged.write_bytes(bytes(data))
        with pytest.raises(DumpFormatError):
            CoreImage.open(damaged).close()

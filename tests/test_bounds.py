"""Bounded everything: retention (collector/retention.py, `kmemdump prune`), decompressed size and zstd
checksums on read, absurd metadata fields, and the seqlock fallback of an on-demand dump."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers_child import spawn_child
from kmemdump.cli.main import main
from kmemdump.collector.corewriter import CoreWriter
from kmemdump.collector.corewriter import write_core
from kmemdump.collector.dump import DumpOptions
from kmemdump.collector.dump import dump_target
from kmemdump.collector.retention import DumpFile
from kmemdump.collector.retention import Limits
from kmemdump.collector.retention import Policy
from kmemdump.collector.retention import parse_dump_name
from kmemdump.collector.retention import plan
from kmemdump.errors import DumpFormatError
from kmemdump.formats import zstd
from kmemdump.formats.elf import KMD_NOTE_META
from kmemdump.formats.elf import OWNER_KMEMDUMP
from kmemdump.formats.elf import Note
from kmemdump.formats.elf import Segment
from kmemdump.formats.elf import prstatus_note
from kmemdump.inspect.dumpfile import Dump
from kmemdump.memory.core import CoreImage
from kmemdump.procinfo import process_start_time

# --- retention ---------------------------------------------------------------------------------------


def _file(name: int, uid: int, size: int = 100, age: int = 0) -> DumpFile:
    return DumpFile(f"kmemdump-{name}-1-hang-20260101T000000.000000Z.core", uid, size, 10**12 + name - age)


def test_each_user_over_their_limits_loses_their_oldest_dumps() -> None:
    files = [_file(i, 1000 + i % 2) for i in range(10)]  # 5 each, user 1000 has the even ones
    gone = plan(files, Policy(per_user=Limits(count=3)))
    assert sorted(r.file.name for r in gone) == sorted(f.name for f in files[:4])  # two oldest of each
    assert all("over 3 dumps" in r.why for r in gone)


def test_past_the_total_the_heaviest_user_pays_not_the_others() -> None:
    attacker = [_file(i, 1001, size=1000) for i in range(1, 9)]  # newer and far heavier
    victim = [_file(0, 1002, size=10)]  # the oldest dump of all
    gone = plan(attacker + victim, Policy(total=Limits(size=3000)))
    assert {r.file.uid for r in gone} == {1001}  # the victim's older dump stays
    assert sum(f.size for f in attacker + victim) - sum(r.file.size for r in gone) <= 3000


def test_age_limit_and_the_dump_just_written_is_kept() -> None:
    now = 10**12 + 100 * 10**9
    old = DumpFile("kmemdump-5-1-hang-20260101T000000.000000Z.core", 0, 1, 10**12)
    new = DumpFile("kmemdump-6-1-hang-20260101T000001.000000Z.core", 0, 10**9, now)
    gone = plan([old, new], Policy(per_user=Limits(age_s=50, size=10)), now_ns=now, keep=[new.name])
    assert [r.file for r in gone] == [old]


def test_dump_names_are_parsed_strictly() -> None:
    assert parse_dump_name("kmemdump-12-34-hang-20260101T000000.000000Z.core.zst") == (
        12,
        34,
        "hang",
        "20260101T000000.000000Z",
    )
    for bad in (
        "kmemdump-١٢-34-hang-20260101T000000.000000Z.core",
        "kmemdump-12-34-oops-20260101T000000.000000Z.core",
        "kmemdump-0-34-hang-20260101T000000.000000Z.core",
        "kmemdump-12-34-hang-2026/../x.core",
        ".kmemdump-12-34-hang-20260101T000000.000000Z.core.1-2.abcdefabcdef.tmp",
        "kmemdump-12-34-hang-20260101T000000.000000Z.core.bak",
    ):
        assert parse_dump_name(bad) is None


def _dump_file(directory: Path, pid: int, uid: int, mtime: int) -> Path:
    path = write_core(
        directory / f"kmemdump-{pid}-1-hang-20260101T00000{pid % 10}.000000Z.core",
        [Segment(0x1000, b"x" * 4096)],
        [prstatus_note(pid)],
    )
    os.chown(path, uid, 0)
    os.utime(path, ns=(mtime, mtime))
    return path


@pytest.mark.skipif(os.geteuid() != 0, reason="gives the dump files to other uids (chown)")
def test_prune_applies_a_policy_to_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for pid in range(1, 7):
        _dump_file(tmp_path, pid, 2000 + pid % 2, 10**18 + pid)
    (tmp_path / "notes.txt").write_text("not a dump")
    os.symlink("/etc/passwd", tmp_path / "kmemdump-9-1-hang-20260101T000009.000000Z.core")
    assert main(["prune", str(tmp_path), "--keep", "2", "--dry-run", "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)["removed"]
    assert len(planned) == 2 and len(list(tmp_path.iterdir())) == 8  # nothing removed
    assert main(["prune", str(tmp_path), "--keep", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("removed ") == 2
    left = sorted(p.name for p in tmp_path.iterdir())
    assert "notes.txt" in left and Path("/etc/passwd").exists()
    assert {p.name for p in tmp_path.glob("*.core") if not p.is_symlink()} == {
        f"kmemdump-{pid}-1-hang-20260101T00000{pid}.000000Z.core" for pid in (3, 4, 5, 6)
    }
    assert main(["prune", str(tmp_path)]) == 2  # no limit given: refused, not "remove everything"


# --- reading compressed dumps ------------------------------------------------------------------------


class _Sink:
    """An output that keeps nothing and remembers how far it was written or seeked."""

    def __init__(self) -> None:
        self.position = self.furthest = 0

    def write(self, data: bytes) -> int:
        self.seek(len(data), os.SEEK_CUR)
        return len(data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self.position = offset if whence == os.SEEK_SET else self.position + offset
        self.furthest = max(self.furthest, self.position)
        return self.position

    def truncate(self, size: int) -> int:
        self.furthest = max(self.furthest, size)
        return size

    def flush(self) -> None:
        pass


def test_a_zstd_bomb_is_refused_before_it_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = zstd.module()
    bomb = tmp_path / "bomb.core.zst"
    compressor = zstd.compressor(19)
    compressor.set_pledged_input_size(2 << 30)
    with open(bomb, "wb") as out:
        block = bytes(8 << 20)
        for _ in range(256):
            out.write(compressor.compress(block))
        out.write(compressor.flush())
    assert bomb.stat().st_size < 256 * 1024
    spool = tmp_path / "tmp"
    spool.mkdir()
    monkeypatch.setenv("TMPDIR", str(spool))
    with pytest.raises(DumpFormatError, match="no ELF core header"):
        CoreImage.open(bomb)
    # refused from its first chunk: not a byte, nor a hole, goes out
    sink = _Sink()
    with open(bomb, "rb") as source, pytest.raises(DumpFormatError, match="no ELF core header"):
        zstd.decompress(source, sink, bomb)  # type: ignore[arg-type]
    assert sink.furthest == 0
    # a declared size over the limit is refused from the frame header alone
    monkeypatch.setenv("KMEMDUMP_MAX_DUMP_SIZE", str(1 << 30))
    with pytest.raises(DumpFormatError, match="over the limit"):
        CoreImage.open(bomb)
    assert module is not None


def test_a_flipped_byte_in_a_compressed_dump_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    meta = json.dumps({"format": "kmemdump-dump", "version": 1}).encode()
    path = write_core(
        tmp_path / "d.core",
        [Segment(0x1000, os.urandom(1 << 16))],
        [Note(OWNER_KMEMDUMP, KMD_NOTE_META, meta)],
        compress=True,
    )
    declared, checksum = zstd.frame_header(path.read_bytes()[:18])
    assert checksum and declared is not None
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    assert main(["show", str(path)]) == 1
    err = capsys.readouterr().err
    first = err.strip().splitlines()[0]
    assert first.startswith("kmemdump: error:") and ("corrupt" in first or "checksum" in first)
    assert "Traceback" not in err


def test_a_streamed_compressed_dump_reads_back_whole(tmp_path: Path) -> None:
    payload = os.urandom(3 << 20) + bytes(9 << 20) + b"end"  # data, a run of zeros (a hole), data
    with CoreWriter(tmp_path / "s.core", compress=True) as writer:
        writer.add(0x10000, payload)
        final = Path(writer.finish([prstatus_note(1)]))
    assert final.name.endswith(".core.zst") and [p.name for p in tmp_path.iterdir()] == [final.name]
    with CoreImage.open(final) as image:
        assert image.compressed and image.read(0x10000, len(payload)) == payload


def test_an_absurd_capture_time_is_a_clean_refusal_and_ls_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = {
        "format": "kmemdump-dump", "version": 1, "reason": "hang", "pid": 5, "start_time": 1,
        "captured_ns": 1_700_000_000 * 10**9, "host": "h", "argv": ["x"], "uid": 0, "py_hexversion": 0,
        "regions": [], "partial": False, "stopped": False,
    }  # fmt: skip
    for name, captured in (("kmemdump-5-1-hang-20231114T221320.000000Z.core", None), ("bad.core", 10**30)):
        body = dict(good, captured_ns=captured) if captured else good
        write_core(tmp_path / name, [], [Note(OWNER_KMEMDUMP, KMD_NOTE_META, json.dumps(body).encode())])
    assert main(["show", str(tmp_path / "bad.core")]) == 1
    assert "out of range" in capsys.readouterr().err
    assert main(["ls", str(tmp_path), "--plain"]) == 0
    captured_io = capsys.readouterr()
    assert "kmemdump-5-1-hang" in captured_io.out and "bad.core" in captured_io.err


# --- an on-demand dump of a producer that never stops changing its table ------------------------------

_CHURN = """
import threading, kmemdump
kmemdump.init(table=True, pycoreinfo=False)
def churn():
    while True:
        rid = kmemdump.register(bytearray(64), name="churn")
        kmemdump.unregister(rid)
for _ in range(4):
    threading.Thread(target=churn, daemon=True).start()
send("churning")
block()
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_on_demand_dumps_of_a_churning_producer_never_fail(
    table_dir: Path, dump_dir: Path, stress_report
) -> None:  # type: ignore[no-untyped-def]
    from budget import seconds

    with spawn_child(_CHURN) as child:
        assert child.recv() == "churning"
        start = process_start_time(child.pid)
        table = table_dir / f"{child.pid}-{start}.table"
        deadline = time.monotonic() + seconds(20)
        done = torn = 0
        while time.monotonic() < deadline or done < 10:
            result = dump_target(
                child.pid,
                start,
                table,
                reason="request",
                options=DumpOptions(dump_dir, stacks=False, threads=-1),
            )
            done += 1
            torn += result.meta.table_torn
            result.path.unlink()
        stress_report(
            f"{done} on-demand dumps of a register/unregister churn, {torn} from the last good snapshot"
        )
        assert done >= 10


def test_the_cli_runs_prune_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "kmemdump.cli", "prune", "--help"], check=False, capture_output=True, text=True
    )
    assert out.returncode == 0 and "--keep-total-size" in out.stdout


_TWO_REGIONS = """
import kmemdump
kmemdump.init(table=True, pycoreinfo=False)
a = kmemdump.alloc(32, name="a")
a[:] = b"A" * 32
send(str(kmemdump.current_backend().path))
block()
"""


def test_a_process_held_mid_update_every_time_is_dumped_from_the_copy_taken_while_it_ran(
    table_dir: Path, dump_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy of the table taken before the hold is the fallback when every hold lands in the
    middle of an update (here: the generation made odd each time the process is held, as a producer
    caught between the two increments leaves it); it is parsed only then, and the dump says so."""
    import kmemdump.collector.dump as dump_module
    from kmemdump.formats.table import OFF_GENERATION

    real_hold = dump_module._take_hold
    holds: list[str] = []

    def held_mid_update(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        hold = real_hold(*args, **kwargs)  # type: ignore[arg-type]
        holds.append(hold.method)
        with table.open("r+b") as handle:  # the word the producer's next update would make even again
            handle.seek(OFF_GENERATION)
            generation = int.from_bytes(handle.read(8), "little")
            handle.seek(OFF_GENERATION)
            handle.write((generation | 1).to_bytes(8, "little"))
        real_release = hold.release

        def release() -> None:
            with table.open("r+b") as handle:
                handle.seek(OFF_GENERATION)
                handle.write(generation.to_bytes(8, "little"))
            real_release()

        hold.release = release
        return hold

    with spawn_child(_TWO_REGIONS) as child:
        table = Path(child.recv())
        start = process_start_time(child.pid)
        monkeypatch.setattr(dump_module, "_take_hold", held_mid_update)
        result = dump_target(
            child.pid, start, table, reason="request", options=DumpOptions(dump_dir, stacks=False)
        )
    # let go and held again, five times
    assert len(holds) == 5 and len(set(holds)) == 1 and holds[0] in ("ptrace", "SIGSTOP")
    assert result.meta.table_torn
    with Dump.open(result.path) as dump:
        record = next(r for r in dump.meta.regions if r.name == "a")
        assert (record.status, dump.region_bytes(record)) == ("ok", b"A" * 32)

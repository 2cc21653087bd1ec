"""The fleet's parts one by one: the spool's crash safety and bounds, backoff, the index object
format against hostile documents, the key layout, and signatures."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from kmemdump.errors import DumpFormatError
from kmemdump.fleet.catalog import dump_key
from kmemdump.fleet.catalog import host_segment
from kmemdump.fleet.catalog import index_key_of
from kmemdump.fleet.catalog import parse_key
from kmemdump.fleet.shipper import backoff_delay
from kmemdump.fleet.spool import MANIFEST_SUFFIX
from kmemdump.fleet.spool import Spool
from kmemdump.fleet.url import parse_url
from kmemdump.formats.dumpindex import DumpIndex
from kmemdump.formats.dumpindex import decode_index
from kmemdump.formats.dumpindex import encode_index
from kmemdump.formats.dumpmeta import Death
from kmemdump.formats.dumpmeta import DumpMeta
from kmemdump.formats.stacks import Frame
from kmemdump.formats.stacks import Stacks
from kmemdump.formats.stacks import ThreadStack
from kmemdump.inspect.signature import compute_signature
from kmemdump.inspect.signature import program_name


def _dump(directory: Path, name: str, size: int = 100) -> Path:
    path = directory / name
    path.write_bytes(os.urandom(size))
    return path


# --- the spool ----------------------------------------------------------------------------------------


def test_a_linked_dump_is_queued_with_its_manifest_and_shares_the_file(tmp_path: Path) -> None:
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    spool = Spool(dumps / ".ship-spool", max_bytes=10_000, max_dumps=10)
    spool.prepare()
    dump = _dump(dumps, "a.core")
    assert spool.link(dump)
    entry = spool.admit(dump)
    assert entry is not None and entry.path.stat().st_ino == dump.stat().st_ino
    assert entry.source == str(dump) and entry.source_id == (dump.stat().st_dev, dump.stat().st_ino)
    assert [e.name for e in spool.entries()] == ["a.core"]
    failed = spool.record_failure(entry, "store unavailable")
    assert spool.entries() == [failed] and failed.attempts == 1
    spool.remove(failed)
    assert spool.entries() == [] and dump.exists()


def test_a_dump_that_cannot_be_linked_is_copied(tmp_path: Path) -> None:
    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs a second file system (/dev/shm) to make a hard link impossible")
    import tempfile

    with tempfile.TemporaryDirectory(dir="/dev/shm") as other:
        spool = Spool(Path(other) / "spool", max_bytes=10_000, max_dumps=10)
        spool.prepare()
        dump = _dump(tmp_path, "b.core")
        assert not spool.link(dump)
        entry = spool.admit(dump)
        assert entry is not None and entry.path.read_bytes() == dump.read_bytes()
        assert entry.path.stat().st_ino != dump.stat().st_ino


def test_recovery_after_a_crash_at_each_step(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=10_000, max_dumps=10)
    spool.prepare()
    d = spool.directory
    _dump(d, "linked-only.core")  # died after the link, before the manifest
    _dump(d, ".copy.core.tmp")  # died while copying
    (d / "gone.core.ship.json").write_text("{}")  # died after removing the dump's manifest... reversed
    _dump(d, "bad-manifest.core")
    (d / ("bad-manifest.core" + MANIFEST_SUFFIX)).write_text("{not json")
    good = _dump(tmp_path, "good.core")
    spool.link(good)
    spool.admit(good)
    orphans = spool.recover()
    assert sorted(p.name for p in orphans) == ["bad-manifest.core", "linked-only.core"]
    assert sorted(os.listdir(d)) == [
        "bad-manifest.core",
        "good.core",
        "good.core" + MANIFEST_SUFFIX,
        "linked-only.core",
    ]
    for orphan in orphans:
        assert spool.admit(orphan) is not None
    assert sorted(e.name for e in spool.entries()) == ["bad-manifest.core", "good.core", "linked-only.core"]
    assert all(e.source == "" for e in spool.entries() if e.name != "good.core")  # never deleted locally


def test_the_spool_gives_up_the_oldest_and_refuses_what_can_never_fit(tmp_path: Path) -> None:
    lines: list[str] = []
    spool = Spool(tmp_path / "spool", max_bytes=250, max_dumps=2, log=lines.append)
    spool.prepare()
    for name in ("1.core", "2.core", "3.core"):
        assert spool.admit(_dump(tmp_path, name)) is not None
    assert [e.name for e in spool.entries()] == ["2.core", "3.core"]
    assert "gave up uploading 1.core, the oldest" in lines[-1]
    assert spool.admit(_dump(tmp_path, "big.core", 251)) is None
    assert "refused big.core" in lines[-1]
    assert spool.admit(_dump(tmp_path, "4.core", 120)) is not None  # 100 + 120 fits, 2.core goes
    assert [e.name for e in spool.entries()] == ["3.core", "4.core"]
    assert (tmp_path / "1.core").exists()  # the local dumps are kept


def test_backoff_doubles_is_capped_and_jittered() -> None:
    rng = random.Random(7)
    for failures, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (9, 256.0), (10, 300.0), (500, 300.0)]:
        delays = [backoff_delay(failures, 1.0, 300.0, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 10  # not in step


# --- keys and the index object -------------------------------------------------------------------------


def _meta(**changes: object) -> DumpMeta:
    fields: dict[str, object] = {
        "reason": "hang",
        "pid": 4242,
        "start_time": 98765,
        "captured_ns": 1_795_862_100_123_456_789,
        "host": "web 7/a",
        "argv": ("/usr/bin/python3", "-u", "/srv/app/worker.py", "--port", "80"),
        "exe": "/usr/bin/python3.11",
        "uid": 1000,
        "py_hexversion": 0x030B07F0,
        "regions": (),
        "partial": False,
        "stopped": True,
    }
    fields.update(changes)
    return DumpMeta(**fields)  # type: ignore[arg-type]


def test_keys_carry_day_host_pid_start_reason_and_time() -> None:
    key = dump_key(parse_url("s3://bucket/fleet/x"), _meta(), compressed=True)
    assert key == "fleet/x/2026-11-28/web_7_a/kmemdump-4242-98765-hang-20261128T103500.123457Z.core.zst"
    assert index_key_of(key) == key[: -len(".core.zst")] + ".index.json"
    facts = parse_key(key)
    assert facts is not None
    assert (facts.day, facts.host, facts.pid, facts.start_time, facts.reason, facts.kind) == (
        "2026-11-28",
        "web_7_a",
        4242,
        98765,
        "hang",
        "dump",
    )
    assert abs(facts.captured_ns - 1_795_862_100_123_456_789) < 1000
    assert parse_key(index_key_of(key)).kind == "index"  # type: ignore[union-attr]
    for other in (
        "x/y/z.core",
        "2026-11-28/h/kmemdump-1-2-hang-2026.core",
        "bad/h/kmemdump-1-2-hang-20261128T103500.123457Z.core",
    ):
        assert parse_key(other) is None
    assert host_segment("..") == "unknown-host" and host_segment("a" * 300) == "a" * 100


def _index(**changes: object) -> DumpIndex:
    fields: dict[str, object] = {
        "key": "p/2026-11-28/h/kmemdump-1-2-hang-20261128T103500.123457Z.core",
        "host": "h",
        "pid": 1,
        "start_time": 2,
        "reason": "hang",
        "captured_ns": 1_795_862_100_123_456_789,
        "command": "python3 app.py",
        "exe": None,
        "uid": 0,
        "size": 10,
        "sha256": "a" * 64,
        "compressed": False,
        "regions": 3,
        "stored_bytes": 5,
        "partial": False,
        "signature": "0123456789abcdef",
        "frames": ("f (a.py)",),
        "signature_basis": "the main thread",
        "death": "killed by SIGSEGV",
    }
    fields.update(changes)
    return DumpIndex(**fields)  # type: ignore[arg-type]


def test_index_round_trip() -> None:
    index = _index()
    assert decode_index(encode_index(index)) == index


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b.update(format="other"),
        lambda b: b.update(version=2),
        lambda b: b.pop("pid"),
        lambda b: b.update(pid="1"),
        lambda b: b.update(pid=True),
        lambda b: b.update(pid=-1),
        lambda b: b.update(sha256="zz"),
        lambda b: b.update(signature="not hex!"),
        lambda b: b.update(frames=[1, 2]),
        lambda b: b.update(frames=["x"] * 100),
        lambda b: b.update(command="x" * 5000),
        lambda b: b.update(captured_ns=1 << 64),
    ],
)
def test_hostile_index_objects_are_refused(mutate: object) -> None:
    body = json.loads(encode_index(_index()))
    mutate(body)  # type: ignore[operator]
    with pytest.raises(DumpFormatError):
        decode_index(json.dumps(body).encode())


@pytest.mark.parametrize("data", [b"", b"\xff", b"[]", b"{" * 100_000, b" " * 70_000])
def test_garbage_is_not_an_index(data: bytes) -> None:
    with pytest.raises(DumpFormatError):
        decode_index(data)


# --- signatures -------------------------------------------------------------------------------------------


def _thread(
    native: int, *frames: tuple[str, str, int], gil: bool = False, name: str | None = None
) -> ThreadStack:
    return ThreadStack(
        native, name, native, False, gil, tuple(Frame(f, file, line) for f, file, line in frames)
    )


def _stacks(main_pid: int, directory: str, line: int) -> Stacks:
    return Stacks(
        "py-spy",
        (
            _thread(main_pid + 1, ("run", f"{directory}/threading.py", 10), name="worker"),
            _thread(
                main_pid,
                ("acquire", f"{directory}/locks.py", line),
                ("handle", f"{directory}/app.py", line + 7),
                ("<module>", f"{directory}/app.py", 1),
                name="MainThread",
            ),
        ),
    )


def test_the_same_hang_has_one_signature_across_hosts_pids_lines_and_directories() -> None:
    one = compute_signature(_meta(pid=10, host="a"), _stacks(10, "/srv/v1", 40))
    two = compute_signature(_meta(pid=99, host="b"), _stacks(99, "/opt/v2/lib", 43))
    assert one == two
    assert one.frames == ("acquire (locks.py)", "handle (app.py)", "<module> (app.py)")
    assert one.basis == "the main thread" and one.title == "acquire (locks.py)"
    assert compute_signature(_meta(pid=10, reason="death"), _stacks(10, "/srv", 40)).id != one.id


def test_the_thread_holding_the_gil_signs_unless_it_is_the_feeder() -> None:
    stacks = Stacks(
        "py-spy",
        (
            _thread(10, ("wait", "threading.py", 1), name="MainThread"),
            _thread(11, ("spin", "busy.py", 3), gil=True, name="worker"),
        ),
    )
    assert compute_signature(_meta(pid=10), stacks).frames == ("spin (busy.py)",)
    feeder = Stacks(
        "py-spy",
        (stacks.threads[0], _thread(12, ("beat", "heartbeat.py", 1), gil=True, name="kmemdump-feeder")),
    )
    assert compute_signature(_meta(pid=10), feeder).frames == ("wait (threading.py)",)


def test_the_one_thread_running_before_the_hold_signs() -> None:
    from kmemdump.formats.dumpmeta import ThreadState

    stacks = Stacks(
        "py-spy",
        (
            _thread(10, ("wait", "threading.py", 1), name="MainThread"),
            _thread(11, ("spin", "busy.py", 3), name="worker"),
            _thread(12, ("other", "x.py", 3), gil=True, name="third"),
        ),
    )
    states = (
        ThreadState(10, "python3", "S"),
        ThreadState(11, "python3", "R"),
        ThreadState(12, "python3", "S"),
    )
    chosen = compute_signature(_meta(pid=10, threads=states), stacks)
    assert (
        chosen.frames == ("spin (busy.py)",)
        and chosen.basis == "the thread running when the process was held"
    )
    two = (ThreadState(10, "python3", "R"), ThreadState(11, "python3", "R"))
    assert compute_signature(_meta(pid=10, threads=two), stacks).frames == ("other (x.py)",)  # the GIL holder


def test_without_stacks_the_death_and_the_program_sign() -> None:
    segv = Death(signal=11, signal_name="SIGSEGV", source="wait status")
    a = compute_signature(_meta(pid=1, reason="death", death=segv), None)
    b = compute_signature(_meta(pid=2, reason="death", death=segv, argv=("python3", "/x/worker.py")), None)
    c = compute_signature(_meta(pid=3, reason="death", death=Death(exit_code=3, source="wait status")), None)
    assert a == b and a.id != c.id and a.frames == ()
    assert a.title == "death of worker.py, SIGSEGV (no stacks)"
    assert program_name(("python3", "-m", "pkg.main"), None) == "-m pkg.main"
    assert program_name(("/usr/sbin/nginx", "-g"), "/usr/sbin/nginx") == "nginx"


def test_delete_local_removes_the_dump_only_after_the_upload_and_only_the_same_file(
    store_url: str, tmp_path: Path
) -> None:
    from helpers_fleet import write_dump
    from kmemdump.fleet.shipper import ShipOptions
    from kmemdump.fleet.shipper import Shipper

    dumps = tmp_path / "dumps"
    dumps.mkdir()
    kept = write_dump(dumps, host="h", pid=1, reason="hang", captured_ns=1_795_860_900_000_000_000)
    gone = write_dump(dumps, host="h", pid=2, reason="hang", captured_ns=1_795_860_901_000_000_000)
    lines: list[str] = []
    shipper = Shipper(
        ShipOptions(parse_url(store_url), dumps / ".ship-spool", delete_local=True), log=lines.append
    )
    # the dump at one name is replaced by another file after it was queued: that file is not ours to remove
    shipper.spool.prepare()
    shipper.spool.link(kept)
    shipper.spool.admit(kept)
    replacement = kept.read_bytes()
    kept.unlink()
    kept.write_bytes(replacement)
    shipper.start()
    shipper.submit(gone)
    assert shipper.wait_idle(60), lines
    shipper.stop()
    assert shipper.uploaded == 2, lines
    assert not gone.exists() and kept.exists()
    assert f"ship removed the local copy {gone}" in lines


def test_a_key_already_holding_the_same_dump_is_done_and_other_content_is_kept_beside(
    store_url: str, tmp_path: Path
) -> None:
    from helpers_fleet import write_dump
    from kmemdump.fleet.catalog import build_index
    from kmemdump.fleet.s3 import ObjectStore
    from kmemdump.fleet.shipper import ShipOptions
    from kmemdump.fleet.shipper import Shipper

    url = parse_url(store_url)
    store = ObjectStore(url)
    same = write_dump(tmp_path, host="h", pid=1, reason="hang", captured_ns=1_795_860_900_000_000_000)
    other = write_dump(tmp_path, host="h", pid=2, reason="hang", captured_ns=1_795_860_900_000_000_000)
    # GIVEN one dump already in the bucket (an upload that succeeded before a crash), and another
    # dump's key taken by different bytes
    assert store.put_if_absent(build_index(same, url).key, same) == "created"
    other_key = build_index(other, url).key
    assert store.put_if_absent(other_key, b"somebody else's bytes") == "created"
    lines: list[str] = []
    shipper = Shipper(ShipOptions(parse_url(store_url), tmp_path / "spool"), log=lines.append)
    shipper.start()
    shipper.submit(same)
    shipper.submit(other)
    assert shipper.wait_idle(60), lines
    shipper.stop()
    # THEN the first counts as uploaded without a second copy; the second goes beside the stranger
    assert shipper.uploaded == 2, lines
    keys = sorted(info.key for info in store.objects(url.prefix))
    dumps = [k for k in keys if not k.endswith(".index.json")]
    assert len(dumps) == 3 and len(keys) == 5
    moved = next(k for k in dumps if "~" in k)
    assert moved.startswith(other_key.removesuffix(".core") + "~") and store.get(moved) == other.read_bytes()
    assert store.get(other_key) == b"somebody else's bytes"
    assert any(f"{other_key} holds another dump; uploading as {moved}" in line for line in lines)
    from kmemdump.fleet.remote import list_indexes

    assert sorted(i.key for i in list_indexes(store, url)) == sorted([build_index(same, url).key, moved])

"""The sweep: dumps written while no shipper ran, or given up while the store was away, are shipped
later — once, and never a file that is not a dump this collector may ship (links, FIFOs, garbage,
other users' files in a directory others may write to, a file still being written).

Real SeaweedFS, real collectors and hung producers; the planted files are real links, FIFOs and
files of another owner."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from conftest import STORE_BUCKET
from conftest import require_weed
from helpers_child import spawn_child
from helpers_fleet import HUNG_PRODUCER
from helpers_fleet import Collector
from helpers_fleet import dump_files
from helpers_fleet import write_dump
from helpers_seaweed import SeaweedFS
from helpers_seaweed import store_env
from kmemdump.fleet.catalog import INDEX_SUFFIX
from kmemdump.fleet.ledger import LEDGER_DIR
from kmemdump.fleet.ledger import Ledger
from kmemdump.fleet.s3 import ObjectStore
from kmemdump.fleet.shipper import ShipOptions
from kmemdump.fleet.shipper import Shipper
from kmemdump.fleet.url import parse_url

pytestmark = pytest.mark.slow

T0 = 1_795_860_900_000_000_000


def _names(url: str) -> list[str]:
    parsed = parse_url(url)
    keys = [info.key for info in ObjectStore(parsed).objects(parsed.prefix)]
    return sorted(k.rsplit("/", 1)[1] for k in keys if not k.endswith(INDEX_SUFFIX))


def _dump(directory: Path, pid: int, *, age_s: float = 60.0) -> Path:
    path = write_dump(directory, host="h1", pid=pid, reason="hang", captured_ns=T0 + pid * 1_000_000_000)
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def _shipper(url: str, dump_dir: Path, lines: list[str], **options: object) -> Shipper:
    return Shipper(
        ShipOptions(parse_url(url), dump_dir / ".ship-spool", dump_dir=dump_dir, **options),  # type: ignore[arg-type]
        log=lines.append,
    )


def test_the_sweep_ships_what_is_not_shipped_and_nothing_planted(store_url: str, tmp_path: Path) -> None:
    dump_dir = tmp_path / "dumps"
    dump_dir.mkdir(mode=0o755)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # GIVEN two dumps no shipper saw, and beside them files nobody should ship
    good = [_dump(dump_dir, 101), _dump(dump_dir, 102)]
    target = _dump(elsewhere, 103)
    (dump_dir / target.name).symlink_to(target)  # a link named as a dump, to a real dump
    fifo = dump_dir / "kmemdump-104-728-hang-20261128T101500.000000Z.core"
    os.mkfifo(fifo)  # opening it for reading would block the shipper for good
    garbage = dump_dir / "kmemdump-105-735-hang-20261128T101500.000000Z.core"
    garbage.write_bytes(b"not a dump at all" * 100)
    os.utime(garbage, (time.time() - 60, time.time() - 60))
    (dump_dir / "notes.core").write_bytes(b"x")  # not a dump's name
    (dump_dir / "kmemdump-106-742-hang-20261128T101500.000000Z.core").mkdir()  # a directory
    old = _dump(dump_dir, 107, age_s=30 * 86400)  # older than the sweep's age limit
    fresh = _dump(dump_dir, 108, age_s=0)  # just written: maybe still being written
    foreign = _dump(dump_dir, 109)
    os.chown(foreign, 65534, 65534)  # another user's file, claiming to be a dump of uid 1000's process
    # WHEN a shipper starts on the directory
    lines: list[str] = []
    shipper = _shipper(store_url, dump_dir, lines, settle_s=2.0, sweep_max_age=7 * 86400.0)
    shipper.start()
    try:
        # THEN the settled dumps go first, the fresh one once it has settled (a second sweep)
        deadline = time.monotonic() + 60
        while len([line for line in lines if " uploaded " in line]) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert shipper.wait_idle(60), lines
    finally:
        shipper.stop()
    assert _names(store_url) == sorted(p.name for p in [*good, fresh]), lines
    sweeps = [line for line in lines if line.startswith("ship sweep of")]
    # (the garbage and the foreign file pass the sweep's checks of names and owners: queued, read, refused)
    assert sweeps[0].startswith(f"ship sweep of {dump_dir}: queued 4 dumps ("), sweeps
    assert "1 still being written (looked at again later)" in sweeps[0]
    assert "1 older than the sweep's age limit" in sweeps[0]
    assert "3 not regular files (links, FIFOs …)" in sweeps[0]
    assert any(line.startswith(f"ship sweep of {dump_dir}: queued 1 dump (") for line in sweeps[1:]), sweeps
    # the garbage and the foreign file were refused when read
    refused = [line for line in lines if "not uploaded, it is not a readable dump" in line]
    assert sorted(line.split(":")[0].split()[1] for line in refused) == sorted([garbage.name, foreign.name])
    assert "belongs to uid 65534, but it says it is a dump of a process of uid 1000" in "".join(refused)
    # AND the planted files are as they were: the FIFO is a FIFO, the link a link, the garbage there
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and (dump_dir / target.name).is_symlink()
    assert garbage.exists() and old.exists() and foreign.exists()
    # AND the ledger lists exactly the shipped dumps, as those very files
    with Ledger.open(dump_dir) as ledger:  # type: ignore[union-attr]
        assert sorted(ledger.names()) == sorted(p.name for p in [*good, fresh])
        assert all(ledger.shipped(p.name, os.stat(p)) for p in [*good, fresh])
    # AND a second shipper ships nothing again: not the shipped dumps, nor the refused ones
    again: list[str] = []
    second = _shipper(store_url, dump_dir, again, settle_s=2.0)
    second.start()
    try:
        assert second.wait_idle(30)
    finally:
        second.stop()
    assert not [line for line in again if " uploaded " in line], again
    assert _names(store_url) == sorted(p.name for p in [*good, fresh])


def test_in_a_directory_others_may_write_only_this_users_files_are_swept(
    store_url: str, tmp_path: Path
) -> None:
    dump_dir = tmp_path / "shared"
    dump_dir.mkdir()
    os.chmod(dump_dir, 0o1777)
    mine = _dump(dump_dir, 201)
    theirs = _dump(dump_dir, 202)
    os.chown(theirs, 65534, 65534)
    lines: list[str] = []
    shipper = _shipper(store_url, dump_dir, lines)
    shipper.start()
    try:
        assert shipper.wait_idle(60)
    finally:
        shipper.stop()
    assert _names(store_url) == [mine.name], lines
    sweep = next(line for line in lines if line.startswith("ship sweep"))
    assert "1 another user's file in a directory others may write to" in sweep
    assert not [line for line in lines if theirs.name in line and "not uploaded" in line]  # never even read


def test_a_planted_ledger_is_not_trusted(store_url: str, tmp_path: Path) -> None:
    dump_dir = tmp_path / "dumps"
    dump_dir.mkdir()
    planted = tmp_path / "planted"
    planted.mkdir()
    (dump_dir / LEDGER_DIR).symlink_to(planted)
    _dump(dump_dir, 301)
    lines: list[str] = []
    shipper = _shipper(store_url, dump_dir, lines)
    shipper.start()
    try:
        assert shipper.wait_idle(30)
    finally:
        shipper.stop()
    assert any("the ship ledger" in line and "not swept" in line for line in lines), lines
    assert _names(store_url) == [] and list(planted.iterdir()) == []


def test_a_sweep_is_bounded_by_the_spool_and_never_pushes_an_upload_out(
    store_url: str, tmp_path: Path
) -> None:
    dump_dir = tmp_path / "dumps"
    dump_dir.mkdir()
    dumps = [_dump(dump_dir, 400 + n) for n in range(5)]
    lines: list[str] = []
    shipper = _shipper(store_url, dump_dir, lines, max_spool_dumps=2)
    # WHEN the first sweep runs with room for two
    from kmemdump.fleet.sweep import sweep

    shipper.spool.prepare()
    with Ledger.open(dump_dir, create=True) as ledger:  # type: ignore[union-attr]
        first = sweep(dump_dir, shipper.spool, ledger, settle_s=0.0, max_age_s=None)
    # THEN two are queued, the oldest, and three wait for room; nothing was given up
    assert (first.queued, first.no_room) == (2, 3)
    assert sorted(e.name for e in shipper.spool.entries()) == [p.name for p in dumps[:2]]
    assert not [line for line in lines if "gave up" in line]
    # AND a shipper started on it ships all five: it sweeps again each time the spool has room
    shipper.start()
    try:
        deadline = time.monotonic() + 60
        while len(_names(store_url)) < 5 and time.monotonic() < deadline:
            assert shipper.wait_idle(30)
    finally:
        shipper.stop()
    assert _names(store_url) == [p.name for p in dumps]
    assert not [line for line in lines if "gave up" in line], lines


@pytest.fixture
def own_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SeaweedFS:
    require_weed()
    server = SeaweedFS(tmp_path / "seaweedfs", buckets=(STORE_BUCKET,)).start()
    for key, value in store_env(server).items():
        monkeypatch.setenv(key, value)
    yield server  # type: ignore[misc]
    server.kill()


def test_dumps_given_up_during_an_outage_are_shipped_when_it_ends_once(
    own_store: SeaweedFS, tmp_path: Path
) -> None:
    url = f"s3://{STORE_BUCKET}/outage-sweep"
    dump_dir = tmp_path / "dumps"
    dump_dir.mkdir()
    own_store.kill()
    lines: list[str] = []
    first = _dump(dump_dir, 500)  # the start-up sweep queues it: the test waits for that line
    shipper = _shipper(url, dump_dir, lines, max_spool_dumps=1, retry_min=0.2, retry_max=1.0, settle_s=0.0)
    shipper.start()
    try:
        _wait(lambda: any(line.startswith("ship sweep") for line in lines), lines)
        # GIVEN three more dumps finished while the store is down, with room in the spool for one
        dumps = [first, *(_dump(dump_dir, 501 + n) for n in range(3))]
        for path in dumps[1:]:
            shipper.submit(path)
        _wait(lambda: len([line for line in lines if "gave up uploading" in line]) == 3, lines)
        _wait(lambda: len([line for line in lines if "failed" in line]) >= 2, lines)
        # WHEN the store comes back
        own_store.start()
        _wait(lambda: len(_names(url)) == 4, lines, timeout=90)
        assert shipper.wait_idle(30)
    finally:
        shipper.stop()
    # THEN all four arrived, once each: the one left in the spool, and the three given up, by sweeps
    assert _names(url) == [p.name for p in dumps], lines
    assert len([line for line in lines if " uploaded " in line]) == 4
    swept = [line for line in lines if line.startswith(f"ship sweep of {dump_dir}: queued 1 dump (")]
    assert len(swept) == 4, lines  # at start, then one a time: the spool has room for one


def _wait(done: object, lines: list[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():  # type: ignore[operator]
        assert time.monotonic() < deadline, lines
        time.sleep(0.05)


def test_dumps_of_a_collector_without_ship_go_at_the_next_start_with_ship(
    store_url: str, table_dir: Path, dump_dir: Path
) -> None:
    args = ["--tables", str(table_dir), "--dir", str(dump_dir), "--no-stacks"]
    # GIVEN a hang dumped by a collector that did not ship
    with Collector(args) as collector:
        collector.wait_for("watching")
        with spawn_child(HUNG_PRODUCER, args=["0.3"]) as child:
            child.recv()
            collector.wait_for(f"hang pid={child.pid}")
            assert collector.stop() == 0
    (local,) = dump_files(dump_dir)
    os.utime(local, (time.time() - 10, time.time() - 10))  # settled (the sweep waits 5 s otherwise)
    # WHEN a collector that ships starts (on no table: the hung child's stays behind, not for this test)
    empty = dump_dir.parent / "no-tables"
    empty.mkdir()
    args = ["--tables", str(empty), "--dir", str(dump_dir), "--no-stacks"]
    with Collector([*args, "--ship", store_url]) as shipping:
        shipping.wait_for(f"ship pid={child.pid} uploaded")
        assert shipping.stop() == 0
    # THEN the dump is in the bucket, once, the sweep said so, and the ledger has it
    assert _names(store_url) == [local.name]
    assert any(line.startswith(f"ship sweep of {dump_dir}: queued 1 dump (") for line in shipping.lines)
    assert (dump_dir / LEDGER_DIR / f"{local.name}.json").is_file()


def test_a_file_modified_in_the_future_is_left_and_brings_no_early_sweep(
    store_url: str, tmp_path: Path
) -> None:
    dump_dir = tmp_path / "dumps"
    dump_dir.mkdir()
    planted = _dump(dump_dir, 601)
    later = time.time() + 30 * 86400
    os.utime(planted, (later, later))  # "being written" for a month: must not make the shipper sweep non-stop
    lines: list[str] = []
    shipper = _shipper(store_url, dump_dir, lines, settle_s=0.0)
    shipper.start()
    try:
        _wait(lambda: any(line.startswith("ship sweep") for line in lines), lines)
        assert shipper.wait_idle(30)
        due = shipper._sweep_at
        assert due is not None and due - time.monotonic() > 500  # the next sweep is the periodic one
    finally:
        shipper.stop()
    (line,) = [line for line in lines if line.startswith("ship sweep")]
    assert line.endswith("queued 0 dumps (0 bytes) not shipped yet; left: 1 modified in the future"), line
    assert _names(store_url) == []

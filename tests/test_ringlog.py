"""``kmemdump.logging.RingHandler``: the last N log records of a process, in its dumps, even after SIGKILL.

Real producers log through the handler; a watching collector dumps them after a SIGKILL; the dump
is read back with our reader, ``kmemdump show`` (text and JSON) and, independently, gdb. Also:
the handler under dictConfig, several threads, a fork (the child never writes into its parent's
ring), ``close`` (records kept) and ``free`` (memory returned).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import require_tool
from helpers_child import spawn_child
from kmemdump.cli.main import main
from kmemdump.collector.dump import DumpOptions
from kmemdump.collector.watch import Event
from kmemdump.collector.watch import Watcher
from kmemdump.formats.enums import RegionFlags
from kmemdump.formats.enums import RegionKind
from kmemdump.formats.ring import parse_ring
from kmemdump.inspect.dumpfile import Dump

pytestmark = pytest.mark.slow

CAPACITY = 300
RECORDS = 10_000

LOGGER = r"""
import logging, os, sys
import kmemdump
from kmemdump.logging import RingHandler
report = kmemdump.init(table=True, pycoreinfo=False)
handler = RingHandler(capacity=int(sys.argv[1]), record_size=128)
log = logging.getLogger("orders")
log.setLevel(logging.DEBUG)
log.addHandler(handler)
log.propagate = False
levels = [logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR]
for i in range(int(sys.argv[2])):
    log.log(levels[i % 4], "order %d \u2713", i)
log.warning("last words: %s", "x" * 300)
send({"table": report.table, "region": handler.region_id, "pid": os.getpid()})
block()
"""


def _collect(watcher: Watcher, seconds: float) -> list[Event]:
    events = watcher.scan()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = watcher.step()
        events.extend(got)
        if any(e.dump is not None for e in got):
            break
    return events


def _death_dump(table_dir: Path, dump_dir: Path, code: str, args: list[str]) -> tuple[dict[str, Any], Path]:
    with spawn_child(code, args=args) as child:
        info = child.recv(timeout=60)
        watcher = Watcher([table_dir], DumpOptions(dump_dir))
        assert [e.kind for e in watcher.scan()] == ["watch"]
        os.kill(child.pid, signal.SIGKILL)
        child.popen.wait()
        events = _collect(watcher, 10)
        watcher.close()
    deaths = [e for e in events if e.kind == "death" and e.dump is not None]
    assert len(deaths) == 1, [e.line() for e in events]
    result = deaths[0].dump
    assert result is not None
    return info, result.path


def test_a_sigkilled_process_keeps_exactly_its_last_records(
    table_dir: Path, dump_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a process that logged 10,000 records (and one long one) through the handler
    # WHEN it is SIGKILLed under a watching collector
    info, path = _death_dump(table_dir, dump_dir, LOGGER, [str(CAPACITY), str(RECORDS)])
    # THEN its death dump holds exactly the last CAPACITY records, in order, read from the arena
    with Dump.open(path) as dump:
        record = dump.region(info["region"])
        assert (record.kind, record.status, record.source) == (RegionKind.RING, "ok", "arena")
        ring = parse_ring(dump.region_bytes(record))
    expected = [f"orders: order {i} \u2713" for i in range(RECORDS - CAPACITY + 1, RECORDS)]
    records = ring.records
    assert [r.text for r in records[:-1]] == expected
    assert [r.seq for r in records] == list(range(RECORDS - CAPACITY + 2, RECORDS + 2))
    assert [r.level for r in records[:-1]] == [
        (10, 20, 30, 40)[i % 4] for i in range(RECORDS - CAPACITY + 1, RECORDS)
    ]
    assert all(a.time <= b.time for a, b in itertools.pairwise(records))
    last = records[-1]
    assert (
        last.cut
        and last.full_length == len("orders: last words: ") + 300
        and last.text.startswith("orders: last")
    )
    assert (ring.torn, ring.invalid, ring.overwritten) == (0, 0, RECORDS - CAPACITY + 1)

    # `show` prints them in order with levels and times; --json has every record
    assert main(["show", "--plain", str(path)]) == 0
    out = capsys.readouterr().out
    section = out[out.index("Log records (oldest first, UTC)") :]
    lines = [line for line in section.splitlines() if "orders: order" in line]
    assert len(lines) == CAPACITY - 1
    first = RECORDS - CAPACITY + 1
    assert lines[0].split()[2:] == [
        logging.getLevelName((10, 20, 30, 40)[first % 4]),
        "orders:",
        "order",
        str(first),
        "\u2713",
    ]
    assert lines[-1].endswith(f"order {RECORDS - 1} \u2713") and " ERROR " in lines[-1]
    assert "cut: 88 of 320 bytes kept" in section
    assert main(["show", "--json", str(path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    (region,) = [r for r in doc["regions"] if r["id"] == info["region"]]
    value = region["decoded"]["value"]
    assert region["kind_name"] == "RING" and region["decoded"]["type_name"] == "ring:log"
    assert [r["text"] for r in value["records"][:-1]] == expected
    assert value["written"] == RECORDS + 1 and value["records"][-1]["cut"] is True

    # gdb, reading the core on its own, finds the newest record's text in the ring
    gdb = require_tool("gdb")
    slot = (RECORDS + 1 - 1) % CAPACITY - 1  # record RECORDS, the last of the plain ones
    address = record.address + 64 + slot * 128 + 40
    out = subprocess.run(
        [gdb, "-nx", "-batch", "-c", str(path), "-ex", f"x/s {address:#x}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
    assert f"order {RECORDS - 1}" in out


CONFIGURED = r"""
import logging, logging.config, os
import kmemdump
kmemdump.init(table=True, pycoreinfo=False)
logging.config.dictConfig({
    "version": 1,
    "formatters": {"short": {"format": "%(levelname)s %(name)s %(message)s"}},
    "handlers": {"ring": {"class": "kmemdump.logging.RingHandler", "capacity": 8, "record_size": 96,
                          "formatter": "short", "level": "INFO", "name": "applog"}},
    "root": {"handlers": ["ring"], "level": "DEBUG"},
})
handler = logging.getLogger().handlers[0]
logging.debug("not kept: below the handler's level")
for i in range(3):
    logging.getLogger("app.db").info("query %d", i)
logging.shutdown()  # closes the handler: the records stay for the dump
region = kmemdump.default_registry().get(handler.region_id)
send({"region": region.id, "name": region.name, "flags": int(region.flags), "kind": int(region.kind)})
block()
"""


def test_dictconfig_builds_the_handler_and_close_keeps_the_records(table_dir: Path, dump_dir: Path) -> None:
    info, path = _death_dump(table_dir, dump_dir, CONFIGURED, [])
    assert (info["name"], info["kind"], info["flags"]) == ("applog", RegionKind.RING, RegionFlags.PERSISTENT)
    with Dump.open(path) as dump:
        ring = parse_ring(dump.region_bytes(dump.region(info["region"])))
    assert [r.text for r in ring.records] == [f"INFO app.db query {i}" for i in range(3)]
    assert (ring.capacity, ring.slot_size) == (8, 96)


def test_threads_log_concurrently_without_losing_or_tearing_records(table_dir: Path) -> None:
    code = r"""
import logging, threading
import kmemdump
from kmemdump.logging import RingHandler
from kmemdump.formats.ring import parse_ring
kmemdump.init(table=True, pycoreinfo=False)
handler = RingHandler(capacity=4000, record_size=64)
log = logging.getLogger("t"); log.addHandler(handler); log.setLevel(logging.INFO); log.propagate = False
def work(n):
    for i in range(1000):
        log.info("%d-%d", n, i)
threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
for t in threads: t.start()
for t in threads: t.join()
ring = parse_ring(handler.ring.view)
send({"texts": [r.text for r in ring.records], "seqs": [r.seq for r in ring.records], "torn": ring.torn})
"""
    with spawn_child(code) as child:
        out = child.recv(timeout=60)
    assert out["seqs"] == list(range(1, 4001)) and out["torn"] == 0
    assert sorted(out["texts"]) == sorted(f"t: {n}-{i}" for n in range(4) for i in range(1000))
    for n in range(4):  # each thread's records in its own order
        mine = [t for t in out["texts"] if t.startswith(f"t: {n}-")]
        assert mine == [f"t: {n}-{i}" for i in range(1000)]


def test_a_forked_child_writes_its_own_ring_never_its_parents(table_dir: Path) -> None:
    code = r"""
import json, logging, os
import kmemdump
from kmemdump.logging import RingHandler
from kmemdump.formats.ring import parse_ring
kmemdump.init(table=True, pycoreinfo=False)
handler = RingHandler(capacity=16, record_size=64)
log = logging.getLogger("f"); log.addHandler(handler); log.setLevel(logging.INFO); log.propagate = False
log.info("parent before")
parent_address = kmemdump.default_registry().get(handler.region_id).address
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    log.info("child, before a table of its own")  # dropped: no collector could read it
    before = handler.region_id
    kmemdump.init(table=True, pycoreinfo=False)
    log.info("child")
    region = kmemdump.default_registry().get(handler.region_id)
    texts = [x.text for x in parse_ring(handler.ring.view).records]
    os.write(w, json.dumps({"before": before, "address": region.address, "texts": texts}).encode())
    kmemdump.shutdown()
    os._exit(0)
os.waitpid(pid, 0)
child = json.loads(os.read(r, 4096))
log.info("parent after")
send({"parent": [x.text for x in parse_ring(handler.ring.view).records], "child": child,
      "parent_address": parent_address})
"""
    with spawn_child(code) as child:
        out = child.recv(timeout=60)
    assert out["parent"] == ["f: parent before", "f: parent after"]
    assert out["child"]["before"] == 0 and out["child"]["texts"] == ["f: child"]
    assert out["child"]["address"] != out["parent_address"]  # a ring in the child's own arena


def test_free_returns_the_memory_and_later_records_are_dropped(table_dir: Path) -> None:
    code = r"""
import logging
import kmemdump
from kmemdump.logging import RingHandler
from kmemdump.producer import arena
kmemdump.init(table=True, pycoreinfo=False)
handler = RingHandler(capacity=4, record_size=64)
rid = handler.region_id
before = arena.current().free_bytes
registered = rid in kmemdump.default_registry()
handler.free()
handler.handle(logging.LogRecord("x", logging.INFO, "f", 1, "dropped", None, None))  # no error
send({"registered": registered, "after": rid in kmemdump.default_registry(), "id": handler.region_id,
      "freed": arena.current().free_bytes - before})
"""
    with spawn_child(code) as child:
        out = child.recv(timeout=60)
    assert out == {"registered": True, "after": False, "id": 0, "freed": 4 * 64 + 64}


def test_bad_geometry_is_a_clear_error() -> None:
    from kmemdump.errors import InvalidRegionError
    from kmemdump.logging import RingHandler

    with pytest.raises(InvalidRegionError, match="capacity"):
        RingHandler(capacity=0)
    with pytest.raises(InvalidRegionError, match="record size"):
        RingHandler(capacity=4, record_size=50)

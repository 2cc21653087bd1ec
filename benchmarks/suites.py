"""The benchmark suites. Each returns rows measured side by side with their baseline."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from benchmarks.capture import capture_levels
from benchmarks.clicost import cli_cost
from benchmarks.deathdump import death_dumps
from benchmarks.disk import disk
from benchmarks.idle import idle_collector
from benchmarks.procs import MiB
from benchmarks.procs import dump_in_process
from benchmarks.procs import producer
from benchmarks.procs import tmpdir
from benchmarks.rows import Row
from benchmarks.rows import skipped
from benchmarks.scale import small_regions
from benchmarks.shipping import shipping
from benchmarks.timing import Config
from benchmarks.timing import best_ns_per_op

__all__ = ["SUITES"]

# --- producer hot paths ---------------------------------------------------------------------


def registration(config: Config) -> list[Row]:
    from kmemdump.producer.backends.table import SharedTableBackend
    from kmemdump.producer.registry import Registry

    rows = []
    with tmpdir("kmd-bench-") as tables:
        registry = Registry(capacity=201)
        backend = SharedTableBackend(tables, capacity=201)
        registry.backend_register(backend)
        target = bytearray(64)
        address = ctypes.addressof(ctypes.c_char.from_buffer(target))

        def pairs(n: int) -> None:
            reg, unreg = registry.register, registry.unregister
            for _ in range(n):
                unreg(reg(address, 64))

        def dict_pairs(n: int) -> None:
            d: dict[int, object] = {}
            for i in range(n):
                d[i] = target
                del d[i]

        def buffer_pairs(n: int) -> None:
            reg, unreg = registry.register, registry.unregister
            for _ in range(n):
                unreg(reg(target))

        ours = best_ns_per_op(pairs, 20_000)
        base = best_ns_per_op(dict_pairs, 20_000)
        rows.append(
            Row(
                "register+unregister, table backend (raw address)",
                ours,
                "ns",
                base,
                "dict insert+delete",
                ours / base,
                "≤ 1.5 µs (~35x the dict pair)",
                ours <= 1500,
            )
        )
        bare = Registry(capacity=201)  # the no-op backend: what the registry itself costs

        def bare_pairs(n: int) -> None:
            reg, unreg = bare.register, bare.unregister
            for _ in range(n):
                unreg(reg(address, 64))

        alone = best_ns_per_op(bare_pairs, 20_000)
        rows.append(
            Row(
                "register+unregister, no-op backend (the registry alone)",
                alone,
                "ns",
                base,
                "dict insert+delete",
                alone / base,
                "(informational)",
                None,
            )
        )
        buf = best_ns_per_op(buffer_pairs, 20_000)
        rows.append(
            Row(
                "register+unregister, table backend (bytearray)",
                buf,
                "ns",
                base,
                "dict insert+delete",
                buf / base,
                "(informational)",
                None,
            )
        )
        backend.close()

        # flatness: the same pair with 10 and with 10,000 regions already registered
        costs = {}
        for live in (10, 10_000):
            big = Registry(capacity=10_001)
            big_backend = SharedTableBackend(tables / f"flat{live}", capacity=10_001)
            big.backend_register(big_backend)
            for i in range(live):
                big.register(address + i, 1)

            def big_pairs(n: int, big: Registry = big) -> None:
                reg, unreg = big.register, big.unregister
                for _ in range(n):
                    unreg(reg(address, 64))

            costs[live] = best_ns_per_op(big_pairs, 20_000)
            big_backend.close()
        ratio = costs[10_000] / costs[10]
        rows.append(
            Row(
                "register+unregister with 10,000 regions live",
                costs[10_000],
                "ns",
                costs[10],
                "with 10 live",
                ratio,
                "flat: 0.8-1.2x",
                0.8 <= ratio <= 1.2,
            )
        )
    return rows


def feeding(config: Config) -> list[Row]:
    from kmemdump.producer import heartbeat
    from kmemdump.producer.backends.table import SharedTableBackend

    with tmpdir("kmd-bench-") as tables:
        backend = SharedTableBackend(tables)
        heartbeat.attach(backend)
        feed = heartbeat.feed

        def feeds(n: int) -> None:
            for _ in range(n):
                feed()

        clock = time.monotonic_ns

        def clocks(n: int) -> None:
            for _ in range(n):
                clock()

        ours = best_ns_per_op(feeds, 200_000)
        base = best_ns_per_op(clocks, 200_000)
        heartbeat.detach()
        backend.close()
    return [Row("feed()", ours, "ns", base, "time.monotonic_ns() call", ours / base, "≤ 150 ns", ours <= 150)]


LOGGING = r"""
import gc, json, logging, logging.handlers, os, sys, time
import kmemdump
from kmemdump.logging import RingHandler
kmemdump.init(table=True, pycoreinfo=False)
n, rounds = int(sys.argv[1]), int(sys.argv[2])
formats = {"full": "%(asctime)s %(levelname)s %(name)s: %(message)s", "plain": "%(message)s"}
loggers = {}
memories = []
for style, fmt in formats.items():
    memory = logging.handlers.MemoryHandler(10**9, flushLevel=logging.CRITICAL + 1)
    memories.append(memory)
    for name, handler in (
        ("ring", RingHandler(capacity=1000, record_size=256)),
        ("stream", logging.StreamHandler(open(os.devnull, "w"))),
        ("null", logging.NullHandler()),  # the logger's own cost: a record made, no handler work
        ("memory", memory),  # keeps the record object, formats nothing
    ):
        handler.setFormatter(logging.Formatter(fmt))
        loggers[f"{name} {style}"] = logging.Logger("bench")
        loggers[f"{name} {style}"].addHandler(handler)


def per_record(log):
    t0 = time.perf_counter_ns()
    for i in range(n):
        log.info("request %d served in %.3f ms", i, 1.5)
    return (time.perf_counter_ns() - t0) / n


best = {name: float("inf") for name in loggers}
gc.disable()
for r in range(rounds):  # short rounds, interleaved in alternating order; the best of each side
    for name in sorted(loggers, reverse=bool(r % 2)):
        best[name] = min(best[name], per_record(loggers[name]))
    for memory in memories:
        memory.buffer.clear()
print(json.dumps(best))
"""


def logging_handler(config: Config) -> list[Row]:
    with tmpdir("kmd-bench-") as tables:
        env = dict(os.environ, KMEMDUMP_DIR=str(tables))
        out = subprocess.run(
            [sys.executable, "-c", LOGGING, "2000", "40"], capture_output=True, text=True, env=env, check=True
        ).stdout
    best = json.loads(out)
    rows = []
    for style, what in (("full", "asctime, level, name, message"), ("plain", "message only")):
        ours, base = best[f"ring {style}"], best[f"stream {style}"]
        rows.append(
            Row(
                f"RingHandler, one record ({what})",
                ours,
                "ns",
                base,
                "StreamHandler to /dev/null",
                ours / base,
                "≤ 1x the StreamHandler",
                ours <= base,
            )
        )
    # What the handler itself adds to a record, beyond the logger's work (a NullHandler's record):
    # the figure a record's total cost dilutes.
    null, memory = best["null full"], best["memory full"]
    own, stream_own = best["ring full"] - null, best["stream full"] - null
    rows.append(
        Row(
            "RingHandler's own cost beyond a NullHandler (full line)",
            own,
            "ns",
            stream_own,
            "StreamHandler's, to /dev/null",
            own / stream_own,
            "≤ 1x the StreamHandler's",
            own <= stream_own,
            f"NullHandler record {null:.0f} ns",
        )
    )
    rows.append(
        Row(
            "RingHandler beside a MemoryHandler (full line)",
            best["ring full"],
            "ns",
            memory,
            "MemoryHandler: keeps the object, formats nothing",
            best["ring full"] / memory,
            "— (formatting is the difference)",
            None,
        )
    )
    return rows


# --- the collector ------------------------------------------------------------------------------


def detection(config: Config) -> list[Row]:
    from kmemdump.collector.dump import DumpOptions
    from kmemdump.collector.watch import Watcher

    timeout = 0.5
    lateness = []
    with tmpdir("kmd-bench-") as tables, tmpdir("kmd-bench-detect-", disk=True) as disk:
        for _ in range(3):
            with producer(tables, MiB, timeout=timeout) as target:
                watcher = Watcher([tables], DumpOptions(disk, stacks=False))
                watcher.scan()
                done = None
                while done is None:
                    for event in watcher.step():
                        if event.dump is not None:
                            done = time.monotonic_ns()
                watcher.close()
                deadline = target.last_feed_ns + int(timeout * 1e9)
                lateness.append(done - deadline)
    worst = max(lateness)
    return [
        Row(
            "frozen process (1 MiB) dumped after its deadline (worst of 3)",
            worst,
            "ns",
            timeout * 1e9,
            "the watchdog timeout",
            None,
            "≤ timeout + 50 ms",
            worst <= 50e6,
        )
    ]


def gcore(config: Config) -> list[Row]:
    exe = shutil.which("gcore")
    if exe is None:
        return [skipped("against gcore", "gcore not installed (Debian: apt-get install gdb)")]
    with (
        tmpdir("kmd-bench-") as tables,
        tmpdir("kmd-bench-gcore-", disk=True) as dumps,
        producer(tables, MiB, heap=1024 * MiB) as target,
    ):
        pid = target.pid
        ours, result = dump_in_process(target, dumps, stacks=False)
        ours_size = result.path.stat().st_size
        t0 = time.perf_counter_ns()
        subprocess.run([exe, "-o", str(dumps / "gcore"), str(pid)], capture_output=True, check=True)
        theirs = time.perf_counter_ns() - t0
        theirs_size = sum(p.stat().st_size for p in dumps.glob("gcore*"))
        os.kill(pid, signal.SIGCONT)
    size_ratio = theirs_size / ours_size
    speed_ratio = theirs / ours
    return [
        Row(
            "dump size, 1 GiB heap with 1 MiB registered",
            ours_size,
            "B",
            theirs_size,
            "gcore",
            1 / size_ratio,
            "≥ 500x smaller",
            size_ratio >= 500,
        ),
        Row(
            "dump time, 1 GiB heap with 1 MiB registered",
            ours,
            "ns",
            theirs,
            "gcore",
            1 / speed_ratio,
            "≥ 50x faster",
            speed_ratio >= 50,
        ),
    ]


SUITES: dict[str, Callable[[Config], list[Row]]] = {
    "registration": registration,
    "feed": feeding,
    "logging": logging_handler,
    "disk": disk,
    "small-regions": small_regions,
    "death-dump": death_dumps,
    "detection": detection,
    "idle-collector": idle_collector,
    "cli": cli_cost,
    "capture-levels": capture_levels,
    "gcore": gcore,
    "shipping": shipping,
}
"""Every suite by name; ``--only NAME`` runs one."""

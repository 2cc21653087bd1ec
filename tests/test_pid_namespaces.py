"""PID namespaces (every container): a collector outside finds the producer, or says it cannot see it.

The producer runs under ``unshare --pid --fork --mount-proc``, where it is pid 1, as in a container;
the table directory is shared, as a sidecar or a per-host collector shares ``/dev/shm``. The other way
round, the collector runs in a namespace of its own and cannot see a producer outside: it must leave
the live table alone, and still dump the death once the producer is gone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers_child import spawn_child
from helpers_watch import KMEMDUMP
from helpers_watch import WatchProcess
from kmemdump.procinfo import ns_pids

pytestmark = pytest.mark.slow

UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc"]


def _unshare_or_skip() -> None:
    try:
        probe = subprocess.run([*UNSHARE, "true"], check=False, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        pytest.skip("unshare (util-linux) is not installed")
    if probe.returncode != 0:
        pytest.skip(f"unshare --pid is refused here (needs root or user namespaces): {probe.stderr.strip()}")


PRODUCER = r"""
import json, os, sys, time
import kmemdump
report = kmemdump.init(table=True, watchdog=float(sys.argv[1]))
orders = kmemdump.alloc(64, name="orders")
orders[:9] = b"order 42!"
journal = kmemdump.alloc(64, name="journal", persistent=True)
journal[:14] = b"journal line 1"
print(json.dumps({"pid": os.getpid(), "table": report.table}), flush=True)
for line in sys.stdin:          # one beat per line; at EOF it stops feeding: a hang
    kmemdump.feed()
time.sleep(3600)
"""


def _show(dump: str) -> dict:  # type: ignore[type-arg]
    out = subprocess.run([*KMEMDUMP, "show", "--json", dump], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def _region_text(shown: dict, name: str) -> str:  # type: ignore[type-arg]
    region = next(r for r in shown["regions"] if r["name"] == name)
    return str(region["decoded"]["value"]["text"])


def test_a_producer_in_its_own_pid_namespace_is_dumped_by_a_collector_outside(
    tmp_path: Path, table_dir: Path, dump_dir: Path
) -> None:
    _unshare_or_skip()
    with WatchProcess(table_dir, dump_dir) as watch:
        producer = subprocess.Popen(
            [*UNSHARE, sys.executable, "-c", PRODUCER, "1.5"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert producer.stdout is not None and producer.stdin is not None
            info = json.loads(producer.stdout.readline())
            assert info["pid"] == 1  # as in a container
            assert Path(info["table"]).name.startswith("1-")
            # the collector adopts it under the pid it has out here, found through NSpid
            line = watch.wait_for("watch pid=")
            host = int(line.split()[1].removeprefix("pid="))
            assert host != 1 and ns_pids(host)[-1] == 1
            producer.stdin.write("beat\n")
            producer.stdin.flush()
            # dump on request from out here, by the pid seen out here
            request = subprocess.run(
                [*KMEMDUMP, "dump", str(host), "--json", "--dir", str(dump_dir)],
                check=False,
                capture_output=True,
                text=True,
            )
            assert request.returncode == 0, request.stderr
            requested = json.loads(request.stdout)["path"]
            producer.stdin.close()  # no more beats: the producer hangs
            hang = watch.wait_for(f"hang pid={host} ")
            assert Path(info["table"]).exists()  # never taken for dead while it lives
            os.kill(host, signal.SIGKILL)
            death = watch.wait_for(f"death pid={host} ")
        finally:
            producer.kill()
            producer.wait()
            if producer.stdout is not None:
                producer.stdout.close()
    assert not [x for x in watch.lines if x.startswith(("skip", "error"))], watch.lines
    assert list(table_dir.iterdir()) == []  # the death was handled: table and arena removed
    for dump in (requested, hang.split("dump=")[1].split()[0]):
        shown = _show(dump)
        assert shown["dump"]["pid"] == host
        assert _region_text(shown, "orders") == "order 42!"
        assert "pid: 1 " in shown["banner"]  # the producer's own view of itself
    dead = _show(death.split("dump=")[1].split()[0])
    assert _region_text(dead, "journal") == "journal line 1"  # from the arena, after the SIGKILL


def test_a_collector_that_cannot_see_the_producer_leaves_its_table_alone_until_it_dies(
    table_dir: Path, dump_dir: Path
) -> None:
    _unshare_or_skip()
    code = PRODUCER.replace("for line in sys.stdin:", "send({'up': True})\nfor line in []:")
    with spawn_child(code, args=["60"]) as producer:
        assert producer.recv() == {"up": True}
        (table,) = table_dir.glob("*.table")
        # a collector in a pid namespace of its own: the producer is not in its /proc at all
        with WatchProcess(table_dir, dump_dir, prefix=[*UNSHARE, "--kill-child"]) as watch:
            skipped = watch.wait_for("skip pid=")
            assert "left alone" in skipped and "cannot see" in skipped
            assert table.exists() and list(dump_dir.iterdir()) == []  # no false death, nothing deleted
            producer.kill()  # now it is gone: its liveness lock went with it
            death = watch.wait_for("death pid=")
        assert "dump=" in death
    assert not table.exists()
    (dump,) = dump_dir.iterdir()
    assert _region_text(_show(str(dump)), "journal") == "journal line 1"


# A pod with a shared process namespace: the application and the sidecar collector are both in one
# pid namespace of their own (not the test's), and share the table directory.
POD = r"""
import json, os, subprocess, sys
producer = subprocess.Popen([sys.executable, "-c", sys.argv[1], "1.0"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
watch = subprocess.Popen([sys.executable, "-m", "kmemdump.cli", "watch", "--tables", sys.argv[2],
                          "--dir", sys.argv[3]], stderr=subprocess.PIPE, text=True)
app = json.loads(producer.stdout.readline())
lines = []
for line in watch.stderr:
    lines.append(line.strip())
    if line.startswith("hang "):
        break
producer.kill(); producer.wait()
watch.terminate(); watch.wait()
print(json.dumps({"app": app, "app_pid": producer.pid, "lines": lines}))
"""


def test_a_sidecar_collector_in_the_pods_shared_pid_namespace(table_dir: Path, dump_dir: Path) -> None:
    _unshare_or_skip()
    pod = subprocess.run(
        [*UNSHARE, sys.executable, "-c", POD, PRODUCER, str(table_dir), str(dump_dir)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert pod.returncode == 0, pod.stderr
    report = json.loads(pod.stdout)
    pid = report["app_pid"]  # the same pid for both containers of the pod
    assert report["app"]["pid"] == pid and pid != os.getpid()
    assert any(line.startswith(f"watch pid={pid} ") for line in report["lines"]), report["lines"]
    hang = report["lines"][-1]
    assert hang.startswith(f"hang pid={pid} "), report["lines"]
    shown = _show(hang.split("dump=")[1].split()[0])
    assert _region_text(shown, "orders") == "order 42!"

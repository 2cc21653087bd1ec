"""The gunicorn recipe of docs/recipes.md, run as written, against a real gunicorn with 2 sync workers.

The configuration is the very ``gunicorn.conf.py`` block of the recipe. A real `kmemdump watch` runs
beside the server; the test waits until it adopted the master's and both workers' tables (explicit
readiness) before it sends anything.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers_watch import KMEMDUMP
from helpers_watch import WatchProcess

pytest.importorskip("gunicorn", reason="gunicorn comes with the test extra: pip install -e '.[test]'")

pytestmark = pytest.mark.slow

RECIPES = Path(__file__).resolve().parents[1] / "docs" / "recipes.md"

APP = r"""
import threading

LOCK_A, LOCK_B = threading.Lock(), threading.Lock()
HOLDS_B = threading.Event()


def restock():
    with LOCK_B:
        HOLDS_B.set()
        with LOCK_A:           # held by transfer: never
            pass


def transfer():
    with LOCK_A:
        threading.Thread(target=restock, name="restock").start()
        HOLDS_B.wait()
        with LOCK_B:           # held by restock: never
            pass


def app(environ, start_response):
    if environ["PATH_INFO"] == "/deadlock":
        transfer()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok\n"]
"""


def _recipe(title: str = "# gunicorn.conf.py\n") -> str:
    blocks = re.findall(r"```python\n(.*?)```", RECIPES.read_text(), re.S)
    (conf,) = [b for b in blocks if b.startswith(title)]
    return conf


class Gunicorn:
    def __init__(
        self, tmp_path: Path, *, conf: str | None = None, workers: int = 2, worker_class: str = "sync"
    ) -> None:
        self.count = workers
        (tmp_path / "app.py").write_text(APP)
        (tmp_path / "gunicorn.conf.py").write_text(conf if conf is not None else _recipe())
        self.socket = tmp_path / "gunicorn.sock"
        self.popen = subprocess.Popen(
            [
                sys.executable, "-m", "gunicorn", "--config", str(tmp_path / "gunicorn.conf.py"),
                "--workers", str(workers), "--worker-class", worker_class,
                *(["--threads", "4"] if worker_class == "gthread" else []),
                "--timeout", "120", "--graceful-timeout", "5",
                "--bind", f"unix:{self.socket}", "app:app",
            ],
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip

    def workers(self) -> list[int]:
        """The worker pids gunicorn logs, once both are booted (its own readiness lines)."""
        assert self.popen.stderr is not None
        pids: list[int] = []
        while len(pids) < self.count:
            line = self.popen.stderr.readline()
            assert line, "gunicorn exited"
            found = re.search(r"Booting worker with pid: (\d+)", line)
            if found:
                pids.append(int(found.group(1)))
        return pids

    def request(self, path: str) -> socket.socket:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(60)
        conn.connect(str(self.socket))
        conn.sendall(f"GET {path} HTTP/1.0\r\nHost: test\r\n\r\n".encode())
        return conn

    def get(self, path: str) -> bytes:
        with self.request(path) as conn:
            return b"".join(iter(lambda: conn.recv(65536), b""))

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        try:
            return self.popen.wait(timeout=60)
        finally:
            if self.popen.poll() is None:
                self.popen.kill()
                self.popen.wait()
            if self.popen.stderr is not None:
                self.popen.stderr.close()


def _show(dump: Path) -> dict:  # type: ignore[type-arg]
    out = subprocess.run([*KMEMDUMP, "show", "--json", str(dump)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_a_deadlocked_worker_is_dumped_alone_with_its_own_pid_banner_request_and_stack(
    tmp_path: Path, table_dir: Path, dump_dir: Path
) -> None:
    server = Gunicorn(tmp_path)
    try:
        with WatchProcess(table_dir, dump_dir) as watch:
            workers = server.workers()
            for pid in (server.popen.pid, *workers):
                watch.wait_for(f"watch pid={pid} ")
            assert server.get("/").endswith(b"ok\n")  # a request that finishes: no dump
            stuck = server.request("/deadlock")
            line = watch.wait_for(lambda text: text.startswith("hang pid="))
            hung = int(line.split()[1].removeprefix("pid="))
            assert hung in workers
            idle = next(pid for pid in workers if pid != hung)
            assert server.get("/").endswith(b"ok\n")  # the other worker still serves
            watch.stop()  # before gunicorn's stop: its SIGKILL of the stuck worker is a real death
            stuck.close()
    finally:
        server.stop()
    dumps = list(dump_dir.iterdir())
    assert len(dumps) == 1, [d.name for d in dumps]  # not the master, not the idle worker
    assert not any(f"kmemdump-{pid}-" in d.name for d in dumps for pid in (server.popen.pid, idle))
    shown = _show(dumps[0])
    assert shown["dump"]["pid"] == hung and shown["dump"]["reason"] == "hang"
    assert f"pid: {hung} " in shown["banner"]  # the worker's own banner, not the master's
    request = next(r for r in shown["regions"] if r["name"] == "request")
    assert "GET /deadlock" in json.dumps(request["decoded"])
    threads = {t["name"]: [f["function"] for f in t["frames"]] for t in shown["stacks"]["threads"]}
    assert any("transfer" in frames for frames in threads.values()), threads
    assert any("restock" in frames for frames in threads.values()), threads


def test_stopping_gunicorn_with_sigterm_leaves_no_table_and_no_dump(
    tmp_path: Path, table_dir: Path, dump_dir: Path
) -> None:
    server = Gunicorn(tmp_path)
    try:
        with WatchProcess(table_dir, dump_dir) as watch:
            workers = server.workers()
            for pid in (server.popen.pid, *workers):
                watch.wait_for(f"watch pid={pid} ")
            for _ in range(4):
                assert server.get("/").endswith(b"ok\n")
            assert server.stop(signal.SIGTERM) == 0
            for pid in (server.popen.pid, *workers):
                watch.wait_for(f"exit pid={pid} ")
    finally:
        server.stop()
    assert list(dump_dir.iterdir()) == [], watch.lines
    assert list(table_dir.iterdir()) == []


def test_a_deadlocked_request_of_a_threaded_worker_is_dumped_while_others_finish(
    tmp_path: Path, table_dir: Path, dump_dir: Path
) -> None:
    """gthread: a request deadlocks while others come and finish in the same worker. With the sync
    recipe's hooks the finished requests disarm the shared watchdog and the hang is never dumped."""
    server = Gunicorn(
        tmp_path, conf=_recipe("# gunicorn.conf.py (threaded workers)\n"), workers=1, worker_class="gthread"
    )
    try:
        with WatchProcess(table_dir, dump_dir) as watch:
            (worker,) = server.workers()
            for pid in (server.popen.pid, worker):
                watch.wait_for(f"watch pid={pid} ")
            stuck = server.request("/deadlock")
            for _ in range(3):
                assert server.get("/").endswith(b"ok\n")  # requests beside it finish
            line = watch.wait_for(lambda text: text.startswith("hang pid="), timeout=15)
            assert int(line.split()[1].removeprefix("pid=")) == worker
            watch.stop()
            stuck.close()
    finally:
        server.stop()
    (dump,) = dump_dir.iterdir()
    shown = _show(dump)
    assert shown["dump"]["pid"] == worker and shown["dump"]["reason"] == "hang"
    assert (
        shown["dump"]["heartbeat_age_s"] < 2 * 2.0 + 1.0
    )  # within twice HANG_AFTER of its start, and a beat
    requests = next(r for r in shown["regions"] if r["name"] == "requests")
    assert "GET /deadlock" in json.dumps(requests["decoded"])
    threads = {t["name"]: [f["function"] for f in t["frames"]] for t in shown["stacks"]["threads"]}
    assert any("transfer" in frames for frames in threads.values()), threads
    assert any("restock" in frames for frames in threads.values()), threads

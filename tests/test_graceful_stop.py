"""A graceful stop is not a death: SIGTERM and SIGINT leave no table and no dump; a crash still does.

Each producer runs beside a real `kmemdump watch`; the test waits until the collector adopted the
producer's table (its "watch" line) before it signals the producer, so "no dump" means the collector
saw the process go and chose not to dump it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers_child import spawn_child
from helpers_watch import WatchProcess

pytestmark = pytest.mark.slow

PRODUCER = r"""
import os, signal, sys, time
import kmemdump
mode = sys.argv[1]
if mode == "app-handler":
    def on_term(signum, frame):
        print("the application's handler ran", flush=True)
        sys.exit(3)
    signal.signal(signal.SIGTERM, on_term)
if mode == "sigint-dfl":
    signal.signal(signal.SIGINT, signal.SIG_DFL)
report = kmemdump.init(table=True, watchdog=60.0)
journal = kmemdump.alloc(64, name="journal", persistent=True)
journal[:5] = b"hello"
send({"table": report.table, "term": repr(signal.getsignal(signal.SIGTERM)),
      "int": repr(signal.getsignal(signal.SIGINT))})
while True:
    time.sleep(0.05)
    kmemdump.feed()
"""


def _files(table_dir: Path, pid: int) -> list[str]:
    return sorted(p.name for p in table_dir.iterdir() if p.name.startswith(f"{pid}-"))


@pytest.mark.parametrize(
    ("mode", "signum", "status"),
    [
        ("default", signal.SIGTERM, -signal.SIGTERM),  # killed by SIGTERM, as without kmemdump
        ("sigint-dfl", signal.SIGINT, -signal.SIGINT),
        # Python's own KeyboardInterrupt: atexit runs, then the interpreter dies of SIGINT as before
        ("default", signal.SIGINT, -signal.SIGINT),
        ("app-handler", signal.SIGTERM, 3),  # the application's handler ran, and chose the status
    ],
)
def test_a_graceful_stop_leaves_no_table_and_no_dump(
    table_dir: Path, dump_dir: Path, mode: str, signum: int, status: int
) -> None:
    with WatchProcess(table_dir, dump_dir) as watch, spawn_child(PRODUCER, args=[mode]) as child:
        info = child.recv()
        assert len(_files(table_dir, child.pid)) == 2  # table and arena
        watch.wait_for(f"watch pid={child.pid} ")
        child.popen.send_signal(signum)
        assert child.wait() == status
        watch.wait_for(f"exit pid={child.pid} ")
        assert _files(table_dir, child.pid) == []
        output = child.stderr_text()
    assert list(dump_dir.iterdir()) == [], watch.lines
    if mode == "app-handler":
        assert "on_term" in info["term"]  # kmemdump did not replace it
        assert "the application's handler ran" in output
    if mode == "default":
        assert "_on_stop" in info["term"]


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGABRT, signal.SIGSEGV])
def test_a_crash_is_still_dumped(table_dir: Path, dump_dir: Path, signum: int) -> None:
    with WatchProcess(table_dir, dump_dir) as watch, spawn_child(PRODUCER, args=["default"]) as child:
        child.recv()
        watch.wait_for(f"watch pid={child.pid} ")
        child.popen.send_signal(signum)
        assert child.wait() == -signum
        line = watch.wait_for(f"death pid={child.pid} ")
    assert "dump=" in line
    (dump,) = dump_dir.iterdir()
    assert f"kmemdump-{child.pid}-" in dump.name and "-death-" in dump.name


def test_stop_signals_false_leaves_the_signals_alone(table_dir: Path) -> None:
    code = r"""
import signal, kmemdump
kmemdump.init(table=True, stop_signals=False)
send({"term": signal.getsignal(signal.SIGTERM) is signal.SIG_DFL})
"""
    with spawn_child(code) as child:
        assert child.recv() == {"term": True}


def test_init_from_another_thread_installs_no_handler(table_dir: Path) -> None:
    code = r"""
import signal, threading, kmemdump
thread = threading.Thread(target=lambda: kmemdump.init(table=True))
thread.start(); thread.join()
send({"term": signal.getsignal(signal.SIGTERM) is signal.SIG_DFL})
"""
    with spawn_child(code) as child:
        assert child.recv() == {"term": True}


# A pool worker blocks in C where a signal does not interrupt it (a second lock of a pthread mutex
# it holds): the Python-level handler can never run there. This is also what a worker looks like
# that took SIGTERM just before blocking on its pool's lock: Pool.terminate() must not hang on it.
POOL_STUCK_IN_C = r"""
import ctypes, multiprocessing, os, sys, time
import kmemdump

def setup():
    kmemdump.init(table=True)

def stuck(_):
    libc = ctypes.CDLL(None)
    mutex = ctypes.create_string_buffer(64)     # all zero: PTHREAD_MUTEX_INITIALIZER
    libc.pthread_mutex_lock(mutex)
    with open(sys.argv[1], "w") as ready:
        ready.write(f"{os.getpid()} {kmemdump.current_backend().path}\n")
    libc.pthread_mutex_lock(mutex)              # never returns, whatever signal arrives

if __name__ == "__main__":
    pool = multiprocessing.get_context("fork").Pool(1, initializer=setup)
    pool.map_async(stuck, [0])
    while not os.path.getsize(sys.argv[1]):
        time.sleep(0.01)
    started = time.monotonic()
    pool.terminate()                            # SIGTERM to the worker, then waits for it
    pool.join()
    print(f"{time.monotonic() - started:.3f}")
"""


def test_pool_terminate_ends_a_worker_whose_main_thread_cannot_run_python(
    tmp_path: Path, table_dir: Path, dump_dir: Path
) -> None:
    script, ready = tmp_path / "app.py", tmp_path / "ready"
    script.write_text(POOL_STUCK_IN_C)
    ready.write_text("")
    with WatchProcess(table_dir, dump_dir) as watch:
        app = subprocess.run(
            [sys.executable, str(script), str(ready)], capture_output=True, text=True, timeout=60, check=False
        )
        assert app.returncode == 0, app.stderr
    assert float(app.stdout) < 10  # the worker ended on SIGTERM; Pool.terminate() returned
    assert not Path(ready.read_text().split()[1]).exists()  # its table went with it
    assert list(dump_dir.iterdir()) == [], watch.lines


def _blocked(pid: int, tid: int) -> int:
    for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
        if line.startswith("SigBlk:"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no SigBlk line for thread {tid}")


def test_kmemdumps_threads_leave_process_signals_to_the_program(table_dir: Path) -> None:
    """A SIGTERM the kernel gave to the feeder thread while the main thread slept in a deadlocked
    lock.acquire() woke nothing: after a hang dump the program was now and then not ended by SIGTERM.
    kmemdump's own threads block every signal sent to the process as a whole (not the faults, which
    faulthandler must see in the thread that faulted), so the main thread takes it and the program ends."""
    code = r"""
import os, threading, kmemdump
kmemdump.init(table=True, watchdog=60.0)
feeder = kmemdump.start_feeder(0.05)
while feeder.native_id is None:
    pass
lock = threading.Lock()
lock.acquire()
send({"main": threading.get_native_id(), "feeder": feeder.native_id})
lock.acquire()  # deadlocked: only a signal handler ends it
"""
    with spawn_child(code) as child:
        ids = child.recv()
        feeder, main = _blocked(child.pid, ids["feeder"]), _blocked(child.pid, ids["main"])
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM, signal.SIGUSR1):
            assert feeder & (1 << (signum - 1)), f"the feeder thread takes {signum.name}"
            assert not main & (1 << (signum - 1)), f"the main thread blocks {signum.name}"
        for signum in (signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGABRT):
            assert not feeder & (1 << (signum - 1)), f"the feeder thread blocks {signum.name}"
        child.popen.send_signal(signal.SIGTERM)
        assert child.wait() == -signal.SIGTERM
    assert list(table_dir.iterdir()) == []  # the graceful stop's handler ran: no table left

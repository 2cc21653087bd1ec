"""multiprocessing and ProcessPoolExecutor workers that publish tables end without a death dump.

The program is the recipe of docs/recipes.md: the parent publishes a table, each worker calls
``kmemdump.init(table=True, watchdog=...)`` in the pool's initializer. A real `kmemdump watch` runs
beside it; the test waits until the collector adopted every worker's table, then lets the pool
finish (its workers end with ``os._exit``, or with SIGTERM from ``Pool.terminate()``), and checks
that nothing was dumped and nothing was left behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers_watch import WatchProcess

pytestmark = pytest.mark.slow

APP = r"""
import concurrent.futures, json, multiprocessing, os, sys
import kmemdump


def setup():
    kmemdump.init(table=True, watchdog=30.0)


def task(n):
    kmemdump.feed()
    return os.getpid(), str(kmemdump.current_backend().path), n * n


if __name__ == "__main__":
    kind, method, ending = sys.argv[1:4]
    kmemdump.init(table=True)
    context = multiprocessing.get_context(method)
    if kind == "pool":
        pool = context.Pool(2, initializer=setup)
        results = pool.map(task, range(8))
    else:
        pool = concurrent.futures.ProcessPoolExecutor(2, mp_context=context, initializer=setup)
        results = list(pool.map(task, range(8)))
    assert [r[2] for r in results] == [n * n for n in range(8)]
    print(json.dumps(sorted({(pid, table) for pid, table, _ in results})), flush=True)
    sys.stdin.readline()                   # the test lets the pool end once the collector saw it
    if kind == "executor":
        pool.shutdown(wait=True)           # workers return and end with os._exit
    elif ending == "close":
        pool.close()                       # workers return and end with os._exit
        pool.join()
    else:
        pool.terminate()                   # workers get SIGTERM
        pool.join()
    print("done", flush=True)
"""


@pytest.mark.parametrize(
    ("kind", "method", "ending"),
    [
        ("pool", "fork", "close"),
        ("pool", "spawn", "terminate"),
        ("pool", "fork", "terminate"),
        ("executor", "fork", "shutdown"),
        ("executor", "spawn", "shutdown"),
    ],
)
def test_a_pool_whose_tasks_finish_normally_leaves_no_dump(  # noqa: PLR0917 - fixtures and parameters
    tmp_path: Path, table_dir: Path, dump_dir: Path, kind: str, method: str, ending: str
) -> None:
    script = tmp_path / "app.py"
    script.write_text(APP)
    with WatchProcess(table_dir, dump_dir) as watch:
        app = subprocess.Popen(
            [sys.executable, str(script), kind, method, ending],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert app.stdout is not None and app.stdin is not None
            line = app.stdout.readline()
            assert line, app.stderr.read() if app.stderr else ""
            workers = json.loads(line)
            assert workers, "no task ran in a worker"
            for pid, table in workers:
                assert Path(table).name.startswith(f"{pid}-")  # each worker published its own table
                watch.wait_for(f"watch pid={pid} ")
            watch.wait_for(f"watch pid={app.pid} ")
            app.stdin.write("go\n")
            app.stdin.flush()
            out, err = app.communicate(timeout=60)
        finally:
            if app.poll() is None:
                app.kill()
                app.communicate()
        assert app.returncode == 0, err
        assert out.strip() == "done"
        for pid, _ in workers:
            watch.wait_for(f"exit pid={pid} ")
        watch.wait_for(f"exit pid={app.pid} ")
    assert list(dump_dir.iterdir()) == [], watch.lines
    assert list(table_dir.iterdir()) == []
    assert not [line for line in watch.lines if line.startswith(("death", "error", "skip"))], watch.lines

"""The shadow: a crashing process's memory outlives it in a traced CLONE_VM process that never runs.

A C program registers a buffer and crashes (SIGSEGV) under an ExitTracer. At its exit stop the
tracer has made a shadow; once the program is let go and is gone (its pidfd says so), the buffer is
still read, byte for byte, through the shadow, which holds no descriptor of the program's. Dropping
the shadow ends it. A program under a seccomp filter, and a signal it catches, get no shadow.
"""

from __future__ import annotations

import os
import platform
import select
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import require_tool
from helpers_child import spawn_child
from kmemdump.collector.shadow import fatal_by_default
from kmemdump.collector.tracer import ExitStop
from kmemdump.collector.tracer import ExitTracer
from kmemdump.memory.process import ProcessMemory

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(platform.machine() != "x86_64", reason="shadows are made on x86_64 only"),
]

PROGRAM = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef SECCOMP
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#endif

static unsigned char buffer[1 << 20];

int main(int argc, char **argv) {
    for (size_t i = 0; i < sizeof buffer; i++) buffer[i] = (unsigned char)(i * 31 + 7);
    int keep = open(argv[1], O_RDONLY);  /* a descriptor the shadow must not keep open */
#ifdef SECCOMP
    struct sock_filter allow[] = {BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)};
    struct sock_fprog prog = {1, allow};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)) {
        perror("seccomp");
        return 2;
    }
#endif
    printf("ready %d %p %d\n", (int)getpid(), (void *)buffer, keep);
    fflush(stdout);
    char go;
    if (read(0, &go, 1) != 1) return 3;
    *(volatile int *)0 = 1;
    return 4;
}
"""


def _build(where: Path, *defines: str) -> Path:
    cc = require_tool("cc")
    source = where / "program.c"
    source.write_text(PROGRAM)
    exe = where / ("program" + "".join(d.lower() for d in defines))
    subprocess.run(
        [cc, "-O1", "-D_GNU_SOURCE", *(f"-D{d}" for d in defines), "-o", str(exe), str(source)],
        check=True,
        capture_output=True,
    )
    return exe


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    where = tmp_path_factory.mktemp("shadow")
    return {"plain": _build(where), "seccomp": _build(where, "SECCOMP")}


class _Crash:
    """The program under an ExitTracer, crashed; the test holds its exit stop."""

    def __init__(self, exe: Path) -> None:
        self.proc = subprocess.Popen([str(exe), exe], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdout is not None and self.proc.stdin is not None
        _, pid, address, _fd = self.proc.stdout.readline().split()
        self.pid, self.address = int(pid), int(address, 16)
        self.tracer = ExitTracer(self.pid)
        self.tracer.start()
        self.pidfd = os.pidfd_open(self.pid)
        self.proc.stdin.write(b"g")
        self.proc.stdin.close()

    def exit_stop(self) -> ExitStop:
        while True:
            select.select([self.tracer.fileno()], [], [], 30)
            stop = self.tracer.poll_exit()
            if stop is not None:
                return stop
            assert not self.tracer.done, self.tracer.failure

    def gone(self) -> bool:
        return bool(select.select([self.pidfd], [], [], 30)[0])

    def close(self) -> int | None:
        self.tracer.close()
        assert self.tracer.wait(30)
        os.close(self.pidfd)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        if self.tracer.status is not None:
            self.proc.returncode = os.waitstatus_to_exitcode(self.tracer.status)  # reaped by the tracer
        return self.tracer.status


@pytest.fixture
def crash(programs: dict[str, Path]) -> Iterator[dict[str, _Crash]]:
    made: dict[str, _Crash] = {}
    yield made
    for run in made.values():
        run.close()


def _expected() -> bytes:
    return bytes((i * 31 + 7) & 0xFF for i in range(1 << 20))


def test_the_memory_outlives_the_process_in_its_shadow(
    programs: dict[str, Path], crash: dict[str, _Crash]
) -> None:
    # GIVEN a C program crashing under the tracer
    run = crash["plain"] = _Crash(programs["plain"])
    stop = run.exit_stop()
    # THEN its exit stop comes with a shadow, and the signal is the program's own
    assert stop.shadow is not None and stop.shadow != run.pid
    assert stop.death().signal == signal.SIGSEGV and stop.death().address == 0
    shadow = stop.shadow
    assert os.listdir(f"/proc/{shadow}/fd") == []  # it keeps none of the program's descriptors
    assert Path(f"/proc/{shadow}/status").read_text().count("TracerPid:\t0") == 0  # traced: never runs
    # WHEN the program is let go, it is gone at once ...
    run.tracer.resume()
    assert run.gone()
    # ... and its memory is still there, read through the shadow
    with ProcessMemory(shadow) as mem:
        assert mem.read(run.address, 1 << 20) == _expected()
    # dropping the shadow ends it; the program's status is the crash's
    run.tracer.drop_shadow()
    status = run.close()
    del crash["plain"]
    assert status is not None and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSEGV
    assert not Path(f"/proc/{shadow}").exists()


def test_a_process_under_a_seccomp_filter_gets_no_shadow(
    programs: dict[str, Path], crash: dict[str, _Crash]
) -> None:
    run = crash["seccomp"] = _Crash(programs["seccomp"])
    stop = run.exit_stop()
    assert stop.shadow is None  # held at its exit stop instead, its memory read there
    with ProcessMemory(run.pid) as mem:
        assert mem.read(run.address, 1 << 20) == _expected()
    assert stop.death().signal == signal.SIGSEGV


def test_only_signals_that_end_the_process_count_as_fatal() -> None:
    code = (
        "import signal\n"
        "signal.signal(signal.SIGUSR1, lambda *a: None)\n"
        "signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
    )
    with spawn_child(code + "send('ready')\nblock()") as child:
        assert child.recv() == "ready"
        assert not fatal_by_default(child.pid, signal.SIGUSR1)  # caught
        assert not fatal_by_default(child.pid, signal.SIGHUP)  # ignored
        assert not fatal_by_default(child.pid, signal.SIGCHLD)  # ignored by default
        assert not fatal_by_default(child.pid, signal.SIGSTOP)  # stops
        assert fatal_by_default(child.pid, signal.SIGUSR2)
        assert fatal_by_default(child.pid, signal.SIGABRT)
        assert fatal_by_default(child.pid, signal.SIGRTMIN + 3)
    assert not fatal_by_default(2**22 + 12345, signal.SIGSEGV)  # no such process: cannot be told

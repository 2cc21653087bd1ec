"""`kmemdump run --trace-exit`: the child is held at its exit and its death dump holds its memory.

Every test runs the real command line on a real program. The program talks to the test through
pipes: it inherits `kmemdump run`'s stdin (the test's "go" lines) and stdout (its readiness lines,
read with a deadline). What cannot be signalled through a pipe (a process or a thread reaching a
stopped state) is polled from /proc with a deadline.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from pathlib import Path

import pytest

from kmemdump.collector.dump import DumpOptions
from kmemdump.collector.dump import dump_target
from kmemdump.collector.stacks import find_py_spy
from kmemdump.collector.tracer import ExitTracer
from kmemdump.collector.tracer import describe_status
from kmemdump.errors import KmemdumpError
from kmemdump.formats.corenotes import REGISTER_NAMES
from kmemdump.formats.corenotes import pc_and_sp
from kmemdump.formats.dumpmeta import DumpMeta
from kmemdump.formats.dumpmeta import decode_meta
from kmemdump.formats.elf import EM_X86_64
from kmemdump.formats.elf import KMD_NOTE_META
from kmemdump.formats.elf import NT_PRSTATUS
from kmemdump.formats.elf import parse_prstatus
from kmemdump.inspect.dumpfile import Dump
from kmemdump.memory.core import CoreImage
from kmemdump.procinfo import process_start_time

pytestmark = pytest.mark.slow

KMEMDUMP = (sys.executable, "-m", "kmemdump.cli")
DEADLINE = 30.0

# The supervised program. `kmemdump run` starts kmemdump inside it (banner, layout, table, feeder);
# it registers a buffer of its own with known bytes, then does what its mode says.
PROGRAM = r"""
import ctypes, os, signal, sys, threading
import kmemdump

def say(*words):
    sys.stdout.write(" ".join(str(w) for w in words) + "\n")
    sys.stdout.flush()

mode = sys.argv[1]
mine = kmemdump.alloc(64, name="mine")
mine[:] = bytes(range(100, 164))

if mode in ("exec-main", "exec-thread"):
    started = threading.Barrier(3)
    def idle():
        started.wait()
        threading.Event().wait()
    for i in range(2):
        threading.Thread(target=idle, daemon=True).start()
    started.wait()
    def become():
        os.execv(sys.executable, [sys.executable, sys.argv[0], "segv"])
    if mode == "exec-main":
        become()
    threading.Thread(target=become).start()
    threading.Event().wait()
if mode == "spawn":  # a child process of the supervised program: kmemdump stays out of it
    import subprocess
    probe = "import os, sys; print('kmemdump' in sys.modules, os.environ.get('KMEMDUMP_AUTOINIT'))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    say("child", out.stdout.strip())
    sys.exit(0)
if mode == "exit3":
    os._exit(3)
if mode == "segv":
    ctypes.string_at(0)
if mode == "abort":
    os.abort()
if mode == "clean":
    sys.exit(0)
if mode == "selfstop":
    say("stopping", os.getpid())
    os.kill(os.getpid(), signal.SIGSTOP)
    # the test creates this file just before its SIGCONT: it exists if we were held until then
    say("continued", os.path.exists(os.path.join(os.path.dirname(sys.argv[0]), "cont-sent")))
    sys.exit(0)

say("ready", os.getpid())
if mode == "threads":
    sys.stdin.readline()  # the test saw the process traced: these threads start after the seize
    started, tids, hold = threading.Barrier(4), [], threading.Event()
    def work(i):
        buf = kmemdump.alloc(32, name=f"thread{i}")
        buf[:] = bytes([i + 1]) * 32
        tids.append(threading.get_native_id())
        started.wait()
        hold.wait()
    for i in range(3):
        threading.Thread(target=work, args=(i,), daemon=True).start()
    started.wait()
    say("threads", *tids)
if mode == "answer":
    sys.stdin.readline()
    say("alive")
if mode in ("worker-segv", "worker-exit3", "main-abort"):
    started, idle = threading.Barrier(4), []
    def wait_forever():
        idle.append(threading.get_native_id())
        started.wait()
        threading.Event().wait()
    for i in range(3):
        threading.Thread(target=wait_forever, daemon=True).start()
    started.wait()
    def crash():
        if mode == "worker-segv":
            ctypes.string_at(0)
        if mode == "worker-exit3":
            os._exit(3)
        os.abort()
    if mode == "main-abort":
        say("crasher", threading.get_native_id(), *idle)
        sys.stdin.readline()
        crash()
    def worker():
        say("crasher", threading.get_native_id(), *idle)
        sys.stdin.readline()
        crash()
    threading.Thread(target=worker).start()
    threading.Event().wait()
sys.stdin.readline()  # block until the test says otherwise
"""

# The same command line with the tracer's seize refused as the kernel refuses it under Yama
# ptrace_scope=3, a seccomp filter, or in a container without the right to trace.
REFUSED_SEIZE = r"""
import errno, sys
import kmemdump.collector.tracer as tracer
def seize(tid, options=tracer.TRACE_OPTIONS):
    raise PermissionError(errno.EPERM, "Operation not permitted")
tracer.seize = seize
from kmemdump.cli.main import main
sys.exit(main(sys.argv[1:]))
"""

# The tracer breaks at its first stop: it must detach and leave the child to the plain supervisor.
BROKEN_TRACER = r"""
import sys
import kmemdump.collector.tracer as tracer
def on_stop(self, tid, status):
    raise RuntimeError("simulated tracer bug")
tracer.ExitTracer._on_stop = on_stop
from kmemdump.cli.main import main
from kmemdump.inspect.dumpfile import Dump
sys.exit(main(sys.argv[1:]))
"""


@functools.cache
def _ptrace_refusal() -> str | None:
    """Why this machine does not let us trace our own child, or None when it does."""
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    tracer = ExitTracer(child.pid)
    try:
        tracer.start()
    except KmemdumpError as err:
        child.kill()
        child.wait()
        return str(err)
    finally:
        assert child.stdin is not None
        child.stdin.close()  # it ends by itself now; the tracer reaps it
    tracer.close()  # do not hold its exit
    assert tracer.wait(DEADLINE) and tracer.status is not None
    child.returncode = os.waitstatus_to_exitcode(tracer.status)  # Popen must not wait: it is reaped
    return None


@pytest.fixture
def traceable() -> None:
    why = _ptrace_refusal()
    if why is not None:
        pytest.skip(f"this machine does not allow tracing a child: {why}")


class Run:
    """`kmemdump run --trace-exit ... -- python PROGRAM MODE`, with pipes to the program."""

    def __init__(self, tmp_path: Path, dump_dir: Path, mode: str, *options: str, cli: Sequence[str]) -> None:
        script = tmp_path / "program.py"
        script.write_text(PROGRAM)
        self.stderr_path = tmp_path / "run.stderr"
        self.dump_dir = dump_dir
        self.child_pid: int | None = None
        with open(self.stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen(
                [*cli, "run", "--dir", str(dump_dir), *options, "--", sys.executable, str(script), mode],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
            )
        self._pending = b""

    def line(self) -> list[str]:
        """The program's next stdout line, split; fails (with the collector's log) at EOF or timeout."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + DEADLINE
        while b"\n" not in self._pending:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise AssertionError(f"no line from the program in {DEADLINE} s; log:\n{self.log()}")
            chunk = os.read(fd, 4096)
            if not chunk:
                raise AssertionError(f"the program's stdout closed; log:\n{self.log()}")
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        words = line.decode().split()
        if len(words) == 2 and words[0] in ("ready", "stopping"):
            self.child_pid = int(words[1])
        return words

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def finish(self) -> int:
        """Close the program's stdin and wait for `kmemdump run` to end; its exit code."""
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.close()
        return self.proc.wait(timeout=DEADLINE)

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def dumps(self) -> list[Path]:
        return sorted(self.dump_dir.iterdir())

    def close(self) -> None:
        if self.proc.poll() is None:
            if self.child_pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.child_pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)  # in case a test left it stopped
            self.proc.kill()
            self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


@pytest.fixture
def start(tmp_path: Path, dump_dir: Path, table_dir: Path) -> Iterator[Callable[..., Run]]:
    # table_dir: run publishes its program's table in the default directory, this test's own
    runs: list[Run] = []

    def start(mode: str, *options: str, cli: Sequence[str] = KMEMDUMP, trace: bool = True) -> Run:
        run = Run(tmp_path, dump_dir, mode, *(("--trace-exit",) if trace else ()), *options, cli=cli)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.close()


def _meta(dump: Path) -> tuple[DumpMeta, dict[str, bytes]]:
    """The dump's metadata, and the stored bytes of each region by name."""
    with CoreImage.open(dump) as core:
        note = core.note("KMEMDUMP", KMD_NOTE_META)
        assert note is not None
        meta = decode_meta(note.desc)
        data = {r.name: core.read(r.address, r.stored) for r in meta.regions if r.stored}
    return meta, data


def _only_dump(run: Run) -> tuple[DumpMeta, dict[str, bytes]]:
    dumps = run.dumps()
    assert len(dumps) == 1, (dumps, run.log())
    return _meta(dumps[0])


def _assert_full_death_dump(meta: DumpMeta, data: dict[str, bytes], pid: int) -> None:
    assert meta.reason == "death" and meta.pid == pid
    assert not meta.partial and (meta.stopped, meta.held) == (True, "exit stop")
    for region in meta.regions:
        assert (region.status, region.source) == ("ok", "process"), region
        assert region.stored == region.size
    names = {r.name for r in meta.regions}
    assert {"banner", "pycoreinfo", "mine"} <= names
    assert data["mine"] == bytes(range(100, 164))  # an ordinary heap buffer, not in the arena


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


def _thread_states(pid: int) -> list[str]:
    states = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_bytes()
            states.append(stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3].decode())
    return states


def _tracer_of(tid: int) -> int:
    for line in Path(f"/proc/{tid}/status").read_text().splitlines():
        if line.startswith("TracerPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no TracerPid for {tid}")


# --- deaths ------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("traceable")
def test_sigkill_is_dumped_from_the_live_memory(start: Callable[..., Run]) -> None:
    run = start("block")
    _, pid = run.line()
    os.kill(int(pid), signal.SIGKILL)
    assert run.finish() == 128 + signal.SIGKILL
    meta, data = _only_dump(run)
    _assert_full_death_dump(meta, data, int(pid))
    assert f"death pid={pid} process exiting (killed by SIGKILL)" in run.log()
    assert b"program.py" in data["banner"]
    # the main thread's registers, every one of them, read by the tracer at the exit stop
    with CoreImage.open(run.dumps()[0]) as core:
        statuses = [parse_prstatus(n.desc, core.machine) for n in core.notes if n.type == NT_PRSTATUS]
        registers = dict(zip(REGISTER_NAMES[core.machine], statuses[0].registers, strict=True))
    assert statuses[0].pid == int(pid)
    pc, sp = pc_and_sp(core.machine, statuses[0].registers)
    assert pc and sp
    if core.machine == EM_X86_64:  # not in /proc/PID/task/TID/syscall: only ptrace gives it
        assert registers["fs_base"] and registers["cs"]
    assert meta.death is not None
    assert (meta.death.signal, meta.death.source, meta.death.si_code) == (signal.SIGKILL, "exit stop", None)


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("traceable")
def test_os_exit_is_dumped_and_its_code_passed_through(start: Callable[..., Run]) -> None:
    run = start("exit3")
    assert run.finish() == 3
    meta, data = _only_dump(run)
    _assert_full_death_dump(meta, data, meta.pid)
    assert "(exit code 3)" in run.log()
    assert meta.death is not None and (meta.death.exit_code, meta.death.signal) == (3, None)
    assert meta.death.describe() == "exit code 3"


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("traceable")
def test_sigsegv_is_dumped_and_reported_as_a_signal_death(start: Callable[..., Run]) -> None:
    run = start("segv")
    assert run.finish() == 128 + signal.SIGSEGV
    meta, data = _only_dump(run)
    _assert_full_death_dump(meta, data, meta.pid)
    assert "killed by SIGSEGV" in run.log()
    death = meta.death
    assert death is not None and death.signal == signal.SIGSEGV
    # the kernel's siginfo, read by the tracer when the signal was delivered: a read at address 0
    assert (death.si_code, death.address, death.sender_pid) == (1, 0, None)
    assert death.describe() == "killed by SIGSEGV (SEGV_MAPERR: address not mapped, at 0x0)"
    (dump,) = run.dumps()
    gdb = shutil.which("gdb")
    if gdb is None:
        pytest.skip("gdb is not installed: the rest reads the dump with it")
    out = subprocess.run(
        [gdb, "-nx", "-batch", "-c", str(dump), "-ex", "p $_siginfo._sifields._sigfault.si_addr"],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert "Program terminated with signal SIGSEGV, Segmentation fault." in out.stdout, out
    assert "(void *) 0x0" in out.stdout


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("traceable")
def test_abort_is_named_with_who_sent_it(
    start: Callable[..., Run], capsys: pytest.CaptureFixture[str]
) -> None:
    from kmemdump.cli.main import main

    run = start("abort")
    assert run.finish() == 128 + signal.SIGABRT
    meta, data = _only_dump(run)
    _assert_full_death_dump(meta, data, meta.pid)
    death = meta.death
    assert death is not None and death.signal == signal.SIGABRT and death.source == "exit stop"
    # abort() raises SIGABRT itself (tgkill): the sender is the process
    assert (death.si_code, death.sender_pid) == (-6, meta.pid)
    (dump,) = run.dumps()
    assert main(["show", str(dump), "--plain"]) == 0
    reason = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("Reason:"))
    assert f"death: killed by SIGABRT (sent by pid {meta.pid}" in reason
    assert main(["show", str(dump), "--json"]) == 0
    described = json.loads(capsys.readouterr().out)["dump"]["death"]
    assert described["signal_name"] == "SIGABRT" and described["description"].startswith("killed by SIGABRT")


@pytest.mark.timeout(60)
def test_without_trace_exit_the_wait_status_names_the_death(start: Callable[..., Run]) -> None:
    run = start("exit3", trace=False)
    assert run.finish() == 3
    meta, _ = _only_dump(run)
    assert meta.reason == "death" and meta.death is not None
    assert (meta.death.exit_code, meta.death.source) == (3, "wait status")


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("traceable")
def test_clean_exit_is_not_dumped(start: Callable[..., Run]) -> None:
    run = start("clean")
    assert run.finish() == 0
    assert run.dumps() == []
    assert "death" not in run.log() and "error" not in run.log()


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("traceable")
def test_threads_started_after_the_seize_are_traced_and_dumped(start: Callable[..., Run]) -> None:
    run = start("threads")
    _, pid_text = run.line()
    pid = int(pid_text)
    _wait_for(lambda: _tracer_of(pid) != 0, "the seize")
    tracer = _tracer_of(pid)
    run.send("go\n")
    words = run.line()
    assert words[0] == "threads" and len(words) == 4
    for tid in words[1:]:
        assert _tracer_of(int(tid)) == tracer  # followed through PTRACE_O_TRACECLONE
    os.kill(pid, signal.SIGKILL)
    assert run.finish() == 128 + signal.SIGKILL
    meta, data = _only_dump(run)
    _assert_full_death_dump(meta, data, pid)
    for i in range(3):
        assert data[f"thread{i}"] == bytes([i + 1]) * 32


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("traceable")
@pytest.mark.parametrize(
    ("mode", "status", "signo"),
    [
        ("worker-segv", 128 + signal.SIGSEGV, signal.SIGSEGV),
        ("worker-exit3", 3, 0),
        ("main-abort", 128 + signal.SIGABRT, signal.SIGABRT),
    ],
)
def test_every_thread_is_held_at_its_exit_stop_and_the_crashing_one_comes_first(
    start: Callable[..., Run], mode: str, status: int, signo: int
) -> None:
    # GIVEN a program with three idle threads and one that is about to crash (or call exit)
    run = start(mode)
    _, pid_text = run.line()
    pid = int(pid_text)
    words = run.line()
    assert words[0] == "crasher", words
    crasher, idle = int(words[1]), [int(w) for w in words[2:]]
    for tid in (pid, crasher, *idle):
        _wait_for(lambda tid=tid: _tracer_of(tid) != 0, f"thread {tid} traced")
    # WHEN it dies
    run.send("go\n")
    assert run.finish() == status
    # THEN every thread was held at its exit stop with all its registers, the crasher's note first
    meta, _ = _only_dump(run)
    assert meta.death is not None and (meta.death.tid, meta.death.late) == (crasher, ())
    with CoreImage.open(run.dumps()[0]) as core:
        statuses = [parse_prstatus(n.desc, core.machine) for n in core.notes if n.type == NT_PRSTATUS]
        names = REGISTER_NAMES[core.machine]
        machine = core.machine
    tids = [s.pid for s in statuses]
    assert tids[0] == crasher and sorted(tids) == sorted({pid, crasher, *idle, *tids[1:]}), tids
    assert {pid, crasher, *idle} <= set(tids)
    for note in statuses:
        registers = dict(zip(names, note.registers, strict=True))
        assert all(pc_and_sp(machine, note.registers)), (note.pid, registers)
        if machine == EM_X86_64:  # only a ptrace stop gives these: not /proc/PID/task/TID/syscall
            assert registers["fs_base"] and registers["cs"], (note.pid, registers)
        assert note.cursig == signo, note
    if find_py_spy() is not None and machine == EM_X86_64:
        # at a fatal signal py-spy reads the shadow (one task sharing the memory), yet the stacks name
        # the real threads: their native ids are the notes' tids, and only the thread that ended the
        # process was running
        assert meta.stacks == "ok" and meta.shadow == (signo != 0), meta
        with Dump.open(run.dumps()[0]) as dump:
            assert dump.stacks is not None
            by_id = {t.native_id: t for t in dump.stacks.threads}
        assert set(by_id) <= set(tids) and {pid, crasher, *idle} <= set(by_id), (by_id, tids)
        if meta.shadow:
            assert by_id[crasher].active and not any(by_id[t].active for t in idle), by_id
    gdb = shutil.which("gdb")
    if gdb is None:
        pytest.skip("gdb is not installed: the rest reads the dump with it")
    out = subprocess.run(
        [gdb, "-nx", "-batch", "-c", str(run.dumps()[0]), "-ex", "info threads"],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    current = next(line for line in out.stdout.splitlines() if line.startswith("*"))
    assert f"LWP {crasher}" in current, out.stdout  # gdb starts in the crashing thread


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("traceable")
@pytest.mark.parametrize("mode", ["exec-main", "exec-thread"])
def test_an_exec_is_not_a_death_and_the_new_programs_death_is_dumped(
    start: Callable[..., Run], mode: str
) -> None:
    # GIVEN a program with threads that execs (from its main thread, or from another one) into a
    # program that segfaults
    run = start(mode)
    # WHEN it has run to its end
    assert run.finish() == 128 + signal.SIGSEGV
    # THEN one dump: the new program's death, read with the table the new program published
    meta, data = _only_dump(run)
    _assert_full_death_dump(meta, data, meta.pid)
    assert meta.death is not None and meta.death.signal == signal.SIGSEGV
    assert b"program.py segv" in data["banner"]
    assert "segv" in meta.argv
    log = run.log()
    assert "exec: a new program replaced" in log
    assert "exit code 0" not in log, log


@pytest.mark.timeout(60)
def test_the_supervised_programs_children_are_left_alone(start: Callable[..., Run]) -> None:
    run = start("spawn", trace=False)
    assert run.line() == ["child", "False", "None"]
    assert run.finish() == 0


# --- job control and hangs under the tracer ----------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("traceable")
def test_a_program_that_stops_itself_stays_stopped_until_sigcont(
    start: Callable[..., Run], tmp_path: Path
) -> None:
    run = start("selfstop")
    _, pid_text = run.line()
    pid = int(pid_text)
    # every thread parked in the group-stop (PTRACE_LISTEN), not only the one that took the signal
    _wait_for(lambda: set(_thread_states(pid)) == {"t"}, "the group-stop")
    (tmp_path / "cont-sent").touch()
    os.kill(pid, signal.SIGCONT)
    assert run.line() == ["continued", "True"]  # it ran again only after our SIGCONT
    assert run.finish() == 0
    assert run.dumps() == []


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("traceable")
def test_the_collectors_own_stop_and_continue_leave_a_traced_program_running(
    start: Callable[..., Run], tmp_path: Path, table_dir: Path
) -> None:
    run = start("answer")
    _, pid_text = run.line()
    pid = int(pid_text)
    _wait_for(lambda: _tracer_of(pid) != 0, "the seize")
    start_time = process_start_time(pid)
    (table,) = table_dir.glob(f"{pid}-{start_time}.table")  # where `dump PID` finds it too
    # WHEN another collector dumps it on request: SIGSTOP (a group-stop the tracer must keep),
    # the copy, py-spy --nonblocking, SIGCONT (a wake-up the tracer must pass on)
    result = dump_target(pid, start_time, table, reason="request", options=DumpOptions(tmp_path))
    meta = result.meta
    assert (meta.stopped, meta.held) == (True, "SIGSTOP")
    assert all(r.status == "ok" for r in meta.regions)
    if find_py_spy() is not None:
        assert meta.stacks == "ok"
    # THEN the program runs on, still traced
    run.send("go\n")
    assert run.line() == ["alive"]
    assert _tracer_of(pid) != 0
    assert run.finish() == 0
    assert run.dumps() == []


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("traceable")
def test_hang_detection_still_works_under_the_tracer(start: Callable[..., Run]) -> None:
    run = start("block", "--timeout", "0.5", "--after-hang", "kill")
    _, pid = run.line()
    os.kill(int(pid), signal.SIGSTOP)  # a whole-process stall: the feeder thread stops too
    assert run.finish() == 128 + signal.SIGKILL
    meta, data = _only_dump(run)  # the hang; its kill is ours, so no second (death) dump
    assert meta.reason == "hang" and meta.pid == int(pid)
    assert data["mine"] == bytes(range(100, 164))
    assert f"hang pid={pid}" in run.log()


# --- without the tracer ----------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_refused_seize_falls_back_to_the_plain_supervisor(start: Callable[..., Run]) -> None:
    run = start("block", cli=(sys.executable, "-c", REFUSED_SEIZE))
    _, pid = run.line()
    assert _tracer_of(int(pid)) == 0
    os.kill(int(pid), signal.SIGKILL)
    assert run.finish() == 128 + signal.SIGKILL
    notes = [line for line in run.log().splitlines() if "--trace-exit" in line]
    assert len(notes) == 1, run.log()
    assert "unavailable: ptrace refused: Operation not permitted" in notes[0]
    assert "Yama ptrace_scope" in notes[0]
    meta, _ = _only_dump(run)  # the plain supervisor's death record: the heap is gone
    assert meta.reason == "death" and meta.partial
    assert next(r for r in meta.regions if r.name == "mine").status == "gone"


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("traceable")
def test_a_failing_tracer_detaches_and_the_plain_supervisor_takes_over(start: Callable[..., Run]) -> None:
    run = start("block", cli=(sys.executable, "-c", BROKEN_TRACER))
    _, pid_text = run.line()
    pid = int(pid_text)
    tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    _wait_for(lambda: all(_tracer_of(t) == 0 for t in tids), "every thread to be released")
    os.kill(pid, signal.SIGKILL)
    assert run.finish() == 128 + signal.SIGKILL
    assert "--trace-exit stopped (RuntimeError: simulated tracer bug)" in run.log()
    meta, _ = _only_dump(run)
    assert meta.reason == "death"


@pytest.mark.timeout(60)
def test_without_the_option_nothing_is_traced(start: Callable[..., Run]) -> None:
    run = start("block", trace=False)
    _, pid = run.line()
    assert _tracer_of(int(pid)) == 0
    os.kill(int(pid), signal.SIGKILL)
    assert run.finish() == 128 + signal.SIGKILL
    meta, _ = _only_dump(run)
    assert next(r for r in meta.regions if r.name == "mine").status == "gone"


# --- the exit status in words ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "text"),
    [
        (3 << 8, "exit code 3"),
        (0, "exit code 0"),
        (signal.SIGKILL, "killed by SIGKILL"),
        (signal.SIGSEGV | 0x80, "killed by SIGSEGV (core dumped)"),
    ],
)
def test_describe_status(status: int, text: str) -> None:
    assert describe_status(status) == text


def test_seizing_a_process_that_has_exited_is_a_typed_error() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # a zombie: the pid stays ours
        with pytest.raises(KmemdumpError) as info:
            ExitTracer(child.pid).start()
        assert isinstance(info.value.__cause__, OSError)
        assert info.value.__cause__.errno in (errno.ESRCH, errno.EPERM)
    finally:
        child.wait()

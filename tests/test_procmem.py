"""Reading a live child's memory: exact bytes, batches, unreadable pages, dead children, fallbacks."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import kmemdump
from helpers_child import Child
from helpers_child import spawn_child
from kmemdump.errors import AccessDeniedError
from kmemdump.errors import ProcessGoneError
from kmemdump.errors import UnreadableMemoryError
from kmemdump.memory import MemorySource
from kmemdump.memory import process as procmem
from kmemdump.memory.process import ProcessMemory
from kmemdump.procinfo import parse_start_time
from kmemdump.procinfo import process_cmdline
from kmemdump.procinfo import process_exe
from kmemdump.procinfo import process_start_time

PAGE = os.sysconf("SC_PAGE_SIZE")

# Buffers of random bytes, reported as {name: [address, hex]}.
BUFFERS_CHILD = """
import os
sizes = {"one": 1, "odd": 7, "page": 4096, "big": (1 << 20) + 3}
keep = {name: bytearray(os.urandom(size)) for name, size in sizes.items()}
send({name: [buffer_address(buf), buf.hex()] for name, buf in keep.items()})
block()
"""

# Three pages, the middle one PROT_NONE.
HOLE_CHILD = """
import ctypes, mmap, os
libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
page = mmap.PAGESIZE
area = mmap.mmap(-1, 3 * page)
area[:] = os.urandom(3 * page)
base = buffer_address(area)
content = area[:].hex()
if libc.mprotect(base + page, page, 0) != 0:
    raise OSError(ctypes.get_errno(), "mprotect")
send({"base": base, "hex": content})
block()
"""


@pytest.fixture
def buffers_child() -> Iterator[tuple[Child, dict[str, tuple[int, bytes]]]]:
    with spawn_child(BUFFERS_CHILD) as child:
        report = child.recv()
        yield child, {name: (address, bytes.fromhex(text)) for name, (address, text) in report.items()}


@pytest.fixture
def hole_child() -> Iterator[tuple[Child, int, bytes]]:
    with spawn_child(HOLE_CHILD) as child:
        report = child.recv()
        yield child, report["base"], bytes.fromhex(report["hex"])


@pytest.mark.parametrize("force_proc_mem", [False, True], ids=["process_vm_readv", "proc-pid-mem"])
def test_reads_exact_bytes_of_a_live_child(
    buffers_child: tuple[Child, dict[str, tuple[int, bytes]]], force_proc_mem: bool
) -> None:
    child, buffers = buffers_child
    with ProcessMemory(child.pid, force_proc_mem=force_proc_mem) as memory:
        assert isinstance(memory, MemorySource)
        for address, content in buffers.values():
            assert memory.read(address, len(content)) == content
        address, content = buffers["big"]
        assert memory.read(address + 1000, 5000) == content[1000:6000]
        got = memory.read_many([(a, len(c)) for a, c in buffers.values()])
        assert got == [c for _, c in buffers.values()]
        target = bytearray(4096)
        assert memory.read_into(buffers["page"][0], target) == 4096
        assert target == buffers["page"][1]


def test_more_than_iov_max_ranges_in_one_call(
    buffers_child: tuple[Child, dict[str, tuple[int, bytes]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    child, buffers = buffers_child
    address, content = buffers["big"]
    ranges = [(address + 97 * i, 1 + i % 50) for i in range(3000)]
    real = procmem._process_vm_readv
    assert real is not None
    counts: list[int] = []

    def counting(*args: int) -> int:  # pid, local, nlocal, remote, nremote, flags
        counts.append(args[4])
        return real(*args)

    monkeypatch.setattr(procmem, "_process_vm_readv", counting)
    with ProcessMemory(child.pid) as memory:
        got = memory.read_many(ranges)
    assert got == [content[a - address : a - address + n] for a, n in ranges]
    assert counts == [1024, 1024, 952]


@pytest.mark.parametrize("buffers", ["bytes", "bytearray"])
def test_unreadable_page_gives_the_prefix_and_later_ranges_still_read(
    hole_child: tuple[Child, int, bytes], monkeypatch: pytest.MonkeyPatch, buffers: str
) -> None:
    if buffers == "bytearray":  # the portable result buffers, used where the bytes layout check fails
        monkeypatch.setattr(procmem, "_buffers", procmem._BytearrayBuffers())
    child, base, content = hole_child
    with ProcessMemory(child.pid) as memory:
        got = memory.read_many(
            [
                (base, 3 * PAGE),  # stops where the PROT_NONE page begins
                (base + PAGE + 8, 16),  # inside it: nothing
                (base + 2 * PAGE, PAGE),  # after it: all of it
                (base + 100, 50),
                (base + PAGE - 10, 20),  # straddles the start of the hole
                (base + 2 * PAGE - 10, 20),  # straddles its end: starts unreadable
            ]
        )
        assert got == [
            content[:PAGE],
            b"",
            content[2 * PAGE :],
            content[100:150],
            content[PAGE - 10 : PAGE],
            b"",
        ]
        with pytest.raises(UnreadableMemoryError) as caught:
            memory.read(base + 10, 2 * PAGE)
        assert caught.value.context["readable"] == PAGE - 10
        assert caught.value.context["pid"] == child.pid
        assert memory.read_upto(base + PAGE, 10) == b""
        # a garbage length (too large to allocate) ends at the hole, without MemoryError
        assert memory.read_upto(base, 1 << 62) == content[:PAGE]


@pytest.mark.parametrize("force_proc_mem", [False, True], ids=["process_vm_readv", "proc-pid-mem"])
def test_ranges_given_as_columns_read_as_the_same_ranges_given_as_tuples(
    hole_child: tuple[Child, int, bytes], force_proc_mem: bool
) -> None:
    child, base, content = hole_child
    ranges = [
        (base + 8, 100, 0),
        (base + PAGE - 10, 20, 100),  # straddles the start of the hole: its prefix
        (base + PAGE + 8, 16, 120),  # inside it: nothing
        (base + 2 * PAGE, 64, 136),
        *((base + 2 * PAGE + 80 * i, 64, 200 + 64 * i) for i in range(1500)),  # more than IOV_MAX
    ]
    ranges = [(address, size, at) for address, size, at in ranges if address + size <= base + 3 * PAGE]
    length = max(offset + size for _, size, offset in ranges)
    with ProcessMemory(child.pid, force_proc_mem=force_proc_mem) as memory:
        by_tuples, by_columns = bytearray(b"\x01" * length), bytearray(b"\x01" * length)
        done = memory.read_scattered(ranges, by_tuples)
        columns = [list(column) for column in zip(*ranges, strict=True)]
        assert memory.read_columns(*columns, by_columns) == done
        assert by_columns == by_tuples
        if not force_proc_mem:  # /proc/PID/mem reads PROT_NONE pages
            assert done[1:3] == [10, 0]
        for (address, _, offset), got in zip(ranges, done, strict=True):
            assert by_columns[offset : offset + got] == content[address - base : address - base + got]
        with pytest.raises(ValueError, match="differ in length"):
            memory.read_columns([base], [1, 2], [0], bytearray(4))
        with pytest.raises(ValueError, match="does not fit"):
            memory.read_columns([base], [8], [0], bytearray(4))
        assert memory.read_columns([], [], [], bytearray(4)) == []


def test_proc_mem_reads_protected_pages(hole_child: tuple[Child, int, bytes]) -> None:
    child, base, content = hole_child
    with ProcessMemory(child.pid, force_proc_mem=True) as memory:
        assert memory.read(base, 3 * PAGE) == content  # /proc/PID/mem ignores PROT_NONE (FOLL_FORCE)


def test_invalid_ranges_are_empty_without_asking_the_kernel(
    buffers_child: tuple[Child, dict[str, tuple[int, bytes]]],
) -> None:
    child, buffers = buffers_child
    with ProcessMemory(child.pid) as memory:
        assert (
            memory.read_many([(-1, 10), (100, -5), (2**64, 8), (0, 0), (buffers["odd"][0], 0)]) == [b""] * 5
        )
        assert memory.read_upto(2**64 - 4, 100) == b""  # the last bytes of the address space
        with pytest.raises(UnreadableMemoryError) as caught:
            memory.read(0, 8)
        assert caught.value.context["readable"] == 0


def test_dead_child_is_gone(buffers_child: tuple[Child, dict[str, tuple[int, bytes]]]) -> None:
    child, buffers = buffers_child
    address, content = buffers["page"]
    memory = ProcessMemory(child.pid)
    fallback = ProcessMemory(child.pid, force_proc_mem=True)
    assert fallback.read(address, 16) == content[:16]  # opens /proc/PID/mem while alive
    os.kill(child.pid, signal.SIGKILL)
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # dead, not yet reaped: a zombie
    with pytest.raises(ProcessGoneError) as caught:
        memory.read(address, 16)
    assert caught.value.context["pid"] == child.pid
    with pytest.raises(ProcessGoneError):
        fallback.read_many([(address, 16)])  # its address space is gone
    child.kill()  # reaps it
    with pytest.raises(ProcessGoneError):
        memory.read_upto(address, 16)
    with pytest.raises(ProcessGoneError):
        ProcessMemory(child.pid, force_proc_mem=True).read(address, 16)
    with pytest.raises(ProcessGoneError):
        process_start_time(child.pid)
    with pytest.raises(ProcessGoneError):
        process_cmdline(child.pid)
    assert process_exe(child.pid) is None
    fallback.close()
    with pytest.raises(ProcessGoneError):
        ProcessMemory(0)


@pytest.mark.parametrize("refusal", [errno.ENOSYS, errno.EPERM], ids=["ENOSYS", "EPERM"])
def test_refused_system_call_falls_back_to_proc_mem(
    buffers_child: tuple[Child, dict[str, tuple[int, bytes]]], monkeypatch: pytest.MonkeyPatch, refusal: int
) -> None:
    child, buffers = buffers_child
    calls = 0

    def refused(*args: int) -> int:
        nonlocal calls
        calls += 1
        ctypes.set_errno(refusal)
        return -1

    monkeypatch.setattr(procmem, "_process_vm_readv", refused)
    with ProcessMemory(child.pid) as memory:
        assert "process_vm_readv" in repr(memory)
        got = memory.read_many([(a, len(c)) for a, c in buffers.values()])
        assert got == [c for _, c in buffers.values()]
        assert "/proc/PID/mem" in repr(memory)
        assert memory.read(*_first(buffers)) == buffers["one"][1]
        assert memory._mem_fd >= 0
    assert memory._mem_fd == -1
    assert calls == 1  # the refusal is remembered


def _first(buffers: dict[str, tuple[int, bytes]]) -> tuple[int, int]:
    address, content = buffers["one"]
    return address, len(content)


def _python_for_nobody() -> str | None:
    for python in (sys.executable, "/usr/bin/python3"):
        try:
            done = subprocess.run(
                [python, "-c", "pass"], user=65534, group=65534, capture_output=True, timeout=30, check=False
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if done.returncode == 0:
            return python
    return None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a reader as another user")
def test_another_users_process_is_access_denied(
    buffers_child: tuple[Child, dict[str, tuple[int, bytes]]],
) -> None:
    child, buffers = buffers_child
    python = _python_for_nobody()
    if python is None:
        pytest.skip("no Python that uid 65534 can run")
    source = str(Path(kmemdump.__file__).parent.parent)
    script = f"""
import json, sys
sys.path.insert(0, {source!r})
from kmemdump.memory.process import ProcessMemory
from kmemdump.errors import AccessDeniedError
try:
    ProcessMemory({child.pid}).read({buffers["page"][0]}, 16)
except AccessDeniedError as err:
    print(json.dumps({{"error": type(err).__name__, "pid": err.pid, "help": bool(err.help)}}))
"""
    done = subprocess.run(
        [python, "-c", script],
        user=65534,
        group=65534,
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        check=False,
    )
    if "No module named" in done.stderr:
        pytest.skip(f"uid 65534 cannot import kmemdump from {source}")
    assert json.loads(done.stdout) == {"error": AccessDeniedError.__name__, "pid": child.pid, "help": True}


# --- /proc identity -----------------------------------------------------------------------------------

NAMED_CHILD = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(15, ctypes.c_char_p(b"a) b) (c"), 0, 0, 0) != 0:  # PR_SET_NAME
    raise OSError(ctypes.get_errno(), "prctl")
send("named")
block()
"""


def test_start_time_of_a_process_whose_name_holds_parentheses() -> None:
    ticks = os.sysconf("SC_CLK_TCK")
    before = float(Path("/proc/uptime").read_text().split()[0])
    with spawn_child(NAMED_CHILD, args=["--flag", "two words"]) as child:
        assert child.recv() == "named"
        after = float(Path("/proc/uptime").read_text().split()[0])
        stat = Path(f"/proc/{child.pid}/stat").read_bytes()
        prefix = f"{child.pid} (a) b) (c) ".encode()
        assert stat.startswith(prefix)
        expected = int(stat[len(prefix) :].split()[19])  # field 22, counted past the known name
        started = process_start_time(child.pid)
        assert started == expected
        assert before - 1 <= started / ticks <= after + 1
        assert process_cmdline(child.pid)[-2:] == ["--flag", "two words"]
        assert process_cmdline(child.pid)[0] == sys.executable
        assert process_exe(child.pid) == os.path.realpath(sys.executable)


def test_parse_stat_start_time_on_canned_lines() -> None:
    tail = " S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 424242 20 21"
    assert parse_start_time(f"77 (plain){tail}".encode()) == 424242
    assert parse_start_time(f"77 (x) ) (y z){tail}".encode()) == 424242
    assert parse_start_time(f"77 (new\nline)){tail}\n".encode()) == 424242
    with pytest.raises(ValueError):
        parse_start_time(b"77 no parenthesis")
    with pytest.raises(ValueError):
        parse_start_time(b"77 (short) S 1 2")


def test_start_time_identifies_this_process() -> None:
    stat = Path("/proc/self/stat").read_bytes()
    assert process_start_time(os.getpid()) == int(stat[stat.rindex(b")") + 1 :].split()[19])


# --- the helper itself ------------------------------------------------------------------------------


def _other_pythons() -> list[str]:
    # the interpreters this machine kind ships besides the one running the tests
    found = {str(p) for p in Path("/root/.pyenv/versions").glob("3.*/bin/python") if os.access(p, os.X_OK)}
    return sorted(found | {sys.executable})


@pytest.mark.parametrize("python", _other_pythons())
def test_child_helper_on_each_interpreter(python: str) -> None:
    with spawn_child("send(recv())\nsend([1, 2])\nblock()", python=python) as child:
        child.send({"echo": "é"})
        assert child.recv() == {"echo": "é"}
        assert child.recv() == [1, 2]
        child.release()
        assert child.wait() == 0


def test_child_helper_reports_a_child_that_dies_early() -> None:
    with spawn_child("raise SystemExit('boom')") as child:
        start = time.monotonic()
        with pytest.raises(Exception, match="boom"):
            child.recv(timeout=30)
        assert time.monotonic() - start < 30

"""Attacks on a root collector, run for real by throwaway unprivileged users (docs/security.md).

Each test creates its users (``useradd``, unique names) and removes them afterwards whatever happens.
The attacker writes what any local user can write: files in its own table directory under /dev/shm.
The collector is the real :class:`Watcher` (or ``dump_target``), run as root by the test. Each test
asserts that nothing was read, stopped, killed, deleted or written outside its place, and, where a
victim is involved, that the victim's real hang is still dumped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import kmemdump
import kmemdump.producer.backends.table
import kmemdump.producer.python.banner
import kmemdump.producer.python.pyinfo
import kmemdump.producer.region
from helpers_child import spawn_child
from helpers_users import Send
from helpers_users import User
from helpers_users import as_user
from helpers_users import can_make_users
from helpers_users import make_users
from helpers_users import public_dir
from helpers_users import remove_users
from kmemdump.collector.dump import DumpOptions
from kmemdump.collector.dump import dump_target
from kmemdump.collector.hold import _SETTLE_S
from kmemdump.collector.watch import Event
from kmemdump.collector.watch import Watcher
from kmemdump.errors import ForeignProcessError
from kmemdump.formats.enums import RegionKind
from kmemdump.formats.enums import TableState
from kmemdump.formats.table import TableWriter
from kmemdump.formats.table import table_size
from kmemdump.memory.core import CoreImage
from kmemdump.procinfo import process_start_time
from kmemdump.procinfo import thread_state

_WHY_NOT = can_make_users()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(90),
    pytest.mark.skipif(_WHY_NOT is not None, reason=f"cannot create throwaway users: {_WHY_NOT}"),
]


@pytest.fixture
def users() -> Iterator[list[User]]:
    made = make_users(2)
    try:
        yield made
    finally:
        remove_users(made)


@pytest.fixture
def dumps() -> Iterator[Path]:
    path = public_dir("kmemdump-sec-dumps-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _user_dir(user: User) -> Path:
    return Path(f"/dev/shm/kmemdump-{user.uid}")


def _forged_table(pid: int, start_time: int, address: int, size: int) -> bytes:
    """A well-formed table naming ``pid``, its watchdog long expired, listing one region."""
    buf = bytearray(table_size(4))
    writer = TableWriter(
        buf, capacity=4, pid=pid, start_time=start_time, py_hexversion=sys.hexversion, created_ns=1
    )
    writer.put(0, 17, "loot", address, size, int(RegionKind.BUFFER), 0)
    writer.set_watchdog(1_000_000)  # 1 ms
    writer.feed()  # now: stale 1 ms later
    writer.set_state(TableState.RUNNING)
    writer.release()
    return bytes(buf)


def _plant(user: User, name: str, data: bytes) -> None:
    """As ``user``: create its table directory (0700) and write ``name`` in it (0600)."""
    directory = _user_dir(user)

    def work(send: Send) -> None:
        directory.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, data)
        os.close(fd)
        send("planted")

    with as_user(user, work) as child:
        assert child.recv() == "planted"


def _collect(watcher: Watcher, seconds: float, until: Any = None) -> list[Event]:
    events: list[Event] = []
    deadline = time.monotonic() + seconds
    events.extend(watcher.scan())
    while time.monotonic() < deadline:
        events.extend(watcher.step())
        if until is not None and until(events):
            break
    return events


def _secret_holder() -> Any:
    code = (
        "import ctypes, time\n"
        "secret = ctypes.create_string_buffer(b'root-only secret', 32)\n"
        "send({'address': ctypes.addressof(secret)})\n"
        "block()\n"
    )
    child = spawn_child(code)
    return child, child.recv()["address"]


def test_a_table_naming_a_root_process_reads_stops_and_kills_nothing(users: list[User], dumps: Path) -> None:
    attacker = users[0]
    victim, address = _secret_holder()  # a root process with a secret
    with victim:
        start = process_start_time(victim.pid)
        _plant(attacker, f"{victim.pid}-{start}.table", _forged_table(victim.pid, start, address, 32))
        watcher = Watcher([_user_dir(attacker)], DumpOptions(dumps), after_hang="kill")
        try:
            events = _collect(watcher, 1.0)
        finally:
            watcher.close()
        assert [e.kind for e in events] == ["skip"], [e.line() for e in events]
        assert "another user" in events[0].message and str(attacker.uid) in events[0].message
        assert list(dumps.iterdir()) == []  # nothing read, nothing written
        assert victim.popen.poll() is None  # not killed
        assert thread_state(victim.pid, victim.pid) not in ("T", "t")  # not left stopped
        # and asked directly, on the attacker's behalf: refused before anything is held
        with pytest.raises(ForeignProcessError):
            dump_target(
                victim.pid,
                start,
                _user_dir(attacker) / f"{victim.pid}-{start}.table",
                reason="request",
                options=DumpOptions(dumps),
            )
        assert list(dumps.iterdir()) == [] and victim.popen.poll() is None


def _producer(directory: Path, *, dumpable: bool = True) -> Any:
    """A producer that publishes a table with a 0.3 s watchdog, holds a secret, then stops feeding."""

    def work(send: Send) -> None:
        report = kmemdump.init(table=True, directory=directory, watchdog=0.3, pycoreinfo=False)
        mine = kmemdump.alloc(24, name="mine")
        mine[:] = b"the user's own data here"
        send({"table": report.table, "failures": [list(f) for f in report.failures]})
        time.sleep(3600)  # never feeds again: a hang

    return work


@pytest.fixture(autouse=True)
def _loaded() -> None:
    kmemdump.producer.region.buffer_address(memoryview(bytearray(1)))  # loads ctypes before a drop
    kmemdump.producer.python.banner.make_banner()


def test_the_owners_own_hang_is_dumped_readable_by_them_and_the_operators_group(
    users: list[User], dumps: Path
) -> None:
    victim, other = users
    with as_user(victim, _producer(_user_dir(victim))) as producer:
        info = producer.recv()
        watcher = Watcher([_user_dir(victim)], DumpOptions(dumps, stacks=False, group=0))
        try:
            events = _collect(watcher, 10.0, until=lambda evs: any(e.kind == "hang" for e in evs))
        finally:
            watcher.close()
        hang = next(e for e in events if e.kind == "hang")
        assert hang.dump is not None and hang.dump.meta.uid == victim.uid
        assert hang.dump.meta.held == "ptrace"
        info_stat = hang.dump.path.stat()
        assert (info_stat.st_uid, info_stat.st_gid, stat.S_IMODE(info_stat.st_mode)) == (victim.uid, 0, 0o640)
        assert Path(info["table"]).exists()
        assert thread_state(producer.pid, producer.pid) not in ("T", "t")  # released after the dump

    def read(send: Send) -> None:
        try:
            with CoreImage.open(hang.dump.path) as core:  # type: ignore[union-attr]
                record = next(r for r in hang.dump.meta.regions if r.name == "mine")  # type: ignore[union-attr]
                send(core.read(record.address, record.size).decode())
        except kmemdump.KmemdumpError as err:
            send(f"refused: {err.context.get('path', '')}")

    with as_user(victim, read) as reader:
        assert reader.recv() == "the user's own data here"
    with as_user(other, read) as reader:
        assert reader.recv().startswith("refused")


def test_a_process_that_is_not_dumpable_is_left_alone_unless_allowed(users: list[User], dumps: Path) -> None:
    owner = users[0]

    def work(send: Send) -> None:
        _producer(_user_dir(owner))(send)

    with as_user(owner, work, dumpable=False) as producer:
        info = producer.recv()
        assert any(origin == "dumpable" for origin, _ in info["failures"])  # init told it
        watcher = Watcher([_user_dir(owner)], DumpOptions(dumps, stacks=False))
        try:
            events = _collect(watcher, 1.0)
        finally:
            watcher.close()
        assert [e.kind for e in events] == ["skip"] and "not dumpable" in events[0].message
        assert list(dumps.iterdir()) == []
        # the operator's explicit choice: --allow-nondumpable
        allowed = Watcher([_user_dir(owner)], DumpOptions(dumps, stacks=False, allow_nondumpable=True))
        try:
            events = _collect(allowed, 10.0, until=lambda evs: any(e.kind == "hang" for e in evs))
        finally:
            allowed.close()
        assert any(e.kind == "hang" and e.dump is not None for e in events)


def test_a_process_that_execs_a_set_uid_program_after_adoption_is_not_dumped(
    users: list[User], dumps: Path
) -> None:
    """Adopted while it was the user's own, the process then runs a set-uid root program (same pid,
    same start time, same table): at its hang the check, made again, refuses it."""
    owner = users[0]
    tools = public_dir("kmemdump-sec-suid-", 0o755)
    suid_sleep = tools / "sleep"
    shutil.copy("/usr/bin/sleep", suid_sleep)
    os.chmod(suid_sleep, 0o4755)  # set-uid root
    go_r, go_w = os.pipe()

    def work(send: Send) -> None:
        report = kmemdump.init(table=True, directory=_user_dir(owner), watchdog=0.3, pycoreinfo=False)
        send({"table": report.table})
        os.read(go_r, 1)
        os.execv(suid_sleep, [str(suid_sleep), "3600"])  # the table stays; the heartbeat stops

    try:
        with as_user(owner, work) as producer:
            producer.recv()
            watcher = Watcher([_user_dir(owner)], DumpOptions(dumps, stacks=False))
            try:
                watcher.scan()
                assert len(watcher.targets) == 1  # adopted: the user's own, dumpable process
                os.write(go_w, b"x")
                deadline = time.monotonic() + 5
                while _status_uids(producer.pid)[1] != 0 and time.monotonic() < deadline:
                    time.sleep(0.005)
                events = _collect(
                    watcher, 3.0, until=lambda evs: any(e.kind in ("hang", "error") for e in evs)
                )
            finally:
                watcher.close()
            assert _status_uids(producer.pid)[:2] == [owner.uid, 0]  # real: the user; effective: root
            assert any(e.kind == "error" and "not dumpable" in e.message for e in events), [
                e.line() for e in events
            ]
            assert list(dumps.iterdir()) == []
            assert thread_state(producer.pid, producer.pid) not in ("T", "t")
    finally:
        os.close(go_r)
        os.close(go_w)
        shutil.rmtree(tools, ignore_errors=True)


def _status_uids(pid: int) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(x) for x in line.split()[1:]]
    return []


def test_a_symlinked_table_directory_makes_root_delete_nothing(users: list[User], dumps: Path) -> None:
    """S5: ``/dev/shm/kmemdump-<x>`` pointing at a root-only directory of stale-looking files."""
    attacker = users[0]
    private = public_dir("kmemdump-sec-private-", 0o700)
    planted = [private / "99999-1.table", private / "99998-1.arena"]
    for path in planted:
        path.write_bytes(b"root's file")
    link = Path(f"/dev/shm/kmemdump-{attacker.uid}")

    def work(send: Send) -> None:
        os.symlink(private, link)
        send("linked")

    try:
        with as_user(attacker, work) as child:
            assert child.recv() == "linked"
        watcher = Watcher([link], DumpOptions(dumps))
        try:
            events = _collect(watcher, 0.6)
        finally:
            watcher.close()
        assert all(path.exists() for path in planted)  # nothing removed as "stale"
        assert any("symbolic link" in e.message for e in events), [e.line() for e in events]
    finally:
        link.unlink(missing_ok=True)
        shutil.rmtree(private, ignore_errors=True)


def test_a_squatted_table_directory_sends_the_victim_to_a_private_one_that_is_still_watched(
    users: list[User], dumps: Path
) -> None:
    """S7: the attacker creates the victim's /dev/shm/kmemdump-<uid> first."""
    attacker, victim = users

    def squat(send: Send) -> None:
        Path(f"/dev/shm/kmemdump-{victim.uid}").mkdir(mode=0o777)
        send("squatted")

    with as_user(attacker, squat) as child:
        assert child.recv() == "squatted"

    def producer(send: Send) -> None:
        report = kmemdump.init(table=True, watchdog=0.3, pycoreinfo=False)  # the default directory
        send({"table": report.table, "failures": [list(f) for f in report.failures]})
        time.sleep(3600)

    old = os.environ.pop("KMEMDUMP_DIR", None)
    try:
        with as_user(victim, producer) as running:
            info = running.recv()
            table = Path(info["table"])
            assert table.parent.name.startswith(f"kmemdump-{victim.uid}.")  # a private fallback
            assert any(origin == "table" and "another user" in why for origin, why in info["failures"])
            assert os.listdir(f"/dev/shm/kmemdump-{victim.uid}") == []  # nothing went to the squatter
            from kmemdump.cli.options import table_dirs

            found = table_dirs(all_users=True)
            assert table.parent in found
            watcher = Watcher(found, DumpOptions(dumps, stacks=False), only_pid=running.pid)
            try:
                events = _collect(watcher, 10.0, until=lambda evs: any(e.kind == "hang" for e in evs))
            finally:
                watcher.close()
            assert any(e.kind == "hang" and e.dump is not None for e in events)  # the hang is still dumped
            squatted = [
                e for e in events if f"kmemdump-{victim.uid} belongs to uid {attacker.uid}" in e.message
            ]
            assert squatted  # and the squatted directory is said and left alone
    finally:
        if old is not None:
            os.environ["KMEMDUMP_DIR"] = old


def test_hostile_file_names_are_ignored_and_a_flood_of_tables_does_not_blind_the_collector(
    users: list[User], dumps: Path
) -> None:
    """S2, S3, S6: names with non-ASCII digits, many idle tables, tables that never settle; the victim's
    hang is still dumped within its timeout plus a little."""
    attacker, victim = users
    directory = _user_dir(attacker)
    flood = 40

    def work(send: Send) -> None:
        directory.mkdir(mode=0o700)
        for name in ("²-1.table", "١٢-3.table", "12-٣.arena", "0012-3.table"):
            (directory / name).write_bytes(b"x")
        me, start = os.getpid(), process_start_time(os.getpid())
        for index in range(flood):  # idle tables naming the attacker's own live process
            body = bytearray(_forged_table(me, start, 0x1000, 8))
            body[40] = 1  # an odd generation: "mid-update" forever
            name = f"{me}-{start}.table" if index == 0 else f"{me}-{start + index}.table"
            (directory / name).write_bytes(bytes(body))
        send("flooded")
        time.sleep(3600)

    with as_user(attacker, work) as flooder, as_user(victim, _producer(_user_dir(victim))) as producer:
        assert flooder.recv() == "flooded"
        producer.recv()
        watcher = Watcher([directory, _user_dir(victim)], DumpOptions(dumps, stacks=False), max_per_user=10)
        started = time.monotonic()
        try:
            events = _collect(watcher, 15.0, until=lambda evs: any(e.kind == "hang" for e in evs))
        finally:
            watcher.close()
        hang = next((e for e in events if e.kind == "hang"), None)
        assert hang is not None and hang.dump is not None, [e.line() for e in events][-10:]
        assert hang.dump.meta.heartbeat_age_s is not None and hang.dump.meta.heartbeat_age_s < 0.3 + 1.0
        assert time.monotonic() - started < 10
        assert all(e.kind != "error" or "Traceback" not in e.message for e in events)
        assert os.path.exists(directory / "²-1.table")  # ignored, not acted on


_HANGS = """
import kmemdump, time
kmemdump.init(table=True, watchdog=0.5, pycoreinfo=False)
buf = kmemdump.alloc(16, name="mine")
buf[:] = b"dumped after all"
send("ready")
time.sleep(3600)
"""


def test_a_table_that_met_a_full_descriptor_table_is_retried_not_given_up(
    table_dir: Path, tmp_path: Path
) -> None:
    """S3b: out of descriptors when the table first appeared; once descriptors are free again, the
    table is adopted and the hang dumped (the failure was not cached until the file changes)."""
    import json
    import resource

    dumps = tmp_path / "dumps"
    dumps.mkdir()
    with spawn_child(_HANGS) as producer:
        assert producer.recv() == "ready"
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the collector, in a child whose descriptor table is made full
            status = 0
            try:
                os.close(read_end)
                soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 4, hard))
                filler = []
                with contextlib.suppress(OSError):
                    while True:
                        filler.append(os.open("/dev/null", os.O_RDONLY))
                for fd in filler[-2:]:  # the directory and the table open; the process's descriptors do not
                    os.close(fd)
                del filler[-2:]
                watcher = Watcher([table_dir], DumpOptions(dumps, stacks=False, threads=-1))
                first = [e.line() for e in watcher.scan()]
                for fd in filler:
                    os.close(fd)
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
                later = _collect(watcher, 15.0, until=lambda evs: any(e.kind == "hang" for e in evs))
                watcher.close()
                os.write(write_end, json.dumps({"first": first, "later": [e.line() for e in later]}).encode())
            except BaseException as err:
                os.write(write_end, json.dumps({"error": repr(err)}).encode())
                status = 1
            finally:
                os._exit(status)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as answer:
            got = json.loads(answer.read())
        os.waitpid(pid, 0)
    assert "error" not in got, got
    assert any("will retry" in line and "Too many open files" in line for line in got["first"]), got["first"]
    assert any(line.startswith("hang ") for line in got["later"]), got["later"]


def _lock_holder(directory: Path) -> Any:
    """A producer that takes the collectors' act lock on its own table (any writer of a table can), then
    stops feeding: every collector that dumps it meets the lock."""

    def work(send: Send) -> None:
        import fcntl
        import struct

        from kmemdump.formats.table import ACT_LOCK_BYTE

        report = kmemdump.init(table=True, directory=directory, watchdog=0.3, pycoreinfo=False)
        fd = os.open(report.table, os.O_RDWR)
        lock = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, ACT_LOCK_BYTE, 1, 0)
        fcntl.fcntl(fd, 37, lock)  # F_OFD_SETLK: held as long as this descriptor is open
        send({"table": report.table})
        time.sleep(3600)

    return work


def test_a_user_holding_the_act_lock_on_their_own_tables_does_not_delay_anothers_hang(
    users: list[User], dumps: Path
) -> None:
    """Two stalled processes of the attacker hold the lock a collector takes while dumping. The watcher
    waited 10 s on each (the victim's 0.3 s hang was dumped 20 s late); now it never waits on it."""
    attacker, victim = users
    with (
        as_user(attacker, _lock_holder(_user_dir(attacker))) as first,
        as_user(attacker, _lock_holder(_user_dir(attacker))) as second,
    ):
        first.recv()
        second.recv()
        time.sleep(0.4)  # both stalled before the victim starts: the watcher meets them first
        with as_user(victim, _producer(_user_dir(victim))) as producer:
            producer.recv()
            watcher = Watcher([_user_dir(attacker), _user_dir(victim)], DumpOptions(dumps, stacks=False))
            try:
                events = _collect(
                    watcher,
                    25.0,
                    until=lambda evs: any(e.kind == "hang" and e.pid == producer.pid for e in evs),
                )
                events += _collect(watcher, 0.6)  # the attackers' stalls are tried again, not said again
            finally:
                watcher.close()
            hang = next((e for e in events if e.kind == "hang" and e.pid == producer.pid), None)
            assert hang is not None and hang.dump is not None, [e.line() for e in events]
            assert hang.dump.meta.heartbeat_age_s is not None and hang.dump.meta.heartbeat_age_s < 0.3 + 1.0
            for holder in (first, second):
                put_off = [e for e in events if e.pid == holder.pid and "put off" in e.message]
                assert len(put_off) == 1, [e.line() for e in events]
                assert "another collector is dumping" in put_off[0].message
    assert [p.name for p in dumps.iterdir() if f"-{producer.pid}-" in p.name] and len(
        list(dumps.iterdir())
    ) == 1


def test_a_table_naming_another_users_zombie_learns_nothing_of_its_end(
    users: list[User], dumps: Path
) -> None:
    """A root process's child has ended (exit status 42) and is not reaped yet: it is dead, but still
    root's. A table naming it got a death dump owned by the attacker, saying how root's process ended."""
    attacker = users[0]
    code = "import os\npid = os.fork()\nif pid == 0:\n    os._exit(42)\nsend(pid)\nblock()\n"
    with spawn_child(code) as parent:
        zombie = parent.recv()
        deadline = time.monotonic() + 5
        while thread_state(zombie, zombie) != "Z" and time.monotonic() < deadline:
            time.sleep(0.005)
        start = process_start_time(zombie)
        _plant(attacker, f"{zombie}-{start}.table", _forged_table(zombie, start, 0x1000, 8))
        watcher = Watcher([_user_dir(attacker)], DumpOptions(dumps, stacks=False))
        try:
            events = _collect(watcher, 1.0)
        finally:
            watcher.close()
        assert [e.kind for e in events] == ["skip"], [e.line() for e in events]
        assert "ended process of another user" in events[0].message
        assert list(dumps.iterdir()) == []
        assert thread_state(zombie, zombie) == "Z"  # not reaped by anyone but its parent


def _swallowing_tracer(directory: Path, program: Path, delay: float) -> Any:
    """As the user: a producer P with big regions, traced by its parent T. The collector's ptrace hold is
    refused (P is traced already) and it falls back to SIGSTOP, which T swallows (it detaches), so P
    runs on; ``delay`` seconds later P executes ``program`` (set-uid root) while the collector copies.
    The collector waits up to ``_SETTLE_S`` for its stop to take, checks the process, then copies 256 MiB:
    a delay just past that wait lands the exec early in the copy (a later one missed a fast copy)."""

    def work(send: Send) -> None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
        go_r, go_w = os.pipe()
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # P
            try:
                report = kmemdump.init(table=True, directory=directory, pycoreinfo=False)
                for index in range(4):
                    kmemdump.alloc(64 << 20, name=f"big{index}")[:] = os.urandom(64 << 20)
                os.write(ready_w, str(report.table).encode())
                os.read(go_r, 1)
                time.sleep(delay)
                os.execv(program, [str(program), "3600"])
            finally:
                os._exit(1)
        table = os.read(ready_r, 4096).decode()
        assert libc.ptrace(0x4206, pid, None, None) == 0, ctypes.get_errno()  # PTRACE_SEIZE
        send({"pid": pid, "table": table})
        while True:
            _, status = os.waitpid(pid, 0x40000000)
            if not os.WIFSTOPPED(status):
                return
            sig = os.WSTOPSIG(status)
            if sig == signal.SIGSTOP and status >> 16 == 0:  # the collector's stop, on its way in
                libc.ptrace(17, pid, None, None)  # PTRACE_DETACH, passing no signal: swallowed
                os.write(go_w, b"g")
                send("swallowed")
                time.sleep(3600)
            libc.ptrace(7, pid, None, ctypes.c_void_p(sig))  # PTRACE_CONT

    return work


def test_a_process_whose_tracer_swallows_the_stop_and_that_execs_a_set_uid_program_is_not_kept(
    users: list[User], dumps: Path
) -> None:
    """The SIGSTOP fallback assumed the process was held (the dump said so) and the check made after
    the hold was final; a process whose tracer swallowed the stop ran on and executed a set-uid root
    program during the copy, and the dump went on reading it. Now a stop that did not take holds
    nothing, and the ids and program image are compared again before a dump is kept."""
    owner = users[0]
    tools = public_dir("kmemdump-sec-suid-", 0o755)
    suid_sleep = tools / "sleep"
    shutil.copy("/usr/bin/sleep", suid_sleep)
    os.chmod(suid_sleep, 0o4755)  # set-uid root
    try:
        for _attempt in range(_SWALLOW_ATTEMPTS):
            outcome = _swallow_and_exec_during_a_dump(owner, suid_sleep, dumps)
            if outcome is not None:
                break
        else:
            pytest.skip(
                f"in {_SWALLOW_ATTEMPTS} attempts the collector saw the tracer's stop before the tracer "
                "let it go, so its hold took and the dump ended before the exec"
            )
        assert "dump discarded" in str(outcome), outcome
        assert [p.name for p in dumps.iterdir()] == []  # nothing kept, no temporary file either
    finally:
        shutil.rmtree(tools, ignore_errors=True)


_SWALLOW_ATTEMPTS = 6
"""The attack needs the tracer to let the stop go before the collector sees it (about 2 tries in 3 here)."""


def _swallow_and_exec_during_a_dump(owner: User, suid_sleep: Path, dumps: Path) -> ForeignProcessError | None:
    """One try of the attack: the refusal, or None when the collector saw the process stopped in its
    tracer's hands before the tracer let it go (its hold took, and the dump ended before the exec;
    what it kept is removed, after checking it is of the process as it was)."""
    victim_pid = 0
    try:
        with as_user(owner, _swallowing_tracer(_user_dir(owner), suid_sleep, _SETTLE_S + 0.03)) as tracer:
            info = tracer.recv()
            victim_pid = info["pid"]
            start = process_start_time(victim_pid)
            try:  # with the stacks: py-spy's time after the copy widens the window the exec lands in
                dump_target(
                    victim_pid,
                    start,
                    Path(info["table"]),
                    reason="request",
                    options=DumpOptions(dumps, stacks=True, compress=True),
                )
            except ForeignProcessError as err:
                assert tracer.recv() == "swallowed"  # the attack took place
                assert thread_state(victim_pid, victim_pid) not in ("T", "t")  # not left stopped
                return err
            assert tracer.recv() == "swallowed"
            euid = _status_uids(victim_pid)[1]
            assert euid == owner.uid, "a dump was kept of a process that became set-uid root meanwhile"
            for kept in dumps.iterdir():
                kept.unlink()
            return None
    finally:
        if victim_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim_pid, signal.SIGKILL)


def test_thousands_of_directories_and_names_from_one_user_do_not_blind_the_collector(
    users: list[User], dumps: Path
) -> None:
    """Making 3,000 fallback-looking table directories took a user 0.1 s; the collector compared every
    new one with every one listed before at each scan (seconds per scan, minutes with 20,000: another
    user's hang was not even adopted). A directory stuffed with junk names was read whole at each scan."""
    from kmemdump.cli.options import MAX_FALLBACK_DIRS
    from kmemdump.cli.options import table_dirs

    attacker, victim = users

    def flood(send: Send) -> None:
        import secrets

        for _ in range(3000):
            os.mkdir(f"/dev/shm/kmemdump-{attacker.uid}.{secrets.token_hex(8)}", 0o700)
        own = _user_dir(attacker)
        own.mkdir(mode=0o700)
        for index in range(5000):
            os.close(os.open(own / f"junk{index}", os.O_WRONLY | os.O_CREAT, 0o600))
        send("flooded")

    with as_user(attacker, flood) as flooder:
        assert flooder.recv() == "flooded"
    listed = table_dirs(all_users=True)
    assert sum(1 for d in listed if d.name.startswith(f"kmemdump-{attacker.uid}.")) == MAX_FALLBACK_DIRS
    with as_user(victim, _producer(_user_dir(victim))) as producer:
        producer.recv()
        watcher = Watcher(
            table_dirs(all_users=True),
            DumpOptions(dumps, stacks=False),
            rediscover=lambda: table_dirs(all_users=True),
            only_pid=producer.pid,  # other tests' tables in /dev/shm are not this one's
        )
        started = time.monotonic()
        try:
            events = _collect(
                watcher, 15.0, until=lambda evs: any(e.kind == "hang" and e.pid == producer.pid for e in evs)
            )
        finally:
            watcher.close()
        hang = next((e for e in events if e.kind == "hang" and e.pid == producer.pid), None)
        assert hang is not None and hang.dump is not None, [e.line() for e in events][-5:]
        assert hang.dump.meta.heartbeat_age_s is not None and hang.dump.meta.heartbeat_age_s < 0.3 + 1.0
        assert time.monotonic() - started < 10
        full = [e for e in events if "holds more than" in e.message]
        assert len(full) == 1 and str(_user_dir(attacker)) in full[0].message  # said once


def test_the_dump_directory_the_service_creates_is_the_operators_groups(
    users: list[User], table_dir: Path
) -> None:
    """Under the unit's UMask=0077 the dump directory came out 0700 root:root: not even the operators'
    group (--group) could read a dump. It is made 0750 and given to that group."""
    from helpers_watch import WatchProcess

    operator, other = users
    base = public_dir("kmemdump-sec-state-", 0o751)  # the unit's StateDirectoryMode
    dumps = base / "dumps"
    try:
        with spawn_child(_HANGS) as producer:
            assert producer.recv() == "ready"
            umask = os.umask(0o077)  # the unit's UMask, inherited by the collector
            try:
                watch = WatchProcess(table_dir, dumps, "--group", str(operator.gid))
            finally:
                os.umask(umask)
            with watch:
                watch.wait_for(f"hang pid={producer.pid} ")
        info = dumps.stat()
        assert (stat.S_IMODE(info.st_mode), info.st_gid) == (0o750, operator.gid)

        def read(send: Send) -> None:
            try:
                (dump,) = os.listdir(dumps)
                send((dumps / dump).read_bytes()[:4].hex())
            except OSError as err:
                send(f"refused: {err.strerror}")

        with as_user(operator, read) as reader:
            assert reader.recv() == b"\x7fELF".hex()  # the operators read every dump
        with as_user(other, read) as reader:
            assert reader.recv().startswith("refused")  # nobody else lists them
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_directories_named_like_arenas_or_fault_files_are_not_logged_at_every_scan(
    users: list[User], dumps: Path
) -> None:
    """A directory named ``<pid>-<start>.fault`` (or ``.arena``) of a gone process cannot be unlinked:
    the watcher said "removing it" at every scan, one log line per such name each time (a user's 4,096
    of them flooded the log with thousands of lines a second)."""
    attacker = users[0]

    def work(send: Send) -> None:
        own = _user_dir(attacker)
        own.mkdir(mode=0o700)
        for index in range(20):
            (own / f"{2**22 + index}-1.fault").mkdir()
            (own / f"{2**22 + index}-1.arena").mkdir()
        send("made")

    with as_user(attacker, work) as child:
        assert child.recv() == "made"
    watcher = Watcher([_user_dir(attacker)], DumpOptions(dumps))
    try:
        events = _collect(watcher, 1.2)
    finally:
        watcher.close()
    assert [e.line() for e in events] == []
    assert len(os.listdir(_user_dir(attacker))) == 40  # left as they are


def _big_stall(directory: Path, size: int) -> Any:
    """A producer with ``size`` bytes of registered (random) memory whose watchdog runs out at once."""

    def work(send: Send) -> None:
        kmemdump.init(table=True, directory=directory, watchdog=0.3, pycoreinfo=False)
        kmemdump.alloc(size, name="big")[:] = os.urandom(size)
        kmemdump.feed()
        send("ready")
        time.sleep(3600)

    return work


def test_one_users_many_big_hangs_delay_anothers_by_one_dump_at_most(users: list[User], dumps: Path) -> None:
    """Every stalled process was dumped in turn in one step: three of the attacker's, found first, were
    all dumped before the victim's (4 of 512 MiB made a 0.3 s hang 9.7 s late; 256 would take minutes).
    Now a step dumps one process, and the next starts with the user whose dumps took least time."""
    attacker, victim = users
    holders = [as_user(attacker, _big_stall(_user_dir(attacker), 16 << 20)) for _ in range(3)]
    try:
        for holder in holders:
            assert holder.recv() == "ready"
        with as_user(victim, _producer(_user_dir(victim))) as producer:
            producer.recv()
            time.sleep(0.4)  # every one of them is stale before the collector looks
            watcher = Watcher(
                [_user_dir(attacker), _user_dir(victim)], DumpOptions(dumps, stacks=False, compress=True)
            )
            try:
                events = _collect(watcher, 30.0, until=lambda evs: sum(e.kind == "hang" for e in evs) == 4)
            finally:
                watcher.close()
            order = [e.pid for e in events if e.kind == "hang"]
            assert len(order) == 4, [e.line() for e in events]
            assert order.index(producer.pid) <= 1, order  # after one of the attacker's at most
    finally:
        for holder in holders:
            holder.kill()

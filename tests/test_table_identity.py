"""The table says which pid namespace its producer is in, and whether it lives (its liveness lock).

Both are additions to format v1 in bytes v1 readers ignore (the header's flags and reserved bytes), so
tables written before them still read, and readers written before them still read new tables.
"""

from __future__ import annotations

import os
import signal
import struct
from pathlib import Path

import pytest

from helpers_child import spawn_child
from kmemdump.collector.identify import identify
from kmemdump.errors import ProcessGoneError
from kmemdump.formats import table as fmt
from kmemdump.formats.table import LIVE_LOCK_BYTE
from kmemdump.formats.table import TableReader
from kmemdump.formats.table import TableWriter
from kmemdump.formats.table import lock_held
from kmemdump.formats.table import parse_header
from kmemdump.formats.table import read_table
from kmemdump.procinfo import pid_namespace

pytestmark = pytest.mark.slow


def test_a_table_records_the_pid_namespace_and_holds_its_liveness_lock_until_death(table_dir: Path) -> None:
    with spawn_child("import kmemdump\nsend(kmemdump.init(table=True).table)\nblock()") as child:
        table = Path(child.recv())
        header = read_table(table).header
        assert (header.pidns_dev, header.pidns_ino) == pid_namespace(child.pid) == pid_namespace("self")
        assert header.live_lock and not header.feeder
        with TableReader(table) as reader:
            assert lock_held(reader.fileno(), LIVE_LOCK_BYTE)
            assert identify(child.pid, header.start_time, header, reader.fileno()).pid == child.pid
            child.popen.send_signal(signal.SIGKILL)
            child.wait()
            assert not lock_held(reader.fileno(), LIVE_LOCK_BYTE)  # the kernel dropped it with the process
            with pytest.raises(ProcessGoneError):
                identify(child.pid, header.start_time, header, reader.fileno())


def test_a_forked_child_does_not_keep_its_parents_table_alive(table_dir: Path) -> None:
    code = r"""
import os, time
import kmemdump
report = kmemdump.init(table=True)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    os.write(w, b"x")
    time.sleep(3600)
os.close(w)
os.read(r, 1)
send({"table": report.table, "child": pid})
block()
"""
    with spawn_child(code) as parent:
        info = parent.recv()
        try:
            with TableReader(info["table"]) as reader:
                assert lock_held(reader.fileno(), LIVE_LOCK_BYTE)
                parent.popen.send_signal(signal.SIGKILL)
                parent.wait()
                # the child still lives and shares the parent's descriptors, but not that lock
                assert os.path.exists(f"/proc/{info['child']}")
                assert not lock_held(reader.fileno(), LIVE_LOCK_BYTE)
        finally:
            os.kill(info["child"], signal.SIGKILL)


def test_a_table_written_before_the_namespace_fields_still_reads_the_same() -> None:
    buf = bytearray(fmt.table_size(4))
    TableWriter(buf, capacity=4, pid=77, start_time=123, py_hexversion=0, created_ns=1, pidns=(5, 4026531836))
    old = bytearray(buf)
    old[fmt.OFF_FLAGS : fmt.OFF_FLAGS + 2] = bytes(2)
    old[fmt.OFF_PIDNS_INO : fmt.HEADER_SIZE] = bytes(fmt.HEADER_SIZE - fmt.OFF_PIDNS_INO)  # as v1 wrote
    header = parse_header(bytes(old))
    assert (header.pidns_ino, header.pidns_dev, header.live_lock) == (0, 0, False)
    assert (header.pid, header.start_time) == (77, 123)
    new = parse_header(bytes(buf))
    assert (new.pidns_ino, new.pidns_dev) == (4026531836, 5)
    # where a v1 reader of before looks, the new fields are in bytes it ignores
    assert struct.unpack_from("<QQ", buf, 104) == (4026531836, 5)
    assert buf[:104] == old[:104]


def test_an_arena_whose_process_lives_is_never_removed_as_an_orphan(table_dir: Path, dump_dir: Path) -> None:
    from kmemdump.collector.dump import DumpOptions
    from kmemdump.collector.watch import Watcher

    code = "import kmemdump\nkmemdump.alloc(64, persistent=True)\nsend('up')\nblock()"
    with spawn_child(code) as child:
        assert child.recv() == "up"
        (arena,) = table_dir.glob("*.arena")
        # as a process of another pid namespace would look from here: a pid this collector has not
        foreign = arena.with_name(f"999999-{arena.name.split('-')[1]}")
        arena.rename(foreign)
        watcher = Watcher([table_dir], DumpOptions(dump_dir))
        events = watcher.scan()
        assert foreign.exists(), events  # its process holds it: not an orphan
        child.kill()
        events = watcher.scan()
        watcher.close()
    assert not foreign.exists()  # now it is one
    assert [e.kind for e in events] == ["skip"]


def test_a_live_table_of_the_same_name_is_never_replaced(table_dir: Path) -> None:
    # two containers sharing one directory may both be pid 1, started in the same clock tick: the
    # second must not replace the first one's table while the first lives
    from kmemdump.errors import BackendError
    from kmemdump.producer.sharedfile import link_into_place

    with spawn_child("import kmemdump\nsend(kmemdump.init(table=True).table)\nblock()") as child:
        live = Path(child.recv())
        temp = table_dir / ".impostor.tmp"
        temp.write_bytes(b"x")
        dir_fd = os.open(table_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with pytest.raises(BackendError, match="not a stale table"):
                link_into_place(dir_fd, table_dir, temp.name, live.name, "table")
            assert read_table(live).header.pid == child.pid  # untouched
            child.kill()
            link_into_place(dir_fd, table_dir, temp.name, live.name, "table")  # now it is stale
        finally:
            os.close(dir_fd)
    assert live.read_bytes() == b"x"

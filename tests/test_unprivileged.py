"""Unprivileged operation: a producer and a collector that run as one ordinary user, with no capability.

The test process is root only so that it can make both sides ``nobody``: each side is a forked copy of it
(``helpers_users.as_user``) that drops to uid/gid 65534 before doing anything, then answers the test through
a pipe. Everything the two sides import is imported here first: on machines like this one the interpreter
lives under /root, where nobody may not read, so a lazy import after the drop would fail for reasons that
have nothing to do with kmemdump.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

import kmemdump.collector.corewriter
import kmemdump.collector.dump
import kmemdump.files
import kmemdump.formats.elf
import kmemdump.formats.kinds
import kmemdump.memory.process
import kmemdump.producer.arena
import kmemdump.producer.backends.table
import kmemdump.producer.region
from helpers_users import Send
from helpers_users import User
from helpers_users import as_user

NOBODY = 65534

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(60),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run both sides as an ordinary user"),
]

NOBODY_USER = User("nobody", NOBODY, NOBODY)


@pytest.fixture
def public_tmp() -> Any:
    """A directory nobody can reach (pytest's own tmp_path sits under a root-only directory)."""
    path = Path(tempfile.mkdtemp(prefix="kmemdump-nobody-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_user_dumps_its_own_process_without_privileges(public_tmp: Path) -> None:
    tables, dumps = public_tmp / "tables", public_tmp / "dumps"
    for directory in (tables, dumps):
        directory.mkdir(mode=0o700)
        os.chown(directory, NOBODY, NOBODY)
    hold_r, hold_w = os.pipe()
    kmemdump.producer.region.buffer_address(memoryview(bytearray(1)))  # loads ctypes and its libraries

    def producer(send: Send) -> None:
        import kmemdump

        # dropping from root to nobody made this process non-dumpable: init says so, and what to do
        report = kmemdump.init(table=True, directory=tables, pycoreinfo=False)
        warned = [why for origin, why in report.failures if origin == "dumpable"]
        kmemdump.producer.backends.table._prctl()(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE, 1: the remedy it names
        secret = kmemdump.alloc(16, name="secret")
        secret[:] = b"nobody's secret!"
        send({"table": report.table, "uid": os.getuid(), "warned": warned})
        os.read(hold_r, 1)  # stays alive until the test lets go

    # dropping from root clears the dumpable flag: the producer starts non-dumpable, as the test wants
    with as_user(NOBODY_USER, producer, dumpable=False) as producer_side:
        try:
            info = producer_side.recv()
            assert info["uid"] == NOBODY and Path(info["table"]).stat().st_uid == NOBODY
            assert len(info["warned"]) == 1 and "PR_SET_DUMPABLE, 1" in info["warned"][0]
            producer_pid = producer_side.pid

            def collector(send: Send) -> None:
                from kmemdump.collector.dump import DumpOptions
                from kmemdump.collector.dump import dump_target
                from kmemdump.memory.core import CoreImage
                from kmemdump.procinfo import process_start_time

                start = process_start_time(producer_pid)
                result = dump_target(
                    producer_pid, start, Path(info["table"]), reason="request", options=DumpOptions(dumps)
                )
                record = next(r for r in result.meta.regions if r.name == "secret")
                with CoreImage.open(result.path) as core:
                    data = core.read(record.address, record.size)
                send(
                    {
                        "uid": os.getuid(),
                        "status": record.status,
                        "data": data.decode(),
                        "stacks": result.meta.stacks,
                        "owner": result.path.stat().st_uid,
                        # py-spy reads the interpreter's binary; here it lives under /root, closed to nobody
                        "binary_readable": os.access(os.path.realpath(sys.executable), os.R_OK),
                    }
                )

            with as_user(NOBODY_USER, collector, dumpable=False) as collector_side:
                got = collector_side.recv()
        finally:
            os.write(hold_w, b"x")
    stacks = got.pop("stacks")
    readable = got.pop("binary_readable")
    assert got == {"uid": NOBODY, "status": "ok", "data": "nobody's secret!", "owner": NOBODY}
    assert stacks == "ok" if readable else stacks.startswith("py-spy failed"), stacks

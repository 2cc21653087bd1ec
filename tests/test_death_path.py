"""The death path: a held process is let go as soon as its memory is copied, then the file is written.

A C program (contrib/c/kmemdump_table.h) registers two buffers and crashes under
`kmemdump run --trace-exit`; the dump holds them byte for byte, says the process was held only for
the copy (``hold_ms``) and that a C program has no Python stacks, without trying py-spy on it.
The order (let go, then write) is checked directly on dump_target with a live process.
"""

from __future__ import annotations

import os
import platform
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require_tool
from helpers_child import spawn_child
from kmemdump.collector.corewriter import CoreWriter
from kmemdump.collector.dump import DumpOptions
from kmemdump.collector.dump import ExitHold
from kmemdump.collector.dump import dump_target
from kmemdump.collector.staging import CHUNK
from kmemdump.collector.staging import Staging
from kmemdump.errors import KmemdumpError
from kmemdump.inspect.dumpfile import Dump
from kmemdump.memory.core import CoreImage
from kmemdump.procinfo import process_start_time

pytestmark = pytest.mark.slow

CONTRIB = Path(__file__).resolve().parent.parent / "contrib" / "c"
CRASHER = r"""
#define KMD_TABLE_IMPLEMENTATION
#include "kmemdump_table.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(void) {
    static unsigned char small[4096], big[5 << 20];
    for (size_t i = 0; i < sizeof small; i++) small[i] = (unsigned char)(i * 7);
    for (size_t i = 0; i < sizeof big; i++) big[i] = (unsigned char)(i * 13 + i / 4096);
    struct kmd_table t;
    if (kmd_table_open(&t, NULL, 16) || kmd_register(&t, 16, "small", small, sizeof small, KMD_KIND_BUFFER) ||
        kmd_register(&t, 17, "big", big, sizeof big, KMD_KIND_BUFFER)) {
        perror("kmemdump");
        return 2;
    }
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    char go;
    if (read(0, &go, 1) != 1) return 3;
    *(volatile int *)0 = 1;
    return 4;
}
"""


@pytest.fixture(scope="module")
def crasher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = require_tool("cc")
    where = tmp_path_factory.mktemp("crasher")
    (where / "crasher.c").write_text(CRASHER)
    exe = where / "crasher"
    subprocess.run(
        [cc, "-std=c11", "-O1", "-D_GNU_SOURCE", f"-I{CONTRIB}", "-o", str(exe), str(where / "crasher.c")],
        check=True,
        capture_output=True,
    )
    return exe


def _no_core() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (1, 1))  # no kernel core, file or pipe


@pytest.mark.timeout(60)
def test_a_crashing_c_program_is_dumped_whole(
    crasher: Path, tmp_path: Path, dump_dir: Path, table_dir: Path
) -> None:
    # GIVEN a C program with 4 KiB and 5 MiB registered, under run --trace-exit with default options
    argv = [
        sys.executable,
        "-m",
        "kmemdump.cli",
        "run",
        "--trace-exit",
        "--no-autoinit",
        "--dir",
        str(dump_dir),
    ]
    log = tmp_path / "run.log"
    with log.open("wb") as stderr:
        run = subprocess.Popen(
            [*argv, "--", str(crasher)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            preexec_fn=_no_core,  # noqa: PLW1509 - setrlimit only
        )
    try:
        assert run.stdout is not None and run.stdin is not None
        assert run.stdout.readline().split()[0] == b"ready", log.read_text()
        # WHEN it stores through a null pointer
        run.stdin.write(b"g")
        run.stdin.close()
        assert run.wait(timeout=30) == 128 + signal.SIGSEGV, log.read_text()
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        run.stdout.close()
    # THEN its dump holds both buffers exactly
    (path,) = dump_dir.iterdir()
    with Dump.open(path) as dump:
        meta = dump.meta
        by_name = {r.name: r for r in meta.regions}
        assert dump.region_bytes(by_name["small"]) == bytes((i * 7) & 0xFF for i in range(4096))
        big = dump.region_bytes(by_name["big"])
        assert big == bytes((i * 13 + i // 4096) & 0xFF for i in range(5 << 20))
    assert (meta.reason, meta.held, meta.partial) == ("death", "exit stop", False)
    # how long it was held is measured; no py-spy tried on a program that is not Python
    assert meta.hold_ms is not None and meta.hold_ms > 0
    # on x86_64 the tracer made a shadow at the SIGSEGV: the regions were read from it, later
    assert meta.shadow == (platform.machine() == "x86_64")
    assert meta.stacks == "not a Python process"
    assert meta.death is not None and meta.death.signal == signal.SIGSEGV


PRODUCER = r"""
import kmemdump
kmemdump.init(table=True)
big = kmemdump.alloc(6 << 20, name="big")
big[:] = bytes(range(256)) * ((6 << 20) // 256)
small = kmemdump.alloc(100, name="small")
small[:] = b"s" * 100
send(str(kmemdump.current_backend().path))
block()
"""


def test_release_comes_after_the_copy_and_before_the_file(table_dir: Path, dump_dir: Path) -> None:
    # GIVEN a live producer with 6 MiB and 100 bytes registered, and staging memory smaller than that
    seen: list[tuple[bool, list[str]]] = []

    def release() -> None:
        names = sorted(p.name for p in dump_dir.iterdir())
        seen.append((any(n.endswith(".core") and not n.startswith(".") for n in names), names))

    with spawn_child(PRODUCER) as child, Staging(CHUNK // 2) as staging:
        table = Path(child.recv())
        staging.reserve(1 << 40)  # capped at its limit
        assert staging.capacity == CHUNK // 2 or staging.capacity == CHUNK
        # WHEN it is dumped as a process the caller holds, with release
        result = dump_target(
            child.pid,
            process_start_time(child.pid),
            table,
            reason="request",
            options=DumpOptions(dump_dir, stacks=False, threads=-1),
            held="exit stop",
            exit_hold=ExitHold(release, staging=staging),
        )
    # THEN release ran once, when no dump was at its final name yet; the file came after
    assert len(seen) == 1 and seen[0][0] is False, seen
    assert result.path.exists() and result.meta.hold_ms is not None
    with CoreImage.open(result.path) as core:
        by_name = {r.name: r for r in result.meta.regions}
        assert core.read(by_name["big"].address, 6 << 20) == bytes(range(256)) * ((6 << 20) // 256)
        assert core.read(by_name["small"].address, 100) == b"s" * 100


def test_release_runs_even_when_the_dump_fails(table_dir: Path, dump_dir: Path) -> None:
    calls = []
    with spawn_child(PRODUCER) as child:
        table = Path(child.recv())
        blocked = dump_dir / "not-a-directory"
        blocked.write_text("x")
        with pytest.raises(KmemdumpError, match="dump"):
            dump_target(
                child.pid,
                process_start_time(child.pid),
                table,
                reason="request",
                options=DumpOptions(blocked, stacks=False, threads=-1),
                held="exit stop",
                exit_hold=ExitHold(lambda: calls.append(1)),
            )
    assert calls, "the process would have been left held"


def test_staged_images_replay_into_a_core_exactly(tmp_path: Path) -> None:
    # bytes written and read straight into the staging memory, across chunk boundaries
    staging = Staging(CHUNK)
    staging.reserve(CHUNK)
    image = staging.image()
    first = os.urandom(CHUNK - 100)
    image.add(0x10000, first)
    image.begin(0x9000000)  # straddles the first chunk's end and maps a second one
    second = bytearray()
    while len(second) < 300:
        room = image.space(300 - len(second))
        part = os.urandom(room.nbytes)
        room[:] = part
        image.commit(len(part))
        second += part
        room.release()
    assert image.end() == 300
    assert image.add(0x20, b"") == 0  # nothing stored: no segment
    assert staging.capacity == 2 * CHUNK and image.bytes_stored == len(first) + 300
    with CoreWriter(tmp_path / "x.core", durable=False) as out:
        image.replay(out)
        path = Path(out.finish([]))
    image.release()
    staging.close()
    with CoreImage.open(path) as core:
        assert core.read(0x10000, len(first)) == first
        assert core.read(0x9000000, 300) == bytes(second)
        assert len(core.segments) == 2


def test_space_and_commit_write_straight_into_the_writer(tmp_path: Path) -> None:
    with CoreWriter(tmp_path / "a.core", durable=False) as plain:
        assert not plain.direct  # not durable: through the page cache, no O_DIRECT
        with pytest.raises(ValueError, match="no segment"):
            plain.space(10)
        plain.begin(0x1000)
        data = os.urandom((4 << 20) + 10)  # more than the staging buffer: two pieces
        written = 0
        while written < len(data):
            room = plain.space(len(data) - written)
            take = room.nbytes
            assert 0 < take <= 4 << 20
            room[:] = data[written : written + take]
            room.release()
            plain.commit(take)
            written += take
        with pytest.raises(ValueError, match="do not fit"):
            plain.commit(5 << 20)
        assert plain.end() == len(data)
        path = Path(plain.finish([]))
    with CoreImage.open(path) as core:
        assert core.read(0x1000, len(data)) == data

"""The producer's persistent arena: the allocator, the file, the registry flag and the API.

* :class:`FirstFit` against an independent model (a hypothesis state machine): blocks never
  overlap, start on 16-byte boundaries, the lowest gap that fits is taken, freed space is reused
  and merged, and exhaustion happens exactly when no gap fits;
* :class:`Arena`: the file (name, mode, header, ``MAP_SHARED`` contents), zeroing, exhaustion, a
  symbolic link planted at its path;
* the registry flags regions inside the arena PERSISTENT, the table backend publishes the arena
  and the flag, and refuses to call foreign memory persistent;
* ``kmemdump.alloc(..., persistent=True)`` / ``free`` in fresh interpreters: a clean exit removes
  table and arena, a forked child leaves the parent's arena alone.
"""

from __future__ import annotations

import ctypes
import json
import os
import pickle
import re
import shutil
import stat
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine
from hypothesis.stateful import invariant
from hypothesis.stateful import precondition
from hypothesis.stateful import rule

from budget import examples
from helpers_child import spawn_child
from kmemdump import BackendError
from kmemdump import InvalidRegionError
from kmemdump import RegionFlags
from kmemdump import RegionKind
from kmemdump import Registry
from kmemdump import RegistryFullError
from kmemdump import UnknownRegionError
from kmemdump.formats import arena as afmt
from kmemdump.formats.table import read_table
from kmemdump.procinfo import self_start_time
from kmemdump.producer.alloc import alloc_persistent
from kmemdump.producer.alloc import free
from kmemdump.producer.arena import Arena
from kmemdump.producer.arena import FirstFit
from kmemdump.producer.backends.table import SharedTableBackend

DOCS = Path(__file__).resolve().parents[1] / "docs" / "formats.md"
SRC = Path(__file__).resolve().parents[1] / "src"


# --- the allocator --------------------------------------------------------------------------------

ARENA = 1024


def gaps(used: dict[int, int], size: int) -> list[tuple[int, int]]:
    """The free gaps between the used blocks, computed from the blocks alone (the model)."""
    found, cursor = [], 0
    for offset in sorted(used):
        if offset > cursor:
            found.append((cursor, offset))
        cursor = offset + used[offset]
    if cursor < size:
        found.append((cursor, size))
    return found


class FirstFitMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.alloc = FirstFit(ARENA)
        self.model: dict[int, int] = {}  # offset -> rounded length

    @rule(size=st.one_of(st.integers(1, 48), st.integers(1, ARENA + 32)))
    def allocate(self, size: int) -> None:
        need = -(-size // 16) * 16
        fitting = [start for start, end in gaps(self.model, ARENA) if end - start >= need]
        offset = self.alloc.allocate(size)
        if not fitting:
            assert offset is None  # exhaustion exactly when no gap is large enough
            return
        assert offset == fitting[0]  # first fit: the lowest gap that holds it
        self.model[offset] = need

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        offset = data.draw(st.sampled_from(sorted(self.model)))
        assert self.alloc.release(offset) == self.model.pop(offset)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def release_then_reuse(self, data: st.DataObject) -> None:
        offset = data.draw(st.sampled_from(sorted(self.model)))
        length = self.model.pop(offset)
        self.alloc.release(offset)
        again = self.alloc.allocate(length)
        assert again is not None and again <= offset  # the freed space (or a lower gap) serves it
        self.model[again] = length

    @rule(offset=st.integers(0, ARENA))
    def double_free_is_refused(self, offset: int) -> None:
        if offset not in self.model:
            with pytest.raises(KeyError):
                self.alloc.release(offset)

    @invariant()
    def blocks_are_aligned_disjoint_and_inside(self) -> None:
        assert self.alloc.used == self.model
        end = 0
        for offset in sorted(self.model):
            assert offset % 16 == 0 and self.model[offset] % 16 == 0
            assert offset >= end  # no overlap with the previous block
            end = offset + self.model[offset]
        assert end <= ARENA

    @invariant()
    def free_list_is_merged_and_complete(self) -> None:
        extents = self.alloc.free_extents
        assert extents == gaps(self.model, ARENA)  # sorted, and no two extents touch
        assert self.alloc.free_bytes + sum(self.model.values()) == ARENA
        assert self.alloc.largest_free == max((e - s for s, e in extents), default=0)


TestFirstFit = FirstFitMachine.TestCase
TestFirstFit.settings = settings(max_examples=examples(300), stateful_step_count=40, deadline=None)


def test_first_fit_sizes_must_be_aligned() -> None:
    for size in (0, 24, -16):
        with pytest.raises(InvalidRegionError):
            FirstFit(size)


def test_whole_arena_then_nothing_then_all_again() -> None:
    alloc = FirstFit(64)
    assert [alloc.allocate(16) for _ in range(5)] == [0, 16, 32, 48, None]
    for offset in (16, 48, 32, 0):
        alloc.release(offset)
    assert alloc.free_extents == [(0, 64)]
    assert alloc.allocate(64) == 0


# --- the arena file ----------------------------------------------------------------------------------


@pytest.fixture
def arena_dir(tmp_path: Path) -> Path:
    path = tmp_path / "tables"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def arena(arena_dir: Path) -> Iterator[Arena]:
    made = Arena(arena_dir, 4096)
    yield made
    made.remove_file()


def test_arena_file_name_mode_and_header(arena: Arena, arena_dir: Path) -> None:
    assert arena.path == arena_dir / f"{os.getpid()}-{self_start_time()}.arena"
    info = arena.path.lstat()
    assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_size == 64 + 4096
    raw = arena.path.read_bytes()
    header = afmt.parse_arena_header(raw)
    assert (header.pid, header.start_time, header.size, header.base) == (
        os.getpid(),
        self_start_time(),
        4096,
        arena.base,
    )
    assert raw[:8] == b"KMDARENA" and struct.unpack_from("<HH", raw, 8) == (1, 64)
    assert os.listdir(arena_dir) == [arena.path.name]  # no temporary file left


def test_blocks_are_the_file_bytes(arena: Arena) -> None:
    first = arena.allocate(5)
    second = arena.allocate(40)
    assert (first.size, second.size) == (5, 40)
    assert len(first.view) == 5 and not first.view.readonly and first.view.format == "B"
    assert (first.address - arena.base, second.address - arena.base) == (0, 16)
    assert ctypes.addressof(ctypes.c_char.from_buffer(second.view)) == second.address
    second.view[:] = bytes(range(40))
    with open(arena.path, "rb") as f:  # MAP_SHARED: the store is in the file at once
        assert os.pread(f.fileno(), 40, 64 + 16) == bytes(range(40))
    arena.release(second)
    with open(arena.path, "rb") as f:  # a freed block is zeroed in the file
        assert os.pread(f.fileno(), 40, 64 + 16) == bytes(40)
    again = arena.allocate(40)
    assert again.address == second.address and bytes(again.view) == bytes(40)


def test_exhaustion_says_to_raise_arena_size(arena: Arena) -> None:
    arena.allocate(4000)
    with pytest.raises(RegistryFullError, match=r"arena_size") as info:
        arena.allocate(200)
    assert info.value.context["arena_size"] == 4096 and info.value.context["largest"] == 96
    with pytest.raises(InvalidRegionError):
        arena.allocate(0)


def test_a_symlink_at_the_arena_path_is_refused(arena_dir: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    planted = arena_dir / f"{os.getpid()}-{self_start_time()}.arena"
    planted.symlink_to(victim)
    with pytest.raises(BackendError, match="refusing to create the arena"):
        Arena(arena_dir, 4096)
    assert victim.read_bytes() == b"keep me" and planted.is_symlink()
    assert sorted(os.listdir(arena_dir)) == [planted.name]  # the temporary file is gone


def test_a_stale_arena_of_ours_is_replaced(arena_dir: Path) -> None:
    stale = arena_dir / f"{os.getpid()}-{self_start_time()}.arena"
    stale.write_bytes(b"from an earlier boot")
    made = Arena(arena_dir, 256)
    try:
        assert afmt.parse_arena_header(stale.read_bytes()).base == made.base
    finally:
        made.remove_file()
    assert not stale.exists()


def test_a_shared_directory_is_refused_for_a_private_one(tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    arena = Arena(loose, 256)
    try:
        assert arena.directory != loose and arena.directory.name.startswith(f"kmemdump-{os.geteuid()}.")
        assert os.listdir(loose) == []
    finally:
        arena.remove_file()
        shutil.rmtree(arena.directory, ignore_errors=True)


@pytest.mark.parametrize("size", [0, -1, True, 2**40 + 1, 1.5])
def test_bad_sizes_are_refused(size: Any, arena_dir: Path) -> None:
    with pytest.raises(InvalidRegionError, match="arena_size"):
        Arena(arena_dir, size)


def test_sizes_round_up_to_16() -> None:
    assert [afmt.check_arena_size(n) for n in (1, 16, 17, 4095)] == [16, 16, 32, 4096]


def test_docs_describe_the_arena_header() -> None:
    section = DOCS.read_text(encoding="utf-8").split("## The arena file", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+) \| (\d+) \| `(\w+)` \|", section, re.MULTILINE)
    position = 0
    for offset, size, name in rows:
        assert int(offset) == position, name
        if name != "reserved":
            assert getattr(afmt, f"OFF_{name.upper()}") == position, name
        position += int(size)
    assert position == afmt.HEADER_SIZE == afmt.HEADER_STRUCT.size


# --- registry, allocation wrappers, table backend -------------------------------------------------------


def test_registry_flags_regions_inside_the_arena(arena: Arena) -> None:
    registry = Registry(capacity=8)
    registry.set_persistent_range(arena.base, arena.size)
    view = alloc_persistent(registry, arena, 24, name="journal")
    plain = registry.register(bytearray(8), name="plain")
    inside = registry.register(arena.base + 100, 8, name="raw-inside")
    straddling = registry.register(arena.base + arena.size - 4, 8, name="raw-across")
    flags = {r.name: r.flags for r in registry.regions()}
    assert flags == {"journal": RegionFlags.PERSISTENT, "plain": 0, "raw-inside": 1, "raw-across": 0}
    assert registry.get(plain).kind is RegionKind.BUFFER and len(view) == 24
    registry.set_persistent_range(None)  # e.g. in a forked child: nothing is persistent any more
    assert {r.flags for r in registry.regions()} == {0}
    assert registry.persistent_range is None
    registry.set_persistent_range(arena.base, arena.size)
    assert registry.get(inside).flags == 1 and registry.get(straddling).flags == 0
    with pytest.raises(InvalidRegionError):
        registry.set_persistent_range(-5, 10)


def test_free_returns_the_block_and_unregisters_what_lies_in_it(arena: Arena) -> None:
    registry = Registry(capacity=8)
    registry.set_persistent_range(arena.base, arena.size)
    view = alloc_persistent(registry, arena, 32, name="a")
    view[:4] = b"data"
    rid = registry.ids_of(view)[0]
    part = registry.register(registry.get(rid).address + 8, 4, name="part")  # a raw alias into it
    other = alloc_persistent(registry, arena, 16, name="b")
    free(registry, view, arena=arena)
    assert [r.name for r in registry.regions()] == ["b"]  # the alias went with the block
    with pytest.raises(ValueError, match="released"):
        view[0]
    with pytest.raises(UnknownRegionError):
        registry.get(part)
    again = alloc_persistent(registry, arena, 32, name="c")
    assert bytes(again) == bytes(32)  # reused, zeroed
    free(registry, registry.ids_of(other)[0], arena=arena)  # by ID
    assert len(arena.blocks()) == 1
    plain = bytearray(8)
    registry.register(plain)
    free(registry, plain, arena=arena)  # not a block: the ordinary path
    assert [r.name for r in registry.regions()] == ["c"]


def test_free_refuses_while_the_view_is_exported(arena: Arena) -> None:
    registry = Registry(capacity=4)
    registry.set_persistent_range(arena.base, arena.size)
    view = alloc_persistent(registry, arena, 16)
    export = pickle.PickleBuffer(view)  # holds a buffer export of the view itself
    with pytest.raises(InvalidRegionError, match="still in use"):
        free(registry, view, arena=arena)
    assert len(registry) == 1 and len(arena.blocks()) == 1  # nothing changed
    del export
    free(registry, view, arena=arena)
    assert len(registry) == 0 and arena.blocks() == []


def test_a_refused_registration_gives_the_block_back(arena: Arena) -> None:
    registry = Registry(capacity=1)
    registry.register(bytearray(1))
    with pytest.raises(RegistryFullError):
        alloc_persistent(registry, arena, 64)
    assert arena.blocks() == [] and arena.free_bytes == arena.size


def test_table_publishes_the_arena_and_the_flag(arena: Arena, arena_dir: Path, monkeypatch: Any) -> None:
    from kmemdump.producer import arena as arena_module

    monkeypatch.setattr(arena_module._state, "arena", arena)
    registry = Registry(capacity=8)
    registry.set_persistent_range(arena.base, arena.size)
    backend = SharedTableBackend(arena_dir, capacity=8)
    try:
        registry.backend_register(backend)
        assert read_table(backend.path).header.arena_size == arena.size  # named at publication
        alloc_persistent(registry, arena, 100, name="kept")
        registry.register(bytearray(4), name="lost")
        snap = read_table(backend.path)
        assert (snap.header.arena_base, snap.header.arena_size) == (arena.base, arena.size)
        assert {e.name: e.flags for e in snap.entries} == {"kept": 1, "lost": 0}
        # a second table gets the persistent regions on replay
        registry.backend_unregister(backend)
        backend.close()
        again = SharedTableBackend(arena_dir, capacity=8)
        registry.backend_register(again)
        snap = read_table(again.path)
        assert snap.header.arena_base == arena.base
        assert {e.name: e.flags for e in snap.entries} == {"kept": 1, "lost": 0}
        registry.backend_unregister(again)
        again.close()
    finally:
        backend.close()


def test_a_table_elsewhere_publishes_persistent_regions_as_ordinary(
    arena: Arena, tmp_path: Path, monkeypatch: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from kmemdump.producer import arena as arena_module

    monkeypatch.setattr(arena_module._state, "arena", arena)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    registry = Registry(capacity=4)
    registry.set_persistent_range(arena.base, arena.size)
    backend = SharedTableBackend(elsewhere, capacity=4)
    try:
        registry.backend_register(backend)
        alloc_persistent(registry, arena, 8, name="kept")
        snap = read_table(backend.path)
        assert snap.header.arena_size == 0 and [e.flags for e in snap.entries] == [0]
        assert "not in the table directory" in caplog.text
        registry.backend_unregister(backend)
    finally:
        backend.close()


# --- the API in fresh interpreters ---------------------------------------------------------------------


def run_code(code: str, table_dir: Path) -> dict[str, Any]:
    env = {**os.environ, "KMEMDUMP_DIR": str(table_dir), "PYTHONPATH": str(SRC)}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def test_api_alloc_and_free(table_dir: Path) -> None:
    out = run_code(
        """
        import json, kmemdump
        from kmemdump.formats.table import read_table
        report = kmemdump.init(table=True, arena_size=1000, pycoreinfo=False)
        kept = kmemdump.alloc(100, name="kept", persistent=True)
        kept[:5] = b"hello"
        plain = kmemdump.alloc(10, name="plain")
        fixed = kmemdump.alloc(16, id=kmemdump.ID.USER_START, name="fixed", persistent=True)
        renewed = kmemdump.alloc(32, id=kmemdump.ID.USER_START, replace=True, persistent=True)
        flags = {r.name: int(r.flags) for r in kmemdump.regions()}
        snap = read_table(report.table)
        try:
            kmemdump.alloc(2000, persistent=True)
        except kmemdump.RegistryFullError as err:
            full = str(err)
        try:
            kmemdump.init(arena_size=5000)
        except kmemdump.InvalidRegionError as err:
            resize = str(err)
        kmemdump.init(arena_size=1000)  # the same size: fine
        kmemdump.free(kept)
        try:
            kept[0]
        except ValueError:
            released = True
        try:
            fixed[0]
        except ValueError:
            replaced = True  # replace=True gave the old block back
        renewed_size = len(renewed)
        kmemdump.free(kmemdump.ID.USER_START)
        print(json.dumps({
            "types": [type(kept).__name__, type(plain).__name__], "flags": flags, "full": full,
            "resize": resize, "released": released, "left": [r.name for r in kmemdump.regions()],
            "entries": {e.name: e.flags for e in snap.entries}, "arena_size": snap.header.arena_size,
            "replaced": replaced, "renewed": renewed_size,
        }))
        """,
        table_dir,
    )
    assert out["types"] == ["memoryview", "bytearray"]
    # renewed kept the ID; init(table=True) put the banner in the arena
    assert out["flags"] == {"banner": 1, "kept": 1, "plain": 0, "memoryview": 1}
    assert out["entries"] == {"banner": 1, "kept": 1, "plain": 0, "memoryview": 1}
    assert out["arena_size"] == 1008  # rounded up to 16
    assert "arena_size" in out["full"] and "size=2000" in out["full"]
    assert "before the first persistent allocation" in out["resize"]
    assert out["released"] is True and out["left"] == ["banner", "plain"]
    assert out["replaced"] is True and out["renewed"] == 32


def test_clean_exit_removes_table_and_arena(table_dir: Path) -> None:
    code = (
        "import os, kmemdump\n"
        "report = kmemdump.init(table=True, pycoreinfo=False)\n"
        "buf = kmemdump.alloc(64, persistent=True)\n"
        "buf[:2] = b'hi'\n"
        "send({'table': report.table, 'names': os.listdir(os.path.dirname(report.table))})\n"
        "block()\n"
    )
    with spawn_child(code) as child:
        info = child.recv()
        assert sorted(info["names"]) == sorted(
            [Path(info["table"]).name, Path(info["table"]).name.replace(".table", ".arena")]
        )
        child.release()
        assert child.wait() == 0
    assert list(table_dir.iterdir()) == []


def test_persistent_alloc_needs_no_table_and_keeps_import_light(table_dir: Path) -> None:
    out = run_code(
        """
        import json, os, sys, kmemdump
        light = "kmemdump.producer.arena" not in sys.modules and "ctypes" not in sys.modules
        buf = kmemdump.alloc(8, persistent=True)
        print(json.dumps({"light": light, "files": sorted(os.listdir(os.environ["KMEMDUMP_DIR"]))}))
        """,
        table_dir,
    )
    assert out["light"] is True
    assert [Path(name).suffix for name in out["files"]] == [".arena"]
    assert list(table_dir.iterdir()) == []  # removed at exit, with no table at all


def test_a_forked_child_leaves_the_parents_arena_alone(table_dir: Path) -> None:
    out = run_code(
        """
        import json, os, kmemdump
        from kmemdump.formats.table import read_table
        report = kmemdump.init(table=True, pycoreinfo=False)
        inherited = kmemdump.alloc(16, name="inherited", persistent=True)
        inherited[:6] = b"parent"
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            backend = kmemdump.current_backend()
            table = backend.reopen_for_child()
            before = read_table(table)
            own = kmemdump.alloc(16, name="own", persistent=True)
            own[:5] = b"child"
            after = read_table(table)
            arena = kmemdump.producer.arena.current()
            info = {
                "before": [before.header.arena_size, {e.name: e.flags for e in before.entries}],
                "after": [after.header.arena_base == arena.base, {e.name: e.flags for e in after.entries}],
                "arena": str(arena.path), "pid": os.getpid(),
            }
            kmemdump.free(inherited)  # forgets the parent's block without touching its bytes
            os.write(w, json.dumps(info).encode())
            backend.close()
            arena.remove_file()
            os._exit(0)
        os.close(w)
        child = json.loads(os.read(r, 65536))
        os.waitpid(pid, 0)
        import kmemdump.producer.arena
        parent = kmemdump.producer.arena.current()
        print(json.dumps({
            "child": child, "parent_arena": str(parent.path), "parent_bytes": bytes(inherited[:6]).decode(),
            "parent_exists": parent.path.exists(), "left": sorted(os.listdir(os.environ["KMEMDUMP_DIR"])),
        }))
        """,
        table_dir,
    )
    child = out["child"]
    assert child["before"] == [0, {"banner": 0, "inherited": 0}]  # not the child's arena: not persistent
    assert child["after"] == [True, {"banner": 0, "inherited": 0, "own": 1}]
    assert child["arena"] != out["parent_arena"] and Path(child["arena"]).name.startswith(f"{child['pid']}-")
    assert out["parent_bytes"] == "parent" and out["parent_exists"] is True
    assert len(out["left"]) == 2  # the parent's table and arena, while it ran
    assert list(table_dir.iterdir()) == []

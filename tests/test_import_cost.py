"""``import kmemdump`` stays cheap: standard library only, nothing of the collector, nothing eager.

Each check runs ``import kmemdump`` in a fresh interpreter and looks at ``sys.modules``. It does
not time anything. The producer is also imported by every other interpreter found on this
machine (3.10 and up), from the source tree, with no third-party package on the path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

FORBIDDEN_EXACT = {"ctypes", "_ctypes", "json", "importlib.metadata", "typing", "re", "dataclasses"}
FORBIDDEN_EXACT |= {"inspect", "enum"}
"""Standard-library modules too heavy to load before they are needed (typing and re alone cost a few
milliseconds of the 20 ms ``import kmemdump`` may take: annotations need typing only under mypy)."""

FORBIDDEN_PACKAGES = (
    # collector side: never in a producer (tests/test_layering.py checks the imports themselves)
    "kmemdump.collector",
    "kmemdump.cli",
    "kmemdump.inspect",
    "kmemdump.memory",
    "elftools",
    "rich",
    "backports",
    "compression",
    # producer side, loaded only when first needed: a table, an arena, the Python layout
    "kmemdump.producer.backends.table",
    "kmemdump.producer.arena",
    "kmemdump.producer.python",
    "kmemdump.formats.arena",
    "kmemdump.formats.pycoreinfo",
)


_PROBE = """
import json, sys
before = set(sys.modules)
import kmemdump
after = set(sys.modules)
print(json.dumps({"new": sorted(after - before), "stdlib": sorted(sys.stdlib_module_names)}))
"""


def _probe(python: str = sys.executable, *, isolated_src: bool = False) -> dict[str, Any]:
    env = dict(os.environ)
    args = [python, "-c", _PROBE]
    if isolated_src:  # -S: no site-packages at all, only the standard library and our sources
        args.insert(1, "-S")
        env["PYTHONPATH"] = str(SRC)
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env, check=False)
    assert result.returncode == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    # json itself was imported by the probe before the snapshot; it is checked separately below
    return out


def _offenders(new: list[str]) -> list[str]:
    bad = [m for m in new if m in FORBIDDEN_EXACT]
    bad += [m for m in new if any(m == p or m.startswith(p + ".") for p in FORBIDDEN_PACKAGES)]
    return sorted(set(bad))


@pytest.mark.timeout(90)
def test_import_loads_nothing_heavy() -> None:
    out = _probe()
    assert _offenders(out["new"]) == []


@pytest.mark.timeout(90)
def test_import_is_standard_library_only() -> None:
    out = _probe()
    stdlib = set(out["stdlib"])
    foreign = [m for m in out["new"] if m.split(".")[0] not in stdlib and m.split(".")[0] != "kmemdump"]
    assert foreign == []


@pytest.mark.timeout(90)
def test_json_and_ctypes_not_imported() -> None:
    # the probe above imports json itself; check it (and ctypes) with a probe that does not
    code = (
        "import sys, kmemdump\n"
        "kmemdump.register(object())  # an object registration needs no ctypes either\n"
        "print(' '.join(m for m in ('json', 'ctypes', '_ctypes') if m in sys.modules) or 'none')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "none"


@pytest.mark.timeout(90)
def test_ctypes_loaded_on_first_buffer_registration() -> None:
    code = (
        "import sys, kmemdump\n"
        "print('ctypes' in sys.modules)\n"
        "kmemdump.register(bytearray(8))\n"
        "print('ctypes' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"]


def _interpreters() -> list[str]:
    found = []
    for version in ("3.10", "3.11", "3.12", "3.13", "3.14"):
        candidates = sorted(Path("/root/.pyenv/versions").glob(f"{version}.*/bin/python"))
        if candidates:
            found.append(str(candidates[-1]))
    return found


@pytest.mark.timeout(120)
@pytest.mark.parametrize("python", _interpreters() or [sys.executable], ids=lambda p: Path(p).parents[1].name)
def test_producer_imports_on_bare_interpreter(python: str) -> None:
    if not Path(python).exists():
        pytest.skip(f"{python} not found")
    out = _probe(python, isolated_src=True)
    assert "kmemdump" in out["new"]
    assert _offenders(out["new"]) == []
    stdlib = set(out["stdlib"])
    assert [m for m in out["new"] if m.split(".")[0] not in stdlib | {"kmemdump"}] == []


_CLI_PROBE = """
import io, json, sys
from contextlib import redirect_stderr, redirect_stdout
from kmemdump.cli.main import main
with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
    code = main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""

CLI_FORBIDDEN = {
    # every command: argparse asks shutil for the width (with bz2 and lzma) unless given it
    "*": {"shutil", "bz2", "lzma"},
    "--version": {"argparse", "dataclasses", "pathlib", "typing"},
    # ls and show: what a listing or a dump's report does not need
    "ls": {
        "typing",
        "datetime",
        "kmemdump.collector",
        "kmemdump.fleet.url",
        "kmemdump.formats.dumpindex",
        "kmemdump.inspect.triage",
        "kmemdump.formats.corenotes",
        "kmemdump.formats.faults",
        "kmemdump.formats.pycoreinfo",
        "kmemdump.formats.stacks",
        "kmemdump.cli.cmd_show",
        "signal",
        "pprint",
    },
    # show: the stacks' decoder for a dump with stacks, pprint for one with objects, signal's enums to
    # name a signal that ended a process
    "show": {
        "typing",
        "datetime",
        "kmemdump.collector",
        "kmemdump.fleet.url",
        "kmemdump.cli.cmd_ls",
        "kmemdump.formats.stacks",
        "signal",
        "pprint",
    },
    # dump: the writer, not the reader; the object-graph walker and its decoder only for a process with
    # roots, py-spy's helpers only with stacks, the exit listener's socket only in a collector; its
    # command line parsed without argparse (cmd_dump.quick_parse)
    "dump": {
        "argparse",
        "gettext",
        "secrets",
        "socket",
        "kmemdump.inspect.dumpfile",
        "kmemdump.inspect.cpython",
        "kmemdump.collector.graphs",
        "kmemdump.formats.pycoreinfo",
        "kmemdump.cli.cmd_show",
        "kmemdump.cli.cmd_ls",
        "pathlib",  # its paths are str (kmemdump.paths); re: see DUMP_RUN_FORBIDDEN (this probe loads json)
    },
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", ["--version", "ls", "show", "dump"])
def test_the_command_line_loads_only_what_the_command_needs(command: str, tmp_path: Path) -> None:
    """Start-up is import time: each command's modules, and no other command's (the figures are the
    `cli` benchmark's, beside a bare interpreter)."""
    argv = [command]
    if command == "ls":
        argv.append(str(tmp_path))
    elif command == "show":
        argv += [str(tmp_path / "no.core")]  # an error, after the command's own imports
    elif command == "dump":
        argv += ["1", "--tables", str(tmp_path)]  # no table there: an error, after the imports
    result = subprocess.run(
        [sys.executable, "-c", _CLI_PROBE, *argv], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["code"] == (1 if command in ("show", "dump") else 0)
    loaded = set(out["modules"])
    forbidden = CLI_FORBIDDEN["*"] | CLI_FORBIDDEN[command]
    found = {m for m in loaded for f in forbidden if m == f or m.startswith(f + ".")}
    assert found == set(), sorted(found)


_PRODUCER = """
import os, kmemdump
kmemdump.init(table=True)
data = bytearray(os.urandom(1 << 20))
kmemdump.register(data, name="data")
send({"pid": os.getpid()})
block()
"""

_DUMP_PROBE = """
import sys
from kmemdump.cli.main import main
code = main(sys.argv[1:])
print()
print(code)
print(" ".join(sorted(sys.modules)))
"""  # as _CLI_PROBE, without json (it is one of the modules looked for)

DUMP_RUN_FORBIDDEN = CLI_FORBIDDEN["dump"] | {
    # what a dump of a Python process with --no-stacks does without: JSON notes come from the C encoder
    # (formats.jsonwrite), the host's name and machine from os.uname(), no py-spy helpers
    "json",
    "platform",
    "shlex",
    "kmemdump.collector.stacks",
    "kmemdump.formats.stacks",
    # annotations need typing only under mypy; the file name's time is formatted by time.strftime
    "typing",
    "datetime",
    # a request needs neither the exit tracer (with its exit listener and shadow), the staging memory
    # of a death held at its exit, the arena of a process gone, nor the interpreter's state (--capture
    # stacks only)
    "kmemdump.collector.tracer",
    "kmemdump.collector.exits",
    "kmemdump.collector.shadow",
    "kmemdump.collector.staging",
    "kmemdump.memory.arena",
    "kmemdump.collector.pystate",
    "kmemdump.collector.pyoffsets",
    "queue",  # the writer's queue is _queue.SimpleQueue itself
    "kmemdump.fleet",  # cli.main loads the fleet's errors only for an error
    # pathlib with what it imports (about 5 ms): the dump's paths are str (kmemdump.paths, os.path), its
    # --dir and --tables too; re: libpython's mapping is told by coreshape.is_libpython, --json's text
    # is written by formats.jsonwrite
    "pathlib",
    "re",
    "fnmatch",
    "urllib",
    "ipaddress",
    # signal (its enums): a ptrace hold sends no signal; the SIGSTOP hold and --after-hang load it
    "signal",
    "contextlib",  # the dump's modules suppress errors with try/except; acting_on is a class
    # the region kinds, table states and IDs are read as the ints they are; their enums (and enum
    # itself) are made only where they are named (formats.enums, idenum)
    "enum",
    "kmemdump.formats.enums",
    "kmemdump.idenum",
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("tables", "as_json"), [(True, False), (False, True)], ids=["tables", "json"])
def test_dump_of_a_real_process_loads_only_what_the_dump_needs(
    tables: bool, as_json: bool, tmp_path: Path
) -> None:
    """``dump PID --no-stacks`` of a live producer, the dump done (not an error before it): the modules
    it loaded on the way, at import and at run time; its table found in ``--tables`` or in
    ``$KMEMDUMP_DIR``, its result printed as text or with ``--json``. The paths given with stray
    slashes come out as pathlib wrote them."""
    from helpers_child import spawn_child

    table_dir, dumps = tmp_path / "tables", tmp_path / "dumps"
    env = {**os.environ, "KMEMDUMP_DIR": str(table_dir)}
    with spawn_child(_PRODUCER, env=env) as child:
        pid = child.recv()["pid"]
        argv = ["dump", str(pid), "--dir", f"{dumps}//", "--no-stacks"]
        argv += ["--tables", f"{table_dir}/"] if tables else []
        argv += ["--json"] if as_json else []
        result = subprocess.run(
            [sys.executable, "-c", _DUMP_PROBE, *argv],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=env,
        )
    assert result.returncode == 0, result.stderr
    printed, _, code, modules = result.stdout.strip().splitlines()[-4:]
    assert code == "0"
    made = list(dumps.glob("*.core"))
    assert len(made) == 1
    if as_json:
        assert json.loads(printed)["path"] == str(made[0])
    else:
        assert printed.startswith(f"{made[0]}: 3 regions, ")
    loaded = set(modules.split())
    forbidden = CLI_FORBIDDEN["*"] | DUMP_RUN_FORBIDDEN
    found = {m for m in loaded for f in forbidden if m == f or m.startswith(f + ".")}
    assert found == set(), sorted(found)


SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "kmemdump"


def _imported(argv: list[str], env: dict[str, str] | None = None) -> set[str]:
    """The modules a fresh interpreter running ``argv`` imports (``-X importtime``'s list, on stderr)."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=None if env is None else {**os.environ, **env},
    )
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stderr.splitlines() if line.startswith("import time:")]
    return {row.rpartition("|")[2].strip() for row in rows} - {"imported package"}


@pytest.mark.timeout(60)
def test_the_kmemdump_command_imports_no_regular_expressions_for_its_version() -> None:
    """The installed command is a script of its own (pip's entry-point wrapper imports ``re`` first,
    a third of ``kmemdump --version``); run by path, it loads neither ``re`` nor argparse."""
    loaded = _imported([str(SCRIPT), "--version"])
    assert "kmemdump.cli.main" in loaded
    assert loaded & {"re", "enum", "argparse", "typing", "dataclasses", "pathlib", "json"} == set()
    installed = Path(sys.executable).parent / "kmemdump"
    if installed.exists():  # this environment's command is that script, its first line rewritten
        assert installed.read_text().splitlines()[1:] == SCRIPT.read_text().splitlines()[1:]


_GC_PROBE = """
import gc, sys
import kmemdump.cli.main as cli
import kmemdump.cli.cmd_{command} as command
real = command.run
def run(args):
    print("during", gc.isenabled(), gc.get_freeze_count() > 0, file=sys.stderr)
    return real(args)
run.__module__ = command.__name__
command.run = run
sys.argv = ["kmemdump", *sys.argv[1:]]
real_exit = cli._exit_at_once
def exit_at_once(code):  # a bounded command ends there, the finally below never run
    print("after", gc.isenabled(), gc.get_freeze_count() > 0, file=sys.stderr)
    real_exit(code)
cli._exit_at_once = exit_at_once
try:
    cli.entry()
finally:
    print("after", gc.isenabled(), gc.get_freeze_count() > 0, file=sys.stderr)
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("command", "during", "after"),
    [("ls", "during True True", "after True True"), ("dump", "during False False", "after False True")],
)
def test_the_command_line_pauses_the_collector_for_its_start_up(
    command: str, during: str, after: str, tmp_path: Path
) -> None:
    """``entry`` pauses the cyclic collector while the command loads; a command that may run for long
    (ls here; watch, run) has it back, with what the start-up made frozen, and a short, bounded one
    (dump) runs without it; the exit freezes what is left instead of collecting it."""
    argv = ["ls", str(tmp_path)] if command == "ls" else ["dump", "1", "--tables", str(tmp_path)]
    probe = [sys.executable, "-c", _GC_PROBE.format(command=command), *argv]
    result = subprocess.run(probe, capture_output=True, text=True, timeout=60, check=False)
    lines = [line for line in result.stderr.splitlines() if line.startswith(("during", "after"))]
    assert lines == [during, after], result.stderr


def test_main_called_in_process_leaves_the_collector_alone(tmp_path: Path) -> None:
    import gc

    from kmemdump.cli.main import main

    frozen = gc.get_freeze_count()
    assert main(["ls", str(tmp_path)]) == 0
    assert gc.isenabled() and gc.get_freeze_count() == frozen


LEAN_FORBIDDEN = {
    # ls: a listing starts within 2x a bare interpreter; each of these costs 1-7 ms (benchmarks: cli)
    "ls": {
        "argparse",
        "re",
        "enum",
        "pathlib",
        "json",
        "typing",
        "functools",
        "collections",
        "shlex",
        "datetime",
        "dataclasses",
        "urllib",
        "logging",
        "kmemdump.ids",
        "kmemdump.formats.kinds",
    },
    # show: neither to show a dump as text (decoding objects loads the IDs' and kinds' enum)
    "show": {
        "argparse",
        "re",
        "json",
        "pathlib",
        "shlex",
        "typing",
        "datetime",
        "dataclasses",
        "urllib",
        "logging",
    },
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", ["ls", "show"])
def test_ls_and_show_load_no_heavy_module(command: str, tmp_path: Path) -> None:
    """The installed command on a directory of real dumps (the common forms quick_parse reads)."""
    from helpers_fleet import write_dump

    frames = [("wait", "/srv/app/worker.py", 12), ("main", "/srv/app/worker.py", 40)]
    made = [
        write_dump(tmp_path, host="web-1", pid=100 + n, reason="hang",
                   captured_ns=(1_795_000_000 + n) * 10**9, threads=[("MainThread", True, frames)])
        for n in range(3)
    ]  # fmt: skip
    argvs = {
        "ls": [["ls", str(tmp_path)], ["ls", "-r", "-n", "2", "--pid", "101", "--plain"]],
        "show": [["show", str(made[0])], ["show", "latest", "--plain"], ["show", "2", "--no-decode"]],
    }[command]
    for argv in argvs:  # names and numbers refer to $KMEMDUMP_DUMPS
        loaded = _imported([str(SCRIPT), *argv], env={"KMEMDUMP_DUMPS": str(tmp_path)})
        assert f"kmemdump.cli.cmd_{command}" in loaded and "kmemdump.inspect.dumpfile" in loaded
        heavy = {m for m in loaded for f in LEAN_FORBIDDEN[command] if m == f or m.startswith(f + ".")}
        assert heavy == set(), (argv, sorted(heavy))


_EXIT_PROBE = """
import atexit, builtins, os, sys, threading, time
class Finalized:
    def __del__(self):
        os.write(2, b"finalized\\n")
builtins.kmemdump_probe = Finalized()  # its __del__ runs when the interpreter is torn down
if os.environ["PENDING"] == "atexit":
    atexit.register(os.write, 2, b"atexit handler ran\\n")
elif os.environ["PENDING"] == "thread":
    threading.Thread(target=lambda: (time.sleep(0.2), os.write(2, b"thread ran\\n"))).start()
sys.argv = ["kmemdump", *sys.argv[1:]]
from kmemdump.cli.main import entry
entry()
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("pending", ["nothing", "atexit", "thread"])
def test_a_dump_ends_without_the_interpreters_teardown_unless_something_waits_for_it(
    pending: str, tmp_path: Path
) -> None:
    """``dump PID`` (a bounded command) ends once its output is flushed, without tearing the
    interpreter down (cli.main._exit_at_once); an atexit handler or a thread still running gets the
    ordinary exit, which runs or waits for it."""
    from helpers_child import spawn_child

    tables, dumps = tmp_path / "tables", tmp_path / "dumps"
    env = {**os.environ, "KMEMDUMP_DIR": str(tables), "PENDING": pending}
    with spawn_child(_PRODUCER, env=env) as child:
        pid = child.recv()["pid"]
        argv = ["dump", str(pid), "--dir", str(dumps), "--no-stacks", "--json"]
        result = subprocess.run(
            [sys.executable, "-c", _EXIT_PROBE, *argv],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=env,
        )
    assert result.returncode == 0, result.stderr
    made = list(dumps.glob("*.core"))
    assert len(made) == 1 and json.loads(result.stdout)["path"] == str(made[0])  # the output, whole
    said = result.stderr.splitlines()
    expected = {
        "nothing": [],
        "atexit": ["atexit handler ran", "finalized"],
        "thread": ["thread ran", "finalized"],
    }[pending]
    assert said == expected, result.stderr

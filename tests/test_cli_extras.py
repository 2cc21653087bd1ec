"""Every subcommand with each optional package missing: a one-line error naming the extra, never a traceback.

The optional parts are the ``inspect`` extra (zstd: compressed dumps), ``pretty`` (rich: terminal
tables) and ``stacks`` (py-spy: the Python stacks). A package is made missing for real:

* rich and zstd by a ``sitecustomize`` on PYTHONPATH whose meta-path finder refuses to import them
  (as an interpreter without them would);
* py-spy by running the command from a second venv that has no py-spy binary beside its
  interpreter, with PATH stripped of every directory holding one (the same lookup the collector does).

Each configuration runs every subcommand (and ``--help`` of each) against a real producer process
and real dumps, plain and compressed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers_child import Child
from helpers_child import spawn_child
from helpers_cli import Result
from helpers_cli import cli_env
from helpers_cli import run_in_pty
from helpers_cli import run_piped
from kmemdump.cli.main import COMMANDS

pytestmark = pytest.mark.slow

HIDER = r'''
"""Make some packages missing for this interpreter: $KMEMDUMP_TEST_HIDE, comma-separated."""
import os
import sys

_HIDDEN = tuple(name for name in os.environ.get("KMEMDUMP_TEST_HIDE", "").split(",") if name)


class _Hide:
    def find_spec(self, name, path=None, target=None):
        if any(name == hidden or name.startswith(hidden + ".") for hidden in _HIDDEN):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _Hide())
'''

PRODUCER = r"""
import kmemdump
kmemdump.init(table=True)
orders = kmemdump.alloc(64, name="orders")
orders[:5] = b"hello"
send("ready")
block()
"""


@dataclass(frozen=True)
class Setup:
    """What every configuration runs against."""

    tables: Path
    plain: Path
    compressed: Path
    producer: Child


@dataclass(frozen=True)
class Config:
    name: str
    python: str
    env: dict[str, str]
    missing: str | None
    """The extra whose package is missing (None: the one-line checks do not apply)."""


def _path_without_py_spy() -> str:
    dirs = os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)
    return os.pathsep.join(d for d in dirs if d and not os.path.exists(os.path.join(d, "py-spy")))


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An interpreter of a venv with no py-spy, seeing this venv's packages (and so kmemdump)."""
    venv = tmp_path_factory.mktemp("venv-no-py-spy")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = sysconfig.get_paths()["purelib"]
    Path(purelib, "zz_kmemdump_test.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    assert not (venv / "bin" / "py-spy").exists()
    return str(python)


@pytest.fixture(scope="module")
def hider(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("hider")
    (where / "sitecustomize.py").write_text(HIDER)
    return where


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tables = tmp_path_factory.mktemp("tables")
    tables.chmod(0o700)
    dumps = tmp_path_factory.mktemp("made")
    env = dict(os.environ, KMEMDUMP_DIR=str(tables))
    with spawn_child(PRODUCER, env=env) as producer:
        assert producer.recv() == "ready"
        made = []
        for extra in ([], ["--compress"]):
            result = run_piped(
                ["dump", str(producer.pid), "--dir", str(dumps), "--no-stacks", *extra], env=env
            )
            assert result.code == 0, result.err
            made.append(Path(result.out.split(": ")[0]))
        yield Setup(tables, made[0], made[1], producer)


def _config(name: str, bare_python: str, hider: Path, tables: Path) -> Config:
    env = cli_env({"KMEMDUMP_DIR": str(tables)})
    hide = {
        "pretty": "rich",
        "inspect": "backports.zstd,compression.zstd",
        "all": "rich,backports.zstd,compression.zstd,elftools",
    }
    if name in hide:
        env["KMEMDUMP_TEST_HIDE"] = hide[name]
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(hider), env.get("PYTHONPATH", "")) if p)
    python = sys.executable
    if name in ("stacks", "all"):
        python = bare_python
        env["PATH"] = _path_without_py_spy()
        env.pop("KMEMDUMP_PY_SPY", None)
    return Config(name, python, env, None if name == "all" else name)


def _one_line_naming(result: Result, extra: str) -> None:
    assert "Traceback" not in result.err, result.err
    assert len(result.err_lines) == 1, result.err
    assert f"pip install 'kmemdump[{extra}]'" in result.err, result.err


def _clean(result: Result, code: int = 0) -> None:
    assert "Traceback" not in result.err + result.out, result.err
    assert result.code == code, result.err


@pytest.mark.parametrize("name", ["pretty", "inspect", "stacks", "all"])
def test_every_subcommand_without_an_optional_package(
    name: str, bare_python: str, hider: Path, setup: Setup, tmp_path: Path
) -> None:
    config = _config(name, bare_python, hider, setup.tables)
    zstd_missing = name in ("inspect", "all")
    stacks_missing = name in ("stacks", "all")
    dumps = tmp_path / "dumps"

    def cli(*argv: str) -> Result:
        return run_piped(argv, python=config.python, env=config.env)

    # the hiding works: the interpreter really lacks the package
    probe = subprocess.run(
        [config.python, "-c", "import rich, backports.zstd"], env=config.env, capture_output=True, check=False
    )
    assert (probe.returncode != 0) == (name in ("pretty", "inspect", "all"))
    if stacks_missing:
        found = subprocess.run(
            [config.python, "-c", "from kmemdump.collector.stacks import find_py_spy; print(find_py_spy())"],
            env=config.env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert found.stdout.strip() == "None"

    for argv in (["--version"], ["--help"], *([command, "--help"] for command in COMMANDS)):
        result = cli(*argv)
        _clean(result)
        assert result.out

    # collecting
    result = cli("demo", "--dir", str(dumps), "--timeout", "0.3")
    _clean(result)
    assert "Banner recovered from 0x" in result.out
    result = cli("run", "-q", "--dir", str(dumps), "--", config.python, "-c", "pass")
    _clean(result)
    watch = subprocess.Popen(
        [config.python, "-m", "kmemdump.cli", "watch", "--tables", str(setup.tables), "--dir", str(dumps)],
        env=config.env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watch.stderr is not None
        assert watch.stderr.readline().startswith("watching ")
        watch.send_signal(signal.SIGTERM)
        _, err = watch.communicate(timeout=60)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert watch.returncode == 0 and "Traceback" not in err, err
    _clean(cli("ps", "--tables", str(setup.tables)))
    result = cli("dump", str(setup.producer.pid), "--dir", str(dumps))
    _clean(result)
    assert result.out.count("\n") == 1
    if stacks_missing:
        assert "complete" not in result.out
        assert "without Python stacks: py-spy is not installed (pip install 'kmemdump[stacks]')" in result.out
    else:
        assert result.out.rstrip().endswith(", complete"), result.out
    result = cli("dump", str(setup.producer.pid), "--dir", str(dumps), "--compress", "--no-stacks")
    if zstd_missing:
        assert result.code == 1
        _one_line_naming(result, "inspect")
    else:
        _clean(result)

    # inspecting, a plain dump and a compressed one
    _clean(cli("ls", str(setup.plain.parent)))
    for dump in (setup.plain, setup.compressed):
        outcomes = [
            cli("show", str(dump)),
            cli("show", str(dump), "--json"),
            cli("hexdump", str(dump), "orders"),
            cli("extract", str(dump), "orders", "-o", str(tmp_path / f"{dump.name}.bin")),
            cli("gdb", "--print-command", str(dump)),
        ]
        for result in outcomes:
            if zstd_missing and dump is setup.compressed:
                assert result.code == 1, result.err
                _one_line_naming(result, "inspect")
            else:
                _clean(result)
    # the directory's upkeep, and completion
    _clean(cli("prune", "--keep", "100", str(dumps)))
    result = cli("completion", "bash")
    _clean(result)
    assert "_shtab_kmemdump" in result.out

    listing = cli("ls", str(setup.plain.parent))
    if zstd_missing:  # the compressed dump is reported, in one line, and the rest listed
        assert [line for line in listing.err_lines if setup.compressed.name in line] == listing.err_lines
        assert "pip install 'kmemdump[inspect]'" in listing.err
        assert setup.plain.name in listing.out


def test_show_on_a_terminal_without_rich_is_plain_text(hider: Path, setup: Setup) -> None:
    env = cli_env({"KMEMDUMP_TEST_HIDE": "rich", "PYTHONPATH": str(hider)})
    result = run_in_pty(["show", str(setup.plain)], columns=100, env=env)
    assert result.code == 0, result.err
    assert "\x1b[" not in result.out  # no escape sequences: rich was not used
    assert "\nRegions\n-------\n" in result.out
    assert "orders" in result.out


def test_each_extra_brings_its_package() -> None:
    """The packages made missing above are the ones the extras named in the messages install."""
    from importlib.metadata import requires

    wanted = {"stacks": "py-spy", "pretty": "rich", "inspect": "backports"}
    found = [r.replace('"', "'") for r in requires("kmemdump") or []]
    for extra, package in wanted.items():
        assert any(r.startswith(package) and f"extra == '{extra}'" in r for r in found), (extra, found)
        assert any(r.startswith(package) and "extra == 'collector'" in r for r in found), (package, found)


def test_object_storage_without_obstore_is_one_line_naming_ship(hider: Path, tmp_path: Path) -> None:
    """The ``ship`` extra (obstore): every command that reaches a bucket says so in one line, before any
    network access, and exits 1."""
    env = cli_env({"KMEMDUMP_TEST_HIDE": "obstore", "PYTHONPATH": str(hider)})
    hidden = [sys.executable, "-c", "import obstore"]
    probe = subprocess.run(hidden, env=env, capture_output=True, check=False)
    assert probe.returncode != 0  # the hiding works
    for argv in (
        ["ls", "s3://bucket/prod"],
        ["ls", "s3://bucket/prod", "--group"],
        ["show", "s3://bucket/prod/host/kmemdump-1-2-hang-20261128T000000.000000Z.core"],
        ["watch", "--ship", "s3://bucket/prod", "--tables", str(tmp_path), "--dir", str(tmp_path)],
    ):
        result = run_piped(argv, env=env, timeout=60)
        assert result.code == 1, (argv, result.err)
        _one_line_naming(result, "ship")

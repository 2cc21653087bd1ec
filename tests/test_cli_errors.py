"""Every error a user can provoke is one line (and, where there is a known remedy, a paragraph) with the
documented exit status: 1 for a kmemdump error, 2 for bad usage or an invalid target. Never a traceback.

The permission cases run the real command as user nobody (65534) with the system's own interpreter, as
a user of the shipped systemd unit would: its dump directory is 0750 root, closed to other users.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers_child import spawn_child
from helpers_cli import Result
from helpers_cli import cli_env
from helpers_cli import run_piped
from kmemdump.cli.main import COMMANDS
from kmemdump.cli.main import main

SRC = Path(__file__).resolve().parents[1] / "src"
NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"
NOBODY_PYTHON = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", SYSTEM_PYTHON]

PRODUCER = r"""
import kmemdump
kmemdump.init(table=True)
orders = kmemdump.alloc(64, name="orders")
send("ready")
block()
"""


def _error_line(result: Result, code: int, command: str = "") -> str:
    """The one error line (argparse's usage lines before it are allowed for usage errors)."""
    assert result.code == code, (result.code, result.err)
    assert "Traceback" not in result.err, result.err
    lines = result.err_lines
    errors = [line for line in lines if line.startswith(("kmemdump: error:", f"kmemdump {command}: error:"))]
    assert len(errors) == 1, result.err
    if code == 2 and command:
        assert lines[-1] == errors[0] and lines[0].startswith(f"usage: kmemdump {command}"), result.err
    return errors[0]


@pytest.fixture(scope="module")
def a_dump(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    tables = tmp_path_factory.mktemp("tables")
    tables.chmod(0o700)
    dumps = tmp_path_factory.mktemp("dumps")
    env = dict(os.environ, KMEMDUMP_DIR=str(tables))
    with spawn_child(PRODUCER, env=env) as child:
        assert child.recv() == "ready"
        result = run_piped(["dump", str(child.pid), "--dir", str(dumps), "--no-stacks"], env=env)
        assert result.code == 0, result.err
    yield Path(result.out.split(": ")[0])


# --- usage errors and invalid targets: exit status 2 ---------------------------------------------


def test_watch_refuses_a_tables_file_once_at_start(tmp_path: Path) -> None:
    result = run_piped(["watch", "--tables", "/etc/passwd", "--dir", str(tmp_path)], timeout=30)
    line = _error_line(result, 2, "watch")
    assert line == "kmemdump watch: error: --tables /etc/passwd: not a directory"


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf", "soon"])
def test_run_refuses_a_timeout_that_is_not_a_positive_number(value: str) -> None:
    result = run_piped(["run", "--timeout", value, "--", sys.executable, "-c", "pass"])
    assert "number of seconds" in _error_line(result, 2, "run")


@pytest.mark.parametrize("pid", ["-5", "0", "abc", "4294967296"])
def test_dump_refuses_a_pid_that_is_not_one(pid: str) -> None:
    assert "not a process id" in _error_line(run_piped(["dump", pid]), 2, "dump")


def test_dump_of_a_pid_nobody_has_and_of_a_process_that_is_gone() -> None:
    line = _error_line(run_piped(["dump", "4194304"]), 2)  # above pid_max: never a process
    assert line == "kmemdump: error: no process with pid 4194304"
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # it existed; it is gone (and its pid unused for a while)
    result = run_piped(["dump", str(child.pid)])
    assert _error_line(result, 2) == f"kmemdump: error: no process with pid {child.pid}"


def test_an_unknown_option_prints_the_commands_own_usage() -> None:
    result = run_piped(["show", "--frobnicate", "x"])
    assert _error_line(result, 2, "show") == "kmemdump show: error: unrecognized arguments: --frobnicate"
    unknown = run_piped(["frobnicate"])
    assert unknown.code == 2 and "invalid choice: 'frobnicate'" in unknown.err


def test_gdb_checks_the_executable_it_is_given(a_dump: Path, tmp_path: Path) -> None:
    missing = run_piped(["gdb", "--print-command", "--exe", str(tmp_path / "nope"), str(a_dump)])
    assert _error_line(missing, 2, "gdb").endswith(f"--exe {tmp_path / 'nope'}: does not exist")
    directory = run_piped(["gdb", "--print-command", "--exe", str(tmp_path), str(a_dump)])
    assert _error_line(directory, 2, "gdb").endswith("is not a regular file")


# --- the CLI's arguments, fuzzed: never an internal error ----------------------------------------

WORDS = [
    "",
    "-",
    "--",
    "-1",
    "0",
    "1",
    "99999999999999999999999",
    "nan",
    "1e9",
    "0x",
    "0xffffffffffffffffffff",
    "latest",
    "pid:",
    "pid:-1",
    "pid:0",
    "ü€",
    "a" * 3000,
    "/",
    "/dev/null",
    "/dev/zero",
    "/proc/self/mem",
    "/etc/passwd",
    "BANNER",
    "--json",
    "--plain",
    "--offset",
    "--length",
    "--all",
    "--dir",
    "-o",
    "--since",
    "--reason",
    "--pid",
    "-n",
    "--tables",
    "--budget",
    "\x1b[2J",
]


def test_fuzzed_arguments_never_reach_a_traceback(
    a_dump: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KMEMDUMP_DUMPS", str(a_dump.parent))
    monkeypatch.chdir(tmp_path)  # extract's outputs land here
    rng = random.Random(13)
    commands = ["show", "hexdump", "extract", "ls", "ps"]
    words = [*WORDS, str(a_dump), a_dump.name]
    tried = 0
    for _ in range(400):
        argv = [rng.choice(commands), *(rng.choice(words) for _ in range(rng.randint(0, 4)))]
        if argv[0] == "extract" and "-o" not in argv:
            argv += ["-o", "-"]
        try:
            code = main(argv)
        except SystemExit as leave:  # argparse: --help (0) or a usage error (2)
            code = int(leave.code or 0)
        _, err = capsys.readouterr()
        assert code in (0, 1, 2), (argv, code, err)
        assert "Traceback" not in err and "internal error" not in err, (argv, err)
        tried += 1
    assert tried == 400


# --- permissions: as user nobody -----------------------------------------------------------------


def _as_nobody(argv: list[str], cwd: Path) -> Result:
    proc = subprocess.run(
        [*NOBODY_PYTHON, "-m", "kmemdump.cli", *argv],
        capture_output=True,
        text=True,
        env=cli_env({"PYTHONPATH": str(SRC), "HOME": str(cwd), "KMEMDUMP_DUMPS": str(cwd)}),
        cwd=cwd,
        timeout=120,
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def closed(a_dump: Path) -> Iterator[tuple[Path, Path]]:
    """A copy of the dump in a directory only root may enter, and a directory nobody may write in."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None or not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip("needs root, setpriv and /usr/bin/python3 to run the command as another user")
    base = Path(tempfile.mkdtemp(prefix="kmemdump-perm-", dir="/tmp"))  # pytest's own is closed to nobody
    try:
        yield from _closed(a_dump, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _closed(a_dump: Path, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    tmp_path.chmod(0o755)
    home = tmp_path / "nobody"
    home.mkdir(mode=0o777)
    home.chmod(0o777)
    if _as_nobody(["--version"], home).code != 0:
        pytest.skip(f"user nobody cannot read the sources in {SRC}")
    dumps = tmp_path / "dumps"
    dumps.mkdir(mode=0o700)  # as the unit's /var/lib/kmemdump/dumps is to other users
    dump = dumps / a_dump.name
    shutil.copy(a_dump, dump)
    dump.chmod(0o644)
    yield dump, home


def test_a_dump_in_a_directory_the_user_cannot_enter(closed: tuple[Path, Path]) -> None:
    dump, home = closed
    for argv in (
        ["show", str(dump)],
        ["hexdump", str(dump), "BANNER"],
        ["extract", str(dump), "BANNER", "-o", str(home / "out.bin")],
        ["gdb", "--print-command", str(dump)],
    ):
        line = _error_line(_as_nobody(argv, home), 1)
        assert line.startswith("kmemdump: error: permission denied: this user cannot enter the directory"), (
            argv
        )
    listing = _as_nobody(["ls", str(dump)], home)
    assert "Permission denied" in _error_line(listing, 1)
    listing = _as_nobody(["ls", str(dump.parent)], home)
    assert _error_line(listing, 1).startswith(
        "kmemdump: error: cannot list the dump directory: Permission denied"
    )


def test_extract_into_a_directory_the_user_cannot_enter(closed: tuple[Path, Path], a_dump: Path) -> None:
    dump, home = closed
    readable = home / a_dump.name
    shutil.copy(a_dump, readable)
    readable.chmod(0o644)
    target = dump.parent / "out.bin"  # in the 0700 directory
    result = _as_nobody(["extract", str(readable), "BANNER", "-o", str(target)], home)
    assert _error_line(result, 1).startswith(
        f"kmemdump: error: cannot write in {dump.parent}: Permission denied"
    )
    assert not target.exists()


def test_gdb_says_the_executable_is_unreadable_not_gone(closed: tuple[Path, Path], a_dump: Path) -> None:
    _, home = closed
    readable = home / a_dump.name
    shutil.copy(a_dump, readable)
    readable.chmod(0o644)
    exe = os.path.realpath(f"/proc/{os.getpid()}/exe")  # the dump's process ran this interpreter
    if subprocess.run([*NOBODY_PYTHON[:-1], "test", "-r", exe], check=False).returncode == 0:
        pytest.skip(f"the interpreter {exe} is readable by everyone here")
    result = _as_nobody(["gdb", "--print-command", str(readable)], home)
    assert result.code == 0, result.err
    assert "cannot be read by this user" in result.err and "no longer exists" not in result.err


def test_every_command_has_help_with_its_usage() -> None:
    for command in COMMANDS:
        result = run_piped([command, "--help"])
        assert result.code == 0 and result.out.startswith(f"usage: kmemdump {command}"), command


def test_sigint_during_a_long_command_is_quiet(a_dump: Path) -> None:
    watch = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kmemdump.cli",
            "watch",
            "--tables",
            str(a_dump.parent),
            "--dir",
            str(a_dump.parent),
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    try:
        assert watch.stderr is not None
        assert watch.stderr.readline().startswith("watching ")
        watch.send_signal(signal.SIGINT)
        _, err = watch.communicate(timeout=60)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert watch.returncode == 0 and "Traceback" not in err, err

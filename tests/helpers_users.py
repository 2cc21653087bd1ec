"""Throwaway unprivileged users for the attack tests, and code run as them.

``make_users(n)`` creates ``n`` users with unique names (``useradd``, each with a group of its own),
and ``remove_users`` deletes them (``userdel``) whatever happened; the ``users`` fixture of a test
module does both. ``as_user(user, work)`` forks, drops to the user (groups, gid, uid, then makes
the process dumpable again, as a process the user started would be), runs ``work(send)``, and
reports through a pipe; :class:`AsUser` reads its lines and always kills it.

Everything the child imports must be imported by the test first: the interpreter on this machine
kind may live where an ordinary user cannot read (/root), so a lazy import after the drop would fail
for reasons that have nothing to do with kmemdump.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["AsUser", "User", "as_user", "can_make_users", "make_users", "public_dir", "remove_users"]

Send = Callable[[Any], None]
_PR_SET_DUMPABLE = 4


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int


def can_make_users() -> str | None:
    """None when this process can create users; else why not (the reason a test is skipped for)."""
    if os.geteuid() != 0:
        return "creating throwaway users needs root"
    if shutil.which("useradd") is None or shutil.which("userdel") is None:
        return "useradd/userdel are not installed"
    return None


def make_users(count: int) -> list[User]:
    made: list[User] = []
    try:
        for _ in range(count):
            name = f"kmdt{secrets.token_hex(4)}"
            subprocess.run(
                ["useradd", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", name],
                check=True,
                capture_output=True,
            )
            entry = pwd.getpwnam(name)
            made.append(User(name, entry.pw_uid, entry.pw_gid))
    except BaseException:
        remove_users(made)
        raise
    return made


def remove_users(users: list[User]) -> None:
    for user in users:
        subprocess.run(["userdel", user.name], check=False, capture_output=True)
        shutil.rmtree(f"/dev/shm/kmemdump-{user.uid}", ignore_errors=True)
        for stray in Path("/dev/shm").glob(f"kmemdump-{user.uid}.*"):
            shutil.rmtree(stray, ignore_errors=True)


def public_dir(prefix: str, mode: int = 0o711) -> Path:
    """A root-owned directory the throwaway users can reach (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(mode)
    return path


class AsUser:
    """A forked child running as a throwaway user; lines it sends arrive through :meth:`recv`."""

    def __init__(self, pid: int, fd: int) -> None:
        self.pid = pid
        self._fd = fd
        self._pending = b""

    def recv(self) -> Any:
        while b"\n" not in self._pending:
            chunk = os.read(self._fd, 65536)
            if not chunk:
                raise AssertionError(f"the child {self.pid} ended without answering")
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        message = json.loads(line)
        assert not (isinstance(message, dict) and "error" in message), message
        return message

    def wait(self) -> int:
        return os.waitpid(self.pid, 0)[1]

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        with contextlib.suppress(OSError):
            os.close(self._fd)

    def __enter__(self) -> AsUser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def as_user(user: User, work: Callable[[Send], None], *, dumpable: bool = True) -> AsUser:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 0

        def send(message: Any) -> None:
            os.write(write_end, (json.dumps(message) + "\n").encode())

        try:
            os.close(read_end)
            os.setgroups([])
            os.setresgid(user.gid, user.gid, user.gid)
            os.setresuid(user.uid, user.uid, user.uid)
            if dumpable:  # dropping from root cleared the flag; a process the user started has it
                ctypes.CDLL(None).prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0)
            work(send)
        except BaseException as err:
            with contextlib.suppress(BaseException):
                send({"error": f"{type(err).__name__}: {err}"})
            status = 1
        finally:
            os._exit(status)
    os.close(write_end)
    return AsUser(pid, read_end)

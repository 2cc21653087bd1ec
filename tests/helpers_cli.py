"""Running the real ``kmemdump`` command as a user does: piped, or under a pseudo-terminal of a given size.

``run_piped`` and ``run_in_pty`` start ``python -m kmemdump.cli`` in a fresh interpreter (the
``python`` given, so a test can use a venv of its own) and return what it printed. Under the pty
the command's stdout is a real terminal of ``columns`` x ``rows`` (set with TIOCSWINSZ, not through
$COLUMNS); stderr stays a pipe so that it can be checked apart.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Result", "cli_env", "run_in_pty", "run_piped"]


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def cli_env(extra: Mapping[str, str] | None = None, *, drop: Sequence[str] = ()) -> dict[str, str]:
    """The environment for a command under test: no inherited terminal size or colour settings."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR")}
    env["TERM"] = "xterm-256color"
    for name in drop:
        env.pop(name, None)
    env.update(extra or {})
    return env


def run_piped(
    argv: Sequence[str],
    *,
    python: str = sys.executable,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
) -> Result:
    proc = subprocess.run(
        [python, "-m", "kmemdump.cli", *argv],
        capture_output=True,
        text=True,
        env=cli_env() if env is None else dict(env),
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def run_in_pty(
    argv: Sequence[str],
    *,
    columns: int,
    rows: int = 50,
    python: str = sys.executable,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
) -> Result:
    """Run the command with stdout on a pseudo-terminal of ``columns`` x ``rows``."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    attrs = termios.tcgetattr(slave)
    attrs[1] &= ~termios.ONLCR  # keep "\n" as the program wrote it
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    try:
        proc = subprocess.Popen(
            [python, "-m", "kmemdump.cli", *argv],
            stdin=subprocess.DEVNULL,
            stdout=slave,
            stderr=subprocess.PIPE,
            env=cli_env() if env is None else dict(env),
        )
    except BaseException:
        os.close(master)
        os.close(slave)
        raise
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"kmemdump {' '.join(argv)} did not finish in {timeout} s")
            ready, _, _ = select.select([master], [], [], left)
            if not ready:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError as err:
                if err.errno == errno.EIO:  # the slave side closed: the command is done with it
                    break
                raise
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.stderr is not None
        err = proc.stderr.read().decode(errors="replace")
        code = proc.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    return Result(code, b"".join(chunks).decode(errors="replace"), err)

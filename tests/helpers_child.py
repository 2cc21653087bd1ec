"""Spawn a real Python child for tests, talk to it in JSON lines, and always kill it.

The child runs ``code`` with a few helpers already defined:

* ``send(obj)`` writes ``obj`` as one JSON line to the parent (``Child.recv`` reads it);
* ``recv()`` blocks for the parent's next ``Child.send`` and returns it (``None`` once the
  parent closed its end);
* ``block()`` waits until the parent sends ``"exit"`` or closes its end, then returns;
* ``buffer_address(buf)`` is the address of a writable buffer (bytearray, mmap, ctypes array).

Synchronisation is by pipe only: ``Child.recv`` returns as soon as the child wrote its line, and
fails (with the child's stderr) if the child exits first or the timeout runs out.

    with spawn_child("buf = bytearray(b'hi')\\nsend({'addr': buffer_address(buf)})\\nblock()") as child:
        addr = child.recv()["addr"]
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from collections.abc import Sequence
from types import TracebackType
from typing import Any

__all__ = ["Child", "ChildError", "spawn_child"]

DEFAULT_TIMEOUT = 30.0

_PRELUDE = r"""
import ctypes as _ctypes
import json as _json
import os as _os
import sys as _sys

_from_parent = _os.fdopen(int(_sys.argv[1]), "rb", buffering=0)
_to_parent = _os.fdopen(int(_sys.argv[2]), "wb", buffering=0)
_code = _sys.argv[3]
_sys.argv = ["<child>", *_sys.argv[4:]]


def send(obj):
    _to_parent.write((_json.dumps(obj) + "\n").encode())


def recv():
    line = _from_parent.readline()
    return _json.loads(line) if line else None


def block():
    while True:
        msg = recv()
        if msg is None or msg == "exit":
            return


def buffer_address(buf):
    return _ctypes.addressof(_ctypes.c_char.from_buffer(buf))


exec(compile(_code, "<child>", "exec"), {"__name__": "__child__", "send": send, "recv": recv,
     "block": block, "buffer_address": buffer_address})
"""


class ChildError(RuntimeError):
    """The child exited, hung or sent something that is not JSON."""


class Child:
    """A running child; use as a context manager so that it is always killed."""

    def __init__(self, popen: subprocess.Popen[bytes], to_child: int, from_child: int, stderr: Any) -> None:
        self.popen = popen
        self.pid = popen.pid
        self._to_child = to_child
        self._from_child = from_child
        self._stderr = stderr
        self._pending = b""

    def recv(self, timeout: float = DEFAULT_TIMEOUT) -> Any:
        """Return the child's next JSON line, decoded."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChildError(f"child {self.pid} sent nothing within {timeout}s{self._stderr_tail()}")
            ready, _, _ = select.select([self._from_child], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._from_child, 65536)
            if not chunk:
                self.popen.wait(timeout=left)
                raise ChildError(
                    f"child {self.pid} exited ({self.popen.returncode}) before sending{self._stderr_tail()}"
                )
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        try:
            return json.loads(line)
        except ValueError as err:
            raise ChildError(f"child {self.pid} sent a line that is not JSON: {line!r}") from err

    def send(self, obj: Any) -> None:
        """Send ``obj`` as one JSON line; the child's ``recv()`` returns it."""
        os.write(self._to_child, (json.dumps(obj) + "\n").encode())

    def release(self) -> None:
        """Let a child sitting in ``block()`` return (and so finish its code)."""
        self.send("exit")

    def wait(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Wait for the child to exit by itself; return its exit status."""
        return self.popen.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the child and reap it; harmless when it is already gone."""
        if self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.popen.wait()
        for fd in (self._to_child, self._from_child):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._to_child = self._from_child = -1
        self._stderr.close()

    def stderr_text(self) -> str:
        self._stderr.flush()
        self._stderr.seek(0)
        return str(self._stderr.read().decode(errors="replace"))

    def _stderr_tail(self) -> str:
        text = self.stderr_text().strip()
        return f"; stderr:\n{text[-4000:]}" if text else ""

    def __enter__(self) -> Child:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()

    def __del__(self) -> None:  # a last resort: tests should use ``with``
        if getattr(self, "popen", None) is not None and self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


def spawn_child(
    code: str,
    python: str = sys.executable,
    *,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Child:
    """Start ``python`` running ``code`` (with the helpers above); ``args`` become its ``sys.argv[1:]``."""
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    stderr = tempfile.TemporaryFile()  # noqa: SIM115 - owned by the Child
    try:
        popen = subprocess.Popen(
            [python, "-c", _PRELUDE, str(to_child_r), str(from_child_w), code, *args],
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            pass_fds=(to_child_r, from_child_w),
            env=None if env is None else dict(env),
            cwd=cwd,
        )
    except BaseException:
        for fd in (to_child_r, to_child_w, from_child_r, from_child_w):
            os.close(fd)
        stderr.close()
        raise
    os.close(to_child_r)
    os.close(from_child_w)
    return Child(popen, to_child_w, from_child_r, stderr)

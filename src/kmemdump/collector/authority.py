"""Acting on a process only for its owner: a target opened so that it cannot be swapped, and the check.

A table names a process by ``(pid, start_time)``, and both are world-readable in ``/proc``: they
prove that a process is alive, not that it belongs to whoever wrote the table. Before the collector
reads, stops or signals anything, :class:`ProcessHandle` opens the process twice, as a pidfd (for
signals and for noticing its end) and as its ``/proc/PID`` directory (for its identity, its
credentials and its threads), and checks that both are the process of the table, alive. Every
later step goes through these descriptors, which stay bound to that one process even if its pid
is recycled: there is no window between the check and the use.

:func:`check_authority` is the rule: the table file's owner must be the real uid of the process,
and a process that is not dumpable (set-id, or one that cleared the flag with
``prctl(PR_SET_DUMPABLE, 0)``) is left alone unless the operator allows it. The kernel publishes no
"dumpable" field for another process; it shows it through ownership: the files of ``/proc/PID``
belong to the process's effective uid while it is dumpable, and to root when it is not. Together
with "all of its user and group ids agree" this tells both cases apart (a set-id process has a
real id unlike its effective one, even when the effective one is root).
"""

from __future__ import annotations

import errno
import os
import select
from types import TracebackType

from kmemdump.errors import AccessDeniedError
from kmemdump.errors import CollectorError
from kmemdump.errors import ForeignProcessError
from kmemdump.errors import KmemdumpError
from kmemdump.errors import ProcessGoneError
from kmemdump.procinfo import parse_start_time
from kmemdump.record import frozen

__all__ = ["Credentials", "ProcessHandle", "check_authority", "check_unchanged", "ended_owner", "parse_ids"]


@frozen
class Credentials:
    """A process's ids as ``/proc/PID/status`` gives them, and the owner of its ``/proc`` files."""

    uids: tuple[int, int, int, int]
    """Real, effective, saved and file-system user ids."""
    gids: tuple[int, int, int, int]
    proc_owner: int
    """Owner of ``/proc/PID/status``: the effective uid while the process is dumpable, root when not."""

    @property
    def real_uid(self) -> int:
        return self.uids[0]

    @property
    def setid(self) -> bool:
        """Its ids disagree: a set-user-id or set-group-id program, or one half way through a change."""
        return len(set(self.uids)) > 1 or len(set(self.gids)) > 1

    @property
    def dumpable(self) -> bool:
        """Whether the kernel lets its own user read it (not set-id, and the flag not cleared)."""
        return not self.setid and self.proc_owner == self.uids[1]


def parse_ids(status: bytes, key: bytes) -> tuple[int, int, int, int]:
    """The four ids of the ``Uid:`` or ``Gid:`` line of a ``/proc/PID/status`` text.

    ASCII digits only; ``ValueError`` for anything else (a missing line, a short one, a sign).
    """
    prefix = key + b":"
    for line in status.split(b"\n"):
        if line.startswith(prefix):
            fields = line[len(prefix) :].split()
            if len(fields) != 4 or not all(f.isdigit() and len(f) <= 10 for f in fields):
                raise ValueError(f"malformed {key.decode()} line")
            a, b, c, d = (int(f) for f in fields)
            return a, b, c, d
    raise ValueError(f"no {key.decode()} line")


_IMAGE_FIELDS = (23, 24, 25, 42, 43, 44, 45, 46, 47, 48)
"""Indexes, counted after the state letter, of startcode, endcode, startstack, start_data, end_data,
start_brk, arg_start, arg_end, env_start and env_end."""


class ProcessHandle:
    """One live process, held open as a pidfd and as its ``/proc/PID`` directory.

    :meth:`open` fails with :class:`ProcessGoneError` unless ``pid`` is alive with ``start_time``.
    Both descriptors keep naming that process after its pid is reused: reads through ``proc_fd``
    then fail with ``ESRCH`` and :meth:`alive` says False.
    """

    __slots__ = ("pid", "pidfd", "proc_fd", "start_time")

    def __init__(self, pid: int, start_time: int, pidfd: int, proc_fd: int) -> None:
        self.pid = pid
        self.start_time = start_time
        self.pidfd = pidfd
        self.proc_fd = proc_fd

    @classmethod
    def open(cls, pid: int, start_time: int) -> ProcessHandle:
        if not 0 < pid < 2**31:
            raise ProcessGoneError(f"no process has pid {pid}", pid=pid)
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError as err:
            raise ProcessGoneError(f"process {pid} is gone", pid=pid) from err
        except OSError as err:
            raise CollectorError(
                f"cannot open a pidfd for {pid}: {err.strerror}", pid=pid, errno=err.errno
            ) from err
        proc_fd = -1
        try:
            try:
                proc_fd = os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except FileNotFoundError as err:
                raise ProcessGoneError(f"process {pid} is gone", pid=pid) from err
            handle = cls(pid, start_time, pidfd, proc_fd)
            try:
                found = parse_start_time(handle.read(b"stat"))
            except ValueError as err:
                raise CollectorError(f"cannot parse /proc/{pid}/stat: {err}", pid=pid) from err
            if found != start_time:
                raise ProcessGoneError(
                    "pid now belongs to another process", pid=pid, start_time=start_time, found=found
                )
            if not handle.alive():  # the pidfd names an earlier holder of the pid, gone since
                raise ProcessGoneError(f"process {pid} is gone", pid=pid)
        except BaseException:
            os.close(pidfd)
            if proc_fd >= 0:
                os.close(proc_fd)
            raise
        return handle

    def read(self, name: bytes | str) -> bytes:
        """``/proc/PID/<name>`` of this process; :class:`ProcessGoneError` once it is gone."""
        data, _ = self._read(name)
        return data

    def _read(self, name: bytes | str) -> tuple[bytes, os.stat_result]:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.proc_fd)
        except (FileNotFoundError, ProcessLookupError) as err:
            raise ProcessGoneError(f"process {self.pid} is gone", pid=self.pid) from err
        except PermissionError as err:
            raise AccessDeniedError(f"cannot read /proc/{self.pid}/{name!s}", pid=self.pid) from err
        try:
            info = os.fstat(fd)
            chunks = []
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except OSError as err:
            if err.errno == errno.ESRCH:
                raise ProcessGoneError(f"process {self.pid} is gone", pid=self.pid) from err
            raise CollectorError(
                f"cannot read /proc/{self.pid}/{name!s}: {err.strerror}", pid=self.pid
            ) from err
        finally:
            os.close(fd)
        data = b"".join(chunks)
        if not data:
            raise ProcessGoneError(f"process {self.pid} is gone", pid=self.pid)
        return data, info

    def credentials(self) -> Credentials:
        """The process's ids now (read through its ``/proc`` directory), checked alive afterwards."""
        creds = self.last_credentials()
        if not self.alive():
            raise ProcessGoneError(f"process {self.pid} is gone", pid=self.pid)
        return creds

    def last_credentials(self) -> Credentials:
        """The process's ids now, or the last it had when it has ended but is not reaped (a zombie)."""
        status, info = self._read(b"status")
        try:
            uids = parse_ids(status, b"Uid")
            gids = parse_ids(status, b"Gid")
        except ValueError as err:
            raise CollectorError(f"cannot parse /proc/{self.pid}/status: {err}", pid=self.pid) from err
        return Credentials(uids, gids, info.st_uid)

    def image(self) -> tuple[int, ...]:
        """Where its program's code, data, heap, stack, arguments and environment start and end
        (``/proc/PID/stat`` fields 26-28 and 45-51): set anew, with fresh random bases, by every
        ``execve``, so a change says that another program now runs in the process. All zeros once it
        has ended (no memory left), or for a reader the kernel does not show them to."""
        stat = self.read(b"stat")
        fields = stat[stat.rfind(b")") + 1 :].split()
        picked = [fields[i] for i in (*_IMAGE_FIELDS,) if i < len(fields)]
        if len(picked) != len(_IMAGE_FIELDS) or not all(f.isdigit() and len(f) <= 20 for f in picked):
            raise CollectorError(f"cannot parse /proc/{self.pid}/stat", pid=self.pid)
        return tuple(int(f) for f in picked)

    def tids(self) -> list[int]:
        """The ids of the process's threads now (empty once it is gone)."""
        try:
            fd = os.open("task", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.proc_fd)
        except OSError:
            return []
        try:
            names = os.listdir(fd)
        except OSError:
            return []
        finally:
            os.close(fd)
        return [int(name) for name in names if name.isascii() and name.isdigit() and len(name) <= 10]

    def thread_state(self, tid: int) -> str | None:
        """The state letter of one of its threads; None when it cannot be read (it ended)."""
        try:
            stat = self.read(f"task/{tid}/stat")
        except (CollectorError, OSError):
            return None
        close = stat.rfind(b")")
        fields = stat[close + 1 :].split() if close >= 0 else []
        return fields[0][:1].decode("ascii", "replace") if fields else None

    def alive(self) -> bool:
        """The process has not ended (a zombie has)."""
        try:
            return not select.select([self.pidfd], [], [], 0)[0]
        except (OSError, ValueError):
            return False

    def send_signal(self, sig: int) -> bool:
        """Signal the process through its pidfd; False when it is gone already."""
        import signal  # only when a signal is sent (its enums cost dump PID start-up time)

        try:
            signal.pidfd_send_signal(self.pidfd, sig)
        except ProcessLookupError:
            return False
        return True

    def close(self) -> None:
        for fd in (self.pidfd, self.proc_fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.pidfd = self.proc_fd = -1

    def __enter__(self) -> ProcessHandle:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ProcessHandle(pid={self.pid}, start_time={self.start_time})"


def check_authority(
    process: ProcessHandle, table_owner: int, *, allow_nondumpable: bool = False
) -> Credentials:
    """Return the process's credentials if the owner of its table may have it dumped; else raise
    :class:`ForeignProcessError` (and the caller must leave the process alone).

    The rule: the table's owner is the process's real uid; and the process is dumpable, unless
    ``allow_nondumpable`` (the operator's choice) lets set-id processes and processes that cleared
    their dumpable flag through as well.
    """
    creds = process.credentials()
    if creds.real_uid != table_owner:
        raise ForeignProcessError(
            "the table names a process of another user; left alone",
            pid=process.pid,
            table_owner=table_owner,
            process_uid=creds.real_uid,
        )
    if not creds.dumpable and not allow_nondumpable:
        why = "a set-id process" if creds.setid else "it cleared its dumpable flag"
        raise ForeignProcessError(
            f"the process is not dumpable ({why}); left alone (--allow-nondumpable overrides)",
            pid=process.pid,
            uids=",".join(str(u) for u in creds.uids),
        )
    return creds


def ended_owner(pid: int, start_time: int) -> int | None:
    """The real uid of ``(pid, start_time)`` once it has ended but is not reaped yet (a zombie keeps its
    ``/proc/PID/status``); None when nothing says (reaped, or the pid is another process's now)."""
    try:
        proc_fd = os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    handle = ProcessHandle(pid, start_time, -1, proc_fd)
    try:
        if parse_start_time(handle.read(b"stat")) != start_time:
            return None
        return parse_ids(handle.read(b"status"), b"Uid")[0]
    except (KmemdumpError, OSError, ValueError):
        return None
    finally:
        handle.close()


def check_unchanged(
    process: ProcessHandle,
    before: tuple[Credentials, tuple[int, ...]],
    *,
    held_by_ptrace: bool,
) -> None:
    """Raise :class:`ForeignProcessError` unless ``process`` still runs the program, with the ids, it
    had when ``before`` (its credentials and :meth:`~ProcessHandle.image`) was taken.

    Made after everything was read from it and before the dump is kept: a process that was not
    held by ptrace (a SIGSTOP another tracer could swallow, a stop its own tracer could end,
    ``--no-stop``) could have executed a set-id program meanwhile, and what was read since would
    then be that program's. One that ended meanwhile proves nothing unless ptrace held it (then
    it could not exec); its credentials are still compared while it is a zombie.
    """
    creds, image = before
    try:
        now = process.last_credentials()
        image_now = process.image() if process.alive() else None
    except ProcessGoneError:
        if held_by_ptrace:
            return
        raise ForeignProcessError(
            "the process ended while it was dumped without a ptrace hold: nothing proves it still ran "
            "its owner's program; dump discarded",
            pid=process.pid,
        ) from None
    if now.uids != creds.uids or now.gids != creds.gids:
        raise ForeignProcessError(
            "the process changed its ids while it was dumped (a set-id program?); dump discarded",
            pid=process.pid,
            uids=",".join(str(u) for u in now.uids),
        )
    # an ending process has no memory left: its image reads as zeros before its pidfd says it ended
    ended = image_now is None or (any(image) and not any(image_now))
    if ended and not held_by_ptrace:
        raise ForeignProcessError(
            "the process ended while it was dumped without a ptrace hold: nothing proves it still ran "
            "its owner's program; dump discarded",
            pid=process.pid,
        )
    if not ended and image_now != image:
        raise ForeignProcessError(
            "the process executed another program while it was dumped; dump discarded", pid=process.pid
        )

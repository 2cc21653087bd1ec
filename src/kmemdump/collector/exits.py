"""How a process ended, as Linux tells it to a collector: its parent, its tracer, or anyone watching.

The exit status of a process goes to its parent (``waitid``; a ``pidfd`` says *that* it ended, and
``waitid(P_PIDFD)`` gives the status to the parent only). What a collector that is not the parent
can learn, in order of preference:

* as its ptrace tracer (``run --trace-exit``): the status at ``PTRACE_EVENT_EXIT`` and the
  ``siginfo`` of the fatal signal (:mod:`kmemdump.collector.tracer`);
* as its parent (``run``): the wait status, read with ``WNOWAIT`` so the child stays a zombie;
* where the kernel lets it listen: the process-events connector, which reports every process's exit
  status (:class:`ExitListener`). Older kernels allow it with ``CAP_NET_ADMIN`` only; on the 6.18
  kernel we measured, an unprivileged collector hears the exits too;
* as its owner or root, while it is a zombie (its parent has not reaped it yet): field 52 of
  ``/proc/PID/stat`` (:func:`zombie_status`).

Otherwise the cause stays unknown: a process whose parent reaped it before a collector without the
connector looked. No source gives the ``siginfo`` (the fault address) except the tracer.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import struct
import time

from kmemdump.formats.dumpmeta import Death
from kmemdump.procinfo import parse_start_time

__all__ = ["ExitListener", "death_from_siginfo", "waited_death", "zombie_status"]

# <linux/connector.h>, <linux/cn_proc.h>
_NETLINK_CONNECTOR = 11
_CN_IDX_PROC = 1
_CN_VAL_PROC = 1
_PROC_CN_MCAST_LISTEN = 1
_PROC_EVENT_NONE = 0  # the kernel's answer to our LISTEN request: event_data.ack.err
_PROC_EVENT_EXIT = 0x80000000
_ACK_WAIT = 0.1
_NLMSG_DONE = 3
_NLMSGHDR = struct.Struct("<IHHII")
_CN_MSG = struct.Struct("<IIIIHH")
_EVENT = struct.Struct("<IIQ")  # what, cpu, timestamp_ns
_EXIT = struct.Struct("<iiII")  # process_pid, process_tgid, exit_code, exit_signal
_EXIT_CODE_FIELD = 52 - 3  # field 52 of /proc/PID/stat, counted from field 3 (state)
_MAX_KEPT = 4096
_RCVBUF = 4 << 20
"""Socket buffer asked for (the kernel caps it at net.core.rmem_max, and doubles it): a watcher reads it at
least once a second; the default buffer held 256 exits here before the kernel dropped some, this one
10,000."""


class ExitListener:
    """The kernel's process-events connector, listening for exits (see the module's notes on who may).

    :attr:`failure` says why it is unavailable (then :meth:`fileno` is -1 and nothing is heard).
    Exits of the pids in :attr:`wanted` are kept (at most a few thousand) until :meth:`take` asks.
    """

    def __init__(self) -> None:
        import socket  # only a collector that listens for exits needs it (not kmemdump dump)

        self.wanted: set[int] = set()
        self.failure = ""
        self._news: set[int] = set()
        self._sock: socket.socket | None = None
        self._statuses: dict[int, int] = {}
        self._ack: int | None = None
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_CONNECTOR)
        except (OSError, AttributeError) as err:
            self.failure = f"no process-events connector: {getattr(err, 'strerror', None) or err}"
            return
        try:
            sock.bind((0, _CN_IDX_PROC))
            with contextlib.suppress(OSError):  # room for the exits of a busy host between two reads
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
            listen = _CN_MSG.pack(_CN_IDX_PROC, _CN_VAL_PROC, 0, 0, 4, 0) + struct.pack(
                "<I", _PROC_CN_MCAST_LISTEN
            )
            sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(listen), _NLMSG_DONE, 0, 0, 0) + listen)
            sock.setblocking(False)
        except OSError as err:
            sock.close()
            why = "it needs CAP_NET_ADMIN" if err.errno in (errno.EPERM, errno.EACCES) else err.strerror
            self.failure = f"the process-events connector refused us ({why})"
            return
        self._sock = sock
        refused = self._acknowledged()
        if refused:
            self.close()
            why = "it needs CAP_NET_ADMIN" if refused in (errno.EPERM, errno.EACCES) else os.strerror(refused)
            self.failure = f"the process-events connector refused us ({why})"

    def _acknowledged(self) -> int:
        """Wait (briefly) for the kernel's answer to LISTEN; its error number (0: listening)."""
        deadline = time.monotonic() + _ACK_WAIT
        while self._ack is None and self._sock is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._sock], [], [], left)[0]:
                return 0  # no answer: assume it listens (at worst it hears nothing)
            self.drain()
        return self._ack or 0

    def fileno(self) -> int:
        return -1 if self._sock is None else self._sock.fileno()

    def drain(self) -> None:
        """Read every pending event; keep the exit statuses of wanted pids."""
        sock = self._sock
        if sock is None:
            return
        for _ in range(10_000):  # bounded: a busy machine reports many exits
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                return
            except OSError as err:
                if err.errno == errno.ENOBUFS:  # events were lost; carry on with the next ones
                    continue
                return
            self._parse(data)

    def _parse(self, data: bytes) -> None:
        offset = 0
        while offset + _NLMSGHDR.size <= len(data):
            length = _NLMSGHDR.unpack_from(data, offset)[0]
            if length < _NLMSGHDR.size:
                return
            body = offset + _NLMSGHDR.size + _CN_MSG.size
            if body + _EVENT.size + _EXIT.size <= offset + length <= len(data):
                what = _EVENT.unpack_from(data, body)[0]
                if what == _PROC_EVENT_NONE:
                    self._ack = struct.unpack_from("<I", data, body + _EVENT.size)[0]
                elif what == _PROC_EVENT_EXIT:
                    pid, tgid, code, _exit_signal = _EXIT.unpack_from(data, body + _EVENT.size)
                    if pid == tgid and tgid in self.wanted and len(self._statuses) < _MAX_KEPT:
                        self._statuses[tgid] = code
                        self._news.add(tgid)
            offset += (length + 3) & ~3

    def news(self) -> set[int]:
        """The wanted pids whose exit was heard since the last call (their statuses stay for
        :meth:`take`): a watcher that keeps no pidfd per process checks these at once."""
        news, self._news = self._news, set()
        return news

    def take(self, pid: int, wait: float = 0.0) -> int | None:
        """The exit status heard for ``pid`` (forgotten once taken), waiting up to ``wait`` seconds
        for it: the kernel sends the event just after it wakes the pidfd that said "exited"."""
        deadline = time.monotonic() + wait
        while True:
            self.drain()
            status = self._statuses.pop(pid, None)
            left = deadline - time.monotonic()
            if status is not None or self._sock is None or left <= 0:
                return status
            select.select([self._sock], [], [], left)

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


def zombie_status(pid: int, start_time: int) -> int | None:
    """The wait status of ``(pid, start_time)`` while it is a zombie, or None.

    The kernel shows field 52 (``exit_code``) only to a reader allowed to ptrace the process and
    writes 0 for others, so the status is believed only from root or from the process's owner.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read(4096)
        with open(f"/proc/{pid}/status", "rb") as handle:
            status = handle.read(8192)
    except OSError:
        return None
    try:
        if parse_start_time(stat) != start_time:
            return None
    except ValueError:
        return None
    fields = stat[stat.rfind(b")") + 1 :].split()
    if not fields or fields[0] != b"Z" or len(fields) <= _EXIT_CODE_FIELD:
        return None
    euid = os.geteuid()
    if euid != 0:
        uid_line = next((line for line in status.splitlines() if line.startswith(b"Uid:")), b"")
        uids = uid_line.split()[1:2]
        if not uids or int(uids[0]) != euid:
            return None  # the kernel would have shown us 0 whatever the status
    try:
        return int(fields[_EXIT_CODE_FIELD])
    except ValueError:
        return None


def waited_death(pid: int) -> Death | None:
    """How our child ``pid`` ended, without reaping it (``waitid`` with ``WNOWAIT``); None while it runs."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return None
    if info is None:
        return None
    if info.si_code == os.CLD_EXITED:
        return Death(exit_code=info.si_status & 0xFF, source="wait status")
    return Death.from_wait_status(
        (info.si_status & 0x7F) | (0x80 if info.si_code == os.CLD_DUMPED else 0), "wait status"
    )


_SIGINFO_HEAD = struct.Struct("<iii4x")
_FAULT_SIGNALS = frozenset({4, 7, 8, 11})  # SIGILL, SIGBUS, SIGFPE, SIGSEGV


def death_from_siginfo(status: int, siginfo: bytes | None) -> Death:
    """A death seen at the exit stop: its wait status and, for a signal, the 128-byte ``siginfo_t`` the
    tracer read when the signal was delivered (none for SIGKILL, which is never delivered to a tracer)."""
    if siginfo is None or len(siginfo) < 24 or os.WIFEXITED(status):
        return Death.from_wait_status(status, "exit stop")
    signo, si_errno, code = _SIGINFO_HEAD.unpack_from(siginfo)
    if signo != os.WTERMSIG(status):
        return Death.from_wait_status(status, "exit stop")
    facts: dict[str, int] = {"si_code": code, "si_errno": si_errno}
    if signo in _FAULT_SIGNALS and code > 0:
        facts["address"] = struct.unpack_from("<Q", siginfo, 16)[0]
    elif code <= 0:  # SI_USER, SI_QUEUE, SI_TKILL …: sent by a process
        pid, uid = struct.unpack_from("<iI", siginfo, 16)
        facts["sender_pid"], facts["sender_uid"] = pid, uid
    return Death.from_wait_status(status, "exit stop", **facts)

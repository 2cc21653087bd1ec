"""Death dumps beside minicoredumper: one C workload crashed under each, interleaved round by round.

The workload (``crash_workload.c``) registers A (1 MiB) and B (64 MiB) and keeps C (512 MiB)
unregistered, then stores through a null pointer. Variants, each run once per round:

* ``base_mcd``, ``base_kmd``: the two builds crashing with no dump at all (``RLIMIT_CORE`` 1, which
  turns off file and pipe cores alike): what a crash costs by itself;
* ``mcd_raw``, ``mcd_gz``: the libminicoredumper build under minicoredumper (its Debian package),
  raw and in its gzip mode (a sparse tar through gzip), with ``core_pattern`` set around that one
  crash only;
* ``kmd_run``, ``kmd_nostacks``, ``kmd_compress``: the kmemdump-table build under
  ``kmemdump run --trace-exit`` (default options, ``--no-stacks``, ``--compress``).

Two times per crash, from the workload's own ``CLOCK_MONOTONIC`` stamp just before its faulting
store: *held up*, until the crashing process is gone (its pidfd reports the exit: its memory is
released and its parent may reap it); *complete*, until the dump file is whole at its final name
(minicoredumper: the last close of ``core`` or ``core.tar.gz``, which it never fsyncs; kmemdump:
the rename into place). Every dump is then checked outside the timing: A and B byte for byte at
their addresses, and no trace of C in any data extent of the file.
"""

from __future__ import annotations

import contextlib
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import IO

from benchmarks import mcd
from benchmarks.cbuild import build_workloads
from benchmarks.corecheck import Ready
from benchmarks.corecheck import check_dump
from benchmarks.procs import bench_env
from benchmarks.procs import kmemdump_command
from benchmarks.rows import Row
from benchmarks.rows import skipped
from benchmarks.timing import Config
from benchmarks.timing import median
from benchmarks.timing import median_ratio
from benchmarks.timing import spread

__all__ = ["death_dumps"]

_KMD_OPTIONS = {"kmd_run": [], "kmd_nostacks": ["--no-stacks"], "kmd_compress": ["--compress"]}
_TIMEOUT_S = 120.0


@dataclass
class _Crash:
    """One crash: its times (monotonic ns) and what it left."""

    variant: str
    t_crash: int | None = None
    t_gone: int | None = None
    t_exit: int | None = None
    t_file: int | None = None
    dump: Path | None = None
    ready: Ready | None = None
    check: dict[str, object] = field(default_factory=dict)

    def held(self) -> float | None:
        return None if self.t_gone is None or self.t_crash is None else float(self.t_gone - self.t_crash)

    def complete(self) -> float | None:
        return None if self.t_file is None or self.t_crash is None else float(self.t_file - self.t_crash)


def death_dumps(config: Config) -> list[Row]:
    rounds = config.pick(full=7, quick=2)
    with tempfile.TemporaryDirectory(prefix="kmd-bench-death-", dir=Path.cwd()) as scratch:
        root = Path(scratch)
        built = build_workloads(root)
        if built.plain is None or built.kmd is None:
            why = built.why_not.get("kmd") or built.why_not.get("plain") or "build failed"
            return [skipped("death dump beside minicoredumper", why)]
        why_not_mcd = mcd.mcd_unavailable_reason() or built.why_not.get("mcd")
        variants = ["base_kmd", "kmd_run", "kmd_nostacks", "kmd_compress"]
        runner = _Runner(root, built.plain, built.kmd, built.mcd)
        if why_not_mcd is None and os.geteuid() == 0:
            variants = ["base_mcd", "mcd_raw", "mcd_gz", *variants]
        results: dict[str, list[_Crash]] = {v: [] for v in variants}
        with mcd.SysctlGuard() if os.geteuid() == 0 else contextlib.nullcontext() as guard:
            if why_not_mcd is None and isinstance(guard, mcd.SysctlGuard):
                assert built.canary is not None and built.mcd is not None
                config_raw, base_raw = runner.configs["raw"]
                why_not_mcd = mcd.preflight_canary(guard, built.canary, config_raw, base_raw)
                if why_not_mcd is not None:
                    variants = [v for v in variants if "mcd" not in v]
            runner.guard = guard if isinstance(guard, mcd.SysctlGuard) else None
            for number in range(1 + rounds):  # round 0 warms the page cache and the binaries up
                for variant in variants:
                    crash = runner.run(variant)
                    if number > 0:
                        results[variant].append(crash)
                    print(f"  round {number} {variant}: {_describe(crash)}", file=sys.stderr, flush=True)
        return _rows(results, rounds, why_not_mcd)


def _describe(crash: _Crash) -> str:
    held, complete = crash.held(), crash.complete()
    text = f"held {held / 1e6:.1f} ms" if held is not None else "held ?"
    if complete is not None:
        text += f", complete {complete / 1e6:.1f} ms"
    if crash.check:
        text += f", {crash.check}"
    return text


class _Runner:
    """Runs one crash of a variant and checks its dump."""

    def __init__(self, root: Path, plain: Path, kmd: Path, mcd_exe: Path | None) -> None:
        self.root = root
        self.plain = plain
        self.kmd = kmd
        self.mcd = mcd_exe
        self.guard: mcd.SysctlGuard | None = None
        self.configs = mcd.mcd_configs(root / "mcd", ["workload_mcd", "mcd_canary"])
        self.kmemdump = kmemdump_command()

    def run(self, variant: str) -> _Crash:
        seed = int.from_bytes(os.urandom(6), "little")
        crash = _Crash(variant)
        os.sync()  # the previous dump's writeback must not land in this crash
        if variant.startswith("mcd_"):
            assert self.mcd is not None and self.guard is not None
            config, base = self.configs[variant.removeprefix("mcd_")]
            self.guard.set(mcd.mcd_pattern(config), mcd.PIPE_LIMIT)
            try:
                self._crash([str(self.mcd)], seed, crash, watch=base, core_limit=resource.RLIM_INFINITY)
            finally:
                self.guard.restore()  # host-wide: set around this one crash only
            self._tidy_mcd(base, crash)
        elif variant.startswith("base_"):
            exe = self.mcd if variant == "base_mcd" else self.kmd
            assert exe is not None
            with tempfile.TemporaryDirectory(dir=self.root) as tables:  # the crashed table stays behind
                self._crash([str(exe)], seed, crash, env={"KMEMDUMP_DIR": tables})
        else:
            dumps = self.root / f"dumps-{variant}"
            dumps.mkdir(exist_ok=True)
            wrapper = [
                *self.kmemdump,
                "run",
                "--trace-exit",
                "--no-autoinit",
                "--quiet",
                "--dir",
                str(dumps),
                *_KMD_OPTIONS[variant],
                "--",
                str(self.kmd),
            ]
            log = self.root / f"{variant}.log"
            with log.open("w") as stderr:
                self._crash(wrapper, seed, crash, watch=dumps, stderr=stderr)
            if crash.dump is None:
                crash.check = {"error": f"no dump appeared: {log.read_text().strip()[-300:]!r}"}
        if crash.dump is not None and crash.ready is not None:
            reference = subprocess.run(
                [str(self.plain), "gen", str(seed)], capture_output=True, check=True
            ).stdout
            crash.check = check_dump(crash.dump, crash.ready, reference)
            if variant.startswith("mcd_"):
                shutil.rmtree(crash.dump.parent, ignore_errors=True)
            else:
                crash.dump.unlink()
        elif not variant.startswith("base_") and not crash.check:
            crash.check = {"error": "no dump appeared"}
        return crash

    def _crash(
        self,
        argv: list[str],
        seed: int,
        crash: _Crash,
        *,
        watch: Path | None = None,
        env: dict[str, str] | None = None,
        core_limit: int = 1,
        stderr: IO[str] | None = None,
    ) -> None:
        """Start ``argv + [crash, SEED]``, let it crash, and note when its process is gone and when
        its dump is complete (``watch``: where it appears)."""

        def limit_core() -> None:
            # 1 byte: no file core (less than a page) and no pipe core (the kernel's special case)
            resource.setrlimit(resource.RLIMIT_CORE, (core_limit, core_limit))

        inotify = None
        if watch is not None:
            inotify = mcd.Inotify()
            inotify.add(watch, mcd.IN_MOVED_TO | mcd.IN_CREATE)
        child = subprocess.Popen(
            [*argv, "crash", str(seed)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=bench_env(**(env or {})),
            preexec_fn=limit_core,  # noqa: PLW1509 - one call, no lock taken
        )
        assert child.stdin is not None and child.stdout is not None
        child_fd = os.pidfd_open(child.pid)
        target_fd = -1
        try:
            line = child.stdout.readline().decode()
            if not line.startswith("ready "):
                raise RuntimeError(f"{argv[-1]} did not start: {line!r}")
            crash.ready = Ready.parse(line)
            target_fd = os.pidfd_open(crash.ready.pid)
            child.stdin.write(b"g")
            child.stdin.close()
            poller = select.poll()
            for fd in (child_fd, target_fd, child.stdout.fileno()):
                poller.register(fd, select.POLLIN)
            if inotify is not None:
                poller.register(inotify.fd, select.POLLIN)
            deadline = time.monotonic() + _TIMEOUT_S
            # minicoredumper holds the crashing process until its helper is done: once the process is
            # gone, the helper has closed its files

            def finished() -> bool:
                if not (crash.t_exit and crash.t_gone and crash.t_crash):
                    return False
                return watch is None or crash.t_file is not None

            while not finished():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{crash.variant} did not finish in {_TIMEOUT_S} s")
                reaped = crash.t_exit is not None and watch is not None and crash.t_file is None
                if reaped and time.monotonic_ns() - (crash.t_exit or 0) > 5e9:
                    break  # reaped 5 s ago and no dump: none is coming
                for fd, _ in poller.poll(1000):
                    now = time.monotonic_ns()
                    if fd == target_fd:
                        crash.t_gone = now
                        poller.unregister(target_fd)
                    elif fd == child_fd:
                        child.wait()
                        crash.t_exit = now
                        poller.unregister(child_fd)
                    elif fd == child.stdout.fileno():
                        self._read_crash_stamp(child.stdout, crash, poller)
                    elif inotify is not None and fd == inotify.fd:
                        self._on_files(inotify, watch, crash, now)
        finally:
            if child.returncode is None:
                # Never kill a process minicoredumper still reads (2.0.3 then spins on /proc/PID/mem):
                # let the crash finish, signals held back, before giving up on it.
                held = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
                signal.pthread_sigmask(signal.SIG_BLOCK, held)
                try:
                    child.stdin.close()
                    child.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
                finally:
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, held)
            for fd in (child_fd, target_fd):
                if fd >= 0:
                    os.close(fd)
            child.stdout.close()
            if inotify is not None:
                inotify.close()

    @staticmethod
    def _read_crash_stamp(stdout: IO[bytes], crash: _Crash, poller: select.poll) -> None:
        data = os.read(stdout.fileno(), 4096)
        if not data:
            poller.unregister(stdout.fileno())
            return
        for line in data.decode().splitlines():
            if line.startswith("crash "):
                crash.t_crash = int(line.split()[1])

    @staticmethod
    def _on_files(inotify: mcd.Inotify, watch: Path | None, crash: _Crash, now: int) -> None:
        """Note the dump file appearing (kmemdump) or being closed (minicoredumper)."""
        for where, mask, name in inotify.read():
            if where == watch and mask & mcd.IN_MOVED_TO and name.endswith((".core", ".core.zst")):
                if not name.startswith("."):  # kmemdump renames the finished file into place
                    crash.t_file, crash.dump = now, where / name
            elif (
                where == watch
                and mask & mcd.IN_ISDIR
                and crash.ready
                and name.endswith(f".{crash.ready.pid}")
            ):
                directory = where / name
                inotify.add(directory, mcd.IN_CLOSE_WRITE)
                crash.dump = directory / ("core.tar.gz" if "gz" in crash.variant else "core")
            elif mask & mcd.IN_CLOSE_WRITE and crash.dump is not None and name == crash.dump.name:
                crash.t_file = now  # the last close of the file is when it is complete

    @staticmethod
    def _tidy_mcd(base: Path, crash: _Crash) -> None:
        """Other programs that crashed while the pattern was set left empty directories: remove them."""
        for entry in base.iterdir():
            if crash.dump is not None and entry == crash.dump.parent:
                continue
            print(f"  note: another crash went to minicoredumper meanwhile: {entry.name}", file=sys.stderr)
            shutil.rmtree(entry, ignore_errors=True)


# --- rows ------------------------------------------------------------------------------------------


def _rows(results: dict[str, list[_Crash]], rounds: int, why_not_mcd: str | None) -> list[Row]:
    def held(v: str) -> list[float | None]:
        return [c.held() for c in results.get(v, [])]

    def complete(v: str) -> list[float | None]:
        return [c.complete() for c in results.get(v, [])]

    def size(v: str) -> list[float | None]:
        return [c.check.get("apparent") for c in results.get(v, [])]  # type: ignore[misc]

    have_mcd = bool(results.get("mcd_raw"))
    rows: list[Row] = []
    how = f"{rounds} rounds after a warm-up, variants interleaved; ms median (min to max)"

    def compare(
        measure: str, ours: list[float | None], base: list[float | None], label: str, target: float | None
    ) -> None:
        value = median(ours)
        if value is None:
            rows.append(skipped(measure, "not measured: no run of it finished"))
            return
        if not have_mcd or median(base) is None:
            note = f"kmemdump {spread(ours)}; minicoredumper not run: {why_not_mcd}"
            rows.append(Row(measure, value, "ns", None, "", None, "not compared", None, note))
            return
        ratio = median_ratio(ours, base)
        met = None if target is None or ratio is None else ratio <= target
        goal = "(informational)" if target is None else f"≤ {target:g}x {label}"
        note = f"kmemdump {spread(ours)}, {label} {spread(base)}; {how}"
        rows.append(Row(measure, value, "ns", median(base), label, ratio, goal, met, note))

    compare(
        "death dump, crash held up: run --trace-exit",
        held("kmd_run"),
        held("mcd_raw"),
        "minicoredumper raw",
        0.5,
    )
    compare("… with --no-stacks", held("kmd_nostacks"), held("mcd_raw"), "minicoredumper raw", None)
    compare("… with --compress", held("kmd_compress"), held("mcd_gz"), "minicoredumper gzip", None)
    compare(
        "death dump, crash → file complete: run --trace-exit",
        complete("kmd_run"),
        complete("mcd_raw"),
        "minicoredumper raw",
        1.0,
    )
    compare("… with --no-stacks", complete("kmd_nostacks"), complete("mcd_raw"), "minicoredumper raw", None)
    compare(
        "compressed death dump, crash → file complete",
        complete("kmd_compress"),
        complete("mcd_gz"),
        "minicoredumper gzip",
        0.1,
    )
    ours_size, base_size = size("kmd_compress"), size("mcd_gz")
    if median(ours_size) is not None:
        ratio = median_ratio(ours_size, base_size) if have_mcd else None
        rows.append(
            Row(
                "compressed death dump: file size",
                median(ours_size) or 0.0,
                "B",
                median(base_size) if have_mcd else None,
                "minicoredumper gzip (tar.gz)",
                ratio,
                "≤ 1x" if have_mcd else "not compared",
                None if ratio is None else ratio <= 1.0,
            )
        )
    compare(
        "no dump: crash → process gone",
        held("base_kmd"),
        held("base_mcd"),
        "the libminicoredumper build",
        None,
    )
    checks = [
        c.check for crashes in results.values() for c in crashes if c.variant not in ("base_mcd", "base_kmd")
    ]
    good = sum(1 for c in checks if c.get("a_exact") and c.get("b_exact") and c.get("c_absent"))
    rows.append(
        Row(
            "death dumps checked: A and B exact, C absent",
            float(good),
            "dumps",
            float(len(checks)),
            "dumps taken",
            None,
            "all",
            good == len(checks) and bool(checks),
            "; ".join(sorted({str(c) for c in checks if not (c.get("a_exact") and c.get("b_exact"))}))[:300],
        )
    )
    return rows

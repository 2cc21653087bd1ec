"""Triage across a fleet: 200 dumps from 20 hosts, written with the collector's own writer (as each
host's collector would have), shipped through the real shipper to a real S3 server, folded into the
problems they are by ``kmemdump ls --group``; and the filters of a bucket listing."""

from __future__ import annotations

import json
import random
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from helpers_fleet import KMEMDUMP
from helpers_fleet import write_dump
from kmemdump.fleet.s3 import ObjectStore
from kmemdump.fleet.shipper import ShipOptions
from kmemdump.fleet.shipper import Shipper
from kmemdump.fleet.url import parse_url

pytestmark = pytest.mark.slow

HOSTS = [f"web-{n:02d}" for n in range(20)]
BASE_NS = 1_795_800_000_000_000_000  # 2026-11-27 15:20 UTC
HOUR = 3600 * 10**9


def _deadlock(directory: str, line: int) -> list:
    return [
        (
            "MainThread",
            False,
            [
                ("acquire", f"{directory}/locks.py", line),
                ("handle", f"{directory}/app.py", line + 9),
                ("serve", f"{directory}/app.py", 12),
                ("<module>", f"{directory}/main.py", 3),
            ],
        ),
        ("worker", False, [("wait", "/usr/lib/python3.11/threading.py", 320)]),
    ]


def _slow_socket(directory: str, line: int) -> list:
    return [
        (
            "MainThread",
            False,
            [("recv_into", f"{directory}/socket.py", line), ("fetch", f"{directory}/client.py", 77)],
        )
    ]


def _spin(directory: str, line: int) -> list:
    return [
        ("MainThread", False, [("wait", f"{directory}/threading.py", 1)]),
        ("cruncher", True, [("crunch", f"{directory}/busy.py", line), ("run", f"{directory}/busy.py", 5)]),
    ]


# (problem, reason, how many, on which hosts, stacks maker or None for a death without stacks)
PROBLEMS = [
    ("deadlock", "hang", 90, HOSTS, _deadlock),
    ("socket", "hang", 60, HOSTS[:10], _slow_socket),
    ("segv", "death", 40, HOSTS[10:], None),
    ("spin", "hang", 10, HOSTS[5:7], _spin),
]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, object]]]:
    """200 dumps in one directory; the expected problems keyed by name."""
    rng = random.Random(16)
    directory = tmp_path_factory.mktemp("fleet")
    expected: dict[str, dict[str, object]] = {}
    pid = 1000
    for name, reason, count, hosts, stacks in PROBLEMS:
        times = []
        on: Counter[str] = Counter()
        for i in range(count):
            pid += 1
            host = hosts[i % len(hosts)]
            on[host] += 1
            when = BASE_NS + rng.randrange(0, 48 * HOUR)
            times.append(when)
            # every host runs its own deployment directory and a slightly different release
            threads = (
                stacks(f"/srv/{host}/release-{rng.randrange(5)}", rng.randrange(10, 400)) if stacks else ()
            )
            write_dump(
                directory,
                host=host,
                pid=pid,
                reason=reason,
                captured_ns=when,
                threads=threads,
                death_signal=11 if stacks is None else None,
            )
        expected[name] = {"count": count, "first": min(times), "last": max(times), "hosts": dict(on)}
    return directory, expected


def _check(problems: list[dict[str, object]], expected: dict[str, dict[str, object]]) -> None:
    assert len(problems) == len(PROBLEMS)
    by_title = {str(p["title"]): p for p in problems}
    titles = {
        "deadlock": "acquire (locks.py)",
        "socket": "recv_into (socket.py)",
        "segv": "death of worker.py, SIGSEGV (no stacks)",
        "spin": "crunch (busy.py)",
    }
    for name, title in titles.items():
        problem, want = by_title[title], expected[name]
        assert problem["count"] == want["count"], name
        assert problem["first_ns"] == want["first"] and problem["last_ns"] == want["last"], name
        assert problem["hosts"] == want["hosts"], name
    assert [p["count"] for p in problems] == [90, 60, 40, 10]  # the most frequent first
    assert by_title["acquire (locks.py)"]["frames"] == [
        "acquire (locks.py)",
        "handle (app.py)",
        "serve (app.py)",
        "<module> (main.py)",
    ]


def _kmemdump(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*KMEMDUMP, *args], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    return result


def test_two_hundred_dumps_from_twenty_hosts_fold_into_their_problems(
    fleet: tuple[Path, dict[str, dict[str, object]]], store_url: str, tmp_path: Path
) -> None:
    directory, expected = fleet
    # GIVEN the 200 dumps shipped by the shipper
    lines: list[str] = []
    shipper = Shipper(ShipOptions(parse_url(store_url), tmp_path / "spool"), log=lines.append)
    shipper.start()
    for dump in sorted(directory.iterdir()):
        shipper.submit(dump)
    assert shipper.wait_idle(timeout=240), lines[-5:]
    shipper.stop()
    assert shipper.uploaded == 200, [line for line in lines if "uploaded" not in line][:5]
    # WHEN the bucket is listed grouped
    remote = json.loads(_kmemdump("ls", store_url, "--group", "--json").stdout)
    # THEN there are four problems with the right counts, times and hosts
    assert remote["dumps"] == 200
    _check(remote["problems"], expected)
    # the same from the local directory (signatures computed from the dumps themselves)
    local = json.loads(_kmemdump("ls", str(directory), "--group", "--json").stdout)
    _check(local["problems"], expected)
    assert {p["signature"] for p in local["problems"]} == {p["signature"] for p in remote["problems"]}
    # the text view: one row per problem, the most frequent first
    text = _kmemdump("ls", store_url, "--group", "--plain").stdout.splitlines()
    assert text[0].split()[:2] == ["COUNT", "FIRST"] and len(text) == 5
    assert text[1].split()[0] == "90" and "20: web-" in text[1] and "acquire (locks.py)" in text[1]


def test_a_bucket_listing_filters_by_host_reason_and_time(
    fleet: tuple[Path, dict[str, dict[str, object]]], store_url: str, tmp_path: Path
) -> None:
    directory, _ = fleet
    shipper = Shipper(ShipOptions(parse_url(store_url), tmp_path / "spool"), log=lambda line: None)
    shipper.start()
    chosen = sorted(directory.iterdir())[::10]  # 20 of them
    for dump in chosen:
        shipper.submit(dump)
    assert shipper.wait_idle(timeout=120)
    shipper.stop()
    everything = json.loads(_kmemdump("ls", store_url, "--json").stdout)["dumps"]
    assert len(everything) == 20 and len({d["key"] for d in everything}) == 20
    assert [d["captured_ns"] for d in everything] == sorted(d["captured_ns"] for d in everything)
    host = everything[0]["host"]
    by_host = json.loads(_kmemdump("ls", store_url, "--host", host, "--json").stdout)["dumps"]
    assert by_host and {d["host"] for d in by_host} == {host}
    assert len(by_host) == sum(d["host"] == host for d in everything)
    deaths = json.loads(_kmemdump("ls", store_url, "--reason", "death", "--json").stdout)["dumps"]
    assert len(deaths) == sum(d["reason"] == "death" for d in everything) > 0
    assert all(d["death"] == "killed by SIGSEGV" for d in deaths)
    middle = everything[10]["captured_ns"]
    since = f"{middle // 10**9 + 1}"
    from datetime import datetime
    from datetime import timezone

    stamp = datetime.fromtimestamp(int(since), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    later = json.loads(_kmemdump("ls", store_url, "--since", stamp, "--json").stdout)["dumps"]
    assert len(later) == sum(d["captured_ns"] >= int(since) * 10**9 for d in everything)


def test_a_listing_reads_only_index_objects_and_survives_hostile_ones(store_url: str) -> None:
    url = parse_url(store_url)
    store = ObjectStore(url)
    # GIVEN an index object whose dump was never uploaded, and two hostile ones beside it
    name = "kmemdump-77-88-hang-20261128T101500.000000Z"
    index = {
        "format": "kmemdump-index",
        "version": 1,
        "key": url.key("2026-11-28", "h", f"{name}.core"),
        "host": "h",
        "pid": 77,
        "start_time": 88,
        "reason": "hang",
        "captured_ns": 1_795_860_900_000_000_000,
        "command": "python3 app.py",
        "exe": None,
        "uid": 0,
        "size": 1,
        "sha256": "0" * 64,
        "compressed": False,
        "regions": 1,
        "stored_bytes": 1,
        "partial": False,
        "signature": "ab" * 8,
        "frames": ["f (a.py)"],
        "signature_basis": "the main thread",
    }
    store.put_if_absent(url.key("2026-11-28", "h", f"{name}.index.json"), json.dumps(index).encode())
    evil = "kmemdump-66-88-hang-20261128T101600.000000Z.index.json"
    store.put_if_absent(url.key("2026-11-28", "h", evil), b'{"format": "kmemdump-index", "version": 1}')
    other = "kmemdump-55-88-hang-20261128T101700.000000Z.index.json"
    store.put_if_absent(url.key("2026-11-28", "h", other), json.dumps({**index, "pid": 55}).encode())
    # WHEN the bucket is listed
    result = subprocess.run(
        [*KMEMDUMP, "ls", store_url, "--json"], capture_output=True, text=True, timeout=120, check=False
    )
    # THEN the dump is listed from its index alone, and the hostile objects are reported and left out
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert [d["pid"] for d in listed["dumps"]] == [77]
    assert sorted(s["key"].rsplit("/", 1)[1] for s in listed["skipped"]) == sorted([evil, other])
    # and show says clearly that the dump itself is not there
    shown = subprocess.run(
        [*KMEMDUMP, "show", f"s3://{url.bucket}/{index['key']}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert shown.returncode == 1 and shown.stderr.startswith("kmemdump: error: no such dump in the bucket")
    assert "Traceback" not in shown.stderr

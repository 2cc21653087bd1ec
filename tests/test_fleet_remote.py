"""Inspector commands on s3:// dumps: errors are one line with the remedy, never a traceback; the
download is capped and checked against the index object; without the [ship] extra the error names it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers_fleet import KMEMDUMP
from helpers_fleet import write_dump
from kmemdump.fleet.catalog import build_index
from kmemdump.fleet.catalog import index_key_of
from kmemdump.fleet.s3 import ObjectStore
from kmemdump.fleet.url import parse_url
from kmemdump.formats.dumpindex import encode_index

pytestmark = pytest.mark.slow

HIDE_OBSTORE = """
import sys

class _Hide:
    def find_spec(self, name, path=None, target=None):
        if name == "obstore" or name.startswith("obstore."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _Hide())
"""


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KMEMDUMP, *args], capture_output=True, text=True, timeout=120, env=env, check=False
    )


def _one_line_error(result: subprocess.CompletedProcess[str], text: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    first = result.stderr.splitlines()[0]
    assert first.startswith("kmemdump: error: ") and text in first, result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def shipped(store_url: str, tmp_path: Path) -> tuple[str, Path]:
    """One dump in the bucket with its index object; returns its s3:// URL and the local file."""
    url = parse_url(store_url)
    dump = write_dump(
        tmp_path,
        host="h1",
        pid=4242,
        reason="hang",
        captured_ns=1_795_860_900_000_000_000,
        threads=[("MainThread", False, [("f", "a.py", 1)])],
    )
    index = build_index(dump, url)
    store = ObjectStore(url)
    assert store.put_if_absent(index.key, dump) == "created"
    assert store.put_if_absent(index_key_of(index.key), encode_index(index)) == "created"
    return f"s3://{url.bucket}/{index.key}", dump


def test_show_hexdump_extract_and_gdb_take_an_s3_dump(shipped: tuple[str, Path], tmp_path: Path) -> None:
    url, local = shipped
    shown = _run("show", url, "--json")
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert document["dump"]["pid"] == 4242 and document["dump"]["host"] == "h1"
    assert Path(document["path"]).name == local.name
    extracted = _run("extract", url, "state", "-o", str(tmp_path / "state.bin"))
    assert extracted.returncode == 0, extracted.stderr
    assert (tmp_path / "state.bin").read_bytes() == b"state of h1 pid 4242"
    private = tmp_path / "tmp"
    private.mkdir()
    env = dict(os.environ, TMPDIR=str(private))
    command = _run("gdb", "--print-command", url, env=env)
    assert command.returncode == 0, command.stderr
    core = Path(command.stdout.split()[-1])
    # the command is for later: the downloaded copy it names outlives kmemdump, and stderr says where
    assert core.is_relative_to(private) and core.name == local.name
    assert core.read_bytes() == local.read_bytes()
    assert f"downloaded {url} to {core}; remove it when done" in command.stderr
    shutil.rmtree(core.parent)
    assert _run("show", url, env=env).returncode == 0
    assert not any(private.iterdir())  # any other command removes its download at exit


def test_a_download_over_the_cap_is_refused(shipped: tuple[str, Path]) -> None:
    url, local = shipped
    env = dict(os.environ, KMEMDUMP_MAX_DOWNLOAD=str(local.stat().st_size - 1))
    _one_line_error(_run("show", url, env=env), "download limit")


def test_a_dump_that_does_not_match_its_index_is_refused(store_url: str, tmp_path: Path) -> None:
    url = parse_url(store_url)
    dump = write_dump(tmp_path, host="h2", pid=7, reason="hang", captured_ns=1_795_860_900_000_000_000)
    index = build_index(dump, url)
    store = ObjectStore(url)
    store.put_if_absent(index.key, dump.read_bytes().replace(b"state of h2", b"STATE OF H2"))
    store.put_if_absent(index_key_of(index.key), encode_index(index))
    _one_line_error(_run("show", f"s3://{url.bucket}/{index.key}"), "does not match the SHA-256")


def test_store_errors_are_one_line(store_url: str) -> None:
    _one_line_error(_run("ls", "s3://no-such-bucket-16/x"), "the bucket does not exist")
    _one_line_error(_run("show", f"{store_url}/2026-11-28/h/nothing.core"), "no such dump in the bucket")
    wrong = dict(os.environ, AWS_SECRET_ACCESS_KEY="wrong-secret-value")
    result = _run("ls", store_url, env=wrong)
    _one_line_error(result, "SignatureDoesNotMatch")
    assert "wrong-secret-value" not in result.stderr
    usage = _run("ls", "s3://x")
    assert usage.returncode in (1, 2) and "bucket" in usage.stderr and "Traceback" not in usage.stderr


def test_without_the_ship_extra_the_commands_name_it(store_url: str, tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(HIDE_OBSTORE)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    for args in (["ls", store_url], ["show", f"{store_url}/x.core"], ["watch", "--ship", store_url]):
        _one_line_error(_run(*args, env=env), "install it with: pip install 'kmemdump[ship]'")


MEASURED = """
import runpy, sys
sys.argv = ["kmemdump", *sys.argv[1:]]
try:
    runpy.run_module("kmemdump.cli", run_name="__main__")
finally:
    with open("/proc/self/status") as status:  # VmHWM: this program's own peak (ru_maxrss would
        peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))  # count the parent's)
    print(f"peak-rss-kib {peak}", file=sys.stderr)
"""


def _measured(*args: str) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run kmemdump; its result (the measurement taken out of stderr) and its peak resident KiB."""
    result = subprocess.run(
        [sys.executable, "-c", MEASURED, *args], capture_output=True, text=True, timeout=120, check=False
    )
    *lines, last = result.stderr.splitlines()
    assert last.startswith("peak-rss-kib "), result.stderr
    result.stderr = "\n".join(lines)
    return result, int(last.split()[1])


HOSTILE_INDEX_BYTES = 48 << 20


def test_a_huge_object_posing_as_an_index_is_refused_without_reading_it(
    store_url: str, tmp_path: Path
) -> None:
    parsed = parse_url(store_url)
    store = ObjectStore(parsed)
    dump = write_dump(tmp_path, host="h3", pid=4243, reason="hang", captured_ns=1_795_860_900_000_000_000)
    key = build_index(dump, parsed).key
    assert store.put_if_absent(key, dump) == "created"
    url = f"s3://{parsed.bucket}/{key}"
    baseline, baseline_kib = _measured("show", url, "--json")  # a dump without an index object
    assert baseline.returncode == 0 and "warning" not in baseline.stderr, baseline.stderr
    # GIVEN another tenant planted 48 MiB of blanks as the dump's index object, and one more elsewhere
    hostile = b"{" + b" " * (HOSTILE_INDEX_BYTES - 2) + b"}"
    assert store.put_if_absent(index_key_of(key), hostile) == "created"
    planted = key.rsplit("/", 1)[0] + "/big.index.json"
    assert store.put_if_absent(planted, hostile) == "created"
    # WHEN the dump is shown THEN it is, without the index (said in one warning), and the object was
    # never read into memory: the peak is what it was, not 48 MiB (or twice that) more
    shown, shown_kib = _measured("show", url, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["dump"]["pid"] == 4243
    assert shown_kib - baseline_kib < 16 * 1024, (baseline_kib, shown_kib)
    (warning,) = [line for line in shown.stderr.splitlines() if "warning" in line]
    assert "index object is 50331648 bytes, more than the 65536 bytes" in warning, warning
    # AND the planted object, named as a dump's index, is refused in one line, unread
    refused, refused_kib = _measured("show", f"s3://{parsed.bucket}/{planted}")
    _one_line_error(refused, "the index object is 50331648 bytes, more than the 65536 bytes")
    assert refused_kib - baseline_kib < 16 * 1024, (baseline_kib, refused_kib)
    # AND ls reports both as skipped, one line each
    listing = _run("ls", store_url, "--plain")
    assert listing.returncode == 0
    skipped = [line for line in listing.stderr.splitlines() if "skipped" in line]
    assert len(skipped) == 1 and "too large" in skipped[0], listing.stderr

"""``kmemdump ls s3://…`` as a user meets it: a bad URL is one line and exit status 2 (no usage block,
no secret repeated), counts are spelled right, and what was skipped is said in whole lines that never
run into each other or into the table, even when the listing's reading threads meet many at once."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from helpers_fleet import KMEMDUMP
from helpers_fleet import write_dump
from kmemdump.cli.fleetls import SKIPPED_SHOWN
from kmemdump.fleet.catalog import build_index
from kmemdump.fleet.catalog import index_key_of
from kmemdump.fleet.s3 import ObjectStore
from kmemdump.fleet.url import parse_url
from kmemdump.formats.dumpindex import encode_index


def _run(*args: str, merged: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KMEMDUMP, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merged else subprocess.PIPE,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("s3://", "not a valid bucket name: it is empty"),
        ("s3://a", "not a valid bucket name: 1 character, where a bucket name has 3 to 63"),
        ("s3://Bad_Bucket!/x", "not a valid bucket name: only letters, digits"),
        ("s3://bucket:9000/x", "the endpoint goes in AWS_ENDPOINT_URL"),
        ("s3://bucket//x", "the prefix starts with an empty segment"),
        ("s3://bucket/a//b", "empty, '.' or '..' segment"),
        ("s3://bucket/a/../b", "empty, '.' or '..' segment"),
        ("s3://bucket/p?versionId=3", "takes no query or fragment"),
        ("s3://bucket/p#top", "takes no query or fragment"),
        ("s3:/bucket/p", "not an s3:// URL"),
        ("S3:bucket", "not an s3:// URL"),
    ],
)
def test_a_bad_url_is_one_line_and_exit_status_2(url: str, said: str, tmp_path: Path) -> None:
    result = _run("ls", url)
    assert result.returncode == 2, (result.stdout, result.stderr)
    first, *rest = result.stderr.splitlines()
    assert first.startswith("kmemdump: error: ") and said in first, result.stderr
    assert "usage:" not in result.stderr and "Traceback" not in result.stderr
    assert rest == [
        "",
        "Give the store as s3://BUCKET or s3://BUCKET/PREFIX (bucket names are 3 to 63 characters).",
    ]
    assert result.stdout == ""


def test_credentials_in_the_url_are_refused_without_being_repeated() -> None:
    result = _run("ls", "s3://AKIAEXAMPLE:hunter2secret@bucket/prod")
    assert result.returncode == 2
    assert result.stderr.startswith("kmemdump: error: an s3:// URL carries no credentials")
    assert "hunter2secret" not in result.stderr and "AKIAEXAMPLE" not in result.stderr


def test_an_existing_directory_named_like_a_url_is_still_a_directory(tmp_path: Path) -> None:
    odd = tmp_path / "s3:dumps"
    odd.mkdir()
    write_dump(odd, host="h", pid=11, reason="hang", captured_ns=1_795_860_900_000_000_000)
    result = subprocess.run(
        [*KMEMDUMP, "ls", "s3:dumps", "--plain"],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "kmemdump-11-77-hang-" in result.stdout, result.stderr


def test_one_dump_and_one_problem_are_singular(tmp_path: Path) -> None:
    write_dump(tmp_path, host="h", pid=12, reason="hang", captured_ns=1_795_860_900_000_000_000)
    result = _run("ls", str(tmp_path), "--group", "--plain")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[-1].startswith("1 dump, 1 problem; "), result.stderr


@pytest.mark.slow
def test_skipped_objects_are_whole_lines_never_glued_and_counted_past_a_few(
    store_url: str, tmp_path: Path
) -> None:
    url = parse_url(store_url)
    store = ObjectStore(url)
    # GIVEN one good dump and 40 malformed index objects, read by the listing's 16 threads at once
    dump = write_dump(tmp_path, host="h1", pid=4242, reason="hang", captured_ns=1_795_860_900_000_000_000)
    index = build_index(dump, url)
    assert store.put_if_absent(index.key, dump) == "created"
    assert store.put_if_absent(index_key_of(index.key), encode_index(index)) == "created"
    for n in range(40):
        name = f"kmemdump-{100 + n}-5-hang-20261128T101500.000000Z.index.json"
        assert store.put_if_absent(url.key("2026-11-28", "h2", name), b"{not json" * (n + 1)) == "created"
    # WHEN it is listed with stdout and stderr into one pipe
    result = _run("ls", store_url, "--plain", merged=True)
    assert result.returncode == 0, result.stdout
    lines = result.stdout.splitlines()
    # THEN every line says one thing: no line holds two messages, nor a message and a table row
    for line in lines:
        assert line.count("kmemdump:") <= 1 and not (
            "kmemdump:" in line and "s3://" in line.split("kmemdump:")[0]
        ), line
    skipped = [line for line in lines if line.startswith("kmemdump: skipped ")]
    assert len(skipped) == SKIPPED_SHOWN + 1, result.stdout
    assert skipped[-1] == f"kmemdump: skipped {40 - SKIPPED_SHOWN} more (--json lists them all)"
    named = [line.split("/h2/")[1].split("-")[1] for line in skipped[:-1]]
    assert named == [str(100 + n) for n in range(SKIPPED_SHOWN)]  # in key order, not thread order
    # AND the table comes whole after them, its one row intact
    header = next(i for i, line in enumerate(lines) if line.startswith("TIME (UTC)"))
    assert header > max(lines.index(line) for line in skipped)
    assert lines[header + 1].endswith(index.key) and len(lines) == header + 2


@pytest.mark.slow
def test_a_prefix_reaching_into_the_layout_gets_a_hint(store_url: str) -> None:
    result = _run("ls", f"{store_url}/2026-11-28/web-7")
    assert result.returncode == 0
    assert result.stderr.strip() == (
        f"no dumps in {store_url}/2026-11-28/web-7 (2026-11-28 is a day of the key layout PREFIX/DAY/HOST/…: "
        f"list it with kmemdump ls {store_url} --since 2026-11-28 --until 2026-11-29 --host web-7)"
    )

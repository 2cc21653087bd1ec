"""The object-store layer against a real S3 server (SeaweedFS): conditional PUT, reads, listing,
errors in kmemdump's terms, and endpoint/credential discovery the way S3 clients do it."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import STORE_BUCKET
from helpers_seaweed import ACCESS_KEY
from helpers_seaweed import SECRET_KEY
from helpers_seaweed import free_ports
from kmemdump.errors import KmemdumpError
from kmemdump.fleet.awsconfig import resolve_settings
from kmemdump.fleet.errors import ShipExtraMissingError
from kmemdump.fleet.errors import StoreAuthError
from kmemdump.fleet.errors import StoreConfigError
from kmemdump.fleet.errors import StoreNotFoundError
from kmemdump.fleet.errors import StoreTooLargeError
from kmemdump.fleet.errors import StoreUnavailableError
from kmemdump.fleet.errors import StoreURLError
from kmemdump.fleet.s3 import ObjectStore
from kmemdump.fleet.url import parse_url


def _store(url: str) -> ObjectStore:
    return ObjectStore(parse_url(url))


def test_conditional_put_writes_once_and_reads_back(store_url: str) -> None:
    store = _store(store_url)
    key = parse_url(store_url).key("host-a", "one.core")
    assert store.put_if_absent(key, b"first") == "created"
    assert store.put_if_absent(key, b"second") == "exists"
    assert store.get(key) == b"first"
    assert store.get(key, 1, 3) == b"ir"
    info = store.head(key)
    assert info is not None and info.size == 5 and info.etag == "8b04d5e3775d298e78455efc5ca404d5"  # MD5


def test_a_read_with_a_limit_refuses_a_larger_object_from_its_size(store_url: str) -> None:
    store = _store(store_url)
    key = parse_url(store_url).key("sized")
    assert store.put_if_absent(key, b"x" * 1000) == "created"
    assert store.get(key, limit=1000) == b"x" * 1000
    with pytest.raises(StoreTooLargeError, match="1000 bytes, more than the 999 bytes") as caught:
        store.get(key, limit=999)
    assert (caught.value.size, caught.value.limit) == (1000, 999)
    assert store.put_if_absent(parse_url(store_url).key("empty"), b"") == "created"
    assert store.get(parse_url(store_url).key("empty"), limit=10) == b""
    with pytest.raises(StoreNotFoundError):
        store.get(parse_url(store_url).key("absent"), limit=10)


def test_a_file_is_uploaded_from_its_path(store_url: str, tmp_path: Path) -> None:
    store = _store(store_url)
    data = bytes(range(256)) * 4096
    (tmp_path / "dump.core").write_bytes(data)
    key = parse_url(store_url).key("f.core")
    assert store.put_if_absent(key, tmp_path / "dump.core") == "created"
    out = tmp_path / "back"
    with open(out, "wb") as handle:
        assert store.download(key, handle) == len(data)
    assert out.read_bytes() == data
    with open(tmp_path / "capped", "wb") as handle, pytest.raises(KmemdumpError, match="limit"):
        store.download(key, handle, limit=len(data) - 1)


def test_concurrent_writers_of_one_key_create_it_once(store_url: str) -> None:
    store = _store(store_url)
    key = parse_url(store_url).key("race")
    outcomes: list[str] = []
    lock = threading.Lock()

    def write(n: int) -> None:
        outcome = store.put_if_absent(key, f"writer {n}".encode())
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["created"] + ["exists"] * 7
    assert store.get(key).startswith(b"writer ")


def test_listing_is_by_path_segment_and_in_key_order(store_url: str) -> None:
    url = parse_url(store_url)
    store = _store(store_url)
    for name in ("d/2", "d/1", "dd/3", "d/sub/4"):
        store.put_if_absent(url.key(name), b"x")
    assert [i.key for i in store.objects(url.key("d"))] == [url.key(n) for n in ("d/1", "d/2", "d/sub/4")]
    assert sorted(store.list_dirs(url.key())) == [url.key("d"), url.key("dd")]
    assert [i.key for i in store.objects(url.key("d"), offset=url.key("d/1"))] == [
        url.key("d/2"),
        url.key("d/sub/4"),
    ]
    assert list(store.objects(url.key("nothing-here"))) == []


def test_missing_objects_and_buckets(store_url: str) -> None:
    store = _store(store_url)
    assert store.head(parse_url(store_url).key("absent")) is None
    with pytest.raises(StoreNotFoundError, match="no such object"):
        store.get(parse_url(store_url).key("absent"))
    nowhere = ObjectStore(parse_url("s3://no-such-bucket-here/x"))
    with pytest.raises(StoreNotFoundError, match="bucket does not exist"):
        nowhere.put_if_absent("x/k", b"v")  # the server never creates buckets on a PUT
    with pytest.raises(StoreNotFoundError, match="bucket does not exist"):
        list(nowhere.objects("x"))


def test_wrong_secret_is_an_auth_error_that_does_not_show_the_secret(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-0123456789")
    with pytest.raises(StoreAuthError) as caught:
        _store(store_url).put_if_absent(parse_url(store_url).key("k"), b"v")
    assert "SignatureDoesNotMatch" in str(caught.value)
    assert "not-the-secret" not in str(caught.value) and "not-the-secret" not in repr(_store(store_url))


def test_a_store_that_is_down_fails_fast_as_unavailable(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    (port,) = free_ports(1)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    began = time.monotonic()
    with pytest.raises(StoreUnavailableError):
        ObjectStore(parse_url(store_url), connect_timeout=1, timeout=5, retries=1).put_if_absent("k", b"v")
    assert time.monotonic() - began < 20  # a hang guard: the client's own timeouts bound it


def test_plain_http_needs_to_be_allowed(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ALLOW_HTTP")
    with pytest.raises(StoreConfigError, match="AWS_ALLOW_HTTP"):
        _store(store_url)


def test_static_keys_and_endpoint_from_the_shared_files(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN keys only in a profile of ~/.aws/credentials and the endpoint in ~/.aws/config
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_REGION"):
        monkeypatch.delenv(name)
    aws = tmp_path / ".aws"
    aws.mkdir()
    (aws / "credentials").write_text(
        f"[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\n"
        f"[ship]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
    )
    (aws / "config").write_text(f"[profile ship]\nregion = eu-west-1\nendpoint_url = {endpoint}\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("AWS_PROFILE", "ship")
    # WHEN the store is opened
    settings = resolve_settings()
    # THEN the profile's settings are used, and they work
    assert settings.region == "eu-west-1" and settings.endpoint == endpoint
    assert settings.credentials == f"profile ship in {aws / 'credentials'}"
    assert SECRET_KEY not in repr(settings)
    assert ObjectStore(parse_url(store_url), settings).put_if_absent(parse_url(store_url).key("p"), b"1") == (
        "created"
    )
    monkeypatch.setenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true")
    assert resolve_settings().endpoint is None


def test_profiles_kmemdump_cannot_use_are_refused_with_the_way_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config"
    config.write_text("[profile sso]\nsso_session = corp\nregion = eu-west-1\n")
    env = {"AWS_CONFIG_FILE": str(config), "HOME": "/nonexistent", "AWS_PROFILE": "sso"}
    with pytest.raises(StoreAuthError, match="export-credentials --profile sso"):
        resolve_settings(env)
    with pytest.raises(StoreConfigError, match="neither shared file"):
        resolve_settings({**env, "AWS_PROFILE": "nope"})
    with pytest.raises(StoreAuthError, match="no S3 credentials"):
        resolve_settings({"HOME": "/nonexistent", "AWS_EC2_METADATA_DISABLED": "true"})
    with pytest.raises(StoreAuthError, match="only one of"):
        resolve_settings({"HOME": "/nonexistent", "AWS_ACCESS_KEY_ID": "k"})
    (tmp_path / "bad").write_text("no section header\n")
    with pytest.raises(StoreConfigError, match="cannot read an AWS shared file"):
        resolve_settings({"HOME": "/nonexistent", "AWS_CONFIG_FILE": str(tmp_path / "bad")})
    chain = resolve_settings({"HOME": "/nonexistent", "AWS_WEB_IDENTITY_TOKEN_FILE": "/t"})
    assert chain.access_key_id is None and "web identity" in chain.credentials


@pytest.mark.parametrize(
    ("text", "bucket", "prefix"),
    [
        ("s3://bucket", "bucket", ""),
        ("s3://bucket/", "bucket", ""),
        ("s3://my.bucket-1/a/b/", "my.bucket-1", "a/b"),
        ("S3://bucket/p", "bucket", "p"),
    ],
)
def test_urls(text: str, bucket: str, prefix: str) -> None:
    url = parse_url(text)
    assert (url.bucket, url.prefix) == (bucket, prefix)
    assert url.key("x") == f"{prefix}/x".lstrip("/")


@pytest.mark.parametrize(
    "text",
    [
        "s3://",
        "s3://ab",
        "s3://b..b/x",
        "s3://bucket/a//b",
        "s3://bucket/a/../b",
        "s3://bucket/a\nb",
        "/local/path",
        "s3:/bucket",
    ],
)
def test_bad_urls_are_refused(text: str) -> None:
    with pytest.raises(StoreURLError):
        parse_url(text)


def test_without_the_extra_the_error_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "obstore", None)  # as if not installed
    with pytest.raises(ShipExtraMissingError) as caught:
        ObjectStore(parse_url(f"s3://{STORE_BUCKET}"))
    assert str(caught.value).endswith("install it with: pip install 'kmemdump[ship]'")
    assert "\n" not in str(caught.value)


def test_a_large_file_goes_in_parts_and_is_still_written_once(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kmemdump.fleet import s3

    monkeypatch.setattr(s3, "SINGLE_PUT_LIMIT", 1024 * 1024)
    data = os.urandom(9 * 1024 * 1024 + 17)
    (tmp_path / "big.core").write_bytes(data)
    store = _store(store_url)
    key = parse_url(store_url).key("big.core")
    assert store.put_if_absent(key, tmp_path / "big.core") == "created"
    assert store.put_if_absent(key, tmp_path / "big.core") == "exists"
    info = store.head(key)
    assert info is not None and info.size == len(data) and "-" in (info.etag or "")  # a multipart ETag
    assert store.get(key, len(data) - 17) == data[-17:]

"""The object-store client kmemdump uses: five verbs on obstore, with errors in kmemdump's terms.

* :meth:`ObjectStore.put_if_absent` — a conditional PUT (``If-None-Match: *``): ``"created"``, or
  ``"exists"`` when the key is taken, so a retried upload never writes twice;
* :meth:`ObjectStore.get` (whole or a byte range, or whole up to a size cap: an object's size is
  checked before its body is read), :meth:`ObjectStore.download` (streamed into a file, with a
  size cap), :meth:`ObjectStore.head`, :meth:`ObjectStore.objects` (a paginated listing).

obstore comes from the ``ship`` extra and is imported on first use; without it every verb raises
:class:`~kmemdump.fleet.errors.ShipExtraMissingError`. Requests use path-style addressing (it works
with every S3-compatible store, and with IP endpoints), short connect timeouts and few retries: the
shipper does its own backoff, and a command line should fail fast. Failures become
:class:`StoreNotFoundError`, :class:`StoreAuthError`, :class:`StoreConfigError` or
:class:`StoreUnavailableError`; their messages never contain a secret.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO
from typing import Any
from typing import Literal

from kmemdump._version import __version__
from kmemdump.fleet.awsconfig import StoreSettings
from kmemdump.fleet.awsconfig import resolve_settings
from kmemdump.fleet.errors import ShipExtraMissingError
from kmemdump.fleet.errors import StoreAuthError
from kmemdump.fleet.errors import StoreConfigError
from kmemdump.fleet.errors import StoreError
from kmemdump.fleet.errors import StoreNotFoundError
from kmemdump.fleet.errors import StoreTooLargeError
from kmemdump.fleet.errors import StoreUnavailableError
from kmemdump.fleet.url import StoreURL
from kmemdump.record import frozen

__all__ = ["SINGLE_PUT_LIMIT", "ObjectInfo", "ObjectStore", "PutOutcome", "require_client"]

PutOutcome = Literal["created", "exists"]
SINGLE_PUT_LIMIT = 64 * 1024 * 1024
"""Files up to this size are sent in one conditional PUT; larger ones in a multipart upload."""


@frozen
class ObjectInfo:
    key: str
    size: int
    etag: str | None = None


def require_client() -> Any:
    """The obstore module; :class:`ShipExtraMissingError` when the ``ship`` extra is not installed."""
    try:
        import obstore
    except ImportError as err:
        raise ShipExtraMissingError(
            "object storage (s3://) needs obstore, which is not installed; "
            "install it with: pip install 'kmemdump[ship]'"
        ) from err
    return obstore


class ObjectStore:
    """One bucket of an S3-compatible store; keys are full keys within the bucket."""

    def __init__(
        self,
        url: StoreURL,
        settings: StoreSettings | None = None,
        *,
        connect_timeout: float = 3.0,
        timeout: float = 300.0,
        retries: int = 2,
    ) -> None:
        obstore = require_client()
        from obstore.store import S3Store

        self.url = url
        self.settings = settings if settings is not None else resolve_settings()
        self._obstore = obstore
        config: dict[str, Any] = {"region": self.settings.region, "virtual_hosted_style_request": False}
        if self.settings.endpoint:
            config["endpoint"] = self.settings.endpoint
        if self.settings.access_key_id and self.settings.secret_access_key:
            config["access_key_id"] = self.settings.access_key_id
            config["secret_access_key"] = self.settings.secret_access_key
            if self.settings.session_token:
                config["session_token"] = self.settings.session_token
        try:
            self._store = S3Store(
                url.bucket,
                config=config,  # type: ignore[arg-type]
                client_options={
                    "allow_http": self.settings.allow_http,
                    "connect_timeout": dt.timedelta(seconds=connect_timeout),
                    "timeout": dt.timedelta(seconds=timeout),
                    "user_agent": f"kmemdump/{__version__}",
                },
                retry_config={
                    "max_retries": retries,
                    "retry_timeout": dt.timedelta(seconds=max(timeout, connect_timeout)),
                    "backoff": {
                        "init_backoff": dt.timedelta(milliseconds=100),
                        "max_backoff": dt.timedelta(seconds=1),
                        "base": 2,
                    },
                },
            )
        except Exception as err:  # obstore refuses a bad configuration before any request
            raise StoreConfigError(f"the S3 client refused its settings: {self._scrub(err)}") from err

    def __repr__(self) -> str:
        return f"ObjectStore({str(self.url)!r}, {self.settings!r})"

    # --- verbs ----------------------------------------------------------------------------------

    def put_if_absent(self, key: str, data: bytes | Path) -> PutOutcome:
        """Write ``data`` (bytes, or a file's content) at ``key`` unless the key exists.

        Up to :data:`SINGLE_PUT_LIMIT` bytes this is one conditional PUT, atomic in the store (the
        client holds the body in memory while sending it). A larger file goes in 8 MiB parts of a
        multipart upload, which S3 cannot make conditional: the key is checked with HEAD first, so
        two writers racing for one key may both write it (with kmemdump's keys, the same bytes).
        """
        exceptions = self._exceptions()
        try:
            if isinstance(data, Path) and os.stat(data).st_size > SINGLE_PUT_LIMIT:
                return self._put_large(key, data)
            self._obstore.put(self._store, key, data, mode="create", use_multipart=False)
        except exceptions.AlreadyExistsError:
            return "exists"
        except StoreError:
            raise
        except Exception as err:
            raise self._translate(err, key) from err
        return "created"

    def _put_large(self, key: str, path: Path) -> PutOutcome:
        if self.head(key) is not None:
            return "exists"
        with open(path, "rb") as handle:
            self._obstore.put(
                self._store, key, handle, use_multipart=True, chunk_size=8 * 1024 * 1024, max_concurrency=2
            )
        return "created"

    def get(
        self, key: str, start: int | None = None, end: int | None = None, *, limit: int | None = None
    ) -> bytes:
        """The object's bytes, or those of ``[start, end)`` (``end`` None: to the end).

        With ``limit`` (whole objects only), an object of more bytes is :class:`StoreTooLargeError`:
        its size is read from the response's headers before any of its body, and the body is read
        no further than ``limit`` bytes whatever the headers said, so a hostile object costs at
        most ``limit`` bytes of memory.
        """
        try:
            if start is None and limit is not None:
                return self._get_bounded(key, limit)
            if start is None:
                return bytes(self._obstore.get(self._store, key).bytes())
            if end is None:
                info = self.head(key)
                if info is None:
                    raise StoreNotFoundError("no such object", bucket=self.url.bucket, key=key)
                end = info.size
            return bytes(self._obstore.get_range(self._store, key, start=start, end=end))
        except StoreError:
            raise
        except Exception as err:
            raise self._translate(err, key) from err

    def _get_bounded(self, key: str, limit: int) -> bytes:
        # The response is dropped (its connection closed) before raising: a traceback keeps this
        # frame's locals alive, and a live response goes on filling the client's buffers.
        result = self._obstore.get(self._store, key)
        size = int(result.meta["size"])
        if size > limit:
            del result
            raise StoreTooLargeError(
                f"the object is {size} bytes, more than the {limit} bytes read of it",
                key=key,
                size=size,
                limit=limit,
            )
        chunks = result.stream(min_chunk_size=min(limit + 1, 1 << 16))
        del result
        data = bytearray()
        for chunk in chunks:
            data += chunk
            if len(data) > limit:  # the headers understated it
                break
        del chunks
        if len(data) > limit:
            raise StoreTooLargeError(
                f"the object is more than the {limit} bytes read of it", key=key, limit=limit
            )
        return bytes(data)

    def download(self, key: str, out: IO[bytes], *, limit: int | None = None) -> int:
        """Stream the object into ``out``; more than ``limit`` bytes is a :class:`StoreError`."""
        written = 0
        try:
            for chunk in self._obstore.get(self._store, key).stream(min_chunk_size=1 << 20):
                written += len(chunk)
                if limit is not None and written > limit:
                    raise StoreError(
                        f"the object is larger than the {limit}-byte limit for downloads",
                        key=key,
                    )
                out.write(memoryview(chunk))
        except StoreError:
            raise
        except Exception as err:
            raise self._translate(err, key) from err
        return written

    def head(self, key: str) -> ObjectInfo | None:
        """The object's size and ETag, or None when there is no such key."""
        try:
            meta = self._obstore.head(self._store, key)
        except FileNotFoundError:
            return None
        except Exception as err:
            translated = self._translate(err, key)
            if isinstance(translated, StoreNotFoundError) and "NoSuchBucket" not in str(err):
                return None
            raise translated from err
        return _info(meta)

    def objects(self, prefix: str = "", *, offset: str | None = None) -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` (a path: ``a/b`` holds ``a/b/c`` but not ``a/bc``), in key
        order; with ``offset``, only keys after it."""
        try:
            kwargs: dict[str, Any] = {"prefix": prefix or None}
            if offset is not None:
                kwargs["offset"] = offset
            for batch in self._obstore.list(self._store, **kwargs):
                for meta in batch:
                    yield _info(meta)
        except Exception as err:
            raise self._translate(err, prefix or "/") from err

    def list_dirs(self, prefix: str = "") -> list[str]:
        """The "directories" (common prefixes) directly under ``prefix``, without a trailing slash."""
        try:
            result = self._obstore.list_with_delimiter(self._store, prefix=prefix or None)
        except Exception as err:
            raise self._translate(err, prefix or "/") from err
        return [str(p).rstrip("/") for p in result["common_prefixes"]]

    # --- errors ---------------------------------------------------------------------------------

    def _exceptions(self) -> Any:
        from obstore import exceptions

        return exceptions

    def _scrub(self, err: BaseException) -> str:
        """The first line of ``err``, with any secret replaced."""
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        for secret in self.settings.secrets():
            text = text.replace(secret, "***")
        return text[:500]

    def _translate(self, err: Exception, key: str) -> StoreError:
        exceptions = self._exceptions()
        full = str(err)
        where = {"bucket": self.url.bucket, "key": key}
        message = self._scrub(err)
        if "NoSuchBucket" in full:
            return StoreNotFoundError("the bucket does not exist", bucket=self.url.bucket)
        if isinstance(err, FileNotFoundError):
            return StoreNotFoundError("no such object", **where)
        refused = re.search(r"status code: 40[13]\b", full) is not None  # a listing reports it generically
        if refused or isinstance(err, exceptions.PermissionDeniedError | exceptions.UnauthenticatedError):
            if "RequestTimeTooSkewed" in full:
                return StoreAuthError(
                    "the store refused the request: this host's clock is too far off", **where
                )
            code = next(
                (c for c in ("SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied") if c in full), ""
            )
            return StoreAuthError(f"the store refused the request{': ' + code if code else ''}", **where)
        if isinstance(err, exceptions.GenericError):
            if "builder error" in full:
                return StoreConfigError(f"the S3 client cannot build the request: {message}", **where)
            return StoreUnavailableError(f"the store is unavailable: {message}", **where)
        if isinstance(err, exceptions.BaseError | ValueError | TypeError):
            return StoreConfigError(f"the S3 client failed: {message}", **where)
        return StoreUnavailableError(f"the store is unavailable: {message}", **where)


def _info(meta: Any) -> ObjectInfo:
    etag = meta.get("e_tag")
    return ObjectInfo(str(meta["path"]), int(meta["size"]), None if etag is None else str(etag).strip('"'))

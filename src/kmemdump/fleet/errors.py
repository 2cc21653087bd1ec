"""Errors of the object-store layer, each with the remedy the command line prints.

Only :class:`StoreUnavailableError` is about the network or the server being down; a shipper retries
every kind (credentials get fixed, buckets get created), but says which one it met.
"""

from __future__ import annotations

from kmemdump.errors import KmemdumpError
from kmemdump.errors import MissingExtraError
from kmemdump.errors import UsageError

__all__ = [
    "ShipExtraMissingError",
    "StoreAuthError",
    "StoreConfigError",
    "StoreError",
    "StoreNotFoundError",
    "StoreTooLargeError",
    "StoreURLError",
    "StoreUnavailableError",
]


class StoreError(KmemdumpError):
    """An object-store operation failed."""


class ShipExtraMissingError(MissingExtraError, StoreError):
    """The S3 client (obstore, the ``ship`` extra) is not installed."""


class StoreURLError(UsageError, StoreError):
    """Not an ``s3://BUCKET[/PREFIX]`` URL (a usage error: exit status 2)."""

    help = "Give the store as s3://BUCKET or s3://BUCKET/PREFIX (bucket names are 3 to 63 characters)."


class StoreConfigError(StoreError):
    """The endpoint, region or client settings are unusable (nothing was sent)."""

    help = (
        "Check AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3), AWS_REGION and the profile in ~/.aws/config. "
        "A plain-HTTP endpoint must be allowed explicitly with AWS_ALLOW_HTTP=true."
    )


class StoreNotFoundError(StoreError, FileNotFoundError):
    """The object, or the bucket, does not exist."""

    help = "Check the bucket name and the key; kmemdump never creates buckets."

    def __str__(self) -> str:  # FileNotFoundError would format the message as an OSError
        return KmemdumpError.__str__(self)


class StoreTooLargeError(StoreError):
    """An object is larger than the most this reader takes of it (nothing past that was read)."""

    size: int | None = None
    limit: int | None = None


class StoreAuthError(StoreError):
    """The store refused the credentials or the request (HTTP 401/403)."""

    help = (
        "kmemdump finds credentials as S3 clients do: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and\n"
        "AWS_SESSION_TOKEN), else the profile AWS_PROFILE (or 'default') in ~/.aws/credentials and\n"
        "~/.aws/config, else web identity, container or instance-metadata credentials. Check that they\n"
        "allow s3:GetObject, s3:PutObject and s3:ListBucket on the bucket, and that this host's clock is\n"
        "right (S3 refuses requests signed more than 15 minutes off)."
    )


class StoreUnavailableError(StoreError):
    """The store could not be reached, timed out, or failed (HTTP 5xx) after the client's retries."""

    help = "Check that the endpoint is up and reachable from this host (AWS_ENDPOINT_URL, proxies, DNS)."

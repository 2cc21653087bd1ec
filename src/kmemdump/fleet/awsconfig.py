"""Endpoint, region and credentials, found the way S3 clients find them.

In order, for each setting:

* endpoint: ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, then ``endpoint_url`` of the profile
  (all ignored under ``AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true``); none means AWS itself;
* region: ``AWS_REGION``, ``AWS_DEFAULT_REGION``, the profile's ``region``, else ``us-east-1``;
* credentials: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (and ``AWS_SESSION_TOKEN``); the static
  keys of the profile (``AWS_PROFILE``, else ``default``) in ``~/.aws/credentials`` or ``~/.aws/config``
  (``AWS_SHARED_CREDENTIALS_FILE``, ``AWS_CONFIG_FILE``); else the client's own chain: web identity
  (``AWS_WEB_IDENTITY_TOKEN_FILE``), container credentials, and the instance metadata service unless
  ``AWS_EC2_METADATA_DISABLED=true``.

obstore reads only the environment, so the shared files are read here (static keys only: a profile
that needs SSO, a role or a credential process is refused with the command that exports its keys).
A plain-HTTP endpoint is used only with ``AWS_ALLOW_HTTP=true``. Secrets are kept out of ``repr``.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from kmemdump.fleet.errors import StoreAuthError
from kmemdump.fleet.errors import StoreConfigError
from kmemdump.record import field
from kmemdump.record import frozen

__all__ = ["DEFAULT_REGION", "StoreSettings", "resolve_settings"]

DEFAULT_REGION = "us-east-1"
_TRUE = ("1", "true", "yes", "on")
_CHAIN_VARIABLES = (
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)
_UNSUPPORTED = ("sso_session", "sso_start_url", "role_arn", "credential_process", "source_profile")


@frozen
class StoreSettings:
    """How to reach the store; secrets are left out of ``repr``."""

    region: str
    endpoint: str | None = None
    allow_http: bool = False
    credentials: str = ""
    """Where the credentials come from, for messages (never the keys themselves)."""
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)

    def secrets(self) -> tuple[str, ...]:
        """The values no message may contain."""
        return tuple(s for s in (self.secret_access_key, self.session_token) if s)


def resolve_settings(env: Mapping[str, str] | None = None) -> StoreSettings:
    """The settings for ``env`` (default: this process's environment) and the shared files it names."""
    env = os.environ if env is None else env
    explicit_profile = env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE")
    profile_name = explicit_profile or "default"
    home = Path(env.get("HOME") or Path.home())
    config_file = Path(env.get("AWS_CONFIG_FILE") or home / ".aws" / "config").expanduser()
    credentials_file = Path(
        env.get("AWS_SHARED_CREDENTIALS_FILE") or home / ".aws" / "credentials"
    ).expanduser()
    config_section = "default" if profile_name == "default" else f"profile {profile_name}"
    profile = _section(config_file, config_section)
    secret_profile = _section(credentials_file, profile_name)
    if explicit_profile and profile is None and secret_profile is None:
        raise StoreConfigError(
            "the AWS profile is in neither shared file",
            profile=profile_name,
            config=str(config_file),
            credentials=str(credentials_file),
        )
    merged = {**(profile or {}), **(secret_profile or {})}

    ignore_configured = env.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() in _TRUE
    endpoint = None
    if not ignore_configured:
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or merged.get("endpoint_url")
    allow_http = env.get("AWS_ALLOW_HTTP", "").lower() in _TRUE
    if endpoint:
        endpoint = _check_endpoint(endpoint, allow_http)
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or merged.get("region") or DEFAULT_REGION

    key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if key or secret:
        if not (key and secret):
            raise StoreAuthError("only one of AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY is set")
        return StoreSettings(
            region, endpoint, allow_http, "the environment", key, secret, env.get("AWS_SESSION_TOKEN") or None
        )
    key, secret = merged.get("aws_access_key_id"), merged.get("aws_secret_access_key")
    if key and secret:
        where = (
            credentials_file if secret_profile and "aws_secret_access_key" in secret_profile else config_file
        )
        return StoreSettings(
            region,
            endpoint,
            allow_http,
            f"profile {profile_name} in {where}",
            key,
            secret,
            merged.get("aws_session_token") or None,
        )
    needs = [name for name in _UNSUPPORTED if name in merged]
    if needs:
        raise StoreAuthError(
            f"the AWS profile uses {needs[0]}, which kmemdump does not read; export its keys with "
            f"'aws configure export-credentials --profile {profile_name} --format env'",
            profile=profile_name,
        )
    if not any(env.get(name) for name in _CHAIN_VARIABLES) and (
        env.get("AWS_EC2_METADATA_DISABLED", "").lower() in _TRUE
    ):
        raise StoreAuthError("no S3 credentials found (and the instance metadata service is disabled)")
    return StoreSettings(region, endpoint, allow_http, "web identity, container or instance metadata")


def _section(path: Path, name: str) -> dict[str, str] | None:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, configparser.Error) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise StoreConfigError(f"cannot read an AWS shared file: {first}", path=str(path)) from err
    if not parser.has_section(name):
        return None
    return {key.lower(): value.strip() for key, value in parser.items(name)}


def _check_endpoint(endpoint: str, allow_http: bool) -> str:
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise StoreConfigError("the S3 endpoint is not an http(s):// URL", endpoint=endpoint)
    if parts.scheme == "http" and not allow_http:
        raise StoreConfigError(
            "the S3 endpoint is plain HTTP; set AWS_ALLOW_HTTP=true to allow it", endpoint=endpoint
        )
    return endpoint.rstrip("/")

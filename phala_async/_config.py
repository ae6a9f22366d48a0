"""Checking client configuration up front, so a bad value fails at construction with the fix."""

from __future__ import annotations

import ipaddress
import math
import os
from typing import NamedTuple

from yarl import URL

from ._errors import ConfigurationError

__all__ = [
    "API_KEY_ENV",
    "BASE_URL_ENV",
    "DEFAULT_BASE_URL",
    "Credential",
    "resolve_base_url",
    "resolve_credential",
]

DEFAULT_BASE_URL = "https://cloud-api.phala.com/api/v1"
API_KEY_ENV = "PHALA_CLOUD_API_KEY"
BASE_URL_ENV = "PHALA_CLOUD_API_PREFIX"


class Credential(NamedTuple):
    """The one header that authenticates every request; ``kind`` is safe to show, ``value`` not."""

    kind: str  # "api_key" or "token"
    header: str
    value: str

    def __repr__(self) -> str:
        return f"Credential(kind={self.kind!r}, value=<redacted>)"


def resolve_credential(api_key: str | None, token: str | None) -> Credential:
    """Pick the credential: ``api_key``, else ``token``, else ``$PHALA_CLOUD_API_KEY``."""
    if api_key is not None and token is not None:
        raise ConfigurationError("pass api_key or token, not both")
    if token is not None:
        return Credential("token", "Authorization", "Bearer " + _check_secret("token", token))
    if api_key is None:
        api_key = os.environ.get(API_KEY_ENV) or None
        if api_key is None:
            raise ConfigurationError(
                f"no credentials: pass api_key= (a dashboard API key), token= (an OAuth access "
                f"token), or set {API_KEY_ENV}"
            )
    return Credential("api_key", "X-API-Key", _check_secret("api_key", api_key))


def _check_secret(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{name} must be a non-empty string")
    if any(ch in value for ch in "\r\n\0"):
        raise ConfigurationError(f"{name} must not contain line breaks or NUL characters")
    return value.strip()


def resolve_base_url(base_url: str | None, *, allow_insecure_http: bool) -> str:
    """Return the API prefix without a trailing slash, from the argument, the environment, or the
    default; refuse plain ``http://`` to anything but loopback unless explicitly allowed."""
    raw = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    try:
        url = URL(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"base_url {raw!r} is not a URL") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigurationError(
            f"base_url {raw!r} must be an absolute http(s) URL such as {DEFAULT_BASE_URL!r}"
        )
    if url.user is not None or url.password is not None:
        raise ConfigurationError("base_url must not carry credentials; pass api_key= or token=")
    if url.query_string or url.fragment:
        raise ConfigurationError(f"base_url {raw!r} must not have a query or fragment")
    if url.scheme == "http" and not _is_loopback(url.host) and not allow_insecure_http:
        raise ConfigurationError(
            f"base_url {raw!r} is plain http to a non-loopback host, which would send the "
            f"credential in clear text; use https, or pass allow_insecure_http=True"
        )
    return str(url).rstrip("/")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_positive(name: str, value: object, *, integer: bool = False) -> None:
    """Fail with a message that says what to pass when ``value`` is not a positive number."""
    kind = "an int" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if (
        isinstance(value, bool)
        or not ok_type
        or not math.isfinite(value)  # type: ignore[arg-type]  # checked numeric just above
        or value <= 0  # type: ignore[operator]
    ):
        raise ConfigurationError(f"{name} must be {kind} > 0, not {value!r}")

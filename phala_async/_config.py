"""Checking client configuration up front, so a bad value fails at construction with the fix."""

from __future__ import annotations

import base64
import ipaddress
import math
import os
import ssl
import urllib.request
from typing import NamedTuple

import aiohttp
from yarl import URL

from ._errors import ConfigurationError

__all__ = [
    "API_KEY_ENV",
    "BASE_URL_ENV",
    "DEFAULT_BASE_URL",
    "Credential",
    "ProxySetting",
    "check_api_version",
    "check_trace_configs",
    "resolve_base_url",
    "resolve_credential",
    "resolve_proxy",
    "resolve_tls",
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


def check_api_version(version: object, supported: tuple[str, ...]) -> str:
    """``version`` if the client can decode its answers.

    Raises:
        ConfigurationError: ``version`` is not one of ``supported``; the message lists them.
    """
    if not isinstance(version, str) or version not in supported:
        raise ConfigurationError(
            f"api_version {version!r} is not supported: pass one of {', '.join(supported)} "
            f"(the default, {supported[0]}, answers the shape on the API reference page)"
        )
    return version


def check_positive(
    name: str, value: object, *, integer: bool = False, at_most: int | None = None
) -> None:
    """Fail with a message that says what to pass when ``value`` is not a positive number (an
    int, with ``integer``), or is above ``at_most``."""
    kind = "an int" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if (
        isinstance(value, bool)
        or not ok_type
        or not math.isfinite(value)  # type: ignore[arg-type]  # checked numeric just above
        or value <= 0  # type: ignore[operator]
        or (at_most is not None and value > at_most)  # type: ignore[operator]
    ):
        bounds = f"from 1 to {at_most}" if at_most is not None else "> 0"
        raise ConfigurationError(f"{name} must be {kind} {bounds}, not {value!r}")


class ProxySetting(NamedTuple):
    """The proxy to go through: its URL without credentials, and the ``Proxy-Authorization``
    header its credentials make (never shown)."""

    url: URL
    authorization: str | None

    def __repr__(self) -> str:
        shown = "<redacted>" if self.authorization is not None else "None"
        return f"ProxySetting(url={str(self.url)!r}, authorization={shown})"


def resolve_tls(context: object, ca_file: object) -> ssl.SSLContext | None:
    """The ``SSLContext`` the client verifies the API with, from ``ssl=`` or ``ca_file=``; None
    for the default trust (the system's, or ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` when set).

    Raises:
        ConfigurationError: both were given, ``ssl`` is not an ``SSLContext``, or ``ca_file``
            cannot be read as a PEM bundle.
    """
    if context is not None and ca_file is not None:
        raise ConfigurationError(
            "pass ssl= or ca_file=, not both: to use your own SSLContext with a CA bundle, "
            "call context.load_verify_locations(ca_file) and pass ssl=context"
        )
    if context is not None:
        if not isinstance(context, ssl.SSLContext):
            raise ConfigurationError(
                f"ssl must be an ssl.SSLContext (for example ssl.create_default_context()), "
                f"not {type(context).__name__}; to trust a CA bundle file, pass ca_file= instead"
            )
        return context
    if ca_file is None:
        return None
    if not isinstance(ca_file, (str, os.PathLike)):
        raise ConfigurationError(
            f"ca_file must be the path of a PEM CA bundle, not {type(ca_file).__name__}"
        )
    try:
        # Trusts the bundle instead of the system's store, as curl --cacert and httpx do.
        trusted = ssl.create_default_context(cafile=ca_file)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigurationError(
            f"ca_file {os.fspath(ca_file)!r} cannot be read as a PEM CA bundle: {reason}"
        ) from None
    trusted.set_alpn_protocols(("http/1.1",))
    return trusted


def resolve_proxy(proxy: object, *, trust_env: bool, base_url: str) -> ProxySetting | None:
    """The proxy requests to ``base_url`` go through: ``proxy=``, else (with ``trust_env``)
    ``HTTPS_PROXY`` for an https API or ``HTTP_PROXY`` for an http one, unless ``NO_PROXY``
    names the API host; None for a direct connection. The variables are read now.

    Raises:
        ConfigurationError: the proxy URL (the argument or the variable) is not an ``http://``
            URL with a host; the message never shows its password.
    """
    if not isinstance(trust_env, bool):
        raise ConfigurationError(f"trust_env must be True or False, not {trust_env!r}")
    if proxy is not None:
        if not isinstance(proxy, str):
            raise ConfigurationError(
                f"proxy must be a URL string such as 'http://user:password@host:3128', "
                f"not {type(proxy).__name__}"
            )
        return _proxy_setting(proxy, "proxy")
    if not trust_env:
        return None
    api = URL(base_url)
    proxies = urllib.request.getproxies_environment()
    raw = proxies.get(api.scheme)
    if not raw:
        return None
    host = api.host or ""
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]  # not in typeshed
    if bypass(host if ":" in host else f"{host}:{api.port}", proxies):
        return None
    return _proxy_setting(raw, f"the environment variable {api.scheme.upper()}_PROXY")


def _proxy_setting(raw: str, source: str) -> ProxySetting:
    # A bare host:port means http, as curl and httpx read it.
    text = raw.strip() if "://" in raw else "http://" + raw.strip()
    try:
        url = URL(text)
    except (TypeError, ValueError):
        url = None
    if url is None or url.scheme != "http" or not url.host:
        shown = _without_userinfo(text)
        raise ConfigurationError(
            f"{source} ({shown!r}) must be an http:// proxy URL such as "
            f"'http://host:3128' (the API's own TLS still runs end to end through it); "
            f"to connect directly, set NO_PROXY or pass trust_env=False"
        )
    if url.path not in ("", "/") or url.query_string or url.fragment:
        raise ConfigurationError(
            f"{source} must be just http://[user:password@]host:port, without a path or query"
        )
    authorization = None
    if url.user is not None:
        # Basic credentials in UTF-8 (RFC 7617); built here, since aiohttp deprecates BasicAuth.
        pair = f"{url.user}:{url.password or ''}".encode()
        authorization = "Basic " + base64.b64encode(pair).decode("ascii")
    return ProxySetting(url.with_user(None).with_path(""), authorization)


def _without_userinfo(text: str) -> str:
    scheme, sep, rest = text.partition("://")
    if "@" in rest.split("/", 1)[0]:
        rest = rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"


def check_trace_configs(trace_configs: object) -> tuple[aiohttp.TraceConfig, ...]:
    """The ``aiohttp.TraceConfig`` objects for the client's own session, as a tuple.

    Raises:
        ConfigurationError: not a sequence of ``aiohttp.TraceConfig``.
    """
    if trace_configs is None:
        return ()
    if isinstance(trace_configs, (str, bytes)) or not isinstance(trace_configs, (list, tuple)):
        raise ConfigurationError(
            f"trace_configs must be a list of aiohttp.TraceConfig, "
            f"not {type(trace_configs).__name__}"
        )
    for item in trace_configs:
        if not isinstance(item, aiohttp.TraceConfig):
            raise ConfigurationError(
                f"trace_configs must hold aiohttp.TraceConfig objects, not {type(item).__name__}"
            )
    return tuple(trace_configs)

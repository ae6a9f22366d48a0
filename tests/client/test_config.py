"""Tests for client configuration: credentials, base URL, and values checked at construction."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from phala_async import ConfigurationError, PhalaClient
from phala_async._config import resolve_credential
from phala_async.testing import PhalaSimulator

SECRET_KEY = "phak_config_test_secret_key_0123456789"
SECRET_TOKEN = "config-test-oauth-token-abcdef"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run each test without the caller's Phala environment variables."""
    monkeypatch.delenv("PHALA_CLOUD_API_KEY", raising=False)
    monkeypatch.delenv("PHALA_CLOUD_API_PREFIX", raising=False)


def test_api_key_is_sent_as_x_api_key() -> None:
    """An ``api_key`` becomes the ``X-API-Key`` header with the key as its value."""
    credential = resolve_credential(SECRET_KEY, None)
    assert (credential.kind, credential.header, credential.value) == (
        "api_key",
        "X-API-Key",
        SECRET_KEY,
    )


def test_token_is_sent_as_bearer() -> None:
    """A ``token`` becomes ``Authorization: Bearer <token>``."""
    credential = resolve_credential(None, SECRET_TOKEN)
    assert (credential.kind, credential.header, credential.value) == (
        "token",
        "Authorization",
        f"Bearer {SECRET_TOKEN}",
    )


def test_api_key_falls_back_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ``api_key`` or ``token``, ``PHALA_CLOUD_API_KEY`` is the API key."""
    monkeypatch.setenv("PHALA_CLOUD_API_KEY", SECRET_KEY)
    credential = resolve_credential(None, None)
    assert (credential.header, credential.value) == ("X-API-Key", SECRET_KEY)


async def test_environment_key_authenticates_against_the_server(
    monkeypatch: pytest.MonkeyPatch, simulator: PhalaSimulator
) -> None:
    """A client built with no credential argument authenticates with the environment's key."""
    monkeypatch.setenv("PHALA_CLOUD_API_KEY", simulator.api_key)
    async with asyncio.timeout(10), PhalaClient(base_url=simulator.base_url) as client:
        cvm = await client.get_cvm(1)
    assert cvm.id == 1
    assert [record.authenticated for record in simulator.request_log] == [True]


def test_explicit_token_wins_over_the_environment_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment is only a fallback: an explicit token is used, not combined with it."""
    monkeypatch.setenv("PHALA_CLOUD_API_KEY", SECRET_KEY)
    assert resolve_credential(None, SECRET_TOKEN).header == "Authorization"


def test_both_credentials_is_an_error() -> None:
    """Passing both ``api_key`` and ``token`` is refused."""
    with pytest.raises(ConfigurationError, match="not both"):
        PhalaClient(api_key=SECRET_KEY, token=SECRET_TOKEN)


def test_no_credentials_names_the_environment_variable() -> None:
    """With no credential anywhere, the error says to pass one or set PHALA_CLOUD_API_KEY."""
    with pytest.raises(ConfigurationError, match="PHALA_CLOUD_API_KEY"):
        PhalaClient()


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"api_key": ""}, id="empty-key"),
        pytest.param({"api_key": "   "}, id="blank-key"),
        pytest.param({"token": ""}, id="empty-token"),
        pytest.param({"api_key": "phak_abc\r\nX-Evil: 1"}, id="key-with-crlf"),
    ],
)
def test_unusable_credential_is_an_error(kwargs: dict[str, str]) -> None:
    """An empty credential, or one that could inject a header, is refused."""
    with pytest.raises(ConfigurationError):
        PhalaClient(**kwargs)


def test_default_base_url() -> None:
    """Without an argument or variable, the base URL is Phala Cloud's public API."""
    assert PhalaClient(api_key=SECRET_KEY).base_url == "https://cloud-api.phala.com/api/v1"


def test_base_url_falls_back_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """``PHALA_CLOUD_API_PREFIX`` sets the base URL when none is passed."""
    monkeypatch.setenv("PHALA_CLOUD_API_PREFIX", "https://api.example.test/api/v1")
    assert PhalaClient(api_key=SECRET_KEY).base_url == "https://api.example.test/api/v1"


def test_base_url_argument_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit ``base_url`` is used even when the variable is set."""
    monkeypatch.setenv("PHALA_CLOUD_API_PREFIX", "https://env.example.test/api/v1")
    client = PhalaClient(api_key=SECRET_KEY, base_url="https://arg.example.test/api/v1")
    assert client.base_url == "https://arg.example.test/api/v1"


@pytest.mark.parametrize(
    "given",
    [
        pytest.param("https://api.example.test/api/v1/", id="one-slash"),
        pytest.param("https://api.example.test/api/v1///", id="several-slashes"),
    ],
)
def test_trailing_slash_is_stripped(given: str) -> None:
    """A trailing slash on the base URL is removed, so paths never get ``//``."""
    assert PhalaClient(api_key=SECRET_KEY, base_url=given).base_url == (
        "https://api.example.test/api/v1"
    )


INSECURE = [
    pytest.param("http://cloud-api.phala.com/api/v1", id="public-host"),
    pytest.param("http://10.0.0.5:8000/api/v1", id="private-ip"),
    pytest.param("http://localhost.evil.example/api/v1", id="localhost-lookalike"),
    pytest.param("http://127.0.0.1.nip.io/api/v1", id="loopback-lookalike"),
]


@pytest.mark.parametrize("base_url", INSECURE)
def test_plain_http_to_non_loopback_is_refused(base_url: str) -> None:
    """Plain http to anything but loopback is refused, so the key never travels in clear."""
    with pytest.raises(ConfigurationError, match="allow_insecure_http"):
        PhalaClient(api_key=SECRET_KEY, base_url=base_url)


@pytest.mark.parametrize("base_url", INSECURE)
def test_plain_http_is_allowed_when_opted_in(base_url: str) -> None:
    """``allow_insecure_http=True`` lets plain http reach a non-loopback host."""
    client = PhalaClient(api_key=SECRET_KEY, base_url=base_url, allow_insecure_http=True)
    assert client.base_url == base_url


@pytest.mark.parametrize(
    "base_url",
    [
        pytest.param("http://127.0.0.1:8000/api/v1", id="ipv4"),
        pytest.param("http://127.3.4.5:8000/api/v1", id="ipv4-loopback-range"),
        pytest.param("http://localhost:8000/api/v1", id="localhost"),
        pytest.param("http://[::1]:8000/api/v1", id="ipv6"),
    ],
)
def test_plain_http_to_loopback_is_allowed(base_url: str) -> None:
    """Plain http to a loopback address is allowed without opting in (local servers)."""
    assert PhalaClient(api_key=SECRET_KEY, base_url=base_url).base_url == base_url


@pytest.mark.parametrize(
    "base_url",
    [
        pytest.param("ftp://api.example.test/api/v1", id="other-scheme"),
        pytest.param("api.example.test/api/v1", id="relative"),
        pytest.param("https://user:pw@api.example.test/api/v1", id="userinfo"),
        pytest.param("https://api.example.test/api/v1?x=1", id="query"),
    ],
)
def test_unusable_base_url_is_refused(base_url: str) -> None:
    """A base URL that is not a plain absolute http(s) prefix is refused."""
    with pytest.raises(ConfigurationError, match="base_url"):
        PhalaClient(api_key=SECRET_KEY, base_url=base_url)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("timeout", 0, id="timeout-zero"),
        pytest.param("timeout", -1.0, id="timeout-negative"),
        pytest.param("timeout", math.nan, id="timeout-nan"),
        pytest.param("timeout", math.inf, id="timeout-inf"),
        pytest.param("timeout", "30", id="timeout-str"),
        pytest.param("timeout", None, id="timeout-none"),
        pytest.param("timeout", True, id="timeout-bool"),
        pytest.param("concurrency", 0, id="concurrency-zero"),
        pytest.param("concurrency", -4, id="concurrency-negative"),
        pytest.param("concurrency", 2.5, id="concurrency-float"),
        pytest.param("concurrency", "16", id="concurrency-str"),
        pytest.param("concurrency", True, id="concurrency-bool"),
        pytest.param("max_attempts", 0, id="max_attempts-zero"),
        pytest.param("max_attempts", -1, id="max_attempts-negative"),
        pytest.param("max_attempts", 1.5, id="max_attempts-float"),
        pytest.param("max_attempts", True, id="max_attempts-bool"),
        pytest.param("max_response_bytes", 0, id="max_response_bytes-zero"),
        pytest.param("max_response_bytes", -1, id="max_response_bytes-negative"),
        pytest.param("max_response_bytes", 1.5, id="max_response_bytes-float"),
        pytest.param("max_response_bytes", True, id="max_response_bytes-bool"),
        pytest.param("session", "not a session", id="session-wrong-type"),
    ],
)
def test_bad_value_fails_at_construction(name: str, value: Any) -> None:
    """A bad setting raises ConfigurationError at construction, naming the setting."""
    with pytest.raises(ConfigurationError, match=name):
        PhalaClient(api_key=SECRET_KEY, **{name: value})


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"api_key": SECRET_KEY}, id="api-key"),
        pytest.param({"token": SECRET_TOKEN}, id="token"),
    ],
)
def test_repr_never_shows_the_credential(kwargs: dict[str, str]) -> None:
    """``repr(client)`` shows which kind of credential is used, never its value."""
    client = PhalaClient(**kwargs)
    text = repr(client) + str(client)
    leaked = SECRET_KEY in text or SECRET_TOKEN in text
    assert not leaked, "the credential appears in repr(client)"
    assert next(iter(kwargs)) in text

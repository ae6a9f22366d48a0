"""Network configuration decided without a server: which proxy, which trust store."""

from __future__ import annotations

import base64
import ssl

import pytest
from _proxy import clean_network_environment  # noqa: F401 - used by pytestmark
from yarl import URL

from phala_async._config import resolve_proxy
from phala_async._session import SessionOptions, tls_context

pytestmark = pytest.mark.usefixtures("clean_network_environment")

HTTPS_API = "https://cloud-api.phala.com/api/v1"


def test_the_proxy_argument_keeps_its_credentials_apart() -> None:
    """``proxy=`` with credentials gives a URL without them and a Basic header; the repr shows
    neither the password nor the header."""
    setting = resolve_proxy("http://ann:s%40cret@proxy.example:3128", trust_env=True, base_url="")
    assert setting is not None
    assert setting.url == URL("http://proxy.example:3128")
    assert setting.authorization == "Basic " + base64.b64encode(b"ann:s@cret").decode()
    assert "cret" not in repr(setting)
    assert "Basic" not in repr(setting)


@pytest.mark.parametrize(
    ("base_url", "expected"),
    [
        pytest.param(HTTPS_API, URL("http://secure.example:3128"), id="https-api"),
        pytest.param("http://127.0.0.1:8787/api/v1", URL("http://plain.example"), id="http"),
    ],
)
def test_the_variable_for_the_apis_scheme_is_read(
    monkeypatch: pytest.MonkeyPatch, base_url: str, expected: URL
) -> None:
    """``HTTPS_PROXY`` serves an https API and ``HTTP_PROXY`` an http one."""
    monkeypatch.setenv("HTTPS_PROXY", "http://secure.example:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://plain.example")
    setting = resolve_proxy(None, trust_env=True, base_url=base_url)
    assert setting is not None
    assert setting.url == expected


def test_a_bare_host_and_port_means_http(monkeypatch: pytest.MonkeyPatch) -> None:
    """``HTTPS_PROXY=host:port`` (no scheme) is an http proxy, as curl and httpx read it."""
    monkeypatch.setenv("https_proxy", "corp-proxy:8080")
    setting = resolve_proxy(None, trust_env=True, base_url=HTTPS_API)
    assert setting is not None
    assert setting.url == URL("http://corp-proxy:8080")


@pytest.mark.parametrize(
    "no_proxy",
    ["cloud-api.phala.com", ".phala.com", "phala.com", "cloud-api.phala.com:443"],
    ids=["host", "dot-domain", "domain", "host-port"],
)
def test_no_proxy_names_the_api_host(monkeypatch: pytest.MonkeyPatch, no_proxy: str) -> None:
    """``NO_PROXY`` by host, domain or host:port means a direct connection."""
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", f"other.example,{no_proxy}")
    assert resolve_proxy(None, trust_env=True, base_url=HTTPS_API) is None


def test_no_proxy_for_another_host_keeps_the_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``NO_PROXY`` that names other hosts leaves the proxy in place."""
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example,10.0.0.1")
    assert resolve_proxy(None, trust_env=True, base_url=HTTPS_API) is not None


def test_tls_context_is_aiohttps_default_without_variables() -> None:
    """With no ``ssl``/``ca_file`` and no CA variables, aiohttp's default context is used."""
    assert tls_context(SessionOptions(concurrency=1), environ={}) is True


def test_tls_context_is_made_anew_when_ssl_cert_file_is_set() -> None:
    """With ``SSL_CERT_FILE`` set, the session gets a context made now, which reads it."""
    made = tls_context(SessionOptions(concurrency=1), environ={"SSL_CERT_FILE": "/x.pem"})
    assert isinstance(made, ssl.SSLContext)
    assert made.verify_mode is ssl.CERT_REQUIRED
    assert made.check_hostname


def test_no_trust_store_is_loaded_for_a_plain_http_api() -> None:
    """For an http API (the simulator), ``SSL_CERT_FILE`` loads no store: nothing is verified."""
    options = SessionOptions(concurrency=1, https=False)
    assert tls_context(options, environ={"SSL_CERT_FILE": "/x.pem"}) is True


def test_the_callers_context_wins() -> None:
    """A context given as ``ssl=`` (or made from ``ca_file=``) is used as it is."""
    context = ssl.create_default_context()
    options = SessionOptions(concurrency=1, ssl=context)
    assert tls_context(options, environ={"SSL_CERT_FILE": "/x.pem"}) is context

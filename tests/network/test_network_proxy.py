"""Proxies: sweeps to the TLS simulator through a real forward proxy (proxy.py on 127.0.0.1),
chosen by ``HTTPS_PROXY`` or ``proxy=``, bypassed by ``NO_PROXY``, and refusals that are final
and keep the proxy's password out of every message."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest
from _proxy import ForwardProxy, clean_network_environment, forward_proxy  # noqa: F401

from phala_async import (
    APIConnectionError,
    APIProxyError,
    ConfigurationError,
    CvmResult,
    PhalaClient,
)
from phala_async.testing import PhalaSimulator

pytestmark = pytest.mark.usefixtures("clean_network_environment")

PROXY_USER = "sweeper"
PROXY_PASSWORD = "pr0xy-pa55word-never-shown"


@pytest.fixture(scope="module")
def running_proxy() -> Iterator[ForwardProxy]:
    """One proxy.py for the module (it takes about a second to stop)."""
    with forward_proxy() as started:
        yield started


@pytest.fixture
def proxy(running_proxy: ForwardProxy) -> Iterator[ForwardProxy]:
    """The module's proxy, with nothing seen and nothing refused."""
    running_proxy.reset()
    yield running_proxy
    running_proxy.reset()


@pytest.fixture
async def sim() -> Any:
    """A TLS simulator of 50 CVMs."""
    async with PhalaSimulator(cvms=50, tls=True) as started:
        yield started


@pytest.fixture
def trusting(client_for: Callable[..., PhalaClient]) -> Callable[..., PhalaClient]:
    """Build clients that trust a simulator's CA (keyword arguments override)."""
    # A longer timeout than the suite's: every request goes through the proxy's process too.
    return lambda sim, **overrides: client_for(sim, ca_file=sim.ca_file, timeout=10.0, **overrides)


async def sweep(client: PhalaClient, ids: range) -> list[CvmResult]:
    """Every result of a ``stream_cvms`` sweep over ``ids``."""
    async with asyncio.timeout(20), client, client.stream_cvms(ids) as stream:
        return [result async for result in stream]


def port_of(sim: PhalaSimulator) -> int:
    """The simulator's port."""
    return int(sim.base_url.split(":")[2].split("/")[0])


@pytest.mark.parametrize("chosen_by", ["HTTPS_PROXY", "proxy="])
async def test_a_sweep_goes_through_the_proxy_in_a_connect_tunnel(
    proxy: ForwardProxy,
    sim: PhalaSimulator,
    monkeypatch: pytest.MonkeyPatch,
    chosen_by: str,
    trusting: Callable[..., PhalaClient],
) -> None:
    """Every connection to the API is a CONNECT tunnel through the proxy, which never sees the
    API key or any request inside."""
    if chosen_by == "HTTPS_PROXY":
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        client = trusting(sim)
    else:
        client = trusting(sim, proxy=proxy.url)
    results = await sweep(client, range(1, 51))
    seen = proxy.seen()
    assert [result.cvm.id for result in results if result.cvm] != []
    assert all(result.ok for result in results)
    assert len(results) == 50
    assert len(seen) == sim.connections >= 1
    assert {request["method"] for request in seen} == {"CONNECT"}
    assert {(request["host"], request["port"]) for request in seen} == {("127.0.0.1", port_of(sim))}
    assert not any(sim.api_key in str(request) for request in seen)
    assert not any("x-api-key" in request["headers"] for request in seen)


@pytest.mark.parametrize(
    "no_proxy", ["127.0.0.1", "localhost,127.0.0.1", "*"], ids=["host", "list", "star"]
)
async def test_no_proxy_bypasses_the_proxy(
    proxy: ForwardProxy,
    sim: PhalaSimulator,
    monkeypatch: pytest.MonkeyPatch,
    no_proxy: str,
    trusting: Callable[..., PhalaClient],
) -> None:
    """A host in ``NO_PROXY`` is reached directly, whatever ``HTTPS_PROXY`` says."""
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", no_proxy)
    results = await sweep(trusting(sim), range(1, 11))
    assert all(result.ok for result in results)
    assert proxy.seen() == []


async def test_trust_env_false_ignores_the_proxy_variables(
    proxy: ForwardProxy,
    sim: PhalaSimulator,
    monkeypatch: pytest.MonkeyPatch,
    trusting: Callable[..., PhalaClient],
) -> None:
    """With ``trust_env=False`` ``HTTPS_PROXY`` is not read."""
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    results = await sweep(trusting(sim, trust_env=False), range(1, 11))
    assert all(result.ok for result in results)
    assert proxy.seen() == []


async def test_a_refusing_proxy_ends_a_sweep_after_one_request(
    proxy: ForwardProxy, sim: PhalaSimulator, trusting: Callable[..., PhalaClient]
) -> None:
    """A proxy answering CONNECT with 403 raises ``APIProxyError`` with that status after one
    request to the proxy, and nothing reaches the API."""
    proxy.refuse(403)
    with pytest.raises(APIProxyError) as caught:
        await sweep(trusting(sim, proxy=proxy.url, concurrency=16), range(1, 51))
    error = caught.value
    assert error.status_code == 403
    assert error.proxy == proxy.url
    assert f"the proxy {proxy.url} refused the tunnel to 127.0.0.1:{port_of(sim)}" in str(error)
    assert "HTTP 403" in str(error)
    assert len(proxy.seen()) == 1
    assert sim.total_requests == 0


async def test_proxy_credentials_go_to_the_proxy_only(
    proxy: ForwardProxy, sim: PhalaSimulator, trusting: Callable[..., PhalaClient]
) -> None:
    """Credentials in the proxy URL are sent to the proxy as Basic auth on CONNECT."""
    proxy.require(PROXY_USER, PROXY_PASSWORD)
    url = proxy.url.replace("http://", f"http://{PROXY_USER}:{PROXY_PASSWORD}@")
    results = await sweep(trusting(sim, proxy=url), range(1, 11))
    seen = proxy.seen()
    assert all(result.ok for result in results)
    assert seen
    assert all(request["headers"]["proxy-authorization"].startswith("Basic ") for request in seen)
    assert not any("proxy-authorization" in name for name in _request_header_names(sim))


def _request_header_names(sim: PhalaSimulator) -> set[str]:
    return {name for record in sim.request_log for name in record.header_names}


async def test_a_wrong_proxy_password_is_final_and_never_shown(
    proxy: ForwardProxy,
    sim: PhalaSimulator,
    caplog: pytest.LogCaptureFixture,
    trusting: Callable[..., PhalaClient],
) -> None:
    """A proxy refusing the credentials (407) raises ``APIProxyError`` at once, and the
    password is in no message, repr, log record or linked exception."""
    proxy.require(PROXY_USER, "the-right-password")
    url = proxy.url.replace("http://", f"http://{PROXY_USER}:{PROXY_PASSWORD}@")
    client = trusting(sim, proxy=url)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(APIProxyError) as caught:
        await sweep(client, range(1, 21))
    error = caught.value
    shown = [
        str(error),
        repr(error),
        repr(vars(error)),
        repr(client),
        str(client.stats),
        caplog.text,
        *(repr(link) for link in _linked(error)),
    ]
    assert error.status_code == 407
    assert "credentials" in str(error)
    assert len(proxy.seen()) == 1
    assert [text for text in shown if PROXY_PASSWORD in text] == []


def _linked(error: BaseException) -> list[BaseException]:
    links: list[BaseException] = []
    link = error.__cause__ or error.__context__
    while link is not None and len(links) < 20:
        links.append(link)
        link = link.__cause__ or link.__context__
    return links


async def test_a_proxy_that_is_down_is_named() -> None:
    """A proxy that refuses the TCP connection is named, and the password is not."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = PhalaClient(
        api_key="phak_proxy_down",
        base_url="https://cloud-api.phala.com/api/v1",
        proxy=f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{port}",
        max_attempts=1,
    )
    async with asyncio.timeout(10), client:
        with pytest.raises(APIConnectionError) as caught:
            await client.get_cvm(1)
    message = str(caught.value)
    assert f"cannot connect to the proxy 127.0.0.1:{port}" in message
    assert "connection refused" in message
    assert PROXY_PASSWORD not in message + repr(_linked(caught.value))


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        pytest.param(
            "HTTPS_PROXY",
            f"socks5://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:1080",
            "HTTPS_PROXY",
            id="socks-variable",
        ),
        pytest.param("https_proxy", "http://:80", "https_proxy", id="no-host-lowercase"),
    ],
)
def test_an_unusable_proxy_variable_fails_at_construction(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    """A proxy variable that is not an http:// URL fails when the client is made, naming the
    variable and the way out, without its password."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as caught:
        PhalaClient(api_key="phak_x")
    assert message.upper() in str(caught.value).upper()
    assert "trust_env=False" in str(caught.value)
    assert PROXY_PASSWORD not in str(caught.value)


@pytest.mark.parametrize(
    "proxy",
    [
        f"https://{PROXY_USER}:{PROXY_PASSWORD}@proxy.example:3128",
        f"http://{PROXY_USER}:{PROXY_PASSWORD}@proxy.example:3128/path",
    ],
    ids=["https-scheme", "with-path"],
)
def test_an_unusable_proxy_argument_fails_at_construction(proxy: str) -> None:
    """A ``proxy=`` that is not ``http://[user:password@]host:port`` fails at construction,
    without showing its password."""
    with pytest.raises(ConfigurationError, match="proxy") as caught:
        PhalaClient(api_key="phak_x", proxy=proxy)
    assert PROXY_PASSWORD not in str(caught.value)


async def test_proxy_and_session_together_are_refused() -> None:
    """``proxy=`` configures the client's own session, so it cannot go with ``session=``."""
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ConfigurationError, match="set them on your session"):
            PhalaClient(api_key="phak_x", session=session, proxy="http://127.0.0.1:3128")

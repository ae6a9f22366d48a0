"""Connection failures say where and why, chain only safe causes, and a base URL that misses
the API says so."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from _proxy import clean_network_environment  # noqa: F401 - used by pytestmark
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from phala_async import (
    APIConnectionError,
    APITimeoutError,
    NotFoundError,
    PhalaClient,
    ResponseTooLargeError,
)
from phala_async.testing import PhalaSimulator

FAST: dict[str, Any] = {"backoff_initial": 0.001, "backoff_max": 0.002}
KEY = "phak_network_errors_secret_key"
HINT = "check the base URL: it should end in /api/v1"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

pytestmark = pytest.mark.usefixtures("clean_network_environment")


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """Start an inline aiohttp server on 127.0.0.1 answering every path with a handler; return
    its ``/api/v1`` base URL."""
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}/api/v1"

    yield start
    for runner in runners:
        await runner.cleanup()


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def causes(error: BaseException) -> list[BaseException]:
    """Every exception linked from ``error``, by ``__cause__`` or ``__context__``."""
    seen: list[BaseException] = []
    link: BaseException | None = error
    while link is not None and len(seen) < 20:
        seen.append(link)
        link = link.__cause__ or link.__context__
    return seen[1:]


async def test_a_closed_port_names_the_host_port_and_refusal() -> None:
    """A refused connection says ``cannot connect to 127.0.0.1:<port>: connection refused``."""
    port = free_port()
    client = PhalaClient(
        api_key=KEY, base_url=f"http://127.0.0.1:{port}/api/v1", max_attempts=2, **FAST
    )
    async with asyncio.timeout(10), client:
        with pytest.raises(APIConnectionError) as caught:
            await client.get_cvm(1)
    error = caught.value
    assert type(error) is APIConnectionError
    assert f"cannot connect to 127.0.0.1:{port}: connection refused" in str(error)
    assert error.attempts == 2  # refused may be a restart: retried
    assert isinstance(error.__cause__, ConnectionRefusedError)


class _NoSuchName(AbstractResolver):
    """A resolver that knows no name, as DNS answers for a host that does not exist."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        raise OSError(socket.EAI_NONAME, "Name or service not known")

    async def close(self) -> None:
        return None


async def test_a_name_that_does_not_resolve_says_so() -> None:
    """A host name that does not resolve gives ``name not resolved`` with the host and port."""
    connector = aiohttp.TCPConnector(resolver=_NoSuchName())
    async with aiohttp.ClientSession(connector=connector) as session:
        client = PhalaClient(
            api_key=KEY,
            base_url="https://api.phala-async-test.invalid/api/v1",
            session=session,
            max_attempts=1,
        )
        async with asyncio.timeout(10), client:
            with pytest.raises(APIConnectionError) as caught:
                await client.get_cvm(1)
    assert "cannot connect to api.phala-async-test.invalid:443: name not resolved" in str(
        caught.value
    )
    assert "Name or service not known" in str(caught.value)


async def test_a_connection_reset_before_an_answer_says_so(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """A server that aborts a new connection on each request gives a reset or close message
    naming where, after every attempt."""

    async def abort(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.abort()
        return web.Response()

    base_url = await serve(abort)
    client = PhalaClient(api_key=KEY, base_url=base_url, max_attempts=3, **FAST)
    async with asyncio.timeout(10), client:
        with pytest.raises(APIConnectionError) as caught:
            await client.get_cvm(1)
        stats = client.stats
    message = str(caught.value)
    assert "127.0.0.1:" in message
    assert "connection reset" in message or "closed the connection without answering" in message
    assert caught.value.attempts == 3
    assert stats.reconnects == 0  # each attempt had a new connection: a real failure


async def test_a_timeout_names_where_and_how_long(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """An attempt that gets no answer in time names the host, port and the timeout."""

    release = asyncio.Event()

    async def stalled(request: web.Request) -> web.StreamResponse:
        async with asyncio.timeout(5):
            await release.wait()
        return web.Response()

    base_url = await serve(stalled)
    client = PhalaClient(api_key=KEY, base_url=base_url, timeout=0.2, max_attempts=1)
    async with asyncio.timeout(10), client:
        with pytest.raises(APITimeoutError) as caught:
            await client.get_cvm(1)
    release.set()  # so that the server stops at once
    port = base_url.split(":")[2].split("/")[0]
    assert f"no complete answer from 127.0.0.1:{port} within 0.2s" in str(caught.value)


async def test_headers_too_large_are_final(serve: Callable[[Handler], Awaitable[str]]) -> None:
    """An answer whose header is longer than aiohttp reads raises ``ResponseTooLargeError``
    after one request: asking again would get the same headers."""
    hits = 0

    async def huge_header(request: web.Request) -> web.StreamResponse:
        nonlocal hits
        hits += 1
        return web.json_response({}, headers={"X-Padding": "p" * 20_000})

    base_url = await serve(huge_header)
    client = PhalaClient(api_key=KEY, base_url=base_url, max_attempts=4, **FAST)
    async with asyncio.timeout(10), client:
        with pytest.raises(ResponseTooLargeError, match="headers") as caught:
            await client.get_cvm(1)
    assert hits == 1
    assert caught.value.attempts == 1
    assert caught.value.limit == 8190
    # aiohttp's error holds the request's headers: it is not linked.
    assert not [e for e in causes(caught.value) if isinstance(e, aiohttp.ClientError)]


async def test_no_linked_exception_carries_the_credential() -> None:
    """Neither a refused connection's error nor anything linked from it shows the API key."""
    client = PhalaClient(
        api_key=KEY, base_url=f"http://127.0.0.1:{free_port()}/api/v1", max_attempts=1
    )
    async with asyncio.timeout(10), client:
        with pytest.raises(APIConnectionError) as caught:
            await client.get_cvm(1)
    linked = causes(caught.value)
    assert linked  # the OS error is chained
    assert not [e for e in linked if isinstance(e, aiohttp.ClientError)]
    for error in [caught.value, *linked]:
        assert KEY not in repr(error)
        assert KEY not in str(error)
        assert KEY not in repr(vars(error))


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        pytest.param("text/html", b"<html><h1>404 Not Found</h1></html>", id="html-page"),
        pytest.param("application/json", b'{"detail":"Not Found"}', id="bare-not-found"),
    ],
)
async def test_a_404_from_outside_the_api_hints_at_the_base_url(
    serve: Callable[[Handler], Awaitable[str]], content_type: str, body: bytes
) -> None:
    """A 404 that is not the API's own "CVM not found" points at the base URL."""

    async def not_found(request: web.Request) -> web.StreamResponse:
        return web.Response(status=404, body=body, content_type=content_type)

    base_url = (await serve(not_found)).removesuffix("/api/v1")
    client = PhalaClient(api_key=KEY, base_url=base_url, max_attempts=1)
    async with asyncio.timeout(10), client:
        with pytest.raises(NotFoundError) as caught:
            await client.get_cvm(1)
    assert HINT in str(caught.value)


async def test_the_apis_own_404_gives_no_base_url_hint() -> None:
    """The API's "CVM not found" is about the id, so the message has no base URL hint."""
    async with PhalaSimulator(cvms=1) as sim:
        client = PhalaClient(api_key=sim.api_key, base_url=sim.base_url, max_attempts=1)
        async with asyncio.timeout(10), client:
            with pytest.raises(NotFoundError) as caught:
                await client.get_cvm(999)
    assert HINT not in str(caught.value)

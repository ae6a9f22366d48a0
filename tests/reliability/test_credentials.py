"""Credentials: a redirect never carries the key or token to another origin, and no log line,
repr or exception text shows them."""

from __future__ import annotations

import logging
import secrets
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp import web

from phala_async import APIStatusError, CvmResult, PhalaClient, PhalaError
from phala_async.testing import Fault, PhalaSimulator

CREDENTIALS = ["api_key", "token"]


Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RecordingServer:
    """A local server that records the headers of every request and answers with ``answer``."""

    def __init__(self, answer: Answer) -> None:
        self.seen: list[dict[str, str]] = []
        self._answer = answer
        self._runner: web.AppRunner | None = None
        self.origin = ""

    async def start(self) -> RecordingServer:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.origin = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(dict(request.headers))
        return await self._answer(request)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


StartServer = Callable[[Answer], Awaitable[RecordingServer]]


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    """Start recording servers; all are closed after the test."""
    started: list[RecordingServer] = []

    async def start(answer: Answer) -> RecordingServer:
        server = await RecordingServer(answer).start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.close()


def _secret(kind: str) -> str:
    return ("phak_" if kind == "api_key" else "oauth_") + secrets.token_hex(16)


def _credential(kind: str, secret: str) -> dict[str, str]:
    return {"api_key": secret} if kind == "api_key" else {"token": secret}


@pytest.mark.parametrize("kind", CREDENTIALS)
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirect_to_another_origin_never_reaches_it(
    start_server: StartServer, status: int, kind: str
) -> None:
    """A 3xx pointing at a second local server raises APIStatusError with that status, and the
    second server receives no request, hence neither the key nor the token."""

    async def nothing(request: web.Request) -> web.StreamResponse:
        return web.json_response({"detail": "you should never be here"})

    elsewhere = await start_server(nothing)

    async def redirect(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, headers={"Location": elsewhere.origin + request.path})

    first = await start_server(redirect)
    secret = _secret(kind)
    async with PhalaClient(
        base_url=first.origin + "/api/v1", backoff_initial=0.001, **_credential(kind, secret)
    ) as client:
        with pytest.raises(APIStatusError) as caught:
            await client.get_cvm(7)
    assert elsewhere.seen == []
    assert len(first.seen) == 1
    assert secret in first.seen[0].get("X-API-Key", "") + first.seen[0].get("Authorization", "")
    assert type(caught.value) is APIStatusError
    assert caught.value.status_code == status
    assert caught.value.cvm_id == 7
    assert secret not in str(caught.value)


def _chained(error: BaseException) -> list[BaseException]:
    """``error`` and every exception chained to it, as cause or as context."""
    found: list[BaseException] = []
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is not None and all(current is not known for known in found):
            found.append(current)
            pending += [current.__cause__, current.__context__]
    return found


def _texts_of(error: BaseException) -> Iterator[str]:
    """Every text an error shows: str and repr of it and of each exception chained to it, and
    the formatted traceback."""
    for current in _chained(error):
        yield str(current)
        yield repr(current)
    yield "".join(traceback.format_exception(error))


@pytest.mark.parametrize("kind", CREDENTIALS)
async def test_failing_sweep_at_debug_level_shows_no_secret(
    kind: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """Across a sweep where half the requests fail in every way, logged at DEBUG, the secret is
    in no log line, no repr of the client and no exception text, and nothing prints it."""
    secret = _secret(kind)
    caplog.set_level(logging.DEBUG)
    async with PhalaSimulator(
        cvms=100, forbidden=5, fault_rate=0.5, fault_delay=0.3, **_credential(kind, secret)
    ) as simulator:
        simulator.script(3, Fault.NOT_JSON)
        simulator.script(4, Fault.BAD_GZIP)
        ids: list[Any] = [*range(1, 111), "no-such-cvm", "../etc/passwd", -1]
        async with PhalaClient(
            base_url=simulator.base_url,
            timeout=0.1,
            max_attempts=3,
            adaptive=False,  # a 429 in every 16 answers would pace this sweep down to a crawl
            backoff_initial=0.001,
            backoff_max=0.002,
            **_credential(kind, secret),
        ) as client:
            results: list[CvmResult] = await client.get_cvms(ids)
            shown = [repr(client), repr(client.stats), str(client)]
    errors = [result.error for result in results if result.error is not None]
    texts = [text for error in errors for text in _texts_of(error)]
    out, err = capsys.readouterr()
    print(
        f"\ncredentials ({kind}): {len(results)} results, {len(errors)} errors of "
        f"{len({type(e).__name__ for e in errors})} types, {len(caplog.records)} log records at "
        f"DEBUG, {len(texts)} exception texts checked"
    )
    assert len({type(error).__name__ for error in errors}) >= 5
    assert len(caplog.records) > len(ids)
    assert simulator.status_counts[200] > 0
    assert [text for text in texts if secret in text] == []
    assert secret not in caplog.text
    assert [shown_text for shown_text in shown if secret in shown_text] == []
    assert secret not in out
    assert secret not in err


@pytest.mark.parametrize("kind", CREDENTIALS)
async def test_no_exception_chained_to_a_protocol_error_shows_the_secret(
    start_server: StartServer, kind: str
) -> None:
    """When the server breaks HTTP itself, neither the error nor any exception chained to it
    shows the key or token in its str or repr."""

    async def not_http(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        request.transport.close()
        return web.Response()

    server = await start_server(not_http)
    secret = _secret(kind)
    async with PhalaClient(
        base_url=server.origin + "/api/v1", max_attempts=1, **_credential(kind, secret)
    ) as client:
        with pytest.raises(PhalaError) as caught:
            await client.get_cvm(1)
    leaking = [
        type(error).__name__
        for error in _chained(caught.value)
        if secret in str(error) or secret in repr(error)
    ]
    assert len(server.seen) == 1
    assert leaking == []

"""Tests for ``PhalaClient`` against a real local server: the simulator or an inline handler."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import re
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from phala_async import (
    API_VERSION,
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    ClientClosedError,
    DecodeError,
    InternalServerError,
    InvalidCvmIdError,
    NotFoundError,
    PermissionDeniedError,
    PhalaClient,
    PhalaError,
    RateLimitError,
    ResponseTooLargeError,
    UnprocessableEntityError,
    __version__,
)
from phala_async.testing import Fault, PhalaSimulator

REQUEST_ID = re.compile(r"req_[0-9a-f]{16}")
TWO_MIB = 2 * 1024 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def inline_server(routes: dict[str, Handler]) -> AsyncIterator[str]:
    """Serve ``routes`` (path -> GET handler) on 127.0.0.1 and yield the API base URL."""
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/api/v1"
    finally:
        await runner.cleanup()


def request_times(simulator: PhalaSimulator, key: str | int) -> list[float]:
    """When the simulator answered each request for path segment ``key``, oldest first."""
    return [record.time for record in simulator.request_log if record.cvm_key == str(key)]


@pytest.fixture
async def retry_after_sim() -> AsyncIterator[PhalaSimulator]:
    """A simulator whose injected 429s ask for ``Retry-After: 1``."""
    async with PhalaSimulator(cvms=60, retry_after=1) as sim:
        yield sim


@pytest.fixture
async def delay_sim() -> AsyncIterator[PhalaSimulator]:
    """A simulator whose injected delays last 0.5 s, past a 0.25 s client timeout."""
    async with PhalaSimulator(cvms=10, fault_delay=0.5) as sim:
        yield sim


# -- fetching one CVM --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("form", "segment"),
    [
        pytest.param(lambda doc: doc["id"], lambda doc: str(doc["id"]), id="int"),
        pytest.param(lambda doc: str(doc["id"]), lambda doc: str(doc["id"]), id="int-as-str"),
        pytest.param(lambda doc: doc["name"], lambda doc: doc["name"], id="name"),
        pytest.param(
            lambda doc: doc["app_id"], lambda doc: f"app_{doc['app_id']}", id="bare-app-id"
        ),
        pytest.param(
            lambda doc: f"app_{doc['app_id']}", lambda doc: f"app_{doc['app_id']}", id="app-id"
        ),
        pytest.param(
            lambda doc: doc["vm_uuid"], lambda doc: doc["vm_uuid"].replace("-", ""), id="uuid"
        ),
    ],
)
async def test_get_cvm_by_each_identifier_form(
    client: PhalaClient,
    simulator: PhalaSimulator,
    form: Callable[[dict[str, Any]], str | int],
    segment: Callable[[dict[str, Any]], str],
) -> None:
    """Each identifier form fetches the same CVM, sent as its normalised path segment."""
    document = simulator.cvm(7)
    async with asyncio.timeout(10):
        cvm = await client.get_cvm(form(document))
    assert (cvm.id, cvm.name, cvm.app_id) == (7, document["name"], document["app_id"])
    assert [record.cvm_key for record in simulator.request_log] == [segment(document)]


@pytest.mark.parametrize(
    ("credential", "sent", "absent"),
    [
        pytest.param("api_key", "x-api-key", "authorization", id="api-key"),
        pytest.param("token", "authorization", "x-api-key", id="token"),
    ],
)
async def test_headers_the_server_sees(
    make_client: Callable[..., PhalaClient],
    simulator: PhalaSimulator,
    credential: str,
    sent: str,
    absent: str,
) -> None:
    """Every request pins the API version, names the library, and sends one credential."""
    if credential == "token":
        client = make_client(api_key=None, token=simulator.token)
    else:
        client = make_client()
    async with asyncio.timeout(10):
        await client.get_cvm(1)
    [record] = simulator.request_log
    assert record.phala_version == API_VERSION == "2025-10-28"
    assert record.user_agent == f"phala-async/{__version__}"
    assert record.authenticated is True
    assert sent in record.header_names
    assert absent not in record.header_names


async def test_get_cvm_calls_share_the_concurrency_limit(
    client_for: Callable[..., PhalaClient],
) -> None:
    """Concurrent ``get_cvm`` calls never have more than ``concurrency`` requests in flight."""
    async with PhalaSimulator(cvms=30, latency=0.02) as slow:
        async with asyncio.timeout(10), client_for(slow, concurrency=4) as client:
            cvms = await asyncio.gather(*(client.get_cvm(n) for n in range(1, 31)))
        assert [cvm.id for cvm in cvms] == list(range(1, 31))
        assert slow.max_in_flight == 4


# -- statuses ----------------------------------------------------------------------------------

STATUS_CASES = [
    pytest.param(
        "wrong-key", 1, AuthenticationError, 401, "Authentication required", id="401-wrong-key"
    ),
    pytest.param(None, 51, PermissionDeniedError, 403, "CVM not in workspace", id="403-forbidden"),
    pytest.param(None, 999, NotFoundError, 404, "CVM not found", id="404-unknown"),
    pytest.param(
        None,
        "A_B",
        UnprocessableEntityError,
        422,
        "path.cvm_id: Invalid CVM identifier",
        id="422-underscore",
    ),
    pytest.param(
        None,
        "ab",
        UnprocessableEntityError,
        422,
        "path.cvm_id: Invalid CVM identifier",
        id="422-too-short",
    ),
    pytest.param(Fault.RATE_LIMIT, 5, RateLimitError, 429, "Rate limit exceeded", id="429"),
    pytest.param(Fault.HTTP_500, 5, InternalServerError, 500, "Internal Server Error", id="500"),
    pytest.param(Fault.HTTP_502, 5, InternalServerError, 502, None, id="502-html-page"),
    pytest.param(Fault.HTTP_503, 5, InternalServerError, 503, "Service Unavailable", id="503"),
    pytest.param(Fault.HTTP_504, 5, InternalServerError, 504, "Gateway Timeout", id="504"),
]


@pytest.mark.parametrize(("setup", "cvm_id", "cls", "status", "detail"), STATUS_CASES)
async def test_status_is_mapped_to_its_exception(
    make_client: Callable[..., PhalaClient],
    simulator: PhalaSimulator,
    setup: str | Fault | None,
    cvm_id: str | int,
    cls: type[APIStatusError],
    status: int,
    detail: str | None,
) -> None:
    """Each error status raises its exception with the id, status, request id and detail."""
    if setup == "wrong-key":
        client = make_client(api_key="phak_wrong_key_for_test", max_attempts=1)
    else:
        client = make_client(max_attempts=1)
        if setup is not None:
            simulator.script(cvm_id, setup)
    with pytest.raises(APIStatusError) as caught:
        async with asyncio.timeout(10):
            await client.get_cvm(cvm_id)
    error = caught.value
    assert type(error) is cls
    assert (error.cvm_id, error.status_code, error.detail) == (cvm_id, status, detail)
    assert error.request_id is not None
    assert REQUEST_ID.fullmatch(error.request_id)


async def test_not_found_carries_the_error_code(client: PhalaClient) -> None:
    """A structured 404 body's ``error_code`` is kept on the error."""
    with pytest.raises(NotFoundError) as caught:
        async with asyncio.timeout(10):
            await client.get_cvm(999)
    assert caught.value.error_code == "ERR-03-001"


# -- retries -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(Fault.HTTP_500, id="500"),
        pytest.param(Fault.HTTP_502, id="502"),
        pytest.param(Fault.HTTP_503, id="503"),
        pytest.param(Fault.HTTP_504, id="504"),
        pytest.param(Fault.RATE_LIMIT, id="429-retry-after-0"),
        pytest.param(Fault.RESET, id="reset"),
        pytest.param(Fault.TRUNCATE, id="truncate"),
    ],
)
async def test_retryable_fault_is_recovered_on_the_second_attempt(
    client: PhalaClient, simulator: PhalaSimulator, fault: Fault
) -> None:
    """A transient failure is retried once: two requests on the server, two attempts reported."""
    simulator.script(9, fault, Fault.OK)
    async with asyncio.timeout(10):
        [result] = await client.get_cvms([9])
    assert result.ok
    assert result.cvm is not None
    assert result.cvm.id == 9
    assert (simulator.requests["9"], result.attempts) == (2, 2)


async def test_delay_past_the_timeout_is_recovered(
    delay_sim: PhalaSimulator, client_for: Callable[..., PhalaClient]
) -> None:
    """An attempt that runs past ``timeout`` is abandoned and the retry succeeds."""
    delay_sim.script(4, Fault.DELAY, Fault.OK)
    async with asyncio.timeout(10), client_for(delay_sim, timeout=0.25) as client:
        [result] = await client.get_cvms([4])
    assert result.ok
    assert (delay_sim.requests["4"], result.attempts) == (2, 2)


async def test_delay_past_the_timeout_raises_timeout_error(
    delay_sim: PhalaSimulator, client_for: Callable[..., PhalaClient]
) -> None:
    """Without retries, an attempt that runs past ``timeout`` raises APITimeoutError."""
    delay_sim.script(4, Fault.DELAY)
    async with client_for(delay_sim, timeout=0.25, max_attempts=1) as client:
        with pytest.raises(APITimeoutError) as caught:
            async with asyncio.timeout(10):
                await client.get_cvm(4)
    assert (caught.value.cvm_id, caught.value.attempts) == (4, 1)
    assert isinstance(caught.value, APIConnectionError)


async def test_timeout_bounds_each_attempt_not_the_whole_call(
    delay_sim: PhalaSimulator, client_for: Callable[..., PhalaClient]
) -> None:
    """Two slow attempts take longer than ``timeout`` in total, yet the third succeeds."""
    delay_sim.script(4, Fault.DELAY, Fault.DELAY, Fault.OK)
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(10), client_for(delay_sim, timeout=0.25) as client:
        started = loop.time()
        cvm = await client.get_cvm(4)
    assert cvm.id == 4
    assert loop.time() - started > 0.25
    assert delay_sim.requests["4"] == 3


@pytest.mark.parametrize(
    ("setup", "cvm_id", "cls"),
    [
        pytest.param("wrong-key", 1, AuthenticationError, id="401"),
        pytest.param(None, 51, PermissionDeniedError, id="403"),
        pytest.param(None, 999, NotFoundError, id="404"),
        pytest.param(None, "A_B", UnprocessableEntityError, id="422"),
        pytest.param(Fault.NOT_JSON, 3, DecodeError, id="not-json"),
        pytest.param(Fault.BAD_GZIP, 3, DecodeError, id="bad-gzip"),
    ],
)
async def test_final_failure_is_not_retried(
    make_client: Callable[..., PhalaClient],
    simulator: PhalaSimulator,
    setup: str | Fault | None,
    cvm_id: str | int,
    cls: type[PhalaError],
) -> None:
    """A final failure raises after exactly one request, even if a retry would succeed."""
    if setup == "wrong-key":
        client = make_client(api_key="phak_wrong_key_for_test")
    else:
        client = make_client()
        if setup is not None:
            simulator.script(cvm_id, setup, Fault.OK)
    with pytest.raises(PhalaError) as caught:
        async with asyncio.timeout(10):
            await client.get_cvm(cvm_id)
    assert type(caught.value) is cls
    assert (caught.value.cvm_id, caught.value.attempts) == (cvm_id, 1)
    assert simulator.requests[str(cvm_id)] == 1


@pytest.mark.parametrize(
    ("max_attempts", "last_status"),
    [
        pytest.param(1, 500, id="1-attempt"),
        pytest.param(2, 502, id="2-attempts"),
        pytest.param(3, 503, id="3-attempts"),
        pytest.param(4, 504, id="4-attempts"),
    ],
)
async def test_exhausted_retries_raise_the_last_error(
    make_client: Callable[..., PhalaClient],
    simulator: PhalaSimulator,
    max_attempts: int,
    last_status: int,
) -> None:
    """After ``max_attempts`` failures the last error is raised, saying how many were made."""
    simulator.script(8, Fault.HTTP_500, Fault.HTTP_502, Fault.HTTP_503, Fault.HTTP_504, Fault.OK)
    client = make_client(max_attempts=max_attempts)
    with pytest.raises(InternalServerError) as caught:
        async with asyncio.timeout(10):
            await client.get_cvm(8)
    assert caught.value.status_code == last_status
    assert caught.value.attempts == max_attempts
    assert simulator.requests["8"] == max_attempts


async def test_exhausted_resets_send_exactly_max_attempts_requests(
    make_client: Callable[..., PhalaClient], simulator: PhalaSimulator
) -> None:
    """Resets are retried by the client's policy alone: ``max_attempts`` requests, no more."""
    simulator.script(8, Fault.RESET, Fault.RESET, Fault.RESET, Fault.RESET, Fault.RESET, Fault.OK)
    client = make_client(max_attempts=3)
    with pytest.raises(APIConnectionError) as caught:
        async with asyncio.timeout(10):
            await client.get_cvm(8)
    assert caught.value.attempts == 3
    assert simulator.requests["8"] == 3


# -- Retry-After -------------------------------------------------------------------------------


async def test_retry_after_seconds_is_honoured(
    retry_after_sim: PhalaSimulator, client_for: Callable[..., PhalaClient]
) -> None:
    """A 429 with ``Retry-After: 1`` is retried no sooner than about a second later."""
    retry_after_sim.script(6, Fault.RATE_LIMIT, Fault.OK)
    async with asyncio.timeout(10), client_for(retry_after_sim) as client:
        cvm = await client.get_cvm(6)
    first, second = request_times(retry_after_sim, 6)
    assert cvm.id == 6
    assert 0.9 <= second - first < 3.0


async def test_retry_after_http_date_is_honoured(client_for: Callable[..., PhalaClient]) -> None:
    """A 429 whose ``Retry-After`` is an HTTP-date is retried only once that moment is near."""
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=2), usegmt=True)
    async with PhalaSimulator(cvms=10, retry_after=when) as sim:
        sim.script(6, Fault.RATE_LIMIT, Fault.OK)
        async with asyncio.timeout(10), client_for(sim) as client:
            cvm = await client.get_cvm(6)
        first, second = request_times(sim, 6)
    assert cvm.id == 6
    # The date has one-second resolution, so the wait is between 1 and 2 s minus set-up time.
    assert 0.5 <= second - first < 3.0


async def test_retry_after_over_the_cap_raises_at_once(
    retry_after_sim: PhalaSimulator, client_for: Callable[..., PhalaClient]
) -> None:
    """A server asking for longer than ``retry_after_cap`` gets a RateLimitError, not a wait."""
    retry_after_sim.script(6, Fault.RATE_LIMIT, Fault.OK)
    loop = asyncio.get_running_loop()
    async with client_for(retry_after_sim, retry_after_cap=0.5) as client:
        started = loop.time()
        with pytest.raises(RateLimitError) as caught:
            async with asyncio.timeout(10):
                await client.get_cvm(6)
        elapsed = loop.time() - started
    assert (caught.value.retry_after, caught.value.attempts) == (1.0, 1)
    assert retry_after_sim.requests["6"] == 1
    assert elapsed < 0.5


async def test_rate_limit_pauses_every_worker(
    retry_after_sim: PhalaSimulator, client_for: Callable[..., PhalaClient]
) -> None:
    """After one 429 with ``Retry-After: 1``, no new request of a running sweep reaches the
    server until about a second later."""
    retry_after_sim.script(60, Fault.RATE_LIMIT, Fault.OK)
    ids = [60, *range(1, 50)]
    async with asyncio.timeout(15), client_for(retry_after_sim, concurrency=8) as client:
        results = await client.get_cvms(ids)
    assert all(result.ok for result in results)
    limited = request_times(retry_after_sim, 60)[0]
    times = [record.time for record in retry_after_sim.request_log]
    # Requests already on the wire when the 429 arrived may land just after it; none later.
    during_pause = [t for t in times if limited + 0.1 < t < limited + 0.9]
    after_pause = [t for t in times if t >= limited + 0.9]
    assert during_pause == []
    assert len(after_pause) >= 30


async def test_rate_limit_pause_holds_requests_queued_for_a_slot(
    retry_after_sim: PhalaSimulator,
    client_for: Callable[..., PhalaClient],
) -> None:
    """A request already waiting for a connection slot when a 429 arrives also waits out the
    pause, so nothing reaches the server until about a second later."""
    retry_after_sim.script(60, Fault.RATE_LIMIT, Fault.OK)
    async with asyncio.timeout(15), client_for(retry_after_sim, concurrency=1) as client:
        sweep = asyncio.create_task(client.get_cvms(range(1, 40)))
        cvm = await client.get_cvm(60)
        results = await sweep
    assert cvm.id == 60
    assert all(result.ok for result in results)
    limited = request_times(retry_after_sim, 60)[0]
    too_soon = [
        record.cvm_key
        for record in retry_after_sim.request_log
        if limited < record.time < limited + 0.9
    ]
    assert too_soon == []


# -- invalid ids, redirects, bodies -------------------------------------------------------------


@pytest.mark.parametrize(
    "cvm_id",
    [
        pytest.param("../1", id="dot-dot"),
        pytest.param("1/../2", id="slash"),
        pytest.param("1?x=1", id="query"),
        pytest.param("1#x", id="fragment"),
        pytest.param("%2F1", id="percent"),
        pytest.param("1 2", id="space"),
        pytest.param("1\n", id="newline"),
        pytest.param("caf\u00e9", id="non-ascii"),
        pytest.param("", id="empty"),
        pytest.param(-1, id="negative"),
        pytest.param(None, id="none"),
    ],
)
async def test_invalid_id_sends_nothing(
    client: PhalaClient, simulator: PhalaSimulator, cvm_id: Any
) -> None:
    """An invalid id raises InvalidCvmIdError before any request reaches the server."""
    with pytest.raises(InvalidCvmIdError) as caught:
        async with asyncio.timeout(10):
            await client.get_cvm(cvm_id)
    assert caught.value.attempts == 0
    assert simulator.total_requests == 0
    assert client.stats.requests == 0


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_redirect_is_an_error_not_followed(
    status: int, client_for: Callable[..., PhalaClient]
) -> None:
    """A 3xx raises APIStatusError and the Location is never requested."""
    hits = {"detail": 0, "elsewhere": 0}

    async def redirect(request: web.Request) -> web.StreamResponse:
        hits["detail"] += 1
        location = str(request.url.with_path("/elsewhere"))
        return web.Response(status=status, headers={"Location": location})

    async def elsewhere(request: web.Request) -> web.StreamResponse:
        hits["elsewhere"] += 1
        return web.json_response({"detail": "should never be reached"})

    routes = {"/api/v1/cvms/{cvm_id}": redirect, "/elsewhere": elsewhere}
    async with inline_server(routes) as base_url, client_for(base_url) as client:
        with pytest.raises(APIStatusError) as caught:
            async with asyncio.timeout(10):
                await client.get_cvm(5)
    assert type(caught.value) is APIStatusError
    assert (caught.value.status_code, caught.value.cvm_id) == (status, 5)
    assert hits == {"detail": 1, "elsewhere": 0}


async def _oversized_with_length(request: web.Request) -> web.StreamResponse:
    return web.Response(body=b"[" + b" " * TWO_MIB + b"]", content_type="application/json")


async def _oversized_chunked(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.content_type = "application/json"
    response.enable_chunked_encoding()
    await response.prepare(request)
    with contextlib.suppress(ConnectionError):
        for _ in range(TWO_MIB // 65536):
            await response.write(b" " * 65536)
        await response.write_eof()
    return response


async def _oversized_gzip(request: web.Request) -> web.StreamResponse:
    body = gzip.compress(b"[" + b" " * TWO_MIB + b"]")
    return web.Response(
        body=body, content_type="application/json", headers={"Content-Encoding": "gzip"}
    )


@pytest.mark.parametrize(
    "handler",
    [
        pytest.param(_oversized_with_length, id="content-length"),
        pytest.param(_oversized_chunked, id="no-content-length"),
        pytest.param(_oversized_gzip, id="gzip-expands"),
    ],
)
async def test_oversized_body_is_refused(
    handler: Handler, client_for: Callable[..., PhalaClient]
) -> None:
    """A body over the 1 MiB default cap raises ResponseTooLargeError for that id."""
    async with (
        inline_server({"/api/v1/cvms/{cvm_id}": handler}) as base_url,
        client_for(base_url) as client,
    ):
        with pytest.raises(ResponseTooLargeError) as caught:
            async with asyncio.timeout(10):
                await client.get_cvm("web-00001")
    assert (caught.value.cvm_id, caught.value.limit) == ("web-00001", 1024 * 1024)
    assert caught.value.attempts == 1


async def test_body_over_a_small_cap_is_refused(
    make_client: Callable[..., PhalaClient], simulator: PhalaSimulator
) -> None:
    """A normal CVM body over a small ``max_response_bytes`` is refused and not retried."""
    client = make_client(max_response_bytes=100)
    with pytest.raises(ResponseTooLargeError) as caught:
        async with asyncio.timeout(10):
            await client.get_cvm(2)
    assert (caught.value.cvm_id, caught.value.limit) == (2, 100)
    assert simulator.requests["2"] == 1


@pytest.mark.parametrize("content_type", ["text/html", "text/plain", "application/octet-stream"])
async def test_wrong_content_type_on_success_is_decode_error(
    simulator: PhalaSimulator, content_type: str, client_for: Callable[..., PhalaClient]
) -> None:
    """A 200 that is not JSON by its Content-Type raises DecodeError, even if the body is."""
    document = json.dumps(simulator.cvm(1)).encode()

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=document, content_type=content_type)

    async with (
        inline_server({"/api/v1/cvms/{cvm_id}": handler}) as base_url,
        client_for(base_url) as client,
    ):
        with pytest.raises(DecodeError) as caught:
            async with asyncio.timeout(10):
                await client.get_cvm(1)
    assert (caught.value.cvm_id, caught.value.attempts) == (1, 1)
    assert content_type in str(caught.value)


async def test_error_body_that_is_not_utf8_still_raises_the_status_error(
    client_for: Callable[..., PhalaClient],
) -> None:
    """A 502 whose JSON body holds invalid UTF-8 raises InternalServerError, not a raw error."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(
            status=502, body=b'{"detail": "bad \xff gateway"}', content_type="application/json"
        )

    async with (
        inline_server({"/api/v1/cvms/{cvm_id}": handler}) as base_url,
        client_for(base_url, max_attempts=1) as client,
    ):
        with pytest.raises(PhalaError) as caught:
            async with asyncio.timeout(10):
                await client.get_cvm(1)
    assert type(caught.value) is InternalServerError
    assert (caught.value.status_code, caught.value.cvm_id) == (502, 1)


# -- lifecycle -------------------------------------------------------------------------------


async def test_aclose_twice_is_fine(make_client: Callable[..., PhalaClient]) -> None:
    """Closing a used client twice is allowed and leaves it closed."""
    client = make_client()
    async with asyncio.timeout(10):
        await client.get_cvm(1)
        await client.aclose()
        await client.aclose()
    assert client.closed is True


async def _call_get_cvm(client: PhalaClient) -> object:
    return await client.get_cvm(1)


async def _call_get_cvms(client: PhalaClient) -> object:
    return await client.get_cvms([1, 2])


async def _call_stream_cvms(client: PhalaClient) -> object:
    return [result async for result in client.stream_cvms([1, 2])]


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(_call_get_cvm, id="get_cvm"),
        pytest.param(_call_get_cvms, id="get_cvms"),
        pytest.param(_call_stream_cvms, id="stream_cvms"),
    ],
)
async def test_calls_after_close_raise_client_closed(
    make_client: Callable[..., PhalaClient],
    simulator: PhalaSimulator,
    call: Callable[[PhalaClient], Awaitable[object]],
) -> None:
    """Every call on a closed client raises ClientClosedError and sends nothing."""
    client = make_client()
    await client.aclose()
    with pytest.raises(ClientClosedError):
        async with asyncio.timeout(10):
            await call(client)
    assert simulator.total_requests == 0


async def test_aclose_closes_the_clients_own_session(
    make_client: Callable[..., PhalaClient],
) -> None:
    """Closing the client closes the session and connector it made for itself."""
    client = make_client()
    async with asyncio.timeout(10):
        await client.get_cvm(1)
    session = client._pipeline.shared.session  # the client's own pool; read only to see it closed
    assert session is not None
    connector = session.connector
    assert connector is not None
    assert connector.closed is False
    await client.aclose()
    assert session.closed is True
    assert connector.closed is True


async def test_injected_session_is_used_and_not_closed(
    make_client: Callable[..., PhalaClient], simulator: PhalaSimulator
) -> None:
    """A caller's ``aiohttp.ClientSession`` carries the requests and stays open after close."""
    async with aiohttp.ClientSession(headers={"X-Injected-Session": "yes"}) as session:
        client = make_client(session=session)
        async with asyncio.timeout(10):
            cvm = await client.get_cvm(1)
            await client.aclose()
        assert session.closed is False
        async with asyncio.timeout(10), session.get(f"{simulator.base_url}/cvms/1") as response:
            still_usable = response.status
    assert cvm.id == 1
    assert "x-injected-session" in simulator.request_log[0].header_names
    assert still_usable == 401  # the session works; it simply carries no credential itself


# -- secrets and counters ----------------------------------------------------------------------


def _credential(kind: str, simulator: PhalaSimulator) -> tuple[dict[str, Any], str]:
    if kind == "api-key":
        return {"api_key": simulator.api_key}, simulator.api_key
    if kind == "token":
        return {"api_key": None, "token": simulator.token}, simulator.token
    return {"api_key": "phak_wrong_but_still_secret_42"}, "phak_wrong_but_still_secret_42"


def _everything_said_about(error: BaseException) -> str:
    """The message, repr and formatted traceback of an error, causes included."""
    parts = ["".join(traceback.format_exception(error))]
    current: BaseException | None = error
    while current is not None:
        parts += [str(current), repr(current)]
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


@pytest.mark.parametrize("kind", ["api-key", "token", "wrong-api-key"])
async def test_secrets_never_appear_in_logs_reprs_or_errors(
    make_client: Callable[..., PhalaClient],
    simulator: PhalaSimulator,
    caplog: pytest.LogCaptureFixture,
    kind: str,
) -> None:
    """A failing sweep logged at DEBUG shows the credential nowhere: logs, repr, or errors."""
    credential, secret = _credential(kind, simulator)
    simulator.script(2, Fault.HTTP_503, Fault.OK)
    simulator.script(3, Fault.RESET, Fault.OK)
    simulator.script(4, Fault.TRUNCATE, Fault.OK)
    simulator.script(5, Fault.HTTP_502, Fault.OK)
    caplog.set_level(logging.DEBUG)
    client = make_client(**credential)
    async with asyncio.timeout(10):
        results = await client.get_cvms([1, 2, 3, 4, 5, 51, 999, "A_B", "../x"])
        with pytest.raises(PhalaError) as caught:
            await client.get_cvm(999)
    errors = [result.error for result in results if result.error is not None]
    said = [caplog.text, repr(client), str(client)]
    said += [_everything_said_about(error) for error in [*errors, caught.value]]
    leaked = [index for index, text in enumerate(said) if secret in text]
    assert leaked == [], "the credential appears in a log, repr or error"
    assert "GET /cvms/" in caplog.text  # the DEBUG request log was captured
    assert len(errors) >= 4


async def test_retries_are_logged(
    client: PhalaClient, simulator: PhalaSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Each retry is logged on ``phala_async`` with the id, the attempt and the reason."""
    simulator.script(2, Fault.HTTP_503, Fault.OK)
    caplog.set_level(logging.INFO, logger="phala_async")
    async with asyncio.timeout(10):
        await client.get_cvm(2)
    [record] = [r for r in caplog.records if r.name == "phala_async" and "retry" in r.message]
    assert "CVM 2" in record.message
    assert "attempt 1" in record.message
    assert "InternalServerError" in record.message


async def test_stats_count_what_happened(client: PhalaClient, simulator: PhalaSimulator) -> None:
    """``client.stats`` counts requests as the server saw them, retries, 429s, and outcomes."""
    simulator.script(1, Fault.HTTP_503, Fault.OK)
    simulator.script(2, Fault.RATE_LIMIT, Fault.OK)
    async with asyncio.timeout(10):
        results = await client.get_cvms([1, 2, 3, 999, 51])
    assert [result.ok for result in results] == [True, True, True, False, False]
    stats = client.stats
    assert stats.requests == simulator.total_requests == 7
    assert (stats.retries, stats.rate_limited, stats.ok) == (2, 1, 3)
    assert dict(stats.failed) == {"NotFoundError": 1, "PermissionDeniedError": 1}

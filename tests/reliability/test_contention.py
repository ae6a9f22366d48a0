"""Servers that behave like real overloaded, shared, silent or unreachable APIs: what the engine
does with a capacity it shares and does not know, counted on the server.

How fast (goodput, share of a limit used, wall time against a fault-free sweep) is measured by
``make bench``; these tests count requests, answers and outcomes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from phala_async import (
    APIConnectionError,
    APIUnreachableError,
    CvmResult,
    PhalaClient,
)
from phala_async.testing import PhalaSimulator


async def sweep(client: PhalaClient, ids: list[str]) -> list[CvmResult]:
    """Every result of a sweep over ``ids``."""
    async with client.stream_cvms(ids) as results:
        return [result async for result in results]


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_server_capped_at_8_in_flight_answers_every_id_with_few_503s(
    client_for: Callable[..., PhalaClient],
) -> None:
    """A server that answers 503 at once beyond 8 requests in flight: a sweep at concurrency 32
    gets every id, with at most 15% of its requests answered 503, and the window settles near
    the server's capacity."""
    async with PhalaSimulator(cvms=800, capacity=8, latency=0.02) as sim:
        client = client_for(sim, concurrency=32, max_attempts=30)
        async with asyncio.timeout(60), client:
            results = await sweep(client, [str(n) for n in range(1, 801)])
            stats = client.stats
        statuses = sim.status_counts
    assert sum(result.ok for result in results) == 800
    assert statuses[200] == 800
    assert statuses[503] <= 0.15 * sim.total_requests
    assert stats.overloaded == statuses[503]
    assert stats.retries_denied == 0
    assert 4 <= stats.window <= 16


def cvm_answer(cvm_id: str) -> web.Response:
    """A minimal detail body for ``cvm_id``."""
    body = (
        f'{{"id": {cvm_id}, "name": "cvm-{cvm_id}", "status": "running", '
        f'"app_id": "app", "vcpu": 1, "memory": 1024, "disk_size": 10}}'
    )
    return web.Response(body=body, content_type="application/json")


@contextlib.asynccontextmanager
async def inline_api(
    detail: Callable[[web.Request], Awaitable[web.Response]],
) -> AsyncIterator[str]:
    """An API on 127.0.0.1 whose "Get CVM details" is ``detail``; yields its base URL."""
    app = web.Application()
    app.router.add_get("/api/v1/cvms/{cvm_id}", detail)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/api/v1"
    finally:
        await runner.cleanup()


@pytest.fixture
async def brownout() -> AsyncIterator[tuple[str, Counter[int]]]:
    """An inline API that answers its first 10 requests, then 503s the next 180 at once, then
    answers again: more failures in a row than the retry budget's window (128 at concurrency 32)
    holds, a moment after a success. Yields the base URL and a count of the statuses it sent."""
    statuses: Counter[int] = Counter()

    async def detail(request: web.Request) -> web.Response:
        cvm_id = request.match_info["cvm_id"]
        served = statuses.total()
        if 10 <= served < 190:
            statuses[503] += 1
            return web.Response(status=503, text="overloaded")
        statuses[200] += 1
        return cvm_answer(cvm_id)

    async with inline_api(detail) as base_url:
        yield base_url, statuses


async def test_a_window_of_503s_right_after_successes_defers_retries_and_drops_no_id(
    client_for: Callable[..., PhalaClient],
    brownout: tuple[str, Counter[int]],
) -> None:
    """180 answers in a row are 503s, more than the retry budget's window, a moment after the
    API last succeeded (as a capped server's instant 503s outrun its successes): the retries
    wait rather than being refused, and every one of 200 ids is ok once it answers again (each
    answered 200 once; the server sent exactly its 180 503s)."""
    base_url, statuses = brownout
    client = client_for(base_url, concurrency=32, max_attempts=30)
    async with asyncio.timeout(30), client:
        results = await sweep(client, [str(n) for n in range(1, 201)])
        stats = client.stats
    assert sum(result.ok for result in results) == 200
    assert statuses == {200: 200, 503: 180}
    assert stats.retries_denied == 0
    assert stats.retries_deferred > 0


async def test_a_random_503_storm_keeps_the_window_open_and_drops_no_id_early(
    client_for: Callable[..., PhalaClient],
) -> None:
    """Half of all answers 503 at random: with 4 attempts at least 90% of 1,000 ids are ok, at
    most 2.2 requests per id reach the server, no retry is refused, and every id that failed
    used its 4 attempts."""
    async with PhalaSimulator(cvms=1000, fault_rate=0.5, faults=["503"], seed=3) as sim:
        client = client_for(sim, concurrency=32, max_attempts=4)
        async with asyncio.timeout(60), client:
            results = await sweep(client, [str(n) for n in range(1, 1001)])
            stats = client.stats
    failed = [result for result in results if not result.ok]
    assert len(results) == 1000
    assert len(failed) <= 100
    assert sim.total_requests <= 2.2 * 1000
    assert stats.retries_denied == 0
    assert {result.attempts for result in failed} <= {4}


async def test_a_closed_port_ends_a_sweep_with_one_unreachable_error_after_a_handful(
    client_for: Callable[..., PhalaClient],
) -> None:
    """A sweep of 3,000 ids against a port nothing listens on raises one APIUnreachableError
    naming the host, the port and the reason, after a handful of attempts, not one per id."""
    port = closed_port()
    client = client_for(f"http://127.0.0.1:{port}/api/v1", concurrency=16)
    async with asyncio.timeout(30), client:
        with pytest.raises(APIUnreachableError) as caught:
            await sweep(client, [str(n) for n in range(1, 3001)])
        stats = client.stats
    error = caught.value
    assert isinstance(error, APIConnectionError)
    assert (error.host, error.port) == ("127.0.0.1", port)
    assert "refused" in error.reason.lower()
    assert f"127.0.0.1:{port}" in str(error)
    assert stats.requests <= 16


async def test_get_cvms_gives_every_id_the_unreachable_error(
    client_for: Callable[..., PhalaClient],
) -> None:
    """``get_cvms`` against a closed port does not raise: each of its 200 ids carries the
    APIUnreachableError, naming that id."""
    client = client_for(f"http://127.0.0.1:{closed_port()}/api/v1")
    async with asyncio.timeout(30), client:
        results = await client.get_cvms([str(n) for n in range(1, 201)])
    assert Counter(type(result.error) for result in results) == {APIUnreachableError: 200}
    assert [result.error.cvm_id for result in results if result.error] == [
        str(n) for n in range(1, 201)
    ]


class SilentServer:
    """A TCP server on 127.0.0.1 that accepts connections and never answers, counting them."""

    def __init__(self) -> None:
        self.accepted = 0
        self._held: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.accepted += 1
            self._held.append(writer)

        self._server = await asyncio.start_server(hold, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/api/v1"

    async def __aexit__(self, *exc_info: object) -> None:
        for writer in self._held:
            writer.close()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


async def test_a_silent_server_ends_a_sweep_after_its_first_timeouts(
    client_for: Callable[..., PhalaClient],
) -> None:
    """Against a server that accepts and never answers, a 20-id sweep with one attempt of 0.3 s
    each ends with APIUnreachableError once the first ids timed out, not one id after another:
    fewer connections than ids were made."""
    silent = SilentServer()
    async with silent as base_url:
        client = client_for(base_url, timeout=0.3, max_attempts=1, concurrency=8)
        async with asyncio.timeout(20), client:
            with pytest.raises(APIUnreachableError) as caught:
                await sweep(client, [str(n) for n in range(1, 21)])
            requests = client.stats.requests
    assert "0.3s" in caught.value.reason
    assert 1 <= silent.accepted <= requests < 20


@pytest.fixture
async def slow_first() -> AsyncIterator[tuple[str, asyncio.Event, list[str]]]:
    """An inline API whose first request waits until the test releases it; every later one is
    answered at once. Yields the base URL, the release and the order of the answers."""
    release = asyncio.Event()
    answered: list[str] = []
    first = True

    async def detail(request: web.Request) -> web.Response:
        nonlocal first
        cvm_id = request.match_info["cvm_id"]
        if first:
            first = False
            await release.wait()
        answered.append(cvm_id)
        return cvm_answer(cvm_id)

    async with inline_api(detail) as base_url:
        try:
            yield base_url, release, answered
        finally:
            release.set()


async def test_callers_behind_a_slow_first_request_are_answered_before_it(
    client_for: Callable[..., PhalaClient],
    slow_first: tuple[str, asyncio.Event, list[str]],
) -> None:
    """In an app, four handlers call ``get_cvm`` on a fresh client whose first request hangs:
    the other three are answered while it still hangs (the first contact holds them for at most
    its bound), and it is answered once released."""
    base_url, release, answered = slow_first
    client = client_for(base_url)
    async with asyncio.timeout(10), client:
        first = asyncio.create_task(client.get_cvm(1))
        await asyncio.sleep(0)  # the first call's request goes out first, alone
        others = await asyncio.gather(*(client.get_cvm(n) for n in (2, 3, 4)))
        still_waiting = not first.done()
        release.set()
        slow = await first
    assert still_waiting
    assert [cvm.id for cvm in others] == [2, 3, 4]
    assert slow.id == 1
    assert sorted(answered[:3]) == ["2", "3", "4"]
    assert answered[3] == "1"


async def test_an_api_that_answered_before_is_retried_not_called_unreachable(
    client_for: Callable[..., PhalaClient],
) -> None:
    """Once the API has answered, a later outage fails each id with its own connection error
    after its attempts; the sweep is not ended as unreachable."""
    async with PhalaSimulator(cvms=20) as sim:
        client = client_for(sim, max_attempts=2)
        async with asyncio.timeout(30), client:
            assert (await client.get_cvm(1)).id == 1
            await sim.close()
            results = await sweep(client, [str(n) for n in range(2, 12)])
    assert len(results) == 10
    assert {type(result.error) for result in results} == {APIConnectionError}


@pytest.mark.slow  # twelve seconds of a 100/s limit
async def test_two_clients_on_one_limit_share_it_fairly(
    client_for: Callable[..., PhalaClient],
) -> None:
    """Two clients, one by API key and one by token, sweep 600 ids each against one 100/s
    limit: both finish every id, throttled answers stay under 10% of requests, and while both
    run each gets between a third and two thirds of the answers."""
    async with PhalaSimulator(cvms=1200, rate_limit=100, rate_limit_retry_after=1) as sim:
        by_key = client_for(sim, concurrency=16, max_attempts=20)
        by_token = client_for(
            sim.base_url, api_key=None, token=sim.token, concurrency=16, max_attempts=20
        )
        async with asyncio.timeout(60), by_key, by_token:
            one, two = await asyncio.gather(
                sweep(by_key, [str(n) for n in range(1, 601)]),
                sweep(by_token, [str(n) for n in range(601, 1201)]),
            )
        log = sim.request_log
    assert sum(result.ok for result in one + two) == 1200
    throttled = sum(1 for record in log if record.status == 429)
    assert throttled <= 0.10 * len(log)
    by_key_answers = ["x-api-key" in record.header_names for record in log if record.status == 200]
    share = by_key_share(by_key_answers)
    assert 1 / 3 <= share <= 2 / 3


def by_key_share(answers: list[bool]) -> float:
    """The share of ``answers`` (True: the key's client) that went to the key's client, up to
    the last answer of whichever client finished first."""
    last_key = len(answers) - 1 - answers[::-1].index(True)
    last_token = len(answers) - 1 - answers[::-1].index(False)
    both = answers[: min(last_key, last_token) + 1]
    return sum(both) / len(both)

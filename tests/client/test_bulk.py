"""Tests for sweeps over many ids: ``stream_cvms`` and ``get_cvms`` (``_bulk``)."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from phala_async import (
    ConfigurationError,
    CvmResult,
    InvalidCvmIdError,
    NotFoundError,
    PhalaClient,
)
from phala_async.testing import DEFAULT_FAULTS, Fault, PhalaSimulator

WORKER_PREFIX = "phala_async sweep worker"
# Every default fault but the delay, which would only make the sweep wait out timeouts.
SWEEP_FAULTS = [fault for fault in DEFAULT_FAULTS if fault is not Fault.DELAY]


#: The workers of a sweep at concurrency 4: four that read ids, sixteen for ids waiting to retry.
POOL_OF_4 = 4 + 4 * 4


def sweep_workers() -> list[asyncio.Task[Any]]:
    """The sweep worker tasks still running in this loop."""
    return [
        task
        for task in asyncio.all_tasks()
        if task.get_name().startswith(WORKER_PREFIX) and not task.done()
    ]


async def collect(stream: AsyncIterator[CvmResult]) -> list[CvmResult]:
    """Every result of a stream, in the order they came."""
    return [result async for result in stream]


@pytest.fixture
async def slow_sim() -> AsyncIterator[PhalaSimulator]:
    """A simulator answering after 50 ms, so a sweep is still running when a test acts."""
    async with PhalaSimulator(cvms=50, latency=0.05) as sim:
        yield sim


# -- the big sweep -------------------------------------------------------------------------------


async def test_sweep_of_2000_ids_with_faults_gives_one_ok_result_per_id(
    client_for: Callable[..., PhalaClient],
) -> None:
    """2,000 ids with 20% injected faults give exactly one result per id, every one ok."""
    faulty = PhalaSimulator(
        cvms=2000, fault_rate=0.2, faults=SWEEP_FAULTS, retry_after=0, seed=20251028
    )
    results: list[CvmResult] = []
    async with (
        faulty as sim,
        client_for(sim, max_attempts=10, timeout=2.0, concurrency=32) as client,
    ):
        try:
            async with asyncio.timeout(15):
                async for result in client.stream_cvms(range(1, 2001)):
                    results.append(result)
        except TimeoutError:
            pytest.fail(
                f"only {len(results)} of 2000 results within 15 s: the server saw "
                f"{sim.total_requests} requests; client stats {client.stats}"
            )
    counts = collections.Counter(result.cvm_id for result in results)
    assert len(results) == 2000
    assert set(counts) == set(range(1, 2001))
    assert max(counts.values()) == 1
    assert [result for result in results if not result.ok] == []
    assert sim.status_counts["reset"] > 0  # faults really were injected


async def test_every_server_request_is_a_first_attempt_or_a_counted_retry(
    client_for: Callable[..., PhalaClient],
) -> None:
    """In a faulty sweep the server sees exactly one request per id plus one per retry and one
    per resend after a reset on a pooled connection (a reconnect)."""
    faulty = PhalaSimulator(
        cvms=2000, fault_rate=0.2, faults=SWEEP_FAULTS, retry_after=0, seed=20251028
    )
    async with faulty as sim:
        # Adaptive pacing is off: this test is about counting, not about how fast it goes.
        client = client_for(sim, max_attempts=10, timeout=2.0, concurrency=32, adaptive=False)
        async with asyncio.timeout(20), client:
            results = await collect(client.stream_cvms(range(1, 2001)))
        assert client.stats.retries > 200
        stats = client.stats
        assert sim.total_requests == len(results) + stats.retries + stats.reconnects
        assert sum(result.attempts for result in results) + stats.reconnects == sim.total_requests


# -- which ids are fetched -----------------------------------------------------------------------


async def test_duplicates_are_fetched_once(client: PhalaClient, simulator: PhalaSimulator) -> None:
    """An id given several times yields one result and one request."""
    async with asyncio.timeout(10):
        results = await collect(client.stream_cvms([1, 2, 3, 2, 1, 3, 3]))
    assert sorted(result.cvm_id for result in results) == [1, 2, 3]
    assert simulator.requests == collections.Counter({"1": 1, "2": 1, "3": 1})


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param(lambda doc: doc["id"], lambda doc: str(doc["id"]), id="int-and-str"),
        pytest.param(
            lambda doc: doc["vm_uuid"], lambda doc: doc["vm_uuid"].replace("-", ""), id="uuid"
        ),
        pytest.param(lambda doc: doc["app_id"], lambda doc: f"app_{doc['app_id']}", id="app-id"),
    ],
)
async def test_forms_that_normalise_alike_are_fetched_once(
    client: PhalaClient,
    simulator: PhalaSimulator,
    first: Callable[[dict[str, Any]], str | int],
    second: Callable[[dict[str, Any]], str | int],
) -> None:
    """Two spellings of one id (``1`` and ``"1"``...) give one result and one request."""
    document = simulator.cvm(4)
    async with asyncio.timeout(10):
        results = await collect(client.stream_cvms([first(document), second(document)]))
    assert [result.cvm_id for result in results] == [first(document)]
    assert simulator.total_requests == 1


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param("../x", id="path-traversal"),
        pytest.param(None, id="none"),
        pytest.param(b"1", id="bytes"),
        pytest.param(-1, id="negative"),
        pytest.param(10**5000, id="huge-int"),
    ],
)
async def test_invalid_id_is_an_error_result_and_the_sweep_goes_on(
    client: PhalaClient, simulator: PhalaSimulator, bad: Any
) -> None:
    """An invalid id yields an error result with no attempt, and the other ids are fetched."""
    async with asyncio.timeout(10):
        results = await collect(client.stream_cvms([1, bad, 2, 3]))
    [failed] = [result for result in results if not result.ok]
    assert isinstance(failed.error, InvalidCvmIdError)
    assert failed.attempts == 0
    assert sorted(result.cvm_id for result in results if result.ok) == [1, 2, 3]
    assert simulator.total_requests == 3


def _sync_ids() -> Iterator[int]:
    yield from range(1, 21)


async def _async_ids() -> AsyncIterator[int]:
    for n in range(1, 21):
        await asyncio.sleep(0)
        yield n


@pytest.mark.parametrize(
    "make_ids",
    [
        pytest.param(lambda: list(range(1, 21)), id="list"),
        pytest.param(_sync_ids, id="sync-generator"),
        pytest.param(_async_ids, id="async-generator"),
    ],
)
async def test_any_iterable_of_ids_is_accepted(
    client: PhalaClient, make_ids: Callable[[], Any]
) -> None:
    """Lists, generators and async generators of ids all give one result per id."""
    async with asyncio.timeout(10):
        results = await collect(client.stream_cvms(make_ids()))
    assert sorted(result.cvm_id for result in results) == list(range(1, 21))
    assert all(result.ok for result in results)


def test_a_single_string_is_refused(client: PhalaClient) -> None:
    """A lone string is not mistaken for an iterable of one-character ids."""
    with pytest.raises(TypeError, match="str"):
        client.stream_cvms("123")


def test_sweep_concurrency_above_the_clients_is_refused(client: PhalaClient) -> None:
    """A sweep cannot ask for more concurrency than its client allows."""
    with pytest.raises(ConfigurationError, match="concurrency"):
        client.stream_cvms([1], concurrency=client.concurrency + 1)


async def test_ids_are_read_lazily(
    make_client: Callable[..., PhalaClient],
) -> None:
    """Taking 50 results from a generator of a million ids pulls only a few more than 50."""
    pulled = 0

    def ids() -> Iterator[int]:
        nonlocal pulled
        for n in range(1, 1_000_001):
            pulled += 1
            yield n

    client = make_client(concurrency=8)
    stream = client.stream_cvms(ids())
    taken = 0
    async with asyncio.timeout(10):
        async for _ in stream:
            taken += 1
            if taken == 50:
                break
        await stream.aclose()
    assert taken == 50
    assert 50 <= pulled <= 50 + 3 * 8


# -- how many at once --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client_concurrency", "sweep_concurrency", "expected"),
    [
        pytest.param(8, None, 8, id="client-limit"),
        pytest.param(8, 3, 3, id="sweep-limit"),
    ],
)
async def test_concurrency_never_exceeds_the_limit(
    client_concurrency: int,
    sweep_concurrency: int | None,
    expected: int,
    client_for: Callable[..., PhalaClient],
) -> None:
    """The server never sees more requests at once than the limit, and does reach it."""
    async with PhalaSimulator(cvms=50, latency=0.02) as sim:
        client = client_for(sim, concurrency=client_concurrency)
        async with asyncio.timeout(10), client:
            stream = client.stream_cvms(range(1, 51), concurrency=sweep_concurrency)
            results = await collect(stream)
        assert len(results) == 50
        assert sim.max_in_flight == expected


# -- get_cvms ----------------------------------------------------------------------------------


async def test_get_cvms_keeps_input_order_with_one_entry_per_input(
    client: PhalaClient, simulator: PhalaSimulator
) -> None:
    """``get_cvms`` returns one result per given id, in the given order, ids as given."""
    ids: list[Any] = [3, 1, 999, 3, "1", "../x", 2]
    async with asyncio.timeout(10):
        results = await client.get_cvms(ids)
    assert [result.cvm_id for result in results] == ids
    assert [result.ok for result in results] == [True, True, False, True, True, False, True]
    assert [result.cvm.id for result in results if result.cvm is not None] == [3, 1, 3, 1, 2]


async def test_get_cvms_duplicates_share_one_fetch(
    client: PhalaClient, simulator: PhalaSimulator
) -> None:
    """Duplicates in ``get_cvms`` share the result of a single request."""
    async with asyncio.timeout(10):
        results = await client.get_cvms([3, 1, 3, "1"])
    assert results[0].cvm is results[2].cvm
    assert results[1].cvm is results[3].cvm
    assert simulator.requests == collections.Counter({"3": 1, "1": 1})


async def test_get_cvms_reports_failures_instead_of_raising(client: PhalaClient) -> None:
    """A failing or invalid id becomes an error result; ``get_cvms`` itself does not raise."""
    async with asyncio.timeout(10):
        results = await client.get_cvms([999, "../x", 1])
    assert [type(result.error) for result in results] == [
        NotFoundError,
        InvalidCvmIdError,
        type(None),
    ]
    assert [result.attempts for result in results] == [1, 0, 1]


# -- stopping early ----------------------------------------------------------------------------


async def test_aclose_mid_sweep_leaves_no_worker(
    slow_sim: PhalaSimulator, client_for: Callable[..., PhalaClient]
) -> None:
    """Closing a stream after its first result ends every worker of the sweep."""
    async with asyncio.timeout(10), client_for(slow_sim, concurrency=4) as client:
        stream = client.stream_cvms(range(1, 51))
        await anext(stream)
        running = len(sweep_workers())
        await stream.aclose()
        assert (running, sweep_workers()) == (POOL_OF_4, [])


async def test_break_out_of_async_with_leaves_no_worker(
    slow_sim: PhalaSimulator, client_for: Callable[..., PhalaClient]
) -> None:
    """Leaving ``async with`` by ``break`` ends every worker of the sweep."""
    running = 0
    async with asyncio.timeout(10), client_for(slow_sim, concurrency=4) as client:
        async with client.stream_cvms(range(1, 51)) as results:
            async for _ in results:
                running = len(sweep_workers())
                break
        assert (running, sweep_workers()) == (POOL_OF_4, [])


class Seen:
    """The results a consumer task has taken, and an event set once it has ``wanted`` of them."""

    def __init__(self, wanted: int) -> None:
        self.results: list[CvmResult] = []
        self.wanted = wanted
        self.enough = asyncio.Event()

    def add(self, result: CvmResult) -> None:
        self.results.append(result)
        if len(self.results) >= self.wanted:
            self.enough.set()


async def _consume_plainly(stream: AsyncIterator[CvmResult], seen: Seen) -> None:
    async for result in stream:
        seen.add(result)


async def _consume_slowly(stream: AsyncIterator[CvmResult], seen: Seen) -> None:
    async for result in stream:
        seen.add(result)
        await asyncio.sleep(30)  # busy with the result when the cancellation comes


async def _consume_slowly_in_async_with(stream: AsyncIterator[CvmResult], seen: Seen) -> None:
    async with stream as results:  # type: ignore[attr-defined]
        async for result in results:
            seen.add(result)
            await asyncio.sleep(30)


@pytest.mark.parametrize(
    "consume",
    [
        pytest.param(_consume_plainly, id="waiting-for-a-result"),
        pytest.param(_consume_slowly, id="busy-in-the-loop-body"),
        pytest.param(_consume_slowly_in_async_with, id="busy-inside-async-with"),
    ],
)
async def test_cancelling_the_consumer_leaves_no_worker(
    slow_sim: PhalaSimulator,
    consume: Callable[[AsyncIterator[CvmResult], Seen], Any],
    client_for: Callable[..., PhalaClient],
) -> None:
    """Cancelling the task that iterates a sweep ends every worker of that sweep."""
    seen = Seen(wanted=1)
    async with asyncio.timeout(10), client_for(slow_sim, concurrency=4) as client:
        task = asyncio.create_task(consume(client.stream_cvms(range(1, 51)), seen))
        await seen.enough.wait()
        workers = sweep_workers()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        # A short grace for cleanup the cancellation started; a leaked worker never ends.
        _, still_running = await asyncio.wait(workers, timeout=1.0)
        assert task.cancelled()
        assert (len(workers), still_running) == (POOL_OF_4, set())


async def test_client_close_closes_the_connection_pool(
    slow_sim: PhalaSimulator, client_for: Callable[..., PhalaClient]
) -> None:
    """After a sweep stopped early, closing the client closes its connector."""
    client = client_for(slow_sim, concurrency=4)
    async with asyncio.timeout(10):
        async with client.stream_cvms(range(1, 51)) as results:
            async for _ in results:
                break
        session = (
            client._pipeline.shared.session
        )  # the client's own pool; read only to see it closed
        assert session is not None
        connector = session.connector
        assert connector is not None
        assert connector.closed is False
        await client.aclose()
    assert session.closed is True
    assert connector.closed is True
    assert sweep_workers() == []


def _failing_sync_ids() -> Iterator[int]:
    yield from (1, 2, 3)
    raise RuntimeError("the id source failed")


async def _failing_async_ids() -> AsyncIterator[int]:
    for n in (1, 2, 3):
        yield n
    raise RuntimeError("the id source failed")


@pytest.mark.parametrize(
    "make_ids",
    [
        pytest.param(_failing_sync_ids, id="sync-generator"),
        pytest.param(_failing_async_ids, id="async-generator"),
    ],
)
async def test_id_source_error_surfaces_after_fetched_results(
    client: PhalaClient, make_ids: Callable[[], Any]
) -> None:
    """An exception from the ids generator reaches the consumer after the results before it."""
    seen = Seen(wanted=3)
    with pytest.raises(RuntimeError, match="the id source failed"):
        async with asyncio.timeout(10):
            await _consume_plainly(client.stream_cvms(make_ids()), seen)
    assert sorted(result.cvm_id for result in seen.results) == [1, 2, 3]
    assert all(result.ok for result in seen.results)
    assert sweep_workers() == []

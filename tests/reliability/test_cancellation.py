"""Cancellation and shutdown: a sweep stopped at any point leaves no task running and the
connector closed, and closing the client under a running sweep ends it with a clear error."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable

import pytest

from phala_async import ClientClosedError, CvmResult, CvmStream, PhalaClient
from phala_async.testing import PhalaSimulator

WORKER = "phala_async sweep worker"
TRIALS = 300
TRIALS_BOUND = 120.0  # seconds for all trials together
IDS = 120
STOP_BOUND = 2.0  # seconds a stopped sweep may take to end
MODES = ("break", "stream_aclose", "cancel", "cancel_bare", "cancel_early")
RACE_IDS = 64
RACE_TRIALS = 30
RACE_TIMEOUT = 0.05  # the client timeout in the race tests; every answer takes 0.5 s
RACE_BOUND = 0.5  # seconds a cancelled sweep may take to end in the race tests


def _workers() -> list[asyncio.Task[object]]:
    return [task for task in asyncio.all_tasks() if task.get_name().startswith(WORKER)]


async def _as_async(ids: Iterable[int]) -> AsyncIterator[int]:
    for cvm_id in ids:
        yield cvm_id


@pytest.fixture
async def slow_simulator() -> AsyncIterator[PhalaSimulator]:
    """A simulator answering after a few milliseconds, failing one request in ten."""
    async with PhalaSimulator(
        cvms=IDS, latency=0.002, fault_rate=0.1, faults=["503", "reset", "delay"], fault_delay=0.05
    ) as simulator:
        yield simulator


async def _stop_at_random(client: PhalaClient, rng: random.Random, mode: str) -> int:
    """Run one sweep and stop it the way ``mode`` says; return how many results were read."""
    ids: Iterable[int] = range(1, IDS + 1)
    source = _as_async(ids) if rng.random() < 0.5 else ids
    consumed = 0
    if mode in ("break", "stream_aclose"):
        stop_after = rng.randrange(IDS)
        stream = client.stream_cvms(source)
        if mode == "break":
            async with stream:
                async for _ in stream:
                    consumed += 1
                    if consumed >= stop_after:
                        break
        else:
            async for _ in stream:
                consumed += 1
                if consumed >= stop_after:
                    break
            await stream.aclose()
        return consumed

    async def consume(stream: CvmStream) -> None:
        nonlocal consumed
        if mode == "cancel_bare":  # no `async with`: only the iterator can stop the sweep
            async for _ in stream:
                consumed += 1
            return
        async with stream:
            async for _ in stream:
                consumed += 1
                if rng.random() < 0.3:
                    await asyncio.sleep(0)

    task = asyncio.create_task(consume(client.stream_cvms(source)))
    await asyncio.sleep(0 if mode == "cancel_early" else rng.uniform(0, 0.05))
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return consumed


async def _workers_after(grace: float) -> list[str]:
    """Names of sweep workers still alive after ``grace`` seconds (polled)."""
    deadline = time.perf_counter() + grace
    # Polling: no event tells when another library's tasks have ended.
    while (left := _workers()) and time.perf_counter() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.005)
    return [task.get_name() for task in left]


@pytest.mark.slow
async def test_cancelling_sweeps_at_random_points_leaves_nothing_running(
    slow_simulator: PhalaSimulator,
) -> None:
    """Three hundred sweeps stopped at random points (seeded) each end within a bound and leave
    no sweep worker running, and closing their client closes its session and connector."""
    rng = random.Random(20_251_128)
    modes: Counter[str] = Counter()
    consumed_total = 0
    hung: list[tuple[int, str]] = []
    left_running: list[tuple[int, str, list[str]]] = []
    left_after_close: list[tuple[int, str, list[str]]] = []
    started = time.perf_counter()
    async with asyncio.timeout(TRIALS_BOUND):
        for trial in range(TRIALS):
            mode = rng.choice(MODES)
            modes[mode] += 1
            client = PhalaClient(
                api_key=slow_simulator.api_key,
                base_url=slow_simulator.base_url,
                timeout=0.03,
                concurrency=rng.choice((1, 4, 16)),
                backoff_initial=0.001,
                backoff_max=0.005,
            )
            try:
                stopping = asyncio.create_task(_stop_at_random(client, rng, mode))
                done, _ = await asyncio.wait([stopping], timeout=STOP_BOUND)
                if done:
                    consumed_total += stopping.result()
                else:
                    hung.append((trial, mode))
                    stopping.cancel()  # cancelling it again frees the test to go on
                    await asyncio.gather(stopping, return_exceptions=True)
                if leftover := await _workers_after(0.1):
                    left_running.append((trial, mode, leftover))
                session = client._pipeline.shared.session
                connector = session.connector if session is not None else None
            finally:
                await client.aclose()
            assert session is None or session.closed
            assert connector is None or connector.closed
            if leftover := await _workers_after(0.1):
                left_after_close.append((trial, mode, leftover))
                for task in _workers():  # so that one failure does not spill into later trials
                    task.cancel()
    wall = time.perf_counter() - started
    print(
        f"\ncancellation: {TRIALS} trials in {wall:.1f}s, modes {dict(sorted(modes.items()))}, "
        f"{consumed_total} results read before stopping; stops that hung past {STOP_BOUND}s: "
        f"{hung}; trials that left workers running: {len(left_running)} after the stop, "
        f"{len(left_after_close)} after aclose()"
    )
    assert set(modes) == set(MODES)
    assert hung == []
    assert left_running == []
    assert left_after_close == []


@pytest.fixture
async def timing_out_simulator() -> AsyncIterator[PhalaSimulator]:
    """A simulator that answers every request after half a second."""
    async with PhalaSimulator(
        cvms=RACE_IDS, fault_rate=1.0, faults=["delay"], fault_delay=0.5
    ) as simulator:
        yield simulator


async def test_cancelling_a_sweep_as_its_requests_time_out_stops_it(
    timing_out_simulator: PhalaSimulator,
) -> None:
    """Sweeps cancelled at about the moment their requests reach the client timeout (seeded
    jitter) all end within a bound: no cancellation is lost to the timeout."""
    rng = random.Random(7)
    hung = 0
    started = time.perf_counter()
    for _ in range(RACE_TRIALS):
        async with PhalaClient(
            api_key=timing_out_simulator.api_key,
            base_url=timing_out_simulator.base_url,
            timeout=RACE_TIMEOUT,
            concurrency=16,
            backoff_initial=0.001,
            backoff_max=0.002,
        ) as client:

            async def consume(client: PhalaClient = client) -> None:
                async for _ in client.stream_cvms(range(1, RACE_IDS + 1)):
                    pass

            task = asyncio.create_task(consume())
            await asyncio.sleep(RACE_TIMEOUT + rng.uniform(-0.003, 0.003))
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=RACE_BOUND)
            if not done:
                hung += 1
                task.cancel()  # cancelling it again frees the test to go on
            await asyncio.gather(task, return_exceptions=True)
    wall = time.perf_counter() - started
    print(
        f"\ncancel at the timeout: {hung} of {RACE_TRIALS} sweeps still running "
        f"{RACE_BOUND}s after cancel() ({wall:.1f}s)"
    )
    assert hung == 0
    assert _workers() == []


async def test_cancelling_get_cvm_as_it_times_out_raises_cancelled_error(
    timing_out_simulator: PhalaSimulator,
) -> None:
    """``get_cvm`` calls cancelled at about the moment their request times out (seeded jitter)
    all end in CancelledError, not in a retry or an APITimeoutError."""
    rng = random.Random(11)
    outcomes: Counter[str] = Counter()
    async with PhalaClient(
        api_key=timing_out_simulator.api_key,
        base_url=timing_out_simulator.base_url,
        timeout=RACE_TIMEOUT,
        # Retries go on past the cancel, so a call can only end by the cancel or by losing it.
        max_attempts=10,
        retry_budget=False,
        concurrency=16,
        backoff_initial=0.001,
        backoff_max=0.002,
    ) as client:
        for _ in range(RACE_TRIALS):
            tasks = [asyncio.create_task(client.get_cvm(n)) for n in range(1, 17)]
            await asyncio.sleep(RACE_TIMEOUT + rng.uniform(-0.003, 0.003))
            for task in tasks:
                task.cancel()
            for outcome in await asyncio.gather(*tasks, return_exceptions=True):
                outcomes[type(outcome).__name__] += 1
    print(f"\nget_cvm cancelled at the timeout: outcomes {dict(outcomes)}")
    assert outcomes == {"CancelledError": 16 * RACE_TRIALS}


async def test_closing_the_client_ends_a_waiting_sweep_with_client_closed_error() -> None:
    """Closing the client while its sweep's consumer waits for a result ends the sweep with
    ClientClosedError at once, not a hang."""
    async with PhalaSimulator(cvms=IDS, latency=0.05) as simulator:
        client = PhalaClient(api_key=simulator.api_key, base_url=simulator.base_url, concurrency=4)
        results: list[CvmResult] = []
        two_read = asyncio.Event()  # closed once the sweep is surely running, without a sleep

        async def consume() -> None:
            async with client.stream_cvms(range(1, IDS + 1)) as stream:
                async for result in stream:
                    results.append(result)
                    if len(results) >= 2:
                        two_read.set()

        task = asyncio.create_task(consume())
        async with asyncio.timeout(10):
            await two_read.wait()
        closed_at = time.perf_counter()
        await client.aclose()
        with pytest.raises(ClientClosedError):
            async with asyncio.timeout(STOP_BOUND):
                await task
        ended_after = time.perf_counter() - closed_at
    print(
        f"\nclient closed under a waiting sweep: {len(results)} of {IDS} results, the sweep "
        f"ended {ended_after * 1000:.1f} ms after aclose()"
    )
    assert 2 <= len(results) < IDS
    assert ended_after < STOP_BOUND
    assert _workers() == []


async def test_closing_the_client_ends_a_busy_sweep_after_the_buffered_results() -> None:
    """Closing the client while the consumer is busy elsewhere lets it read the results already
    buffered, then ends the sweep with ClientClosedError."""
    async with PhalaSimulator(cvms=IDS) as simulator:
        client = PhalaClient(api_key=simulator.api_key, base_url=simulator.base_url, concurrency=4)
        stream = client.stream_cvms(range(1, IDS + 1))
        first = await anext(stream)
        await asyncio.sleep(0.1)  # the workers fill the stream's buffer meanwhile
        await client.aclose()
        buffered: list[CvmResult] = []

        async def drain() -> None:
            async with asyncio.timeout(STOP_BOUND):
                async for result in stream:
                    buffered.append(result)

        with pytest.raises(ClientClosedError):
            await drain()
    print(f"\nclient closed under a busy sweep: 1 + {len(buffered)} buffered results read")
    assert first.ok
    assert 0 < len(buffered) < IDS - 1
    assert all(result.ok for result in buffered)
    assert _workers() == []


async def test_closing_the_stream_from_another_task_ends_the_consumer() -> None:
    """``aclose()`` on a sweep from another task ends the iteration of the task consuming it,
    rather than leaving it waiting forever."""
    async with (
        PhalaSimulator(cvms=IDS, latency=0.01) as simulator,
        PhalaClient(
            api_key=simulator.api_key, base_url=simulator.base_url, concurrency=4
        ) as client,
    ):
        stream = client.stream_cvms(range(1, IDS + 1))
        results: list[CvmResult] = []

        async def consume() -> None:
            async for result in stream:
                results.append(result)

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.1)
        await stream.aclose()
        done, _ = await asyncio.wait([task], timeout=STOP_BOUND)
        hung = not done
        if hung:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    print(
        f"\nstream closed from another task: {len(results)} results read, consumer "
        f"{'still waiting after ' + str(STOP_BOUND) + 's' if hung else 'ended'}"
    )
    assert not hung
    assert task.exception() is None
    assert 0 < len(results) < IDS
    assert _workers() == []

"""Tests for how a sweep uses its slots: retry waits are parked, never held, and stay bounded."""

from __future__ import annotations

import asyncio
import collections
import itertools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from phala_async import AuthenticationError, CvmResult, NotFoundError, PhalaClient, _http, _pipeline
from phala_async.testing import Fault, PhalaSimulator

FAILING = (1, 2, 3)


async def test_a_waiting_id_leaves_its_slot_to_the_others(
    client_for: Callable[..., PhalaClient],
) -> None:
    """While three ids wait out a long backoff twice, the other 397 are all fetched first, with
    every slot busy; only then do the retries reach the server."""
    async with PhalaSimulator(cvms=400, latency=0.01) as sim:
        for cvm_id in FAILING:
            sim.script(cvm_id, Fault.HTTP_503, Fault.HTTP_503, Fault.OK)
        # Waits of 1.5 to 3 s: four slots fetch 397 ids in about 1 s, so the retries can only
        # come last if no slot sleeps; with three of four asleep it would take about 4 s.
        client = client_for(sim, concurrency=4, backoff_initial=3.0, backoff_max=3.0)
        async with asyncio.timeout(30), client:
            stream = client.stream_cvms(range(1, 401))
            async with stream:
                results = [result async for result in stream]
        log = sim.request_log
    keys = [record.cvm_key for record in log]
    retried = [index for index, key in enumerate(keys) if key in {"1", "2", "3"}][3:]
    others = [index for index, key in enumerate(keys) if key not in {"1", "2", "3"}]
    assert len(results) == 400
    assert all(result.ok for result in results)
    assert {r.cvm_id: r.attempts for r in results if r.cvm_id in FAILING} == dict.fromkeys(
        FAILING, 3
    )
    assert len(retried) == 6
    assert max(others) < min(retried)
    assert stream.most_parked == 3
    assert sim.max_in_flight == 4


async def test_parked_ids_stay_bounded_on_a_million_lazy_ids(
    client_for: Callable[..., PhalaClient],
) -> None:
    """On a lazily generated stream of a million ids with many retries, the sweep never reads
    more than a small multiple of its concurrency ahead of what it has yielded."""
    concurrency = 8
    pulled = 0
    ahead: list[int] = []

    def ids() -> Iterator[int]:
        nonlocal pulled
        for n in range(1, 1_000_001):
            pulled += 1
            yield n

    faulty = PhalaSimulator(cvms=3000, fault_rate=0.4, faults=["503"], seed=7)
    async with faulty as sim:
        client = client_for(sim, concurrency=concurrency, backoff_initial=0.05, backoff_max=0.1)
        taken = 0
        async with asyncio.timeout(30), client:
            stream = client.stream_cvms(ids())
            async with stream:
                async for _ in stream:
                    taken += 1
                    ahead.append(pulled - taken)
                    if taken == 1500:
                        break
    bound = concurrency + 4 * concurrency + concurrency  # workers, parked, the result queue
    assert taken == 1500
    assert pulled < 1_000_000
    assert max(ahead) <= bound
    assert 0 < stream.most_parked <= 4 * concurrency


async def test_a_refused_credential_ends_a_500_id_sweep_after_one_request(
    client_for: Callable[..., PhalaClient],
) -> None:
    """A wrong key sends exactly one request for a 500-id sweep, which then raises the 401."""
    async with PhalaSimulator(cvms=500) as sim:
        client = client_for(sim, api_key="phak_wrong_key_for_this_test", concurrency=16)
        seen: list[CvmResult] = []

        async def sweep() -> None:
            async with client.stream_cvms(range(1, 501)) as stream:
                async for result in stream:
                    seen.append(result)

        async with asyncio.timeout(10), client:
            with pytest.raises(AuthenticationError) as caught:
                await sweep()
        assert sim.total_requests == 1
    assert seen == []
    assert caught.value.status_code == 401


async def test_get_cvms_with_a_refused_credential_reports_every_id_unsent(
    client_for: Callable[..., PhalaClient],
) -> None:
    """``get_cvms`` does not raise on a refused credential: each id gets the 401, one sent."""
    async with PhalaSimulator(cvms=50) as sim:
        client = client_for(sim, api_key="phak_wrong_key_for_this_test")
        async with asyncio.timeout(10), client:
            results = await client.get_cvms(range(1, 51))
        assert sim.total_requests == 1
    assert [result.cvm_id for result in results] == list(range(1, 51))
    assert all(isinstance(result.error, AuthenticationError) for result in results)
    assert [result.error.cvm_id for result in results if result.error] == list(range(1, 51))
    assert sum(result.attempts for result in results) <= 1


def test_stats_are_a_snapshot() -> None:
    """Two reads of ``stats`` are separate values: the first does not change afterwards."""
    client = PhalaClient(api_key="phak_test", base_url="http://127.0.0.1:9/api/v1")
    before = client.stats
    client._pipeline.governor.counters.call_ended(None)  # as a finished call would
    after = client.stats
    assert before is not after
    assert (before.ok, after.ok) == (0, 1)
    assert collections.Counter(before.failed) == collections.Counter()


async def test_a_sweep_looks_up_no_task_per_request(
    client_for: Callable[..., PhalaClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep's requests are bounded by the worker's task, handed down, not looked up: on
    Python 3.11 each ``asyncio.current_task()`` or ``get_running_loop()`` is a system call, two
    a request before. Over 200 ids the request path (the pipeline and the exchange) looks up
    neither; the simulator serving them does, once a request, which shows the counting works."""
    lookups = collections.Counter[str]()
    current_task, get_running_loop = asyncio.current_task, asyncio.get_running_loop

    def caller() -> str:
        return Path(sys._getframe(2).f_code.co_filename).name

    def counted_task(loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Task[Any] | None:
        lookups[caller()] += 1
        return current_task(loop)

    def counted_loop() -> asyncio.AbstractEventLoop:
        lookups[caller()] += 1
        return get_running_loop()

    async with PhalaSimulator(cvms=200) as sim:
        client = client_for(sim, concurrency=8)
        async with asyncio.timeout(30), client:
            await client.get_cvm(1)  # the session and the pool made
            monkeypatch.setattr(asyncio, "current_task", counted_task)
            monkeypatch.setattr(asyncio, "get_running_loop", counted_loop)
            results = [result async for result in client.stream_cvms(range(1, 201))]
            monkeypatch.undo()
        requests = sim.total_requests - 1
    assert all(result.ok for result in results)
    assert requests == 200
    assert lookups["_simulator.py"] >= requests
    assert lookups["_pipeline.py"] + lookups["_http.py"] == 0


async def test_a_worker_sends_its_next_request_in_a_later_turn_of_the_loop(
    client_for: Callable[..., PhalaClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep's worker hands its next request to the next turn of the event loop after its
    answer came: the requests of the workers answered in one turn go out together."""
    turn = 0

    def tick() -> None:
        nonlocal turn
        turn += 1
        if ticking:
            asyncio.get_running_loop().call_soon(tick)

    spans = collections.defaultdict[object, list[list[int]]](list)
    original = _http.Exchange.get

    async def recorded(self: _http.Exchange, *args: Any, **kwargs: Any) -> _http.Answer:
        span = [turn, -1]
        spans[asyncio.current_task()].append(span)
        try:
            return await original(self, *args, **kwargs)
        finally:
            span[1] = turn

    async with PhalaSimulator(cvms=100) as sim:
        client = client_for(sim, concurrency=4)
        async with asyncio.timeout(30), client:
            monkeypatch.setattr(_http.Exchange, "get", recorded)
            ticking = True
            asyncio.get_running_loop().call_soon(tick)
            results = [result async for result in client.stream_cvms(range(1, 101))]
            ticking = False
    assert all(result.ok for result in results)
    assert sum(len(worker) for worker in spans.values()) == 100
    assert all(
        later[0] > earlier[1]
        for worker in spans.values()
        for earlier, later in itertools.pairwise(worker)
    )


async def test_a_final_first_failure_is_not_handed_to_the_retry_loop(
    client_for: Callable[..., PhalaClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An id whose first answer is final (a 404) fails after that one attempt without building
    tenacity's loop; an id whose first answer is retryable (a 503) goes through it and is
    fetched on its retry."""
    loops = 0
    original = _pipeline.retrying

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal loops
        loops += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(_pipeline, "retrying", counted)
    async with PhalaSimulator(cvms=10) as sim:
        sim.script(3, Fault.HTTP_503)
        client = client_for(sim, concurrency=4, backoff_initial=0.01, backoff_max=0.01)
        async with asyncio.timeout(30), client:
            results = {
                result.cvm_id: result
                async for result in client.stream_cvms([1, 3, *range(1001, 1021)])
            }
        requests = sim.total_requests
    missing = [results[cvm_id] for cvm_id in range(1001, 1021)]
    assert all(isinstance(result.error, NotFoundError) for result in missing)
    assert {result.attempts for result in missing} == {1}
    assert results[1].ok
    assert results[3].ok
    assert results[3].attempts == 2
    assert loops == 1
    assert requests == 23

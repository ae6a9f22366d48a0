"""Tests for what calls share: one request in flight per CVM, and the optional cache."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from phala_async import ConfigurationError, NotFoundError, PhalaClient
from phala_async._sharing import TTLCache
from phala_async.testing import Fault, PhalaSimulator


@pytest.fixture
async def slow_sim() -> PhalaSimulator:
    """A simulator answering after 50 ms, so that calls overlap."""
    async with PhalaSimulator(cvms=20, latency=0.05) as sim:
        yield sim


async def test_500_concurrent_calls_over_5_ids_send_5_requests(
    slow_sim: PhalaSimulator, client_for: Callable[..., PhalaClient]
) -> None:
    """Five hundred overlapping ``get_cvm`` calls for five CVMs send one request per CVM."""
    async with client_for(slow_sim, concurrency=16) as client:
        cvms = await asyncio.gather(*(client.get_cvm(n % 5 + 1) for n in range(500)))
        stats = client.stats
    assert [cvm.id for cvm in cvms] == [n % 5 + 1 for n in range(500)]
    assert slow_sim.total_requests == 5
    assert stats.coalesced == 495
    assert stats.requests == 5


async def test_ids_that_normalise_alike_share_one_request(
    slow_sim: PhalaSimulator, client_for: Callable[..., PhalaClient]
) -> None:
    """The integer id and its string form share one request."""
    async with client_for(slow_sim) as client:
        first, second = await asyncio.gather(client.get_cvm(3), client.get_cvm("3"))
    assert first is second
    assert slow_sim.total_requests == 1


async def test_each_caller_gets_the_error_with_its_own_id(
    slow_sim: PhalaSimulator, client_for: Callable[..., PhalaClient]
) -> None:
    """Two overlapping calls for a missing CVM each get a NotFoundError naming their own id."""
    async with client_for(slow_sim) as client:
        outcomes = await asyncio.gather(
            client.get_cvm(999), client.get_cvm("999"), return_exceptions=True
        )
    assert [type(outcome) for outcome in outcomes] == [NotFoundError, NotFoundError]
    assert [outcome.cvm_id for outcome in outcomes] == [999, "999"]  # type: ignore[union-attr]
    assert str(outcomes[1]).startswith("CVM '999': ")
    assert outcomes[0] is not outcomes[1]
    assert slow_sim.total_requests == 1


async def test_cancelling_one_caller_leaves_the_request_to_the_others(
    slow_sim: PhalaSimulator, client_for: Callable[..., PhalaClient]
) -> None:
    """One of three callers cancelled mid-request: the other two still get the CVM, from the
    same single request."""
    async with client_for(slow_sim) as client:
        tasks = [asyncio.create_task(client.get_cvm(4)) for _ in range(3)]
        await asyncio.sleep(0.01)
        tasks[0].cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert [cvm.id for cvm in results[1:]] == [4, 4]  # type: ignore[union-attr]
    assert slow_sim.total_requests == 1
    assert slow_sim.status_counts[200] == 1


async def test_when_every_caller_leaves_the_request_is_cancelled(
    slow_sim: PhalaSimulator, client_for: Callable[..., PhalaClient]
) -> None:
    """With both callers cancelled, the shared request is cancelled too: nothing is left."""
    async with client_for(slow_sim) as client:
        tasks = [asyncio.create_task(client.get_cvm(5)) for _ in range(2)]
        await asyncio.sleep(0.01)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0)
        assert len(client._pipeline.flights) == 0
        assert client.stats.in_flight == 0
        assert [cvm.id for cvm in [await client.get_cvm(5)]] == [5]
    assert slow_sim.total_requests == 2


async def test_a_sweep_and_a_call_for_the_same_cvm_share_a_request(
    slow_sim: PhalaSimulator, client_for: Callable[..., PhalaClient]
) -> None:
    """A ``get_cvm`` for a CVM a sweep is fetching joins the sweep's request."""
    async with client_for(slow_sim) as client:
        sweep = asyncio.create_task(client.get_cvms([7]))
        await asyncio.sleep(0.01)
        cvm = await client.get_cvm(7)
        results = await sweep
    assert cvm.id == 7
    assert [result.cvm_id for result in results if result.ok] == [7]
    assert slow_sim.total_requests == 1


async def test_a_call_that_joined_a_retrying_sweep_gets_its_answer(
    simulator: PhalaSimulator, client_for: Callable[..., PhalaClient]
) -> None:
    """A call joining a sweep's fetch that is waiting to retry gets the retried answer."""
    simulator.script(8, Fault.HTTP_503, Fault.OK)
    async with client_for(simulator, backoff_initial=0.1, backoff_max=0.1) as client:
        sweep = asyncio.create_task(client.get_cvms([8]))
        await asyncio.sleep(0.03)  # the sweep's first attempt failed; its retry is parked
        cvm = await client.get_cvm(8)
        results = await sweep
    assert cvm.id == 8
    assert [result.attempts for result in results] == [2]
    assert simulator.requests["8"] == 2


async def test_cache_answers_repeated_calls_without_a_request(
    simulator: PhalaSimulator, client_for: Callable[..., PhalaClient]
) -> None:
    """With ``cache_ttl``, a second call for a CVM is answered from the cache."""
    async with client_for(simulator, cache_ttl=60.0) as client:
        first = await client.get_cvm(1)
        again = [await client.get_cvm(1) for _ in range(49)]
        stats = client.stats
    assert all(cvm is first for cvm in again)
    assert simulator.total_requests == 1
    assert stats.cache_hits == 49


async def test_fresh_skips_the_cache(
    simulator: PhalaSimulator, client_for: Callable[..., PhalaClient]
) -> None:
    """``fresh=True`` sends a request even when the cache holds the CVM."""
    async with client_for(simulator, cache_ttl=60.0) as client:
        await client.get_cvm(1)
        await client.get_cvm(1, fresh=True)
    assert simulator.total_requests == 2


async def test_errors_are_never_cached(
    simulator: PhalaSimulator, client_for: Callable[..., PhalaClient]
) -> None:
    """A failed call is not cached: the next call asks the server again."""
    async with client_for(simulator, cache_ttl=60.0) as client:
        for _ in range(2):
            with pytest.raises(NotFoundError):
                await client.get_cvm(999)
    assert simulator.total_requests == 2


async def test_without_cache_ttl_every_call_sends_a_request(
    simulator: PhalaSimulator, client_for: Callable[..., PhalaClient]
) -> None:
    """The cache is off by default: two calls in turn send two requests."""
    async with client_for(simulator) as client:
        await client.get_cvm(1)
        await client.get_cvm(1)
    assert simulator.total_requests == 2


async def test_sweeps_fill_the_cache_but_do_not_read_it(
    simulator: PhalaSimulator, client_for: Callable[..., PhalaClient]
) -> None:
    """A sweep stores what it fetched for ``get_cvm``, yet itself always asks the server."""
    async with client_for(simulator, cache_ttl=60.0) as client:
        await client.get_cvms([1, 2])
        await client.get_cvms([1, 2])
        await client.get_cvm(2)
    assert simulator.requests["1"] == 2
    assert simulator.requests["2"] == 2


def test_cache_entries_expire_after_the_ttl() -> None:
    """An entry is returned until ``ttl`` seconds have passed, then dropped."""
    now = [100.0]
    cache: TTLCache[str] = TTLCache(5.0, 10, clock=lambda: now[0])
    cache.put("a", "value")
    now[0] += 4.9
    assert cache.get("a") == "value"
    now[0] += 0.2
    assert cache.get("a") is None
    assert len(cache) == 0


def test_cache_drops_the_least_recently_used_first() -> None:
    """Past ``size`` entries, the one used longest ago goes."""
    cache: TTLCache[int] = TTLCache(60.0, 2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"cache_ttl": -1}, "cache_ttl", id="negative-ttl"),
        pytest.param({"cache_ttl": float("inf")}, "cache_ttl", id="infinite-ttl"),
        pytest.param({"cache_size": 0}, "cache_size", id="zero-size"),
    ],
)
def test_bad_cache_settings_are_refused(options: dict[str, float], message: str) -> None:
    """A cache setting out of range fails at construction, naming the argument."""
    with pytest.raises(ConfigurationError, match=message):
        PhalaClient(api_key="phak_test", **options)  # type: ignore[arg-type]


async def test_a_client_refuses_a_second_event_loop(
    make_client: Callable[..., PhalaClient],
) -> None:
    """Using a client from another event loop raises EventLoopError, not a raw aiohttp error."""
    from phala_async import EventLoopError

    client = make_client()
    await client.get_cvm(1)

    def in_another_loop() -> BaseException | None:
        async def call() -> None:
            await client.get_cvm(1)

        try:
            asyncio.run(call())
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            return exc
        return None

    error = await asyncio.to_thread(in_another_loop)
    assert isinstance(error, EventLoopError)
    assert "belongs to the event loop that first used it" in str(error)

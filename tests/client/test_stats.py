"""Tests for ``client.stats``: every call counts once, and a snapshot serialises."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable

import pytest

from phala_async import APITimeoutError, ClientStats, NotFoundError, PhalaClient
from phala_async.testing import Fault, PhalaSimulator

ClientFactory = Callable[..., PhalaClient]


def calls_ended(stats: ClientStats) -> int:
    """What the equation counts: calls that ended in ``ok`` or in ``failed``."""
    return stats.ok + sum(stats.failed.values())


async def test_a_deadline_flood_counts_every_call(client_for: ClientFactory) -> None:
    """60 calls whose deadline cuts most of them short all count, the late ones as timeouts."""
    async with PhalaSimulator(cvms=60, latency=0.1) as sim:
        view = client_for(sim, concurrency=4).with_options(deadline=0.25)
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(view.get_cvm(i) for i in range(1, 61)), return_exceptions=True), 30
        )
        timeouts = sum(isinstance(outcome, APITimeoutError) for outcome in outcomes)
        stats = view.stats
    assert timeouts > 0
    assert stats.failed == {"APITimeoutError": timeouts}
    assert (calls_ended(stats), stats.ok, stats.cancelled) == (60, 60 - timeouts, 0)


async def test_a_deadline_bound_sweep_counts_every_id(client_for: ClientFactory) -> None:
    """A sweep through a view with a deadline counts each id once, the 5 slow ones timed out."""
    async with PhalaSimulator(cvms=40, fault_delay=5.0) as sim:
        for cvm_id in range(36, 41):
            sim.script(cvm_id, Fault.DELAY)
        view = client_for(sim, concurrency=8).with_options(deadline=0.25)
        results = await asyncio.wait_for(view.get_cvms(range(1, 41)), 30)
        stats = view.stats
    failed = [result.cvm_id for result in results if not result.ok]
    assert failed == [36, 37, 38, 39, 40]
    assert stats.failed == {"APITimeoutError": 5}
    assert (calls_ended(stats), stats.ok, stats.cancelled) == (40, 35, 0)


async def test_a_404_counts_as_a_failed_call(client: PhalaClient) -> None:
    """A CVM that does not exist counts once, as ``NotFoundError``."""
    await client.get_cvm(1)
    with pytest.raises(NotFoundError):
        await client.get_cvm(999)
    stats = client.stats
    assert (stats.ok, stats.failed, calls_ended(stats)) == (1, {"NotFoundError": 1}, 2)


async def test_a_503_storm_counts_every_call_once(client_for: ClientFactory) -> None:
    """A sweep through an API that answers only 503 counts each id once, retries aside."""
    async with PhalaSimulator(cvms=30, fault_rate=1.0, faults=[Fault.HTTP_503]) as sim:
        client = client_for(sim, max_attempts=3)
        results = await asyncio.wait_for(client.get_cvms(range(1, 31)), 30)
        stats = client.stats
        requests = sim.total_requests
    assert not any(result.ok for result in results)
    assert stats.failed == {"InternalServerError": 30}
    assert calls_ended(stats) == 30
    assert stats.requests == requests > 30


async def test_a_cancelled_call_counts_as_cancelled_only(client_for: ClientFactory) -> None:
    """A call whose task is cancelled counts in ``cancelled``, not in ``ok`` or ``failed``."""
    async with PhalaSimulator(cvms=5, latency=5.0) as sim:
        client = client_for(sim)
        task = asyncio.create_task(client.get_cvm(1))
        for _ in range(200):  # until the request reached the server, 2 s at most
            if sim.total_requests:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(100):  # the request chain runs in a task of its own; let it end
            if client.stats.cancelled:
                break
            await asyncio.sleep(0.01)
        stats = client.stats
    assert sim.total_requests == 1
    assert (stats.cancelled, calls_ended(stats)) == (1, 0)


async def test_a_sweep_closed_early_counts_its_unfinished_ids_as_cancelled(
    client_for: ClientFactory,
) -> None:
    """Closing a sweep with requests in flight counts those ids in ``cancelled``."""
    async with PhalaSimulator(cvms=10, latency=5.0) as sim:
        client = client_for(sim, concurrency=4)
        async with client.stream_cvms(range(1, 11)) as results:
            for _ in range(200):
                if sim.in_flight == 4:
                    break
                await asyncio.sleep(0.01)
            await results.aclose()
        stats = client.stats
    assert (stats.cancelled, calls_ended(stats)) == (4, 0)


async def test_stats_serialise_to_json(client: PhalaClient) -> None:
    """``to_dict()`` gives JSON values; ``failed`` is a plain dict keyed by class name."""
    with pytest.raises(NotFoundError):
        await client.get_cvm(999)
    await client.get_cvm(2)
    encoded = json.loads(json.dumps(client.stats.to_dict()))
    assert encoded["failed"] == {"NotFoundError": 1}
    assert (encoded["ok"], encoded["cancelled"], encoded["requests"]) == (1, 0, 2)
    assert type(client.stats.failed) is dict


def test_asdict_keeps_failed_as_names() -> None:
    """``dataclasses.asdict`` of a snapshot keeps the class names as keys."""
    stats = ClientStats(failed={"NotFoundError": 2})
    assert dataclasses.asdict(stats)["failed"] == {"NotFoundError": 2}


def test_a_snapshot_does_not_change() -> None:
    """A snapshot is frozen."""
    stats = ClientStats()
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.ok = 3  # type: ignore[misc]

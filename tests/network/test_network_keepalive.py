"""Stale keep-alive connections: a request whose pooled connection the server had closed is
sent again at once on a new connection, counted, and never waits out a backoff."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import pytest
from _proxy import clean_network_environment  # noqa: F401 - used by pytestmark

from phala_async import APIConnectionError, PhalaClient
from phala_async.testing import Fault, PhalaSimulator

# A backoff this long would blow each test's time bound: any wait at all fails the test.
NO_BACKOFF: dict[str, Any] = {"timeout": 5.0, "backoff_initial": 30.0, "backoff_max": 30.0}

pytestmark = pytest.mark.usefixtures("clean_network_environment")


def answered_per_id(sim: PhalaSimulator) -> collections.Counter[str | None]:
    """How many 200 answers the simulator gave per id."""
    return collections.Counter(r.cvm_key for r in sim.request_log if r.status == 200)


async def test_a_server_closing_every_third_connection_costs_no_backoff() -> None:
    """With connections dropped after 3 answers, a 300-id sweep gets every id at once: the
    server sees one request per id plus one per reconnect, and answers each id once."""
    async with PhalaSimulator(cvms=300, drop_after=3) as sim:
        client = PhalaClient(api_key=sim.api_key, base_url=sim.base_url, **NO_BACKOFF)
        async with asyncio.timeout(10), client:
            results = await client.get_cvms(range(1, 301))
            stats = client.stats
        dropped = sim.status_counts["dropped"]
        total = sim.total_requests
        answered = answered_per_id(sim)
    assert all(result.ok for result in results)
    assert dropped > 50  # the server really dropped connections
    assert stats.reconnects == dropped
    assert stats.retries == 0
    assert total == 300 + stats.reconnects
    assert stats.requests == total
    assert set(answered.values()) == {1}
    assert len(answered) == 300


async def test_the_resend_goes_on_a_new_connection() -> None:
    """When every reused connection is dropped, each resend opens a new connection that
    answers, so one client request per id and one reconnect per later id are enough."""
    async with PhalaSimulator(cvms=20, drop_after=1) as sim:
        client = PhalaClient(
            api_key=sim.api_key, base_url=sim.base_url, concurrency=1, **NO_BACKOFF
        )
        async with asyncio.timeout(10), client:
            for cvm_id in range(1, 21):
                assert (await client.get_cvm(cvm_id)).id == cvm_id
            stats = client.stats
        connections = sim.connections
        total = sim.total_requests
    assert stats.reconnects == 19  # the first id found no pooled connection
    assert stats.retries == 0
    assert total == 20 + 19
    assert connections == 20  # one for the first id, one per resend


async def test_a_reset_on_a_new_connection_is_a_failure_not_a_reconnect() -> None:
    """A request reset on a connection that had never answered is retried by the policy,
    after a backoff, and never resent as a reconnect."""
    async with PhalaSimulator(cvms=1) as sim:
        sim.script(1, Fault.RESET, Fault.OK)
        client = PhalaClient(
            api_key=sim.api_key,
            base_url=sim.base_url,
            timeout=5.0,
            backoff_initial=0.001,
            backoff_max=0.002,
        )
        async with asyncio.timeout(10), client:
            cvm = await client.get_cvm(1)
            stats = client.stats
    assert cvm.id == 1
    assert stats.reconnects == 0
    assert stats.retries == 1


async def test_a_connection_is_resent_at_most_once_per_attempt() -> None:
    """A reused connection reset, then a reset again on the new one, is a failed attempt: one
    reconnect, then the retry policy takes over."""
    async with PhalaSimulator(cvms=2) as sim:
        client = PhalaClient(
            api_key=sim.api_key,
            base_url=sim.base_url,
            concurrency=1,
            max_attempts=1,
            timeout=5.0,
        )
        async with asyncio.timeout(10), client:
            await client.get_cvm(1)  # leaves one connection in the pool
            sim.script(2, Fault.RESET, Fault.RESET, Fault.OK)
            with pytest.raises(APIConnectionError) as caught:
                await client.get_cvm(2)
            stats = client.stats
        total = sim.total_requests
    assert stats.reconnects == 1
    assert total == 3  # id 1, then id 2 on the pooled connection and once more on a new one
    assert caught.value.attempts == 1


async def test_a_resend_skips_the_other_stale_pooled_connections() -> None:
    """When every idle pooled connection is stale, the resend does not take another of them:
    it opens a new connection, so one attempt is enough."""
    async with PhalaSimulator(cvms=6, drop_after=1) as sim:
        client = PhalaClient(
            api_key=sim.api_key, base_url=sim.base_url, concurrency=4, max_attempts=1
        )
        async with asyncio.timeout(10), client:
            # Fill the pool: every connection has answered once, so each is stale now.
            await asyncio.gather(*(client.get_cvm(cvm_id) for cvm_id in range(1, 6)))
            before = client.stats.reconnects
            cvm = await client.get_cvm(6)
            after = client.stats.reconnects
        answered = answered_per_id(sim)
    assert cvm.id == 6
    assert after - before == 1
    assert answered["6"] == 1


async def test_a_view_with_its_own_timeout_still_resends_at_once() -> None:
    """``with_options(timeout=...)`` keeps the resend of stale connections: no backoff."""
    async with PhalaSimulator(cvms=60, drop_after=3) as sim:
        client = PhalaClient(api_key=sim.api_key, base_url=sim.base_url, **NO_BACKOFF)
        async with asyncio.timeout(10), client:
            view = client.with_options(timeout=4.0)
            results = await view.get_cvms(range(1, 61))
            stats = client.stats
        dropped = sim.status_counts["dropped"]
    assert all(result.ok for result in results)
    assert dropped > 0
    assert stats.reconnects == dropped
    assert stats.retries == 0

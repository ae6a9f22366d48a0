"""A dead API: the retry budget keeps a sweep from multiplying traffic. The budget's decisions are
tested without a server in ``tests/unit/test_limits.py`` and ``tests/unit/test_governor.py``."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from _server_process import StartServer

from phala_async import InternalServerError, PhalaClient

DEAD_IDS = 1_000
DEAD_BOUND = 30.0  # seconds


async def test_sweep_of_a_dead_api_fails_fast_without_hammering(
    server_process: StartServer,
) -> None:
    """Every id of a sweep against an API answering only 503 fails with InternalServerError, in
    bounded time, after at most 1.2 requests per id."""
    server = server_process(cvms=DEAD_IDS, fault_rate=1.0, faults=["503"])
    async with PhalaClient(
        api_key=server.api_key,
        base_url=server.base_url,
        max_attempts=4,
        concurrency=64,
    ) as client:
        started = time.perf_counter()
        async with asyncio.timeout(DEAD_BOUND):
            results = await client.get_cvms(range(1, DEAD_IDS + 1))
        wall = time.perf_counter() - started
        stats = client.stats
    server_stats = server.settled_stats()
    requests = server_stats["total_requests"]
    print(
        f"\ndead API: {DEAD_IDS} ids in {wall:.2f}s, server saw {requests} requests "
        f"({requests / DEAD_IDS:.3f} per id); client retries {stats.retries}, "
        f"retries denied {stats.retries_denied}, failed {dict(stats.failed)}"
    )
    assert Counter(type(result.error) for result in results) == {InternalServerError: DEAD_IDS}
    assert [result.cvm_id for result in results] == list(range(1, DEAD_IDS + 1))
    assert all(result.error.cvm_id == result.cvm_id for result in results if result.error)
    assert server_stats["status_counts"] == {"503": requests}
    assert requests <= 1.2 * DEAD_IDS
    assert requests == DEAD_IDS + stats.retries

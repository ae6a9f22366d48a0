"""Fault soak: a long sweep against a simulator in its own process that fails a fifth of requests
in every way it knows, with the retry budget on."""

from __future__ import annotations

import asyncio
import gc
import time
import warnings
from collections import Counter
from typing import Any

import pytest
from _server_process import StartServer

from phala_async import CvmResult, PhalaClient
from phala_async.testing import DEFAULT_FAULTS

FAULT_RATE = 0.2
FAULT_DELAY = 0.5  # seconds a delayed answer waits: past the client's timeout, cheap to wait out
CLIENT_TIMEOUT = 0.2
# The budget for the default soak (20,000 ids in about 90 s on 2 cores), scaled with the
# ids, 30 s at least: a sweep slower than this has stalled, and the test says how far it got.
SECONDS_PER_ID = 90.0 / 20_000
MIN_BOUND = 30.0
FAULT_KINDS = {str(fault) for fault in DEFAULT_FAULTS}


@pytest.mark.slow
@pytest.mark.parametrize(
    "adaptive", [pytest.param(True, id="adaptive-default"), pytest.param(False, id="adaptive-off")]
)
async def test_fault_soak_returns_every_id_once_and_ok(
    server_process: StartServer, soak_ids: int, adaptive: bool
) -> None:
    """Every id of a sweep against an API failing a fifth of requests comes back once and ok,
    and the server saw exactly one request per result plus one per retry."""
    server = server_process(
        cvms=soak_ids,
        fault_rate=FAULT_RATE,
        faults=sorted(FAULT_KINDS),
        retry_after=0,
        fault_delay=FAULT_DELAY,
        seed=5,
    )
    ids = range(1, soak_ids + 1)
    bound = max(MIN_BOUND, SECONDS_PER_ID * soak_ids)
    # Counts, not results: holding 200,000 results would make the collector's pauses longer than
    # the client timeout, and the soak would measure its own garbage instead of the client.
    ok_ids: Counter[int | str] = Counter()
    failures: list[CvmResult] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        client = PhalaClient(
            api_key=server.api_key,
            base_url=server.base_url,
            timeout=CLIENT_TIMEOUT,
            max_attempts=10,
            backoff_initial=0.001,
            backoff_max=0.005,
            retry_budget=True,
            adaptive=adaptive,
            concurrency=64,
        )

        async def sweep() -> None:
            async with client.stream_cvms(ids) as stream:
                async for result in stream:
                    if result.ok:
                        ok_ids[result.cvm_id] += 1
                    else:
                        failures.append(result)

        started = time.perf_counter()
        try:
            sweeping = asyncio.create_task(sweep())
            done, _ = await asyncio.wait([sweeping], timeout=bound)
            stalled = not done
            await _cancel_and_wait(sweeping)
        finally:
            send_rate = client.stats.send_rate
            await client.aclose()
        wall = time.perf_counter() - started
        gc.collect()
    stats = client.stats
    server_stats = server.settled_stats()
    leftover = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    results = ok_ids.total() + len(failures)
    _print_figures(soak_ids, results, wall, server_stats, stats, send_rate)

    assert not stalled, (
        f"the sweep stalled: {results} of {soak_ids} ids in {bound:.0f}s, "
        f"send rate {send_rate} requests/s"
    )
    assert [(result.cvm_id, repr(result.error)) for result in failures] == []
    assert results == soak_ids
    assert sorted(ok_ids) == list(ids)
    assert set(ok_ids.values()) == {1}
    # A reset on a pooled connection before any answer is resent at once, as a reconnect.
    assert server_stats["total_requests"] == results + stats.retries + stats.reconnects
    assert stats.requests == server_stats["total_requests"]
    assert set(server_stats["faults"]) == FAULT_KINDS
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert [str(w.message) for w in caught] == []
    assert leftover == []


async def _cancel_and_wait(task: asyncio.Task[None], tries: int = 10) -> None:
    """Cancel ``task`` until it has ended (a cancellation can be lost in aiohttp's timeout
    handling, aio-libs/aiohttp#5979), waiting a second each time; re-raise its failure."""
    for _ in range(tries):
        if task.done():
            break
        task.cancel()
        await asyncio.wait([task], timeout=1.0)
    if task.done() and not task.cancelled() and (error := task.exception()) is not None:
        raise error


def _print_figures(
    soak_ids: int,
    results: int,
    wall: float,
    server_stats: dict[str, Any],
    stats: Any,
    send_rate: float | None,
) -> None:
    faults = Counter(server_stats["faults"])
    total = server_stats["total_requests"]
    print(
        f"\nsoak: {soak_ids} ids, {results} results in {wall:.1f}s ({results / wall:.0f} ids/s)\n"
        f"soak: faults injected by kind {dict(sorted(faults.items()))} "
        f"(total {faults.total()}, {faults.total() / max(total, 1):.1%} of requests)\n"
        f"soak: server status counts {server_stats['status_counts']}, longest collector pause "
        f"{server_stats['gc_longest_pause'] * 1000:.0f} ms\n"
        f"soak: server requests {total}, client requests {stats.requests}, "
        f"retries {stats.retries}, reconnects {stats.reconnects}, "
        f"results + retries + reconnects {results + stats.retries + stats.reconnects}, "
        f"429s {stats.rate_limited}, retries denied {stats.retries_denied}, "
        f"send rate at the end {send_rate}, failed {dict(stats.failed)}"
    )

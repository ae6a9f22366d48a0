"""Rate limits: an unpublished limit found and kept by adaptive pacing, and a hard cap kept by the
limiter. The pacer's decisions are tested on a fake clock in ``tests/unit/test_limits.py``; how much
of a limit a sweep uses, with pacing and without, is measured by ``make bench``."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import pytest
from _server_process import StartServer

from phala_async import PhalaClient
from phala_async.testing import PhalaSimulator

LIMIT = 200  # requests per second the simulator lets through
SWEEP_IDS = 3_000
SWEEP_BOUND = 120.0  # seconds: far past the 15 s the sweep needs at the limit
HARD_CAP = 50
HARD_CAP_IDS = 150


@dataclass(frozen=True)
class SweepFigures:
    """What one sweep against the rate-limited simulator measured."""

    ok: int
    wall: float
    client_requests: int
    client_429s: int
    server_requests: int
    server_429s: int
    send_rate: float | None

    @property
    def rate(self) -> float:
        return SWEEP_IDS / self.wall

    @property
    def client_429_share(self) -> float:
        return self.client_429s / self.client_requests

    @property
    def server_429_share(self) -> float:
        return self.server_429s / self.server_requests

    def show(self, label: str) -> str:
        return (
            f"\n{label}: {self.ok}/{SWEEP_IDS} ok in {self.wall:.1f}s, {self.rate:.1f} ids/s = "
            f"{self.rate / LIMIT:.1%} of the {LIMIT}/s limit; 429s: client "
            f"{self.client_429s}/{self.client_requests} = {self.client_429_share:.1%}, server "
            f"{self.server_429s}/{self.server_requests} = {self.server_429_share:.1%}; "
            f"final send rate {self.send_rate}"
        )


async def _sweep_rate_limited(server_process: StartServer) -> SweepFigures:
    server = server_process(cvms=SWEEP_IDS, rate_limit=LIMIT, rate_limit_retry_after=1)
    async with PhalaClient(
        api_key=server.api_key,
        base_url=server.base_url,
        concurrency=64,
        max_attempts=20,
    ) as client:
        started = time.perf_counter()
        async with asyncio.timeout(SWEEP_BOUND):
            results = await client.get_cvms(range(1, SWEEP_IDS + 1))
        wall = time.perf_counter() - started
        stats = client.stats
    server_stats = server.settled_stats()
    return SweepFigures(
        ok=sum(result.ok for result in results),
        wall=wall,
        client_requests=stats.requests,
        client_429s=stats.rate_limited,
        server_requests=server_stats["total_requests"],
        server_429s=server_stats["status_counts"].get("429", 0),
        send_rate=stats.send_rate,
    )


@pytest.mark.slow
async def test_adaptive_sweep_keeps_under_an_unpublished_limit(
    server_process: StartServer,
) -> None:
    """A sweep at concurrency 64 against a 200/s limit gets every id with under 10% of its
    requests answered 429, and the client counts exactly the requests the server saw."""
    figures = await _sweep_rate_limited(server_process)
    print(figures.show("rate limit, adaptive"))
    assert figures.ok == SWEEP_IDS
    assert figures.client_429_share < 0.10
    assert figures.server_429_share < 0.10
    assert figures.client_requests == figures.server_requests


# Slow: it reads the server's clock, so it must run alone (make test), not beside another worker.
@pytest.mark.slow
async def test_hard_cap_keeps_the_server_observed_rate_under_it() -> None:
    """``rate_limit=50`` lets the server see at most its burst of 50 plus 50 per second."""
    async with (
        PhalaSimulator(cvms=HARD_CAP_IDS) as simulator,
        PhalaClient(
            api_key=simulator.api_key,
            base_url=simulator.base_url,
            rate_limit=HARD_CAP,
            concurrency=64,
        ) as client,
    ):
        async with asyncio.timeout(30):
            results = await client.get_cvms(range(1, HARD_CAP_IDS + 1))
        times = sorted(record.time for record in simulator.request_log)
    assert sum(result.ok for result in results) == HARD_CAP_IDS
    assert len(times) == HARD_CAP_IDS
    # The limiter is a leaky bucket of HARD_CAP: any span of t seconds holds at most
    # HARD_CAP * (1 + t) requests, +1 for the two edges of the span and +1 for scheduling jitter
    # between the limiter (in the client) and the log (in the server).
    worst = max(
        (j - i + 1) - HARD_CAP * (1 + times[j] - times[i])
        for i in range(len(times))
        for j in range(i, len(times))
    )
    after_burst = (len(times) - HARD_CAP) / (times[-1] - times[HARD_CAP - 1])
    print(
        f"\nhard cap {HARD_CAP}/s: {len(times)} requests over {times[-1] - times[0]:.2f}s, "
        f"{after_burst:.1f}/s after the initial burst of {HARD_CAP}; worst excess over "
        f"{HARD_CAP}*(1+t) in any span: {worst:.2f}"
    )
    assert worst <= 2.0
    assert after_burst <= HARD_CAP * 1.05

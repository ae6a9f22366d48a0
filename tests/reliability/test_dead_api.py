"""A dead API: the retry budget keeps a sweep from multiplying traffic, and its decisions."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from _server_process import StartServer

from phala_async import InternalServerError, PhalaClient
from phala_async._throttle import RetryBudget

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


def _budget_with(outcomes: list[bool], **options: int) -> RetryBudget:
    budget = RetryBudget(**options)
    for outcome in outcomes:
        budget.record(outcome)
    return budget


def test_budget_allows_retries_before_min_samples() -> None:
    """Nineteen failures, one short of ``min_samples``, still allow a retry."""
    budget = _budget_with([False] * 19)
    assert budget.allows_retry() is True
    assert budget.denied == 0


def test_budget_denies_retries_once_most_requests_fail() -> None:
    """Twenty failures out of twenty deny retries, and each refusal noted is counted."""
    budget = _budget_with([False] * 20)
    assert [budget.allows_retry() for _ in range(3)] == [False, False, False]
    for _ in range(3):
        budget.note_denied()
    assert budget.denied == 3
    assert budget.success_ratio == 0.0


def test_budget_allows_retries_when_a_fifth_fails() -> None:
    """A window where one request in five fails keeps retries allowed."""
    budget = _budget_with([True, True, True, True, False] * 20)
    assert budget.success_ratio == 0.8
    assert budget.allows_retry() is True


def test_budget_denies_below_half_and_allows_at_half() -> None:
    """Exactly half succeeding allows retries; one fewer success denies them."""
    half = _budget_with([True, False] * 50)
    below = _budget_with([True, False] * 49 + [False, False])
    assert half.success_ratio == 0.5
    assert half.allows_retry() is True
    assert below.success_ratio == 0.49
    assert below.allows_retry() is False


def test_budget_only_remembers_its_window() -> None:
    """Failures older than the last ``window`` outcomes are forgotten."""
    budget = _budget_with([False] * 100 + [True] * 10, window=10, min_samples=5)
    assert budget.success_ratio == 1.0
    assert budget.allows_retry() is True


def test_budget_recovers_when_successes_return() -> None:
    """After a dead spell denies retries, enough successes to pass half the window allow them
    again."""
    budget = _budget_with([False] * 100)
    assert budget.allows_retry() is False
    for _ in range(49):
        budget.record(True)
    assert budget.allows_retry() is False
    budget.record(True)
    assert budget.success_ratio == 0.5
    assert budget.allows_retry() is True

"""Shared fixtures: a running simulator and clients pointed at it, closed after each test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from phala_async import PhalaClient
from phala_async.testing import PhalaSimulator

# Fast retries for tests: the policy is the same, the waits are scaled down.
FAST_RETRY: dict[str, Any] = {"backoff_initial": 0.001, "backoff_max": 0.01}


@pytest.fixture
async def simulator() -> AsyncIterator[PhalaSimulator]:
    """A simulator with 50 workspace CVMs and 2 forbidden ones, no faults."""
    async with PhalaSimulator(cvms=50, forbidden=2) as sim:
        yield sim


@pytest.fixture
async def make_client(
    simulator: PhalaSimulator,
) -> AsyncIterator[Callable[..., PhalaClient]]:
    """Build clients against ``simulator`` (keyword arguments override the fast defaults)."""
    made: list[PhalaClient] = []

    def build(**overrides: Any) -> PhalaClient:
        options: dict[str, Any] = {
            "api_key": simulator.api_key,
            "base_url": simulator.base_url,
            "timeout": 5.0,
            **FAST_RETRY,
        }
        options.update(overrides)
        client = PhalaClient(**options)
        made.append(client)
        return client

    yield build
    for client in made:
        await client.aclose()


@pytest.fixture
async def client(make_client: Callable[..., PhalaClient]) -> PhalaClient:
    """A client with the fast defaults against the ``simulator`` fixture."""
    return make_client()

"""Shared fixtures: a running simulator and clients pointed at it, closed after each test.

``client_for`` is the one way tests build a client: against a simulator or an API base URL, with
:data:`FAST_RETRY`, keyword arguments overriding anything.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from phala_async import PhalaClient
from phala_async.testing import PhalaSimulator

#: Fast retries for tests: the policy is the same, the waits are scaled down.
FAST_RETRY: dict[str, Any] = {"backoff_initial": 0.001, "backoff_max": 0.01}
#: The key sent to a handler written inline in a test, which checks none.
INLINE_API_KEY = "phak_inline"

ClientFactory = Callable[..., PhalaClient]
#: Test modules that are slow as a whole, and why (``make quick`` skips tests marked slow).
SLOW_MODULES = {"test_wheel.py": "builds the wheel and installs it in a fresh virtual environment"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of :data:`SLOW_MODULES` slow."""
    for item in items:
        if item.path.name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
async def client_for() -> AsyncIterator[ClientFactory]:
    """Build a client against a simulator or an API base URL, with fast retries and a 5 s
    timeout (keyword arguments override them); every client built is closed after the test."""
    made: list[PhalaClient] = []

    def build(target: PhalaSimulator | str, **overrides: Any) -> PhalaClient:
        if isinstance(target, PhalaSimulator):
            where = {"api_key": target.api_key, "base_url": target.base_url}
        else:
            where = {"api_key": INLINE_API_KEY, "base_url": target}
        client = PhalaClient(**{**where, "timeout": 5.0, **FAST_RETRY, **overrides})
        made.append(client)
        return client

    yield build
    for client in made:
        await client.aclose()


@pytest.fixture
async def simulator() -> AsyncIterator[PhalaSimulator]:
    """A simulator with 50 workspace CVMs and 2 forbidden ones, no faults."""
    async with PhalaSimulator(cvms=50, forbidden=2) as sim:
        yield sim


@pytest.fixture
def make_client(simulator: PhalaSimulator, client_for: ClientFactory) -> ClientFactory:
    """Build clients against ``simulator`` (keyword arguments override the fast defaults)."""
    return lambda **overrides: client_for(simulator, **overrides)


@pytest.fixture
async def client(make_client: ClientFactory) -> PhalaClient:
    """A client with the fast defaults against the ``simulator`` fixture."""
    return make_client()

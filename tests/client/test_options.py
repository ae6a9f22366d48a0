"""Tests for per-call options: ``with_options`` views and the whole-call ``deadline``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from phala_async import APITimeoutError, ConfigurationError, PhalaClient
from phala_async.testing import Fault, PhalaSimulator


async def test_a_view_shares_the_clients_session_limits_and_counters(
    make_client: Callable[..., PhalaClient], simulator: PhalaSimulator
) -> None:
    """A view sends through the same session, and its requests count in the client's stats."""
    client = make_client()
    view = client.with_options(timeout=2.0, max_attempts=2)
    await client.get_cvm(1)
    await view.get_cvm(2)
    assert view._pipeline.shared.session is client._pipeline.shared.session
    assert client.stats.requests == 2
    assert view.stats.requests == 2
    assert simulator.total_requests == 2


async def test_a_views_max_attempts_applies_to_its_calls_only(
    make_client: Callable[..., PhalaClient], simulator: PhalaSimulator
) -> None:
    """``max_attempts=1`` on a view stops its calls at the first failure; the client retries."""
    client = make_client(max_attempts=4)
    simulator.script(3, Fault.HTTP_503, Fault.OK)
    simulator.script(4, Fault.HTTP_503, Fault.OK)
    with pytest.raises(Exception, match="HTTP 503") as caught:
        await client.with_options(max_attempts=1).get_cvm(3)
    cvm = await client.get_cvm(4)
    assert caught.value.attempts == 1  # type: ignore[attr-defined]
    assert cvm.id == 4
    assert (simulator.requests["3"], simulator.requests["4"]) == (1, 2)


async def test_a_views_timeout_bounds_each_attempt() -> None:
    """A view's short timeout ends a slow attempt that the client's own timeout would wait for."""
    async with PhalaSimulator(cvms=5, latency=0.3) as sim:
        client = PhalaClient(api_key=sim.api_key, base_url=sim.base_url, timeout=5.0)
        async with client:
            with pytest.raises(APITimeoutError, match=r"within 0\.05s"):
                await client.with_options(timeout=0.05, max_attempts=1).get_cvm(1)
            assert (await client.get_cvm(1)).id == 1


async def test_deadline_bounds_the_whole_call_retries_included(
    make_client: Callable[..., PhalaClient], simulator: PhalaSimulator
) -> None:
    """With retries waiting 1 s each, a 0.2 s deadline ends the call at about 0.2 s."""
    client = make_client(backoff_initial=2.0, backoff_max=2.0)
    simulator.script(5, Fault.HTTP_503, Fault.HTTP_503, Fault.OK)
    started = time.perf_counter()
    with pytest.raises(APITimeoutError, match=r"within the 0.2s deadline") as caught:
        await client.with_options(deadline=0.2).get_cvm(5)
    elapsed = time.perf_counter() - started
    assert caught.value.cvm_id == 5
    assert elapsed < 1.0
    assert simulator.requests["5"] == 1


async def test_deadline_bounds_the_wait_for_a_slot(simulator: PhalaSimulator) -> None:
    """A call queued behind a full pool ends at its deadline without being sent."""
    async with PhalaSimulator(cvms=5, latency=0.5) as slow:
        client = PhalaClient(api_key=slow.api_key, base_url=slow.base_url, concurrency=1)
        async with client:
            hog = asyncio.create_task(client.get_cvm(1))
            await asyncio.sleep(0.05)
            with pytest.raises(APITimeoutError, match="deadline"):
                await client.with_options(deadline=0.1).get_cvm(2)
            await hog
        assert slow.requests["2"] == 0


async def test_deadline_bounds_each_id_of_a_sweep(
    make_client: Callable[..., PhalaClient], simulator: PhalaSimulator
) -> None:
    """In a sweep through a view with a deadline, an id whose retries outlast it fails alone."""
    client = make_client(backoff_initial=2.0, backoff_max=2.0)
    simulator.script(6, Fault.HTTP_503, Fault.OK)
    results = await client.with_options(deadline=0.3).get_cvms([6, 7, 8])
    by_id = {result.cvm_id: result for result in results}
    assert isinstance(by_id[6].error, APITimeoutError)
    assert by_id[7].ok
    assert by_id[8].ok


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"timeout": 0}, id="zero-timeout"),
        pytest.param({"deadline": -1}, id="negative-deadline"),
        pytest.param({"max_attempts": 0}, id="zero-attempts"),
    ],
)
def test_bad_options_are_refused(options: dict[str, float]) -> None:
    """A view's option out of range raises ConfigurationError at once."""
    client = PhalaClient(api_key="phak_test")
    with pytest.raises(ConfigurationError):
        client.with_options(**options)  # type: ignore[arg-type]


async def test_leaving_a_view_as_a_context_manager_leaves_the_client_open(
    make_client: Callable[..., PhalaClient], simulator: PhalaSimulator
) -> None:
    """``async with client.with_options(...) as view`` does not close the client it came from."""
    client = make_client()
    async with client.with_options(deadline=5.0) as view:
        assert (await view.get_cvm(1)).id == 1
    assert (view.closed, client.closed) == (False, False)
    assert (await client.get_cvm(2)).id == 2
    assert simulator.total_requests == 2


async def test_closing_a_view_does_nothing(
    make_client: Callable[..., PhalaClient], simulator: PhalaSimulator
) -> None:
    """``view.aclose()`` leaves the client and its other views working."""
    client = make_client()
    view = client.with_options(max_attempts=1)
    await view.aclose()
    assert (await client.with_options(timeout=2.0).get_cvm(3)).id == 3
    assert (await view.get_cvm(4)).id == 4
    await client.aclose()
    assert view.closed

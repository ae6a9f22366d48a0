"""Tests for ``wait_for_status(fail_on=...)``: a CVM that reached a failure status ends the
wait at once, with an error that names it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from phala_async import (
    DEFAULT_FAIL_ON,
    ConfigurationError,
    PhalaClient,
    StatusFailedError,
    StatusTimeoutError,
)
from phala_async.testing import PhalaSimulator

ClientFactory = Callable[..., PhalaClient]
INTERVAL = 0.05


async def test_a_cvm_that_moves_to_error_ends_the_wait_within_one_interval(
    client_for: ClientFactory,
) -> None:
    """Waiting for ``running`` on a CVM that goes to ``error`` raises at the next poll."""
    async with PhalaSimulator(cvms=2) as sim, client_for(sim) as client:
        sim.update_cvm(1, status="starting")
        asyncio.get_running_loop().call_later(0.12, lambda: sim.update_cvm(1, status="error"))
        with pytest.raises(StatusFailedError) as caught:
            await client.wait_for_status(1, "running", timeout=30, interval=INTERVAL)
        polls_after_error = sim.requests["1"]
    error = caught.value
    assert (error.cvm_id, error.status, error.wanted) == (1, "error", frozenset({"running"}))
    assert "CVM 1" in str(error)
    assert "'error'" in str(error)
    assert error.waited < 30
    assert 3 <= polls_after_error <= 10  # starting, starting, (starting), error: no more


@pytest.mark.parametrize("status", sorted(DEFAULT_FAIL_ON))
async def test_each_default_failure_status_ends_the_wait(
    client_for: ClientFactory, status: str
) -> None:
    """Each status of ``DEFAULT_FAIL_ON`` ends a wait at the first poll that sees it."""
    async with PhalaSimulator(cvms=2) as sim, client_for(sim) as client:
        sim.update_cvm(2, status=status)
        with pytest.raises(StatusFailedError, match=repr(status)):
            await client.wait_for_status(2, "running", timeout=30, interval=INTERVAL)
        assert sim.requests["2"] == 1


async def test_fail_on_names_other_failure_statuses(client_for: ClientFactory) -> None:
    """A status given in ``fail_on`` ends the wait; the defaults then no longer apply."""
    async with PhalaSimulator(cvms=2) as sim, client_for(sim) as client:
        sim.update_cvm(1, status="stopped")
        with pytest.raises(StatusFailedError) as caught:
            await client.wait_for_status(
                1, "running", timeout=30, interval=INTERVAL, fail_on="stopped"
            )
        sim.update_cvm(1, status="error")
        with pytest.raises(StatusTimeoutError) as timed_out:
            await client.wait_for_status(
                1, "running", timeout=0.15, interval=INTERVAL, fail_on={"stopped"}
            )
    assert caught.value.status == "stopped"
    assert timed_out.value.last_status == "error"


async def test_an_empty_fail_on_waits_through_failure_statuses(client_for: ClientFactory) -> None:
    """``fail_on=()`` turns failure detection off: the wait times out naming ``error``."""
    async with PhalaSimulator(cvms=2) as sim, client_for(sim) as client:
        sim.update_cvm(1, status="error")
        with pytest.raises(StatusTimeoutError) as caught:
            await client.wait_for_status(1, "running", timeout=0.15, interval=INTERVAL, fail_on=())
    assert caught.value.last_status == "error"


async def test_a_status_waited_for_is_not_a_failure(client_for: ClientFactory) -> None:
    """Waiting for ``error`` itself returns the CVM instead of raising."""
    async with PhalaSimulator(cvms=2) as sim, client_for(sim) as client:
        sim.update_cvm(1, status="error")
        cvm = await client.wait_for_status(1, "error", timeout=5, interval=INTERVAL)
    assert cvm.status == "error"


async def test_a_misspelt_status_times_out_naming_the_status_seen(
    client_for: ClientFactory,
) -> None:
    """A typo (``"runnning"``) is not rejected; the timeout names the status the CVM has."""
    async with PhalaSimulator(cvms=2) as sim, client_for(sim) as client:
        sim.update_cvm(1, status="running")
        with pytest.raises(StatusTimeoutError, match="still 'running'") as caught:
            await client.wait_for_status(1, "runnning", timeout=0.15, interval=INTERVAL)
    assert caught.value.last_status == "running"


@pytest.mark.parametrize(
    "fail_on", [[""], [3], 5, None], ids=["empty-name", "int", "not-iterable", "none"]
)
async def test_a_bad_fail_on_is_refused_before_any_request(
    client_for: ClientFactory, fail_on: object
) -> None:
    """``fail_on`` that is not status names raises ConfigurationError, and nothing is sent."""
    async with PhalaSimulator(cvms=2) as sim, client_for(sim) as client:
        with pytest.raises(ConfigurationError, match="fail_on must be a status name"):
            await client.wait_for_status(
                1, "running", timeout=1, interval=INTERVAL, fail_on=fail_on
            )  # type: ignore[arg-type]
        assert sim.total_requests == 0

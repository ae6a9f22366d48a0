"""Tests for polling: ``watch_cvms`` events driven by a changing simulator, ``wait_for_status``,
and the pure diff."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable

import pytest

from phala_async import (
    ConfigurationError,
    CvmEvent,
    NotFoundError,
    PhalaClient,
    StatusTimeoutError,
)
from phala_async.testing import Fault, PhalaSimulator

INTERVAL = 0.05  # seconds between rounds: the tests drive changes between two rounds


async def take(events: AsyncIterator[CvmEvent], count: int) -> list[CvmEvent]:
    """The next ``count`` events, within five seconds."""
    async with asyncio.timeout(5):
        return [await anext(events) for _ in range(count)]


async def test_initial_emits_every_listed_cvm_as_added_across_app_instances(
    client_for: Callable[..., PhalaClient],
) -> None:
    """``initial=True`` over a workspace whose apps have three instances each emits one
    ``added`` per CVM, each naming that CVM alone."""
    async with (
        PhalaSimulator(cvms=9, instances_per_app=3) as sim,
        client_for(sim) as client,
        client.watch_cvms(interval=INTERVAL, initial=True) as events,
    ):
        added = await take(events, 9)
    assert {event.kind for event in added} == {"added"}
    assert sorted(event.after.id for event in added if event.after) == list(range(1, 10))
    assert len({event.cvm_id for event in added}) == 9
    assert len({event.after.app_id for event in added if event.after}) == 3


async def test_a_changed_field_is_reported_with_old_and_new_values(
    client_for: Callable[..., PhalaClient],
) -> None:
    """A status and a nested field changed between rounds come as one ``changed`` event."""
    async with PhalaSimulator(cvms=3) as sim, client_for(sim) as client:
        old = sim.cvm(2)
        async with client.watch_cvms([1, 2, 3], interval=INTERVAL, initial=True) as events:
            await take(events, 3)  # the first round, every CVM as added
            sim.update_cvm(
                2, status="stopped", teepod={**old["teepod"], "region_identifier": "eu-north"}
            )
            [event] = await take(events, 1)
    assert event.kind == "changed"
    assert event.cvm_id == 2
    assert event.changes == {
        "status": (old["status"], "stopped"),
        "teepod.region_identifier": (old["teepod"]["region_identifier"], "eu-north"),
    }
    assert event.before is not None
    assert event.after is not None
    assert event.after.status == "stopped"


async def test_added_and_removed_cvms_of_the_workspace_are_reported(
    client_for: Callable[..., PhalaClient],
) -> None:
    """A CVM added to the workspace comes as ``added``, one removed as ``removed``, with apps of
    several instances, where another instance of the same app stays."""
    async with (
        PhalaSimulator(cvms=6, instances_per_app=3) as sim,
        client_for(sim) as client,
        client.watch_cvms(interval=INTERVAL, initial=True) as events,
    ):
        await take(events, 6)  # the first round
        [new_id] = sim.add_cvms(1)
        sim.remove_cvm(2)
        seen = await take(events, 2)
    by_kind = {event.kind: event for event in seen}
    assert set(by_kind) == {"added", "removed"}
    assert by_kind["added"].after is not None
    assert by_kind["added"].after.id == new_id
    assert by_kind["removed"].before is not None
    assert by_kind["removed"].before.id == 2


async def test_a_given_id_that_starts_answering_404_is_removed(
    client_for: Callable[..., PhalaClient],
) -> None:
    """Watching given ids, a CVM that disappears comes as ``removed``, once."""
    async with (
        PhalaSimulator(cvms=3) as sim,
        client_for(sim) as client,
        client.watch_cvms([1, 2], interval=INTERVAL, initial=True) as events,
    ):
        await take(events, 2)
        sim.remove_cvm(1)
        sim.update_cvm(2, status="stopped")
        seen = await take(events, 2)
    assert sorted((event.kind, event.cvm_id) for event in seen) == [
        ("changed", 2),
        ("removed", 1),
    ]


async def test_a_transient_failure_is_an_error_event_not_a_removal(
    client_for: Callable[..., PhalaClient],
) -> None:
    """A 503 that outlasts the retries is an ``error`` event; the CVM is not removed, and the
    next round compares against what was seen before."""
    async with (
        PhalaSimulator(cvms=2) as sim,
        client_for(sim) as client,
        client.watch_cvms([1, 2], interval=INTERVAL, initial=True) as events,
    ):
        await take(events, 2)
        sim.script(1, *[Fault.HTTP_503] * 4)
        [error] = await take(events, 1)
        sim.update_cvm(1, vcpu=64)
        [changed] = await take(events, 1)
    assert error.kind == "error"
    assert error.cvm_id == 1
    assert error.error is not None
    assert "503" in str(error.error)
    assert changed.kind == "changed"
    assert changed.cvm_id == 1
    assert list(changed.changes) == ["vcpu"]


async def test_fields_limit_what_counts_as_a_change(client_for: Callable[..., PhalaClient]) -> None:
    """With ``fields=["status"]``, a changed vcpu is not reported but a changed status is."""
    async with (
        PhalaSimulator(cvms=2) as sim,
        client_for(sim) as client,
        client.watch_cvms([1], interval=INTERVAL, fields=["status"], initial=True) as events,
    ):
        await take(events, 1)
        sim.update_cvm(1, vcpu=32)
        await asyncio.sleep(3 * INTERVAL)
        sim.update_cvm(1, status="stopping")
        [event] = await take(events, 1)
    assert list(event.changes) == ["status"]


async def test_rounds_go_through_the_client_and_never_overlap(
    client_for: Callable[..., PhalaClient],
) -> None:
    """Each round is a sweep of the client: the server sees one request per id per round, and
    the rounds come at least an interval apart."""
    async with PhalaSimulator(cvms=3) as sim, client_for(sim) as client:
        watch = client.watch_cvms([1, 2, 3], interval=0.2)
        async with watch:
            task = asyncio.create_task(anext(watch))
            await asyncio.sleep(0.5)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        times = sorted(record.time for record in sim.request_log if record.cvm_key == "1")
        assert sim.requests["1"] == sim.requests["2"] == sim.requests["3"] == watch.rounds
    assert 2 <= watch.rounds <= 3
    assert all(later - earlier >= 0.2 for earlier, later in itertools.pairwise(times))


def test_unknown_fields_are_refused() -> None:
    """A field that is not a CvmDetail field fails at once, naming it."""
    client = PhalaClient(api_key="phak_test")
    with pytest.raises(ConfigurationError, match="statuss"):
        client.watch_cvms([1], fields=["statuss"])


async def test_wait_for_status_returns_once_the_status_matches(
    client_for: Callable[..., PhalaClient],
) -> None:
    """``wait_for_status`` polls until the CVM reaches the status, and returns it."""
    async with PhalaSimulator(cvms=2) as sim, client_for(sim) as client:
        sim.update_cvm(1, status="starting")
        loop = asyncio.get_running_loop()
        loop.call_later(0.15, lambda: sim.update_cvm(1, status="running"))
        cvm = await client.wait_for_status(1, {"running", "stopped"}, timeout=5, interval=0.05)
        polls = sim.requests["1"]
    assert cvm.status == "running"
    assert 2 <= polls <= 10


async def test_wait_for_status_times_out_naming_the_last_status(
    client_for: Callable[..., PhalaClient],
) -> None:
    """A CVM that never gets there raises StatusTimeoutError with its id and last status."""
    async with PhalaSimulator(cvms=2) as sim, client_for(sim) as client:
        sim.update_cvm(1, status="starting")
        with pytest.raises(StatusTimeoutError) as caught:
            await client.wait_for_status(1, "running", timeout=0.2, interval=0.05)
    error = caught.value
    assert error.cvm_id == 1
    assert error.last_status == "starting"
    assert 0.2 <= error.waited < 1.0
    assert "still 'starting'" in str(error)
    assert isinstance(error, TimeoutError)


async def test_wait_for_status_raises_at_once_on_404(
    client_for: Callable[..., PhalaClient],
) -> None:
    """A CVM that does not exist raises NotFoundError at the first poll."""
    async with PhalaSimulator(cvms=2) as sim, client_for(sim) as client:
        with pytest.raises(NotFoundError):
            await client.wait_for_status(999, "running", timeout=5, interval=0.05)
        assert sim.requests["999"] == 1


async def test_max_rounds_ends_the_watch_after_that_many_rounds(
    client_for: Callable[..., PhalaClient],
) -> None:
    """With ``max_rounds = 3`` the iteration ends after the third round, each id fetched three
    times, without waiting for a fourth."""
    async with PhalaSimulator(cvms=2) as sim, client_for(sim) as client:
        watch = client.watch_cvms([1, 2], interval=INTERVAL)
        watch.max_rounds = 3
        async with asyncio.timeout(5), watch:
            events = [event async for event in watch]
        assert (sim.requests["1"], sim.requests["2"]) == (3, 3)
    assert events == []
    assert watch.rounds == 3

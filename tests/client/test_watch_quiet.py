"""Tests for a watch that stays quiet and right: a removal is reported once, an outage is one
``unavailable`` / ``available`` pair, and an id reports the same error once."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from types import TracebackType

from phala_async import (
    APIUnreachableError,
    CvmEvent,
    CvmStream,
    CvmWatch,
    PhalaClient,
)
from phala_async.testing import Fault, PhalaSimulator

ClientFactory = Callable[..., PhalaClient]
INTERVAL = 0.01


async def every_event(watch: CvmWatch, rounds: int) -> list[CvmEvent]:
    """Every event of ``rounds`` rounds, within 30 seconds."""
    watch.max_rounds = rounds
    async with asyncio.timeout(30), watch:
        return [event async for event in watch]


class _Hooked:
    """A sweep whose entry first runs ``before(round)``: the test changes the server between
    rounds, at a known round, without timing."""

    def __init__(self, stream: CvmStream, before: Awaitable[None]) -> None:
        self._stream, self._before = stream, before

    async def __aenter__(self) -> CvmStream:
        await self._before
        return await self._stream.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stream.__aexit__(exc_type, exc, tb)


def hooked_watch(
    client: PhalaClient, ids: list[str | int], before: Callable[[int], Awaitable[None]]
) -> CvmWatch:
    """A watch of ``ids`` through ``client`` that awaits ``before(round)`` as each round starts."""
    box: list[CvmWatch] = []

    def sweep(ids: list[str | int]) -> _Hooked:
        return _Hooked(client.stream_cvms(ids), before(box[0].rounds))

    watch = CvmWatch(sweep, ids=ids, listing=None, interval=INTERVAL)  # type: ignore[arg-type]
    box.append(watch)
    return watch


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_removed_cvm_is_reported_once_in_id_mode(client_for: ClientFactory) -> None:
    """Watching 5 ids, one removed: exactly one ``removed`` for it and no later event about it."""
    async with PhalaSimulator(cvms=5) as sim:
        client = client_for(sim)

        async def before(round_number: int) -> None:
            if round_number == 2:
                sim.remove_cvm(3)

        events = await every_event(hooked_watch(client, [1, 2, 3, 4, 5], before), 6)
        requests_for_3 = sim.requests["3"]
    assert [(event.kind, event.cvm_id) for event in events] == [("removed", 3)]
    assert requests_for_3 == 6  # still asked every round: it may come back


async def test_a_removed_cvm_is_reported_once_in_listing_mode(client_for: ClientFactory) -> None:
    """Watching the workspace, a CVM removed before round 2 is one ``removed``, then nothing."""
    async with PhalaSimulator(cvms=5) as sim:
        client = client_for(sim)
        box: list[CvmWatch] = []

        async def listing() -> list[str]:
            if box[0].rounds == 2:
                sim.remove_cvm(3)
            return [entry.cvm_id async for entry in client.list_cvms()]

        watch = CvmWatch(client.stream_cvms, ids=None, listing=listing, interval=INTERVAL)
        box.append(watch)
        events = await every_event(watch, 5)
    assert [(event.kind, event.before and event.before.id) for event in events] == [("removed", 3)]


async def test_an_id_reports_the_same_error_once_until_it_recovers(
    client_for: ClientFactory,
) -> None:
    """An id failing with a 500 for 3 rounds in healthy rounds is one ``error``, then it is
    fetched again and a new failure is news."""
    async with PhalaSimulator(cvms=4) as sim:
        client = client_for(sim, max_attempts=1)
        sim.script(2, Fault.HTTP_500, Fault.HTTP_500, Fault.HTTP_500, Fault.OK, Fault.HTTP_500)
        events = await every_event(client.watch_cvms([1, 2, 3, 4], interval=INTERVAL), 6)
    assert [(event.kind, event.cvm_id) for event in events] == [
        ("error", 2),
        ("added", 2),  # first seen in round 4
        ("error", 2),
    ]


async def test_an_outage_of_three_rounds_is_one_unavailable_and_one_available(
    client_for: ClientFactory,
) -> None:
    """200 ids, the API unreachable for rounds 2-4 and back for round 5 with one CVM changed:
    one ``unavailable``, one ``available``, then that change once, and nothing per id."""
    sim = PhalaSimulator(cvms=200, port=free_port())
    await sim.start()
    try:
        client = client_for(sim)

        async def before(round_number: int) -> None:
            if round_number == 2:
                await sim.close()
            elif round_number == 5:
                sim.update_cvm(7, status="stopped")
                await sim.start()

        watch = hooked_watch(client, list(range(1, 201)), before)
        events = await every_event(watch, 7)
        requests = sim.total_requests
    finally:
        await sim.close()
    assert [event.kind for event in events] == ["unavailable", "available", "changed"]
    unavailable, _, changed = events
    assert unavailable.error is not None
    assert (changed.cvm_id, changed.changes) == (7, {"status": ("running", "stopped")})
    assert requests >= 200 * 4  # rounds 1, 5, 6 and 7 each asked for every id
    assert watch.unavailable is False


async def test_an_outage_that_started_before_the_first_answer_is_one_unavailable(
    client_for: ClientFactory,
) -> None:
    """A watch started while the API is down says ``unavailable`` once, then ``available``."""
    port = free_port()
    sim = PhalaSimulator(cvms=20, port=port)
    client = client_for(f"http://127.0.0.1:{port}/api/v1", api_key=sim.api_key)
    try:

        async def before(round_number: int) -> None:
            if round_number == 3:
                await sim.start()

        events = await every_event(hooked_watch(client, list(range(1, 21)), before), 4)
    finally:
        await sim.close()
    assert [event.kind for event in events] == ["unavailable", "available"]


async def test_a_sweep_that_raises_unreachable_is_an_outage(client_for: ClientFactory) -> None:
    """A round whose stream raises ``APIUnreachableError`` is one ``unavailable``, not an end."""
    async with PhalaSimulator(cvms=3) as sim:
        client = client_for(sim)
        raised = 0

        async def before(round_number: int) -> None:
            nonlocal raised
            if round_number in (2, 3):
                raised += 1
                raise APIUnreachableError(
                    "no answer from 127.0.0.1", host="127.0.0.1", port=1, reason="refused"
                )

        events = await every_event(hooked_watch(client, [1, 2, 3], before), 5)
    assert raised == 2
    assert [event.kind for event in events] == ["unavailable", "available"]
    assert isinstance(events[0].error, APIUnreachableError)


async def test_a_5xx_storm_is_an_outage_not_an_error_per_id(client_for: ClientFactory) -> None:
    """A round whose every id gets a 503 is one ``unavailable``; no per-id ``error``."""
    async with PhalaSimulator(cvms=10) as sim:
        client = client_for(sim, max_attempts=1)

        async def before(round_number: int) -> None:
            if round_number == 2:
                for cvm_id in range(1, 11):
                    sim.script(cvm_id, Fault.HTTP_503, Fault.HTTP_503)

        events = await every_event(hooked_watch(client, list(range(1, 11)), before), 5)
    assert [event.kind for event in events] == ["unavailable", "available"]

"""The channel a sweep's results reach the consumer through (``_bulk._Results``): first in,
first out, bounded (a worker with a result waits for room), one reader."""

from __future__ import annotations

import asyncio

from phala_async._bulk import CvmFailed, _Results
from phala_async._errors import InvalidCvmIdError


def _result(n: int) -> CvmFailed:
    return CvmFailed(cvm_id=n, error=InvalidCvmIdError(n, "test"))


async def test_results_come_out_in_order_and_no_more_than_the_room_are_held() -> None:
    """Two places: a third offer is refused until one is taken; items keep their order."""
    channel = _Results(2)
    offered = [channel.offer(_result(n)) for n in (1, 2, 3)]
    first = channel.take()
    third_now = channel.offer(_result(3))
    taken = [channel.take(), channel.take(), channel.take()]
    assert offered == [True, True, False]
    assert third_now is True
    assert isinstance(first, CvmFailed)
    assert first.cvm_id == 1
    assert [item.cvm_id if isinstance(item, CvmFailed) else None for item in taken] == [2, 3, None]


async def test_a_writer_waits_for_room_and_a_reader_for_an_item() -> None:
    """A put into a full channel goes through once the reader takes one; a get on an empty
    channel returns the next item put."""
    channel = _Results(1)
    channel.offer(_result(1))
    async with asyncio.timeout(5):
        writer = asyncio.create_task(channel.put(_result(2)))
        await asyncio.sleep(0)
        waiting = not writer.done()
        got = [await channel.get(), await channel.get()]
        await writer
        reader = asyncio.create_task(channel.get())
        await asyncio.sleep(0)
        channel.offer(_result(3))
        last = await reader
    assert waiting
    assert [item.cvm_id for item in got if isinstance(item, CvmFailed)] == [1, 2]
    assert isinstance(last, CvmFailed)
    assert last.cvm_id == 3


async def test_a_writer_cancelled_as_it_is_woken_passes_the_room_on() -> None:
    """Two writers wait on a full channel; the first is cancelled just as the room it was woken
    for appears: the second gets that room, so no put waits for room that is free."""
    channel = _Results(1)
    channel.offer(_result(0))
    async with asyncio.timeout(5):
        first = asyncio.create_task(channel.put(_result(1)))
        second = asyncio.create_task(channel.put(_result(2)))
        await asyncio.sleep(0)
        channel.take()  # wakes the first writer...
        first.cancel()  # ...which is cancelled before it runs
        await asyncio.gather(first, return_exceptions=True)
        await second
        item = channel.take()
    assert first.cancelled()
    assert isinstance(item, CvmFailed)
    assert item.cvm_id == 2

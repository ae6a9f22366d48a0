"""The attempts' deadlines (``_http._Deadlines``): one loop timer for every attempt of an
exchange, each attempt bounded at its own deadline, a cancellation from outside never turned
into a timeout. Real loop, waits of a few hundredths of a second, each bounded."""

from __future__ import annotations

import asyncio

import pytest

from phala_async._http import _Deadlines


async def _attempt(deadlines: _Deadlines, hold: float, outcomes: list[str]) -> None:
    """One attempt that takes ``hold`` seconds, noting how it ended; it is handed its task, as
    the pipeline does."""
    task = asyncio.current_task()
    assert task is not None
    attempt = deadlines.attempt(task)
    try:
        await asyncio.sleep(hold)
    except BaseException as exc:
        if attempt.end(exc):
            outcomes.append("timed out")
            return
        outcomes.append("cancelled")
        raise
    attempt.end()
    outcomes.append("done")


async def test_each_attempt_is_bounded_at_its_own_deadline_by_one_timer() -> None:
    """Of three attempts started together, the two quick ones end, the stuck one times out, and
    no timer is left behind once none runs."""
    deadlines = _Deadlines(0.05)
    outcomes: list[str] = []
    async with asyncio.timeout(5):
        await asyncio.gather(
            _attempt(deadlines, 0, outcomes),
            _attempt(deadlines, 3600, outcomes),
            _attempt(deadlines, 0.01, outcomes),
        )
    assert sorted(outcomes) == ["done", "done", "timed out"]
    assert (deadlines._running, deadlines._handle) == ({}, None)


async def test_a_later_attempt_is_not_cut_short_by_an_earlier_one_ending() -> None:
    """An attempt that starts after another has ended meets a fresh deadline of its own: the
    timer set for the first does not end it early."""
    deadlines = _Deadlines(0.2)
    outcomes: list[str] = []
    async with asyncio.timeout(5):
        await _attempt(deadlines, 0.15, outcomes)  # most of its time used
        await _attempt(deadlines, 0.1, outcomes)  # well within its own 0.2 s
    assert outcomes == ["done", "done"]


async def test_a_cancellation_from_outside_stays_a_cancellation() -> None:
    """Cancelling the task of a running attempt raises CancelledError, not a timeout, and leaves
    no attempt registered."""
    deadlines = _Deadlines(60)
    outcomes: list[str] = []
    task = asyncio.create_task(_attempt(deadlines, 3600, outcomes))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert outcomes == ["cancelled"]
    assert deadlines._running == {}

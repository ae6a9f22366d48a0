"""The governor's limits and decisions (``_throttle``), on a clock the tests move by hand.

Pacing (:class:`AdaptiveRate`), the shared pause (:class:`PauseGate`), the retry budget, the
concurrency limit, the first-contact probe, :func:`classify` and the counters' snapshot: no
server, no real waiting.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Awaitable

import pytest

from phala_async import (
    APIConnectionError,
    APITimeoutError,
    ClientClosedError,
    DecodeError,
    ResponseTooLargeError,
)
from phala_async._errors import APITLSError, error_for_status
from phala_async._throttle import (
    AdaptiveRate,
    FirstContact,
    Governor,
    MaxInFlight,
    Outcome,
    PauseGate,
    RetryBudget,
    Slot,
    classify,
)


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def finished(outcome: Outcome, retry_after: float | None = None) -> Slot:
    """A request's slot as it is left with ``outcome`` (and the answer's ``Retry-After``)."""
    slot = Governor(concurrency=1).slot()
    slot.outcome = outcome
    slot.retry_after = retry_after
    return slot


# -- adaptive pacing: throttles ------------------------------------------------------------------


def _paced_after_successes(clock: FakeClock, per_second: int) -> AdaptiveRate:
    """A pacer that saw ``per_second`` successes spread over the last second."""
    pacer = AdaptiveRate(clock=clock)
    for _ in range(per_second):
        clock.now += 1.0 / per_second
        pacer.on_success()
    return pacer


def test_burst_of_throttles_from_one_epoch_lowers_the_rate_once() -> None:
    """Forty 429s with Retry-After to requests sent before any decrease lower the rate once, to
    90% of what got through."""
    clock = FakeClock()
    pacer = _paced_after_successes(clock, 200)
    epoch = pacer.epoch
    for _ in range(40):
        pacer.on_throttle(epoch, asked_to_wait=True)
    assert pacer.decreases == 1
    assert pacer.rate == pytest.approx(0.9 * 200)
    assert pacer.epoch == epoch + 1


def test_throttle_of_the_current_epoch_lowers_the_rate_again() -> None:
    """A 429 to a request sent after the first decrease lowers the rate a second time."""
    clock = FakeClock()
    pacer = _paced_after_successes(clock, 200)
    pacer.on_throttle(pacer.epoch, asked_to_wait=True)
    first = pacer.rate
    pacer.on_throttle(pacer.epoch, asked_to_wait=True)
    assert pacer.decreases == 2
    assert first is not None
    assert pacer.rate == pytest.approx(0.9 * first)


def test_stray_throttles_without_retry_after_leave_the_rate_alone() -> None:
    """Five 429s without Retry-After among 200 successes (2.4% of answers) do not pace."""
    clock = FakeClock()
    pacer = _paced_after_successes(clock, 200)
    for _ in range(5):
        pacer.on_throttle(pacer.epoch, asked_to_wait=False)
    assert pacer.decreases == 0
    assert pacer.rate is None


def test_throttles_without_retry_after_pace_once_they_are_five_percent() -> None:
    """429s without Retry-After lower the rate once they reach 5% of the answers in the window."""
    clock = FakeClock()
    pacer = _paced_after_successes(clock, 200)
    epoch = pacer.epoch
    for _ in range(10):
        pacer.on_throttle(epoch, asked_to_wait=False)
    before = pacer.decreases
    pacer.on_throttle(epoch, asked_to_wait=False)  # 11 of 211 answers: 5.2%
    assert before == 0
    assert pacer.decreases == 1
    assert pacer.rate == pytest.approx(0.9 * 200)


def test_one_decrease_at_most_halves_the_rate() -> None:
    """When far fewer requests got through than the current rate, one throttle halves it."""
    clock = FakeClock()
    pacer = _paced_after_successes(clock, 200)
    pacer.on_throttle(pacer.epoch, asked_to_wait=True)
    assert pacer.rate == pytest.approx(180.0)
    clock.now += 5.0  # the window empties; the rate grows meanwhile
    grown = pacer.rate
    for _ in range(10):
        clock.now += 0.1
        pacer.on_success()
    pacer.on_throttle(pacer.epoch, asked_to_wait=True)
    assert grown is not None
    assert pacer.rate == pytest.approx(grown / 2, rel=0.02)


def test_rate_grows_back_without_throttles() -> None:
    """Ten seconds without a throttle raise the rate by 2% of it per second."""
    clock = FakeClock()
    pacer = _paced_after_successes(clock, 100)
    pacer.on_throttle(pacer.epoch, asked_to_wait=True)
    lowered = pacer.rate
    clock.now += 10.0
    assert lowered == pytest.approx(90.0)
    assert pacer.rate == pytest.approx(90.0 * 1.2)


def test_delay_spaces_sends_at_the_rate() -> None:
    """Once paced at 90/s, five sends at one instant are spaced 1/90 s apart."""
    clock = FakeClock()
    pacer = _paced_after_successes(clock, 100)
    pacer.on_throttle(pacer.epoch, asked_to_wait=True)
    delays = [pacer.delay() for _ in range(5)]
    assert pacer.paced is True
    assert delays == pytest.approx([n / 90.0 for n in range(5)])


def test_no_rate_is_learned_when_nothing_succeeded() -> None:
    """Throttles with no success in the window leave an unpaced pacer unpaced."""
    clock = FakeClock()
    pacer = AdaptiveRate(clock=clock)
    for _ in range(10):
        pacer.on_throttle(pacer.epoch, asked_to_wait=True)
    assert pacer.rate is None
    assert pacer.paced is False
    assert pacer.decreases == 0
    assert pacer.delay() == 0.0


# -- adaptive pacing: overload -------------------------------------------------------------------


def _storm(pacer: AdaptiveRate, clock: FakeClock, seconds: float, *, every: int) -> list[float]:
    """Answers at 200 a second for ``seconds``, one in ``every`` a retryable 5xx (each sent in
    the epoch then current); the rate after each decrease it caused."""
    rates = []
    for n in range(round(200 * seconds)):
        clock.now += 1 / 200
        if n % every == every - 1:
            before = pacer.decreases
            pacer.on_overload(pacer.epoch)
            if pacer.decreases > before:
                assert pacer.rate is not None
                rates.append(pacer.rate)
        else:
            pacer.on_success()
    return rates


def test_a_storm_of_5xx_lowers_the_rate_to_what_was_being_sent() -> None:
    """When half of 200 answers a second are 5xx, the pacer lowers the rate once in the first
    second, to 70% of the 200 a second it was sending."""
    clock = FakeClock()
    pacer = AdaptiveRate(clock=clock)
    rates = _storm(pacer, clock, 1.0, every=2)
    assert pacer.decreases == 1
    assert rates == [pytest.approx(0.7 * 200, rel=0.05)]
    assert pacer.paced is True


def test_a_storm_of_5xx_lowers_the_rate_at_most_once_a_window() -> None:
    """Three seconds of a 50% storm lower the rate three times, once a second, each time to 70%
    of the rate in force, not once per failed answer."""
    clock = FakeClock()
    pacer = AdaptiveRate(clock=clock)
    rates = _storm(pacer, clock, 3.0, every=2)
    assert pacer.decreases == 3
    for before, after in itertools.pairwise(rates):
        assert after == pytest.approx(0.7 * before * 1.02, rel=0.02)  # it grew 2% in the second


def test_a_few_5xx_do_not_pace() -> None:
    """5xx answers at one in ten (below the 30% share) never lower the rate."""
    clock = FakeClock()
    pacer = AdaptiveRate(clock=clock)
    _storm(pacer, clock, 3.0, every=10)
    assert (pacer.decreases, pacer.rate, pacer.paced) == (0, None, False)


def test_pacing_set_by_overload_alone_is_lifted_after_five_calm_seconds() -> None:
    """After a 5xx storm paced the client, five seconds with no 5xx and no throttle unpace it;
    just under five seconds, it is still paced."""
    clock = FakeClock()
    pacer = AdaptiveRate(clock=clock)
    _storm(pacer, clock, 1.0, every=2)
    clock.now += 4.9
    still = (pacer.delay() >= 0.0, pacer.paced)
    clock.now += 0.2
    assert still == (True, True)
    assert pacer.delay() == 0.0
    assert (pacer.paced, pacer.rate) == (False, None)


def test_a_429_storm_after_overload_pacing_keeps_the_limit_it_learns() -> None:
    """A 429 with Retry-After after a 5xx storm halves the rate at most, and that pacing is a
    limit learned: it is not lifted by calm, it grows back instead."""
    clock = FakeClock()
    pacer = AdaptiveRate(clock=clock)
    _storm(pacer, clock, 1.0, every=2)
    overload_rate = pacer.rate
    pacer.on_throttle(pacer.epoch, asked_to_wait=True)
    throttled_rate = pacer.rate
    clock.now += 10.0
    assert overload_rate is not None
    assert throttled_rate is not None
    # About 100 successes in the last second, but one decrease never more than halves.
    assert throttled_rate == pytest.approx(max(0.9 * 100, overload_rate / 2), rel=0.05)
    assert pacer.decreases == 2
    assert pacer.delay() == 0.0  # the first send after a calm spell goes at once...
    assert pacer.paced is True  # ...but the client stays paced
    assert pacer.rate == pytest.approx(throttled_rate * 1.2)


# -- the shared pause ----------------------------------------------------------------------------


def test_pause_holds_until_the_moment_named_has_passed() -> None:
    """A 2 s pause is in force 1.9 s later and over 2.1 s later."""
    clock = FakeClock()
    gate = PauseGate(clock)
    gate.pause_for(2.0)
    clock.now += 1.9
    during = gate.paused
    clock.now += 0.2
    assert (during, gate.paused) == (True, False)


def test_a_shorter_pause_never_shortens_a_longer_one() -> None:
    """A 1 s pause asked during a 5 s one leaves the 5 s in force."""
    clock = FakeClock()
    gate = PauseGate(clock)
    gate.pause_for(5.0)
    gate.pause_for(1.0)
    clock.now += 4.0
    assert gate.paused is True


def test_no_wait_is_made_while_no_pause_is_in_force() -> None:
    """Without a pause, a request may start at once (no awaitable); during one it must wait."""
    clock = FakeClock()
    gate = PauseGate(clock)
    free = gate.wait_task_can_start()
    gate.pause_for(1.0)
    waiter = gate.wait_task_can_start()
    assert free is None
    assert isinstance(waiter, Awaitable)
    waiter.close()  # type: ignore[attr-defined]  # a coroutine, never run


@pytest.mark.parametrize(
    ("outcome", "retry_after", "paused"),
    [
        pytest.param(Outcome.THROTTLED, 1.0, True, id="throttled-with-retry-after"),
        pytest.param(Outcome.THROTTLED, None, False, id="throttled-without-retry-after"),
        pytest.param(Outcome.THROTTLED, 61.0, False, id="retry-after-over-the-cap"),
        pytest.param(Outcome.OVERLOADED, 1.0, False, id="overloaded"),
        pytest.param(Outcome.OK, 1.0, False, id="ok"),
    ],
)
def test_only_a_throttle_naming_a_wait_within_the_cap_pauses(
    outcome: Outcome, retry_after: float | None, paused: bool
) -> None:
    """A throttled answer with a Retry-After of at most the cap (60 s) pauses; nothing else."""
    gate = PauseGate(FakeClock(), pause_for_cap=60.0)
    gate.notify_task_finished(finished(outcome, retry_after))
    assert gate.paused is paused


async def test_waiting_outlasts_a_pause_extended_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A wait for a 1 s pause, which an answer at its end extends by 2 s, sleeps 3 s in all."""
    clock = FakeClock()
    gate = PauseGate(clock)
    gate.pause_for(1.0)
    started = clock.now
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds
        if len(slept) == 1:
            gate.pause_for(2.0)  # an answer that came meanwhile asks for more

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    await gate.wait()
    assert slept == pytest.approx([1.0, 2.0])
    assert clock.now - started == pytest.approx(3.0)


# -- the retry budget ----------------------------------------------------------------------------


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


def test_asking_whether_a_retry_is_allowed_changes_nothing() -> None:
    """A thousand ``allows_retry()`` calls on a denying budget count no refusal and change
    neither the ratio nor the answer; the governor's ``may_retry()`` counts none either."""
    budget = _budget_with([False] * 30)
    answers = {budget.allows_retry() for _ in range(1000)}
    governor = Governor(concurrency=4)
    assert governor.budget is not None
    for _ in range(30):
        governor.budget.record(False)
    governed = {governor.may_retry() for _ in range(1000)}
    assert (answers, budget.denied, budget.success_ratio) == ({False}, 0, 0.0)
    assert (governed, governor.snapshot().retries_denied) == ({False}, 0)


# -- the concurrency limit -----------------------------------------------------------------------


async def _take(limit: MaxInFlight, name: str, granted: list[str]) -> None:
    waiter = limit.wait_task_can_start()
    if waiter is not None:
        await waiter
    granted.append(name)


async def test_places_are_granted_in_arrival_order() -> None:
    """With one place taken, three waiters get it in the order they asked, one per release."""
    limit = MaxInFlight(1)
    granted: list[str] = []
    await _take(limit, "holder", granted)
    tasks = [asyncio.create_task(_take(limit, name, granted)) for name in "abc"]
    await asyncio.sleep(0)
    order = []
    for _ in range(3):
        limit.notify_task_finished(finished(Outcome.OK))
        await asyncio.sleep(0)
        order.append(list(granted))
    await asyncio.gather(*tasks)
    assert order == [["holder", "a"], ["holder", "a", "b"], ["holder", "a", "b", "c"]]
    assert limit.active == 1


async def test_a_cancelled_waiter_loses_no_place() -> None:
    """A waiter cancelled while queued, and one cancelled just as it was granted the place,
    leave the place to the next: every release reaches a live waiter and the count ends at 0."""
    limit = MaxInFlight(1)
    granted: list[str] = []
    await _take(limit, "holder", granted)
    tasks = {name: asyncio.create_task(_take(limit, name, granted)) for name in "abcd"}
    await asyncio.sleep(0)
    tasks["b"].cancel()  # cancelled while queued
    await asyncio.sleep(0)
    limit.notify_task_finished(finished(Outcome.OK))  # the holder leaves: "a" is granted...
    tasks["a"].cancel()  # ...and cancelled before it could run
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    after_cancels = (list(granted), limit.active)
    limit.notify_task_finished(finished(Outcome.OK))  # "c" leaves
    await asyncio.sleep(0)
    limit.notify_task_finished(finished(Outcome.OK))  # "d" leaves
    results = await asyncio.gather(*tasks.values(), return_exceptions=True)
    assert after_cancels == (["holder", "c"], 1)
    assert granted == ["holder", "c", "d"]
    assert [type(result) for result in results] == [
        asyncio.CancelledError,
        asyncio.CancelledError,
        type(None),
        type(None),
    ]
    assert limit.active == 0
    assert limit.wait_task_can_start() is None  # the place is free at once


# -- the first contact ---------------------------------------------------------------------------


async def _through(gate: FirstContact, name: str, passed: list[str]) -> None:
    waiter = gate.wait_task_can_start()
    if waiter is not None:
        await waiter
    passed.append(name)


@pytest.mark.parametrize("failure", [Outcome.DOOMED, Outcome.FAILED, Outcome.UNKNOWN])
async def test_first_contact_lets_one_probe_out_and_hands_the_role_on(failure: Outcome) -> None:
    """Of four requests, one goes first; when it proves nothing (a refused credential, no
    answer, a cancellation) exactly one more goes; an OK opens the gate for all, for good."""
    gate = FirstContact()
    passed: list[str] = []
    tasks = [asyncio.create_task(_through(gate, name, passed)) for name in "abcd"]
    await asyncio.sleep(0)
    first = list(passed)
    gate.notify_task_finished(finished(failure))
    await asyncio.sleep(0)
    second = list(passed)
    gate.notify_task_finished(finished(Outcome.OK))
    await asyncio.gather(*tasks)
    assert (first, second) == (["a"], ["a", "b"])
    assert sorted(passed) == ["a", "b", "c", "d"]
    assert gate.wait_task_can_start() is None
    gate.notify_task_finished(finished(Outcome.DOOMED))  # once open, it stays open
    assert gate.wait_task_can_start() is None


async def test_first_contact_role_passes_on_when_the_next_probe_is_cancelled() -> None:
    """A waiter made the probe and cancelled before it ran hands the role to the next one."""
    gate = FirstContact()
    passed: list[str] = []
    tasks = [asyncio.create_task(_through(gate, name, passed)) for name in "abc"]
    await asyncio.sleep(0)
    gate.notify_task_finished(finished(Outcome.FAILED))  # "b" becomes the probe...
    tasks[1].cancel()  # ...and is cancelled before it runs
    await asyncio.gather(tasks[1], return_exceptions=True)
    await asyncio.sleep(0)
    assert passed == ["a", "c"]
    gate.notify_task_finished(finished(Outcome.OK))
    await asyncio.gather(tasks[0], tasks[2])


# -- classify ------------------------------------------------------------------------------------


def _status(status: int, retry_after: float | None = None) -> Exception:
    return error_for_status(status, b"", {}, cvm_id=7, retry_after=retry_after)


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        pytest.param(None, Outcome.OK, id="success"),
        pytest.param(_status(404), Outcome.OK, id="404"),
        pytest.param(_status(403), Outcome.OK, id="403"),
        pytest.param(_status(422), Outcome.OK, id="422"),
        pytest.param(DecodeError("bad body", cvm_id=7), Outcome.OK, id="decode-error"),
        pytest.param(ResponseTooLargeError("big", cvm_id=7, limit=1), Outcome.OK, id="too-large"),
        pytest.param(_status(429), Outcome.THROTTLED, id="429"),
        pytest.param(_status(429, 1.0), Outcome.THROTTLED, id="429-retry-after"),
        pytest.param(_status(503, 1.0), Outcome.THROTTLED, id="503-retry-after"),
        pytest.param(_status(503), Outcome.OVERLOADED, id="503"),
        pytest.param(_status(500), Outcome.OVERLOADED, id="500"),
        pytest.param(_status(502), Outcome.OVERLOADED, id="502"),
        pytest.param(_status(504), Outcome.OVERLOADED, id="504"),
        pytest.param(_status(408), Outcome.FAILED, id="408"),
        pytest.param(_status(425), Outcome.FAILED, id="425"),
        pytest.param(APIConnectionError("reset", cvm_id=7), Outcome.FAILED, id="connection"),
        pytest.param(APITimeoutError("slow", cvm_id=7), Outcome.FAILED, id="timeout"),
        pytest.param(_status(401), Outcome.DOOMED, id="401"),
        pytest.param(APITLSError("untrusted", cvm_id=7), Outcome.DOOMED, id="tls"),
        pytest.param(ClientClosedError(), Outcome.UNKNOWN, id="client-closed"),
        pytest.param(asyncio.CancelledError(), Outcome.UNKNOWN, id="cancelled"),
        pytest.param(ValueError("not ours"), Outcome.UNKNOWN, id="foreign-error"),
    ],
)
def test_classify_says_what_an_answer_means(error: BaseException | None, outcome: Outcome) -> None:
    """Each kind of answer maps to the outcome the limits learn from."""
    assert classify(error) is outcome


# -- the counters --------------------------------------------------------------------------------


def test_snapshot_is_a_copy_that_does_not_change() -> None:
    """A snapshot keeps its counts when the governor counts more, its ``failed`` counter is its
    own, and it cannot be assigned to."""
    governor = Governor(concurrency=4)
    governor.note_call(None)
    governor.note_call(_status(404))
    before = governor.snapshot()
    governor.note_call(None)
    governor.note_call(_status(404))
    governor.note_retry()
    before.failed["NotFoundError"] += 100  # the snapshot's own copy
    after = governor.snapshot()
    assert (before.ok, before.retries) == (1, 0)
    assert (after.ok, after.retries, after.failed) == (2, 1, {"NotFoundError": 2})
    with pytest.raises(dataclasses.FrozenInstanceError):
        before.ok = 5  # type: ignore[misc]

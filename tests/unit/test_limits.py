"""The limits a request passes (``_limits``), driven by direct calls or a clock moved by hand.

The rate pacer, the shared pause, the adaptive window, the sweep's max-in-flight, the first
contact and the hard cap: no server, no real waiting beyond a few milliseconds.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Awaitable, Callable

import pytest

from phala_async._limits import (
    FirstContact,
    HardCap,
    MaxInFlight,
    PauseCheck,
    PauseGate,
    RatePacer,
    Ticket,
    Window,
)
from phala_async._retry import Outcome


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _ticket(outcome: Outcome, retry_after: float | None = None) -> Ticket:
    """A request's ticket as it ends with ``outcome`` (and the answer's ``Retry-After``)."""
    ticket = Ticket()
    ticket.outcome = outcome
    ticket.retry_after = retry_after
    return ticket


# -- the rate pacer: throttles -------------------------------------------------------------------


def _paced_after_successes(clock: FakeClock, per_second: int, increase: float = 2.0) -> RatePacer:
    """A pacer that saw ``per_second`` successes spread over the last second."""
    pacer = RatePacer(clock=clock, increase=increase)
    for _ in range(per_second):
        clock.now += 1.0 / per_second
        pacer.notify_task_finished(_ticket(Outcome.OK))
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


def test_throttle_of_the_current_epoch_lowers_the_rate_again_a_window_later() -> None:
    """A 429 to a request sent after the first decrease lowers the rate in force by 10% once a
    window has passed since that decrease, and not before."""
    clock = FakeClock()
    pacer = _paced_after_successes(clock, 200)
    pacer.on_throttle(pacer.epoch, asked_to_wait=True)
    clock.now += 0.5
    pacer.on_throttle(pacer.epoch, asked_to_wait=True)  # too soon: not taken effect yet
    too_soon = pacer.decreases
    clock.now += 0.5
    grown = pacer.rate
    pacer.on_throttle(pacer.epoch, asked_to_wait=True)
    assert too_soon == 1
    assert pacer.decreases == 2
    assert grown is not None
    assert pacer.rate == pytest.approx(0.9 * grown)


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


def test_once_paced_a_decrease_is_a_share_of_the_rate_in_force() -> None:
    """Paced, a throttle lowers the rate in force by 10% (multiplicative decrease, as AIMD),
    however few requests got through meanwhile, so clients that share a limit keep their
    proportions and converge to fair shares."""
    clock = FakeClock()
    pacer = _paced_after_successes(clock, 200)
    pacer.on_throttle(pacer.epoch, asked_to_wait=True)
    assert pacer.rate == pytest.approx(180.0)
    clock.now += 5.0  # the window empties; the rate grows meanwhile
    for _ in range(10):
        clock.now += 0.1
        pacer.notify_task_finished(_ticket(Outcome.OK))
    grown = pacer.rate
    pacer.on_throttle(pacer.epoch, asked_to_wait=True)
    assert grown == pytest.approx(180.0 + 2.0 * 6 * (1 + 6 / 4))
    assert pacer.rate == pytest.approx(0.9 * grown)


@pytest.mark.parametrize(
    ("increase", "after_ten_seconds"),
    [
        pytest.param(2.0, 90.0 + 2.0 * 10 * 3.5, id="default-2-per-second"),
        pytest.param(5.0, 90.0 + 5.0 * 10 * 3.5, id="5-per-second"),
    ],
)
def test_rate_grows_back_without_throttles_faster_the_longer_it_is_calm(
    increase: float, after_ten_seconds: float
) -> None:
    """Ten seconds without a throttle raise the rate by ``increase`` requests per second each
    second, and by more the longer it stays calm (``increase * t * (1 + t / 4)``), the same
    for every rate, so a limit freed by another client is found again quickly."""
    clock = FakeClock()
    pacer = _paced_after_successes(clock, 100, increase=increase)
    pacer.on_throttle(pacer.epoch, asked_to_wait=True)
    lowered = pacer.rate
    clock.now += 10.0
    assert lowered == pytest.approx(90.0)
    assert pacer.rate == pytest.approx(after_ten_seconds)


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
    pacer = RatePacer(clock=clock)
    for _ in range(10):
        pacer.on_throttle(pacer.epoch, asked_to_wait=True)
    assert pacer.rate is None
    assert pacer.paced is False
    assert pacer.decreases == 0
    assert pacer.delay() == 0.0


def test_a_learned_rate_is_not_lifted_by_calm() -> None:
    """A minute after a throttle, the first send goes at once but the client stays paced, at the
    learned rate plus a minute's growth."""
    clock = FakeClock()
    pacer = _paced_after_successes(clock, 100)
    pacer.on_throttle(pacer.epoch, asked_to_wait=True)
    clock.now += 60.0
    assert pacer.delay() == 0.0
    assert pacer.paced is True
    assert pacer.rate == pytest.approx(90.0 + 2.0 * 60 * (1 + 60 / 4))


@pytest.mark.parametrize(
    ("retry_after", "decreases"),
    [
        pytest.param(1.0, 1, id="retry-after-asks-to-wait"),
        pytest.param(0.0, 0, id="retry-after-0-is-a-stray"),
        pytest.param(None, 0, id="no-retry-after-is-a-stray"),
    ],
)
def test_a_throttled_ticket_asks_to_wait_only_with_a_positive_retry_after(
    retry_after: float | None, decreases: int
) -> None:
    """One throttled ticket among 200 successes lowers the rate only if its Retry-After is > 0."""
    clock = FakeClock()
    pacer = _paced_after_successes(clock, 200)
    ticket = _ticket(Outcome.THROTTLED, retry_after)
    pacer.notify_task_started(ticket)
    pacer.notify_task_finished(ticket)
    assert pacer.decreases == decreases


def test_a_throttled_ticket_sent_before_a_decrease_does_not_lower_again() -> None:
    """A ticket records the pacer's epoch when sent; its throttle after a decrease changes
    nothing, while one sent after the decrease lowers the rate again."""
    clock = FakeClock()
    pacer = _paced_after_successes(clock, 200)
    early, first = _ticket(Outcome.THROTTLED, 1.0), _ticket(Outcome.THROTTLED, 1.0)
    pacer.notify_task_started(early)
    pacer.notify_task_started(first)
    pacer.notify_task_finished(first)
    pacer.notify_task_finished(early)
    after_early = pacer.decreases
    late = _ticket(Outcome.THROTTLED, 1.0)
    pacer.notify_task_started(late)
    clock.now += 1.0  # a window after the decrease
    pacer.notify_task_finished(late)
    assert (after_early, pacer.decreases) == (1, 2)


@pytest.mark.parametrize("outcome", [Outcome.OVERLOADED, Outcome.TIMEOUT, Outcome.FAILED])
def test_overload_and_failures_never_pace(outcome: Outcome) -> None:
    """Fifty 5xx, timeouts or transport failures among 200 successes leave the pacer unpaced:
    overload is the window's to answer."""
    clock = FakeClock()
    pacer = _paced_after_successes(clock, 200)
    for _ in range(50):
        pacer.notify_task_finished(_ticket(outcome))
    assert (pacer.paced, pacer.rate, pacer.decreases) == (False, None, 0)
    assert pacer.wait_task_can_start() is None


def test_a_paced_send_waits_for_its_slot() -> None:
    """Unpaced, a send starts at once; paced at 90/s, the first send starts at once and the
    second must wait."""
    clock = FakeClock()
    pacer = _paced_after_successes(clock, 100)
    unpaced = pacer.wait_task_can_start()
    pacer.on_throttle(pacer.epoch, asked_to_wait=True)
    first = pacer.wait_task_can_start()
    second = pacer.wait_task_can_start()
    assert (unpaced, first) == (None, None)
    assert isinstance(second, Awaitable)
    second.close()  # type: ignore[attr-defined]  # a coroutine, never run


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


async def test_requests_held_by_a_pause_take_fresh_send_times_when_it_ends() -> None:
    """Three requests that passed the pacer and were then held by a pause do not all go at the
    pause's end: each takes a send time of its own from the pacer, one interval apart (sent
    together, they met a limit just spent and were all 429ed)."""
    clock = FakeClock()
    pacer = _paced_after_successes(clock, 100)
    pacer.on_throttle(pacer.epoch, asked_to_wait=True)
    gate = PauseGate(clock)
    gate.pause_for(1.0)
    check = PauseCheck(gate, pacer)
    held = [check.wait_task_can_start() for _ in range(3)]
    clock.now += 1.5  # the pause is over; the fake clock stands still from here
    rate = pacer.rate
    assert rate is not None
    reserved_before = pacer.delay()  # the next send time free before they go, reserved here
    for waiter in held:
        assert waiter is not None
        await waiter
    # Each took one interval: the next free send time is three intervals later than it was.
    assert pacer.delay() == pytest.approx(reserved_before + 4 / rate, rel=1e-6)
    assert PauseCheck(gate).wait_task_can_start() is None  # no pause, no pacer: nothing to do


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
    gate.notify_task_finished(_ticket(outcome, retry_after))
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


# -- the adaptive window -------------------------------------------------------------------------


def _send(window: Window) -> Ticket:
    """Send one request through ``window``, which must have a free place."""
    assert window.wait_task_can_start() is None
    ticket = Ticket()
    window.notify_task_started(ticket)
    return ticket


def _apart() -> Callable[[], float]:
    """A clock a second later at every reading: slow start's own pace never binds."""
    return itertools.count(start=1.0).__next__


def _end(
    window: Window, ticket: Ticket, outcome: Outcome, retry_after: float | None = None
) -> None:
    ticket.outcome = outcome
    ticket.retry_after = retry_after
    window.notify_task_finished(ticket)


def _fill(window: Window, in_flight: deque[Ticket]) -> None:
    """Send requests until the window is full."""
    while window.active < window.limit:
        in_flight.append(_send(window))


def _rounds_kept_full(window: Window, rounds: int) -> list[int]:
    """Keep ``window`` full, ending the oldest request with a success and sending another in its
    place; the limit after each round (as many successes as were in flight at its start)."""
    in_flight: deque[Ticket] = deque()
    _fill(window, in_flight)
    limits = []
    for _ in range(rounds):
        for _ in range(len(in_flight)):
            _end(window, in_flight.popleft(), Outcome.OK)
            _fill(window, in_flight)
        limits.append(window.limit)
    return limits


def test_slow_start_doubles_the_window_every_round_up_to_the_ceiling() -> None:
    """Kept full from 4, the window at least doubles every round of successes until it reaches
    its ceiling of 64, and never passes it."""
    window = Window(64, initial=4, clock=_apart())
    limits = _rounds_kept_full(window, 8)
    assert all(after >= min(64, 2 * before) for before, after in itertools.pairwise([4, *limits]))
    assert limits[-1] == 64
    assert max(limits) == 64


def test_slow_start_doubles_at_most_once_every_doubling_time_however_fast_answers_come() -> None:
    """Answers that come at once (a server a millisecond away) grow the window from 4 to 8
    only once SLOW_START_DOUBLING has passed since slow start began, to 16 after twice that;
    rounds of answers in between do not grow it."""
    now = [0.0]
    window = Window(64, initial=4, clock=lambda: now[0])
    in_flight: deque[Ticket] = deque()
    limits = []
    for _ in range(3):
        _fill(window, in_flight)
        for _ in range(5):  # five rounds of answers, all at this moment
            for _ in range(len(in_flight)):
                _end(window, in_flight.popleft(), Outcome.OK)
                _fill(window, in_flight)
        limits.append(window.limit)
        now[0] += Window.SLOW_START_DOUBLING
    assert limits == [4, 8, 16]


def test_a_success_sent_with_the_window_full_grows_it() -> None:
    """A success of a request sent with the window full grows it by one in slow start; one sent
    with a place free does not."""
    window = Window(8, initial=2, clock=_apart())
    _end(window, _send(window), Outcome.OK)  # alone, in a window of 2
    idle = window.limit
    first, second = _send(window), _send(window)
    _end(window, second, Outcome.OK)  # the window was full when it went
    _end(window, first, Outcome.OK)
    assert (idle, window.limit) == (2, 3)


def test_an_idle_window_does_not_grow() -> None:
    """A hundred successes of requests sent one at a time leave a window of 4 at 4."""
    window = Window(64, initial=4, clock=_apart())
    for _ in range(100):
        _end(window, _send(window), Outcome.OK)
    assert window.limit == 4
    assert window.active == 0


def test_a_429_of_the_current_epoch_shrinks_the_window_and_an_older_one_does_not() -> None:
    """The first 429 asking for a wait, of a full window of 10, shrinks it to 7; a 429 to
    another request sent before that decrease changes nothing; a 429 to one sent after it
    shrinks it again."""
    window = Window(20, initial=10)
    old = [_send(window) for _ in range(10)]
    _end(window, old[0], Outcome.THROTTLED, 1.0)
    after_first = window.limit
    _end(window, old[1], Outcome.THROTTLED, 1.0)  # sent before the decrease
    after_older = window.limit
    _end(window, old[2], Outcome.OK)  # in flight 7, then 6: a place is free again
    _end(window, old[3], Outcome.OK)
    new = _send(window)
    _end(window, new, Outcome.THROTTLED, 1.0)
    # The two successes came with the window full (8, then 7 in flight), so it grew to 7.3
    # before the third 429 took it to 5.
    assert (after_first, after_older, window.limit) == (7, 7, 5)
    assert window.decreases == 2


def test_a_stray_429_without_retry_after_leaves_the_window_alone() -> None:
    """A 429 that names no wait is the pacer's to judge: the window of 10 stays at 10."""
    window = Window(20, initial=10)
    tickets = [_send(window) for _ in range(10)]
    _end(window, tickets[0], Outcome.THROTTLED)
    assert (window.limit, window.decreases) == (10, 0)


@pytest.mark.parametrize("outcome", [Outcome.OVERLOADED, Outcome.TIMEOUT])
def test_a_failure_where_lighter_load_succeeds_shrinks_the_window(outcome: Outcome) -> None:
    """Two 5xx or timeouts of requests sent with 8 in flight, while requests sent with 4 to 7
    succeed, shrink a window of 8 by ``decrease`` to 5; the first alone is not evidence yet."""
    window = Window(8, initial=8)
    for _ in range(3):  # rounds of 7 in flight, all answered
        for ticket in [_send(window) for _ in range(7)]:
            _end(window, ticket, Outcome.OK)
    tickets = [_send(window) for _ in range(8)]
    _end(window, tickets[7], outcome)
    after_one = window.limit
    again = _send(window)  # the 8th in flight again, in the same epoch
    _end(window, again, outcome)
    assert (tickets[7].level, again.level) == (8, 8)
    assert after_one == 8
    assert (window.limit, window.decreases) == (5, 1)


def test_a_failure_no_likelier_than_at_half_the_load_leaves_the_window_alone() -> None:
    """5xx to requests sent with 5 in flight, where requests sent with 2 to 4 in flight fail
    as often (every other one), never shrink the window."""
    window = Window(8, initial=8)
    for round_number in range(6):
        tickets = [_send(window) for _ in range(5)]
        for ticket in tickets:
            failed = (ticket.level + round_number) % 2 == 0
            _end(window, ticket, Outcome.OVERLOADED if failed else Outcome.OK)
    assert (window.limit, window.decreases) == (8, 0)


def test_instant_5xx_at_a_level_slow_start_jumped_to_shrink_the_window() -> None:
    """A capped server seen from slow start: two rounds of successes take the window from 4 to
    16, so no answer came from 8 to 15 in flight but one or two at 8. The requests beyond the
    capacity are answered 503 at once and sent again at 16 in flight, so those levels never get
    one. Compared with all levels below, the second such 503 shrinks the window, where it used
    to wait for answers that never came."""
    window = Window(32, initial=4, clock=_apart())
    in_flight: deque[Ticket] = deque()
    _fill(window, in_flight)
    for _ in range(2):
        for _ in range(len(in_flight)):
            _end(window, in_flight.popleft(), Outcome.OK)
            _fill(window, in_flight)
    jumped = window.limit
    levels = []
    for _ in range(2):
        ticket = in_flight.pop()  # the newest: beyond the capacity, answered at once
        levels.append(ticket.level)
        _end(window, ticket, Outcome.OVERLOADED)
        _fill(window, in_flight)
    assert jumped == 16
    assert levels == [16, 16]
    assert (window.limit, window.decreases) == (11, 1)


def test_random_5xx_at_every_level_do_not_shrink_the_window() -> None:
    """A server failing every other request at every level, however many are in flight, never
    shrinks a window of 8 after a warm-up of 20 rounds."""
    window = Window(8, initial=8)
    failed_last = [False] * 10  # per level: every other answer fails
    decreases_after_warm_up = 0
    for round_number in range(120):
        if round_number == 20:
            decreases_after_warm_up = window.decreases
        in_flight: deque[Ticket] = deque()
        _fill(window, in_flight)  # from empty: one request at each level
        for ticket in in_flight:
            failed_last[ticket.level] = fail = not failed_last[ticket.level]
            _end(window, ticket, Outcome.OVERLOADED if fail else Outcome.OK)
    assert window.decreases - decreases_after_warm_up == 0
    assert window.limit == 8


def test_the_window_grows_four_times_slower_within_one_request_of_where_it_shrank() -> None:
    """A full window of 10 shrinks to 7 on a 429; kept full, it grows back a request a round
    to 9, then takes four or five rounds a request from 9 to 11 (within one of the 10 that
    overloaded), then a request a round again. A capped server is probed a quarter as often."""
    window = Window(32, initial=10)
    tickets = [_send(window) for _ in range(10)]
    _end(window, tickets[0], Outcome.THROTTLED, 1.0)
    for ticket in tickets[1:]:
        _end(window, ticket, Outcome.OK)
    limits = _rounds_kept_full(window, 14)
    assert limits == [8, 9, 9, 9, 9, 10, 10, 10, 10, 10, 11, 12, 13, 14]


def test_the_window_stays_between_1_and_its_ceiling() -> None:
    """Thirty 429s in a row shrink a window of 6 to 1, not below; sixty rounds of successes
    with the window kept full grow it back to 6, not above."""
    window = Window(6, initial=6)
    for _ in range(30):
        _end(window, _send(window), Outcome.THROTTLED, 1.0)
    floor = window.limit
    limits = _rounds_kept_full(window, 60)
    assert floor == 1
    assert max(limits) == 6
    assert limits[-1] == 6


async def test_a_growing_window_wakes_a_waiter_for_each_new_place() -> None:
    """A success that grows a full window of 2 to 3 wakes two waiters, one for the place it
    freed and one for the new place; the third waits on."""
    window = Window(8, initial=2, clock=_apart())
    first, second = _send(window), _send(window)
    woken: list[str] = []

    async def wait(name: str) -> None:
        waiter = window.wait_task_can_start()
        assert waiter is not None
        await waiter
        woken.append(name)

    tasks = [asyncio.create_task(wait(name)) for name in "xyz"]
    await asyncio.sleep(0)
    _end(window, second, Outcome.OK)
    await asyncio.sleep(0)
    after_growth = (list(woken), window.limit, window.active)
    _end(window, first, Outcome.OK)
    await asyncio.gather(*tasks)
    assert after_growth == (["x", "y"], 3, 3)
    assert woken == ["x", "y", "z"]


# -- the places in flight: a sweep's max-in-flight and the window --------------------------------

LimitWithPlaces = MaxInFlight | Window
PLACE_LIMITS = [
    pytest.param(lambda: MaxInFlight(1), id="max-in-flight"),
    pytest.param(lambda: Window(1, initial=1), id="window"),
]


async def _take(limit: LimitWithPlaces, name: str, granted: list[str]) -> None:
    waiter = limit.wait_task_can_start()
    if waiter is not None:
        await waiter
    granted.append(name)


@pytest.mark.parametrize("make_limit", PLACE_LIMITS)
async def test_places_are_granted_in_arrival_order(
    make_limit: Callable[[], LimitWithPlaces],
) -> None:
    """With one place taken, three waiters get it in the order they asked, one per release."""
    limit = make_limit()
    granted: list[str] = []
    await _take(limit, "holder", granted)
    tasks = [asyncio.create_task(_take(limit, name, granted)) for name in "abc"]
    await asyncio.sleep(0)
    order = []
    for _ in range(3):
        limit.notify_task_finished(_ticket(Outcome.OK))
        await asyncio.sleep(0)
        order.append(list(granted))
    await asyncio.gather(*tasks)
    assert order == [["holder", "a"], ["holder", "a", "b"], ["holder", "a", "b", "c"]]
    assert limit.active == 1


@pytest.mark.parametrize("make_limit", PLACE_LIMITS)
async def test_a_cancelled_waiter_loses_no_place(
    make_limit: Callable[[], LimitWithPlaces],
) -> None:
    """A waiter cancelled while queued, and one cancelled just as it was granted the place,
    leave the place to the next: every release reaches a live waiter and the count ends at 0."""
    limit = make_limit()
    granted: list[str] = []
    await _take(limit, "holder", granted)
    tasks = {name: asyncio.create_task(_take(limit, name, granted)) for name in "abcd"}
    await asyncio.sleep(0)
    tasks["b"].cancel()  # cancelled while queued
    await asyncio.sleep(0)
    limit.notify_task_finished(_ticket(Outcome.OK))  # the holder leaves: "a" is granted...
    tasks["a"].cancel()  # ...and cancelled before it could run
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    after_cancels = (list(granted), limit.active)
    limit.notify_task_finished(_ticket(Outcome.OK))  # "c" leaves
    await asyncio.sleep(0)
    limit.notify_task_finished(_ticket(Outcome.OK))  # "d" leaves
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


@pytest.mark.parametrize(
    "failure", [Outcome.DOOMED, Outcome.FAILED, Outcome.TIMEOUT, Outcome.UNKNOWN]
)
async def test_first_contact_lets_one_probe_out_and_hands_the_role_on(failure: Outcome) -> None:
    """Of four requests, one goes first; when it proves nothing (a refused credential, no
    answer, a timeout, a cancellation) exactly one more goes; an OK opens the gate for all, for
    good."""
    gate = FirstContact()
    passed: list[str] = []
    tasks = [asyncio.create_task(_through(gate, name, passed)) for name in "abcd"]
    await asyncio.sleep(0)
    first = list(passed)
    gate.notify_task_finished(_ticket(failure))
    await asyncio.sleep(0)
    second = list(passed)
    gate.notify_task_finished(_ticket(Outcome.OK))
    await asyncio.gather(*tasks)
    assert (first, second) == (["a"], ["a", "b"])
    assert sorted(passed) == ["a", "b", "c", "d"]
    assert gate.is_open is True
    assert gate.wait_task_can_start() is None
    gate.notify_task_finished(_ticket(Outcome.DOOMED))  # once open, it stays open
    assert gate.wait_task_can_start() is None


@pytest.mark.parametrize("answer", [Outcome.THROTTLED, Outcome.OVERLOADED])
async def test_first_contact_opens_on_any_answer_that_is_not_a_failure(answer: Outcome) -> None:
    """A 429 or a 5xx proves the credential and the connection: it opens the gate for all."""
    gate = FirstContact()
    passed: list[str] = []
    tasks = [asyncio.create_task(_through(gate, name, passed)) for name in "abc"]
    await asyncio.sleep(0)
    gate.notify_task_finished(_ticket(answer))
    await asyncio.gather(*tasks)
    assert sorted(passed) == ["a", "b", "c"]
    assert gate.is_open is True


async def test_first_contact_role_passes_on_when_the_next_probe_is_cancelled() -> None:
    """A waiter made the probe and cancelled before it ran hands the role to the next one."""
    gate = FirstContact()
    passed: list[str] = []
    tasks = [asyncio.create_task(_through(gate, name, passed)) for name in "abc"]
    await asyncio.sleep(0)
    gate.notify_task_finished(_ticket(Outcome.FAILED))  # "b" becomes the probe...
    tasks[1].cancel()  # ...and is cancelled before it runs
    await asyncio.gather(tasks[1], return_exceptions=True)
    await asyncio.sleep(0)
    assert passed == ["a", "c"]
    gate.notify_task_finished(_ticket(Outcome.OK))
    await asyncio.gather(tasks[0], tasks[2])


async def test_first_contact_opens_after_its_bound_while_the_probe_is_still_out() -> None:
    """With a 0.05 s bound, a probe that never ends holds the others back until the bound only:
    then the gate opens for good, releases every waiter and calls ``on_open`` once."""
    loop = asyncio.get_running_loop()
    opened: list[float] = []
    gate = FirstContact(on_open=lambda: opened.append(loop.time()), bound=0.05)
    passed: list[str] = []
    started = loop.time()
    tasks = [asyncio.create_task(_through(gate, name, passed)) for name in "abc"]
    await asyncio.sleep(0)
    held = (list(passed), gate.is_open)
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=1.0)
    gate.notify_task_finished(_ticket(Outcome.DOOMED))  # the probe ends late: nothing changes
    assert held == (["a"], False)
    assert passed == ["a", "b", "c"]
    assert gate.is_open is True
    assert len(opened) == 1
    assert opened[0] - started >= 0.04
    assert gate.wait_task_can_start() is None


# -- the hard cap --------------------------------------------------------------------------------


async def test_hard_cap_holds_a_send_beyond_its_rate() -> None:
    """A cap of 5 requests per second lets 5 go at once and holds the sixth."""
    cap = HardCap(5.0)
    for _ in range(5):
        waiter = cap.wait_task_can_start()
        assert waiter is not None
        await asyncio.wait_for(waiter, timeout=0.005)
    sixth = cap.wait_task_can_start()
    assert sixth is not None
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(sixth, timeout=0.005)


def test_the_pause_reads_no_clock_once_it_is_over() -> None:
    """After a pause has ended and been seen to end, a request passing the gate costs no clock
    read; a new pause is seen again."""
    reads = 0
    clock = FakeClock()

    def counted() -> float:
        nonlocal reads
        reads += 1
        return clock()

    gate = PauseGate(counted)
    gate.pause_for(1.0)
    clock.now += 2.0
    assert gate.wait_task_can_start() is None  # reads the clock, sees the pause is over
    before = reads
    for _ in range(10):
        assert gate.wait_task_can_start() is None
    quiet_reads = reads - before
    gate.pause_for(1.0)
    waiter = gate.wait_task_can_start()
    assert quiet_reads == 0
    assert waiter is not None
    waiter.close()  # type: ignore[attr-defined]  # a coroutine never awaited

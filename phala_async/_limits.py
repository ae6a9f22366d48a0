"""The limits on when a request may be sent, each a small object with aiometer's protocol.

Each limit has ``wait_task_can_start`` (None when a request may go at once, so the common case
costs a method call and no await; else an awaitable that ends when it may),
``notify_task_started`` and ``notify_task_finished``. They read and write a :class:`Ticket`, the
record of one request. Every limit that keeps time takes a clock, so its decisions are tested
with a fake one. The governor (``_governor``) holds them in order.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

from aiolimiter import AsyncLimiter

from ._retry import Outcome

__all__ = [
    "Clock",
    "FirstContact",
    "HardCap",
    "Limit",
    "MaxInFlight",
    "PauseCheck",
    "PauseGate",
    "RatePacer",
    "Ticket",
    "Window",
]

Clock = Callable[[], float]

# The members as module constants: the request path reads several per request.
_OK, _THROTTLED, _OVERLOADED = Outcome.OK, Outcome.THROTTLED, Outcome.OVERLOADED
_TIMEOUT, _FAILED, _DOOMED, _UNKNOWN = (
    Outcome.TIMEOUT,
    Outcome.FAILED,
    Outcome.DOOMED,
    Outcome.UNKNOWN,
)


class Ticket:
    """What the limits know of one request.

    Attributes:
        outcome: what its ending meant, set when it ends (UNKNOWN if it was never sent).
        retry_after: the answer's ``Retry-After``, when it was a throttle.
        level: requests in flight when it was sent, itself included.
        window_epoch: the window's epoch when it was sent.
        rate_epoch: the pacer's epoch when it was sent.
    """

    __slots__ = ("level", "outcome", "rate_epoch", "retry_after", "window_epoch")

    def __init__(self) -> None:
        self.outcome = _UNKNOWN
        self.retry_after: float | None = None
        self.level = 0
        self.window_epoch = 0
        self.rate_epoch = 0


class Limit(Protocol):
    """One rule on when a request may start (aiometer's meter protocol)."""

    def wait_task_can_start(self) -> Awaitable[None] | None:
        """None when a request may start now; else an awaitable that ends when it may."""

    def notify_task_started(self, ticket: Ticket) -> None:
        """The request is about to be sent."""

    def notify_task_finished(self, ticket: Ticket) -> None:
        """The request ended; ``ticket.outcome`` says how."""


class _Waiters(deque["asyncio.Future[None]"]):
    """Tasks waiting for their turn, woken one at a time in arrival order.

    A deque of their futures, so that asking whether anyone waits (once per request) is the
    deque's own truth test.
    """

    __slots__ = ()

    async def wait(self, *, give_back: Callable[[], None]) -> None:
        """Wait to be woken; ``give_back`` passes the turn on if a cancellation lands just as
        this waiter was woken."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                give_back()
            elif waiter in self:  # a waker may have dropped it already
                self.remove(waiter)
            raise

    def wake_one(self) -> bool:
        """Wake the longest waiting task still there; False when none was."""
        while self:
            waiter = self.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return True
        return False


class MaxInFlight:
    """At most ``limit`` requests at once, granted in arrival order (a sweep's own limit).

    A counter with a queue of waiters, rather than ``asyncio.Semaphore``, so that the free case
    is a method call without an await; a freed place is handed straight to the next waiter.
    """

    __slots__ = ("_active", "_waiters", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._active = 0
        self._waiters = _Waiters()

    @property
    def active(self) -> int:
        """Places taken now."""
        return self._active

    def wait_task_can_start(self) -> Awaitable[None] | None:
        if self._active < self.limit and not self._waiters:
            self._active += 1
            return None
        # Granted as a cancellation landed: the place is passed on.
        return self._waiters.wait(give_back=self.release)

    def notify_task_started(self, ticket: Ticket) -> None:
        pass

    def notify_task_finished(self, ticket: Ticket) -> None:
        self.release()

    def release(self) -> None:
        """Give a place back: to the next waiter, or to the pool."""
        if not self._waiters.wake_one():  # else the place moved to a waiter: _active stays
            self._active -= 1


class Window:
    """Requests in flight at most, found by additive increase and multiplicative decrease
    between 1 and ``ceiling``, as TCP, vector's adaptive request concurrency and Netflix's
    concurrency-limits do.

    It starts small (``initial``) and doubles every round trip while answers come back well
    (slow start), but at most once every ``SLOW_START_DOUBLING`` seconds however fast answers
    come, up to the ceiling or to the last size that overloaded the server; from there
    it grows by one request per round trip, and only while it is full, so an idle client does
    not inflate it. Within one request of the size at which it last shrank, it grows ``PROBE``
    times slower, so a server capped there is probed past its capacity less often. An overload
    signal (a retryable 5xx without ``Retry-After``, a timeout, a 429 asking for a wait) for a
    request sent since the last decrease shrinks it by ``decrease``.

    A 5xx or a timeout counts as overload only where it depends on the load: when requests sent
    with this many in flight fail clearly more often (by ``margin``) than requests sent with
    fewer (from half as many up). A server at its capacity fails exactly the requests beyond it,
    while a server failing at random (half its backends down) fails as many at every level, and
    shrinking would only slow the client down. The shares are decayed, and all of them halve
    every few rounds, so they follow a server that changes; a level with few answers yet leans on
    the levels below it, so one unlucky answer does not count. Where the levels from half as
    many up have no recent answers (slow start jumped past them, and a full window sends at its
    top level only), the level is compared with all levels below it; without recent answers
    there either, nothing is judged. A 429 that asks for a wait
    (``Retry-After`` above 0) always counts: the server says it; a stray one without is the
    pacer's to judge.

    Uncoordinated clients sharing one server converge to fair shares, as AIMD does.

    Why slow start keeps to a pace of its own: against a server a few milliseconds away, answers
    doubled the window every 2-3 ms, so a client reached its ceiling before a rate limit's burst
    ran out, and every request then in flight was refused together (four processes of 32 on one
    100/s key: 50-100 429s in their first 0.1 s, most of all they got). A server further away
    than ``SLOW_START_DOUBLING`` sees no change.
    """

    __slots__ = (
        "_active",
        "_clock",
        "_epoch",
        "_failures",
        "_halving_every",
        "_initial",
        "_limit",
        "_overloaded_at",
        "_sent",
        "_since_halving",
        "_slow_start_at",
        "_threshold",
        "_waiters",
        "ceiling",
        "decrease",
        "decreases",
        "margin",
    )

    #: How much of a level's past each new answer at that level keeps.
    DECAY = 0.98
    #: Answers at the share of the levels below that a level's own answers are weighed with.
    PRIOR = 3.0
    #: Recent answers below a level needed to compare it with them.
    MIN_BELOW = 4.0
    #: How many times slower the window grows within one request of where it last shrank.
    PROBE = 4.0
    #: Seconds: slow start doubles the window at most this often.
    SLOW_START_DOUBLING = 0.01

    def __init__(
        self,
        ceiling: int,
        *,
        initial: int = 4,
        decrease: float = 0.7,
        margin: float = 0.25,
        clock: Clock = time.monotonic,
    ) -> None:
        self.ceiling = ceiling
        self.decrease = decrease
        self.margin = margin
        self._limit = self._initial = float(min(ceiling, max(1, initial)))
        self._clock = clock
        self._slow_start_at: float | None = None  # when the first request was sent
        self._threshold = float(ceiling)
        self._overloaded_at = 0.0  # the window's size when it last shrank
        self._active = 0
        self._epoch = 0
        self._waiters = _Waiters()
        # Decayed counts of answers, and of overload among them, by requests in flight at send.
        self._sent = [0.0] * (ceiling + 2)
        self._failures = [0.0] * (ceiling + 2)
        self._since_halving = 0
        self._halving_every = 4 * ceiling
        #: How many times an overload shrank the window.
        self.decreases = 0

    @property
    def limit(self) -> int:
        """Requests allowed in flight now."""
        return int(self._limit)

    @property
    def active(self) -> int:
        """Requests in flight now."""
        return self._active

    def wait_task_can_start(self) -> Awaitable[None] | None:
        if self._active < self._limit and not self._waiters:
            self._active += 1
            return None
        return self._waiters.wait(give_back=self._release)

    def notify_task_started(self, ticket: Ticket) -> None:
        ticket.level = min(self._active, self.ceiling + 1)
        ticket.window_epoch = self._epoch
        if self._slow_start_at is None:  # the first request: slow start's pace counts from it
            self._slow_start_at = self._clock()

    def notify_task_finished(self, ticket: Ticket) -> None:
        outcome = ticket.outcome
        level = ticket.level
        self._since_halving += 1
        if self._since_halving > self._halving_every:
            self._halve()
        if outcome is _OK:
            sent = self._sent
            sent[level] = sent[level] * self.DECAY + 1.0
            failures = self._failures
            if failures[level]:  # mostly 0.0, which decays to itself
                failures[level] *= self.DECAY
            limit = self._limit
            if self._active >= int(limit) and limit < self.ceiling:  # full: it may grow
                if limit < self._threshold:
                    step = 1.0 if limit + 1.0 <= self._slow_start_cap() else 0.0
                elif -1.0 < limit - self._overloaded_at < 1.0:
                    step = 1.0 / (self.PROBE * limit)  # where it overloaded last: slowly
                else:
                    step = 1.0 / limit
                self._limit = min(float(self.ceiling), limit + step)
        elif outcome is _OVERLOADED or outcome is _TIMEOUT:
            self._sent[level] = self._sent[level] * self.DECAY + 1.0
            self._failures[level] = self._failures[level] * self.DECAY + 1.0
            if ticket.window_epoch == self._epoch and self._load_related(level):
                self._shrink()
        elif outcome is _THROTTLED and ticket.retry_after and ticket.window_epoch == self._epoch:
            self._shrink()
        self._release()

    def _slow_start_cap(self) -> float:
        """The largest window slow start allows now: ``initial``, doubled once every
        :attr:`SLOW_START_DOUBLING` since the first request was sent."""
        started = self._slow_start_at
        doublings = 0.0 if started is None else (self._clock() - started) / self.SLOW_START_DOUBLING
        return self._initial * float(2.0 ** min(doublings, 32.0))  # past 2**32 it binds nothing

    def _load_related(self, level: int) -> bool:
        """Whether requests sent at ``level`` fail clearly more than those sent with fewer."""
        if level <= 1:
            return False  # a request sent alone: no load to blame
        low = max(1, level // 2)
        sent = sum(self._sent[low:level])
        if sent < self.MIN_BELOW:
            # Slow start can jump past these levels, and a window kept full sends every request
            # at its top level, so they may never get answers: compare with all levels below.
            low = 1
            sent = sum(self._sent[1:level])
            if sent < self.MIN_BELOW:
                return False  # nothing recent to compare with
        below = sum(self._failures[low:level]) / sent
        here = (self._failures[level] + self.PRIOR * below) / (self._sent[level] + self.PRIOR)
        return here > below + self.margin

    def _halve(self) -> None:
        """Age every level's counts, so that levels no longer sent at fade out."""
        self._since_halving = 0
        self._sent = [count / 2 for count in self._sent]
        self._failures = [count / 2 for count in self._failures]

    def _shrink(self) -> None:
        self._overloaded_at = self._limit
        self._limit = self._threshold = max(1.0, self._limit * self.decrease)
        self._epoch += 1
        self.decreases += 1

    def _release(self) -> None:
        self._active -= 1
        waiters = self._waiters
        while waiters and self._active < self._limit and waiters.wake_one():
            self._active += 1


class PauseGate:
    """Holds new requests until a moment the server named has passed.

    When an answer carries ``Retry-After``, the pause moves forward, and every request, whichever
    task sends it, waits before it is sent.
    """

    __slots__ = ("_clock", "_on_change", "_until", "pause_for_cap")

    def __init__(
        self,
        clock: Clock = time.monotonic,
        *,
        pause_for_cap: float = 60.0,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._clock = clock
        self._until = 0.0
        self._on_change = on_change
        #: A Retry-After longer than this does not pause the client (the call raises at once).
        self.pause_for_cap = pause_for_cap

    @property
    def pending(self) -> bool:
        """Whether a pause was set and not yet seen to be over (``on_change`` is called when
        this changes)."""
        return bool(self._until)

    def pause_for(self, seconds: float) -> None:
        """Hold new requests for ``seconds`` from now (never shortens a longer pause)."""
        until = self._clock() + seconds
        if until > self._until:
            was_pending = bool(self._until)
            self._until = until
            if not was_pending and self._on_change is not None:
                self._on_change()

    @property
    def paused(self) -> bool:
        """Whether a pause is in force now."""
        return self._until > self._clock()

    async def wait(self) -> None:
        """Return once no pause is in force."""
        # An Event would need a timer task to set it; a pause is rare and short, so sleep, in a
        # loop since another answer may extend the pause meanwhile.
        while (delay := self._until - self._clock()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(delay)

    def wait_task_can_start(self) -> Awaitable[None] | None:
        until = self._until
        if not until:
            return None  # no pause since the last one ended: no need to read the clock
        if until > self._clock():
            return self.wait()
        self._until = 0.0
        if self._on_change is not None:
            self._on_change()
        return None

    def notify_task_started(self, ticket: Ticket) -> None:
        pass

    def notify_task_finished(self, ticket: Ticket) -> None:
        retry_after = ticket.retry_after
        if (
            retry_after is not None
            and ticket.outcome is _THROTTLED
            and retry_after <= self.pause_for_cap
        ):
            self.pause_for(retry_after)


class PauseCheck:
    """The pause checked again just before sending, for a request whose turn came while a
    pause began: it learns nothing itself (the :class:`PauseGate` does).

    A request held here had its send time from the pacer before the pause began, and so had
    every other request held with it: when the pause ends they would all go at once, into a
    limit that has just been spent (measured: bursts of 5-9 requests 429ed together, each
    process once a pause, with four processes on one key). So a request held here takes a
    fresh send time from ``pacer`` once the pause is over.
    """

    __slots__ = ("_gate", "_pacer")

    def __init__(self, gate: PauseGate, pacer: RatePacer | None = None) -> None:
        self._gate = gate
        self._pacer = pacer

    def wait_task_can_start(self) -> Awaitable[None] | None:
        waiting = self._gate.wait_task_can_start()
        if waiting is None or self._pacer is None:
            return waiting
        return self._paced_after(waiting)

    async def _paced_after(self, waiting: Awaitable[None] | None) -> None:
        pacer = self._pacer
        assert pacer is not None  # noqa: S101 - only called with a pacer
        while waiting is not None:
            await waiting
            pacing = pacer.wait_task_can_start()
            if pacing is None:
                return
            await pacing
            waiting = self._gate.wait_task_can_start()  # a pause may have begun meanwhile

    def notify_task_started(self, ticket: Ticket) -> None:
        pass

    def notify_task_finished(self, ticket: Ticket) -> None:
        pass


class HardCap:
    """An account's known limit, in requests per second (aiolimiter's leaky bucket)."""

    __slots__ = ("_limiter",)

    def __init__(self, per_second: float) -> None:
        self._limiter = AsyncLimiter(per_second, 1.0)

    def wait_task_can_start(self) -> Awaitable[None] | None:
        return self._limiter.acquire()

    def notify_task_started(self, ticket: Ticket) -> None:
        pass

    def notify_task_finished(self, ticket: Ticket) -> None:
        pass


class FirstContact:
    """Sends the first request alone, so that a wrong credential or a failing TLS set-up costs
    one request, not one per caller; but never holds the others longer than ``bound`` seconds.

    Until one answer shows the credential and the connection work, only one request (the probe)
    is on the wire; the others wait. An answer that dooms every request (401, a TLS failure), a
    transport failure or a cancellation hands the probe role to the next waiter. Any other
    answer opens the gate for good, and so does ``bound`` seconds after the first probe went
    out: a slow or silent first request holds nobody for longer.
    """

    __slots__ = ("_bound", "_on_open", "_open", "_probing", "_timer", "_waiters")

    def __init__(self, on_open: Callable[[], None] | None = None, *, bound: float = 1.0) -> None:
        self._on_open = on_open
        self._bound = bound
        self._open = False
        self._probing = False
        self._timer: asyncio.TimerHandle | None = None
        self._waiters = _Waiters()

    @property
    def is_open(self) -> bool:
        """Whether requests pass freely now."""
        return self._open

    def wait_task_can_start(self) -> Awaitable[None] | None:
        if self._open:
            return None
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._bound, self.open)
        if not self._probing:
            self._probing = True
            return None
        # Made the probe as a cancellation landed: the role is passed on.
        return self._waiters.wait(give_back=self._hand_on)

    def notify_task_started(self, ticket: Ticket) -> None:
        pass

    def notify_task_finished(self, ticket: Ticket) -> None:
        if self._open:
            return
        outcome = ticket.outcome
        if outcome is _DOOMED or outcome is _UNKNOWN or outcome is _FAILED or outcome is _TIMEOUT:
            # Refused, cancelled, or no answer at all: nothing is proven yet.
            self._hand_on()
            return
        self.open()

    def open(self) -> None:
        """Let every request pass from now on."""
        if self._open:
            return
        self._open = True
        self._probing = False
        if self._timer is not None:
            self._timer.cancel()
        if self._on_open is not None:
            self._on_open()
        while self._waiters.wake_one():
            pass

    def _hand_on(self) -> None:
        if not self._waiters.wake_one():  # else that waiter is the probe now
            self._probing = False


class RatePacer:
    """A client-side send rate that finds an unpublished rate limit, staying just under what it
    lets through.

    Unpaced until the server throttles in earnest. Then the rate is set to ``decrease`` times the
    successes per second the client saw over the last ``window`` seconds (what the server
    actually let through); once paced, a throttle lowers the rate in force by ``decrease``, at
    most once a window (multiplicative decrease). Without throttles the rate grows by
    ``increase`` requests per second, more the longer it stays calm (``increase * t * (1 + t /
    (4 * window))`` after ``t`` calm seconds), the same for every client: clients sharing one
    limit converge to equal shares, as AIMD does, and a share that another client freed is found
    again within seconds. Sends are spaced evenly at the current rate rather than burst, so a
    fixed-window limit is not overrun at each window start.

    Throttling in earnest: the server asked for a wait (``Retry-After`` > 0), or at least
    ``min_throttles`` answers and ``min_share`` of all answers in the window were throttles.
    Stray 429s among many successes do not lower the rate, since lowering on every stray would
    compound into a crawl. A burst of throttled answers lowers the rate once: only an answer to a
    request sent after the last decrease can lower it again.

    Overload without ``Retry-After`` is the :class:`Window`'s to answer, not the pacer's.
    """

    __slots__ = (
        "_base",
        "_clock",
        "_decrease",
        "_epoch",
        "_increase",
        "_min_share",
        "_min_throttles",
        "_next_send",
        "_on_paced",
        "_since",
        "_successes",
        "_throttles",
        "_window",
        "decreases",
        "paced",
    )

    def __init__(
        self,
        *,
        decrease: float = 0.9,
        increase: float = 2.0,
        window: float = 1.0,
        min_share: float = 0.05,
        min_throttles: int = 10,
        clock: Clock = time.monotonic,
        on_paced: Callable[[], None] | None = None,
    ) -> None:
        self._clock = clock
        self._on_paced = on_paced
        self._decrease = decrease
        self._increase = increase
        self._window = window
        self._min_share = min_share
        self._min_throttles = min_throttles
        self._base: float | None = None
        self._since = 0.0
        self._next_send = 0.0
        self._epoch = 0
        self._successes: deque[float] = deque()
        self._throttles: deque[float] = deque()
        #: How many times a throttle lowered the rate.
        self.decreases = 0
        #: Whether sends are paced (a rate has been learned).
        self.paced = False

    @property
    def rate(self) -> float | None:
        """Requests per second allowed now; None while unpaced."""
        if self._base is None:
            return None
        calm = self._clock() - self._since
        return self._base + self._increase * calm * (1.0 + calm / (4 * self._window))

    @property
    def epoch(self) -> int:
        """Changes at every decrease; a request records it when sent."""
        return self._epoch

    def delay(self) -> float:
        """Reserve the next send slot; return how long to wait for it (0 when unpaced)."""
        rate = self.rate
        if rate is None:
            return 0.0
        now = self._clock()
        slot = max(now, self._next_send)
        self._next_send = slot + 1.0 / rate
        return slot - now

    def on_throttle(self, sent_epoch: int, *, asked_to_wait: bool) -> None:
        """Learn from a throttled answer.

        Args:
            sent_epoch: :attr:`epoch` when the throttled request was sent.
            asked_to_wait: the answer carried a ``Retry-After`` greater than zero.
        """
        now = self._record(self._throttles)
        if sent_epoch != self._epoch:
            return  # sent before the last decrease: that decrease already answered it
        horizon = now - self._window
        successes = sum(1 for t in self._successes if t >= horizon)
        throttles = sum(1 for t in self._throttles if t >= horizon)
        if not asked_to_wait and throttles < max(
            self._min_throttles, self._min_share * (successes + throttles)
        ):
            return  # stray throttles, too few to tell a limit from noise
        current = self.rate
        if current is not None:
            if now - self._since < self._window:
                return  # one decrease a window: the last one has not taken effect yet
            let_through = current  # paced: a share of the rate in force, as AIMD does
        elif successes == 0:
            # Nothing got through lately, so there is no rate to learn from; the server's
            # Retry-After pause holds requests meanwhile.
            return
        else:
            let_through = successes / self._window  # what the server let through
        self._base = max(1.0, self._decrease * let_through)
        if not self.paced:
            self.paced = True
            if self._on_paced is not None:
                self._on_paced()
        self._since = now
        self._next_send = now
        self._epoch += 1
        self.decreases += 1

    def _record(self, times: deque[float]) -> float:
        now = self._clock()
        times.append(now)
        horizon = now - self._window
        while times[0] < horizon:
            times.popleft()
        return now

    def wait_task_can_start(self) -> Awaitable[None] | None:
        if not self.paced:
            return None
        delay = self.delay()
        return asyncio.sleep(delay) if delay > 0 else None

    def notify_task_started(self, ticket: Ticket) -> None:
        ticket.rate_epoch = self._epoch

    def notify_task_finished(self, ticket: Ticket) -> None:
        outcome = ticket.outcome
        if outcome is _OK:
            self._record(self._successes)
        elif outcome is _THROTTLED:
            self.on_throttle(ticket.rate_epoch, asked_to_wait=bool(ticket.retry_after))

"""The governor: every limit on when a request may be sent, and what the answers teach.

One :class:`Governor` per client owns them all: the adaptive send rate, the optional hard cap, the
concurrency limit, the shared pause, the first-contact check, the retry budget and the counters.
The request path reads::

    async with governor.slot() as slot:
        answer = await send()          # an exception leaving the block is the outcome

Each limit is a small object with aiometer's protocol (``wait_task_can_start``,
``notify_task_started``, ``notify_task_finished``); ``wait_task_can_start`` returns None when the
request may go at once, so the common case costs a method call and no await. Every limit takes a
clock, so its decisions are tested with a fake one.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Protocol

from aiolimiter import AsyncLimiter

from ._errors import APIConnectionError, APIStatusError, PhalaError, ResponseError
from ._retry import RETRYABLE_STATUSES, ends_every_call
from ._stats import ClientStats

__all__ = [
    "AdaptiveRate",
    "FirstContact",
    "Governor",
    "MaxInFlight",
    "Outcome",
    "PauseGate",
    "RetryBudget",
    "classify",
]

Clock = Callable[[], float]


class Outcome(enum.Enum):
    """What one answer says about the server, for the limits that learn from it."""

    OK = "ok"  #: a usable answer, or a final one about the request itself (404, 403, a bad body)
    THROTTLED = "throttled"  #: 429, or 503 with Retry-After: pacing answers it
    OVERLOADED = "overloaded"  #: another 5xx, retryable: the server is failing or overloaded
    FAILED = "failed"  #: no complete answer (refused, reset, timed out, cut short)
    DOOMED = "doomed"  #: every request would fail the same way (a refused credential, TLS)
    UNKNOWN = "unknown"  #: nothing was learned (cancelled before or while sending)


# The members as module constants: a class attribute read costs about 0.1 us on CPython 3.11,
# and the request path reads several per request.
_OK, _THROTTLED, _OVERLOADED = Outcome.OK, Outcome.THROTTLED, Outcome.OVERLOADED
_FAILED, _DOOMED, _UNKNOWN = Outcome.FAILED, Outcome.DOOMED, Outcome.UNKNOWN


def classify(error: BaseException | None) -> Outcome:
    """The :class:`Outcome` an attempt's exception (None for a success) means; pure."""
    if error is None:
        return _OK
    if not isinstance(error, PhalaError):
        return _UNKNOWN
    if ends_every_call(error):
        return _DOOMED
    if isinstance(error, APIStatusError):
        status = error.status_code
        if status == 429 or (status == 503 and error.retry_after is not None):
            return _THROTTLED
        if status >= 500 and status in RETRYABLE_STATUSES:
            return _OVERLOADED
        return _FAILED if status in RETRYABLE_STATUSES else _OK
    if isinstance(error, APIConnectionError):
        return _FAILED
    if isinstance(error, ResponseError):
        return _OK  # a 2xx body that cannot be used: the server itself is healthy
    return _UNKNOWN  # the client closed before the request went out


class Limit(Protocol):
    """One rule on when a request may start (aiometer's meter protocol)."""

    def wait_task_can_start(self) -> Awaitable[None] | None:
        """None when a request may start now; else an awaitable that ends when it may."""

    def notify_task_started(self, slot: Slot) -> None:
        """The request is about to be sent."""

    def notify_task_finished(self, slot: Slot) -> None:
        """The request ended; ``slot.outcome`` says how (UNKNOWN if it was never sent)."""


class PauseGate:
    """Holds new requests until a moment the server named has passed.

    When an answer carries ``Retry-After``, the pause moves forward, and every request, whichever
    task sends it, waits before it is sent.
    """

    __slots__ = ("_clock", "_until", "pause_for_cap")

    def __init__(self, clock: Clock = time.monotonic, *, pause_for_cap: float = 60.0) -> None:
        self._clock = clock
        self._until = 0.0
        #: A Retry-After longer than this does not pause the client (the call raises at once).
        self.pause_for_cap = pause_for_cap

    def pause_for(self, seconds: float) -> None:
        """Hold new requests for ``seconds`` from now (never shortens a longer pause)."""
        until = self._clock() + seconds
        if until > self._until:
            self._until = until

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
        return self.wait() if self._until > self._clock() else None

    def notify_task_started(self, slot: Slot) -> None:
        pass

    def notify_task_finished(self, slot: Slot) -> None:
        retry_after = slot.retry_after
        if (
            retry_after is not None
            and slot.outcome is _THROTTLED
            and retry_after <= self.pause_for_cap
        ):
            self.pause_for(retry_after)


class _Waiters:
    """Tasks waiting for their turn, woken one at a time in arrival order."""

    __slots__ = ("_futures",)

    def __init__(self) -> None:
        self._futures: deque[asyncio.Future[None]] = deque()

    def __bool__(self) -> bool:
        return bool(self._futures)

    async def wait(self, *, give_back: Callable[[], None]) -> None:
        """Wait to be woken; ``give_back`` passes the turn on if a cancellation lands just as
        this waiter was woken."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._futures.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                give_back()
            elif waiter in self._futures:  # a waker may have dropped it already
                self._futures.remove(waiter)
            raise

    def wake_one(self) -> bool:
        """Wake the longest waiting task still there; False when none was."""
        futures = self._futures
        while futures:
            waiter = futures.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return True
        return False


class MaxInFlight:
    """At most ``limit`` requests at once, granted in arrival order.

    A plain counter with a queue of waiters, rather than ``asyncio.Semaphore``, so that the free
    case is a method call without an await; a freed place is handed straight to the next waiter.
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
        return self._waiters.wait(give_back=self._release)

    def notify_task_started(self, slot: Slot) -> None:
        pass

    def notify_task_finished(self, slot: Slot) -> None:
        self._release()

    def _release(self) -> None:
        if not self._waiters.wake_one():  # else the place moved to a waiter: _active stays
            self._active -= 1


class HardCap:
    """An account's known limit, in requests per second (aiolimiter's leaky bucket)."""

    __slots__ = ("_limiter",)

    def __init__(self, per_second: float) -> None:
        self._limiter = AsyncLimiter(per_second, 1.0)

    def wait_task_can_start(self) -> Awaitable[None] | None:
        return self._limiter.acquire()

    def notify_task_started(self, slot: Slot) -> None:
        pass

    def notify_task_finished(self, slot: Slot) -> None:
        pass


class FirstContact:
    """Sends the first request alone, so that a wrong credential or a failing TLS set-up costs
    one request, not one per caller.

    Until one answer shows the credential and the connection work, only one request (the probe)
    is on the wire; the others wait. An answer that dooms every request (401, a TLS failure)
    hands the probe role to the next waiter, whose caller may still want to try (a sweep ends
    instead, cancelling its waiters). Any other outcome opens the gate for good.
    """

    __slots__ = ("_on_open", "_open", "_probing", "_waiters")

    def __init__(self, on_open: Callable[[], None] | None = None) -> None:
        self._on_open = on_open
        self._open = False
        self._probing = False
        self._waiters = _Waiters()

    def wait_task_can_start(self) -> Awaitable[None] | None:
        if self._open:
            return None
        if not self._probing:
            self._probing = True
            return None
        # Made the probe as a cancellation landed: the role is passed on.
        return self._waiters.wait(give_back=self._hand_on)

    def notify_task_started(self, slot: Slot) -> None:
        pass

    def notify_task_finished(self, slot: Slot) -> None:
        if self._open:
            return
        if slot.outcome in (_DOOMED, _UNKNOWN, _FAILED):
            # Refused, cancelled, or no answer at all: nothing is proven yet.
            self._hand_on()
            return
        self._open = True
        self._probing = False
        if self._on_open is not None:
            self._on_open()
        while self._waiters.wake_one():
            pass

    def _hand_on(self) -> None:
        if not self._waiters.wake_one():  # else that waiter is the probe now
            self._probing = False


class AdaptiveRate:
    """A client-side send rate that finds an unpublished rate limit, and backs off an overloaded
    server, staying just under what it lets through.

    Unpaced until the server throttles in earnest. Then the rate is set to ``decrease`` times the
    successes per second the client saw over the last ``window`` seconds (what the server
    actually let through), and grows back by ``increase`` of that rate per second, so a limit that
    was lifted is found again. Sends are spaced evenly at the current rate rather than burst, so a
    fixed-window limit is not overrun at each window start.

    Throttling in earnest: the server asked for a wait (``Retry-After`` > 0), or at least
    ``min_throttles`` answers and ``min_share`` of all answers in the window were throttles.
    Stray 429s among many successes do not lower the rate, since lowering on every stray would
    compound into a crawl. A burst of throttled answers lowers the rate once: only an answer to a
    request sent after the last decrease can lower it again.

    Overload (retryable 5xx without ``Retry-After``) is treated as a throttle too, as botocore's
    adaptive mode and Google's client-side throttling do, but with a higher bar, since some 5xx
    are only noise: at least ``min_throttles`` of them that are ``overload_share`` of the answers
    in the window. It lowers the rate to ``overload_decrease`` times what the client was sending
    (botocore's adaptive mode uses the same 0.7), at most once a window, so a lasting storm
    slows the client geometrically without collapsing it at once; once ``recovery`` seconds pass
    with no overload and no throttle, pacing set by overload alone is lifted.
    """

    __slots__ = (
        "_base",
        "_clock",
        "_decrease",
        "_epoch",
        "_increase",
        "_last_overload_decrease",
        "_last_signal",
        "_min_share",
        "_min_throttles",
        "_next_send",
        "_overload_decrease",
        "_overload_only",
        "_overload_share",
        "_overloads",
        "_recovery",
        "_sends",
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
        increase: float = 0.02,
        window: float = 1.0,
        min_share: float = 0.05,
        min_throttles: int = 10,
        overload_share: float = 0.3,
        overload_decrease: float = 0.7,
        recovery: float = 5.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self._clock = clock
        self._decrease = decrease
        self._increase = increase
        self._window = window
        self._min_share = min_share
        self._min_throttles = min_throttles
        self._overload_share = overload_share
        self._overload_decrease = overload_decrease
        self._recovery = recovery
        self._base: float | None = None
        self._since = 0.0
        self._next_send = 0.0
        self._epoch = 0
        self._successes: deque[float] = deque()
        self._throttles: deque[float] = deque()
        self._overloads: deque[float] = deque()
        self._sends: deque[float] = deque()
        self._last_signal = float("-inf")
        self._last_overload_decrease = float("-inf")
        self._overload_only = False
        #: How many times a throttle or an overload lowered the rate.
        self.decreases = 0
        #: Whether sends are paced (a rate has been learned).
        self.paced = False

    @property
    def rate(self) -> float | None:
        """Requests per second allowed now; None while unpaced."""
        if self._base is None:
            return None
        return self._base * (1.0 + self._increase * (self._clock() - self._since))

    @property
    def epoch(self) -> int:
        """Changes at every decrease; a request records it when sent."""
        return self._epoch

    def delay(self) -> float:
        """Reserve the next send slot; return how long to wait for it (0 when unpaced)."""
        if self._base is None:
            return 0.0
        now = self._clock()
        if self._overload_only and now - self._last_signal > self._recovery:
            self._unpace()
            return 0.0
        rate = self._base * (1.0 + self._increase * (now - self._since))
        slot = max(now, self._next_send)
        self._next_send = slot + 1.0 / rate
        return slot - now

    def on_success(self) -> None:
        """Count a request the server let through."""
        self._record(self._successes)

    def on_throttle(self, sent_epoch: int, *, asked_to_wait: bool) -> None:
        """Learn from a throttled answer.

        Args:
            sent_epoch: :attr:`epoch` when the throttled request was sent.
            asked_to_wait: the answer carried a ``Retry-After`` greater than zero.
        """
        now = self._record(self._throttles)
        self._last_signal = now
        if sent_epoch != self._epoch:
            return  # sent before the last decrease: that decrease already answered it
        successes, throttles, overloads = self._counts(now)
        answers = successes + throttles + overloads
        if not asked_to_wait and throttles < max(self._min_throttles, self._min_share * answers):
            return  # stray throttles, too few to tell a limit from noise
        current = self.rate
        if successes == 0:
            # Nothing got through lately, so there is no rate to learn from; the server's
            # Retry-After pause holds requests meanwhile. Slow down only if already paced.
            if current is None:
                return
            let_through = current / 2
        else:
            let_through = successes / self._window
            if current is not None:
                # Never faster than now, and at most half as fast per decrease.
                let_through = min(current, max(let_through, current / 2 / self._decrease))
        self._overload_only = False
        self._lower_to(self._decrease * let_through, now)

    def on_overload(self, sent_epoch: int) -> None:
        """Learn from a retryable 5xx answer without ``Retry-After``.

        Args:
            sent_epoch: :attr:`epoch` when the failed request was sent.
        """
        now = self._record(self._overloads)
        self._last_signal = now
        if sent_epoch != self._epoch or now - self._last_overload_decrease < self._window:
            return  # at most one decrease a window, for requests sent since the last one
        successes, throttles, overloads = self._counts(now)
        answers = successes + throttles + overloads
        if overloads < max(self._min_throttles, self._overload_share * answers):
            return
        # What the client was sending: the answers over the time they span (the window is not
        # full yet at the start of a storm); too short a span tells nothing yet.
        span = now - self._earliest(now)
        if span < self._window / 4:
            return
        sending = answers / span
        current = self.rate
        if current is not None:
            sending = min(current, sending)
        if self._base is None:
            self._overload_only = True
        self._last_overload_decrease = now
        self._lower_to(self._overload_decrease * sending, now)

    def _lower_to(self, rate: float, now: float) -> None:
        self._base = max(1.0, rate)
        self.paced = True
        self._since = now
        self._next_send = now
        self._epoch += 1
        self.decreases += 1

    def _unpace(self) -> None:
        self._base = None
        self.paced = False
        self._overload_only = False

    def _counts(self, now: float) -> tuple[int, int, int]:
        horizon = now - self._window
        return (
            sum(1 for t in self._successes if t >= horizon),
            sum(1 for t in self._throttles if t >= horizon),
            sum(1 for t in self._overloads if t >= horizon),
        )

    def _earliest(self, now: float) -> float:
        horizon = now - self._window
        firsts = [
            next((t for t in times if t >= horizon), now)
            for times in (self._successes, self._throttles, self._overloads)
        ]
        return min(firsts)

    def _record(self, times: deque[float]) -> float:
        now = self._clock()
        times.append(now)
        horizon = now - self._window
        while times[0] < horizon:
            times.popleft()
        return now

    # -- the Limit protocol --------------------------------------------------------------------

    def wait_task_can_start(self) -> Awaitable[None] | None:
        if not self.paced:
            return None
        delay = self.delay()
        return asyncio.sleep(delay) if delay > 0 else None

    def notify_task_started(self, slot: Slot) -> None:
        slot.epoch = self._epoch

    def notify_task_finished(self, slot: Slot) -> None:
        outcome = slot.outcome
        if outcome is _OK:
            self._record(self._successes)
        elif outcome is _THROTTLED:
            self.on_throttle(slot.epoch, asked_to_wait=bool(slot.retry_after))
        elif outcome is _OVERLOADED:
            self.on_overload(slot.epoch)


class RetryBudget:
    """Stops retries while most recent requests fail, so a down API is not hammered.

    Keeps the outcomes of the last ``window`` requests (throttles are not counted: pacing answers
    those). Once at least ``min_samples`` are known and fewer than ``min_success_ratio`` of them
    succeeded, :meth:`allows_retry` says no: each remaining id gets its one first attempt and is
    reported with that error. Retries resume by themselves when requests succeed again.
    """

    __slots__ = ("_min_samples", "_min_success_ratio", "_outcomes", "_successes", "denied")

    def __init__(
        self, *, window: int = 100, min_samples: int = 20, min_success_ratio: float = 0.5
    ) -> None:
        self._outcomes: deque[bool] = deque(maxlen=window)
        self._successes = 0
        self._min_samples = min_samples
        self._min_success_ratio = min_success_ratio
        #: How many retries were refused (counted by :meth:`note_denied`).
        self.denied = 0

    def record(self, success: bool) -> None:
        """Record one request's outcome (a server failure or transport error is ``False``)."""
        outcomes = self._outcomes
        if len(outcomes) == outcomes.maxlen and outcomes[0]:
            self._successes -= 1
        outcomes.append(success)
        if success:
            self._successes += 1

    @property
    def success_ratio(self) -> float:
        """Share of the recorded outcomes that succeeded (1.0 when none is recorded)."""
        return self._successes / len(self._outcomes) if self._outcomes else 1.0

    def allows_retry(self) -> bool:
        """Whether a retry may be sent now. Pure: asking twice changes nothing."""
        return not (
            len(self._outcomes) >= self._min_samples
            and self.success_ratio < self._min_success_ratio
        )

    def note_denied(self) -> None:
        """Count a retry that was really skipped because :meth:`allows_retry` said no."""
        self.denied += 1


class Slot:
    """One request's place: entered before it is sent, left with its outcome.

    Attributes:
        epoch: the adaptive rate's epoch when the request was sent.
        outcome: what the answer meant, set on leaving the block.
        retry_after: the answer's ``Retry-After``, when it was a throttle.
    """

    __slots__ = ("_entered", "_extra", "_governor", "_limits", "epoch", "outcome", "retry_after")

    def __init__(self, governor: Governor, extra: MaxInFlight | None) -> None:
        self._governor = governor
        self._extra = extra
        # The limits as they were on entry: the first contact leaves them once it is open.
        self._limits = governor.limits
        self._entered = 0
        self.epoch = 0
        self.outcome = _UNKNOWN
        self.retry_after: float | None = None

    async def __aenter__(self) -> Slot:
        # Written out rather than a loop over hooks: this runs once per request.
        extra = self._extra
        if extra is not None:
            waiter = extra.wait_task_can_start()
            if waiter is not None:
                await waiter
        try:
            for limit in self._limits:
                waiter = limit.wait_task_can_start()
                if waiter is not None:
                    await waiter
                self._entered += 1
        except BaseException:
            self._leave()
            raise
        governor = self._governor
        for limit in governor.started_hooks:
            limit.notify_task_started(self)
        governor.requests += 1
        governor.active += 1
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        governor = self._governor
        governor.active -= 1
        if exc is None:
            self.outcome = _OK
            if governor.budget is not None:
                governor.budget.record(True)
        else:
            self.outcome = classify(exc)
            if isinstance(exc, APIStatusError):
                self.retry_after = exc.retry_after
            governor.on_failed(self, exc)
        self._leave()

    def _leave(self) -> None:
        limits = self._limits
        for index in range(self._entered - 1, -1, -1):
            limits[index].notify_task_finished(self)
        self._entered = 0
        extra = self._extra
        if extra is not None:
            extra.notify_task_finished(self)
            self._extra = None


class Governor:
    """Every limit of one client, the retry budget and the counters.

    Args:
        concurrency: requests in flight at most.
        adaptive: pace sends after throttles and overload (:class:`AdaptiveRate`).
        rate_limit: a hard cap in requests per second, or None.
        retry_budget: refuse retries while most recent requests fail (:class:`RetryBudget`).
        retry_after_cap: the longest ``Retry-After`` that pauses the client.

    Attributes:
        limits: the limits a request passes, in order.
        started_hooks: the limits that want to know when a request goes out.
        requests: requests sent so far.
        active: requests on the wire now.
    """

    def __init__(
        self,
        *,
        concurrency: int,
        adaptive: bool = True,
        rate_limit: float | None = None,
        retry_budget: bool = True,
        retry_after_cap: float = 60.0,
    ) -> None:
        self.pacer = AdaptiveRate() if adaptive else None
        self.in_flight = MaxInFlight(concurrency)
        self.gate = PauseGate(pause_for_cap=retry_after_cap)
        self.first_contact = FirstContact(on_open=self._drop_first_contact)
        # Order matters. The first contact comes first: the requests it holds back have taken
        # no send time from the pacer or the cap, so they do not burst past either when it
        # opens. Pacing and the cap come before taking a place, and the pause last, so that
        # nothing is sent during a pause however long the waits before it were.
        limits: list[Limit] = [self.first_contact]
        if self.pacer is not None:
            limits.append(self.pacer)
        if rate_limit is not None:
            limits.append(HardCap(rate_limit))
        limits += [self.in_flight, self.gate]
        self.limits: tuple[Limit, ...] = tuple(limits)
        self.started_hooks: tuple[Limit, ...] = (self.pacer,) if self.pacer is not None else ()
        # The window spans a few rounds of requests in flight, so that one stall (a long GC
        # pause, a network blip) does not look like a down API.
        self.budget = RetryBudget(window=max(100, 4 * concurrency)) if retry_budget else None
        self.requests = 0
        self.active = 0
        self.ok = 0
        self._counts = Counter[str]()
        self._failed = Counter[str]()

    def _drop_first_contact(self) -> None:
        # Once open it never closes: later requests need not pass it at all.
        self.limits = tuple(limit for limit in self.limits if limit is not self.first_contact)

    def slot(self, extra: MaxInFlight | None = None) -> Slot:
        """A place for one request, under every limit (and ``extra``, a sweep's own limit)."""
        return Slot(self, extra)

    def may_retry(self) -> bool:
        """Whether the retry budget allows a retry now; pure."""
        return self.budget is None or self.budget.allows_retry()

    def note_retry_denied(self) -> None:
        """Count a retry skipped because :meth:`may_retry` said no."""
        if self.budget is not None:
            self.budget.note_denied()
        self._counts["retries_denied"] += 1

    def note_retry(self) -> None:
        """Count a request that retries an earlier failed one."""
        self._counts["retries"] += 1

    def note_reconnect(self) -> None:
        """Count a request sent again at once after a stale pooled connection."""
        self._counts["reconnects"] += 1
        self.requests += 1

    def note_call(self, error: BaseException | None) -> None:
        """Count a finished call (one per id or page): ok, or failed by exception class."""
        if error is None:
            self.ok += 1
        else:
            self._failed[type(error).__name__] += 1

    def note(self, counter: str, count: int = 1) -> None:
        """Add to a named counter of :class:`ClientStats` (``coalesced``, ``cache_hits``...)."""
        self._counts[counter] += count

    def on_failed(self, slot: Slot, error: BaseException) -> None:
        """Learn from a request that ended with ``error`` (called by :class:`Slot`)."""
        outcome = slot.outcome
        if outcome is _UNKNOWN:
            return
        if isinstance(error, APIStatusError) and error.status_code == 429:
            self._counts["rate_limited"] += 1
        if outcome is _THROTTLED:
            self._counts["throttled"] += 1
            return  # pacing answers throttles; they say nothing of the API's health
        if outcome is _OVERLOADED:
            self._counts["overloaded"] += 1
        if self.budget is not None:
            self.budget.record(outcome is _OK)

    def snapshot(self) -> ClientStats:
        """The counters as of now, as a value that does not change afterwards."""
        counts = self._counts
        return ClientStats(
            requests=self.requests,
            retries=counts["retries"],
            reconnects=counts["reconnects"],
            rate_limited=counts["rate_limited"],
            throttled=counts["throttled"],
            overloaded=counts["overloaded"],
            retries_denied=counts["retries_denied"],
            ok=self.ok,
            failed=dict(self._failed),
            cancelled=counts["cancelled"],
            coalesced=counts["coalesced"],
            cache_hits=counts["cache_hits"],
            in_flight=self.active,
            send_rate=self.pacer.rate if self.pacer is not None else None,
        )

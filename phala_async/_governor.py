"""The governor: one object per client that holds every limit, the retry budget and the
counters, and tells each what an answer taught.

The request path reads::

    async with governor.slot() as slot:
        answer = await send()          # an exception leaving the block is the outcome

and a retry asks :meth:`Governor.admit_retry` first. The limits, in the order a request passes
them: the first contact, the rate pacer, the hard cap, the adaptive window, the pause. The
pipeline calls the slot's :meth:`~Slot.enter` and :meth:`~Slot.leave` itself, which the ``async
with`` does too: when no limit holds the request back, that makes no coroutine at all.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import deque
from collections.abc import Awaitable
from types import TracebackType

from ._errors import APIStatusError
from ._limits import (
    Clock,
    FirstContact,
    HardCap,
    Limit,
    MaxInFlight,
    PauseCheck,
    PauseGate,
    RatePacer,
    Ticket,
    Window,
)
from ._retry import Outcome, answered, classify
from ._stats import ClientStats, Counters

__all__ = ["Governor", "RetryBudget", "Slot", "Verdict"]

_OK, _THROTTLED, _OVERLOADED = Outcome.OK, Outcome.THROTTLED, Outcome.OVERLOADED
_TIMEOUT, _UNKNOWN = Outcome.TIMEOUT, Outcome.UNKNOWN


class Verdict(enum.Enum):
    """What the retry budget says of a retry now."""

    ALLOW = "allow"  #: send it
    DEFER = "defer"  #: wait: most recent requests failed, but the API succeeded lately
    DENY = "deny"  #: give up: the API is dead (no success lately) or never answered at all


class RetryBudget:
    """Holds retries back while most recent requests fail, so a struggling API is not hammered,
    and refuses them once it is dead, so a dead one sees little more than one request per id.

    Keeps the outcomes of the last ``window`` requests (throttles are not counted: pacing answers
    those). Once at least ``min_samples`` are known: fewer than ``min_success_ratio`` succeeded,
    DEFER (a retry waits for the ratio to recover, or for one of the ``trickle`` retries a second
    let through so that the ratio can move at all); else ALLOW. None succeeded is DENY only when
    the API is dead: it never succeeded, or its last success is ``dead_after`` seconds old. A
    window of failures between two successes (a capped server answers its 503s at once, far
    faster than its successes) only defers. While the API has never given any HTTP answer,
    ``unreachable_after`` transport failures are enough to DENY. Deferring never drops an id; only
    its own attempts, its deadline or a DENY end it.
    """

    __slots__ = (
        "_clock",
        "_dead_after",
        "_failures",
        "_last_success",
        "_min_samples",
        "_min_success_ratio",
        "_next_trickle",
        "_outcomes",
        "_successes",
        "_trickle",
        "_unreachable_after",
        "answered",
    )

    def __init__(
        self,
        *,
        window: int = 100,
        min_samples: int = 20,
        min_success_ratio: float = 0.3,
        trickle: float = 10.0,
        unreachable_after: int = 5,
        dead_after: float = 5.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self._outcomes: deque[bool] = deque(maxlen=window)
        self._successes = 0
        self._failures = 0  # in all, while the API has never answered
        self._min_samples = min_samples
        self._min_success_ratio = min_success_ratio
        self._trickle = trickle
        self._unreachable_after = unreachable_after
        self._dead_after = dead_after
        self._last_success: float | None = None
        self._next_trickle = 0.0
        self._clock = clock
        #: Whether any request ever got an HTTP answer from the API.
        self.answered = False

    def record(self, success: bool, *, answered: bool = True) -> None:
        """Record one request's outcome (a server failure or transport error is ``False``;
        ``answered`` says whether the API gave an HTTP answer at all)."""
        if success:
            self.record_success()
            return
        if answered:
            self.answered = True
        elif not self.answered:
            self._failures += 1
        outcomes = self._outcomes
        if outcomes and outcomes[-1]:
            # The first failure after a success stamps the time of that success, give or take
            # the moment between them: a success costs no clock reading.
            self._last_success = self._clock()
        if len(outcomes) == outcomes.maxlen and outcomes[0]:
            self._successes -= 1
        outcomes.append(False)

    def record_success(self) -> None:
        """Record a success (an answer, so the API has answered)."""
        self.answered = True
        outcomes = self._outcomes
        if len(outcomes) != outcomes.maxlen or not outcomes[0]:
            self._successes += 1  # else the success dropped off the window is replaced
        outcomes.append(True)

    @property
    def success_ratio(self) -> float:
        """Share of the recorded outcomes that succeeded (1.0 when none is recorded)."""
        return self._successes / len(self._outcomes) if self._outcomes else 1.0

    def verdict(self) -> Verdict:
        """What a retry may do now. Pure: asking twice changes nothing."""
        if not self.answered and self._failures >= self._unreachable_after:
            return Verdict.DENY
        if len(self._outcomes) < self._min_samples:
            return Verdict.ALLOW
        if self._successes == 0:
            last = self._last_success
            if last is None or self._clock() - last >= self._dead_after:
                return Verdict.DENY
            return Verdict.DEFER
        if self.success_ratio < self._min_success_ratio:
            return Verdict.DEFER
        return Verdict.ALLOW

    def trickle_wait(self) -> float:
        """Seconds until the next deferred retry may go; takes that turn when it is 0."""
        now = self._clock()
        if now >= self._next_trickle:
            self._next_trickle = now + 1.0 / self._trickle
            return 0.0
        return self._next_trickle - now


class Slot(Ticket):
    """One request's place: entered before it is sent, left with its outcome."""

    __slots__ = ("_entered", "_governor", "_limits", "_sweep_limit")

    def __init__(self, governor: Governor, sweep_limit: MaxInFlight | None) -> None:
        # Ticket.__init__ written out: this runs once per request.
        self.outcome = _UNKNOWN
        self.retry_after = None
        self.level = self.window_epoch = self.rate_epoch = 0
        self._governor = governor
        self._sweep_limit = sweep_limit
        # The limits as they were on entry: the first contact leaves them once it is open.
        self._limits = governor.limits
        self._entered = 0

    def enter(self) -> Awaitable[None] | None:
        """Take the place: None when every limit let it in at once (the common case, with no
        coroutine made), else an awaitable that waits for the others and takes it.

        A place taken must be left with :meth:`leave`, whatever happens next.
        """
        sweep_limit = self._sweep_limit
        if sweep_limit is not None:
            waiter = sweep_limit.wait_task_can_start()
            if waiter is not None:
                return self._enter_after(waiter, sweep_limit_first=True)
        governor = self._governor
        for limit in governor.quick_limits:  # the others let everything through now
            waiter = limit.wait_task_can_start()
            if waiter is not None:
                self._entered = self._limits.index(limit)  # those before it count as passed
                return self._enter_after(waiter)
        # Nothing waited, so the pause checked first still holds for the check again last.
        self._entered = len(self._limits)
        self._started()
        return None

    async def _enter_after(
        self, waiter: Awaitable[None], *, sweep_limit_first: bool = False
    ) -> None:
        """Wait for the limit that held the request back, then pass the others."""
        if sweep_limit_first:
            # Nothing is taken yet, so a cancellation here has nothing to give back (the
            # waiter itself passes on a place granted as it landed).
            await waiter
        try:
            if not sweep_limit_first:
                await waiter
                self._entered += 1
            for limit in self._limits[self._entered :]:
                waiting = limit.wait_task_can_start()
                if waiting is not None:
                    await waiting
                self._entered += 1
        except BaseException:
            self._leave()
            raise
        self._started()

    def _started(self) -> None:
        governor = self._governor
        for limit in governor.started_hooks:
            limit.notify_task_started(self)
        governor.counters.request()

    def leave(self, error: BaseException | None) -> None:
        """Give the place back; ``error`` is how the request ended (None: an answer that was
        a success)."""
        self._governor.learn(self, error)
        self._leave()

    async def __aenter__(self) -> Slot:
        entering = self.enter()
        if entering is not None:
            await entering
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.leave(exc)

    def _leave(self) -> None:
        limits = self._limits
        governor = self._governor
        if self._entered == len(limits) and limits is governor.limits:
            # Only the limits that learn from this ending (a success teaches fewer).
            hooks = governor.success_hooks if self.outcome is _OK else governor.finished_hooks
            for limit in hooks:
                limit.notify_task_finished(self)
        else:  # some limits were not passed, or the first contact has opened since
            for index in range(self._entered - 1, -1, -1):
                limits[index].notify_task_finished(self)
        self._entered = 0
        sweep_limit = self._sweep_limit
        if sweep_limit is not None:
            sweep_limit.release()
            self._sweep_limit = None


class Governor:
    """Every limit of one client, the retry budget and the counters.

    Args:
        concurrency: requests in flight at most (the adaptive window's ceiling).
        adaptive: adapt the window and pace sends after throttles; off, the window stays at
            ``concurrency`` and nothing is paced.
        rate_limit: a hard cap in requests per second, or None.
        retry_budget: hold back retries while recent requests fail, refuse them once the API is dead
            (:class:`RetryBudget`).
        retry_after_cap: the longest ``Retry-After`` that pauses the client.
        first_contact_bound: seconds the first request may hold the others back at most.

    Attributes:
        limits: the limits a request passes, in order.
        started_hooks: the limits that want to know when a request goes out.
        finished_hooks: the limits that learn from a request's ending, last entered first.
        success_hooks: those of them that learn from a success.
        quick_limits: the limits a request must ask now (see :meth:`_refresh`).
        answered: whether any request of this client ever got an HTTP answer from the API.
        counters: the client's counters.
    """

    def __init__(
        self,
        *,
        concurrency: int,
        adaptive: bool = True,
        rate_limit: float | None = None,
        retry_budget: bool = True,
        retry_after_cap: float = 60.0,
        first_contact_bound: float = 1.0,
    ) -> None:
        self.counters = Counters()
        self.pacer = RatePacer(on_paced=self._refresh) if adaptive else None
        self.window = Window(concurrency, initial=4 if adaptive else concurrency)
        if not adaptive:
            self.window.decrease = 1.0
        self.gate = PauseGate(pause_for_cap=retry_after_cap, on_change=self._refresh)
        self.first_contact = FirstContact(
            on_open=self._drop_first_contact, bound=first_contact_bound
        )
        # Order matters. The first contact and the pause come first: the requests they hold
        # back have taken no send time from the pacer or the cap, so they do not burst past
        # either when the gate opens or the pause ends. Pacing and the cap come before taking a
        # place, and the pause is checked again last, so that nothing is sent during a pause
        # that began while a request waited for its turn.
        limits: list[Limit] = [self.first_contact, self.gate]
        if self.pacer is not None:
            limits.append(self.pacer)
        if rate_limit is not None:
            limits.append(HardCap(rate_limit))
        limits += [self.window, PauseCheck(self.gate, self.pacer)]
        self.limits: tuple[Limit, ...] = ()
        self.finished_hooks: tuple[Limit, ...] = ()
        self.success_hooks: tuple[Limit, ...] = ()
        self.quick_limits: tuple[Limit, ...] = ()
        self.started_hooks: tuple[Limit, ...] = ()
        self._set_limits(tuple(limits))
        # The window spans a few rounds of requests in flight, so that one stall (a long GC
        # pause, a network blip) does not look like a down API.
        self.budget = RetryBudget(window=max(100, 4 * concurrency)) if retry_budget else None
        #: Whether any request of this client ever got an HTTP answer from the API.
        self.answered = False

    def _set_limits(self, limits: tuple[Limit, ...]) -> None:
        self.limits = limits
        # Told when a request passed every limit ends, last entered first; a limit that learns
        # nothing from an ending is left out, since this runs once per request.
        self.finished_hooks = tuple(
            limit for limit in reversed(limits) if not isinstance(limit, (PauseCheck, HardCap))
        )
        # A success teaches the pause nothing (only a throttle's Retry-After does).
        self.success_hooks = tuple(
            limit for limit in self.finished_hooks if not isinstance(limit, PauseGate)
        )
        self._refresh()

    def _refresh(self) -> None:
        """Work out again which limits a request must ask, after one of them changed state.

        A limit that lets everything through now is left out of :attr:`quick_limits` (the pause
        when none is in force, the pacer while unpaced), and so is the pause's second check:
        it matters only for a request that waited. The pacer hears a request start only once
        paced: until its first decrease, the epoch it would note is the ticket's own 0.
        """
        pacer, gate = self.pacer, self.gate
        pacing = pacer is not None and pacer.paced
        self.quick_limits = tuple(
            limit
            for limit in self.limits
            if not isinstance(limit, PauseCheck)
            and not (limit is gate and not gate.pending)
            and not (limit is pacer and not pacing)
        )
        self.started_hooks = (
            (pacer, self.window) if pacer is not None and pacing else (self.window,)
        )

    def _drop_first_contact(self) -> None:
        # Once open it never closes: later requests need not pass it at all.
        self._set_limits(tuple(limit for limit in self.limits if limit is not self.first_contact))

    def slot(self, sweep_limit: MaxInFlight | None = None) -> Slot:
        """A place for one request, under every limit (and a sweep's own limit)."""
        return Slot(self, sweep_limit)

    def learn(self, slot: Slot, error: BaseException | None) -> None:
        """Judge how a request ended, once, and count it (called as its slot is left)."""
        if error is None:
            slot.outcome = _OK
            self.counters.answered()
            self.answered = True
            if self.budget is not None:
                self.budget.record_success()
            return
        outcome = slot.outcome = classify(error)
        status: int | None = None
        if isinstance(error, APIStatusError):
            status = error.status_code
            if outcome is _THROTTLED:
                slot.retry_after = error.retry_after
        self.counters.answer(
            status=status,
            throttled=outcome is _THROTTLED,
            overloaded=outcome is _OVERLOADED,
            timeout=outcome is _TIMEOUT,
        )
        if outcome is _UNKNOWN or outcome is _THROTTLED:
            return  # pacing answers throttles; they say nothing of the API's health
        got_answer = answered(error)
        if got_answer:
            self.answered = True
        if self.budget is not None:
            self.budget.record(outcome is _OK, answered=got_answer)

    def admit_retry(self) -> Awaitable[bool] | None:
        """None when a retry may be sent now; else an awaitable that tells, once the budget
        decides, whether it may (True) or must give up (False)."""
        budget = self.budget
        if budget is None or budget.verdict() is Verdict.ALLOW:
            return None
        return self._wait_for_budget(budget)

    async def _wait_for_budget(self, budget: RetryBudget) -> bool:
        deferred = False
        while True:
            verdict = budget.verdict()
            if verdict is Verdict.ALLOW:
                return True
            if verdict is Verdict.DENY:
                self.counters.retry_denied()
                return False
            if not deferred:
                deferred = True
                self.counters.retry_deferred()
            wait = budget.trickle_wait()
            if wait == 0.0:
                return True
            # Woken again when a trickle turn is due; the ratio may have recovered by then.
            await asyncio.sleep(wait)

    def denies_retries(self) -> bool:
        """Whether the budget refuses retries outright now (pure)."""
        return self.budget is not None and self.budget.verdict() is Verdict.DENY

    def snapshot(self) -> ClientStats:
        """The counters as of now."""
        return self.counters.snapshot(
            window=self.window.limit,
            send_rate=self.pacer.rate if self.pacer is not None else None,
        )

"""Client-wide pacing: the shared pause, the adaptive send rate, and the retry budget.

All three are plain objects with a clock, no I/O of their own beyond ``asyncio.sleep``, so their
decisions are tested directly.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

__all__ = ["AdaptiveRate", "PauseGate", "RetryBudget"]

Clock = Callable[[], float]


class PauseGate:
    """Holds new requests until a moment the server named has passed.

    One gate per client: when an answer carries ``Retry-After``, :meth:`pause_for` moves the
    moment forward, and every request, whichever worker sends it, waits in :meth:`wait` first.
    """

    __slots__ = ("_clock", "_until")

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._until = 0.0

    def pause_for(self, seconds: float) -> None:
        """Hold new requests for ``seconds`` from now (never shortens a longer pause)."""
        until = self._clock() + seconds
        if until > self._until:
            self._until = until

    @property
    def paused(self) -> bool:
        """Whether a pause is in force now (cheap: the hot path asks before awaiting)."""
        return self._until > self._clock()

    async def wait(self) -> None:
        """Return once no pause is in force; at once (without yielding) when none is."""
        # An Event would need a timer task to set it; a pause is rare and short, so sleep, in a
        # loop since another answer may extend the pause meanwhile.
        while (delay := self._until - self._clock()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(delay)


class AdaptiveRate:
    """A client-side send rate that finds an unpublished rate limit and stays just under it.

    Unpaced until the server throttles in earnest. Then the rate is set to ``decrease`` times the
    successes per second the client saw over the last ``window`` seconds (what the server
    actually let through), and grows back by ``increase`` of that rate per second without
    a throttle, so a limit that was lifted is found again. Sends are spaced evenly at the current
    rate rather than burst, so a fixed-window limit is not overrun at each window start.

    What counts as throttling in earnest: the server asked for a wait (``Retry-After`` > 0), or
    at least ``min_throttles`` answers and ``min_share`` of all answers in the window were
    throttles. Stray 429s among many successes do not lower the rate, since lowering on every
    stray would compound into a crawl.
    A burst of throttled answers lowers the rate once: only an answer to a request sent after the
    last decrease can lower it again.
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
        clock: Clock = time.monotonic,
    ) -> None:
        self._clock = clock
        self._decrease = decrease
        self._increase = increase
        self._window = window
        self._min_share = min_share
        self._base: float | None = None
        self._since = 0.0
        self._next_send = 0.0
        self._epoch = 0
        self._successes: deque[float] = deque()
        self._throttles: deque[float] = deque()
        self._min_throttles = min_throttles
        #: How many times a throttle lowered the rate.
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
        rate = self.rate
        assert rate is not None  # noqa: S101 - _base is set, so rate is
        now = self._clock()
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
        if sent_epoch != self._epoch:
            return  # sent before the last decrease: that decrease already answered it
        horizon = now - self._window
        successes = sum(1 for t in self._successes if t >= horizon)
        throttles = sum(1 for t in self._throttles if t >= horizon)
        answers = successes + throttles
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
        self._base = max(1.0, self._decrease * let_through)
        self.paced = True
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
        #: How many retries were refused.
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
        """Whether a retry may be sent now; counts a refusal in :attr:`denied`."""
        if (
            len(self._outcomes) >= self._min_samples
            and self.success_ratio < self._min_success_ratio
        ):
            self.denied += 1
            return False
        return True

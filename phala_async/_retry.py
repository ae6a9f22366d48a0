"""The retry policy: which failures are retried, how long to wait, and when to give up.

The decisions are plain functions or frozen values, tested without a server. :func:`retrying`
is the one place tenacity is wired: it is built only after a first attempt has failed, so a
request that succeeds at once never pays for the retry machinery.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type
from tenacity.stop import stop_base

from ._errors import (
    APIConnectionError,
    APIProxyError,
    APIStatusError,
    APITLSError,
    AuthenticationError,
    ConfigurationError,
    PhalaError,
    subject,
)

__all__ = [
    "RETRYABLE_STATUSES",
    "RetryPolicy",
    "backoff_delay",
    "ends_every_call",
    "is_retryable",
    "next_wait",
    "parse_retry_after",
    "retrying",
]

logger = logging.getLogger("phala_async")

#: Statuses that mean "ask again later": timeouts, too early, rate limits and server failures.
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a failed request is retried.

    Attributes:
        max_attempts: requests made for one id at most, the first included.
        backoff_initial: the first backoff, in seconds; it doubles each retry.
        backoff_max: the longest backoff, in seconds.
        retry_after_cap: the longest ``Retry-After`` honoured, in seconds; a server asking for
            longer gets its error raised at once.
    """

    max_attempts: int = 4
    backoff_initial: float = 0.5
    backoff_max: float = 8.0
    retry_after_cap: float = 60.0

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise ConfigurationError(f"max_attempts must be an int >= 1, not {self.max_attempts!r}")
        if self.max_attempts < 1:
            raise ConfigurationError(
                f"max_attempts must be >= 1 (1 means no retries), not {self.max_attempts}"
            )
        for name in ("backoff_initial", "backoff_max", "retry_after_cap"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
            ):
                raise ConfigurationError(
                    f"{name} must be a finite number of seconds >= 0, not {value!r}"
                )
        if self.backoff_max < self.backoff_initial:
            raise ConfigurationError(
                f"backoff_max ({self.backoff_max}) must be >= "
                f"backoff_initial ({self.backoff_initial})"
            )


def is_retryable(error: BaseException) -> bool:
    """Whether asking again could succeed: transport failures (but for TLS failures and a proxy's
    refusal) and the statuses in :data:`RETRYABLE_STATUSES`, from the API or from a proxy.
    Anything else, cancellation included, is final."""
    if isinstance(error, (APIStatusError, APIProxyError)):
        return error.status_code in RETRYABLE_STATUSES
    return isinstance(error, APIConnectionError) and not isinstance(error, APITLSError)


def ends_every_call(error: BaseException) -> bool:
    """Whether every other request would fail the same way: the credential was refused (401),
    the TLS connection cannot be trusted, or the proxy refused the tunnel. A sweep ends at once
    on such an error; the API's 403 does not (it is about one CVM, of another workspace)."""
    if isinstance(error, APIProxyError):
        return not is_retryable(error)
    return isinstance(error, (AuthenticationError, APITLSError))


def retry_after_too_long(error: PhalaError, policy: RetryPolicy) -> bool:
    """Whether the server asked for a longer wait than the policy will honour."""
    return (
        isinstance(error, APIStatusError)
        and error.retry_after is not None
        and error.retry_after > policy.retry_after_cap
    )


def backoff_delay(attempt: int, policy: RetryPolicy, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based) with no ``Retry-After``.

    Exponential with "equal jitter": the ceiling ``backoff_initial * 2**(attempt-1)``, capped at
    ``backoff_max``, of which half is always waited and half is random, so clients that failed
    together do not retry together, yet none retries at once.
    """
    # The exponent is capped: 2.0 ** 1024 overflows, and the cap applies long before anyway.
    doublings = min(max(attempt - 1, 0), 64)
    ceiling = min(policy.backoff_max, policy.backoff_initial * 2.0**doublings)
    uniform = (rng or _rng).random()
    return ceiling / 2 + uniform * ceiling / 2


def wait_before_retry(
    error: PhalaError, attempt: int, policy: RetryPolicy, rng: random.Random | None = None
) -> float:
    """Seconds to wait before retrying after ``error``: the server's ``Retry-After`` when it gave
    one, else :func:`backoff_delay`."""
    if isinstance(error, APIStatusError) and error.retry_after is not None:
        return error.retry_after
    return backoff_delay(attempt, policy, rng)


def next_wait(
    error: PhalaError,
    attempt: int,
    policy: RetryPolicy,
    *,
    may_retry: Callable[[], bool],
    on_denied: Callable[[], None],
) -> float | None:
    """Judge a failed attempt once: the seconds to wait before the next, or None to give up.

    Gives up on a final error, after ``policy.max_attempts``, when the server asks for a longer
    wait than ``retry_after_cap``, or when ``may_retry()`` (the retry budget) says no; only that
    last refusal calls ``on_denied``, since only then is a retry really skipped.

    Args:
        error: what attempt number ``attempt`` (1-based) raised.
        attempt: the number of the attempt that failed.
        policy: the retry policy.
        may_retry: whether the retry budget allows a retry now (no side effects).
        on_denied: counts a retry skipped for the budget.
    """
    if (
        not is_retryable(error)
        or attempt >= policy.max_attempts
        or retry_after_too_long(error, policy)
    ):
        return None
    if not may_retry():
        on_denied()
        return None
    return wait_before_retry(error, attempt, policy)


def retrying(
    policy: RetryPolicy,
    *,
    attempts_made: int,
    may_retry: Callable[[], bool],
    on_denied: Callable[[], None],
) -> AsyncRetrying:
    """The tenacity loop for the attempts after the first ``attempts_made`` (which the caller ran
    and judged with :func:`next_wait`, and whose wait it has already slept).

    Every later failure is judged once, by :func:`next_wait` as tenacity's stop condition;
    tenacity waits as :func:`wait_before_retry` says and logs each retry at INFO. The last error
    is raised as it is (``reraise``).
    """

    def attempt_of(state: RetryCallState) -> tuple[PhalaError, int]:
        error = state.outcome.exception() if state.outcome else None
        assert isinstance(error, PhalaError)  # noqa: S101 - only PhalaError is retried
        return error, state.attempt_number + attempts_made

    def stop(state: RetryCallState) -> bool:
        error, attempt = attempt_of(state)
        decision = next_wait(error, attempt, policy, may_retry=may_retry, on_denied=on_denied)
        return decision is None

    def wait(state: RetryCallState) -> float:
        return wait_before_retry(*attempt_of(state), policy)

    def log(state: RetryCallState) -> None:
        error, attempt = attempt_of(state)
        pause = state.next_action.sleep if state.next_action else 0.0
        log_retry(error, attempt, policy, pause)

    return AsyncRetrying(
        retry=retry_if_exception_type(PhalaError),
        stop=_Stop(stop),
        wait=wait,
        before_sleep=log,
        reraise=True,
    )


def log_retry(error: PhalaError, attempt: int, policy: RetryPolicy, wait: float) -> None:
    """Log at INFO that attempt ``attempt`` failed and a retry follows after ``wait`` seconds."""
    logger.info(
        "retrying %s: attempt %d of %d failed (%s: %s); waiting %.3fs",
        subject(error.cvm_id),
        attempt,
        policy.max_attempts,
        type(error).__name__,
        error.message,
        wait,
    )


class _Stop(stop_base):
    """A tenacity stop condition from a plain predicate (tenacity types ``stop=`` as stop_base)."""

    def __init__(self, predicate: Callable[[RetryCallState], bool]) -> None:
        self._predicate = predicate

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self._predicate(retry_state)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header value, in either form.

    Args:
        value: delta-seconds (``"120"``) or an HTTP-date (``"Wed, 21 Oct 2015 07:28:00 GMT"``).
        now: the current time, for the HTTP-date form (defaults to the system clock, UTC).

    Returns:
        The wait in seconds, never negative; None when the header is absent or unreadable.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now or datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())


# Jitter only spreads retries apart; it protects no secret, so the default PRNG is right.
_rng = random.Random()  # noqa: S311

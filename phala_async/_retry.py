"""The retry policy: which failures are retried, what an attempt's ending means, how long to
wait, and when to give up.

The decisions are plain functions or frozen values, tested without a server. :func:`retrying`
is the one place tenacity is wired.
"""

from __future__ import annotations

import enum
import logging
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type
from tenacity.stop import stop_base

from ._errors import (
    APIConnectionError,
    APIProxyError,
    APIStatusError,
    APITimeoutError,
    APITLSError,
    APIUnreachableError,
    AuthenticationError,
    ConfigurationError,
    PhalaError,
    ResponseError,
    subject,
)

__all__ = [
    "RETRYABLE_STATUSES",
    "Outcome",
    "RetryPolicy",
    "answered",
    "backoff_delay",
    "classify",
    "ends_every_call",
    "give_up",
    "is_retryable",
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
    return isinstance(error, APIConnectionError) and not isinstance(
        error, (APITLSError, APIUnreachableError)
    )


def ends_every_call(error: BaseException) -> bool:
    """Whether every other request would fail the same way: the credential was refused (401),
    the TLS connection cannot be trusted, the proxy refused the tunnel, or the API never
    answered at all (:class:`APIUnreachableError`). A sweep ends at once on such an error; the
    API's 403 does not (it is about one CVM, of another workspace)."""
    if isinstance(error, APIProxyError):
        return not is_retryable(error)
    return isinstance(error, (AuthenticationError, APITLSError, APIUnreachableError))


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


class Outcome(enum.Enum):
    """What one attempt's ending says about the server, for the limits that learn from it."""

    OK = "ok"  #: a usable answer, or a final one about the request itself (404, 403, a bad body)
    THROTTLED = "throttled"  #: 429, or 503 with Retry-After: pacing answers it
    OVERLOADED = "overloaded"  #: another 5xx, retryable: the server is failing or overloaded
    TIMEOUT = "timeout"  #: no answer within the attempt's timeout
    FAILED = "failed"  #: no complete answer (refused, reset, cut short)
    DOOMED = "doomed"  #: every request would fail the same way (a refused credential, TLS)
    UNKNOWN = "unknown"  #: nothing was learned (cancelled before or while sending)


def classify(error: BaseException | None) -> Outcome:
    """The :class:`Outcome` an attempt's exception (None for a success) means; pure."""
    if error is None:
        return Outcome.OK
    if not isinstance(error, PhalaError):
        return Outcome.UNKNOWN
    if ends_every_call(error):
        return Outcome.DOOMED
    if isinstance(error, APIStatusError):
        status = error.status_code
        if status == 429 or (status == 503 and error.retry_after is not None):
            return Outcome.THROTTLED
        if status >= 500 and status in RETRYABLE_STATUSES:
            return Outcome.OVERLOADED
        return Outcome.FAILED if status in RETRYABLE_STATUSES else Outcome.OK
    if isinstance(error, APITimeoutError):
        return Outcome.TIMEOUT
    if isinstance(error, APIConnectionError):
        return Outcome.FAILED
    if isinstance(error, ResponseError):
        return Outcome.OK  # a 2xx body that cannot be used: the server itself is healthy
    return Outcome.UNKNOWN  # the client closed before the request went out


def answered(error: BaseException | None) -> bool:
    """Whether an attempt that ended with ``error`` (None: a success) got any answer: all but a
    connection that could not be made and an attempt that timed out with nothing back."""
    return not (isinstance(error, APIConnectionError) and error.no_answer)


def give_up(error: PhalaError, attempt: int, policy: RetryPolicy) -> bool:
    """Whether attempt number ``attempt`` (1-based), which raised ``error``, is the last one:
    a final error, ``max_attempts`` reached, or a ``Retry-After`` longer than the policy
    honours. Pure; the retry budget is asked separately, since its answer changes over time."""
    return (
        not is_retryable(error)
        or attempt >= policy.max_attempts
        or retry_after_too_long(error, policy)
    )


def retrying(
    policy: RetryPolicy,
    *,
    stop: Callable[[PhalaError, int], bool],
    sleep: Callable[[float], Awaitable[None]],
) -> AsyncRetrying:
    """The tenacity loop that runs every attempt of one call.

    ``stop(error, attempt)`` judges each failure once (the policy, then the retry budget);
    tenacity waits as :func:`wait_before_retry` says, through ``sleep`` (a sweep's gives its
    worker's turn back while it waits), and logs each retry at INFO. The last error is raised as
    it is (``reraise``).
    """

    def attempt_of(state: RetryCallState) -> tuple[PhalaError, int]:
        error = state.outcome.exception() if state.outcome else None
        assert isinstance(error, PhalaError)  # noqa: S101 - only PhalaError is retried
        return error, state.attempt_number

    def wait(state: RetryCallState) -> float:
        return wait_before_retry(*attempt_of(state), policy)

    def log(state: RetryCallState) -> None:
        error, attempt = attempt_of(state)
        pause = state.next_action.sleep if state.next_action else 0.0
        log_retry(error, attempt, policy, pause)

    return AsyncRetrying(
        retry=retry_if_exception_type(PhalaError),
        stop=_Stop(lambda state: stop(*attempt_of(state))),
        wait=wait,
        before_sleep=log,
        sleep=sleep,
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

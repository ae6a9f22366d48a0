"""Tests for the pure retry decisions: what is retried, how long to wait (``_retry``)."""

from __future__ import annotations

import asyncio
import math
import random
from datetime import UTC, datetime, timedelta

import pytest

from phala_async import (
    APIConnectionError,
    APITimeoutError,
    ClientClosedError,
    ConfigurationError,
    DecodeError,
    InvalidCvmIdError,
    ResponseTooLargeError,
)
from phala_async._errors import error_for_status
from phala_async._retry import RetryPolicy, backoff_delay, is_retryable, parse_retry_after

NOW = datetime(2015, 10, 21, 7, 27, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "status", [pytest.param(s, id=str(s)) for s in (408, 425, 429, 500, 502, 503, 504)]
)
def test_transient_statuses_are_retryable(status: int) -> None:
    """Timeouts, too-early, rate limits and server failures are worth asking again."""
    assert is_retryable(error_for_status(status, b"", {}, cvm_id=1)) is True


@pytest.mark.parametrize(
    "status", [pytest.param(s, id=str(s)) for s in (301, 400, 401, 403, 404, 409, 418, 422, 501)]
)
def test_final_statuses_are_not_retryable(status: int) -> None:
    """Other 4xx, redirects and 501 are final: asking again gives the same answer."""
    assert is_retryable(error_for_status(status, b"", {}, cvm_id=1)) is False


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        pytest.param(APIConnectionError("reset", cvm_id=1), True, id="connection"),
        pytest.param(APITimeoutError("slow", cvm_id=1), True, id="timeout"),
        pytest.param(DecodeError("bad", cvm_id=1, path="$.vcpu"), False, id="decode"),
        pytest.param(ResponseTooLargeError("big", cvm_id=1, limit=10), False, id="too-large"),
        pytest.param(InvalidCvmIdError("../x", "bad"), False, id="invalid-id"),
        pytest.param(ClientClosedError(), False, id="closed"),
        pytest.param(ConfigurationError("bad"), False, id="configuration"),
        pytest.param(asyncio.CancelledError(), False, id="cancelled"),
        pytest.param(ValueError("other"), False, id="foreign-exception"),
    ],
)
def test_is_retryable_by_error_type(error: BaseException, expected: bool) -> None:
    """Transport failures are retried; a bad answer, a bad call or cancellation never is."""
    assert is_retryable(error) is expected


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        pytest.param("0", 0.0, id="zero"),
        pytest.param("1", 1.0, id="one"),
        pytest.param("120", 120.0, id="120"),
        pytest.param(" 7 ", 7.0, id="surrounding-spaces"),
    ],
)
def test_parse_retry_after_delta_seconds(value: str, seconds: float) -> None:
    """The delta-seconds form is read as that many seconds."""
    assert parse_retry_after(value) == seconds


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("Wed, 21 Oct 2015 07:28:00 GMT", id="imf-fixdate"),
        pytest.param("Wednesday, 21-Oct-15 07:28:00 GMT", id="rfc850"),
        pytest.param("Wed Oct 21 07:28:00 2015", id="asctime"),
    ],
)
def test_parse_retry_after_http_date(value: str) -> None:
    """Each HTTP-date form is read as the seconds from ``now`` until that moment."""
    assert parse_retry_after(value, now=NOW) == 60.0


def test_parse_retry_after_past_date_is_zero() -> None:
    """A date already past means no wait, never a negative one."""
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=NOW + timedelta(hours=1)) == 0.0


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(None, id="absent"),
        pytest.param("", id="empty"),
        pytest.param("soon", id="word"),
        pytest.param("-5", id="negative"),
        pytest.param("12abc", id="digits-then-letters"),
        pytest.param("\u0661\u0662", id="arabic-indic-digits"),
        pytest.param("\uff11\uff12", id="fullwidth-digits"),
        pytest.param("\u00b2", id="superscript-two"),
    ],
)
def test_parse_retry_after_unreadable_is_none(value: str | None) -> None:
    """An absent or unreadable header gives None, never an exception or a guess."""
    assert parse_retry_after(value, now=NOW) is None


@pytest.mark.parametrize(
    ("attempt", "low", "high"),
    [
        pytest.param(1, 0.25, 0.5, id="attempt-1"),
        pytest.param(2, 0.5, 1.0, id="attempt-2"),
        pytest.param(3, 1.0, 2.0, id="attempt-3"),
        pytest.param(4, 2.0, 4.0, id="attempt-4"),
        pytest.param(5, 4.0, 8.0, id="attempt-5"),
        pytest.param(6, 4.0, 8.0, id="attempt-6-capped"),
        pytest.param(50, 4.0, 8.0, id="attempt-50-capped"),
        pytest.param(5000, 4.0, 8.0, id="attempt-5000-capped"),
    ],
)
def test_backoff_delay_bounds(attempt: int, low: float, high: float) -> None:
    """Each backoff is between half and all of ``initial * 2**(attempt-1)``, capped at the max."""
    policy = RetryPolicy(backoff_initial=0.5, backoff_max=8.0)
    rng = random.Random(1234)
    delays = [backoff_delay(attempt, policy, rng) for _ in range(500)]
    assert all(low <= delay <= high for delay in delays)
    assert max(delays) - min(delays) > (high - low) / 2  # jittered across the range


def test_backoff_delay_is_reproducible_with_a_seeded_rng() -> None:
    """The same seed gives the same delays, so the jitter can be pinned in tests."""
    policy = RetryPolicy()
    first = [backoff_delay(n, policy, random.Random(7)) for n in range(1, 8)]
    second = [backoff_delay(n, policy, random.Random(7)) for n in range(1, 8)]
    assert first == second


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"max_attempts": 0}, id="max_attempts-zero"),
        pytest.param({"max_attempts": -1}, id="max_attempts-negative"),
        pytest.param({"max_attempts": 2.5}, id="max_attempts-float"),
        pytest.param({"max_attempts": True}, id="max_attempts-bool"),
        pytest.param({"max_attempts": "3"}, id="max_attempts-str"),
        pytest.param({"backoff_initial": -0.1}, id="backoff_initial-negative"),
        pytest.param({"backoff_initial": math.nan}, id="backoff_initial-nan"),
        pytest.param({"backoff_initial": math.inf}, id="backoff_initial-inf"),
        pytest.param({"backoff_initial": "0.5"}, id="backoff_initial-str"),
        pytest.param({"backoff_initial": True}, id="backoff_initial-bool"),
        pytest.param({"backoff_max": -1.0}, id="backoff_max-negative"),
        pytest.param({"backoff_initial": 2.0, "backoff_max": 1.0}, id="backoff_max-below-initial"),
        pytest.param({"retry_after_cap": -1.0}, id="retry_after_cap-negative"),
        pytest.param({"retry_after_cap": math.nan}, id="retry_after_cap-nan"),
        pytest.param({"retry_after_cap": None}, id="retry_after_cap-none"),
    ],
)
def test_retry_policy_rejects_bad_values(kwargs: dict[str, object]) -> None:
    """A bad retry setting fails at construction with a message naming the setting."""
    with pytest.raises(ConfigurationError) as caught:
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
    assert any(name in str(caught.value) for name in kwargs)

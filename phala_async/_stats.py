"""The client's counters: :class:`Counters` owns and writes every one of them, and
:class:`ClientStats` is the snapshot a caller reads.

Everything that counts calls a method of the one :class:`Counters` object of its client, so
what is counted, and when, reads in one place.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ClientStats", "Counters"]


@dataclass(frozen=True, kw_only=True)
class ClientStats:
    """A snapshot of a client's counters, taken when :attr:`PhalaClient.stats` was read.

    Snapshots do not change: read ``stats`` again and compare the two to see what happened
    between. ``json.dumps(stats.to_dict())`` serialises one (``dataclasses.asdict`` works too).

    Every call (one per id or page) that ended counts once, in ``ok``, in ``failed`` or in
    ``cancelled``, whatever ended it (a deadline included).

    Attributes:
        requests: HTTP requests sent, retries and reconnects included.
        retries: requests that were retries of an earlier failed one.
        reconnects: requests sent again at once because a pooled connection had gone stale.
        rate_limited: answers with status 429.
        throttled: answers that slowed the client down (429, or 503 with ``Retry-After``).
        overloaded: other retryable 5xx answers.
        timeouts: attempts that got no answer within ``timeout``.
        retries_deferred: retries held back until enough requests succeeded again.
        retries_denied: retries not sent because the API answered nothing but failures.
        ok: calls that returned a value.
        failed: calls that raised, by exception class name.
        cancelled: calls cancelled by their caller before they ended.
        coalesced: calls that shared a request already in flight for the same id.
        cache_hits: calls answered from the cache without a request.
        in_flight: requests on the wire when the snapshot was taken.
        window: requests the client lets be in flight now (adaptive, from 1 to ``concurrency``).
        send_rate: the adaptive send rate in requests per second, None while unpaced.
    """

    requests: int = 0
    retries: int = 0
    reconnects: int = 0
    rate_limited: int = 0
    throttled: int = 0
    overloaded: int = 0
    timeouts: int = 0
    retries_deferred: int = 0
    retries_denied: int = 0
    ok: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    cancelled: int = 0
    coalesced: int = 0
    cache_hits: int = 0
    in_flight: int = 0
    window: int = 0
    send_rate: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The snapshot as plain JSON-ready values (``failed`` a plain ``dict``)."""
        return dataclasses.asdict(self)


class Counters:
    """Every counter of one client, each written by one method here.

    The request path calls :meth:`request` as a request goes out and :meth:`answer` as it
    ends; a call (one per id or page) calls :meth:`call_ended` once, whatever ended it.
    """

    __slots__ = (
        "cache_hits",
        "cancelled",
        "coalesced",
        "failed",
        "in_flight",
        "ok",
        "overloaded",
        "rate_limited",
        "reconnects",
        "requests",
        "retries",
        "retries_deferred",
        "retries_denied",
        "throttled",
        "timeouts",
    )

    def __init__(self) -> None:
        self.requests = self.retries = self.reconnects = 0
        self.rate_limited = self.throttled = self.overloaded = self.timeouts = 0
        self.retries_deferred = self.retries_denied = 0
        self.ok = self.cancelled = self.coalesced = self.cache_hits = 0
        self.in_flight = 0
        self.failed: dict[str, int] = {}

    def request(self) -> None:
        """A request is going out."""
        self.requests += 1
        self.in_flight += 1

    def answered(self) -> None:
        """A request ended with a usable answer."""
        self.in_flight -= 1

    def answer(
        self, *, status: int | None, throttled: bool, overloaded: bool, timeout: bool
    ) -> None:
        """A request ended with an error: its status (None without one) and what it meant."""
        self.in_flight -= 1
        if status == 429:
            self.rate_limited += 1
        if throttled:
            self.throttled += 1
        elif overloaded:
            self.overloaded += 1
        elif timeout:
            self.timeouts += 1

    def reconnect(self) -> None:
        """A request is sent again at once after a stale pooled connection."""
        self.reconnects += 1
        self.requests += 1

    def retry(self) -> None:
        """The next request retries an earlier failed one."""
        self.retries += 1

    def retry_deferred(self) -> None:
        """A retry waits for the retry budget."""
        self.retries_deferred += 1

    def retry_denied(self) -> None:
        """A retry was not sent: the API answered nothing but failures."""
        self.retries_denied += 1

    def call_ended(self, error: BaseException | None) -> None:
        """A call ended: with a value (None), cancelled, or failed with ``error``."""
        if error is None:
            self.ok += 1
        elif isinstance(error, asyncio.CancelledError):
            self.cancelled += 1
        else:
            name = type(error).__name__
            self.failed[name] = self.failed.get(name, 0) + 1

    def coalesce(self) -> None:
        """A call joined a request already in flight."""
        self.coalesced += 1

    def cache_hit(self) -> None:
        """A call was answered from the cache."""
        self.cache_hits += 1

    def snapshot(self, *, window: int, send_rate: float | None) -> ClientStats:
        """The counters as of now, as a value that does not change afterwards."""
        return ClientStats(
            requests=self.requests,
            retries=self.retries,
            reconnects=self.reconnects,
            rate_limited=self.rate_limited,
            throttled=self.throttled,
            overloaded=self.overloaded,
            timeouts=self.timeouts,
            retries_deferred=self.retries_deferred,
            retries_denied=self.retries_denied,
            ok=self.ok,
            failed=dict(self.failed),
            cancelled=self.cancelled,
            coalesced=self.coalesced,
            cache_hits=self.cache_hits,
            in_flight=self.in_flight,
            window=window,
            send_rate=send_rate,
        )

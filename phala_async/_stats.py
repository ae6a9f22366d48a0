"""What a client counted: :class:`ClientStats`, the snapshot ``PhalaClient.stats`` returns, and
how a call that ends by its deadline or by cancellation is counted.

Every call (one per ``get_cvm``, per sweep id that made its own requests, per listing page) ends
exactly once: in ``ok``, in ``failed`` (by exception class; a call past its ``deadline`` is an
``APITimeoutError`` there), or in ``cancelled`` (its caller went away first: a cancelled task, a
sweep closed early). Each request chain counts itself once, where it ends; a chain that its
call's deadline cancels counts as that call's ``APITimeoutError``, not as a cancellation, so
:func:`deadline_scope` marks the chains a deadline bounds and :func:`deadline_passed` tells the
two apart. (Counting in the chain, not where the caller sees the deadline, keeps a chain that
finished just as its deadline fired from counting twice.)
"""

from __future__ import annotations

import contextvars
import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["ClientStats", "deadline_passed", "deadline_scope"]


@dataclass(frozen=True)
class ClientStats:
    """A snapshot of a client's counters, taken when :attr:`PhalaClient.stats` was read.

    Snapshots do not change: read ``stats`` again and compare the two to see what happened
    between. ``json.dumps(stats.to_dict())`` serialises one.

    Every call that made its own requests ends once, in ``ok``, ``failed`` or ``cancelled``; so
    ``ok + sum(failed.values())`` is the number of such calls that ended, cancellations aside.
    Calls answered without a request of their own count in ``coalesced`` or ``cache_hits``.

    Attributes:
        requests: HTTP requests sent, retries and reconnects included.
        retries: requests that were retries of an earlier failed one.
        reconnects: requests sent again at once because a pooled connection had gone stale.
        rate_limited: answers with status 429.
        throttled: answers that slowed the client down (429, or 503 with ``Retry-After``).
        overloaded: other retryable 5xx answers.
        retries_denied: retries not sent because most recent requests were failing.
        ok: calls (one per id or page) that returned a value.
        failed: calls that raised, by exception class name (``{"NotFoundError": 2}``); a call
            past its ``deadline`` counts as ``APITimeoutError``.
        cancelled: calls whose caller went away before they ended (a cancelled task, a sweep
            closed early, the client closed); a deadline is not a cancellation.
        coalesced: calls that shared a request already in flight for the same id.
        cache_hits: calls answered from the cache without a request.
        in_flight: requests on the wire when the snapshot was taken.
        send_rate: the adaptive send rate in requests per second, None while unpaced.
    """

    requests: int = 0
    retries: int = 0
    reconnects: int = 0
    rate_limited: int = 0
    throttled: int = 0
    overloaded: int = 0
    retries_denied: int = 0
    ok: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    cancelled: int = 0
    coalesced: int = 0
    cache_hits: int = 0
    in_flight: int = 0
    send_rate: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The snapshot as JSON values (``failed`` a plain ``{class name: count}``)::

        json.dumps(client.stats.to_dict())
        """
        values = dataclasses.asdict(self)
        values["failed"] = dict(self.failed)
        return values


class _Expired(Protocol):
    def expired(self) -> bool: ...


#: The deadline bounding the call this context runs for, when it has one. A flight task started
#: inside the call copies the context, so its request chain sees the deadline too.
_deadline: contextvars.ContextVar[_Expired | None] = contextvars.ContextVar(
    "phala_async_deadline", default=None
)


@contextmanager
def deadline_scope(timeout: _Expired) -> Iterator[None]:
    """Mark the code in the block as bound by ``timeout`` (an ``asyncio.Timeout``)."""
    token = _deadline.set(timeout)
    try:
        yield
    finally:
        _deadline.reset(token)


def deadline_passed() -> bool:
    """Whether a request chain that is being cancelled now was cancelled by the deadline of its
    call, rather than by its caller."""
    timeout = _deadline.get()
    return timeout is not None and timeout.expired()

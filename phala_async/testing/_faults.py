"""How the simulator in ``phala_async.testing`` fails: fault kinds, their answers, the rate limit
and stale connections. ``Fault`` and ``DEFAULT_FAULTS`` are public through ``phala_async.testing``.
"""

from __future__ import annotations

import asyncio
import enum
import math
import secrets
import weakref

from aiohttp import web

from . import _data as data

__all__ = [
    "DEFAULT_FAULTS",
    "Aborted",
    "Fault",
    "FixedWindow",
    "StaleConnections",
    "as_fault",
    "fault_answer",
    "format_retry_after",
    "respond",
]


class Fault(enum.StrEnum):
    """Kinds of failure the simulator can inject instead of (or before) a normal answer."""

    HTTP_500 = "500"
    HTTP_502 = "502"  # an HTML page, as a proxy in front of the API sends it
    HTTP_503 = "503"
    HTTP_504 = "504"
    RATE_LIMIT = "429"  # with `Retry-After: <retry_after>`
    RESET = "reset"  # the connection is aborted before any response byte
    TRUNCATE = "truncate"  # full Content-Length announced, half the body sent, connection closed
    DELAY = "delay"  # sleep `fault_delay` seconds, then answer normally
    NOT_JSON = "not_json"  # 200 with a JSON content type and an HTML body
    BAD_GZIP = "bad_gzip"  # 200 with `Content-Encoding: gzip` and a body that is not gzip
    OK = "ok"  # answer normally (useful in `script`)


Fault.__module__ = "phala_async.testing"  # documented and imported from there

DEFAULT_FAULTS: tuple[Fault, ...] = (
    Fault.HTTP_500,
    Fault.HTTP_502,
    Fault.HTTP_503,
    Fault.HTTP_504,
    Fault.RATE_LIMIT,
    Fault.RESET,
    Fault.TRUNCATE,
    Fault.DELAY,
)
_JSON = "application/json"
_FAULT_BODIES: dict[Fault, tuple[int, bytes, str]] = {
    Fault.HTTP_500: (500, data.encode({"detail": "Internal Server Error"}), _JSON),
    Fault.HTTP_502: (502, data.BAD_GATEWAY_PAGE, "text/html"),
    Fault.HTTP_503: (503, data.encode({"detail": "Service Unavailable"}), _JSON),
    Fault.HTTP_504: (504, data.encode({"detail": "Gateway Timeout"}), _JSON),
    Fault.NOT_JSON: (200, b"<html>oops</html>", _JSON),
}


def as_fault(kind: Fault | str | int) -> Fault:
    """``kind`` as a Fault; ValueError listing the kinds if it is none."""
    try:
        return Fault(str(kind))
    except ValueError:
        choices = ", ".join(repr(fault.value) for fault in Fault)
        raise ValueError(f"unknown fault {kind!r}: pass a Fault or one of {choices}") from None


def format_retry_after(value: float | str) -> str:
    """The ``Retry-After`` header for seconds or an HTTP-date; ValueError if negative."""
    if isinstance(value, str):
        return value  # an HTTP-date, sent as given
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"retry_after must be >= 0 seconds or an HTTP-date string, not {value!r}")
    return str(int(value)) if value == int(value) else str(value)


def respond(status: int, body: bytes, content_type: str = _JSON, **headers: str) -> web.Response:
    """An answer with a fresh ``X-Request-ID``, as every answer of the API has."""
    headers["X-Request-ID"] = f"req_{secrets.token_hex(8)}"
    return web.Response(status=status, body=body, content_type=content_type, headers=headers)


class Aborted(web.Response):
    """Returned after the transport was aborted: aiohttp's write fails quietly as a disconnect.

    ``recorded_status`` is what the counters and the log record: ``"reset"`` or ``"dropped"``.
    """

    def __init__(self, recorded_status: str) -> None:
        super().__init__()
        self.recorded_status = recorded_status


async def fault_answer(
    request: web.Request, fault: Fault, status: int, body: bytes, *, retry_after: str
) -> web.StreamResponse:
    """The answer for an injected fault other than DELAY and OK.

    ``status`` and ``body`` are the normal answer; ``retry_after`` is the header of a
    ``RATE_LIMIT``.
    """
    if fault in _FAULT_BODIES:
        return respond(*_FAULT_BODIES[fault])
    if fault is Fault.RATE_LIMIT:
        return respond(429, data.RATE_LIMITED, **{"Retry-After": retry_after})
    transport = request.transport
    if fault is Fault.RESET:
        if transport is not None:
            transport.abort()
        return Aborted("reset")
    if fault is Fault.BAD_GZIP:
        return respond(200, body, **{"Content-Encoding": "gzip"})
    # Fault.TRUNCATE: announce the whole body, send half of it, then hang up.
    response = web.StreamResponse(status=status)
    response.content_type = _JSON
    response.content_length = len(body)
    response.headers["X-Request-ID"] = f"req_{secrets.token_hex(8)}"
    await response.prepare(request)
    await response.write(body[: len(body) // 2])
    if transport is not None:
        transport.close()
    return response


class FixedWindow:
    """A budget of ``limit`` requests per fixed one-second window of the loop's clock."""

    def __init__(self, limit: float) -> None:
        self._limit = limit
        self._window, self._count = -1, 0

    def admit(self) -> bool:
        """Count a request in the current window if it has room; return whether it had."""
        window = int(asyncio.get_running_loop().time())
        if window != self._window:
            self._window, self._count = window, 0
        if self._count >= self._limit:
            return False  # a refused request does not use up the window's budget
        self._count += 1
        return True


class StaleConnections:
    """Requests answered per connection, to drop a connection's request past ``limit``."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        # Keyed by transport, held weakly: a closed connection leaves no entry behind.
        self._answered: weakref.WeakKeyDictionary[asyncio.BaseTransport, int] = (
            weakref.WeakKeyDictionary()
        )

    def drop_if_stale(self, request: web.Request) -> bool:
        """Abort the connection if it answered ``limit`` requests, else count this one on it.

        Returns whether the connection was aborted.
        """
        transport = request.transport
        if transport is None:  # the client is already gone
            return False
        answered = self._answered.get(transport, 0)
        if answered >= self._limit:
            transport.abort()
            return True
        self._answered[transport] = answered + 1
        return False

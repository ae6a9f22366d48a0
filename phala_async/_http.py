"""Moving bytes: send one GET, read a bounded body, and translate every aiohttp failure.

What the answer means is decided elsewhere (:func:`phala_async._response.interpret`); this module
only talks to aiohttp, and is the one place its exceptions become :class:`PhalaError`, each
naming where the request went and why it failed.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from contextvars import ContextVar
from time import monotonic as _monotonic
from typing import Any, NamedTuple

import aiohttp
from aiohttp.http_exceptions import ContentEncodingError, LineTooLong
from multidict import CIMultiDictProxy
from yarl import URL

from ._config import ProxySetting
from ._errors import (
    APIConnectionError,
    APIProxyError,
    APITimeoutError,
    APITLSError,
    DecodeError,
    PhalaError,
    ResponseTooLargeError,
    subject,
    with_tls_hint,
)

__all__ = ["NEW", "POOLED", "REUSED", "WANT_NEW", "Answer", "Exchange", "host_and_port"]

_READ_CHUNK = 64 * 1024

#: How the request running in this task got its connection, as the client's connector tells
#: (:class:`~phala_async._session.PoolConnector`): ``NEW`` or ``REUSED`` from the pool.
#: :meth:`Exchange.get` sets ``WANT_NEW`` before a resend, and the connector then opens a new
#: connection. One variable, set only when its value changes: the common case (a reused
#: connection, again) costs one read per request.
POOLED: ContextVar[int] = ContextVar("phala_async_pooled", default=0)
NEW, REUSED, WANT_NEW = 0, 1, 2

#: What a certificate failure asks of the caller, unless the certificate names another host.
TLS_TRUST_FIX = (
    "to trust a private CA, pass ca_file= (a PEM bundle) or ssl= (an ssl.SSLContext), "
    "or set SSL_CERT_FILE"
)
# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH.
_NAME_MISMATCH = frozenset({62, 64})
# aiohttp's default limit on the status line and on each header line.
_AIOHTTP_LINE_LIMIT = 8190


class Answer(NamedTuple):
    """A complete HTTP answer: status, headers and the whole (decompressed) body."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


class Exchange:
    """Sends GETs for one client: its base URL, headers, timeout and body cap, fixed once.

    Args:
        base_url: the API prefix, without a trailing slash.
        headers: sent with every request (the credential among them).
        timeout: seconds one attempt may take.
        max_bytes: the body cap.
        proxy: the proxy requests go through (on the client's own session), or None.
        on_reconnect: called when a request is sent again at once because its pooled connection
            had gone stale (only on the client's own session, whose connector tells).
    """

    __slots__ = (
        "_base_url",
        "_deadlines",
        "_headers",
        "_max_bytes",
        "_on_reconnect",
        "_route",
        "_timeout",
        "_timeout_seconds",
        "_via",
        "_where",
    )

    def __init__(
        self,
        *,
        base_url: str,
        headers: dict[str, str],
        timeout: float,
        max_bytes: int,
        proxy: ProxySetting | None = None,
        on_reconnect: Callable[[], None] | None = None,
    ) -> None:
        self._base_url = base_url
        self._headers = headers
        self._timeout_seconds = timeout
        # No aiohttp timer at all: each attempt is bounded by our own deadlines in get().
        self._deadlines = _Deadlines(timeout)
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=None, sock_read=None)
        self._max_bytes = max_bytes
        self._on_reconnect = on_reconnect
        self._where = host_and_port(URL(base_url))
        self._route = f" through the proxy {proxy.url}" if proxy else ""
        # Through a proxy, the headers go with each request: aiohttp would also send a
        # session's default headers, the credential among them, to the proxy in CONNECT.
        self._via: dict[str, Any] | None = None
        if proxy is not None:
            self._via = {"headers": headers, "proxy": proxy.url}
            if proxy.authorization is not None:
                self._via["proxy_headers"] = {"Proxy-Authorization": proxy.authorization}

    @property
    def base_url(self) -> str:
        """The API prefix requests go to."""
        return self._base_url

    @property
    def where(self) -> str:
        """The API's ``host:port``, for messages."""
        return self._where

    def with_timeout(self, timeout: float) -> Exchange:
        """The same exchange (proxy and reconnect callback included) with another per-attempt
        timeout."""
        other = object.__new__(Exchange)
        for name in Exchange.__slots__:
            setattr(other, name, getattr(self, name))
        other._timeout_seconds = timeout
        other._deadlines = _Deadlines(timeout)
        return other

    def session_defaults(self) -> dict[str, Any]:
        """Keyword arguments for a ``ClientSession`` of our own that sends what we send."""
        if self._via is not None:
            return {"timeout": self._timeout}
        return {"headers": self._headers, "timeout": self._timeout}

    async def get(
        self,
        session: aiohttp.ClientSession,
        path: str,
        cvm_id: str | int | None,
        has_defaults: bool,
        task: asyncio.Task[Any],
    ) -> Answer:
        """GET ``base_url + path`` and read the whole answer, whatever its status.

        ``has_defaults`` says that ``session`` was made with :meth:`session_defaults` (the
        client's own session, whose connector reports reused connections). ``task`` is the task
        that awaits this, which the attempt's deadline cancels.

        A request that fails on a reused pooled connection before any byte of the answer
        arrived (the server had closed it while idle) is sent again at once, on a new
        connection, once: that is a stale connection, not a failure.

        Raises:
            APITimeoutError: the attempt took longer than the timeout.
            APITLSError: the certificate was not accepted, or the TLS handshake failed.
            APIProxyError: the proxy refused the tunnel.
            APIConnectionError: refused, reset, a name that does not resolve, or the body was
                cut short; the message names the host and port and says why.
            ResponseTooLargeError: the body is larger than the cap (it was not buffered), or
                the headers are larger than aiohttp reads.
            DecodeError: a compressed body that does not decompress.
        """
        try:
            # Paths are built from validated segments and integers, so need no quoting.
            url = URL(self._base_url + path, encoded=True)
            for resend in (False, True):
                if resend:
                    # The request met a connection the server had closed while idle, so it
                    # never really happened: it is sent again at once, on a new connection,
                    # with a timeout of its own. aiohttp's own silent resend is off on our
                    # session so that each request is counted: this one counts as a request
                    # and as a reconnect.
                    assert self._on_reconnect is not None  # noqa: S101 - checked below
                    self._on_reconnect()
                    POOLED.set(WANT_NEW)
                # Our own timer rather than aiohttp's: aiohttp's can turn a cancellation that
                # lands as the timer fires into a TimeoutError (aio-libs/aiohttp#5979), which
                # would be retried instead of stopping the sweep.
                attempt = self._deadlines.attempt(task)
                try:
                    # Written out rather than in a helper: this runs once per request.
                    if not has_defaults:
                        request = session.get(
                            url, headers=self._headers, allow_redirects=False, timeout=self._timeout
                        )
                    elif self._via is None:
                        request = session.get(url, allow_redirects=False)
                    else:
                        request = session.get(url, allow_redirects=False, **self._via)
                    # Awaited, not entered: ``async with`` would add four coroutines a request;
                    # release() is all its exit does once the body is read.
                    response = await request
                    try:
                        length = response.content_length
                        if (
                            length is not None
                            and length <= self._max_bytes
                            and "Content-Encoding" not in response.headers
                        ):
                            body = await response.read()
                        else:
                            body = await self._read_capped(response, cvm_id)
                    finally:
                        response.release()
                except BaseException as exc:
                    if attempt.end(exc):
                        raise TimeoutError from exc  # the attempt's own timeout, not a cancel
                    if (
                        resend
                        or not has_defaults
                        or self._on_reconnect is None
                        or not isinstance(exc, (OSError, aiohttp.ServerDisconnectedError))
                        or not _stale(exc)
                    ):
                        raise
                    continue  # a stale pooled connection: sent again, below
                attempt.end()
                return Answer(response.status, response.headers, body)
            raise AssertionError("unreachable: the resend returns or raises")  # pragma: no cover
        except PhalaError:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            # Built here, raised outside the handler: aiohttp's exceptions hold the request's
            # headers (the credential, a proxy's password), so the error links back only to the
            # cause chosen as safe to show, never to them.
            error, cause = self._translate(exc, cvm_id)
        raise error from cause

    def _translate(
        self, exc: BaseException, cvm_id: str | int | None
    ) -> tuple[PhalaError, BaseException | None]:
        """The error a failed exchange means, and the exception safe to chain to it."""
        who, where, route = subject(cvm_id), self._where, self._route
        if isinstance(exc, TimeoutError):
            timeout = APITimeoutError(
                f"{who}: no complete answer from {where}{route} within {self._timeout_seconds}s",
                cvm_id=cvm_id,
            )
            timeout.no_answer = True
            return timeout, exc
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            cert_error = exc.certificate_error
            return _certificate_error(who, where, cert_error, cvm_id), cert_error
        if isinstance(exc, aiohttp.ClientSSLError):
            return APITLSError(
                f"{who}: the TLS handshake with {where}{route} failed: {_why(exc.os_error)}",
                cvm_id=cvm_id,
            ), exc.os_error
        if isinstance(exc, aiohttp.ClientHttpProxyError):
            return self._proxy_refused(exc, cvm_id), None
        if isinstance(exc, aiohttp.ClientProxyConnectionError):
            return _no_answer(
                f"{who}: cannot connect to the proxy {host_and_port(exc.host, exc.port)} "
                f"on the way to {where}: {_why(exc.os_error)}",
                cvm_id,
            ), exc.os_error
        if isinstance(exc, aiohttp.ClientConnectorError):
            # Its connection key holds a proxy's credentials: chain the OS error alone.
            os_error = exc.os_error
            if isinstance(os_error, socket.gaierror) or _is_dns_error(exc):
                message = f"{who}: cannot connect to {where}: name not resolved ({_why(os_error)})"
            else:
                message = f"{who}: cannot connect to {where}{route}: {_why(os_error)}"
            return _no_answer(message, cvm_id), os_error
        if isinstance(exc, aiohttp.ClientPayloadError):
            if isinstance(exc.__cause__, ContentEncodingError):
                return DecodeError(
                    f"{who}: the compressed response body did not decompress", cvm_id=cvm_id
                ), exc
            return APIConnectionError(
                f"{who}: the response body from {where} was cut short", cvm_id=cvm_id
            ), exc
        if isinstance(exc, aiohttp.ClientResponseError):
            # request_info holds the request headers, credential included: chain nothing.
            limit = _line_limit(exc)
            if limit is not None:
                return ResponseTooLargeError(
                    f"{who}: the answer's headers from {where} are larger than aiohttp reads "
                    f"(a line over {limit} bytes, or too many headers)",
                    cvm_id=cvm_id,
                    limit=limit,
                ), None
            return APIConnectionError(
                f"{who}: the answer from {where} was not valid HTTP ({exc.message})",
                cvm_id=cvm_id,
            ), None
        if isinstance(exc, aiohttp.ServerDisconnectedError):
            return _no_answer(
                f"{who}: {where}{route} closed the connection without answering", cvm_id
            ), exc
        # Reset, broken pipe and the like before any answer: nothing came back.
        return _no_answer(
            f"{who}: the connection to {where}{route} failed: {_why(exc)}", cvm_id
        ), exc

    def _proxy_refused(
        self, exc: aiohttp.ClientHttpProxyError, cvm_id: str | int | None
    ) -> APIProxyError:
        proxy = str(exc.request_info.real_url.with_user(None))
        status = exc.status
        hint = ""
        if status == 407:
            hint = (
                "; it wants credentials it did not get or did not accept: give them in the "
                "proxy URL, http://user:password@host:port"
            )
        elif status == 403:
            hint = "; its rules do not let this client reach the API"
        return APIProxyError(
            f"{subject(cvm_id)}: the proxy {proxy} refused the tunnel to {self._where}: "
            f"HTTP {status} {exc.message}{hint}",
            status_code=status,
            proxy=proxy,
            cvm_id=cvm_id,
        )

    async def _read_capped(
        self, response: aiohttp.ClientResponse, cvm_id: str | int | None
    ) -> bytes:
        """Read a body declared too large, of unknown length or compressed, refusing one over
        the cap without buffering it."""
        limit = self._max_bytes
        length = response.content_length
        if length is not None and length > limit:
            raise self._too_large(cvm_id, f"declares {length} bytes, more")
        # Unknown length, or compressed: count the decoded bytes as they arrive.
        chunks: list[bytes] = []
        size = 0
        while chunk := await response.content.read(_READ_CHUNK):
            size += len(chunk)
            if size > limit:
                raise self._too_large(cvm_id, "is longer")
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, cvm_id: str | int | None, what: str) -> ResponseTooLargeError:
        limit = self._max_bytes
        return ResponseTooLargeError(
            f"{subject(cvm_id)}: the response body {what} than the {limit}-byte cap "
            f"(max_response_bytes)",
            cvm_id=cvm_id,
            limit=limit,
        )


def _no_answer(message: str, cvm_id: str | int | None) -> APIConnectionError:
    """A connection that could not be made: nothing came back at all."""
    error = APIConnectionError(message, cvm_id=cvm_id)
    error.no_answer = True
    return error


def host_and_port(url_or_host: URL | str | None, port: int | None = None) -> str:
    """``host:port`` as people write it (``[::1]:443`` for IPv6), from a URL or its parts."""
    if isinstance(url_or_host, URL):
        host, port = url_or_host.host or "?", url_or_host.port
    else:
        host = url_or_host or "?"
    if ":" in host:
        host = f"[{host}]"
    return host if port is None else f"{host}:{port}"


def _stale(exc: BaseException) -> bool:
    """Whether a request failed on a pooled connection the server had closed, before any byte
    of its answer arrived: reset, or closed with nothing read."""
    if POOLED.get() != REUSED or isinstance(exc, (aiohttp.ClientConnectorError, TimeoutError)):
        return False  # a new connection, none was made, or too slow: a real failure
    # A disconnection after part of the status line or headers carries what was read.
    return not isinstance(exc, aiohttp.ServerDisconnectedError) or isinstance(exc.message, str)


def _certificate_error(
    who: str, where: str, error: BaseException, cvm_id: str | int | None
) -> APITLSError:
    reason = getattr(error, "verify_message", None) or str(error)
    if getattr(error, "verify_code", None) in _NAME_MISMATCH:
        return APITLSError(
            f"{who}: the TLS certificate of {where} is for another host: {reason} "
            f"(check the host in base_url)",
            cvm_id=cvm_id,
        )
    return APITLSError(
        f"{who}: the TLS certificate of {where} is not trusted: {reason}; {TLS_TRUST_FIX}",
        cvm_id=cvm_id,
    )


def _why(error: BaseException) -> str:
    """What went wrong, in the words a person would use."""
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, ConnectionResetError):
        return "connection reset"
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, ssl.SSLError) and error.reason:
        # "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)" -> the middle.
        text = str(error.args[1]) if len(error.args) > 1 else str(error)
        return with_tls_hint(text.split("] ", 1)[-1].rsplit(" (_ssl.c", 1)[0])
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def _is_dns_error(exc: aiohttp.ClientConnectorError) -> bool:
    # ClientConnectorDNSError is in aiohttp 3.10.10 and later.
    dns_error = getattr(aiohttp, "ClientConnectorDNSError", None)
    return dns_error is not None and isinstance(exc, dns_error)


def _line_limit(exc: aiohttp.ClientResponseError) -> int | None:
    """aiohttp's line limit when ``exc`` means the headers were too large, else None."""
    cause: BaseException | None = exc.__cause__
    for _ in range(3):  # ClientResponseError <- HttpProcessingError <- LineTooLong
        if cause is None:
            break
        if isinstance(cause, LineTooLong):
            limit = cause.args[1] if len(cause.args) > 1 else None
            return limit if isinstance(limit, int) else _AIOHTTP_LINE_LIMIT
        cause = cause.__cause__
    if "too many headers" in str(exc.message).lower():
        return _AIOHTTP_LINE_LIMIT
    return None


class _Deadlines:
    """Bounds the attempts of one exchange, all with the same timeout, with one timer between
    them rather than one each, by ``asyncio.timeout``'s rule: a cancellation from outside always
    wins over the timeout.

    Attempts start in the order their deadlines fall, so the one timer waits for the oldest
    attempt still running; when it fires it cancels every attempt past its deadline and waits
    for the next. An attempt costs a dict entry, where a timer handle each (or
    ``asyncio.timeout``) cost 2-4 us per request. Deadlines are read on ``time.monotonic``; the
    timer is set on the loop's own clock from the time left.
    """

    __slots__ = ("_handle", "_loop", "_running", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._running: dict[_Attempt, None] = {}  # in start order, so in deadline order
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def attempt(self, task: asyncio.Task[Any]) -> _Attempt:
        """Start bounding one attempt of ``task``, from now; end with :meth:`_Attempt.end`."""
        loop = task.get_loop()
        if loop is not self._loop:  # first use, or a new event loop: start afresh
            self._loop, self._running, self._handle = loop, {}, None
        attempt = _Attempt(self, task, _monotonic() + self.seconds)
        self._running[attempt] = None
        if self._handle is None:
            self._handle = loop.call_later(self.seconds, self._expire)
        return attempt

    def done(self, attempt: _Attempt) -> None:
        """``attempt`` ended before its deadline: forget it (and the timer, if none is left)."""
        running = self._running
        running.pop(attempt, None)
        if not running and self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _expire(self) -> None:
        self._handle = None
        loop = self._loop
        assert loop is not None  # noqa: S101 - set before any timer
        now = _monotonic()
        running = self._running
        for attempt in list(running):
            if attempt.deadline > now:
                self._handle = loop.call_later(attempt.deadline - now, self._expire)
                return
            del running[attempt]
            attempt.expired = True
            attempt.task.cancel()


class _Attempt:
    """One attempt's bound (see :class:`_Deadlines`)."""

    __slots__ = ("_cancelling", "_deadlines", "deadline", "expired", "task")

    def __init__(self, deadlines: _Deadlines, task: asyncio.Task[Any], deadline: float) -> None:
        self._deadlines = deadlines
        self.task = task
        self._cancelling = task.cancelling()
        self.expired = False
        self.deadline = deadline

    def end(self, error: BaseException | None = None) -> bool:
        """The attempt ended (with ``error``, None for an answer); True when that was the
        timeout's cancellation, which the caller turns into :class:`TimeoutError`."""
        if not self.expired:
            self._deadlines.done(self)
            return False
        return self.task.uncancel() <= self._cancelling and type(error) is asyncio.CancelledError

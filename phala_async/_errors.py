"""The exception tree, and the pure mapping from an HTTP answer to the exception it means.

::

    PhalaError
    ├── ConfigurationError (also ValueError)      a PhalaClient argument or variable is wrong
    ├── ClientClosedError                         the client was closed
    ├── EventLoopError (also RuntimeError)        the client was used from a second event loop
    ├── InvalidCvmIdError (also ValueError)       the id can never be asked for; nothing was sent
    ├── StatusTimeoutError (also TimeoutError)    wait_for_status ran out of time
    ├── StatusFailedError                         wait_for_status saw a failure status
    ├── APIConnectionError                        transport: refused, reset, unresolved, cut short
    │   ├── APITimeoutError                       an attempt ran past ``timeout``
    │   ├── APIProxyError                         the proxy refused the tunnel (its status)
    │   ├── APITLSError                           the server's certificate or TLS failed; final
    │   └── APIUnreachableError                   no request of a sweep ever got an answer; ends it
    ├── APIStatusError                            the server answered with a non-2xx status
    │   ├── BadRequestError                       400
    │   ├── AuthenticationError                   401
    │   ├── PermissionDeniedError                 403
    │   ├── NotFoundError                         404
    │   ├── UnprocessableEntityError              422
    │   ├── RateLimitError                        429
    │   └── InternalServerError                   5xx
    └── ResponseError                             an answer that cannot be used; final
        ├── DecodeError                           not JSON, or not the documented shape
        └── ResponseTooLargeError                 a body over ``max_response_bytes``, or
                                                  headers over aiohttp's limits

Every error raised for an id carries that ``cvm_id`` (as the caller gave it) and ``attempts``,
how many requests were made for it before giving up.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import msgspec

__all__ = [
    "APIConnectionError",
    "APIProxyError",
    "APIStatusError",
    "APITLSError",
    "APITimeoutError",
    "APIUnreachableError",
    "AuthenticationError",
    "BadRequestError",
    "ClientClosedError",
    "ConfigurationError",
    "DecodeError",
    "EventLoopError",
    "InternalServerError",
    "InvalidCvmIdError",
    "NotFoundError",
    "PermissionDeniedError",
    "PhalaError",
    "RateLimitError",
    "ResponseError",
    "ResponseTooLargeError",
    "StatusFailedError",
    "StatusTimeoutError",
    "UnprocessableEntityError",
    "describe",
    "error_for_status",
    "subject",
    "with_tls_hint",
]


class PhalaError(Exception):
    """Root of every error this library raises.

    Attributes:
        cvm_id: the id the failing call was for, as the caller gave it; None when the error is not
            about one id (a bad configuration, a closed client).
        attempts: how many requests were made before this error was raised (0 when none was).
    """

    cvm_id: str | int | None
    attempts: int

    def __init__(self, message: str, *, cvm_id: str | int | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.cvm_id = cvm_id
        self.attempts = attempts

    def __str__(self) -> str:
        if self.attempts > 1:
            return f"{self.message} (after {self.attempts} attempts)"
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only constructors do not pickle by default; rebuild from the instance dict.
        return (_rebuild, (type(self), self.__dict__))


def _rebuild(cls: type[PhalaError], state: dict[str, Any]) -> PhalaError:
    error = cls.__new__(cls)
    Exception.__init__(error, state.get("message", ""))
    error.__dict__.update(state)
    return error


# Long enough for any id of a valid length (128) and then some; absurd values are cut.
_SHOWN_CHARS = 200


def describe(value: object) -> str:
    """A short, safe ``repr`` of a caller's value for a message: long values are cut."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 512:
        return f"<int of {value.bit_length()} bits>"  # repr() of a huge int raises
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a caller's object with a broken __repr__
        text = f"<{type(value).__name__} object>"
    if len(text) > _SHOWN_CHARS:
        return f"{text[:_SHOWN_CHARS]}... ({len(text)} characters)"
    return text


def subject(cvm_id: str | int | None) -> str:
    """What an error message is about: the CVM, or the request when it was not for one id."""
    return "request" if cvm_id is None else f"CVM {describe(cvm_id)}"


class ConfigurationError(PhalaError, ValueError):
    """A client argument or environment variable is missing or wrong; the message says the fix."""

    def __init__(self, message: str) -> None:
        super().__init__(message, attempts=0)


class ClientClosedError(PhalaError):
    """The client was closed before or while this call ran."""

    def __init__(self, message: str = "the PhalaClient is closed", **kwargs: Any) -> None:
        kwargs.setdefault("attempts", 0)
        super().__init__(message, **kwargs)


class EventLoopError(PhalaError, RuntimeError):
    """A ``PhalaClient`` was used from an event loop other than the one that first used it.

    Its connection pool and limits belong to that loop; make one client per ``asyncio.run()``.
    """

    def __init__(self, message: str, **kwargs: Any) -> None:
        kwargs.setdefault("attempts", 0)
        super().__init__(message, **kwargs)


class InvalidCvmIdError(PhalaError, ValueError):
    """An identifier that can never be requested: nothing was sent for it.

    Attributes:
        value: exactly what was passed, whatever its type.
        reason: what is wrong with it.
    """

    def __init__(self, value: object, reason: str) -> None:
        shown = value if isinstance(value, (str, int)) and not isinstance(value, bool) else None
        super().__init__(f"invalid CVM id {describe(value)}: {reason}", cvm_id=shown, attempts=0)
        self.value = value
        self.reason = reason


class StatusTimeoutError(PhalaError, TimeoutError):
    """``wait_for_status`` ran out of time before the CVM reached the status.

    Attributes:
        last_status: the status last seen, or None when no poll succeeded.
        waited: seconds waited.
        wanted: the statuses waited for.
    """

    def __init__(
        self,
        message: str,
        *,
        cvm_id: str | int,
        last_status: str | None,
        waited: float,
        wanted: frozenset[str],
    ) -> None:
        super().__init__(message, cvm_id=cvm_id, attempts=0)
        self.last_status = last_status
        self.waited = waited
        self.wanted = wanted


class StatusFailedError(PhalaError):
    """``wait_for_status`` saw the CVM reach a status of ``fail_on`` (``"error"``...), so the
    status waited for will not come by itself.

    Attributes:
        status: the failure status reached.
        waited: seconds waited until then.
        wanted: the statuses waited for.
    """

    def __init__(
        self,
        message: str,
        *,
        cvm_id: str | int,
        status: str,
        waited: float,
        wanted: frozenset[str],
    ) -> None:
        super().__init__(message, cvm_id=cvm_id, attempts=0)
        self.status = status
        self.waited = waited
        self.wanted = wanted


class APIConnectionError(PhalaError):
    """The request did not get a complete answer: refused, reset, a name that did not resolve,
    or a body cut short. The message names the host and port and says why.

    Attributes:
        no_answer: nothing came back at all: the connection could not be made, was reset or
            closed before any answer, or the attempt timed out (as opposed to a body cut short
            or an answer that was not HTTP).
    """

    no_answer: bool = False


class APITimeoutError(APIConnectionError):
    """One attempt took longer than the client's ``timeout``."""


class APIProxyError(APIConnectionError):
    """The proxy answered the request for a tunnel to the API with a status other than 200.

    A refusal (403, 407...) is final and ends a sweep at once: every request goes through the
    same proxy. A proxy's 502, 503 or 504 (the API unreachable from it) is retried.

    Attributes:
        status_code: the proxy's HTTP status.
        proxy: the proxy's URL, without its credentials.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        proxy: str,
        cvm_id: str | int | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message, cvm_id=cvm_id, attempts=attempts)
        self.status_code = status_code
        self.proxy = proxy


class APITLSError(APIConnectionError):
    """The TLS connection could not be set up (the certificate was not trusted, names another
    host, or the handshake failed). Never retried: asking again would fail the same way. The
    message carries the reason OpenSSL gave and the fix."""


def with_tls_hint(reason: str) -> str:
    """A TLS handshake failure's ``reason`` with its likely cause when OpenSSL's words do not say
    it: ``wrong version number`` is most often an https URL to a server that speaks plain http."""
    if "wrong version number" in reason.lower():
        return (
            f"{reason} (the server likely speaks plain http, not https: check the scheme of the "
            f"base URL)"
        )
    return reason


class APIUnreachableError(APIConnectionError):
    """No request got any HTTP answer from the API, and the first ids have used their attempts
    on connection errors or timeouts: the API is down or unreachable from here, so a sweep stops
    at once (as on a refused credential) instead of failing every id one by one.

    Raised only while the API has never answered in this client's life; an API that answered
    before and then goes away is retried as usual.

    Attributes:
        host: the API host that could not be reached.
        port: its port.
        reason: the last transport error, in words.
    """

    def __init__(
        self,
        message: str,
        *,
        host: str,
        port: int | None,
        reason: str,
        cvm_id: str | int | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message, cvm_id=cvm_id, attempts=attempts)
        self.host = host
        self.port = port
        self.reason = reason


class APIStatusError(PhalaError):
    """The server answered with a status that is not 2xx.

    Attributes:
        status_code: the HTTP status.
        request_id: the server's ``X-Request-ID``, to quote when asking Phala for help.
        detail: the server's explanation, from either error body form, or None.
        error_code: the structured error code (``ERR-03-001``...) when the body had one.
        retry_after: seconds the server asked to wait (``Retry-After``), or None.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        cvm_id: str | int | None = None,
        request_id: str | None = None,
        detail: str | None = None,
        error_code: str | None = None,
        retry_after: float | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message, cvm_id=cvm_id, attempts=attempts)
        self.status_code = status_code
        self.request_id = request_id
        self.detail = detail
        self.error_code = error_code
        self.retry_after = retry_after


class BadRequestError(APIStatusError):
    """400: the server rejected the request."""


class AuthenticationError(APIStatusError):
    """401: the API key or token is missing, wrong or expired."""


class PermissionDeniedError(APIStatusError):
    """403: the CVM exists but is not in the credential's workspace."""


class NotFoundError(APIStatusError):
    """404: no CVM has this id."""


class UnprocessableEntityError(APIStatusError):
    """422: the server could not read the id or a parameter."""


class RateLimitError(APIStatusError):
    """429: too many requests; ``retry_after`` says how long the server asked to wait."""


class InternalServerError(APIStatusError):
    """5xx: the server or a proxy in front of it failed."""


class ResponseError(PhalaError):
    """An answer arrived but cannot be used (most often a 2xx body); asking again would not
    help, so it is never retried."""


class DecodeError(ResponseError):
    """The body is not JSON or not the documented shape.

    Attributes:
        path: the JSON path of the offending value as msgspec reported it (``$.teepod.id``), or None
            when the body is not JSON at all.
    """

    def __init__(self, message: str, *, cvm_id: str | int | None, path: str | None = None) -> None:
        super().__init__(message, cvm_id=cvm_id)
        self.path = path


class ResponseTooLargeError(ResponseError):
    """The body is larger than the client's ``max_response_bytes`` (it was not buffered), or the
    status line or a header is longer than aiohttp reads (8190 bytes), or there are too many.

    Attributes:
        limit: the cap that was passed, in bytes (the body cap, or aiohttp's line limit).
    """

    def __init__(self, message: str, *, cvm_id: str | int | None, limit: int) -> None:
        super().__init__(message, cvm_id=cvm_id)
        self.limit = limit


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}

_DETAIL_LIMIT = 300


class _ErrorBody(msgspec.Struct):
    """Both error body forms: ``{"detail": ...}`` and ``{"error_code", "message", ...}``."""

    detail: Any = None
    message: Any = None
    error_code: Any = None


_error_body_decoder = msgspec.json.Decoder(_ErrorBody)


def parse_error_body(body: bytes) -> tuple[str | None, str | None]:
    """Return ``(detail, error_code)`` from an error body of either documented form.

    A 422 body's list of ``{"loc", "msg"}`` entries becomes ``"path.cvm_id: msg"`` items joined by
    ``"; "``. A body that is not JSON (a proxy's HTML page) gives ``(None, None)``.
    """
    try:
        parsed = _error_body_decoder.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None, None
    detail = parsed.message if parsed.message is not None else parsed.detail
    if isinstance(detail, list):
        detail = "; ".join(_describe_validation_item(item) for item in detail)
    elif detail is not None and not isinstance(detail, str):
        detail = msgspec.json.encode(detail).decode()
    if detail is not None and len(detail) > _DETAIL_LIMIT:
        detail = detail[:_DETAIL_LIMIT] + "..."
    code = parsed.error_code if isinstance(parsed.error_code, str) else None
    return detail, code


def _describe_validation_item(item: object) -> str:
    if isinstance(item, dict):
        loc = item.get("loc")
        where = ".".join(str(part) for part in loc) if isinstance(loc, list) else None
        msg = str(item.get("msg", item))
        return f"{where}: {msg}" if where else msg
    return str(item)


def error_for_status(
    status: int,
    body: bytes,
    headers: Mapping[str, str],
    *,
    cvm_id: str | int | None,
    retry_after: float | None = None,
) -> APIStatusError:
    """Build the exception a non-2xx answer means; pure, so it is tested without a server.

    Args:
        status: the HTTP status code.
        body: the (possibly empty) response body.
        headers: the response headers; ``X-Request-ID`` and, for a 3xx, ``Location`` are read.
        cvm_id: the id the request was for.
        retry_after: seconds from a ``Retry-After`` header, already parsed by the caller.
    """
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = InternalServerError if status >= 500 else APIStatusError
    detail, error_code = parse_error_body(body) if body else (None, None)
    if 300 <= status < 400:
        detail = "redirects are not followed, so credentials never reach another origin"
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown Status"
    request_id = headers.get("X-Request-ID")
    message = f"{subject(cvm_id)}: HTTP {status} {phrase}"
    if detail:
        message += f": {detail}"
    if request_id:
        message += f" [request id {request_id}]"
    return cls(
        message,
        status_code=status,
        cvm_id=cvm_id,
        request_id=request_id,
        detail=detail,
        error_code=error_code,
        retry_after=retry_after,
    )

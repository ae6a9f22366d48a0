"""One HTTP exchange: send a GET, read a bounded body, and turn the answer into a value or a
:class:`PhalaError`. Every aiohttp failure is translated here, and nowhere else."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol, TypeVar

import aiohttp
from aiohttp.http_exceptions import ContentEncodingError
from yarl import URL

from ._errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    DecodeError,
    PhalaError,
    ResponseTooLargeError,
    error_for_status,
    subject,
)
from ._retry import parse_retry_after

__all__ = ["Decode", "Exchange"]

_T_co = TypeVar("_T_co", covariant=True)
_READ_CHUNK = 64 * 1024


class Decode(Protocol[_T_co]):
    """Turns a complete 2xx body into a value, or raises :class:`DecodeError`."""

    def __call__(self, body: bytes, *, cvm_id: str | int | None) -> _T_co: ...


class Exchange:
    """Sends GETs for one client: its base URL, headers, timeout and body cap, fixed once."""

    __slots__ = ("_base_url", "_headers", "_max_bytes", "_timeout", "_timeout_seconds")

    def __init__(
        self, *, base_url: str, headers: dict[str, str], timeout: float, max_bytes: int
    ) -> None:
        self._base_url = base_url
        self._headers = headers
        self._timeout_seconds = timeout
        # No aiohttp timer at all: the attempt is bounded by asyncio.timeout in get().
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=None, sock_read=None)
        self._max_bytes = max_bytes

    def session_defaults(self) -> dict[str, Any]:
        """Keyword arguments for a ``ClientSession`` of our own that sends what we send."""
        return {"headers": self._headers, "timeout": self._timeout}

    async def get(
        self,
        session: aiohttp.ClientSession,
        path: str,
        cvm_id: str | int | None,
        decode: Decode[_T_co],
        has_defaults: bool,
    ) -> _T_co:
        """GET ``base_url + path`` and decode a 2xx answer.

        ``has_defaults`` says that ``session`` was made with :meth:`session_defaults`.

        Raises:
            APIStatusError: a non-2xx answer (redirects are never followed).
            APITimeoutError: the attempt took longer than the timeout.
            APIConnectionError: refused, reset, or the body was cut short.
            ResponseError: a 2xx answer too large, not JSON, or not the expected shape.
        """
        hidden: PhalaError | None = None
        try:
            # Our own timer rather than aiohttp's: aiohttp's can turn a cancellation that lands
            # as the timer fires into a TimeoutError (aio-libs/aiohttp#5979), which would be
            # retried instead of stopping the sweep.
            with _AttemptTimer(self._timeout_seconds):
                # Paths are built from validated segments and integers, so need no quoting.
                url = URL(self._base_url + path, encoded=True)
                if has_defaults:
                    request = session.get(url, allow_redirects=False)
                else:
                    request = session.get(
                        url, headers=self._headers, allow_redirects=False, timeout=self._timeout
                    )
                async with request as response:
                    length = response.content_length
                    if (
                        length is not None
                        and length <= self._max_bytes
                        and "Content-Encoding" not in response.headers
                    ):
                        body = await response.read()
                    else:
                        body = await self._read_capped(response, cvm_id)
                    if 200 <= response.status < 300:
                        _check_json(response, cvm_id)
                        return decode(body, cvm_id=cvm_id)
                    raise _status_error(response, body, cvm_id)
        except PhalaError:
            raise
        except TimeoutError as exc:
            raise APITimeoutError(
                f"{subject(cvm_id)}: no complete answer within {self._timeout_seconds}s",
                cvm_id=cvm_id,
            ) from exc
        except aiohttp.ClientPayloadError as exc:
            if isinstance(exc.__cause__, ContentEncodingError):
                raise DecodeError(
                    f"{subject(cvm_id)}: the compressed response body did not decompress",
                    cvm_id=cvm_id,
                ) from exc
            raise APIConnectionError(
                f"{subject(cvm_id)}: the response body was cut short", cvm_id=cvm_id
            ) from exc
        except aiohttp.ClientResponseError as exc:
            # Its request_info holds the request headers, credential included: build the error
            # here and raise it outside the handler, so nothing links back to this exception.
            hidden = APIConnectionError(
                f"{subject(cvm_id)}: the server's answer was not valid HTTP ({exc.message})",
                cvm_id=cvm_id,
            )
        except (aiohttp.ClientError, OSError) as exc:
            raise APIConnectionError(
                f"{subject(cvm_id)}: connection failed ({type(exc).__name__})", cvm_id=cvm_id
            ) from exc
        raise hidden

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


class _AttemptTimer:
    """Bounds one attempt: ``asyncio.timeout``'s rule (a cancellation from outside always wins
    over the timeout), in a plain ``with`` and one timer handle, since it runs per request and
    ``asyncio.timeout`` costs about 4 us there."""

    __slots__ = ("_cancelling", "_expired", "_handle", "_task")

    def __init__(self, seconds: float) -> None:
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - the client only runs inside tasks
            raise RuntimeError("a request must run inside an asyncio task")
        self._task = task
        self._cancelling = task.cancelling()
        self._expired = False
        loop = task.get_loop()
        self._handle = loop.call_at(loop.time() + seconds, self._expire)

    def _expire(self) -> None:
        self._expired = True
        self._task.cancel()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: object,
    ) -> None:
        self._handle.cancel()
        if (
            self._expired
            and self._task.uncancel() <= self._cancelling
            and exc_type is asyncio.CancelledError
        ):
            raise TimeoutError from exc


def _status_error(
    response: aiohttp.ClientResponse, body: bytes, cvm_id: str | int | None
) -> APIStatusError:
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    return error_for_status(
        response.status, body, response.headers, cvm_id=cvm_id, retry_after=retry_after
    )


def _check_json(response: aiohttp.ClientResponse, cvm_id: str | int | None) -> None:
    content_type = response.headers.get("Content-Type", "")
    media = content_type.partition(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise DecodeError(
            f"{subject(cvm_id)}: expected a JSON body, got Content-Type {content_type[:60]!r}",
            cvm_id=cvm_id,
        )

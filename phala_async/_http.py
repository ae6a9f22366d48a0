"""Moving bytes: send one GET, read a bounded body, and translate every aiohttp failure.

What the answer means is decided elsewhere (:func:`phala_async._response.interpret`); this module
only talks to aiohttp, and is the one place its exceptions become :class:`PhalaError`.
"""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

import aiohttp
from aiohttp.http_exceptions import ContentEncodingError
from multidict import CIMultiDictProxy
from yarl import URL

from ._errors import (
    APIConnectionError,
    APITimeoutError,
    DecodeError,
    PhalaError,
    ResponseTooLargeError,
    subject,
)

__all__ = ["Answer", "Exchange"]

_READ_CHUNK = 64 * 1024


class Answer(NamedTuple):
    """A complete HTTP answer: status, headers and the whole (decompressed) body."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


class Exchange:
    """Sends GETs for one client: its base URL, headers, timeout and body cap, fixed once."""

    __slots__ = ("_base_url", "_headers", "_max_bytes", "_timeout", "_timeout_seconds")

    def __init__(
        self, *, base_url: str, headers: dict[str, str], timeout: float, max_bytes: int
    ) -> None:
        self._base_url = base_url
        self._headers = headers
        self._timeout_seconds = timeout
        # No aiohttp timer at all: each attempt is bounded by our own _AttemptTimer in get().
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=None, sock_read=None)
        self._max_bytes = max_bytes

    def with_timeout(self, timeout: float) -> Exchange:
        """The same exchange with another per-attempt timeout."""
        return Exchange(
            base_url=self._base_url,
            headers=self._headers,
            timeout=timeout,
            max_bytes=self._max_bytes,
        )

    def session_defaults(self) -> dict[str, Any]:
        """Keyword arguments for a ``ClientSession`` of our own that sends what we send."""
        return {"headers": self._headers, "timeout": self._timeout}

    async def get(
        self,
        session: aiohttp.ClientSession,
        path: str,
        cvm_id: str | int | None,
        has_defaults: bool,
    ) -> Answer:
        """GET ``base_url + path`` and read the whole answer, whatever its status.

        ``has_defaults`` says that ``session`` was made with :meth:`session_defaults`.

        Raises:
            APITimeoutError: the attempt took longer than the timeout.
            APIConnectionError: refused, reset, or the body was cut short.
            ResponseTooLargeError: the body is larger than the cap; it was not buffered.
            DecodeError: a compressed body that does not decompress.
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
                    return Answer(response.status, response.headers, body)
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

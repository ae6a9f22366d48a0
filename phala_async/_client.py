"""``PhalaClient``: one session, one pool, typed answers, retries on transient failures."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self, TypeVar

import aiohttp
from aiohttp.http_exceptions import ContentEncodingError
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt
from tenacity.stop import stop_base
from yarl import URL

from ._config import check_positive, resolve_base_url, resolve_credential
from ._errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    ClientClosedError,
    ConfigurationError,
    DecodeError,
    PhalaError,
    ResponseTooLargeError,
    error_for_status,
)
from ._ids import normalize_cvm_id
from ._models import CvmDetail, HostedCvm, decode_cvm, decode_page
from ._retry import (
    RetryPolicy,
    is_retryable,
    parse_retry_after,
    retry_after_too_long,
    wait_before_retry,
)
from ._throttle import PauseGate
from ._version import __version__

if TYPE_CHECKING:
    from tenacity import RetryCallState

    from ._bulk import CvmResult, CvmStream

__all__ = ["API_VERSION", "ClientStats", "PhalaClient"]

_T = TypeVar("_T")
_T_co = TypeVar("_T_co", covariant=True)


class _Decode(Protocol[_T_co]):
    def __call__(self, body: bytes, *, cvm_id: str | int | None) -> _T_co: ...


logger = logging.getLogger("phala_async")

#: The ``X-Phala-Version`` every request pins: the one whose answer is the documented shape.
API_VERSION = "2025-10-28"
DEFAULT_MAX_RESPONSE_BYTES = 1024 * 1024
_READ_CHUNK = 64 * 1024


@dataclass
class ClientStats:
    """Counters over the life of a client.

    Attributes:
        requests: HTTP requests sent, retries included.
        retries: requests that were retries of an earlier failed one.
        rate_limited: answers with status 429.
        ok: calls (one per id) that returned a CVM.
        failed: calls that raised, by exception class name.
    """

    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    ok: int = 0
    failed: Counter[str] = field(default_factory=Counter)


class PhalaClient:
    """Async client for the Phala Cloud API.

    Use it as an async context manager, or call :meth:`aclose` when done::

        async with PhalaClient(api_key="phak_...") as client:
            cvm = await client.get_cvm("app_8d1f...")
            async with client.stream_cvms(ids) as results:
                async for result in results:
                    print(result.cvm_id, result.ok)

    Args:
        api_key: a dashboard API key, sent as ``X-API-Key``. Defaults to ``$PHALA_CLOUD_API_KEY``.
        token: an OAuth access token, sent as ``Authorization: Bearer``. Give it or ``api_key``.
        base_url: the API prefix; defaults to ``$PHALA_CLOUD_API_PREFIX``, then
            ``https://cloud-api.phala.com/api/v1``.
        timeout: seconds one attempt may take, from connecting to the last byte. Retries each get
            their own ``timeout``.
        max_attempts: requests made for one id at most, the first included (1 disables retries).
        concurrency: requests in flight at most, across every call on this client; also the size
            of the connection pool.
        session: an ``aiohttp.ClientSession`` to use instead of the client's own. It is not closed
            by :meth:`aclose`; its own pool limit then also applies.
        backoff_initial: seconds of the first retry's backoff; it doubles each retry.
        backoff_max: the longest backoff, in seconds.
        retry_after_cap: the longest ``Retry-After`` honoured; a longer one raises at once.
        max_response_bytes: bodies larger than this are refused unread
            (:class:`ResponseTooLargeError`).
        allow_insecure_http: allow a plain ``http://`` base URL to a host other than loopback.

    Raises:
        ConfigurationError: an argument is missing or out of range; the message says what to pass.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        token: str | None = None,
        base_url: str | None = None,
        timeout: float = 30.0,
        max_attempts: int = 4,
        concurrency: int = 16,
        session: aiohttp.ClientSession | None = None,
        backoff_initial: float = 0.5,
        backoff_max: float = 8.0,
        retry_after_cap: float = 60.0,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        allow_insecure_http: bool = False,
    ) -> None:
        check_positive("timeout", timeout)
        check_positive("concurrency", concurrency, integer=True)
        check_positive("max_response_bytes", max_response_bytes, integer=True)
        if session is not None and not isinstance(session, aiohttp.ClientSession):
            raise ConfigurationError(
                f"session must be an aiohttp.ClientSession, not {type(session).__name__}"
            )
        self._credential = resolve_credential(api_key, token)
        self._base_url = resolve_base_url(base_url, allow_insecure_http=allow_insecure_http)
        self._policy = RetryPolicy(
            max_attempts=max_attempts,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            retry_after_cap=retry_after_cap,
        )
        self._timeout = float(timeout)
        self._concurrency = concurrency
        self._max_response_bytes = max_response_bytes
        self._headers = {
            self._credential.header: self._credential.value,
            "X-Phala-Version": API_VERSION,
            "User-Agent": f"phala-async/{__version__}",
            "Accept": "application/json",
        }
        self._aiohttp_timeout = aiohttp.ClientTimeout(total=self._timeout)
        self._session = session
        self._owns_session = session is None
        self._limiter: asyncio.Semaphore | None = None
        self._gate = PauseGate()
        self._streams: weakref.WeakSet[CvmStream] = weakref.WeakSet()
        self._closed = False
        self.stats = ClientStats()

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._ensure_session()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop every sweep still running on this client, then close its own session.

        A sweep that is stopped this way ends with :class:`ClientClosedError`. Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        for stream in list(self._streams):
            await stream._abort(ClientClosedError("the PhalaClient was closed during the sweep"))
        if self._owns_session and self._session is not None:
            await self._session.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` has been called."""
        return self._closed

    def __repr__(self) -> str:
        return (
            f"<PhalaClient base_url={self._base_url!r} credential={self._credential.kind} "
            f"concurrency={self._concurrency} max_attempts={self._policy.max_attempts}"
            f"{' closed' if self._closed else ''}>"
        )

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise ClientClosedError()
        if self._limiter is None:
            self._limiter = asyncio.Semaphore(self._concurrency)
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._concurrency, limit_per_host=self._concurrency
            )
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    # -- public calls ------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The API prefix requests go to."""
        return self._base_url

    @property
    def concurrency(self) -> int:
        """Requests in flight at most on this client."""
        return self._concurrency

    async def get_cvm(self, cvm_id: str | int) -> CvmDetail:
        """Fetch the details of one CVM, retrying transient failures.

        Args:
            cvm_id: the integer id, name, ``app_<hex>`` (or bare 40-hex app id), VM UUID or
                instance id.

        Raises:
            InvalidCvmIdError: the id can never be valid; no request was made.
            APIStatusError: the server refused (a subclass per status); after retries for 429/5xx.
            APIConnectionError: no complete answer arrived after every attempt.
            ResponseError: a 2xx body that is too large or does not decode.
            ClientClosedError: the client is closed.
        """
        segment = normalize_cvm_id(cvm_id)
        cvm, _ = await self._fetch(segment, cvm_id)
        return cvm

    def stream_cvms(
        self,
        ids: Iterable[str | int] | AsyncIterable[str | int],
        *,
        concurrency: int | None = None,
    ) -> CvmStream:
        """Fetch many CVMs, yielding a :class:`CvmResult` per distinct id as each completes.

        ``ids`` is read lazily, so a generator of millions is fine; an id given twice (in any
        form that normalises the same) is fetched once. Stop early with ``aclose()`` or by
        leaving ``async with``; every request of the sweep is then cancelled.

        Args:
            ids: any iterable or async iterable of ids.
            concurrency: requests in flight for this sweep; defaults to, and cannot exceed, the
                client's ``concurrency``.
        """
        from ._bulk import CvmStream

        return CvmStream(self, ids, concurrency=self._sweep_concurrency(concurrency))

    async def get_cvms(
        self,
        ids: Iterable[str | int] | AsyncIterable[str | int],
        *,
        concurrency: int | None = None,
    ) -> list[CvmResult]:
        """Fetch many CVMs and return one :class:`CvmResult` per given id, in the given order.

        Duplicates are fetched once and share that result. Never raises for one id's failure;
        each result's ``error`` says what went wrong.
        """
        from ._bulk import gather_in_order

        return await gather_in_order(self, ids, concurrency=self._sweep_concurrency(concurrency))

    async def list_cvms(self, *, page_size: int = 100) -> AsyncIterator[HostedCvm]:
        """Every CVM in the workspace, page by page (``GET /cvms/paginated``), lazily.

        Each page is fetched with the same retries and errors as :meth:`get_cvm` (errors carry
        ``cvm_id=None``). Feed it straight into a sweep, without collecting the ids first::

            ids = (entry.cvm_id async for entry in client.list_cvms())
            async with client.stream_cvms(ids) as results: ...

        Args:
            page_size: entries per page, 1 to 100 (the API's maximum).
        """
        if (
            isinstance(page_size, bool)
            or not isinstance(page_size, int)
            or not 1 <= page_size <= 100
        ):
            raise ConfigurationError(f"page_size must be an int from 1 to 100, not {page_size!r}")
        page_number = 1
        while True:
            page, _ = await self._call(
                f"/cvms/paginated?page={page_number}&page_size={page_size}", None, decode_page
            )
            for entry in page.items:
                yield entry
            if not page.items or page_number >= page.pages:
                return
            page_number += 1

    def _sweep_concurrency(self, concurrency: int | None) -> int:
        if concurrency is None:
            return self._concurrency
        check_positive("concurrency", concurrency, integer=True)
        if concurrency > self._concurrency:
            raise ConfigurationError(
                f"concurrency={concurrency} is above the client's concurrency "
                f"({self._concurrency}); raise PhalaClient(concurrency=...) instead"
            )
        return concurrency

    # -- one call, with retries --------------------------------------------------------------

    async def _fetch(self, segment: str, cvm_id: str | int) -> tuple[CvmDetail, int]:
        """Fetch one normalised id; return the CVM and how many attempts it took."""
        return await self._call(f"/cvms/{segment}", cvm_id, decode_cvm)

    async def _call(
        self, path: str, cvm_id: str | int | None, decode: _Decode[_T]
    ) -> tuple[_T, int]:
        """GET ``path`` (already safe), decode the answer, and retry transient failures.

        The first attempt runs bare; only a retryable failure builds the tenacity loop, which is
        seeded with that failure so that backoff, logging and stopping live in one place, and a
        request that succeeds at once never pays for them.
        """
        try:
            value = await self._attempt(path, cvm_id, decode)
        except PhalaError as exc:
            if not (is_retryable(exc) and self._policy.max_attempts > 1):
                self._count_failure(exc)
                raise
            return await self._retry(path, cvm_id, decode, exc)
        self.stats.ok += 1
        return value, 1

    async def _retry(
        self, path: str, cvm_id: str | int | None, decode: _Decode[_T], first_error: PhalaError
    ) -> tuple[_T, int]:
        pending: PhalaError | None = first_error
        attempt = 0
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._policy.max_attempts)
            | _StopWhen(self._retry_after_too_long),
            wait=self._wait,
            retry=retry_if_exception(is_retryable),
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            async for attempt_manager in retrying:
                with attempt_manager:
                    attempt = attempt_manager.retry_state.attempt_number
                    if pending is not None:
                        error, pending = pending, None
                        raise error
                    self.stats.retries += 1
                    value = await self._attempt(path, cvm_id, decode)
                    self.stats.ok += 1
                    return value, attempt
        except PhalaError as exc:
            exc.attempts = attempt
            self._count_failure(exc)
            raise
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover

    def _count_failure(self, error: PhalaError) -> None:
        self.stats.failed[type(error).__name__] += 1

    def _retry_after_too_long(self, state: RetryCallState) -> bool:
        error = state.outcome.exception() if state.outcome else None
        return isinstance(error, PhalaError) and retry_after_too_long(error, self._policy)

    def _wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if not isinstance(error, PhalaError):  # pragma: no cover - only PhalaError is retried
            return 0.0
        return wait_before_retry(error, state.attempt_number, self._policy)

    def _log_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        if isinstance(error, PhalaError):
            logger.info(
                "retrying %s: attempt %d of %d failed (%s: %s); waiting %.3fs",
                _subject(error.cvm_id),
                state.attempt_number,
                self._policy.max_attempts,
                type(error).__name__,
                error.message,
                wait,
            )

    # -- one attempt -------------------------------------------------------------------------

    async def _attempt(self, path: str, cvm_id: str | int | None, decode: _Decode[_T]) -> _T:
        """Send one request and turn its answer into a value or a :class:`PhalaError`."""
        session = self._ensure_session()
        await self._gate.wait()
        async with self._limiter:  # type: ignore[union-attr]  # set by _ensure_session
            self.stats.requests += 1
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("GET %s (%s)", path, _subject(cvm_id))
            try:
                # Paths are built from validated segments and integers, so need no quoting.
                url = URL(self._base_url + path, encoded=True)
                async with session.get(
                    url,
                    headers=self._headers,
                    allow_redirects=False,
                    timeout=self._aiohttp_timeout,
                ) as response:
                    body = await self._read_body(response, cvm_id)
                    status = response.status
                    if 200 <= status < 300:
                        _check_json(response, cvm_id)
                        return decode(body, cvm_id=cvm_id)
                    error = self._status_error(response, body, cvm_id)
            except PhalaError:
                raise
            except TimeoutError as exc:
                raise APITimeoutError(
                    f"{_subject(cvm_id)}: no complete answer within {self._timeout}s",
                    cvm_id=cvm_id,
                ) from exc
            except aiohttp.ClientPayloadError as exc:
                if isinstance(exc.__cause__, ContentEncodingError):
                    raise DecodeError(
                        f"{_subject(cvm_id)}: the compressed response body did not decompress",
                        cvm_id=cvm_id,
                    ) from exc
                raise APIConnectionError(
                    f"{_subject(cvm_id)}: the response body was cut short", cvm_id=cvm_id
                ) from exc
            except (aiohttp.ClientError, OSError) as exc:
                raise APIConnectionError(
                    f"{_subject(cvm_id)}: connection failed ({type(exc).__name__})", cvm_id=cvm_id
                ) from exc
        raise error

    def _status_error(
        self, response: aiohttp.ClientResponse, body: bytes, cvm_id: str | int | None
    ) -> APIStatusError:
        status = response.status
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if status == 429:
            self.stats.rate_limited += 1
        error = error_for_status(
            status, body, response.headers, cvm_id=cvm_id, retry_after=retry_after
        )
        # One rate-limited answer pauses every worker of this client, not only this one.
        if (
            retry_after is not None
            and status in (429, 503)
            and retry_after <= self._policy.retry_after_cap
        ):
            self._gate.pause_for(retry_after)
        return error

    async def _read_body(self, response: aiohttp.ClientResponse, cvm_id: str | int | None) -> bytes:
        """Read the body, refusing one over ``max_response_bytes`` without buffering it."""
        limit = self._max_response_bytes
        length = response.content_length
        if length is not None and length > limit:
            raise self._too_large(cvm_id, f"declares {length} bytes, more")
        if length is not None and "Content-Encoding" not in response.headers:
            return await response.read()
        # Unknown length or compressed: count the decoded bytes as they arrive.
        chunks: list[bytes] = []
        size = 0
        while chunk := await response.content.read(_READ_CHUNK):
            size += len(chunk)
            if size > limit:
                raise self._too_large(cvm_id, "is longer")
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, cvm_id: str | int | None, what: str) -> ResponseTooLargeError:
        limit = self._max_response_bytes
        return ResponseTooLargeError(
            f"{_subject(cvm_id)}: the response body {what} than the {limit}-byte cap "
            f"(max_response_bytes)",
            cvm_id=cvm_id,
            limit=limit,
        )


def _subject(cvm_id: str | int | None) -> str:
    return "the CVM list" if cvm_id is None else f"CVM {cvm_id!r}"


def _check_json(response: aiohttp.ClientResponse, cvm_id: str | int | None) -> None:
    content_type = response.headers.get("Content-Type", "")
    if not _is_json(content_type):
        raise DecodeError(
            f"{_subject(cvm_id)}: expected a JSON body, got Content-Type {content_type[:60]!r}",
            cvm_id=cvm_id,
        )


def _is_json(content_type: str) -> bool:
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


class _StopWhen(stop_base):
    """A tenacity stop condition from a plain predicate (tenacity types ``|`` on stop_base only)."""

    def __init__(self, predicate: Callable[[RetryCallState], bool]) -> None:
        self._predicate = predicate

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self._predicate(retry_state)

"""``PhalaClient``: one session, one pool, typed answers, retries on transient failures."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import Counter
from collections.abc import AsyncIterable, Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Self, TypeVar

import aiohttp
from aiolimiter import AsyncLimiter
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt
from tenacity.stop import stop_base

from ._config import check_positive, resolve_base_url, resolve_credential
from ._errors import (
    APIConnectionError,
    APIStatusError,
    ClientClosedError,
    ConfigurationError,
    PhalaError,
    subject,
)
from ._http import Decode, Exchange
from ._ids import normalize_cvm_id
from ._listing import CvmListing
from ._models import CvmDetail, CvmPage, decode_cvm, decode_page
from ._retry import (
    RETRYABLE_STATUSES,
    RetryPolicy,
    is_retryable,
    retry_after_too_long,
    wait_before_retry,
)
from ._throttle import AdaptiveRate, PauseGate, RetryBudget
from ._version import __version__

if TYPE_CHECKING:
    from tenacity import RetryCallState

    from ._bulk import CvmResult, CvmStream

__all__ = ["API_VERSION", "ClientStats", "PhalaClient"]

logger = logging.getLogger("phala_async")

#: The ``X-Phala-Version`` every request pins: the one whose answer is the documented shape.
API_VERSION = "2025-10-28"
DEFAULT_MAX_RESPONSE_BYTES = 1024 * 1024

_T = TypeVar("_T")


@dataclass
class ClientStats:
    """Counters over the life of a client (read them; the client updates them).

    Attributes:
        requests: HTTP requests sent, retries included.
        retries: requests that were retries of an earlier failed one.
        rate_limited: answers with status 429.
        throttled: answers that slowed the client down (429, or 503 with ``Retry-After``).
        retries_denied: retries not sent because most recent requests were failing.
        ok: calls (one per id or page) that returned a value.
        failed: calls that raised, by exception class name.
        in_flight: requests on the wire right now.
        send_rate: the adaptive send rate in requests per second, None while unpaced.
    """

    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    throttled: int = 0
    retries_denied: int = 0
    ok: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    send_rate: float | None = None


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
        adaptive: find an unpublished rate limit by itself: after a throttled answer (429, or
            503 with ``Retry-After``) pace sends just under what the server let through, then
            feel back up. ``concurrency`` stays the ceiling. On by default.
        rate_limit: a hard cap in requests per second, for accounts that know their limit.
        retry_budget: stop retrying while most recent requests failed (of the last 100, or 4 x
            ``concurrency`` if more), so a down API sees little more than one request per id.
            On by default.

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
        adaptive: bool = True,
        rate_limit: float | None = None,
        retry_budget: bool = True,
    ) -> None:
        check_positive("timeout", timeout)
        check_positive("concurrency", concurrency, integer=True)
        check_positive("max_response_bytes", max_response_bytes, integer=True)
        if rate_limit is not None:
            check_positive("rate_limit", rate_limit)
        if session is not None and not isinstance(session, aiohttp.ClientSession):
            raise ConfigurationError(
                f"session must be an aiohttp.ClientSession, not {type(session).__name__}"
            )
        credential = resolve_credential(api_key, token)
        self._credential_kind = credential.kind
        self._base_url = resolve_base_url(base_url, allow_insecure_http=allow_insecure_http)
        self._policy = RetryPolicy(
            max_attempts=max_attempts,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            retry_after_cap=retry_after_cap,
        )
        self._concurrency = concurrency
        self._exchange = Exchange(
            base_url=self._base_url,
            headers={
                credential.header: credential.value,
                "X-Phala-Version": API_VERSION,
                "User-Agent": f"phala-async/{__version__}",
                "Accept": "application/json",
            },
            timeout=float(timeout),
            max_bytes=max_response_bytes,
        )
        self._session = session
        self._owns_session = session is None
        self._limiter: asyncio.Semaphore | None = None
        self._gate = PauseGate()
        self._pacer = AdaptiveRate() if adaptive else None
        self._rate_limit = rate_limit
        self._hard_limiter: AsyncLimiter | None = None
        # The window spans a few rounds of requests in flight, so that one stall (a long GC
        # pause, a network blip) does not look like a down API.
        self._budget = RetryBudget(window=max(100, 4 * concurrency)) if retry_budget else None
        self._streams: weakref.WeakSet[CvmStream] = weakref.WeakSet()
        self._closed = False
        self._stats = ClientStats()

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

        A sweep stopped this way ends with :class:`ClientClosedError`. Safe to call twice.
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
            f"<PhalaClient base_url={self._base_url!r} credential={self._credential_kind} "
            f"concurrency={self._concurrency} max_attempts={self._policy.max_attempts}"
            f"{' closed' if self._closed else ''}>"
        )

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise ClientClosedError()
        if self._limiter is None:
            # Made here, inside the running loop, not in __init__.
            self._limiter = asyncio.Semaphore(self._concurrency)
            if self._rate_limit is not None:
                self._hard_limiter = AsyncLimiter(self._rate_limit, 1.0)
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._concurrency, limit_per_host=self._concurrency
            )
            # Our own session carries the headers and timeout as defaults, which saves aiohttp
            # merging them into every request; an injected session gets them per request.
            self._session = aiohttp.ClientSession(
                connector=connector, **self._exchange.session_defaults()
            )
            # aiohttp silently resends an idempotent request once when a pooled connection
            # drops. Our retry policy owns retries: it counts them, backs off and respects the
            # retry budget, so turn that off on our own session (aiohttp's test client does too).
            if hasattr(self._session, "_retry_connection"):
                self._session._retry_connection = False
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

    @property
    def stats(self) -> ClientStats:
        """The client's counters, with ``send_rate`` as of now."""
        if self._pacer is not None:
            self._stats.send_rate = self._pacer.rate
        return self._stats

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
        cvm, _ = await self._call(f"/cvms/{segment}", cvm_id, decode_cvm)
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

    def list_cvms(self, *, page_size: int = 100) -> CvmListing:
        """Every CVM in the workspace, page by page (``GET /cvms/paginated``), lazily.

        Each page is fetched with the same retries and errors as :meth:`get_cvm` (errors carry
        ``cvm_id=None``). The listing's ``total`` is the workspace size once the first page
        arrived. Feed it straight into a sweep, without collecting the ids first::

            ids = (entry.cvm_id async for entry in client.list_cvms())
            async with client.stream_cvms(ids) as results: ...

        Args:
            page_size: entries per page, 1 to 100 (the API's maximum).

        Raises:
            ConfigurationError: ``page_size`` is out of range (at the call, before any request).
        """
        if (
            isinstance(page_size, bool)
            or not isinstance(page_size, int)
            or not 1 <= page_size <= 100
        ):
            raise ConfigurationError(f"page_size must be an int from 1 to 100, not {page_size!r}")

        async def fetch_page(page_number: int) -> CvmPage:
            page, _ = await self._call(
                f"/cvms/paginated?page={page_number}&page_size={page_size}", None, decode_page
            )
            return page

        return CvmListing(fetch_page)

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

    async def _call(
        self, path: str, cvm_id: str | int | None, decode: Decode[_T]
    ) -> tuple[_T, int]:
        """GET ``path`` (already safe), decode the answer, and retry transient failures.

        The first attempt runs bare; only a retryable failure builds the tenacity loop, which is
        seeded with that failure so that backoff, logging and stopping live in one place, and a
        request that succeeds at once never pays for them.
        """
        try:
            value = await self._attempt(path, cvm_id, decode)
        except PhalaError as exc:
            if self._policy.max_attempts == 1 or not self._should_retry(exc):
                self._stats.failed[type(exc).__name__] += 1
                raise
            return await self._retry(path, cvm_id, decode, exc)
        self._stats.ok += 1
        return value, 1

    async def _retry(
        self, path: str, cvm_id: str | int | None, decode: Decode[_T], first_error: PhalaError
    ) -> tuple[_T, int]:
        pending: PhalaError | None = first_error
        attempt = 0
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._policy.max_attempts)
            | _StopWhen(self._retry_after_too_long),
            wait=self._wait,
            retry=retry_if_exception(self._should_retry),
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
                    self._stats.retries += 1
                    value = await self._attempt(path, cvm_id, decode)
                    self._stats.ok += 1
                    return value, attempt
        except PhalaError as exc:
            exc.attempts = attempt
            self._stats.failed[type(exc).__name__] += 1
            raise
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover

    def _should_retry(self, error: BaseException) -> bool:
        if not is_retryable(error):
            return False
        if self._budget is not None and not self._budget.allows_retry():
            self._stats.retries_denied += 1
            return False
        return True

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
                subject(error.cvm_id),
                state.attempt_number,
                self._policy.max_attempts,
                type(error).__name__,
                error.message,
                wait,
            )

    # -- one attempt -------------------------------------------------------------------------

    async def _attempt(self, path: str, cvm_id: str | int | None, decode: Decode[_T]) -> _T:
        """Wait for the pacing in force, send one request, and learn from its answer."""
        if self._closed:
            raise ClientClosedError(cvm_id=cvm_id)
        session = self._session
        if session is None or self._limiter is None:
            session = self._ensure_session()
        pacer = self._pacer
        if pacer is not None and pacer.paced and (delay := pacer.delay()) > 0:
            await asyncio.sleep(delay)
        if self._hard_limiter is not None:
            await self._hard_limiter.acquire()
        stats = self._stats
        async with self._limiter:  # type: ignore[union-attr]  # set by _ensure_session
            # Last, so that nothing is sent during a pause, however long the waits above were.
            if self._gate.paused:
                await self._gate.wait()
            epoch = pacer.epoch if pacer is not None else 0
            stats.requests += 1
            stats.in_flight += 1
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("GET %s (%s)", path, subject(cvm_id))
            try:
                value = await self._exchange.get(session, path, cvm_id, decode, self._owns_session)
            except PhalaError as exc:
                self._learn_from_failure(exc, epoch)
                raise
            finally:
                stats.in_flight -= 1
        if pacer is not None:
            pacer.on_success()
        if self._budget is not None:
            self._budget.record(True)
        return value

    def _learn_from_failure(self, error: PhalaError, epoch: int) -> None:
        """Feed a failed attempt to the shared pause, the pacer and the retry budget."""
        if isinstance(error, APIStatusError):
            status, retry_after = error.status_code, error.retry_after
            if status == 429:
                self._stats.rate_limited += 1
            if status == 429 or (status == 503 and retry_after is not None):
                self._stats.throttled += 1
                # During a pause, an answer only echoes the throttle that started it.
                if self._pacer is not None and not self._gate.paused:
                    self._pacer.on_throttle(epoch, asked_to_wait=bool(retry_after))
                # One throttled answer pauses every worker of this client, not only this one.
                if retry_after is not None and retry_after <= self._policy.retry_after_cap:
                    self._gate.pause_for(retry_after)
                return  # pacing answers throttles; they say nothing of the API's health
            healthy = status not in RETRYABLE_STATUSES
        else:
            healthy = not isinstance(error, APIConnectionError)
        if self._budget is not None:
            self._budget.record(healthy)


class _StopWhen(stop_base):
    """A tenacity stop condition from a plain predicate (tenacity types ``|`` on stop_base only)."""

    def __init__(self, predicate: Callable[[RetryCallState], bool]) -> None:
        self._predicate = predicate

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self._predicate(retry_state)

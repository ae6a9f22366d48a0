"""``PhalaClient``: one session, one pool, typed answers, retries on transient failures."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Sequence
from ssl import SSLContext
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Literal, Self, TypeVar, cast, overload

import aiohttp

from ._bulk import Abort, CvmStream, Fetched, Retries, SweepResult, gather_in_order
from ._config import (
    check_api_version,
    check_positive,
    check_trace_configs,
    resolve_base_url,
    resolve_credential,
    resolve_proxy,
    resolve_tls,
)
from ._errors import (
    APITimeoutError,
    ClientClosedError,
    ConfigurationError,
    EventLoopError,
    PhalaError,
    subject,
)
from ._http import Exchange
from ._ids import normalize_cvm_id
from ._listing import CvmListing
from ._models import CvmDetail, CvmPage, HostedCvm
from ._models_v2026 import CvmInfo
from ._response import Decode, interpret
from ._retry import RetryPolicy, log_retry, next_wait, retrying
from ._session import SessionOptions, open_session
from ._sharing import Flight, Flights, Orphaned, TTLCache
from ._throttle import ClientStats, Governor, MaxInFlight
from ._version import __version__
from ._versions import API_VERSION, API_VERSIONS, AnyCvm, ApiVersion, shape_for
from ._watch import CvmWatch, wait_for_status

__all__ = ["API_VERSION", "ClientStats", "PhalaClient"]

logger = logging.getLogger("phala_async")

DEFAULT_MAX_RESPONSE_BYTES = 1024 * 1024

_T = TypeVar("_T")
_Fetched = tuple[AnyCvm, int]
if TYPE_CHECKING:  # the default (PEP 696) only for type checkers: Python 3.11's TypeVar has none
    from typing_extensions import TypeVar as _TypeVar
    from typing_extensions import Unpack

    from ._client_options import ClientOptions

    _D = _TypeVar("_D", bound=AnyCvm, default=CvmDetail, covariant=True)
else:
    _D = TypeVar("_D", bound=AnyCvm, covariant=True)


class _Shared:
    """What a client and every view of it (:meth:`PhalaClient.with_options`) share: the
    session, the event loop, the closed flag."""

    __slots__ = ("closed", "loop", "owns_session", "session")

    def __init__(self, session: aiohttp.ClientSession | None) -> None:
        self.session = session
        self.owns_session = session is None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.closed = False


class PhalaClient(Generic[_D]):
    """Async client for the Phala Cloud API.

    Use it as an async context manager, or call :meth:`aclose` when done::

        async with PhalaClient(api_key="phak_...") as client:
            cvm = await client.get_cvm("app_8d1f...")
            async with client.stream_cvms(ids) as results:
                async for result in results:
                    print(result.cvm_id, result.ok)

    Args:
        api_version: the ``X-Phala-Version`` sent, which picks the answers' shape: ``"2025-10-28"``
            (the default, the reference page's shape: :class:`CvmDetail`) or ``"2026-01-21"``
            (the ``CVMInfo`` shape: :class:`CvmInfo`, for details and listing entries alike).
            The client's type follows it: ``PhalaClient[CvmInfo]`` for ``"2026-01-21"``.
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
        cache_ttl: seconds a successful ``get_cvm`` answer is reused (0, the default: no cache).
            Errors are never cached; ``get_cvm(..., fresh=True)`` skips the cache.
        cache_size: answers the cache keeps at most, least recently used dropped first.
        ssl: an ``ssl.SSLContext`` to verify the API's certificate with (own session only).
        ca_file: a PEM bundle of the CAs to trust instead of the system's (own session only).
            Without ``ssl`` or ``ca_file``, ``$SSL_CERT_FILE`` / ``$SSL_CERT_DIR`` are honoured.
        proxy: an ``http://[user:password@]host:port`` proxy to reach the API through; https
            requests go through a CONNECT tunnel, so the proxy never sees the credential.
        trust_env: read ``$HTTPS_PROXY`` / ``$HTTP_PROXY`` / ``$NO_PROXY`` when the client is
            made and no ``proxy`` is given. On by default.
        trace_configs: ``aiohttp.TraceConfig`` objects for the client's own session (tracing,
            OpenTelemetry); each attempt, retries included, is one traced request.

    Concurrent ``get_cvm`` calls (and sweep fetches) for ids that name the same CVM alike share
    one request in flight, always; ``stats.coalesced`` counts the calls that joined one.

    Raises:
        ConfigurationError: an argument is missing or out of range; the message says what to pass.
    """

    @overload
    def __init__(
        self: PhalaClient[CvmDetail],
        *,
        api_version: Literal["2025-10-28"] = ...,
        **options: Unpack[ClientOptions],
    ) -> None: ...
    @overload
    def __init__(
        self: PhalaClient[CvmInfo],
        *,
        api_version: Literal["2026-01-21"],
        **options: Unpack[ClientOptions],
    ) -> None: ...
    @overload
    def __init__(
        self: PhalaClient[AnyCvm], *, api_version: str, **options: Unpack[ClientOptions]
    ) -> None: ...
    def __init__(
        self,
        *,
        api_version: ApiVersion | str = API_VERSION,
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
        cache_ttl: float = 0.0,
        cache_size: int = 10_000,
        ssl: SSLContext | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        proxy: str | None = None,
        trust_env: bool = True,
        trace_configs: Sequence[aiohttp.TraceConfig] | None = None,
    ) -> None:
        check_positive("timeout", timeout)
        check_positive("cache_size", cache_size, integer=True)
        if (
            isinstance(cache_ttl, bool)
            or not isinstance(cache_ttl, (int, float))
            or not 0 <= cache_ttl < float("inf")
        ):
            raise ConfigurationError(
                f"cache_ttl must be a finite number of seconds >= 0 (0: no cache), "
                f"not {cache_ttl!r}"
            )
        check_positive("concurrency", concurrency, integer=True)
        check_positive("max_response_bytes", max_response_bytes, integer=True)
        if rate_limit is not None:
            check_positive("rate_limit", rate_limit)
        if session is not None and not isinstance(session, aiohttp.ClientSession):
            raise ConfigurationError(
                f"session must be an aiohttp.ClientSession, not {type(session).__name__}"
            )
        if session is not None and (ssl, ca_file, proxy, trace_configs) != (None,) * 4:
            raise ConfigurationError(
                "ssl, ca_file, proxy and trace_configs configure the client's own session; "
                "with session=, set them on your session (its connector, proxy, trace_configs)"
            )
        self._shape = shape_for(check_api_version(api_version, API_VERSIONS))
        credential = resolve_credential(api_key, token)
        self._credential_kind = credential.kind
        self._base_url = resolve_base_url(base_url, allow_insecure_http=allow_insecure_http)
        route = resolve_proxy(proxy, trust_env=trust_env, base_url=self._base_url)
        self._session_options = SessionOptions(
            concurrency=concurrency,
            ssl=resolve_tls(ssl, ca_file),
            trace_configs=check_trace_configs(trace_configs),
            https=self._base_url.startswith("https:"),
        )
        self._policy = RetryPolicy(
            max_attempts=max_attempts,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            retry_after_cap=retry_after_cap,
        )
        self._concurrency = concurrency
        self._governor = Governor(
            concurrency=concurrency,
            adaptive=adaptive,
            rate_limit=rate_limit,
            retry_budget=retry_budget,
            retry_after_cap=self._policy.retry_after_cap,
        )
        self._exchange = Exchange(
            base_url=self._base_url,
            headers={
                credential.header: credential.value,
                "X-Phala-Version": self._shape.version,
                "User-Agent": f"phala-async/{__version__}",
                "Accept": "application/json",
            },
            timeout=float(timeout),
            max_bytes=max_response_bytes,
            proxy=route,
            on_reconnect=self._governor.note_reconnect,
        )
        self._shared = _Shared(session)
        self._sweeps: set[Abort] = set()
        self._flights: Flights[_Fetched] = Flights()
        self._cache: TTLCache[AnyCvm] | None = (
            TTLCache(float(cache_ttl), cache_size) if cache_ttl > 0 else None
        )
        self._deadline: float | None = None

    def with_options(
        self,
        *,
        timeout: float | None = None,
        max_attempts: int | None = None,
        deadline: float | None = None,
    ) -> PhalaClient[_D]:
        """A view of this client with other per-call options, sharing its session, connection
        pool, limits, pacing, cache and counters (cheap: make one per call if you like)::

            cvm = await client.with_options(deadline=5.0).get_cvm(cvm_id)

        Closing a view closes the client it came from.

        Args:
            timeout: seconds one attempt may take.
            max_attempts: requests made for one id at most, the first included.
            deadline: seconds a whole call may take, waits for a free slot, pauses and retries
                included; past it the call raises :class:`APITimeoutError`. In a sweep, it
                bounds each id.

        Raises:
            ConfigurationError: a value is out of range.
        """
        view: PhalaClient[_D] = object.__new__(PhalaClient)
        view.__dict__.update(self.__dict__)
        if timeout is not None:
            check_positive("timeout", timeout)
            view._exchange = self._exchange.with_timeout(float(timeout))
        if max_attempts is not None:
            view._policy = dataclasses.replace(self._policy, max_attempts=max_attempts)
        if deadline is not None:
            check_positive("deadline", deadline)
            view._deadline = float(deadline)
        return view

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._open_session()
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
        shared = self._shared
        if shared.closed:
            return
        shared.closed = True
        for abort in list(self._sweeps):
            await abort(ClientClosedError("the PhalaClient was closed during the sweep"))
        for flight in self._flights:  # a copy: cancelling one removes it
            if flight.task is not None:
                flight.task.cancel()
        if shared.owns_session and shared.session is not None:
            await shared.session.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` has been called."""
        return self._shared.closed

    @property
    def _session(self) -> aiohttp.ClientSession | None:
        return self._shared.session

    def __repr__(self) -> str:
        return (
            f"<PhalaClient base_url={self._base_url!r} credential={self._credential_kind} "
            f"concurrency={self._concurrency} max_attempts={self._policy.max_attempts}"
            f"{' closed' if self._shared.closed else ''}>"
        )

    def _open_session(self) -> aiohttp.ClientSession:
        """The session for this call, made on first use, in the loop that first used the client.

        Raises:
            ClientClosedError: the client is closed.
            EventLoopError: called from another event loop than the first one.
        """
        shared = self._shared
        if shared.closed:
            raise ClientClosedError()
        loop = asyncio.get_running_loop()
        if shared.loop is None:
            shared.loop = loop
        elif loop is not shared.loop:
            raise EventLoopError(
                "this PhalaClient belongs to the event loop that first used it, and this call "
                "runs in another one (a second asyncio.run()?); make one PhalaClient per event "
                "loop, for example inside the coroutine that asyncio.run() runs"
            )
        if shared.session is None:
            # Our own session carries the headers and timeout as defaults, which saves aiohttp
            # merging them into every request; an injected session gets them per request.
            shared.session = open_session(
                self._session_options, **self._exchange.session_defaults()
            )
        return shared.session

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
        """A snapshot of the client's counters as of now; read it again to see what changed."""
        return self._governor.snapshot()

    @property
    def api_version(self) -> str:
        """The ``X-Phala-Version`` this client sends."""
        return self._shape.version

    async def get_cvm(self, cvm_id: str | int, *, fresh: bool = False) -> _D:
        """Fetch the details of one CVM, retrying transient failures.

        Calls for the same CVM that overlap share one request; with ``cache_ttl`` set, a recent
        answer is returned without a request unless ``fresh`` is true.

        Args:
            cvm_id: the integer id, name, ``app_<hex>`` (or bare 40-hex app id), VM UUID or
                instance id.
            fresh: skip the cache (a request in flight is still shared).

        Raises:
            InvalidCvmIdError: the id can never be valid; no request was made.
            APIStatusError: the server refused (a subclass per status); after retries for 429/5xx.
            APIConnectionError: no complete answer arrived after every attempt.
            APITimeoutError: an attempt timed out, or the call ran past its ``deadline``.
            ResponseError: a 2xx body that is too large or does not decode.
            ClientClosedError: the client is closed.
            EventLoopError: the client was first used in another event loop.
        """
        segment = normalize_cvm_id(cvm_id)
        cache = self._cache
        if cache is not None and not fresh and (cached := cache.get(segment)) is not None:
            self._governor.note("cache_hits")
            return cast("_D", cached)
        if self._deadline is None:
            return await self._shared_call(segment, cvm_id)
        return await self._within_deadline(self._shared_call(segment, cvm_id), cvm_id)

    async def _shared_call(self, segment: str, cvm_id: str | int) -> _D:
        """``get_cvm`` once the cache had nothing: join the request in flight, or start one."""
        self._open_session()  # raise at once when closed or in the wrong loop
        flights = self._flights
        while True:
            flight = flights.get(segment)
            if flight is None:
                flight = flights.start(segment, functools.partial(self._fetch, segment, cvm_id))
            else:
                self._governor.note("coalesced")
            try:
                cvm, _ = await flights.wait(flight, cvm_id)
            except Orphaned:
                continue  # the sweep running it was closed: ask again
            return cast("_D", cvm)  # decoded by self._shape, whose type _D is

    async def _fetch(self, segment: str, cvm_id: str | int) -> _Fetched:
        """One CVM, retried, stored in the cache when it came."""
        fetched = await self._call(f"/cvms/{segment}", cvm_id, self._shape.decode_cvm, None)
        if self._cache is not None:
            self._cache.put(segment, fetched[0])
        return fetched

    def stream_cvms(
        self,
        ids: Iterable[str | int] | AsyncIterable[str | int],
        *,
        concurrency: int | None = None,
    ) -> CvmStream:
        """Fetch many CVMs, yielding a result per distinct id as each completes.

        Each result is a :class:`CvmOk` (``result.ok`` is true, ``result.cvm`` set) or a
        :class:`CvmFailed` (``result.error`` says why); ``if result.ok:`` narrows the type.
        ``ids`` is read lazily, so a generator of millions is fine; an id given twice (in any
        form that normalises the same) is fetched once. Stop early with ``aclose()`` or by
        leaving ``async with``; every request of the sweep is then cancelled. A refused
        credential or a TLS failure ends the sweep at once: the stream raises it after the
        results already fetched. Sweeps do not read the cache (they fill it).

        Args:
            ids: any iterable or async iterable of ids.
            concurrency: requests in flight for this sweep; defaults to, and cannot exceed, the
                client's ``concurrency``.
        """
        sweep_concurrency = self._sweep_concurrency(concurrency)
        # A sweep narrower than the client gets a limit of its own, so that its retries too
        # stay within its concurrency.
        extra = MaxInFlight(sweep_concurrency) if sweep_concurrency < self._concurrency else None
        first = self._first_attempt if self._deadline is None else self._first_attempt_by_deadline
        fetch = functools.partial(first, extra=extra)
        return CvmStream(fetch, ids, concurrency=sweep_concurrency, running=self._sweeps)

    async def get_cvms(
        self,
        ids: Iterable[str | int] | AsyncIterable[str | int],
        *,
        concurrency: int | None = None,
    ) -> list[SweepResult]:
        """Fetch many CVMs and return one result per given id, in the given order.

        Duplicates are fetched once and share that result. Never raises for one id's failure;
        each failed result's ``error`` says what went wrong. A refused credential or a TLS
        failure stops sending: the ids not fetched carry that error.
        """
        sweep_concurrency = self._sweep_concurrency(concurrency)
        return await gather_in_order(
            lambda distinct: self.stream_cvms(distinct, concurrency=sweep_concurrency), ids
        )

    def watch_cvms(
        self,
        ids: Iterable[str | int] | None = None,
        *,
        interval: float = 30.0,
        fields: Iterable[str] | None = None,
        initial: bool = False,
    ) -> CvmWatch:
        """Watch CVMs for changes: an async iterator of :class:`CvmEvent`, round after round.

        Use it with ``async with``::

            async with client.watch_cvms(interval=30) as events:
                async for event in events:
                    print(event.kind, event.cvm_id, event.changes)

        Each round is a sweep through this client (same pacing, pause and retry budget).
        Rounds never overlap; they start every ``interval`` seconds plus up to 10% jitter,
        and at once after a round that took longer than the interval.

        Args:
            ids: the CVMs to watch; None watches the whole workspace through :meth:`list_cvms`,
                so new and deleted CVMs appear as ``"added"`` and ``"removed"``.
            interval: seconds from the start of one round to the start of the next.
            fields: the fields whose change counts (nested ones by path, ``teepod.name``);
                default every field but :data:`VOLATILE_FIELDS`.
            initial: first emit every CVM as ``"added"``.

        Raises:
            ConfigurationError: ``interval`` is not a positive number, or a field is unknown.
        """
        check_positive("interval", interval)
        listing = None if ids is not None else self._listed_ids
        return CvmWatch(
            self.stream_cvms,
            ids=None if ids is None else list(ids),
            listing=listing,
            interval=float(interval),
            fields=fields,
            initial=initial,
        )

    async def _listed_ids(self) -> list[str]:
        return [entry.cvm_id async for entry in self.list_cvms()]

    async def wait_for_status(
        self,
        cvm_id: str | int,
        status: str | Iterable[str],
        *,
        timeout: float = 600.0,  # noqa: ASYNC109 - bounds the whole poll, as waiters do
        interval: float = 5.0,
    ) -> _D:
        """Poll one CVM until its status is ``status`` (or one of them), and return it.

        Polls go through this client, paced with everything else, and skip the cache.

        Args:
            cvm_id: any id form ``get_cvm`` takes.
            status: the status to wait for (``"running"``), or a set of them.
            timeout: seconds to wait at most.
            interval: seconds between polls.

        Raises:
            StatusTimeoutError: ``timeout`` passed first; it names the id, its last status and
                how long it waited.
            NotFoundError, AuthenticationError, PermissionDeniedError: at once, without waiting.
            PhalaError: any other error that is not transient.
        """
        check_positive("timeout", timeout)
        check_positive("interval", interval)
        return await wait_for_status(
            functools.partial(self.get_cvm, fresh=True),
            cvm_id,
            status,
            timeout=float(timeout),
            interval=float(interval),
        )

    @overload
    def list_cvms(
        self: PhalaClient[CvmDetail], *, page_size: int = ...
    ) -> CvmListing[HostedCvm]: ...
    @overload
    def list_cvms(self: PhalaClient[CvmInfo], *, page_size: int = ...) -> CvmListing[CvmInfo]: ...
    @overload
    def list_cvms(
        self: PhalaClient[AnyCvm], *, page_size: int = ...
    ) -> CvmListing[HostedCvm | CvmInfo]: ...
    def list_cvms(self, *, page_size: int = 100) -> CvmListing[Any]:
        """Every CVM in the workspace, page by page (``GET /cvms/paginated``), lazily.

        Each page is fetched with the same retries and errors as :meth:`get_cvm` (errors carry
        ``cvm_id=None``). The listing's ``total`` is the workspace size once the first page
        arrived. Each entry's ``cvm_id`` names that one CVM (its VM UUID), so every instance of
        an app is swept. Feed it straight into a sweep, without collecting the ids first::

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
            path = f"/cvms/paginated?page={page_number}&page_size={page_size}"
            page, _ = await self._call(path, None, self._shape.decode_page, None)
            return page

        listing: CvmListing[Any] = CvmListing(fetch_page)
        return listing

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
        self, path: str, cvm_id: str | int | None, decode: Decode[_T], extra: MaxInFlight | None
    ) -> tuple[_T, int]:
        """GET ``path`` (already safe), decode the answer, and retry transient failures.

        Returns the value and the attempts it took.
        """
        try:
            value = await self._attempt(path, cvm_id, decode, extra)
        except PhalaError as exc:
            return await self._retries_after(exc, path, cvm_id, decode, extra)()
        self._governor.note_call(None)
        return value, 1

    def _retries_after(
        self,
        error: PhalaError,
        path: str,
        cvm_id: str | int | None,
        decode: Decode[_T],
        extra: MaxInFlight | None,
    ) -> Callable[[], Awaitable[tuple[_T, int]]]:
        """Judge a call's failed first attempt, once: the call's remaining retries, to run now
        (:meth:`_call`) or parked (a sweep).

        Raises:
            PhalaError: ``error`` itself, when it is final (counted as the call's outcome).
        """
        wait = self._judge(error, 1)
        if wait is None:
            self._governor.note_call(error)
            raise error
        return functools.partial(self._retries, path, cvm_id, decode, extra, error, wait)

    async def _first_attempt(
        self, cvm_id: str | int, segment: str, *, extra: MaxInFlight | None
    ) -> Fetched:
        """A sweep's fetch: the first attempt here, and any retries handed back to be parked, so
        that the sweep's worker goes on with other ids while they wait. A request already in
        flight for the same CVM is joined instead (parked too)."""
        flights = self._flights
        joined = flights.get(segment)
        if joined is not None:
            self._governor.note("coalesced")
            return functools.partial(self._join, joined, segment, cvm_id, extra)
        flight = flights.open(segment)
        path = f"/cvms/{segment}"
        try:
            try:
                cvm = await self._attempt(path, cvm_id, self._shape.decode_cvm, extra)
            except PhalaError as exc:
                retries = self._retries_after(exc, path, cvm_id, self._shape.decode_cvm, extra)
                return functools.partial(self._parked, flight, retries)
        except BaseException as exc:
            flights.land(flight, error=exc)
            raise
        self._governor.note_call(None)
        fetched = (cvm, 1)
        self._landed(flight, fetched)
        return fetched

    async def _first_attempt_by_deadline(
        self, cvm_id: str | int, segment: str, *, extra: MaxInFlight | None
    ) -> Fetched:
        """:meth:`_first_attempt` for a view with a deadline: it bounds the id's first attempt
        and its parked retries together."""
        when = asyncio.get_running_loop().time() + (self._deadline or 0.0)
        fetched = await self._within_deadline(
            self._first_attempt(cvm_id, segment, extra=extra), cvm_id, when
        )
        if isinstance(fetched, tuple):
            return fetched
        retries = fetched
        return lambda: self._within_deadline(retries(), cvm_id, when)

    async def _parked(self, flight: Flight[_Fetched], retries: Retries) -> _Fetched:
        """A sweep's retries of one id, run parked; whoever joined the flight gets the answer."""
        try:
            fetched = await retries()
        except BaseException as exc:
            self._flights.land(flight, error=exc)
            raise
        self._landed(flight, fetched)
        return fetched

    def _landed(self, flight: Flight[_Fetched], fetched: _Fetched) -> None:
        if self._cache is not None:
            self._cache.put(flight.key, fetched[0])
        self._flights.land(flight, fetched)

    async def _join(
        self, flight: Flight[_Fetched], segment: str, cvm_id: str | int, extra: MaxInFlight | None
    ) -> _Fetched:
        """A sweep's id whose CVM was already being fetched: that answer, or its own request
        if the one in flight went away."""
        try:
            return await self._flights.wait(flight, cvm_id)
        except Orphaned:
            return await self._call(f"/cvms/{segment}", cvm_id, self._shape.decode_cvm, extra)

    async def _within_deadline(
        self, call: Awaitable[_T], cvm_id: str | int | None, when: float | None = None
    ) -> _T:
        """Run ``call`` until the view's deadline (from now, or the loop time ``when``).

        Raises:
            APITimeoutError: the deadline passed first.
        """
        deadline = self._deadline
        assert deadline is not None  # noqa: S101 - only called on views with a deadline
        if when is None:
            when = asyncio.get_running_loop().time() + deadline
        try:
            async with asyncio.timeout_at(when):
                return await call
        except TimeoutError as exc:
            raise APITimeoutError(
                f"{subject(cvm_id)}: no answer within the {deadline:g}s deadline (waits for a "
                f"slot, pauses and retries included)",
                cvm_id=cvm_id,
            ) from exc

    def _judge(self, error: PhalaError, attempt: int) -> float | None:
        """Seconds to wait before retrying after attempt ``attempt`` failed, or None to give up."""
        governor = self._governor
        return next_wait(
            error,
            attempt,
            self._policy,
            may_retry=governor.may_retry,
            on_denied=governor.note_retry_denied,
        )

    async def _retries(
        self,
        path: str,
        cvm_id: str | int | None,
        decode: Decode[_T],
        extra: MaxInFlight | None,
        first_error: PhalaError,
        wait: float,
    ) -> tuple[_T, int]:
        """Wait out the first failure's ``wait``, then retry under :func:`retrying` until a value,
        a final error, or the last attempt. The first attempt was judged by the caller, once."""
        governor = self._governor
        log_retry(first_error, 1, self._policy, wait)
        await asyncio.sleep(wait)
        attempt = 1
        try:
            async for attempt_manager in retrying(
                self._policy,
                attempts_made=1,
                may_retry=governor.may_retry,
                on_denied=governor.note_retry_denied,
            ):
                with attempt_manager:
                    attempt = attempt_manager.retry_state.attempt_number + 1
                    governor.note_retry()
                    value = await self._attempt(path, cvm_id, decode, extra)
        except PhalaError as exc:
            exc.attempts = attempt
            governor.note_call(exc)
            raise
        governor.note_call(None)
        return value, attempt

    # -- one attempt -------------------------------------------------------------------------

    async def _attempt(
        self, path: str, cvm_id: str | int | None, decode: Decode[_T], extra: MaxInFlight | None
    ) -> _T:
        """Send one request when the governor allows it, and judge its answer."""
        shared = self._shared
        session = shared.session
        if session is None or shared.closed or shared.loop is not asyncio.get_running_loop():
            session = self._open_session()
        async with self._governor.slot(extra):
            # The pause may have outlasted the client.
            if shared.closed:
                raise ClientClosedError(cvm_id=cvm_id)
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("GET %s (%s)", path, subject(cvm_id))
            answer = await self._exchange.get(session, path, cvm_id, shared.owns_session)
            return interpret(
                answer.status, answer.headers, answer.body, cvm_id=cvm_id, decode=decode
            )

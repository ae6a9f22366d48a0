"""``PhalaClient``: one session, one pool, typed answers, retries on transient failures."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Literal, Self, TypeVar, cast, overload

from ._bulk import Abort, CvmStream, SweepResult, gather_in_order
from ._config import check_positive
from ._errors import ClientClosedError, ConfigurationError
from ._ids import normalize_cvm_id
from ._limits import MaxInFlight
from ._listing import CvmListing
from ._models import CvmDetail, CvmPage, HostedCvm
from ._models_v2026 import CvmInfo
from ._setup import build_client
from ._stats import ClientStats
from ._versions import API_VERSION, AnyCvm, ApiVersion
from ._watch import DEFAULT_FAIL_ON, CvmWatch, wait_for_status

__all__ = ["API_VERSION", "ClientStats", "PhalaClient"]

if TYPE_CHECKING:  # the default (PEP 696) only for type checkers: Python 3.11's TypeVar has none
    from typing_extensions import TypeVar as _TypeVar
    from typing_extensions import Unpack

    from ._client_options import ClientOptions

    _D = _TypeVar("_D", bound=AnyCvm, default=CvmDetail, covariant=True)
else:
    _D = TypeVar("_D", bound=AnyCvm, covariant=True)


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
        **options: the keyword options of :class:`ClientOptions`, each documented there:
            ``api_key`` or ``token`` (else ``$PHALA_CLOUD_API_KEY``), ``base_url``, ``timeout``,
            ``max_attempts``, ``concurrency``, ``session``, the backoff and ``Retry-After``
            bounds, ``max_response_bytes``, ``adaptive``, ``rate_limit``, ``retry_budget``,
            the cache, TLS (``ssl``, ``ca_file``), ``proxy`` and ``trust_env``, tracing and
            metrics.

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
        self, *, api_version: ApiVersion | str = API_VERSION, **options: Unpack[ClientOptions]
    ) -> None:
        setup = build_client(api_version=api_version, **options)
        self._setup = setup  # the settings, fixed once
        self._pipeline = setup.pipeline
        self._concurrency = setup.concurrency
        self._sweeps: set[Abort] = set()
        self._is_view = False

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

        A view never closes the client it came from: ``async with view:`` and
        ``view.aclose()`` do nothing, so a handler may use one as it likes while other tasks
        share the client; close the client itself when the application stops.

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
        view._pipeline = self._pipeline.with_options(timeout, max_attempts, deadline)
        view._is_view = True
        return view

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._pipeline.shared.open()
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

        A sweep stopped this way ends with :class:`ClientClosedError`. Safe to call twice. On a
        view (:meth:`with_options`) it does nothing: only the client itself closes.
        """
        shared = self._pipeline.shared
        if shared.closed or self._is_view:
            return
        shared.closed = True
        for abort in list(self._sweeps):
            await abort(ClientClosedError("the PhalaClient was closed during the sweep"))
        for flight in self._pipeline.flights:  # a copy: cancelling one removes it
            if flight.task is not None:
                flight.task.cancel()
        if shared.owns_session and shared.session is not None:
            await shared.session.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` has been called."""
        return self._pipeline.shared.closed

    def __repr__(self) -> str:
        return (
            f"<PhalaClient base_url={self.base_url!r} credential={self._setup.credential_kind} "
            f"concurrency={self._concurrency} max_attempts={self._pipeline.policy.max_attempts}"
            f"{' closed' if self.closed else ''}>"
        )

    # -- public calls ------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The API prefix requests go to."""
        return self._setup.base_url

    @property
    def concurrency(self) -> int:
        """Requests in flight at most on this client."""
        return self._concurrency

    @property
    def api_version(self) -> str:
        """The ``X-Phala-Version`` this client sends."""
        return self._setup.api_version

    @property
    def stats(self) -> ClientStats:
        """A snapshot of the client's counters as of now; read it again to see what changed."""
        return self._pipeline.governor.snapshot()

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
        self._pipeline.shared.open()  # raise at once when closed or in the wrong loop
        cvm, _ = await self._pipeline.cvm(segment, cvm_id, fresh=fresh)
        return cast("_D", cvm)  # decoded by the client's shape, whose type _D is

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
        credential, a TLS failure or an API that never answered (:class:`APIUnreachableError`)
        ends the sweep at once: the stream raises it after the results already fetched. Sweeps
        do not read the cache (they fill it).

        Args:
            ids: any iterable or async iterable of ids.
            concurrency: requests in flight for this sweep; defaults to, and cannot exceed, the
                client's ``concurrency``.
        """
        sweep_concurrency = self._sweep_concurrency(concurrency)
        # A sweep narrower than the client has a limit of its own, which its retries pass too.
        limit = MaxInFlight(sweep_concurrency) if sweep_concurrency < self._concurrency else None
        return CvmStream(
            self._pipeline.cvm,
            ids,
            concurrency=sweep_concurrency,
            limit=limit,
            running=self._sweeps,
        )

    async def get_cvms(
        self,
        ids: Iterable[str | int] | AsyncIterable[str | int],
        *,
        concurrency: int | None = None,
    ) -> list[SweepResult]:
        """Fetch many CVMs and return one result per given id, in the given order.

        Duplicates are fetched once and share that result. Never raises for one id's failure;
        each failed result's ``error`` says what went wrong. A refused credential, a TLS
        failure or an unreachable API stops sending: the ids not fetched carry that error.
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
        listing = None if ids is not None else self._listed_ids
        return CvmWatch(
            self.stream_cvms,
            ids=None if ids is None else list(ids),
            listing=listing,
            interval=interval,
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
        fail_on: str | Iterable[str] = DEFAULT_FAIL_ON,
    ) -> _D:
        """Poll one CVM until its status is ``status`` (or one of them), and return it.

        Polls go through this client, paced with everything else, and skip the cache. Status
        names are not checked: the API does not list them, so a typo (``"runnning"``) waits
        until ``timeout``, and the :class:`StatusTimeoutError` names the status last seen.

        Args:
            cvm_id: any id form ``get_cvm`` takes.
            status: the status to wait for (``"running"``), or a set of them.
            timeout: seconds to wait at most.
            interval: seconds between polls.
            fail_on: statuses that end the wait at once with :class:`StatusFailedError`;
                default :data:`DEFAULT_FAIL_ON` (``"error"``, ``"failed"``); ``()`` for none.
                A status also in ``status`` is waited for.

        Raises:
            StatusFailedError: the CVM reached a status of ``fail_on``; it names the id, the
                status and how long it waited.
            StatusTimeoutError: ``timeout`` passed first; it names the id, its last status and
                how long it waited.
            NotFoundError, AuthenticationError, PermissionDeniedError: at once, without waiting.
            PhalaError: any other error that is not transient.
        """
        return await wait_for_status(
            functools.partial(self.get_cvm, fresh=True),
            cvm_id,
            status,
            timeout=timeout,
            interval=interval,
            fail_on=fail_on,
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
        check_positive("page_size", page_size, integer=True, at_most=100)
        pipeline, decode_page = self._pipeline, self._setup.decode_page

        async def fetch_page(page_number: int) -> CvmPage:
            path = f"/cvms/paginated?page={page_number}&page_size={page_size}"
            return await pipeline.page(path, decode_page)

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

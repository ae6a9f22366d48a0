"""The pipeline: one function runs one id (or one page) from start to end.

:meth:`Pipeline.cvm` reads, top to bottom: the cache; the deadline, once; a request already in
flight for the same CVM, joined, or a new one; then :meth:`Pipeline.attempts`, the one loop of
attempts (slot, send, interpret, decide, wait), which is tenacity's. ``get_cvm``, sweeps,
``watch`` and ``wait_for_status`` all call it; a sweep only passes its own limit and its own way
to wait (:class:`Sweeping`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import Awaitable
from typing import Any, Protocol, TypeVar

import aiohttp

from ._config import check_positive
from ._errors import (
    APIConnectionError,
    APITimeoutError,
    APIUnreachableError,
    ClientClosedError,
    EventLoopError,
    PhalaError,
    subject,
)
from ._governor import Governor, Slot
from ._http import Exchange
from ._limits import MaxInFlight
from ._metrics import AnswerObserver
from ._models_v2026 import AnyCvm
from ._response import Decode, interpret
from ._retry import RetryPolicy, give_up, retrying
from ._session import SessionOptions, open_session
from ._sharing import Flight, Flights, Orphaned, TTLCache

__all__ = ["Fetched", "Pipeline", "SharedSession", "Sweeping"]

logger = logging.getLogger("phala_async")

_T = TypeVar("_T")
#: A CVM and the attempts it took.
Fetched = tuple[AnyCvm, int]


class Sweeping(Protocol):
    """What a sweep lends the pipeline for its ids: its own limit, and its way to wait for a
    retry (which gives the worker's turn back while it waits)."""

    @property
    def limit(self) -> MaxInFlight | None:
        """The sweep's own limit on requests in flight, when narrower than the client's."""

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` before a retry."""


class SharedSession:
    """What a client and every view of it share: the session, its event loop, the closed flag."""

    __slots__ = ("closed", "defaults", "loop", "options", "owns_session", "session")

    def __init__(
        self,
        session: aiohttp.ClientSession | None,
        options: SessionOptions,
        defaults: dict[str, object],
    ) -> None:
        self.session = session
        self.owns_session = session is None
        self.options = options
        self.defaults = defaults
        self.loop: asyncio.AbstractEventLoop | None = None
        self.closed = False

    def open(self) -> aiohttp.ClientSession:
        """The session for this call, made on first use, in the loop that first used it.

        Raises:
            ClientClosedError: the client is closed.
            EventLoopError: called from another event loop than the first one.
        """
        if self.closed:
            raise ClientClosedError()
        loop = asyncio.get_running_loop()
        if self.loop is None:
            self.loop = loop
        elif loop is not self.loop:
            raise EventLoopError(
                "this PhalaClient belongs to the event loop that first used it, and this call "
                "runs in another one (a second asyncio.run()?); make one PhalaClient per event "
                "loop, for example inside the coroutine that asyncio.run() runs"
            )
        if self.session is None:
            # Our own session carries the headers and timeout as defaults, which saves aiohttp
            # merging them into every request; an injected session gets them per request.
            self.session = open_session(self.options, **self.defaults)
        return self.session


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Pipeline:
    """Runs calls for one client (or one view of it, with its own timeout, attempts and
    deadline); everything but those three is shared with the client's other views.

    Attributes:
        shared: the session.
        exchange: sends one GET (base URL, headers, per-attempt timeout).
        governor: the limits, the retry budget and the counters.
        policy: the retry policy.
        flights: the requests in flight, by CVM.
        cache: recent answers, or None.
        decode_cvm: builds a CVM from a detail body.
        answers: logs each answer at DEBUG and records its metrics.
        deadline: seconds a whole call may take, or None.
    """

    shared: SharedSession
    exchange: Exchange
    governor: Governor
    policy: RetryPolicy
    flights: Flights[Fetched]
    cache: TTLCache[AnyCvm] | None
    decode_cvm: Decode[AnyCvm]
    answers: AnswerObserver
    deadline: float | None = None

    def with_options(
        self, timeout: float | None, max_attempts: int | None, deadline: float | None
    ) -> Pipeline:
        """The same pipeline with another per-attempt timeout, attempts or deadline (a client's
        view); None keeps a value.

        Raises:
            ConfigurationError: a value is out of range.
        """
        changes: dict[str, Any] = {}
        if timeout is not None:
            check_positive("timeout", timeout)
            changes["exchange"] = self.exchange.with_timeout(float(timeout))
        if max_attempts is not None:
            changes["policy"] = dataclasses.replace(self.policy, max_attempts=max_attempts)
        if deadline is not None:
            check_positive("deadline", deadline)
            changes["deadline"] = float(deadline)
        return dataclasses.replace(self, **changes)

    async def cvm(
        self,
        segment: str,
        cvm_id: str | int,
        sweep: Sweeping | None = None,
        task: asyncio.Task[Any] | None = None,
        *,
        fresh: bool = False,
    ) -> Fetched:
        """One CVM, from start to end; counted once in the client's stats, however it ends.

        ``get_cvm`` calls it without ``sweep``: the cache may answer (unless ``fresh``), and the
        request runs in a task of its own, so that one caller leaving leaves it to the others.
        A sweep's id runs in the sweep's worker, ``task`` (which the worker knows: on Python
        3.11 each lookup is a system call), and fills the cache without reading it.

        Raises:
            PhalaError: the call's error, naming ``cvm_id``.
        """
        counters = self.governor.counters
        try:
            cache = self.cache
            if sweep is None and cache is not None and not fresh:
                cached = cache.get(segment)
                if cached is not None:
                    counters.cache_hit()
                    counters.call_ended(None)
                    return cached, 0
            joined = self._joined(segment, cvm_id, sweep, task)
            fetched = await (
                joined if self.deadline is None else self._within_deadline(joined, cvm_id)
            )
        except BaseException as exc:
            counters.call_ended(exc)
            raise
        counters.call_ended(None)
        return fetched

    async def _joined(
        self,
        segment: str,
        cvm_id: str | int,
        sweep: Sweeping | None,
        task: asyncio.Task[Any] | None,
    ) -> Fetched:
        """Join the request in flight for this CVM, or make it."""
        flights = self.flights
        while True:
            flight = flights.get(segment)
            if flight is None and sweep is None:
                flight = flights.start(segment, functools.partial(self._stored, segment, cvm_id))
            elif flight is None:
                flight = flights.open(segment)
                try:
                    path = f"/cvms/{segment}"
                    fetched = await self.attempts(path, cvm_id, self.decode_cvm, sweep, task)
                except BaseException as exc:
                    flights.land(flight, error=exc)
                    raise
                self._landed(flight, fetched)
                return fetched
            else:
                self.governor.counters.coalesce()
            try:
                return await flights.wait(flight, cvm_id)
            except Orphaned:
                continue  # the sweep running it was closed: ask again

    def _landed(self, flight: Flight[Fetched], fetched: Fetched) -> None:
        """A sweep's flight got its CVM: cache it, and hand it to whoever joined."""
        if self.cache is not None:
            self.cache.put(flight.key, fetched[0])
        self.flights.land(flight, fetched)

    async def _stored(self, segment: str, cvm_id: str | int) -> Fetched:
        fetched = await self.attempts(f"/cvms/{segment}", cvm_id, self.decode_cvm, None)
        if self.cache is not None:
            self.cache.put(segment, fetched[0])
        return fetched

    async def page(self, path: str, decode: Decode[_T]) -> _T:
        """One page of the listing, counted as one call.

        Raises:
            PhalaError: the page's error (``cvm_id`` None).
        """
        counters = self.governor.counters
        try:
            call = self.attempts(path, None, decode, None)
            value, _ = await (call if self.deadline is None else self._within_deadline(call, None))
        except BaseException as exc:
            counters.call_ended(exc)
            raise
        counters.call_ended(None)
        return value

    async def attempts(
        self,
        path: str,
        cvm_id: str | int | None,
        decode: Decode[_T],
        sweep: Sweeping | None,
        task: asyncio.Task[Any] | None = None,
    ) -> tuple[_T, int]:
        """Every attempt of one call, in tenacity's loop: returns the value and the attempts it
        took, or raises the last error.

        The first attempt is sent before tenacity's loop is built, since building it costs
        about a fifth of a request's CPU and most requests succeed at once; when it fails with
        an error the policy would retry, the loop starts with that failure as its attempt 1 and
        judges it like every later one (:meth:`_stop`: the policy, then the retry budget). A
        retry the budget defers waits for it; one it refuses ends the call with the last error.

        Raises:
            APIUnreachableError: in a sweep, every attempt failed to reach the API, which has
                never answered this client (the sweep ends on it).
            PhalaError: the last attempt's error, ``attempts`` set.
        """
        try:
            return await self._attempt(path, cvm_id, decode, sweep, task), 1
        except PhalaError as exc:
            error = exc
        governor = self.governor
        made = 1
        try:
            if give_up(error, 1, self.policy):
                # Final at once (a 404, say), as the loop's first judgement would find: the loop,
                # which costs more than the request did, is not built for it.
                raise error
            async for attempt in retrying(
                self.policy,
                stop=self._stop,
                sleep=asyncio.sleep if sweep is None else sweep.sleep,
            ):
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        admission = governor.admit_retry()
                        if admission is not None and not await admission:
                            raise error  # refused: the last failure stands, and ends the call
                        governor.counters.retry()
                        made += 1
                        try:
                            value = await self._attempt(path, cvm_id, decode, sweep, task)
                        except PhalaError as exc:
                            error = exc
                            raise
                    else:
                        raise error  # the first attempt, made above, judged here
        except PhalaError as exc:
            exc.attempts = made
            if (
                sweep is not None
                and isinstance(exc, APIConnectionError)
                and exc.no_answer
                and not governor.answered
            ):
                raise self._unreachable(exc, cvm_id, made) from exc
            raise
        return value, made

    def _stop(self, error: PhalaError, attempt: int) -> bool:
        """Whether the call ends after ``error``: the policy says so, or the budget refuses."""
        if give_up(error, attempt, self.policy):
            return True
        if self.governor.denies_retries():
            self.governor.counters.retry_denied()
            return True
        return False

    def _unreachable(
        self, error: APIConnectionError, cvm_id: str | int | None, made: int
    ) -> APIUnreachableError:
        host, _, port = self.exchange.where.rpartition(":")
        reason = error.message.removeprefix(subject(cvm_id) + ": ")
        return APIUnreachableError(
            f"{subject(cvm_id)}: no answer from the API at {self.exchange.base_url} to any "
            f"request ({reason}); stopped rather than fail every id one by one: check that it "
            "is up and reachable from here, and the base URL",
            host=host.strip("[]"),
            port=int(port) if port.isdigit() else None,
            reason=reason,
            cvm_id=cvm_id,
            attempts=made,
        )

    async def _attempt(
        self,
        path: str,
        cvm_id: str | int | None,
        decode: Decode[_T],
        sweep: Sweeping | None,
        task: asyncio.Task[Any] | None,
    ) -> _T:
        """Send one request when the governor allows it, and judge its answer; ``task`` is the
        task running it, when the caller knows it."""
        shared = self.shared
        session = shared.session
        # The task, not the running loop, is asked for the loop: the exchange bounds the
        # attempt by this same task, and on Python 3.11 each of asyncio.get_running_loop() and
        # asyncio.current_task() is a getpid() system call (measured: two a request, 1% of a
        # sweep's CPU together). A sweep's worker hands its task down, and no lookup is made.
        if task is None:
            task = asyncio.current_task()
            if task is None:  # pragma: no cover - the client only runs inside tasks
                raise RuntimeError("a request must run inside an asyncio task")
        if session is None or shared.closed or shared.loop is not task.get_loop():
            session = shared.open()
        slot = Slot(self.governor, None if sweep is None else sweep.limit)
        entering = slot.enter()
        if entering is not None:
            await entering
        try:
            # The pause may have outlasted the client.
            if shared.closed:
                raise ClientClosedError(cvm_id=cvm_id)
            sending = self.exchange.get(session, path, cvm_id, shared.owns_session, task)
            if self.answers.recording or logger.isEnabledFor(logging.DEBUG):
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug("GET %s (%s)", path, subject(cvm_id))
                answer = await self.answers.observe(sending, path)
            else:
                answer = await sending
            value = interpret(
                answer.status, answer.headers, answer.body, cvm_id=cvm_id, decode=decode
            )
        except BaseException as exc:
            slot.leave(exc)  # the way it ended is the outcome the limits learn from
            raise
        slot.leave(None)
        return value

    async def _within_deadline(self, call: Awaitable[_T], cvm_id: str | int | None) -> _T:
        """Run ``call`` until the deadline, from now.

        Raises:
            APITimeoutError: the deadline passed first.
        """
        deadline = self.deadline
        assert deadline is not None  # noqa: S101 - only called with a deadline
        try:
            async with asyncio.timeout(deadline):
                return await call
        except TimeoutError as exc:
            raise APITimeoutError(
                f"{subject(cvm_id)}: no answer within the {deadline:g}s deadline (waits for a "
                f"slot, pauses and retries included)",
                cvm_id=cvm_id,
            ) from exc

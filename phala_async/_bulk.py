"""Sweeps: many ids fetched by a lazily fed pool of workers, results in completion order or
input order.

A sweep knows nothing of the client: it runs over a :data:`Fetch` callable, the client's
pipeline for one id, to which it lends itself (:class:`~phala_async._pipeline.Sweeping`): its
own limit, and its way to wait for a retry. The pool has ``concurrency + max_parked`` workers,
of which ``concurrency`` hold a *turn* to read ids. A worker whose id waits for a retry gives its
turn back (its id is *parked*), so another worker reads on and no backoff holds a place; the
parked id goes on when its wait is over, and its worker waits for a turn before reading again.
So a sweep holds at most ``concurrency + max_parked`` ids at once whatever the input's size.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    MutableSet,
)
from types import TracebackType
from typing import Any, Final, Literal, Self, TypeAlias

import msgspec

from ._errors import ClientClosedError, InvalidCvmIdError, PhalaError, describe
from ._ids import normalize_cvm_id
from ._limits import MaxInFlight
from ._models_v2026 import AnyCvm
from ._retry import ends_every_call
from ._sharing import as_seen_by

__all__ = [
    "CvmFailed",
    "CvmOk",
    "CvmResult",
    "CvmStream",
    "Fetch",
    "SweepResult",
    "gather_in_order",
]

#: Fetches one id ``(normalised segment, cvm_id as given, the sweep, the worker's task)``: the
#: CVM and the attempts it took, or raises its error (the client's :meth:`Pipeline.cvm
#: <phala_async._pipeline.Pipeline.cvm>`).
Fetch: TypeAlias = Callable[
    [str, str | int, "CvmStream", asyncio.Task[Any] | None], Awaitable[tuple[AnyCvm, int]]
]
#: Ends a running sweep with an error (the client is closing).
Abort: TypeAlias = Callable[[PhalaError], Awaitable[None]]

WORKER_NAME = "phala_async sweep worker"


class CvmResult(msgspec.Struct, frozen=True, kw_only=True):
    """What became of one id in a sweep: the base of :class:`CvmOk` and :class:`CvmFailed`.

    Sweeps yield one of those two (their union is :data:`SweepResult`), so an ordinary check
    narrows the type for a type checker::

        if result.ok:
            print(result.cvm.status)      # CvmOk: cvm is a CvmDetail (CvmInfo for 2026-01-21)
        else:
            print(result.error)           # CvmFailed: error is a PhalaError

    Attributes:
        cvm_id: the id exactly as it was given.
        cvm: the CVM, when it was fetched.
        error: why it was not, when it was not (carries the same ``cvm_id``).
        attempts: requests made for this id (0 when it was invalid and nothing was sent).
    """

    cvm_id: str | int
    cvm: AnyCvm | None = None
    error: PhalaError | None = None
    attempts: int = 0

    @property
    def ok(self) -> bool:
        """Whether the CVM was fetched."""
        return self.error is None


class CvmOk(CvmResult, frozen=True, kw_only=True):
    """An id whose CVM was fetched: ``cvm`` is set, ``error`` is None."""

    cvm: AnyCvm
    error: None = None

    @property
    def ok(self) -> Literal[True]:
        """Always true: the CVM was fetched."""
        return True


class CvmFailed(CvmResult, frozen=True, kw_only=True):
    """An id whose CVM was not fetched: ``error`` says why, ``cvm`` is None."""

    cvm: None = None
    error: PhalaError

    @property
    def ok(self) -> Literal[False]:
        """Always false: see ``error``."""
        return False


#: What a sweep yields for one id; ``if result.ok:`` tells the two apart for a type checker.
SweepResult: TypeAlias = CvmOk | CvmFailed


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_EXHAUSTED: Final = _Marker("<ids exhausted>")
_DONE: Final = _Marker("<sweep done>")


class _Results:
    """The results on their way to the consumer: first in, first out, at most ``maxsize`` held
    (a worker with a result waits for room), read by one consumer.

    ``asyncio.Queue`` does this and more (task accounting, many readers) at twice the cost, and
    this runs once per id.
    """

    __slots__ = ("_items", "_maxsize", "_reader", "_writers")

    def __init__(self, maxsize: int) -> None:
        self._items: deque[SweepResult | _Marker] = deque()
        self._maxsize = maxsize
        self._reader: asyncio.Future[None] | None = None
        self._writers: deque[asyncio.Future[None]] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def offer(self, item: SweepResult | _Marker) -> bool:
        """Add ``item`` if there is room and return True; else add nothing and return False."""
        items = self._items
        if len(items) >= self._maxsize:
            return False
        items.append(item)
        reader = self._reader
        if reader is not None:
            self._reader = None
            if not reader.done():
                reader.set_result(None)
        return True

    async def put(self, item: SweepResult | _Marker) -> None:
        """Add ``item``, waiting for room."""
        while not self.offer(item):
            writer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._writers.append(writer)
            try:
                await writer
            except asyncio.CancelledError:
                if writer.done() and not writer.cancelled():
                    self._wake_writer()  # woken as the cancellation landed: pass it on
                elif writer in self._writers:
                    self._writers.remove(writer)
                raise

    def take(self) -> SweepResult | _Marker | None:
        """The oldest item, or None when there is none yet."""
        items = self._items
        if not items:
            return None
        item = items.popleft()
        if self._writers:
            self._wake_writer()
        return item

    async def get(self) -> SweepResult | _Marker:
        """The oldest item, waiting for one."""
        while (item := self.take()) is None:
            reader = self._reader = asyncio.get_running_loop().create_future()
            await reader
        return item

    def _wake_writer(self) -> None:
        writers = self._writers
        while writers:
            writer = writers.popleft()
            if not writer.done():
                writer.set_result(None)
                return


class CvmStream(AsyncIterator[SweepResult]):
    """An async iterator of :data:`SweepResult` (a :class:`CvmOk` or a :class:`CvmFailed`), one
    per distinct id, in completion order.

    Returned by :meth:`PhalaClient.stream_cvms`. Use it with ``async with`` so that leaving the
    block early (``break``, an exception, cancellation) stops the sweep at once::

        async with client.stream_cvms(ids) as results:
            async for result in results:
                ...

    Without ``async with``, call :meth:`aclose` when stopping early. Cancelling the task that
    iterates also stops the sweep. Workers start on the first ``__anext__`` (or ``__aenter__``).

    An error that every other id would meet too (the credential was refused, TLS failed, the API
    never answered) ends the sweep at once: nothing more is sent, the results already fetched
    are yielded, and then the iteration raises that error.
    """

    def __init__(
        self,
        fetch: Fetch,
        ids: Iterable[str | int] | AsyncIterable[str | int],
        *,
        concurrency: int,
        limit: MaxInFlight | None = None,
        running: MutableSet[Abort] | None = None,
        max_parked: int | None = None,
    ) -> None:
        """Args:
        fetch: fetches one id (see :data:`Fetch`).
        ids: any iterable or async iterable of ids, read lazily.
        concurrency: ids fetched at once, each by a worker holding a turn.
        limit: the sweep's own limit on requests in flight, lent to ``fetch``.
        running: where a started sweep registers how to abort it, and unregisters when it ends.
        max_parked: ids waiting for a retry at most (default ``4 * concurrency``): the pool has
            this many workers besides the ``concurrency`` that hold a turn.
        """
        if isinstance(ids, (str, bytes)):
            raise TypeError("ids must be an iterable of ids, not a single str; wrap it in a list")
        self._fetch = fetch
        self._sync_ids: Iterator[str | int] | None = None
        self._async_ids: AsyncIterator[str | int] | None = None
        if isinstance(ids, AsyncIterable):
            self._async_ids = aiter(ids)
        elif isinstance(ids, Iterable):
            self._sync_ids = iter(ids)
        else:
            raise TypeError(f"ids must be an iterable or async iterable, not {type(ids).__name__}")
        self._concurrency = concurrency
        #: The sweep's own limit on requests in flight, or None (an attribute: the pipeline
        #: reads it for every request).
        self.limit = limit
        self._running_sweeps = running
        self._max_parked = max_parked if max_parked is not None else 4 * concurrency
        self._turns = MaxInFlight(concurrency)
        self._ids_lock = asyncio.Lock()
        self._ids_exhausted = False
        self._results = _Results(concurrency)
        self._seen: set[str] = set()
        self._workers: list[asyncio.Task[None]] = []
        self._parked: set[asyncio.Task[None]] = set()  # workers whose id waits for a retry
        self._busy = 0  # workers still running
        self._most_parked = 0
        self._started = False
        self._finished = False
        self._failure: BaseException | None = None
        self._abort_error: PhalaError | None = None
        self._consumer: asyncio.Task[object] | None = None

    @property
    def parked(self) -> int:
        """Ids waiting for a retry now."""
        return len(self._parked)

    @property
    def most_parked(self) -> int:
        """The most ids that waited for a retry at once, so far."""
        return self._most_parked

    # -- what the pipeline borrows (Sweeping) ------------------------------------------------

    async def sleep(self, seconds: float) -> None:
        """Wait for an id's retry: the worker gives its turn back for the rest of the id (while
        fewer than ``max_parked`` ids are parked; past that, it waits holding its turn)."""
        task = asyncio.current_task()
        parked = self._parked
        if task is not None and task not in parked and len(parked) < self._max_parked:
            parked.add(task)
            self._most_parked = max(self._most_parked, len(parked))
            self._turns.release()
        await asyncio.sleep(seconds)

    # -- the iterator ------------------------------------------------------------------------

    def __aiter__(self) -> Self:
        return self

    async def __aenter__(self) -> Self:
        self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def __anext__(self) -> SweepResult:
        if self._finished:
            raise StopAsyncIteration
        if not self._started:
            self._start()
        results = self._results
        if self._abort_error is not None and not results:
            self._finished = True
            await self._stop_workers()
            raise self._abort_error
        item = results.take()
        if item is None:
            try:
                item = await results.get()
            except asyncio.CancelledError:
                await self.aclose()
                raise
        if isinstance(item, CvmResult):
            return item
        self._finished = True
        await self._stop_workers()
        if item is _DONE and self._failure is not None:
            raise self._failure
        if self._abort_error is not None:
            raise self._abort_error
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop the sweep: cancel every request still running and wait until they have ended.

        A consumer waiting for the next result in another task then sees the iteration end.
        """
        self._finished = True
        await self._stop_workers()
        self._results.offer(_DONE)
        if self._async_ids is not None:
            closer = getattr(self._async_ids, "aclose", None)
            if closer is not None:
                await closer()

    async def _abort(self, error: PhalaError) -> None:
        """End the sweep with ``error`` (the client is closing)."""
        self._end_with(error)
        await self._stop_workers()

    def _end_with(self, error: PhalaError) -> None:
        """Stop sending at once; the consumer gets the results so far, then ``error``."""
        if self._abort_error is not None:
            return
        self._abort_error = error
        self._ids_exhausted = True
        current = asyncio.current_task()
        for task in self._workers:
            if task is not current:
                task.cancel()
        if not self._finished:
            # No room means the consumer is not waiting; it sees _abort_error once drained.
            self._results.offer(_DONE)

    # -- the workers -------------------------------------------------------------------------

    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        if self._running_sweeps is not None:
            self._running_sweeps.add(self._abort)
        # A consumer cancelled while busy in its own loop body never calls __anext__ again, so
        # watch the task that started the sweep: when it ends, the sweep ends with it.
        self._consumer = asyncio.current_task()
        if self._consumer is not None:
            self._consumer.add_done_callback(self._on_consumer_done)
        workers = self._concurrency + self._max_parked
        self._busy = workers
        self._workers = [
            asyncio.create_task(self._work(), name=f"{WORKER_NAME} {n}") for n in range(workers)
        ]

    def _on_consumer_done(self, _task: asyncio.Task[object]) -> None:
        if not self._finished:
            self._finished = True
            for task in self._workers:
                task.cancel()
            self._unregister()

    def _unregister(self) -> None:
        if self._running_sweeps is not None:
            self._running_sweeps.discard(self._abort)

    async def _stop_workers(self) -> None:
        if self._consumer is not None:
            self._consumer.remove_done_callback(self._on_consumer_done)
            self._consumer = None
        tasks = self._workers
        self._workers = []
        current = asyncio.current_task()
        others = [task for task in tasks if task is not current]
        for task in others:
            task.cancel()
        if others:
            await asyncio.gather(*others, return_exceptions=True)
        self._unregister()

    async def _work(self) -> None:
        results = self._results
        turns = self._turns
        parked = self._parked
        me = asyncio.current_task()
        try:
            waiter = turns.wait_task_can_start()
            if waiter is not None:
                await waiter
            sync_ids = self._sync_ids
            while not self._finished:
                if sync_ids is not None:  # read here: no coroutine per id
                    cvm_id = _EXHAUSTED if self._ids_exhausted else next(sync_ids, _EXHAUSTED)
                else:
                    cvm_id = await self._next_async_id()
                if isinstance(cvm_id, _Marker):
                    self._ids_exhausted = True
                    break
                try:
                    segment = normalize_cvm_id(cvm_id)
                except InvalidCvmIdError as exc:
                    await self._put(CvmFailed(cvm_id=_shown(cvm_id), error=exc))
                    continue
                if segment in self._seen:
                    continue
                self._seen.add(segment)
                # One turn of the loop before the request: the workers whose answers came in the
                # same turn each deliver theirs, and their next requests then go out together in
                # the next turn, rather than one between every two answers handled. A server
                # woken by a request then finds the others waiting (with the server on the same
                # machine, its wake-ups alone cost the client's kernel 4-6 us a request), and
                # each half of the work runs back to back: 8-9% less CPU a request in paired
                # runs (10,000 ids, concurrency 8 to 64, app and int ids) for a turn of about 1 us.
                await asyncio.sleep(0)
                try:
                    cvm, attempts = await self._fetch(segment, cvm_id, self, me)
                except PhalaError as exc:
                    await self._fail(cvm_id, exc)
                else:
                    result = CvmOk(cvm_id=cvm_id, cvm=cvm, attempts=attempts)
                    if not results.offer(result):  # _put() written out: it runs once per id
                        await results.put(result)
                if me in parked:
                    # The id waited for a retry and gave the turn away: wait for one again.
                    parked.discard(me)
                    waiter = turns.wait_task_can_start()
                    if waiter is not None:
                        await waiter
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, never swallowed
            self._stop_on(exc)
        if me not in parked:
            turns.release()  # another worker may read on (or see that the ids ran out)
        parked.discard(me)
        await self._one_less()

    def _stop_on(self, failure: Exception) -> None:
        """Read no more ids: ``failure`` (the id source's, say) is raised to the consumer after
        the results already fetched."""
        if self._failure is None:
            self._failure = failure
        self._ids_exhausted = True

    async def _fail(self, cvm_id: str | int, error: PhalaError) -> None:
        # A closed client, a refused credential, a failing TLS set-up or an API that never
        # answered would fail every id.
        if ends_every_call(error) or isinstance(error, ClientClosedError):
            self._end_with(error)
        else:
            await self._put(CvmFailed(cvm_id=cvm_id, error=error, attempts=error.attempts))

    async def _put(self, result: SweepResult) -> None:
        if not self._results.offer(result):
            await self._results.put(result)

    async def _one_less(self) -> None:
        self._busy -= 1
        if self._busy == 0 and self._abort_error is None:
            await self._results.put(_DONE)

    async def _next_async_id(self) -> str | int | _Marker:
        # An async generator may not be advanced by two tasks at once.
        async with self._ids_lock:
            if self._ids_exhausted or self._async_ids is None:
                return _EXHAUSTED
            try:
                return await anext(self._async_ids)
            except StopAsyncIteration:
                self._ids_exhausted = True
                return _EXHAUSTED


def _shown(value: object) -> str | int:
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return value
    return describe(value)  # repr(), but short and safe for any object


async def gather_in_order(
    stream_of: Callable[[list[str | int]], CvmStream],
    ids: Iterable[str | int] | AsyncIterable[str | int],
) -> list[SweepResult]:
    """Run a sweep and return one result per given id, in the given order.

    Ids that normalise alike are fetched once; every position gets that result, with its own
    ``cvm_id`` as given. ``stream_of`` starts the sweep over the distinct ids. When the sweep
    ends early on an error every id would meet (a refused credential, a TLS failure), the ids
    not fetched get that error too, naming each its own id, and nothing more is sent.
    """
    given = [cvm_id async for cvm_id in ids] if isinstance(ids, AsyncIterable) else list(ids)
    results: list[SweepResult | None] = [None] * len(given)
    positions: dict[str, list[int]] = {}
    for index, cvm_id in enumerate(given):
        try:
            segment = normalize_cvm_id(cvm_id)
        except InvalidCvmIdError as exc:
            results[index] = CvmFailed(cvm_id=_shown(cvm_id), error=exc)
            continue
        positions.setdefault(segment, []).append(index)
    first_of_each = [given[indexes[0]] for indexes in positions.values()]
    try:
        async with stream_of(first_of_each) as stream:
            async for result in stream:
                for index in positions[normalize_cvm_id(result.cvm_id)]:
                    same = given[index] is result.cvm_id
                    results[index] = (
                        result if same else msgspec.structs.replace(result, cvm_id=given[index])
                    )
    except PhalaError as exc:
        if not ends_every_call(exc):
            raise
        for index, done in enumerate(results):
            if done is None:
                results[index] = CvmFailed(cvm_id=given[index], error=_not_sent(exc, given[index]))
    return [result for result in results if result is not None]


def _not_sent(error: PhalaError, cvm_id: str | int) -> PhalaError:
    """``error``, as it stands for an id that was not sent because of it."""
    if error.cvm_id == cvm_id:
        return error
    twin = as_seen_by(error, cvm_id, prefix="not sent, since the sweep ended on: ")
    twin.attempts = 0
    return twin

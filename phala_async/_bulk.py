"""Sweeps: many ids fetched by a lazily fed pool of workers, results in completion order or
input order.

A sweep knows nothing of the client: it runs over a :data:`Fetch` callable, which makes the first
attempt for an id and either returns the CVM, raises a final error, or hands back the rest of the
retries to run later. Those retries are *parked* in tasks of their own, so a worker never sleeps
through a backoff: its place goes on fetching other ids, and the parked id rejoins when its wait is
over. Parked ids are bounded (``max_parked``), so a sweep holds at most a small multiple of
``concurrency`` ids at once whatever the input's size.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from typing import Final, Literal, Self, TypeAlias

import msgspec

from ._errors import ClientClosedError, InvalidCvmIdError, PhalaError, describe
from ._ids import normalize_cvm_id
from ._models_v2026 import AnyCvm
from ._retry import ends_every_call
from ._sharing import as_seen_by

__all__ = [
    "CvmFailed",
    "CvmOk",
    "CvmResult",
    "CvmStream",
    "Fetch",
    "Fetched",
    "Retries",
    "SweepResult",
    "gather_in_order",
]

#: The rest of an id's retries: run it (in a task of its own) for ``(cvm, attempts)``.
Retries: TypeAlias = Callable[[], Awaitable[tuple[AnyCvm, int]]]
#: What a first attempt gives: the CVM and the attempts it took, or the retries still to run.
Fetched: TypeAlias = tuple[AnyCvm, int] | Retries
#: Makes the first attempt for ``(cvm_id as given, normalised segment)``; raises a final error.
Fetch: TypeAlias = Callable[[str | int, str], Awaitable[Fetched]]
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

    An error that every other id would meet too (the credential was refused, TLS failed) ends the
    sweep at once: nothing more is sent, the results already fetched are yielded, and then the
    iteration raises that error.
    """

    def __init__(
        self,
        fetch: Fetch,
        ids: Iterable[str | int] | AsyncIterable[str | int],
        *,
        concurrency: int,
        running: MutableSet[Abort] | None = None,
        max_parked: int | None = None,
    ) -> None:
        """Args:
        fetch: makes the first attempt for one id (see :data:`Fetch`).
        ids: any iterable or async iterable of ids, read lazily.
        concurrency: workers, each fetching one id at a time.
        running: where a started sweep registers how to abort it, and unregisters when it ends.
        max_parked: ids waiting for a retry at most (default ``4 * concurrency``); at the bound,
            workers wait for a parked id to finish before reading more ids.
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
        self._running_sweeps = running
        self._max_parked = max_parked if max_parked is not None else 4 * concurrency
        self._ids_lock = asyncio.Lock()
        self._ids_exhausted = False
        self._queue: asyncio.Queue[SweepResult | _Marker] = asyncio.Queue(maxsize=concurrency)
        self._seen: set[str] = set()
        self._workers: list[asyncio.Task[None]] = []
        self._parked: set[asyncio.Task[None]] = set()
        self._parked_room = asyncio.Event()
        self._busy = 0  # workers and parked ids still running
        self._fetching = 0  # first attempts under way
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
        self._start()
        if self._abort_error is not None and self._queue.empty():
            self._finished = True
            await self._stop_workers()
            raise self._abort_error
        try:
            item = await self._queue.get()
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
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(_DONE)
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
        for task in (*self._workers, *self._parked):
            if task is not current:
                task.cancel()
        if not self._finished:
            # A full queue means the consumer is not waiting; it sees _abort_error once drained.
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(_DONE)

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
        self._busy = self._concurrency
        self._workers = [
            asyncio.create_task(self._work(), name=f"{WORKER_NAME} {n}")
            for n in range(self._concurrency)
        ]

    def _on_consumer_done(self, _task: asyncio.Task[object]) -> None:
        if not self._finished:
            self._finished = True
            for task in (*self._workers, *self._parked):
                task.cancel()
            self._unregister()

    def _unregister(self) -> None:
        if self._running_sweeps is not None:
            self._running_sweeps.discard(self._abort)

    async def _stop_workers(self) -> None:
        if self._consumer is not None:
            self._consumer.remove_done_callback(self._on_consumer_done)
            self._consumer = None
        tasks = [*self._workers, *self._parked]
        self._workers = []
        current = asyncio.current_task()
        others = [task for task in tasks if task is not current]
        for task in others:
            task.cancel()
        if others:
            await asyncio.gather(*others, return_exceptions=True)
        self._parked.clear()
        self._unregister()

    async def _work(self) -> None:
        queue = self._queue
        try:
            while not self._finished:
                # Room for every id now being fetched to be parked, so the bound holds.
                if len(self._parked) + self._fetching >= self._max_parked:
                    self._parked_room.clear()
                    await self._parked_room.wait()
                    continue
                cvm_id = await self._next_id()
                if isinstance(cvm_id, _Marker):
                    break
                try:
                    segment = normalize_cvm_id(cvm_id)
                except InvalidCvmIdError as exc:
                    await self._put(CvmFailed(cvm_id=_shown(cvm_id), error=exc))
                    continue
                if segment in self._seen:
                    continue
                self._seen.add(segment)
                self._fetching += 1
                try:
                    fetched = await self._fetch(cvm_id, segment)
                except PhalaError as exc:
                    await self._fail(cvm_id, exc)
                    continue
                finally:
                    self._fetching -= 1
                if isinstance(fetched, tuple):
                    cvm, attempts = fetched
                    result = CvmOk(cvm_id=cvm_id, cvm=cvm, attempts=attempts)
                    # _put() written out: this runs once per id.
                    if queue.full():
                        await queue.put(result)
                    else:
                        queue.put_nowait(result)
                else:
                    self._park(cvm_id, fetched)
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, never swallowed
            self._stop_on(exc)
        await self._one_less()

    def _park(self, cvm_id: str | int, retries: Retries) -> None:
        self._busy += 1
        task = asyncio.create_task(self._retry(cvm_id, retries), name=f"{WORKER_NAME} (retry)")
        self._parked.add(task)
        self._most_parked = max(self._most_parked, len(self._parked))
        task.add_done_callback(self._unpark)

    def _unpark(self, task: asyncio.Task[None]) -> None:
        self._parked.discard(task)
        self._parked_room.set()

    async def _retry(self, cvm_id: str | int, retries: Retries) -> None:
        try:
            try:
                cvm, attempts = await retries()
            except PhalaError as exc:
                await self._fail(cvm_id, exc)
            else:
                await self._put(CvmOk(cvm_id=cvm_id, cvm=cvm, attempts=attempts))
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, never swallowed
            self._stop_on(exc)
        await self._one_less()

    def _stop_on(self, failure: Exception) -> None:
        """Read no more ids: ``failure`` (the id source's, say) is raised to the consumer after
        the results already fetched."""
        if self._failure is None:
            self._failure = failure
        self._ids_exhausted = True

    async def _fail(self, cvm_id: str | int, error: PhalaError) -> None:
        # A closed client, a refused credential or a failing TLS set-up would fail every id.
        if ends_every_call(error) or isinstance(error, ClientClosedError):
            self._end_with(error)
        else:
            await self._put(CvmFailed(cvm_id=cvm_id, error=error, attempts=error.attempts))

    async def _put(self, result: SweepResult) -> None:
        queue = self._queue
        if queue.full():
            await queue.put(result)
        else:
            queue.put_nowait(result)

    async def _one_less(self) -> None:
        self._busy -= 1
        if self._busy == 0 and self._abort_error is None:
            await self._queue.put(_DONE)

    async def _next_id(self) -> str | int | _Marker:
        if self._ids_exhausted:
            return _EXHAUSTED
        if self._sync_ids is not None:
            try:
                return next(self._sync_ids)
            except StopIteration:
                self._ids_exhausted = True
                return _EXHAUSTED
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

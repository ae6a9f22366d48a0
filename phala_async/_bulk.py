"""Many ids at once: a lazily fed pool of workers, results in completion order or input order."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Final, Self

import msgspec

from ._errors import ClientClosedError, InvalidCvmIdError, PhalaError, describe
from ._ids import normalize_cvm_id
from ._models import CvmDetail, decode_cvm

if TYPE_CHECKING:
    from ._client import PhalaClient

__all__ = ["CvmResult", "CvmStream", "gather_in_order"]


class CvmResult(msgspec.Struct, frozen=True, kw_only=True):
    """What became of one id in a sweep.

    Attributes:
        cvm_id: the id exactly as it was given.
        cvm: the CVM, when it was fetched.
        error: why it was not, when it was not (carries the same ``cvm_id``).
        attempts: requests made for this id (0 when it was invalid and nothing was sent).
    """

    cvm_id: str | int
    cvm: CvmDetail | None = None
    error: PhalaError | None = None
    attempts: int = 0

    @property
    def ok(self) -> bool:
        """Whether the CVM was fetched."""
        return self.error is None


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_EXHAUSTED: Final = _Marker("<ids exhausted>")
_DONE: Final = _Marker("<sweep done>")


class CvmStream(AsyncIterator[CvmResult]):
    """An async iterator of :class:`CvmResult`, one per distinct id, in completion order.

    Returned by :meth:`PhalaClient.stream_cvms`. Use it with ``async with`` so that leaving the
    block early (``break``, an exception, cancellation) stops the sweep at once::

        async with client.stream_cvms(ids) as results:
            async for result in results:
                ...

    Without ``async with``, call :meth:`aclose` when stopping early. Cancelling the task that
    iterates also stops the sweep. Workers start on the first ``__anext__`` (or ``__aenter__``).
    """

    def __init__(
        self,
        client: PhalaClient,
        ids: Iterable[str | int] | AsyncIterable[str | int],
        *,
        concurrency: int,
    ) -> None:
        if isinstance(ids, (str, bytes)):
            raise TypeError("ids must be an iterable of ids, not a single str; wrap it in a list")
        self._client = client
        self._sync_ids: Iterator[str | int] | None = None
        self._async_ids: AsyncIterator[str | int] | None = None
        if isinstance(ids, AsyncIterable):
            self._async_ids = aiter(ids)
        elif isinstance(ids, Iterable):
            self._sync_ids = iter(ids)
        else:
            raise TypeError(f"ids must be an iterable or async iterable, not {type(ids).__name__}")
        self._concurrency = concurrency
        self._ids_lock = asyncio.Lock()
        self._ids_exhausted = False
        self._queue: asyncio.Queue[CvmResult | _Marker] = asyncio.Queue(maxsize=concurrency)
        self._seen: set[str] = set()
        self._workers: list[asyncio.Task[None]] = []
        self._running = 0
        self._started = False
        self._finished = False
        self._failure: BaseException | None = None
        self._abort_error: PhalaError | None = None
        self._consumer: asyncio.Task[object] | None = None

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

    async def __anext__(self) -> CvmResult:
        if self._finished:
            raise StopAsyncIteration
        self._start()
        if self._abort_error is not None and self._queue.empty():
            self._finished = True
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
        self._abort_error = error
        await self._stop_workers()
        if not self._finished:
            # A full queue means the consumer is not waiting; it sees _abort_error once drained.
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(_DONE)

    # -- the workers -------------------------------------------------------------------------

    def _start(self) -> None:
        if self._started:
            return
        if self._client.closed:
            raise ClientClosedError()
        self._started = True
        self._client._streams.add(self)
        # A consumer cancelled while busy in its own loop body never calls __anext__ again, so
        # watch the task that started the sweep: when it ends, the sweep ends with it.
        self._consumer = asyncio.current_task()
        if self._consumer is not None:
            self._consumer.add_done_callback(self._on_consumer_done)
        self._running = self._concurrency
        self._workers = [
            asyncio.create_task(self._work(), name=f"phala_async sweep worker {n}")
            for n in range(self._concurrency)
        ]

    def _on_consumer_done(self, _task: asyncio.Task[object]) -> None:
        if not self._finished:
            self._finished = True
            for task in self._workers:
                task.cancel()
            self._client._streams.discard(self)

    async def _stop_workers(self) -> None:
        if self._consumer is not None:
            self._consumer.remove_done_callback(self._on_consumer_done)
            self._consumer = None
        workers, self._workers = self._workers, []
        current = asyncio.current_task()
        for task in workers:
            if task is not current:
                task.cancel()
        if workers:
            await asyncio.gather(*(t for t in workers if t is not current), return_exceptions=True)
        self._client._streams.discard(self)

    async def _work(self) -> None:
        client = self._client
        queue = self._queue
        try:
            while not self._finished and not isinstance(cvm_id := await self._next_id(), _Marker):
                try:
                    segment = normalize_cvm_id(cvm_id)
                except InvalidCvmIdError as exc:
                    await self._queue.put(CvmResult(cvm_id=_shown(cvm_id), error=exc))
                    continue
                if segment in self._seen:
                    continue
                self._seen.add(segment)
                try:
                    cvm, attempts = await client._call(f"/cvms/{segment}", cvm_id, decode_cvm)
                except PhalaError as exc:
                    result = CvmResult(cvm_id=cvm_id, error=exc, attempts=exc.attempts)
                else:
                    result = CvmResult(cvm_id=cvm_id, cvm=cvm, attempts=attempts)
                if queue.full():
                    await queue.put(result)
                else:
                    queue.put_nowait(result)
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, never swallowed
            if self._failure is None:
                self._failure = exc
            self._ids_exhausted = True
        self._running -= 1
        if self._running == 0:
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
    client: PhalaClient,
    ids: Iterable[str | int] | AsyncIterable[str | int],
    *,
    concurrency: int,
) -> list[CvmResult]:
    """Run a sweep and return one result per given id, in the given order.

    Ids that normalise alike are fetched once; every position gets that result, with its own
    ``cvm_id`` as given.
    """
    given = [cvm_id async for cvm_id in ids] if isinstance(ids, AsyncIterable) else list(ids)
    results: list[CvmResult | None] = [None] * len(given)
    positions: dict[str, list[int]] = {}
    for index, cvm_id in enumerate(given):
        try:
            segment = normalize_cvm_id(cvm_id)
        except InvalidCvmIdError as exc:
            results[index] = CvmResult(cvm_id=_shown(cvm_id), error=exc)
            continue
        positions.setdefault(segment, []).append(index)
    first_of_each = [given[indexes[0]] for indexes in positions.values()]
    async with CvmStream(client, first_of_each, concurrency=concurrency) as stream:
        async for result in stream:
            for index in positions[normalize_cvm_id(result.cvm_id)]:
                same = given[index] is result.cvm_id
                results[index] = (
                    result if same else msgspec.structs.replace(result, cvm_id=given[index])
                )
    return [result for result in results if result is not None]

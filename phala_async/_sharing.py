"""What calls share: one request in flight per id, and an optional cache of recent answers.

Both are keyed by the normalised path segment, so ids that name the same CVM alike (``7`` and
``"7"``, a dashed and an undashed VM UUID) share. Neither does I/O of its own.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Generic, TypeVar

from ._errors import PhalaError, subject

__all__ = ["Flight", "Flights", "Orphaned", "TTLCache", "as_seen_by"]

_T = TypeVar("_T")


class Orphaned(Exception):
    """The call a caller had joined went away without an answer (its sweep was closed)."""


class Flight(Generic[_T]):
    """One call in flight. Its first caller runs it; later callers wait for its answer.

    A flight started by :meth:`Flights.start` runs in a task of its own, so that cancelling one
    caller never cancels it for the others; when every caller has gone it is cancelled. A flight
    :meth:`Flights.open`\\ ed by a sweep runs in the sweep's worker and makes its future only when
    someone joins, so a sweep pays for sharing only when it happens.
    """

    __slots__ = ("_future", "callers", "key", "task")

    def __init__(self, key: str, task: asyncio.Task[_T] | None = None) -> None:
        self.key = key
        self.task = task
        self._future: asyncio.Future[_T] | None = task
        self.callers = 0

    def future(self) -> asyncio.Future[_T]:
        """The future the answer arrives on, made on first need."""
        if self._future is None:
            self._future = asyncio.get_running_loop().create_future()
        return self._future

    @property
    def joined(self) -> bool:
        """Whether anyone waits for this flight's answer besides its owner."""
        return self._future is not None


class Flights(Generic[_T]):
    """The calls in flight, by key."""

    __slots__ = ("_by_key",)

    def __init__(self) -> None:
        self._by_key: dict[str, Flight[_T]] = {}

    def __len__(self) -> int:
        return len(self._by_key)

    def __iter__(self) -> Iterator[Flight[_T]]:
        return iter(list(self._by_key.values()))

    def get(self, key: str) -> Flight[_T] | None:
        """The flight for ``key``, if one is in the air."""
        return self._by_key.get(key)

    def start(self, key: str, call: Callable[[], Coroutine[Any, Any, _T]]) -> Flight[_T]:
        """Run ``call()`` in a task of its own as the flight for ``key``."""
        task = asyncio.get_running_loop().create_task(call())
        flight = Flight(key, task)
        self._by_key[key] = flight
        task.add_done_callback(lambda done: self._landed(flight, done))
        return flight

    def open(self, key: str) -> Flight[_T]:
        """Register a flight that the caller runs itself, then ends with :meth:`land`."""
        flight: Flight[_T] = Flight(key)
        self._by_key[key] = flight
        return flight

    def land(
        self,
        flight: Flight[_T],
        value: _T | None = None,
        error: BaseException | None = None,
    ) -> None:
        """End a flight from :meth:`open` with its value, or its error (cancellation included),
        handing it to whoever joined."""
        if self._by_key.get(flight.key) is flight:
            del self._by_key[flight.key]
        future = flight._future
        if future is None or future.done():
            return
        if isinstance(error, asyncio.CancelledError):
            future.cancel()
        elif error is not None:
            future.set_exception(error)
            future.exception()  # retrieved: every joiner that is still there re-raises a copy
        else:
            future.set_result(value)  # type: ignore[arg-type]  # a value when no error

    def _landed(self, flight: Flight[_T], task: asyncio.Task[_T]) -> None:
        if self._by_key.get(flight.key) is flight:
            del self._by_key[flight.key]
        if not task.cancelled():
            task.exception()  # retrieved here, so a flight nobody waits for logs nothing

    async def wait(self, flight: Flight[_T], cvm_id: str | int) -> _T:
        """Wait for ``flight``'s answer as the caller who asked for ``cvm_id``.

        Raises:
            PhalaError: the flight's error, naming ``cvm_id``.
            Orphaned: the flight was cancelled without an answer while this caller still waited.
        """
        future = flight.future()
        flight.callers += 1
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if future.cancelled() and _not_cancelling():
                raise Orphaned from None
            raise
        except PhalaError as exc:
            # The copy keeps the original's cause (an OSError, an ssl error), never the flight.
            raise as_seen_by(exc, cvm_id) from exc.__cause__
        finally:
            flight.callers -= 1
            if flight.callers == 0 and flight.task is not None and not flight.task.done():
                flight.task.cancel()


def _not_cancelling() -> bool:
    task = asyncio.current_task()
    return task is None or task.cancelling() == 0


def as_seen_by(error: PhalaError, cvm_id: str | int, *, prefix: str = "") -> PhalaError:
    """A copy of ``error`` for a caller who asked for ``cvm_id``: it names that id, and its
    message begins with that caller's subject (``prefix`` goes after it)."""
    twin = copy.copy(error)
    own, theirs = subject(cvm_id), subject(error.cvm_id)
    message = error.message
    if message.startswith(theirs + ": "):
        message = message[len(theirs) + 2 :]
    twin.cvm_id = cvm_id
    twin.message = f"{own}: {prefix}{message}"
    twin.args = (twin.message,)
    return twin


class TTLCache(Generic[_T]):
    """A bounded least-recently-used cache whose entries expire ``ttl`` seconds after they were
    stored.

    Args:
        ttl: seconds an entry is fresh.
        size: entries kept at most; the least recently used goes first.
        clock: the time source, for tests.
    """

    __slots__ = ("_clock", "_entries", "_size", "_ttl")

    def __init__(self, ttl: float, size: int, *, clock: Callable[[], float] = time.monotonic):
        self._ttl = ttl
        self._size = size
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, _T]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> _T | None:
        """The fresh value for ``key``, or None (an expired one is dropped)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: str, value: _T) -> None:
        """Store ``value`` for ``key``, fresh for ``ttl`` seconds from now."""
        entries = self._entries
        entries[key] = (self._clock() + self._ttl, value)
        entries.move_to_end(key)
        while len(entries) > self._size:
            entries.popitem(last=False)

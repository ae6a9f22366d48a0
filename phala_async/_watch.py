"""Polling for bots and dashboards: :class:`CvmWatch` (what changed, round after round) and
:func:`wait_for_status`.

Neither knows the client: a watch runs over a sweep callable and, for a whole workspace, a
listing callable; ``wait_for_status`` over a fetch callable. What counts as a change is the pure
:func:`diff_cvms`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, Literal, Self, TypeAlias, TypeVar

import msgspec

from ._bulk import CvmStream
from ._errors import (
    APIConnectionError,
    AuthenticationError,
    ConfigurationError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    PhalaError,
    RateLimitError,
    StatusTimeoutError,
    subject,
)
from ._ids import id_key
from ._models import CvmDetail
from ._models_v2026 import AnyCvm, CvmInfo
from ._retry import ends_every_call

__all__ = [
    "VOLATILE_FIELDS",
    "CvmEvent",
    "CvmWatch",
    "EventKind",
    "diff_cvms",
    "flatten",
    "wait_for_status",
]

#: Fields that change on their own while nothing meaningful changes, so a watch ignores them
#: unless asked for by ``fields``: ``in_progress`` flips during every transition, which
#: ``status`` already reports.
#: ``updated_at`` moves with any change, and ``machine_info`` repeats the sizes, which are fields of
#: their own.
VOLATILE_FIELDS = frozenset({"in_progress", "machine_info", "updated_at"})

_C = TypeVar("_C", bound=AnyCvm)

EventKind: TypeAlias = Literal["added", "changed", "removed", "error"]

# A watch takes the fields of either shape: the client's API version decides which it sees.
_TOP_FIELDS = frozenset(
    field.name for shape in (CvmDetail, CvmInfo) for field in msgspec.structs.fields(shape)
)


class CvmEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One thing a watch saw.

    Attributes:
        kind: ``"added"`` (new since the last round, or every CVM at first with
            ``initial=True``), ``"changed"``, ``"removed"`` (a 404, or gone from the listing) or
            ``"error"`` (a failure that says nothing about the CVM itself; the watch goes on).
        cvm_id: the id as given (or as the listing names it); None for a failed listing.
        before: the CVM as last seen (``changed``, ``removed``).
        after: the CVM as seen now (``added``, ``changed``).
        changes: for ``changed``, each changed field (nested by path, ``teepod.name``) mapped to
            ``(old, new)``, as JSON values.
        error: for ``error``, what went wrong.
    """

    kind: EventKind
    cvm_id: str | int | None
    before: AnyCvm | None = None
    after: AnyCvm | None = None
    changes: dict[str, tuple[Any, Any]] = msgspec.field(default_factory=dict)
    error: PhalaError | None = None


def flatten(cvm: AnyCvm) -> dict[str, Any]:
    """A CVM as JSON values, nested objects flattened by path (``teepod.region_identifier``);
    lists stay whole."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else key, inner)
        else:
            flat[prefix] = value

    walk("", msgspec.to_builtins(cvm))
    return flat


def diff_cvms(
    before: AnyCvm, after: AnyCvm, fields: frozenset[str] | None = None
) -> dict[str, tuple[Any, Any]]:
    """Each field that differs, mapped to ``(old, new)``.

    Args:
        before: the CVM as it was.
        after: the CVM as it is.
        fields: the fields that count (a name counts its nested fields too: ``teepod`` counts
            ``teepod.name``); None: every field but :data:`VOLATILE_FIELDS`.
    """
    old, new = flatten(before), flatten(after)
    changes: dict[str, tuple[Any, Any]] = {}
    for path in sorted(old.keys() | new.keys()):
        top = path.partition(".")[0]
        if fields is None:
            if top in VOLATILE_FIELDS:
                continue
        elif path not in fields and top not in fields:
            continue
        if old.get(path) != new.get(path):
            changes[path] = (old.get(path), new.get(path))
    return changes


def check_fields(fields: Iterable[str] | None) -> frozenset[str] | None:
    """The fields a watch compares, checked against :class:`CvmDetail` and :class:`CvmInfo`.

    Raises:
        ConfigurationError: a name that is a field of neither shape, or a str instead of a list.
    """
    if fields is None:
        return None
    if isinstance(fields, str):
        raise ConfigurationError(f"fields must be a list of names, not the str {fields!r}")
    chosen = frozenset(fields)
    unknown = sorted(name for name in chosen if name.partition(".")[0] not in _TOP_FIELDS)
    if unknown or not chosen:
        raise ConfigurationError(
            f"fields {unknown or '[]'} are not CvmDetail or CvmInfo fields; pick from "
            f"{', '.join(sorted(_TOP_FIELDS))} (nested ones by path, e.g. teepod.name)"
        )
    return chosen


class CvmWatch(AsyncIterator[CvmEvent]):
    """An async iterator of :class:`CvmEvent`, round after round, until it is closed.

    Returned by :meth:`PhalaClient.watch_cvms`; use it with ``async with`` (or call
    :meth:`aclose`) so that a sweep in progress is stopped when you stop. A refused credential
    or a TLS failure ends the watch with that error, since every later round would meet it too.
    """

    def __init__(
        self,
        sweep: Callable[[list[str | int]], CvmStream],
        *,
        ids: list[str | int] | None,
        listing: Callable[[], Awaitable[list[str]]] | None,
        interval: float,
        fields: Iterable[str] | None = None,
        initial: bool = False,
        jitter: float = 0.1,
        rng: random.Random | None = None,
    ) -> None:
        if (ids is None) == (listing is None):
            raise ConfigurationError("watch either the given ids or the whole workspace")
        self._sweep = sweep
        self._ids = ids
        self._listing = listing
        self._interval = interval
        self._fields = check_fields(fields)
        self._initial = initial
        self._jitter = jitter
        # Jitter only keeps many bots from polling in step; it protects no secret.
        self._rng = rng or random.Random()  # noqa: S311
        self._known: dict[str, tuple[str | int, AnyCvm]] = {}
        self._events = self._rounds()
        #: Rounds started so far.
        self.rounds = 0
        #: Rounds after which the iteration ends, once their events are out, instead of waiting
        #: for the next round; None: never. Set it before iterating.
        self.max_rounds: int | None = None

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> CvmEvent:
        return await anext(self._events)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop watching; a sweep in progress is stopped and its requests cancelled."""
        await self._events.aclose()

    async def _rounds(self) -> AsyncGenerator[CvmEvent, None]:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            first = self.rounds == 0
            self.rounds += 1
            async for event in self._one_round(first):
                yield event
            if self.max_rounds is not None and self.rounds >= self.max_rounds:
                return
            # Rounds never overlap: the next starts an interval (plus jitter) after this one
            # started, or at once when this one took longer.
            spread = 1.0 + self._jitter * self._rng.random()
            delay = started + self._interval * spread - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)

    async def _one_round(self, first: bool) -> AsyncGenerator[CvmEvent, None]:
        ids: list[str | int]
        if self._listing is not None:
            try:
                ids = list(await self._listing())
            except PhalaError as exc:
                if ends_every_call(exc):
                    raise
                yield CvmEvent(kind="error", cvm_id=None, error=exc)
                return
        else:
            assert self._ids is not None  # noqa: S101 - one of the two is set
            ids = self._ids
        known = self._known
        seen: set[str] = set()
        async with self._sweep(ids) as stream:
            async for result in stream:
                key = id_key(result.cvm_id)
                seen.add(key)
                if result.ok:
                    previous = known.get(key)
                    known[key] = (result.cvm_id, result.cvm)
                    if previous is None:
                        if not first or self._initial:
                            yield CvmEvent(kind="added", cvm_id=result.cvm_id, after=result.cvm)
                        continue
                    changes = diff_cvms(previous[1], result.cvm, self._fields)
                    if changes:
                        yield CvmEvent(
                            kind="changed",
                            cvm_id=result.cvm_id,
                            before=previous[1],
                            after=result.cvm,
                            changes=changes,
                        )
                elif isinstance(result.error, NotFoundError) and key in known:
                    _, before = known.pop(key)
                    yield CvmEvent(kind="removed", cvm_id=result.cvm_id, before=before)
                elif not (isinstance(result.error, NotFoundError) and self._listing is not None):
                    # (A CVM listed but deleted before its fetch, never seen: nothing to say.)
                    yield CvmEvent(kind="error", cvm_id=result.cvm_id, error=result.error)
        if self._listing is not None:
            for key in [key for key in known if key not in seen]:
                cvm_id, before = known.pop(key)
                yield CvmEvent(kind="removed", cvm_id=cvm_id, before=before)


#: Errors that a poll outlives: the next poll may succeed.
_TRANSIENT = (APIConnectionError, InternalServerError, RateLimitError)


async def wait_for_status(
    fetch: Callable[[str | int], Awaitable[_C]],
    cvm_id: str | int,
    status: str | Iterable[str],
    *,
    timeout: float,  # noqa: ASYNC109 - bounds the whole poll, as waiters do
    interval: float,
) -> _C:
    """Poll ``fetch(cvm_id)`` until the CVM's status is one of ``status``; see
    :meth:`PhalaClient.wait_for_status`."""
    wanted = frozenset({status} if isinstance(status, str) else status)
    if not wanted or not all(isinstance(name, str) and name for name in wanted):
        raise ConfigurationError(f"status must be a status name or a set of them, not {status!r}")
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + timeout
    last_status: str | None = None
    last_error: PhalaError | None = None
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                cvm = await fetch(cvm_id)
        except TimeoutError:
            break
        except (NotFoundError, AuthenticationError, PermissionDeniedError):
            raise
        except _TRANSIENT as exc:
            last_error = exc
        else:
            last_status = cvm.status
            if cvm.status in wanted:
                return cvm
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        await asyncio.sleep(min(interval, remaining))
    waited = loop.time() - started
    names = " or ".join(repr(name) for name in sorted(wanted))
    state = f"still {last_status!r}" if last_status is not None else "no status seen"
    if last_status is None and last_error is not None:
        state += f" (last error: {last_error.message})"
    raise StatusTimeoutError(
        f"{subject(cvm_id)}: {state} after waiting {waited:.1f}s for {names}",
        cvm_id=cvm_id,
        last_status=last_status,
        waited=waited,
        wanted=wanted,
    )

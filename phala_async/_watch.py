"""Polling for bots and dashboards: :class:`CvmWatch` (what changed, round after round) and
:func:`wait_for_status`.

Neither knows the client: a watch runs over a sweep callable and, for a whole workspace, a
listing callable; ``wait_for_status`` over a fetch callable. What counts as a change is
:func:`diff_cvms`, the shared :func:`phala_async._changes.field_changes` with the watch's choices.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, Literal, Self, TypeAlias, TypeVar

import msgspec

from ._bulk import CvmStream, SweepResult
from ._changes import field_changes
from ._config import check_positive
from ._errors import (
    APIConnectionError,
    APIStatusError,
    APIUnreachableError,
    AuthenticationError,
    ConfigurationError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    PhalaError,
    RateLimitError,
    StatusFailedError,
    StatusTimeoutError,
    subject,
)
from ._ids import id_key
from ._models import CvmDetail
from ._models_v2026 import AnyCvm, CvmInfo
from ._retry import ends_every_call

__all__ = [
    "DEFAULT_FAIL_ON",
    "VOLATILE_FIELDS",
    "CvmEvent",
    "CvmWatch",
    "EventKind",
    "diff_cvms",
    "wait_for_status",
]

#: Fields that change on their own while nothing meaningful changes, so a watch ignores them
#: unless asked for by ``fields``: ``in_progress`` flips during every transition, which
#: ``status`` already reports.
#: ``updated_at`` moves with any change, and ``machine_info`` repeats the sizes, which are fields of
#: their own.
VOLATILE_FIELDS = frozenset({"in_progress", "machine_info", "updated_at"})

_C = TypeVar("_C", bound=AnyCvm)

#: The statuses that end :meth:`PhalaClient.wait_for_status` at once by default: the API's
#: reference names only some statuses (``running``, ``stopped``, ``starting``...) and no
#: failure status, so these are the failure names it is known to use.
DEFAULT_FAIL_ON = frozenset({"error", "failed"})

EventKind: TypeAlias = Literal["added", "changed", "removed", "error", "unavailable", "available"]

# A watch takes the fields of either shape: the client's API version decides which it sees.
_TOP_FIELDS = frozenset(
    field.name for shape in (CvmDetail, CvmInfo) for field in msgspec.structs.fields(shape)
)


class CvmEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One thing a watch saw.

    Attributes:
        kind: ``"added"`` (new since the last round, every CVM at first with ``initial=True``,
            or back after a removal), ``"changed"``, ``"removed"`` (a 404, or gone from the
            listing; then nothing more about it until it is back), ``"error"`` (a failure that
            says nothing about the CVM itself, once per id until that id is fetched again),
            ``"unavailable"`` (a round got no answer from the API at all: one event for every
            id, the last known state kept) or ``"available"`` (the first round that got answers
            again; only real changes follow it).
        cvm_id: the id as given (or as the listing names it); None for a failed listing and
            for ``unavailable`` / ``available``.
        before: the CVM as last seen (``changed``, ``removed``).
        after: the CVM as seen now (``added``, ``changed``).
        changes: for ``changed``, each changed field (nested by path, ``teepod.name``) mapped to
            ``(old, new)``, as JSON values.
        error: for ``error`` and ``unavailable``, what went wrong.
    """

    kind: EventKind
    cvm_id: str | int | None
    before: AnyCvm | None = None
    after: AnyCvm | None = None
    changes: dict[str, tuple[Any, Any]] = msgspec.field(default_factory=dict)
    error: PhalaError | None = None


def diff_cvms(
    before: AnyCvm, after: AnyCvm, fields: frozenset[str] | None = None
) -> dict[str, tuple[Any, Any]]:
    """Each field that differs, mapped to ``(old, new)``: :func:`field_changes` as a watch asks it.

    Args:
        before: the CVM as it was.
        after: the CVM as it is.
        fields: the fields that count (a name counts its nested fields too: ``teepod`` counts
            ``teepod.name``); None: every field but :data:`VOLATILE_FIELDS`.
    """
    changes = field_changes(
        msgspec.to_builtins(before),
        msgspec.to_builtins(after),
        fields=sorted(fields or ()),
        ignore=sorted(VOLATILE_FIELDS) if fields is None else (),
        empty_is_value=False,  # an object emptied or filled shows as its fields, not as `{}`
    )
    return {change.path: (change.old, change.new) for change in changes}


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

    A watch stays quiet: an id reports a removal once and the same error once; a round that
    gets no answer from the API at all (every request refused, reset, timed out or answered
    5xx) is one ``unavailable`` event, and the first round with answers again one
    ``available``.
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
        check_positive("interval", interval)
        self._sweep = sweep
        self._ids = ids
        self._listing = listing
        self._interval = float(interval)
        self._fields = check_fields(fields)
        self._initial = initial
        self._jitter = jitter
        # Jitter only keeps many bots from polling in step; it protects no secret.
        self._rng = rng or random.Random()  # noqa: S311
        self._known: dict[str, tuple[str | int, AnyCvm]] = {}
        # What each id (None: the listing) last reported as an error (a removal reports
        # NotFoundError), so that it says so once until it is fetched again.
        self._reported: dict[str | None, str] = {}
        #: Whether the API gave no answer in the last round (an ``unavailable`` was emitted).
        self.unavailable = False
        self._answered = False
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
            # Until the API first answers, a round only learns the state (``initial`` aside).
            first = not self._answered
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
                if _no_answer(exc):
                    for event in self._outage(exc):
                        yield event
                elif self._first_report(None, exc):
                    yield CvmEvent(kind="error", cvm_id=None, error=exc)
                return
            self._reported.pop(None, None)
        else:
            assert self._ids is not None  # noqa: S101 - one of the two is set
            ids = self._ids
        # Until some id gets an answer, this round may be an outage: its failures wait here
        # and are dropped if it is one.
        held: list[CvmEvent] | None = []
        no_answer: PhalaError | None = None
        seen: set[str] = set()
        try:
            async with self._sweep(ids) as stream:
                async for result in stream:
                    key = id_key(result.cvm_id)
                    seen.add(key)
                    if held is not None and (result.ok or not _no_answer(result.error)):
                        events = [*self._back(), *held]
                        held = None
                        for event in events:
                            yield event
                    elif held is not None and not result.ok:
                        no_answer = no_answer or result.error
                    for event in self._judge(key, result, first):
                        if held is None:
                            yield event
                        else:
                            held.append(event)
        except APIUnreachableError as exc:
            no_answer = exc
            held = held or []  # the API never answered: whatever came is dropped
        if held is not None:
            if no_answer is not None:
                for event in self._outage(no_answer):
                    yield event
                return
            for event in [*self._back(), *held]:  # a round of no ids: nothing failed
                yield event
        if self._listing is not None:
            for key in [key for key in self._known if key not in seen]:
                cvm_id, before = self._known.pop(key)
                yield CvmEvent(kind="removed", cvm_id=cvm_id, before=before)

    def _judge(self, key: str, result: SweepResult, first: bool) -> list[CvmEvent]:
        """The events one id's result makes, given what the watch knew of it."""
        known = self._known
        if result.ok:
            self._reported.pop(key, None)
            previous = known.get(key)
            known[key] = (result.cvm_id, result.cvm)
            if previous is None:
                if not first or self._initial:
                    return [CvmEvent(kind="added", cvm_id=result.cvm_id, after=result.cvm)]
                return []
            changes = diff_cvms(previous[1], result.cvm, self._fields)
            if not changes:
                return []
            return [
                CvmEvent(
                    kind="changed",
                    cvm_id=result.cvm_id,
                    before=previous[1],
                    after=result.cvm,
                    changes=changes,
                )
            ]
        error = result.error
        if isinstance(error, NotFoundError) and key in known:
            _, before = known.pop(key)
            self._first_report(key, error)  # its later 404s are this removal again
            return [CvmEvent(kind="removed", cvm_id=result.cvm_id, before=before)]
        if isinstance(error, NotFoundError) and self._listing is not None:
            return []  # a CVM listed but deleted before its fetch, never seen: nothing to say
        if self._first_report(key, error):
            return [CvmEvent(kind="error", cvm_id=result.cvm_id, error=error)]
        return []

    def _first_report(self, key: str | None, error: PhalaError) -> bool:
        """Whether ``error`` is news for ``key``: not the error it reported last."""
        kind = _error_kind(error)
        if self._reported.get(key) == kind:
            return False
        self._reported[key] = kind
        return True

    def _outage(self, error: PhalaError) -> list[CvmEvent]:
        """A round without any answer: one ``unavailable`` when it starts, then silence."""
        if self.unavailable:
            return []
        self.unavailable = True
        return [CvmEvent(kind="unavailable", cvm_id=None, error=error)]

    def _back(self) -> list[CvmEvent]:
        """A round with answers: one ``available`` if the last one had none."""
        self._answered = True
        if not self.unavailable:
            return []
        self.unavailable = False
        return [CvmEvent(kind="available", cvm_id=None)]


def _no_answer(error: PhalaError) -> bool:
    """Whether ``error`` means the API gave no usable answer at all (a transport failure, a
    timeout, a 5xx), as opposed to an answer about the request (404, 429...)."""
    return isinstance(error, (APIConnectionError, InternalServerError))


def _error_kind(error: PhalaError) -> str:
    """What makes two errors of one id the same report: the class and the status."""
    if isinstance(error, APIStatusError):
        return f"{type(error).__name__} {error.status_code}"
    return type(error).__name__


#: Errors that a poll outlives: the next poll may succeed.
_TRANSIENT = (APIConnectionError, InternalServerError, RateLimitError)


async def wait_for_status(
    fetch: Callable[[str | int], Awaitable[_C]],
    cvm_id: str | int,
    status: str | Iterable[str],
    *,
    timeout: float,  # noqa: ASYNC109 - bounds the whole poll, as waiters do
    interval: float,
    fail_on: str | Iterable[str] = DEFAULT_FAIL_ON,
) -> _C:
    """Poll ``fetch(cvm_id)`` until the CVM's status is one of ``status``, or one of
    ``fail_on``; see :meth:`PhalaClient.wait_for_status`."""
    check_positive("timeout", timeout)
    check_positive("interval", interval)
    wanted = _statuses("status", status)
    # A status both waited for and failed on is waited for: the caller asked for it.
    failures = _statuses("fail_on", fail_on, empty_ok=True) - wanted
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
            if cvm.status in failures:
                waited = loop.time() - started
                raise StatusFailedError(
                    f"{subject(cvm_id)}: reached status {cvm.status!r} after {waited:.1f}s of "
                    f"waiting for {_names(wanted)}; it will not get there by itself",
                    cvm_id=cvm_id,
                    status=cvm.status,
                    waited=waited,
                    wanted=wanted,
                )
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        await asyncio.sleep(min(interval, remaining))
    waited = loop.time() - started
    names = _names(wanted)
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


def _statuses(name: str, value: str | Iterable[str], *, empty_ok: bool = False) -> frozenset[str]:
    """``value`` (a status name or a collection of them) as a set, checked.

    Raises:
        ConfigurationError: not a str or a collection of non-empty str.
    """
    chosen: frozenset[object] = frozenset({None})  # neither a str nor a collection: refused
    if isinstance(value, str):
        chosen = frozenset({value})
    elif isinstance(value, Iterable):
        chosen = frozenset(value)
    if (not chosen and not empty_ok) or not all(isinstance(item, str) and item for item in chosen):
        raise ConfigurationError(f"{name} must be a status name or a set of them, not {value!r}")
    return frozenset(str(item) for item in chosen)


def _names(statuses: frozenset[str]) -> str:
    return " or ".join(repr(status) for status in sorted(statuses))

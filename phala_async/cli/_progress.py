"""The live side of a sweep on the command line: the running tally, the progress line redrawn on
stderr, and the closing summary. The text is built by plain functions, tested without a terminal."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TextIO

from phala_async._bulk import CvmResult
from phala_async._client import ClientStats, PhalaClient
from phala_async._errors import (
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    PermissionDeniedError,
    PhalaError,
)
from phala_async._models_v2026 import AnyCvm

from ._common import plural

__all__ = [
    "REDRAW_INTERVAL",
    "ProgressLine",
    "Tally",
    "fit_line",
    "format_progress",
    "format_summary",
    "refusal",
    "refuses_credential",
]

#: Seconds between two redraws of the progress line.
REDRAW_INTERVAL = 0.1
_BAR_WIDTH = 12
_CLEAR_LINE = "\r\x1b[K"
# Words of a 403 that is the API's answer to a bad key rather than "CVM not in workspace".
_BAD_KEY_WORDS = ("api key", "api-key", "token", "credential", "not authenticated", "unauthorized")


def refuses_credential(error: BaseException | None) -> bool:
    """Whether ``error`` is about the credential, not about one CVM: a 401, or a 403 whose detail
    is the API's bad-key answer. The API's usual 403, ``CVM not in workspace``, is about that CVM
    alone (it exists in another workspace) and never counts."""
    if isinstance(error, AuthenticationError):
        return True
    if not isinstance(error, PermissionDeniedError) or not error.detail:
        return False
    detail = error.detail.lower()
    return "workspace" not in detail and any(word in detail for word in _BAD_KEY_WORDS)


@dataclass
class Tally:
    """What a sweep has done so far.

    Attributes:
        total: ids of the sweep, when known (up front, or once the workspace listing said).
        ok: ids fetched.
        failed: ids that failed, by error type.
        skipped: ids already ok in the output being resumed, so not fetched again.
        bad_key: failed ids with a 403 that is the API's bad-key answer, not ``CVM not in
            workspace`` (see :func:`refuses_credential`).
        answered: ids the API answered over HTTP (ok, or an HTTP status error).
        unreached: failed ids that got no HTTP answer (connection errors, timeouts).
        started: ``time.monotonic()`` when the sweep began.
    """

    total: int | None = None
    ok: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    skipped: int = 0
    bad_key: int = 0
    answered: int = 0
    unreached: int = 0
    started: float = field(default_factory=time.monotonic)

    def add(self, result: CvmResult) -> None:
        """Count one finished id."""
        error: PhalaError | None = result.error
        if error is None:
            self.ok += 1
            self.answered += 1
            return
        self.failed[type(error).__name__] += 1
        if isinstance(error, APIStatusError):
            self.answered += 1
            self.bad_key += isinstance(error, PermissionDeniedError) and refuses_credential(error)
        elif isinstance(error, APIConnectionError):
            self.unreached += 1

    @property
    def fetched(self) -> int:
        """Ids this run asked the API for and finished, either way."""
        return self.ok + self.failed.total()

    @property
    def done(self) -> int:
        """Ids finished, either way, the skipped ones included."""
        return self.fetched + self.skipped

    def elapsed(self) -> float:
        """Seconds since the sweep began."""
        return time.monotonic() - self.started


def refusal(tally: Tally, failure: Exception | None = None) -> str | None:
    """Why the API refused the credential, or None if it did not: a 401 (or the API's bad-key
    403) ended the sweep, or every id that was asked for failed with 401 or 403, one at least
    refusing the credential. A 403 ``CVM not in workspace`` says only that the CVM belongs to
    another workspace: 403s alone are never a refusal (see :func:`refuses_credential`)."""
    if isinstance(failure, APIStatusError) and refuses_credential(failure):
        try:
            return f"HTTP {failure.status_code} {HTTPStatus(failure.status_code).phrase}"
        except ValueError:
            return f"HTTP {failure.status_code}"
    if not tally.failed["AuthenticationError"] and not tally.bad_key:
        return None
    denied = tally.failed["AuthenticationError"] + tally.failed["PermissionDeniedError"]
    asked = tally.fetched - tally.failed["InvalidCvmIdError"]
    if denied != asked:
        return None
    statuses = " or ".join(
        status
        for status, name in (("401", "AuthenticationError"), ("403", "PermissionDeniedError"))
        if tally.failed[name]
    )
    return f"HTTP {statuses} for {'the one id' if asked == 1 else f'all {asked} ids'}"


def _rate(fetched: int, elapsed: float) -> float:
    return fetched / elapsed if elapsed > 0 else 0.0


def format_progress(tally: Tally, stats: ClientStats, elapsed: float) -> str:
    """The progress line: done (of total, with a bar and an ETA, when known), rate, failures,
    retries, 429 answers, and the client's adaptive send rate once a throttle set one."""
    done, total = tally.done, tally.total
    rate = _rate(tally.fetched, elapsed)
    if total:
        filled = min(_BAR_WIDTH, _BAR_WIDTH * done // total)
        parts = [
            f"[{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] {done}/{total} {100 * done // total}%"
        ]
    else:
        parts = [f"{done} done"]
    parts.append(f"{rate:.0f} ids/s")
    if total and rate > 0 and done < total:
        parts.append(f"ETA {(total - done) / rate:.0f}s")
    parts.append(f"{tally.failed.total()} failed")
    parts.append(f"{stats.retries} retries")
    parts.append(f"429: {stats.rate_limited}")
    if stats.send_rate is not None:
        parts.append(f"paced {stats.send_rate:.0f}/s")
    return "  ".join(parts)


class ProgressLine:
    """Redraws :func:`format_progress` in place on a terminal, at most every
    :data:`REDRAW_INTERVAL` seconds, from its own task (so it moves during a 429 pause too)."""

    def __init__(self, stream: TextIO, tally: Tally, client: PhalaClient[AnyCvm]) -> None:
        self._stream = stream
        self._tally = tally
        self._client = client
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Draw now and keep redrawing until :meth:`stop`."""
        self._task = asyncio.create_task(self._redraw_forever(), name="phala_async progress")

    async def stop(self) -> None:
        """Stop redrawing; leave the final state on its own line."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._draw()
        self._stream.write("\n")
        self._stream.flush()

    async def _redraw_forever(self) -> None:
        while True:
            self._draw()
            await asyncio.sleep(REDRAW_INTERVAL)

    def _draw(self) -> None:
        line = format_progress(self._tally, self._client.stats, self._tally.elapsed())
        width = shutil.get_terminal_size().columns - 1
        self._stream.write(_CLEAR_LINE + fit_line(line, width))
        self._stream.flush()


def fit_line(line: str, width: int) -> str:
    """``line`` cut to ``width`` characters at the end of a word (between two of the progress
    line's parts when one fits), never mid-word."""
    if len(line) <= width:
        return line
    cut = line.rfind("  ", 0, width + 1)
    if cut <= 0:
        cut = line.rfind(" ", 0, width + 1)
    return line[:cut].rstrip() if cut > 0 else ""


def format_summary(
    tally: Tally, stats: ClientStats, elapsed: float, *, stopped: str | None = None
) -> str:
    """The closing sentence: ok, failed by error type, retries, 429 answers, pacing, ids skipped
    as already ok, wall time and ids fetched per second. ``stopped`` says how a sweep that did not
    finish ended (``Interrupted by Ctrl-C``).
    """
    done, total = tally.done, tally.total
    if stopped is None:
        text = f"Swept {plural(done, 'id')}"
    elif total is not None:
        text = f"{stopped} after {done} of {plural(total, 'id')}"
    else:
        text = f"{stopped} after {plural(done, 'id')}"
    text += f" in {elapsed:.1f}s ({_rate(tally.fetched, elapsed):.0f} ids/s): {tally.ok} ok, "
    failed = tally.failed.total()
    text += f"{failed} failed"
    if failed:
        by_type = ", ".join(f"{count} {name}" for name, count in tally.failed.most_common())
        text += f" ({by_type})"
    text += (
        f"; {plural(stats.retries, 'retry', 'retries')}, "
        f"{plural(stats.rate_limited, 'rate-limited (429) answer')}"
    )
    if stats.retries_denied:
        text += f", {plural(stats.retries_denied, 'retry', 'retries')} skipped while most "
        text += "requests were failing"
    if stats.send_rate is not None:
        text += f"; the client paced itself to {stats.send_rate:.0f} requests/s"
    if tally.skipped:
        text += f"; {plural(tally.skipped, 'id')} already ok, not fetched again"
    return text + "."

"""A sweep as the command line runs it: the ids (each once, or the workspace page by page), records
written as ids complete, the running tally, the progress line redrawn on stderr, a clean stop on
Ctrl-C, and the closing summary. The text is built by plain functions, tested without a terminal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import sys
import time
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import TextIO

from ._bulk import CvmResult
from ._cli_output import RecordWriter, Redactor, UsageError, print_error
from ._client import ClientStats, PhalaClient
from ._config import API_KEY_ENV
from ._errors import AuthenticationError, InvalidCvmIdError, PhalaError
from ._ids import normalize_cvm_id

__all__ = [
    "REDRAW_INTERVAL",
    "ProgressLine",
    "SweepReport",
    "Tally",
    "distinct_ids",
    "format_progress",
    "format_summary",
    "print_outcome",
    "read_ids_file",
    "run_sweep",
    "uncancel",
    "workspace_ids",
]

logger = logging.getLogger("phala_async.cli")

#: Seconds between two redraws of the progress line.
REDRAW_INTERVAL = 0.1
_BAR_WIDTH = 12
_CLEAR_LINE = "\r\x1b[K"


def distinct_ids(given: Iterable[str]) -> list[str]:
    """The ids to sweep, in order, each once: two forms of one id (``app_<hex>`` and the bare hex)
    count once; an invalid id is kept, to be reported as a failed record."""
    distinct: dict[str, str] = {}
    for raw in given:
        try:
            key = normalize_cvm_id(raw)
        except InvalidCvmIdError:
            key = "\0" + raw  # never a valid segment, so never equal to one
        distinct.setdefault(key, raw)
    return list(distinct.values())


def read_ids_file(path: str) -> list[str]:
    """The non-blank lines of ``path`` (``-``: stdin), stripped: one CVM id each.

    The file is read whole, before the sweep: the total is then known, and an unreadable file
    fails at once.

    Raises:
        UsageError: the file cannot be read or is not UTF-8 text.
    """
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8-sig") as file:
                text = file.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UsageError(
            f"cannot read the ids file {path!r} ({reason}): pass a readable UTF-8 file with one "
            f"CVM id per line, or '-' to read stdin"
        ) from exc
    return [line.strip() for line in text.splitlines() if line.strip()]


async def workspace_ids(client: PhalaClient) -> AsyncIterator[str]:
    """Every CVM id of the workspace, read page by page as the sweep asks for more."""
    async for entry in client.list_cvms():
        yield entry.cvm_id


@dataclass
class Tally:
    """What a sweep has done so far.

    Attributes:
        total: ids the sweep will fetch, when known up front.
        ok: ids fetched.
        failed: ids that failed, by error type.
        started: ``time.monotonic()`` when the sweep began.
    """

    total: int | None = None
    ok: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)

    def add(self, result: CvmResult) -> None:
        """Count one finished id."""
        if result.error is None:
            self.ok += 1
        else:
            self.failed[type(result.error).__name__] += 1

    @property
    def done(self) -> int:
        """Ids finished, either way."""
        return self.ok + self.failed.total()

    def elapsed(self) -> float:
        """Seconds since the sweep began."""
        return time.monotonic() - self.started


def _rate(done: int, elapsed: float) -> float:
    return done / elapsed if elapsed > 0 else 0.0


def format_progress(tally: Tally, stats: ClientStats, elapsed: float) -> str:
    """The progress line: done (of total, with a bar and an ETA, when known), rate, failures,
    retries, 429 answers, and the client's adaptive send rate once a throttle set one."""
    done, total = tally.done, tally.total
    rate = _rate(done, elapsed)
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

    def __init__(self, stream: TextIO, tally: Tally, client: PhalaClient) -> None:
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
        self._stream.write(_CLEAR_LINE + line[:width])
        self._stream.flush()


def format_summary(
    tally: Tally,
    stats: ClientStats,
    elapsed: float,
    *,
    interrupted: bool = False,
    destination: str | None = None,
) -> str:
    """The closing paragraph: ok, failed by error type, retries, 429 answers, pacing, wall time,
    ids per second, and where the records went."""
    done = tally.done
    of_total = f" of {tally.total}" if tally.total is not None else ""
    head = f"Interrupted after {done}{of_total} ids" if interrupted else f"Swept {done} ids"
    text = f"{head} in {elapsed:.1f}s ({_rate(done, elapsed):.0f} ids/s): {tally.ok} ok, "
    failed = tally.failed.total()
    text += f"{failed} failed"
    if failed:
        by_type = ", ".join(f"{count} {name}" for name, count in tally.failed.most_common())
        text += f" ({by_type})"
    text += (
        f"; {stats.retries} {'retry' if stats.retries == 1 else 'retries'}, "
        f"{stats.rate_limited} rate-limited (429) "
        f"{'answer' if stats.rate_limited == 1 else 'answers'}"
    )
    if stats.retries_denied:
        text += f", {stats.retries_denied} retries skipped while most requests were failing"
    if stats.send_rate is not None:
        text += f"; the client paced itself to {stats.send_rate:.0f} requests/s"
    text += "."
    if destination is not None:
        text += f" Every completed record is in {destination}."
    return text


@dataclass
class SweepReport:
    """How a sweep ended.

    Attributes:
        tally: what it did.
        stats: the client's counters (retries, 429 answers).
        elapsed: wall time, in seconds.
        interrupted: stopped by Ctrl-C.
        failure: the error that stopped it early (listing the workspace failed), if any.
    """

    tally: Tally
    stats: ClientStats
    elapsed: float
    interrupted: bool = False
    failure: PhalaError | None = None


async def run_sweep(
    client: PhalaClient,
    ids: Iterable[str] | AsyncIterable[str],
    *,
    total: int | None,
    writer: RecordWriter,
    show_progress: bool,
) -> SweepReport:
    """Fetch every id with ``client`` (closed at the end), writing each record as it completes.

    Cancellation (Ctrl-C) stops the sweep cleanly and is reported, not raised, so that the caller
    can print the summary: every completed record has been written by then.
    """
    tally = Tally(total=total)
    progress = ProgressLine(sys.stderr, tally, client) if show_progress else None
    interrupted = False
    failure: PhalaError | None = None
    async with client:
        logger.info("sweeping with %r", client)
        if progress is not None:
            progress.start()
        try:
            async with client.stream_cvms(ids) as results:
                async for result in results:
                    writer.write(result)
                    tally.add(result)
        except asyncio.CancelledError:
            uncancel()  # the stream is closed; finish normally so the summary gets printed
            interrupted = True
        except PhalaError as exc:
            failure = exc
        finally:
            if progress is not None:
                await progress.stop()
    return SweepReport(tally, client.stats, tally.elapsed(), interrupted, failure)


def uncancel() -> None:
    """Take back the cancellation of the current task, once it has been handled."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


def print_outcome(
    report: SweepReport, *, quiet: bool, destination: str | None, redact: Redactor
) -> None:
    """Print why the sweep stopped early, if it did, then (unless ``quiet``) the summary."""
    if report.failure is not None:
        print_error(redact(f"the sweep stopped early: {report.failure}"))
    if (
        isinstance(report.failure, AuthenticationError)
        or report.tally.failed["AuthenticationError"]
    ):
        print_error(f"the API refused the credential: check --api-key, --token or ${API_KEY_ENV}")
    if not quiet:
        summary = format_summary(
            report.tally,
            report.stats,
            report.elapsed,
            interrupted=report.interrupted,
            destination=destination,
        )
        print(summary, file=sys.stderr)
